"""Numbers the text cites from a run are the numbers that run printed.

Each entry pairs a phrase of a notebook's markdown with the pattern its committed outputs must
show. Re-executing a notebook that changes such a number fails here until the text follows.
"""

import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"

CITED = [
    ("04", "(7/10)", [r"accuracy\s+0\.700"]),
    ("05", "(0.619, accuracy 0.680)", [r"epoch 1: train loss [\d.]+ \(the epoch's mean, defect 3\), "
                                       r"val loss 0\.619, val accuracy 0\.680"]),
    ("05", "majority share of 0.539", [r"majority share of these 128 validation reviews: 0\.539"]),
    ("05", "(0.701, accuracy 0.555,", [r"epoch 2: train loss [\d.]+ \(the epoch's mean, defect 3\), "
                                       r"val loss 0\.701, val accuracy 0\.555"]),
    ("07", "(0.794 to 0.843", [r"95 % interval 0\.794 to 0\.843"]),
    ("08", "(21 s against 33 s;", [r"course-default\s+\d+\s+21\b", r"trainer\s+\d+\s+33\b"]),
    ("08", "(5.9× the\n`Trainer`'s tokens per second)", [r"trainer\s+138\b", r"course-default\s+816\b"]),
    ("09", 'became "family-friendly" (row 2)', [r"(?m)^2\s+Blue Spice is a family-friendly Chinese pub"]),
    ("09", "177 for 32 prompts", [r"test:\s+177 pairs from\s+32 distinct prompts"]),
    ("09", "32 prompts in the default profile", [r"test:\s+\d+ pairs from\s+32 distinct prompts"]),
    ("11", "(93.33 % against 66.67 % before,", [r"pretrained\s+0\.00\s+6\.66\s+80\.0\s+66\.67",
                                                r"fine-tuned\s+6\.67\s+6\.67\s+100\.0\s+93\.33"]),
    ("11", "(17.47 tokens, the humans' 18.8)", [r"fine-tuned\s+17\.47\s+18\.8"]),
    ("11", "(4.30 to 3.92)", [r"pretrained(\s+[\d.]+){4}\s+4\.30", r"fine-tuned(\s+[\d.]+){4}\s+3\.92"]),
    ("11", "QA F1 went from 6.66 to 6.67", [r"pretrained\s+0\.00\s+6\.66", r"fine-tuned\s+6\.67\s+6\.67"]),
    ("11", '("San Bernardino"; the answer is "business")', [r"0\s+San Bernardino\s+business"]),
    ("11", 'row 2 says "unknown" where it has one', [r"1\s+Islamism\s+unknown", r"2\s+unknown\s+a sword"]),
    ("11", "ends 86.7 % of its chat replies itself, against 93.3 %",
     [r"repetition_penalty 1\.0\s+6\.7\s+100\.0\s+86\.7", r"repetition_penalty 1\.1\s+6\.7\s+100\.0\s+93\.3"]),
    ("11", "only 20.0 % of its chat replies itself, against 93.3 %",
     [r"end of turn masked\s+13\.3\s+20\.0", r"end of turn learned\s+100\.0\s+93\.3"]),
    ("11", "(and 66.7 % before fine-tuning)", [r"pretrained\s+80\.0\s+66\.7"]),
    ("11", "13.3 % of its QA replies, against 100.0 %", [r"end of turn masked\s+13\.3"]),
    ("11", '"unknown." again and again', [r"2\s+unknown\.\\nunknown\.\\nunknown\."]),
    ("11", '"University Town no rather', [r"0\s+University Town no rather"]),
    ("11", "second turn itself after 35 tokens", [r"35 tokens, ended its turn itself"]),
    ("11", "one epoch of 24 updates", [r"93 training conversations in batches of 4: 1 epoch\(s\) of 24 updates"]),
    ("11", "on 15 questions", [r"drop_system=False: QA F1 [\d.]+ on 15 questions"]),
    ("11", "(6.6 against 6.7)", [r"end of turn masked(\s+[\d.]+){3}\s+6\.6\b",
                               r"end of turn learned(\s+[\d.]+){3}\s+6\.7\b"]),
    ("10", "2 × 8 = 16 reviews", [r"2 processes x batch 8"]),
    ("09", '("Michelin-starred")', [r"Michelin-starred"]),
    ("09", "seed 1 leaves out the food and seed 2 the area",
     [r"temperature 0\.7, seed 1: (?:(?!French|food)[^\n])*\n",
      r"temperature 0\.7, seed 2: (?:(?!riverside)[^\n])*French food"]),
    ("09", "`q8_0` kept 6 of 8 texts and `q4_1` none", [r"f16: 8 of 8 texts", r"q8_0: 6 of 8 texts",
                                                       r"q4_1: 0 of 8 texts"]),
    ("08", "per seed 2.6×, 1.1×, 1.6×", [r"per random seed: \{'42': 2\.6, '43': 1\.1, '44': 1\.6\}"]),
    ("08", "one course\nrun sat at 0.798 after 20 s", [r"\[20\.\d+, 0\.798\]"]),
    ("08", "it reached 80 % in 21 s (median of three seeds,\n21–42 s)",
     [r"bf16=True: 21 s to 80 % \(median; 21-42 s\)"]),
    ("08", "3.5× fewer tokens per second", [r"tokens per second: 3\.5x"]),
]


def _texts(chapter: str) -> tuple[str, str]:
    """(markdown, outputs) of one chapter's notebook."""
    cells = json.loads(next(NOTEBOOKS.glob(f"{chapter}_*.ipynb")).read_text())["cells"]
    markdown = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    outputs = "\n".join("".join(o.get("text") or o.get("data", {}).get("text/plain", ""))
                        for c in cells for o in c.get("outputs", []))
    return markdown, outputs


@pytest.mark.parametrize(("chapter", "phrase", "patterns"), CITED, ids=[f"{c}:{p[:20]}" for c, p, _ in CITED])
def test_cited_numbers_match_the_committed_outputs(chapter, phrase, patterns):
    markdown, outputs = _texts(chapter)
    assert " ".join(phrase.split()) in " ".join(markdown.split()), f"chapter {chapter} no longer says {phrase!r}"
    for pattern in patterns:
        assert re.search(pattern, outputs), f"chapter {chapter}: {phrase!r} but no output matches {pattern!r}"

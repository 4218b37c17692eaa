"""Every passage the notebooks present as the seed document's words occurs in it verbatim.

A quotation ("...") counts as the document's when the same paragraph names the document just
before it (document, it says, quote, "the seed" but not random seeds). Whitespace, case and a
closing full stop are not compared. The document lives outside the repository
(`../shared/seed`); without it the test skips.
"""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SEED = ROOT.parent / "shared" / "seed" / "fine-tuning-gpt-models.txt"
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
QUOTE = re.compile(r"[\u201c\"]([^\u201d\"`]{12,}?)[\u201d\"]", re.S)
NAMES_THE_DOCUMENT = re.compile(r"document|it says|quote|\bthe seed\b(?!s| \d)", re.I)


def _normalised(text: str) -> str:
    return re.sub(r"\s+", " ", text.replace("*", "")).strip().lower().rstrip(".\u2026")


def _document_quotes(markdown: str):
    """The quotations in `markdown` that its paragraph attributes to the document."""
    for paragraph in re.split(r"\n\s*\n", markdown):
        for match in QUOTE.finditer(paragraph):
            if len(match.group(1).split()) >= 3 and NAMES_THE_DOCUMENT.search(paragraph[:match.start()]):
                yield match.group(1)


@pytest.mark.skipif(not SEED.exists(), reason="the seed document is not next to this checkout")
@pytest.mark.parametrize("path", [*NOTEBOOKS, ROOT / "docs" / "workshop.md"], ids=lambda p: p.name)
def test_quotations_of_the_document_are_verbatim(path):
    document = _normalised(SEED.read_text())
    if path.suffix == ".ipynb":
        cells = json.loads(path.read_text())["cells"]
        texts = ["".join(c["source"]) for c in cells if c["cell_type"] == "markdown"]
    else:
        texts = [path.read_text()]
    for text in texts:
        for quote in _document_quotes(text):
            assert _normalised(quote) in document, f"{path.name}: {quote!r} is not in the document"


def test_the_check_finds_a_paraphrase_in_quotes():
    text = 'The seed document asks you to "Select a task: text classification or summarization".'
    assert list(_document_quotes(text)) == ["Select a task: text classification or summarization"]

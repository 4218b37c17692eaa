"""The exercise checker: right answers pass, wrong ones get a hint that never holds the answer."""

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from course_lib.notebook.exercises import CHOICE, EXERCISES, check, is_right, solution, verdict
from course_lib.records import EpochRecord

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
MATRIX = [[50, 10], [15, 25]]


@pytest.fixture(scope="module")
def contexts():
    """For every exercise, the keyword arguments its notebook passes."""
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=3, num_attention_heads=2, num_key_value_heads=1))
    contexts = {
        "0.1": {"model": model}, "0.2": {"model": model},
        # Movie d is exactly 1 in 5 fresh, the edge of "at least 80 % rotten": it counts.
        "1.1": {"table": pd.DataFrame({
            "label": ["fresh"] * 7 + ["rotten"] * 5 + ["fresh"] + ["rotten"] * 7 + ["fresh"] * 2,
            "group": ["a"] * 5 + ["b"] * 2 + ["c"] * 4 + ["a"] + ["d"] * 5 + ["e"] * 5})},
        "1.3": {"measured": {"short": 0.61, "long": 0.55}},
        "2.2": {"batch": {"attention_mask": [[1, 1, 1, 1, 0, 0], [1] * 6]}},
        "2.3": {"lengths": [10, 40, 50, 33, 12]}, "3.3": {"measured": {True: 0, False: 57}},
        "4.1": {"matrix": MATRIX}, "4.3": {"matrix": MATRIX}, "7.1": {"matrix": MATRIX},
        "4.4": {"measured": {5: 0.95, 40: 0.704}},
        "5.1": {"n_examples": 3000, "batch_size": 16, "epochs": 3, "accum": 1},
        "5.2": {"history": SimpleNamespace(epochs=[EpochRecord(n, 0.5, loss, 0.7, 0.7, 1.0) for n, loss in
                                                   enumerate([0.62, 0.55, 0.59, 0.71], start=1)])},
        "5.3": {"measured": {2e-4: 0.62, 2e-3: 0.48}},
        "5.4": {"measured": {"section 4": 0.62, "edited loop": 0.66}},
        "6.3": {"measured": {"float32": 540.2, "float16": 271.0}},
        "7.3": {"measured": {"all": 0.82, "confident": 0.91}}, "8.4": {"measured": {8: 1000, 16: 1900}},
        "9.1": {"row": {"labels": [-100] * 37 + [5, 6, 2]}}, "9.3": {"measured": {True: 45.0, False: 40.0}},
        "10.3": {"counted": 112, "n_val": 100},
        "11.1": {"row": {"labels": [-100] * 30 + [7, 8, 2] + [-100] * 9 + [9, 2]}},
        "11.2": {"row": {"labels": [-100] * 30 + [7, 8, 2] + [-100] * 9 + [9, 2]}, "pad_token_id": 2},
        "11.3": {"measured": {False: 31.0, True: 22.5}},
    }
    contexts["2.1"] = {"tokenizer": lambda text: SimpleNamespace(input_ids=text.split())}
    return contexts


def _renderings(value) -> list[str]:
    """The ways a message could spell the right answer."""
    if isinstance(value, str):
        return [value]
    forms = {f"{value:.3f}", f"{value:.2f}"}
    if float(value).is_integer():
        forms |= {str(int(value)), f"{int(value):,}"}
    return sorted(forms)


def _wrong(exercise, expected):
    if exercise.kind == CHOICE:
        return next(c for c in sorted(set(exercise.choices.values())) if c != expected)
    return expected * 3 + 7


@pytest.mark.parametrize("key", sorted(EXERCISES))
def test_right_answer_passes_and_wrong_answer_gets_a_hint_without_the_answer(key, contexts):
    exercise = EXERCISES[key]
    context = contexts.get(key, {})
    expected = exercise.expected(**context)
    assert is_right(key, expected, **context)
    right, message = verdict(exercise, _wrong(exercise, expected), **context)
    assert not right
    assert exercise.solution not in message
    for form in _renderings(expected):
        assert not re.search(rf"(?<![\w.]){re.escape(form)}(?![\w])", message, re.IGNORECASE), (form, message)


@pytest.mark.parametrize(("key", "spellings"), [
    ("8.2", ["None", " none", "0", "zero"]),
    ("3.1", ["B", " b", "'b'"]), ("6.1", ["SafeTensors", "model.safetensors"]),
    ("7.2", [False, "No", "no "]), ("9.2", ["Coverage", "attribute coverage"]),
])
def test_matching_forgives_case_spaces_and_spellings(key, spellings):
    for spelling in spellings:
        assert is_right(key, spelling), spelling


def test_numbers_forgive_format_and_rounding():
    assert is_right("4.1", "75%", matrix=MATRIX) and is_right("4.1", 0.7504, matrix=MATRIX)
    model = SimpleNamespace(named_parameters=lambda: [("model.w", SimpleNamespace(numel=lambda: 1000)),
                                                      ("score.weight", SimpleNamespace(numel=lambda: 4))])
    assert is_right("0.1", "1,000", model=model)
    assert not is_right("4.1", 0.76, matrix=MATRIX)


def test_right_and_wrong_messages_differ(capsys):
    check("8.2", "none")
    check("8.2", "all 29")
    right, wrong = capsys.readouterr().out.splitlines()
    assert right.startswith("Exercise 8.2: right") and wrong.startswith("Exercise 8.2: not yet")
    assert right.split("—")[1] != wrong.split("—")[1]


def test_unanswered_and_unmeasured_are_reported_not_failed(capsys):
    check("2.2", None)
    assert is_right("2.2", None) is False
    assert "not answered yet" in capsys.readouterr().out
    assert not is_right("9.3", "same", measured={True: 40.0})  # only one run measured so far
    check("3.3", 57, measured={True: 0})
    assert "grouped = False" in capsys.readouterr().out


def test_experiments_read_the_measured_result():
    assert is_right("9.3", "Same", measured={True: 40.0, False: 41.5})
    assert is_right("5.3", "lower", measured={2e-4: 0.62, 2e-3: 0.48})
    assert is_right("5.3", "higher", measured={2e-4: 0.62, 2e-5: 0.68})
    assert is_right("6.3", 2, measured={"float32": 540.2, "float16": 271.0})
    assert is_right("5.4", "higher", measured={"section 4": 0.62, "edited loop": 0.66})
    assert is_right("5.4", "lower", measured={"section 4": 0.62, "edited loop": 0.55})


def test_an_unedited_loop_is_not_an_answer(capsys):
    """Identical runs mean the learner has not edited the loop yet: say how, not a verdict."""
    assert not is_right("5.4", "same", measured={"section 4": 0.627, "edited loop": 0.627})
    check("5.4", "same", measured={"section 4": 0.627, "edited loop": 0.627})
    assert "put a # before optimizer.zero_grad()" in capsys.readouterr().out


def test_another_experiment_s_measurements_get_a_hint_not_an_error(capsys):
    """5.3 and 5.4 both fill a `measured`; the other's dictionary must lead to its cell, not to a KeyError."""
    check("5.3", "higher", measured={"section 4": 0.70, "edited loop": 0.80})
    assert "Change learning_rate in the experiment cell" in capsys.readouterr().out
    check("5.4", "higher", measured={2e-4: 0.70, 2e-3: 0.80})
    assert "Run the experiment cell with your edited loop first" in capsys.readouterr().out


def test_every_chapter_has_exercises_and_chapters_1_to_8_an_experiment():
    for chapter in range(10):
        keys = [key for key in EXERCISES if key.startswith(f"{chapter}.")]
        assert len(keys) >= 2
        notebook = next(NOTEBOOKS.glob(f"{chapter:02d}_*.ipynb"))
        sources = "".join("".join(c["source"]) for c in json.loads(notebook.read_text())["cells"])
        for key in keys:
            assert f'check("{key}"' in sources and f'solution("{key}", reveal=reveal)' in sources, key
        if 1 <= chapter <= 8:
            assert any(EXERCISES[k].question.startswith("Experiment") for k in keys), chapter


def test_solutions_print(capsys):
    solution("3.1")
    hidden = capsys.readouterr().out
    assert "hidden" in hidden and EXERCISES["3.1"].solution not in hidden
    solution("3.1", reveal=True)
    assert capsys.readouterr().out.startswith("Solution 3.1: b")

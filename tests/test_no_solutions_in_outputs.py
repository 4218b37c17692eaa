"""Solutions on request only: committed notebooks show no solution, and no check call holds an answer.

A reader on GitHub sees the committed outputs, and CI (nbval) runs every cell, so a solution may
only be printed when a learner asks for it on purpose: `solution(key, reveal=True)`.
"""

import ast
import json
from pathlib import Path

import pytest

from course_lib.notebook.exercises import EXERCISES, solution

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def _normalised(text: str) -> str:
    return " ".join(text.split())


def _cells(notebook: Path) -> list[dict]:
    return json.loads(notebook.read_text())["cells"]


def _output_text(notebook: Path) -> str:
    """Every committed output of the notebook as one whitespace-normalised text."""
    parts = []
    for cell in _cells(notebook):
        for output in cell.get("outputs", []):
            parts.append("".join(output.get("text", "")))
            parts.append("".join(output.get("traceback", [])))
            for mime, value in output.get("data", {}).items():
                if mime.startswith("text/") or mime == "application/json":
                    parts.append(value if isinstance(value, str) else "".join(map(str, value)))
    return _normalised("\n".join(parts))


def _check_calls(notebook: Path):
    """Every `check(...)` and `solution(...)` call in the notebook's code cells."""
    for cell in _cells(notebook):
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"])
        code = [line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))]
        tree = ast.parse("\n".join(code))
        for node in ast.walk(tree):
            called = node.func.id if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) else None
            if called in ("check", "solution"):
                yield called, node


def test_every_solution_is_long_enough_to_be_found():
    """A solution of a word or two could hide in any output; each one says what and why."""
    for key, exercise in EXERCISES.items():
        assert len(_normalised(exercise.solution)) >= 30, key


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_outputs_hold_no_solution(notebook):
    outputs = _output_text(notebook)
    for key, exercise in EXERCISES.items():
        assert _normalised(exercise.solution) not in outputs, f"{notebook.name}: solution {key} in an output"
        assert f"Solution {key}:" not in outputs, f"{notebook.name}: solution {key} printed"
        # A right verdict explains the answer; committed notebooks leave every answer open.
        assert f"Exercise {key}: right" not in outputs, f"{notebook.name}: exercise {key} answered"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_checks_take_the_learners_answer_and_solutions_stay_hidden_in_the_committed_source(notebook):
    for name, call in _check_calls(notebook):
        if name == "check":
            answer = call.args[1]
            # The answer is the learner's variable; the context is data, never the expected value.
            assert isinstance(answer, ast.Name) and answer.id == "answer", (notebook.name, ast.unparse(call))
            assert "expected" not in {keyword.arg for keyword in call.keywords}, (notebook.name, ast.unparse(call))
        else:
            reveal = {keyword.arg: keyword.value for keyword in call.keywords}.get("reveal")
            revealed = reveal is not None and not (isinstance(reveal, ast.Name) and reveal.id == "reveal")
            assert not revealed, (notebook.name, ast.unparse(call))
    for cell in _cells(notebook):
        source = "".join(cell["source"])
        if cell["cell_type"] == "code" and "solution(" in source:
            assert "reveal = False" in source, notebook.name


def test_solution_prints_only_when_asked(capsys):
    for key, exercise in EXERCISES.items():
        solution(key)
        hidden = capsys.readouterr().out
        assert "hidden" in hidden and _normalised(exercise.solution) not in _normalised(hidden), key
        solution(key, reveal=True)
        assert capsys.readouterr().out.strip() == f"Solution {key}: {exercise.solution}"

"""What a reader sees on GitHub: committed notebook outputs carry no machine paths or tracebacks."""

import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
# An absolute path of the machine that ran the notebook: a POSIX root folder or a drive letter.
ABSOLUTE_PATH = re.compile(r"(?<![\w.:/])(/(home|root|tmp|work|usr|opt|var|Users|mnt)/|[A-Z]:\\)")
# A progress bar's text as its widget was first displayed ("Training:   0%|  | 0/24"): a saved
# notebook keeps only that first frame, so GitHub would show every finished bar at its start.
FROZEN_BAR = re.compile(r"^[^|\n]*\d+%\|")


def _output_texts(notebook: Path):
    for cell in json.loads(notebook.read_text())["cells"]:
        for output in cell.get("outputs", []):
            text = output.get("text") or output.get("data", {}).get("text/plain") or ""
            yield output, "".join(text)


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_outputs_have_no_absolute_paths_and_no_errors(notebook):
    for output, text in _output_texts(notebook):
        assert output.get("output_type") != "error", f"{notebook.name}: committed error output"
        match = ABSOLUTE_PATH.search(text)
        assert match is None, f"{notebook.name}: {text[max(0, match.start() - 60):match.end() + 60]!r}"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_no_progress_bar_frozen_at_its_first_frame(notebook):
    """Remove the bar's widget output after re-executing: the epoch lines under it say what it showed."""
    for output, text in _output_texts(notebook):
        widget = "application/vnd.jupyter.widget-view+json" in output.get("data", {})
        assert not (widget and FROZEN_BAR.match(text)), f"{notebook.name}: a progress bar saved as {text!r}"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_losses_are_shown_to_three_decimals_also_in_saved_widget_state(notebook):
    """`progress.epoch_line` prints 3 decimals; a panel's saved log (notebook metadata) must agree."""
    match = re.search(r"(train|val) loss \d+\.\d{4}", notebook.read_text())
    assert match is None, f"{notebook.name}: {match[0]!r} (round it as epoch_line does)"

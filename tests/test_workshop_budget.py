"""docs/workshop.md's agenda budgets people's time, and its table still matches the notebooks."""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docs"))

import workshop_budget  # noqa: E402 (docs/ is not a package)

ROW = re.compile(r"^\| (\d+):(\d\d) \| chapter (\d+) \|.*\| (\d+) \|$", re.M)


def _documented() -> dict[int, int]:
    """chapter -> budget in minutes, as docs/workshop.md's agenda states it."""
    text = (ROOT / "docs" / "workshop.md").read_text()
    return {int(m[3]): int(m[4]) for m in ROW.finditer(text)}


def test_the_agenda_covers_chapters_0_to_9_and_leaves_time_for_questions():
    computed = [workshop_budget.chapter_budget(chapter) for chapter in workshop_budget.PLAN]
    assert [b.chapter for b in computed] == list(range(10))
    assert all(b.machine_s is not None for b in computed), "every chapter in class has a measured machine time"
    table = workshop_budget.table(computed)
    assert "wrap-up" in table
    minutes = int(re.search(r"wrap-up.*\| (-?\d+) \|$", table, re.M)[1])
    assert minutes >= 5, f"the agenda leaves {minutes} minutes of three hours for questions (5 or more)"


def test_the_documented_agenda_matches_the_notebooks():
    """Editing a chapter's text or exercises moves its budget: rerun docs/workshop_budget.py."""
    documented = _documented()
    assert sorted(documented) == list(range(10))
    computed = [workshop_budget.chapter_budget(chapter) for chapter in workshop_budget.PLAN]
    table = workshop_budget.table(computed)
    text = (ROOT / "docs" / "workshop.md").read_text()
    # The whole table, start times and wrap-up included: a stale row shifts every start after it.
    assert table.strip() in text, "docs/workshop.md's agenda is stale: paste docs/workshop_budget.py's table"


def test_reading_counts_words_and_skips_what_is_not_taught_in_class():
    part = workshop_budget.Part(skip_sections=("Later",))
    cells = [{"cell_type": "markdown", "source": ["# Title\n", "one two three\n", "## Later\n", "four five"]},
             {"cell_type": "code", "source": ["print(1)"]}]
    kept = workshop_budget._cells_in_class(cells, part)
    assert ["".join(c["source"]) for c in kept] == ["# Title\none two three\n"]


def test_exercises_left_for_home_take_their_text_and_cells_with_them():
    part = workshop_budget.Part(exercises=("5.1",))
    cells = [{"cell_type": "markdown", "source": ["## Exercises\n", "**5.1** Count the updates.\n"]},
             {"cell_type": "code", "source": ["check('5.1', None)"]},
             {"cell_type": "markdown", "source": ["**5.3 Experiment** Train again.\n"]},
             {"cell_type": "code", "source": ["train_again()"]},
             {"cell_type": "markdown", "source": ["## Summary\n"]}]
    kept = workshop_budget._without_homework(cells, part)
    assert ["".join(c["source"]) for c in kept] == [
        "## Exercises\n**5.1** Count the updates.\n", "check('5.1', None)", "## Summary\n"]

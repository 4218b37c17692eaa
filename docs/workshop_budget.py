"""The workshop's time budget: what people need, not only what the machine needs.

    .venv/bin/python docs/workshop_budget.py     # prints the table that docs/workshop.md shows

Per chapter, for the parts taught in class (PLAN below):
- reading: the words of its markdown cells at WORDS_PER_MINUTE;
- running: SECONDS_PER_CELL for each code cell that is not an exercise, to run it and look at
  what it printed;
- exercises: MINUTES_PER_EXERCISE each (2-3 minutes: read, try, check);
- machine: the measured time of the workshop profile on a 2-core CPU (MACHINE_SECONDS; see
  docs/workshop.md for how it was measured).
Laptop problems and the break are fixed items of the agenda, added at the end.
"""

from __future__ import annotations

import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORDS_PER_MINUTE = 200
SECONDS_PER_CELL = 20
MINUTES_PER_EXERCISE = 2.5
LAPTOP_PROBLEMS_MINUTES = 15
BREAK_MINUTES = 10


@dataclass(frozen=True)
class Part:
    """What of one chapter is taught in class: sections left out, exercises kept."""

    skip_sections: tuple[str, ...] = ()  # "## " headings (their start) whose cells are left for later
    exercises: tuple[str, ...] | None = None  # None: all of the chapter's exercises
    only_sections: tuple[str, ...] | None = None  # a short path: only these sections (and the intro)


# Solutions are looked at by those who want them, inside the exercise time.
PLAN = {
    0: Part(skip_sections=("For instructors", "---")),
    # 1.3 (length against label) and 3.2 (a stratified count) are homework.
    1: Part(skip_sections=("---",), exercises=("1.1", "1.2")),
    2: Part(skip_sections=("---",)),
    3: Part(skip_sections=("---",), exercises=("3.1", "3.3")),
    # BLEU is done for real in chapter 9's short path.
    4: Part(skip_sections=("Generation tasks", "---")),
    # 5.4 (edit your own loop) stays; 5.3, 6.3 and 7.3 are homework, to leave time for questions.
    5: Part(skip_sections=("---",), exercises=("5.1", "5.2", "5.4")),
    6: Part(skip_sections=("---",), exercises=("6.1", "6.2")),
    7: Part(skip_sections=("---",), exercises=("7.1", "7.2")),
    8: Part(skip_sections=("int8 inference", "bf16", "---"), exercises=("8.1", "8.2")),
    # The seed's BLEU step: the task, the zero-shot text, the chat template and masked labels,
    # BLEU and ROUGE-L, one fine-tuning run and the before/after table. The loss before training,
    # saving, sampling and exercises 9.1 and 9.3 are homework.
    9: Part(only_sections=("1.", "2.", "3.", "5.", "6."), exercises=("9.2",)),
}

# Seconds of the code cells taught in class (PLAN; chapter 5 without exercise 5.3's run), workshop
# profile, float32 on a 2-core CPU: every chapter executed top to bottom with nbconvert and
# COURSE_HEADLESS=1 (chapter 5's Train pressed once), summed from the cells' execution times.
# docs/workshop.md says how and shows each chapter's result.
MACHINE_SECONDS = {0: 4, 1: 3, 2: 5, 3: 3, 4: 27, 5: 298, 6: 6, 7: 68, 8: 220, 9: 122}


@dataclass
class Budget:
    chapter: int
    words: int
    cells: int
    exercises: int
    machine_s: float | None

    @property
    def reading_min(self) -> float:
        return self.words / WORDS_PER_MINUTE

    @property
    def running_min(self) -> float:
        return self.cells * SECONDS_PER_CELL / 60

    @property
    def exercise_min(self) -> float:
        return self.exercises * MINUTES_PER_EXERCISE

    @property
    def total_min(self) -> float:
        return self.reading_min + self.running_min + self.exercise_min + (self.machine_s or 0) / 60


def _in_class(section: str, part: Part) -> bool:
    if any(section.startswith(s) for s in part.skip_sections):
        return False
    return part.only_sections is None or section == "" or any(section.startswith(s) for s in part.only_sections)


def _cells_in_class(cells: list[dict], part: Part) -> list[dict]:
    """The cells, or parts of markdown cells, taught in class, section by section ('## ' headings)."""
    kept, section = [], ""
    for cell in cells:
        if cell["cell_type"] != "markdown":
            if _in_class(section, part):
                kept.append(cell)
            continue
        lines = []
        for line in "".join(cell["source"]).splitlines(keepends=True):
            if line.startswith("---") or line.startswith("## "):
                if lines and _in_class(section, part):
                    kept.append({**cell, "source": lines})
                section, lines = ("---" if line.startswith("---") else line[3:].strip()), []
            lines.append(line)
        if lines and _in_class(section, part):
            kept.append({**cell, "source": lines})
    return kept


EXERCISE = re.compile(r"^\*\*(\d+\.\d+)\b", re.M)  # an exercise's text starts with "**5.3 ..."


def _without_homework(cells: list[dict], part: Part) -> list[dict]:
    """Drop the text and cells of the exercises left for home: each runs from its "**N.M" to the next."""
    if part.exercises is None:
        return cells
    kept, current = [], None
    for cell in cells:
        if cell["cell_type"] == "markdown":
            text = "".join(cell["source"])
            markers = EXERCISE.findall(text)
            current = markers[-1] if markers else (None if text.startswith("## ") else current)
        if current is None or current in part.exercises:
            kept.append(cell)
    return kept


def chapter_budget(chapter: int, machine_s: float | None = None) -> Budget:
    from course_lib.notebook.exercises import EXERCISES

    part = PLAN[chapter]
    notebook = next((ROOT / "notebooks").glob(f"{chapter:02d}_*.ipynb"))
    cells = _without_homework(_cells_in_class(json.loads(notebook.read_text())["cells"], part), part)
    markdown = ["".join(c["source"]) for c in cells if c["cell_type"] == "markdown"]
    # Table rules (|---|---|) are not words.
    words = sum(len(re.sub(r"\|[-: |]+\|", " ", text).split()) for text in markdown)
    code = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
    cells_to_run = sum("check(" not in source and "solution(" not in source for source in code)
    keys = [k for k in EXERCISES if k.split(".")[0] == str(chapter)]
    exercises = len(keys if part.exercises is None else [k for k in keys if k in part.exercises])
    machine = MACHINE_SECONDS.get(chapter) if machine_s is None else machine_s
    return Budget(chapter, words, cells_to_run, exercises, machine)


def _clock(minutes: int) -> str:
    return f"{minutes // 60}:{minutes % 60:02d}"


BREAK_AFTER = 4  # the break comes after this chapter


def table(budgets: list[Budget]) -> str:
    """The agenda: one row per item, in class order, with its start time and its budget."""
    rows = ["| starts | item | words | reading | cells to run | running | exercises | exercise time "
            "| machine | budget (min) |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    now = 0

    def fixed(item: str, minutes: int) -> None:
        nonlocal now
        rows.append(f"| {_clock(now)} | {item} | | | | | | | | {minutes} |")
        now += minutes

    fixed("laptop problems: start JupyterLab in the workshop profile, fix what fails", LAPTOP_PROBLEMS_MINUTES)
    for b in budgets:
        machine = "not measured" if b.machine_s is None else f"{b.machine_s / 60:.1f} min"
        minutes = math.ceil(b.total_min)
        rows.append(f"| {_clock(now)} | chapter {b.chapter} | {b.words:,} | {b.reading_min:.1f} min | "
                    f"{b.cells} | {b.running_min:.1f} min | {b.exercises} | {b.exercise_min:.1f} min | "
                    f"{machine} | {minutes} |")
        now += minutes
        if b.chapter == BREAK_AFTER:
            fixed("break", BREAK_MINUTES)
    rows.append(f"| {_clock(now)} | wrap-up and questions (what is left of 3 hours) | | | | | | | | {180 - now} |")
    return "\n".join(rows)


def main() -> None:
    sys.path.insert(0, str(ROOT))
    print(table([chapter_budget(chapter) for chapter in PLAN]))


if __name__ == "__main__":
    main()

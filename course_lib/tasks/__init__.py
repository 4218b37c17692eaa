"""Tasks: what the GPT learns to do, each a small plug-in (data, model, scores, files) of the one pipeline.

To add a task: write a module here with a `TaskSpec` subclass and an instance named `TASK`, add
its name to `config.Task`, and register the module below.
"""

from __future__ import annotations

import importlib

from course_lib.config import Task, parse_task
from course_lib.tasks.base import Scores, TaskSpec

__all__ = ["REGISTRY", "Scores", "TaskSpec", "get_task"]

REGISTRY = {Task.CLASSIFY: "course_lib.tasks.classify", Task.GENERATE: "course_lib.tasks.generate",
            Task.CHAT: "course_lib.tasks.chat"}


def get_task(task: Task | str) -> TaskSpec:
    """The plug-in of a task, by its name."""
    return importlib.import_module(REGISTRY[parse_task(task)]).TASK

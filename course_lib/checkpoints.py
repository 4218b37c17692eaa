"""Training checkpoints: what an interrupted run needs to continue exactly where it stopped.

After every epoch the loop hands its state (trainable weights, optimizer, scheduler, data
order, random number generator, history, best weights) to a TrainingCheckpoint, which writes
it atomically. `finetune --resume` reads it back with torch.load(weights_only=True): plain
tensors and numbers only, no pickled code.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from course_lib.errors import CourseError

STATE_FILE = "training_state.pt"


class TrainingCheckpoint:
    """One folder holding the state of the last finished epoch."""

    def __init__(self, folder: Path, fingerprint: dict | None = None):
        self.folder = Path(folder)
        self.fingerprint = fingerprint or {}  # the run's settings: resume only the same run

    @property
    def path(self) -> Path:
        """The state file."""
        return self.folder / STATE_FILE

    def exists(self) -> bool:
        """True when an earlier run left a state to resume from."""
        return self.path.exists()

    def save(self, state: dict) -> None:
        """Write the state atomically: a crash mid-write keeps the previous epoch's state."""
        self.folder.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(dir=self.folder, prefix=".state-", suffix=".tmp")
        os.close(handle)
        try:
            torch.save({**state, "fingerprint": repr(sorted(self.fingerprint.items()))}, tmp)
            os.replace(tmp, self.path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    def load(self) -> dict:
        """Read the state back (tensors and plain values only), checking it is the same run."""
        state = torch.load(self.path, weights_only=True)
        if state.pop("fingerprint") != repr(sorted(self.fingerprint.items())):
            raise CourseError(
                f"The checkpoint in {self.folder} was made with other settings. Resume with the "
                "same options, or delete that folder to start afresh."
            )
        return state

    def clear(self) -> None:
        """Remove the checkpoint once the run has finished and its results are saved."""
        if self.path.exists():
            self.path.unlink()
        if self.folder.exists() and not any(self.folder.iterdir()):
            self.folder.rmdir()

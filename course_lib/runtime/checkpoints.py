"""Training checkpoints: what an interrupted run needs to continue exactly where it stopped.

After every epoch the loop hands its state (trainable weights, optimizer, scheduler, data
order, every random number stream, history, best weights) to a TrainingCheckpoint, which writes
it atomically. `finetune --resume` reads it back with torch.load(weights_only=True): plain
tensors and numbers only, no pickled code.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch

from course_lib.errors import CourseError

STATE_FILE = "training_state.pt"
PLAN_FILE = "plan.json"  # the size a time budget chose: a resumed run keeps it (pipeline.fit_to_budget)


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
        for name in (STATE_FILE, PLAN_FILE):
            (self.folder / name).unlink(missing_ok=True)
        if self.folder.exists() and not any(self.folder.iterdir()):
            self.folder.rmdir()


def rng_state() -> dict:
    """Every random stream a training step may draw from, as tensors and plain numbers.

    torch's CPU generator, each CUDA device's generator (where CUDA is available), NumPy's global
    generator and Python's `random`: with all of them restored, a resumed run draws what an
    uninterrupted one would (dropout masks, shuffles, sampling) on any device. NumPy's and
    Python's states become int64 tensors, so torch.load(weights_only=True) reads them back.
    """
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": gauss_next},
    }


def restore_rng_state(state: dict) -> None:
    """Put every stream saved by rng_state back (the CUDA ones for the devices present)."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        for device, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, device)
    numpy = state["numpy"]
    np.random.set_state((numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["pos"],
                         numpy["has_gauss"], numpy["cached_gaussian"]))
    python = state["python"]
    random.setstate((python["version"], tuple(python["internal"].tolist()), python["gauss_next"]))

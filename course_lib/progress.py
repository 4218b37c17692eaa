"""Progress reporting for the training loop: callbacks hang off the loop, not inside it."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

if TYPE_CHECKING:
    from course_lib.training import EpochRecord, History


class TrainingCallback:
    """Hooks the loop calls; override the ones you need (plots, widgets, logging)."""

    def on_train_begin(self, total_steps: int) -> None:
        """Called once, with the number of batches the run will process."""

    def on_step(self, step: int, loss: float, history: History) -> None:
        """Called after every training batch with its loss and the History so far."""

    def on_epoch_end(self, record: EpochRecord, history: History) -> None:
        """Called after validation at the end of each epoch."""

    def on_train_end(self, history: History) -> None:
        """Called once when training stops (finished, early-stopped or interrupted)."""


class TqdmProgress(TrainingCallback):
    """A progress bar over all steps and one printed line per epoch."""

    def __init__(self, file=None):
        self.file = file or sys.stderr
        self.bar: tqdm | None = None

    def on_train_begin(self, total_steps: int) -> None:
        self.bar = tqdm(total=total_steps, desc="Training", unit="batch", file=self.file)

    def on_step(self, step: int, loss: float, history: History) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.3f}")

    def on_epoch_end(self, record: EpochRecord, history: History) -> None:
        line = (
            f"Epoch {record.epoch}/{history.planned_epochs}: train loss {record.train_loss:.4f} "
            f"(mean over the epoch), val loss {record.val_loss:.4f}, "
            f"val accuracy {record.val_accuracy:.3f} ({record.seconds:.0f} s)"
        )
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, file=self.file)

    def on_train_end(self, history: History) -> None:
        if self.bar is not None:
            self.bar.close()

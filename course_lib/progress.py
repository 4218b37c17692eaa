"""Progress reporting for the training loop: callbacks hang off the loop, not inside it."""

from __future__ import annotations

import sys
import threading
import time

from tqdm.auto import tqdm

from course_lib.errors import TrainingStopped
from course_lib.records import EpochRecord, History


class TrainingCallback:
    """Hooks the loop calls; override the ones you need (plots, widgets, logging)."""

    def on_train_begin(self, total_steps: int) -> None:
        """Called once, with the number of batches the run will process."""

    def on_step(self, step: int, loss: float, history: History) -> None:
        """Called after every training batch with its loss and the History so far."""

    def on_epoch_end(self, record: EpochRecord, history: History) -> None:
        """Called after validation at the end of each epoch."""

    def ends_training(self, epoch: int, step: int) -> bool:
        """Asked after every weight update (epoch from 1, its batches done): True ends training there.

        The epoch is still validated; no later epoch starts.
        """
        return False

    def on_train_end(self, history: History) -> None:
        """Called once when training stops (finished, early-stopped or interrupted)."""


def epoch_line(record: EpochRecord, planned_epochs: int) -> str:
    """One readable line per epoch: losses, then whatever scores this kind of model has."""
    scores = [f"val accuracy {record.val_accuracy:.3f}"] if record.val_accuracy is not None else []
    scores += [f"{name.replace('_', ' ')} {value:.1f}" for name, value in record.metrics.items()]
    return (f"Epoch {record.epoch}/{planned_epochs}: train loss {record.train_loss:.3f} (mean over the "
            f"epoch), val loss {record.val_loss:.3f}{''.join(', ' + s for s in scores)} ({record.seconds:.0f} s)")


class TqdmProgress(TrainingCallback):
    """A progress bar in a terminal or notebook; in a file or CI log, one plain line every `every` s.

    A bar redraws itself many times a second; written to a log file, each redraw becomes one
    more piece of text (a default run used to write thousands), so a log gets a short line at
    most every `every` seconds instead.
    """

    def __init__(self, file=None, every: float = 15.0):
        self.file = file or sys.stderr
        self.every = every
        self.bar: tqdm | None = None
        self.total, self.start, self.last_line, self.done = 0, 0.0, 0.0, 0

    def on_train_begin(self, total_steps: int) -> None:
        self.total, self.done = total_steps, 0
        self.start = self.last_line = time.perf_counter()
        if _interactive(self.file):
            self.bar = tqdm(total=total_steps, desc="Training", unit="batch", file=self.file)

    def on_step(self, step: int, loss: float, history: History) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.3f}")
            return
        now = time.perf_counter()
        if now - self.last_line >= self.every or self.done == self.total:
            self.last_line = now
            print(f"Training: batch {self.done}/{self.total}, loss {loss:.3f}, "
                  f"{now - self.start:.0f} s elapsed", file=self.file, flush=True)

    def on_epoch_end(self, record: EpochRecord, history: History) -> None:
        line = epoch_line(record, history.planned_epochs)
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, file=self.file, flush=True)

    def on_train_end(self, history: History) -> None:
        if self.bar is not None:
            self.bar.close()


def _interactive(file) -> bool:
    """True for a terminal or a Jupyter kernel (where tqdm.auto draws a widget), False for a file or pipe."""
    try:
        from IPython import get_ipython
    except ImportError:
        get_ipython = lambda: None  # noqa: E731  (no IPython: certainly not a kernel)
    shell = get_ipython()
    if shell is not None and "IPKernelApp" in shell.config:
        return True
    return hasattr(file, "isatty") and file.isatty()


class EpochLines(TrainingCallback):
    """Only the per-epoch lines, no progress bar: for notebooks that draw a live plot instead."""

    def on_epoch_end(self, record: EpochRecord, history: History) -> None:
        print(epoch_line(record, history.planned_epochs))


class StopSwitch(TrainingCallback):
    """Stops training at the next batch once `request()` is called, from any thread.

    A flag the loop reads, rather than the kernel's interrupt: a button callback may run in
    another thread (ipykernel 7 runs some in subshells), where an interrupt never arrives.
    """

    def __init__(self):
        self.requested = threading.Event()

    def request(self) -> None:
        """Ask the run to stop after the batch it is on."""
        self.requested.set()

    def on_train_begin(self, total_steps: int) -> None:
        self._stop_if_requested()

    def on_step(self, step: int, loss: float, history: History) -> None:
        self._stop_if_requested()

    def _stop_if_requested(self) -> None:
        if self.requested.is_set():
            raise TrainingStopped("Stopped on request; the model keeps the best weights so far.")

"""Records every layer shares: what the training loop measured, and the label the loss skips."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

IGNORE_INDEX = -100  # the label PyTorch's cross-entropy skips: no loss on the masked prompt or padding


@dataclass
class EpochRecord:
    """What one epoch achieved."""

    epoch: int
    train_loss: float  # mean over the epoch's batches
    val_loss: float
    val_accuracy: float | None  # None for a language model, which has no classes
    val_f1: float | None
    seconds: float  # training and validation
    metrics: dict[str, float] = field(default_factory=dict)  # more per-epoch scores, e.g. val BLEU
    train_seconds: float | None = None  # the training steps alone (None: a record from before it was kept)


@dataclass
class History:
    """Everything the loop measured: plots, early stopping and saving all read it."""

    planned_epochs: int = 0
    step_losses: list[float] = field(default_factory=list)
    epochs: list[EpochRecord] = field(default_factory=list)
    steps_per_epoch: int = 0
    best_epoch: int | None = None
    stopped_early: bool = False
    ended_by: str | None = None  # a callback that ended training before its planned steps, e.g. "Deadline"
    # Where other programs took cores and the loop changed its thread count (runtime.cpu_share):
    # {"step", "threads", "others": cores they kept busy, "stolen": of which a VM's host took}.
    thread_changes: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        """A JSON-ready copy."""
        return asdict(self)

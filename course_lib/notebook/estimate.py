"""How long will a setting take? An estimate from one measured forward pass, shown before Train.

The cost of fine-tuning is counted in "forward passes through the whole model": a backward
pass costs about two forwards, frozen blocks cost one forward per review once (the course
caches their output), and trainable blocks cost three per review per epoch. One timed forward
pass on real reviews turns that count into seconds on this machine.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from course_lib.config import TrainConfig
from course_lib.runtime.budget import padded_tokens

BACKWARD_FACTOR = 3.0  # forward + backward ≈ 3 forwards (the backward computes two gradients)


@dataclass(frozen=True)
class CostModel:
    """Measured seconds per token of one full forward pass, and the data it will be applied to."""

    seconds_per_token: float
    train_lengths: Sequence[int]  # token count of every training review, before truncation
    val_lengths: Sequence[int]
    blocks: int  # transformer blocks in the model

    def seconds(self, config: TrainConfig) -> float:
        """Estimated wall time of training `config` (training and validation passes)."""
        return sum(self.epoch_seconds(config))

    def epoch_seconds(self, config: TrainConfig) -> list[float]:
        """Estimated seconds of each epoch, validation included: with cached frozen blocks the first costs most."""
        train_tokens = padded_tokens(self.train_lengths, config.max_length, config.batch_size, config.seed)
        val_tokens = sum(min(n, config.max_length) for n in self.val_lengths)  # sorted batches: little padding
        k = config.top_blocks()
        top = 1.0 if k is None else min(k, self.blocks) / self.blocks  # full or LoRA: every block, every epoch
        every_epoch = top * (BACKWARD_FACTOR * train_tokens + val_tokens) * self.seconds_per_token
        once = (1 - top) * (train_tokens + val_tokens) * self.seconds_per_token  # frozen bottom, first epoch
        return [every_epoch + (once if epoch == 0 else 0.0) for epoch in range(config.epochs)]


def remaining_seconds(epochs: Sequence[float], steps_per_epoch: int, done: int, elapsed: float) -> float:
    """Time left in a run: the estimate of what is still to come, corrected by how the run is doing so far.

    Each epoch's estimate is spread over its steps, so a cheap later epoch (frozen blocks cached)
    is not priced like the first. The correction (elapsed over what the estimate expected by
    now) is trusted more as batches accumulate: the first batch alone is slow and says little.
    """
    full, part = divmod(done, steps_per_epoch)
    expected = sum(epochs[:full]) + (epochs[full] * part / steps_per_epoch if full < len(epochs) else 0.0)
    if expected <= 0:
        return sum(epochs)
    trust = min(1.0, done / max(3, len(epochs) * steps_per_epoch // 20))
    ratio = 1 + (elapsed / expected - 1) * trust
    return max(0.0, (sum(epochs) - expected) * ratio)


@torch.inference_mode()
def measure_seconds_per_token(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int = 64
) -> float:
    """Time a forward pass over a batch of real texts (best of three) and divide by its tokens."""
    batch = tokenizer(list(texts), truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    model.eval()
    model(**batch)  # warm-up: the first call allocates buffers
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        model(**batch)
        best = min(best, time.perf_counter() - start)
    return best / batch["input_ids"].numel()


def format_duration(seconds: float) -> str:
    """A rounded duration a person reads at a glance: '40 s', '1 min 20 s', '32 min', '1 h 05 min'."""
    if seconds < 60:
        return f"{max(5, round(seconds / 5) * 5):.0f} s"
    if seconds < 600:  # short runs: whole minutes would hide a third of the time
        minutes, secs = divmod(round(seconds / 10) * 10, 60)
        return f"{minutes} min {secs} s" if secs else f"{minutes} min"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"

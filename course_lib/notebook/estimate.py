"""How long will a setting take? An estimate from one measured forward pass, shown before Train.

The cost of fine-tuning is counted in "forward passes through the whole model": a backward
pass costs about two forwards, frozen blocks cost one forward per review once (the course
caches their output), and trainable blocks cost three per review per epoch. One timed forward
pass on real reviews turns that count into seconds on this machine.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from course_lib.config import TrainConfig

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
        train_tokens = _padded_tokens(self.train_lengths, config.max_length, config.batch_size, config.seed)
        val_tokens = sum(min(n, config.max_length) for n in self.val_lengths)  # sorted batches: little padding
        k = config.top_blocks()
        if k is None:  # full or LoRA: every epoch runs every block, forward and backward
            units = config.epochs * (BACKWARD_FACTOR * train_tokens + val_tokens)
        else:  # frozen bottom once per review, trainable top every epoch
            top = min(k, self.blocks) / self.blocks
            units = (1 - top) * (train_tokens + val_tokens)
            units += config.epochs * top * (BACKWARD_FACTOR * train_tokens + val_tokens)
        return units * self.seconds_per_token


def _padded_tokens(lengths: Sequence[int], max_length: int, batch_size: int, seed: int) -> int:
    """Tokens the model processes in one shuffled epoch: each batch is padded to its longest row."""
    order = list(lengths)
    random.Random(seed).shuffle(order)
    total = 0
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        total += len(batch) * min(max(batch), max_length)
    return total


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
    """A rounded duration a person reads at a glance: '40 s', '3 min', '1 h 05 min'."""
    if seconds < 60:
        return f"{max(5, round(seconds / 5) * 5):.0f} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"

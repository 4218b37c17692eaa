"""Training: the seed document's fine-tuning loop, corrected, and evaluation.

What changed from the seed's sketch, and why:
* `torch.optim.AdamW` instead of `transformers.AdamW`, which was removed from transformers;
* `device` and the data loader are real arguments instead of names that were never defined;
* the loss printed per epoch is the mean over the epoch, not the last batch's (which is noise);
* validation runs after every epoch, and the best epoch's weights are kept;
* warm-up + linear decay, gradient clipping and accumulation keep fine-tuning stable.

The same loop trains a classifier (labels are one class id per text) and a writer (labels are
the next token at every position): the model computes its own loss either way, so only the
evaluation differs. The caller says which (`num_labels=None` for a writer).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from transformers import get_linear_schedule_with_warmup

from course_lib.config import TrainConfig
from course_lib.errors import TrainingError
from course_lib.metrics import classification_metrics
from course_lib.progress import TrainingCallback
from course_lib.records import IGNORE_INDEX, EpochRecord, History
from course_lib.runtime.checkpoints import TrainingCheckpoint, restore_rng_state, rng_state
from course_lib.runtime.distributed import Parallel, data_order_generator, examples_in
from course_lib.runtime.speed import (
    autocast,
    mask_can_be_dropped,
    maybe_compile,
    prepare_backend,
    without_end_padding_mask,
)


@dataclass
class EvalResult:
    """Loss, predictions and metrics of one pass over a labelled loader."""

    loss: float
    labels: list[int]
    predictions: list[int]
    probabilities: list[list[float]]
    metrics: dict


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch so a run can be repeated exactly (on CPU)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def move_to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """Put every tensor of a batch on the device (the seed used `device` without defining it).

    On a GPU the copy is queued without waiting (from pinned memory it overlaps with compute).
    """
    return {key: value.to(device, non_blocking=device.type == "cuda") for key, value in batch.items()}


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    num_labels: int | None,
    amp: bool = False,
    parallel: Parallel | None = None,
) -> EvalResult:
    """Loss, predictions and metrics on a loader, without building gradients.

    num_labels=None means a language model: the result holds the loss and its perplexity.
    With several processes each one scores its shard and every process gets the whole result.
    """
    parallel = parallel or Parallel()
    if num_labels is None:
        return _evaluate_language_model(model, loader, device, amp, parallel)
    model.eval()
    losses, labels, probabilities = [], [], []  # per batch, from every process, on the device
    for batch in loader:
        batch = move_to(batch, device)
        inputs = {key: value for key, value in batch.items() if key != "labels"}  # the loss is ours
        with autocast(device, amp):
            logits = model(**inputs).logits.float()
        losses.append(parallel.gather(F.cross_entropy(logits, batch["labels"], reduction="none")))
        labels.append(parallel.gather(batch["labels"]))
        probabilities.append(parallel.gather(logits.softmax(dim=-1)))
    # Sharded loaders complete their last batches with repeats of the first examples: keep
    # exactly one copy of each (what Accelerate's gather_for_metrics does for its own loaders).
    n = examples_in(loader)
    probs = torch.cat(probabilities)[:n].cpu()  # one copy back from the device, not one per batch
    labels = torch.cat(labels)[:n].tolist()
    predictions = probs.argmax(dim=-1).tolist()
    loss = float(torch.cat(losses)[:n].mean()) if n else 0.0
    metrics = classification_metrics(labels, predictions, num_labels)
    return EvalResult(loss, labels, predictions, probs.tolist(), metrics)


def _evaluate_language_model(model: nn.Module, loader: DataLoader, device: torch.device, amp: bool,
                             parallel: Parallel) -> EvalResult:
    """Mean loss per predicted token, and its perplexity, for a language model.

    With several processes the sums are added up over all of them, so every process gets the
    same loss (and makes the same early-stopping decision); the few examples a shard repeats to
    even out its last batch count twice.
    """
    model.eval()
    total_loss, count = 0.0, 0
    for batch in loader:
        batch = move_to(batch, device)
        with autocast(device, amp):
            outputs = model(**batch)
        size = loss_targets(batch["labels"])
        total_loss += outputs.loss.item() * size
        count += size
    if parallel.num_processes > 1:
        total_loss, count = parallel.gather(torch.tensor([[total_loss, count]], device=device)).sum(0).tolist()
    loss = total_loss / max(count, 1)
    return EvalResult(loss, [], [], [], {"perplexity": math.exp(min(loss, 50.0))})


def loss_targets(labels: torch.Tensor) -> int:
    """How many targets a batch's mean loss averages over, so batches can be weighted fairly.

    A classifier has one label per row. A language model predicts token t+1 at position t, so
    its targets are the labels from the second position on that are not IGNORE_INDEX (the
    masked prompt and padding).
    """
    if labels.dim() == 1:
        return labels.shape[0]
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


def make_optimizer(trainable: list[torch.nn.Parameter], config: TrainConfig, device: torch.device,
                   fused: bool | None = None) -> torch.optim.AdamW:
    """AdamW over the trainable weights, as `train` builds it (`fused` None: fused on CUDA and CPU)."""
    if fused is None:
        # One fused kernel instead of a loop over tensors: on 2 CPU cores it updates top-12's 42 M
        # weights about 3x faster, saving 8-9 % of a cached step (benchmarks/README.md, "Optimizer step").
        fused = device.type in ("cuda", "cpu")
    return torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay, fused=fused)


def train(
    model: nn.Module,
    train_loader: DataLoader,
    val_loader: DataLoader,
    config: TrainConfig,
    device: torch.device,
    num_labels: int | None,
    callbacks: Iterable[TrainingCallback] = (),
    checkpoint: TrainingCheckpoint | None = None,
    parallel: Parallel | None = None,
) -> History:
    """Fine-tune `model` and return its History; the best epoch's weights are restored at the end.

    num_labels is the classifier's number of classes, or None for a language model.

    With a `checkpoint`, the state is saved after every epoch, and a run that finds one
    continues after its last finished epoch (with the same result as an uninterrupted run).
    With `parallel` from several launched processes, each trains on its shard of the batches
    and DDP averages the gradients (see course_lib.runtime.distributed); alone, it changes nothing.
    """
    callbacks = list(callbacks)
    parallel = parallel or Parallel()
    prepare_backend(device)
    model.to(device)
    wrapped = parallel.prepare_model(model)  # several processes: DDP, which averages gradients
    forward = maybe_compile(wrapped, config.compile)  # the same weights, maybe compiled
    drop_mask = mask_can_be_dropped(model, device, config.compile)  # lets attention use flash on a GPU
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(trainable, config, device)
    updates_per_epoch = -(-len(train_loader) // config.grad_accum_steps)  # ceiling division
    total_updates = updates_per_epoch * config.epochs
    scheduler = get_linear_schedule_with_warmup(
        optimizer, int(config.warmup_fraction * total_updates), total_updates
    )
    history = History(planned_epochs=config.epochs, steps_per_epoch=len(train_loader))
    best = _BestWeights(config.early_stopping_patience)
    first_epoch = 1
    if checkpoint is not None and checkpoint.exists():
        first_epoch = _resume(checkpoint.load(), model, optimizer, scheduler, train_loader,
                              history, best) + 1
    for cb in callbacks:
        cb.on_train_begin(len(train_loader) * config.epochs)
    enders = [cb for cb in callbacks if type(cb).ends_training is not TrainingCallback.ends_training]

    try:
        for epoch in range(first_epoch, config.epochs + 1):
            start = time.perf_counter()
            model.train()
            epoch_losses, pending, ended = [], [], False
            for step, batch in enumerate(train_loader, start=1):
                batch = move_to(without_end_padding_mask(batch) if drop_mask else batch, device)
                update = step % config.grad_accum_steps == 0 or step == len(train_loader)
                with parallel.no_sync(wrapped, update):  # DDP averages gradients only before an update
                    with autocast(device, config.mixed_precision):
                        outputs = forward(**batch)  # forward pass; the model computes the loss
                    loss = outputs.loss / config.grad_accum_steps  # average over accumulated batches
                    loss.backward()  # gradients of the loss w.r.t. every trainable weight
                pending.append(parallel.mean(outputs.loss.detach()))  # still on the device
                if len(pending) == loss_read_interval(device):
                    _read_losses(pending, epoch_losses, history, callbacks, epoch, config)
                if update:
                    torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
                    optimizer.step()  # update the weights
                    scheduler.step()  # then move the learning rate along its schedule
                    optimizer.zero_grad(set_to_none=True)  # gradients would otherwise add up
                    if _ending(enders, epoch, step, history, parallel):
                        ended = True  # e.g. a time budget runs out: validate what was trained, then stop
                        break
            if pending:
                _read_losses(pending, epoch_losses, history, callbacks, epoch, config)
            trained_s = time.perf_counter() - start

            val = evaluate(model, val_loader, device, num_labels, config.mixed_precision, parallel)
            record = EpochRecord(
                epoch=epoch,
                train_loss=float(np.mean(epoch_losses)),
                val_loss=val.loss,
                val_accuracy=val.metrics.get("accuracy"),
                val_f1=val.metrics.get("f1"),
                seconds=time.perf_counter() - start,
                train_seconds=trained_s,
            )
            history.epochs.append(record)
            for cb in callbacks:
                cb.on_epoch_end(record, history)
            stop = best.update(model, epoch, val.loss)  # the same decision in every process
            if checkpoint is not None and parallel.is_main_process:
                checkpoint.save(_state(epoch, model, optimizer, scheduler, train_loader, history, best))
            if stop or ended:
                history.stopped_early = stop and epoch < config.epochs
                break
    except torch.cuda.OutOfMemoryError as exc:
        raise TrainingError(out_of_memory_advice(config)) from exc
    finally:
        # Also on Ctrl-C: the model keeps the best weights seen so far, the history its steps.
        history.best_epoch = best.restore(model)
        for cb in callbacks:
            cb.on_train_end(history)
    return history


def _ending(enders: list[TrainingCallback], epoch: int, step: int, history: History, parallel: Parallel) -> bool:
    """Whether a callback ends training after this update (History.ended_by says which), agreed by every process.

    `enders` are the callbacks that can end training (the same in every process). Processes
    that stopped at different steps would wait for each other forever, so one that wants to
    end tells the others, and they all end at this step.
    """
    if not enders:  # nothing to ask, and no reason to make the processes wait for each other
        return False
    wanting = [type(cb).__name__ for cb in enders if cb.ends_training(epoch, step)]
    if not parallel.any(bool(wanting)):
        return False
    history.ended_by = wanting[0] if wanting else "another process"
    return True


def loss_read_interval(device: torch.device) -> int:
    """Steps between reading losses back to the host.

    On a CPU reading a loss is free. On a GPU `.item()` makes the host wait until the device
    has finished every queued kernel, which leaves the GPU idle while Python prepares the
    next step; reading 16 steps' losses at once keeps it busy.
    """
    return 16 if device.type == "cuda" else 1


def _read_losses(pending: list[torch.Tensor], epoch_losses: list[float], history: History,
                 callbacks: list[TrainingCallback], epoch: int, config: TrainConfig) -> None:
    """Copy the pending step losses to the host in one go, check them and tell the callbacks."""
    values = torch.stack(pending).tolist()
    pending.clear()
    for value in values:
        _check_finite(value, len(history.step_losses) + 1, epoch, config)
        epoch_losses.append(value)
        history.step_losses.append(value)
        for cb in callbacks:
            cb.on_step(len(history.step_losses), value, history)


def _state(epoch, model, optimizer, scheduler, loader, history, best) -> dict:
    """Everything the next epoch depends on, as tensors and plain values."""
    generator = data_order_generator(loader)
    return {
        "epoch": epoch,
        "trainable": {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "data_order": generator.get_state() if generator is not None else None,
        "rng": rng_state(),  # torch CPU and CUDA, NumPy, Python: resume holds on any device
        "history": history.to_dict(),
        "best": {"loss": best.best_loss, "epoch": best.best_epoch, "state": best.state},
    }


def _resume(state, model, optimizer, scheduler, loader, history, best) -> int:
    """Load a saved state into the run's objects; return the last finished epoch."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state["trainable"].items():
            params[name].copy_(value)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    generator = data_order_generator(loader)
    if generator is not None and state["data_order"] is not None:
        generator.set_state(state["data_order"])
    restore_rng_state(state["rng"])
    saved = state["history"]
    history.step_losses[:] = saved["step_losses"]
    history.epochs[:] = [EpochRecord(**record) for record in saved["epochs"]]
    history.thread_changes[:] = saved.get("thread_changes", [])  # (a checkpoint from before it was kept)
    best.best_loss, best.best_epoch = state["best"]["loss"], state["best"]["epoch"]
    best.state = state["best"]["state"]
    return state["epoch"]


def _check_finite(loss: float, step: int, epoch: int, config: TrainConfig) -> None:
    """Stop at the first NaN or infinite loss: training on would only destroy the weights."""
    if not math.isfinite(loss):
        raise TrainingError(
            f"The loss became {loss} at step {step} (epoch {epoch}). The learning rate "
            f"({config.learning_rate:g}) is most likely too high: try {config.learning_rate / 10:g}. "
            "The best weights so far were kept."
        )


def out_of_memory_advice(config: TrainConfig) -> str:
    """What to change when a batch does not fit in GPU memory."""
    return (
        f"The GPU ran out of memory with batch size {config.batch_size} and max length "
        f"{config.max_length}. Try --batch-size {max(1, config.batch_size // 2)} (and keep the "
        f"effective batch with grad_accum_steps={config.grad_accum_steps * 2}), a shorter "
        "--max-length, or fewer --train-blocks."
    )


class _BestWeights:
    """Keeps a copy of the trainable weights of the epoch with the lowest validation loss."""

    def __init__(self, patience: int | None):
        self.patience = patience
        self.best_loss = float("inf")
        self.best_epoch: int | None = None
        self.state: dict[str, torch.Tensor] | None = None

    def update(self, model: nn.Module, epoch: int, val_loss: float) -> bool:
        """Record this epoch; return True when training should stop early."""
        if val_loss < self.best_loss:
            self.best_loss, self.best_epoch = val_loss, epoch
            # Only trainable weights change, so only they need copying.
            self.state = {
                name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad
            }
            return False
        return self.patience is not None and epoch - self.best_epoch >= self.patience

    def restore(self, model: nn.Module) -> int | None:
        """Load the best weights back into the model; return the best epoch."""
        if self.state is not None:
            params = dict(model.named_parameters())
            with torch.no_grad():
                for name, value in self.state.items():
                    params[name].copy_(value)
        return self.best_epoch

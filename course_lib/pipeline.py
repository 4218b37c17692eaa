"""The whole document end to end: task, cleaning, split, fine-tuning, saving, test evaluation.

Each step is its own function so the chapter notebooks can run them one at a time;
`run_finetune` chains them for the command line.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from datasets import DatasetDict
from torch import nn
from torch.utils.data import DataLoader
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from course_lib.assets import atomic_dir, readable_path
from course_lib.checkpoints import TrainingCheckpoint
from course_lib.config import DataConfig, GenerationRunConfig, RunConfig, Task, TrainConfig, model_settings
from course_lib.cpu_share import share_callbacks
from course_lib.data import (
    CleaningReport,
    LabelMap,
    clean_table,
    count_truncated,
    make_loader,
    read_table,
    split_table,
    to_dataset_dict,
    tokenize,
)
from course_lib.distributed import Parallel
from course_lib.errors import ConfigError, TrainingInterrupted
from course_lib.features import (
    CachingLoader,
    FrozenBottom,
    TrainableTop,
    feature_key,
    feature_store,
    split_matches_full_model,
)
from course_lib.metrics import majority_baseline
from course_lib.models import (
    apply_strategy,
    block_count,
    count_parameters,
    load_classifier,
    merge_adapters,
    pick_device,
    transformer_blocks,
)
from course_lib.plots import plot_loss_curves
from course_lib.progress import TqdmProgress, TrainingCallback
from course_lib.saving import INFO_FILE, load_finetuned, save_finetuned
from course_lib.speed import busy_warning, precision_note, quantize_int8, uses_bf16
from course_lib.training import EvalResult, History, evaluate, set_seed, train

Log = Callable[[str], None]


@dataclass
class PreparedData:
    """The cleaned, split data with its label map."""

    splits: dict[str, pd.DataFrame]
    label_map: LabelMap
    report: CleaningReport
    datasets: DatasetDict


@dataclass
class FinetuneResult:
    """What a run produced."""

    history: History
    test_metrics: dict
    baseline: dict
    output_dir: Path | None
    seconds: dict[str, float] = field(default_factory=dict)
    model: PreTrainedModel | None = field(default=None, repr=False)
    tokenizer: PreTrainedTokenizerBase | None = field(default=None, repr=False)
    label_map: LabelMap | None = None
    int8: dict | None = None  # the int8 copy's test metrics and speed, when asked for


def prepare_data(config: DataConfig) -> PreparedData:
    """Steps 1-3 of the document: load the reviews, clean them, split them."""
    frame, report = clean_table(read_table(config))
    label_map = LabelMap.from_labels(frame["label"])
    splits = split_table(frame, config)
    return PreparedData(splits, label_map, report, to_dataset_dict(splits, label_map))


def training_loaders(
    model: PreTrainedModel,
    tokens: DatasetDict,
    tokenizer: PreTrainedTokenizerBase,
    config: TrainConfig,
    device: torch.device,
    log: Log = print,
    parallel: Parallel | None = None,
) -> tuple[nn.Module, Iterable[dict], Iterable[dict]]:
    """The module to train and its train/validation batches, with the frozen blocks cached if possible.

    With several processes the loaders yield this process's shard; the cache then holds the
    features of the reviews this process has drawn.
    """
    def token_loader(split: str, shuffle: bool) -> DataLoader:
        size = config.batch_size if shuffle else config.eval_batch_size
        return make_loader(tokens[split], tokenizer, size, shuffle=shuffle, seed=config.seed,
                           sort_by_length=not shuffle, parallel=parallel)

    k = config.top_blocks()
    if config.cache_frozen and k is not None and k < len(transformer_blocks(model)):
        model.to(device)
        bottom, top = FrozenBottom(model, k), TrainableTop(model, k)
        probe = next(iter(token_loader("validation", False)))
        if split_matches_full_model(model, bottom, top, probe, device):
            loaders = []
            precision = "bf16" if uses_bf16(device, config.mixed_precision) else "float32"
            for split, shuffle in (("train", True), ("validation", False)):
                plain = token_loader(split, shuffle)  # its sampler: the same batches as uncached
                key = feature_key(model.config.name_or_path, k, list(tokens[split]["input_ids"]),
                                  list(tokens[split]["labels"]), precision)
                store, reused = feature_store(key)
                if reused:
                    log(f"Reusing the {split} features an earlier run in this process computed.")
                loaders.append(CachingLoader(bottom, tokens[split], tokenizer, plain.batch_sampler,
                                             device, store, config.mixed_precision))
            log(f"The {len(transformer_blocks(model)) - k} frozen blocks run once per review (during the "
                "first epoch); later epochs reuse their output.")
            return top, loaders[0], loaders[1]
        log(f"{type(model).__name__} cannot be split exactly; training without the cache.")
    return model, token_loader("train", True), token_loader("validation", False)


@dataclass
class FitResult:
    """A fine-tuned model with its tokenizer, tokenized splits and History."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    tokens: DatasetDict
    history: History


def fit(
    model_name: str,
    data: PreparedData,
    config: TrainConfig,
    callbacks: Iterable[TrainingCallback] | None = None,
    log: Log = print,
    checkpoint: TrainingCheckpoint | None = None,
) -> FitResult:
    """Steps 4-5: load the pretrained model with a new head, freeze, tokenize, train."""
    config.validate()
    set_seed(config.seed)  # before loading: the new head's random start is seeded too
    parallel = Parallel.current()
    device = parallel.device(pick_device())
    if device.type == "cpu" and (warning := busy_warning()):
        log(warning)
    model, tokenizer = load_classifier(model_name, data.label_map)
    trained = apply_strategy(model, config)  # the model itself, or wrapped with LoRA adapters
    trainable, total = count_parameters(trained)
    log(f"Model {model_name} on {device}, strategy {config.strategy.value}: "
        f"{trainable:,} of {total:,} parameters trainable ({trainable / total:.1%}).")
    log(precision_note(device, config.mixed_precision))
    tokens = tokenize(data.datasets, tokenizer, config.max_length)
    truncated = count_truncated(data.datasets, tokenizer, config.max_length)
    if truncated:
        log(f"{truncated} reviews are longer than max_length={config.max_length} tokens; "
            "their ends were cut off (raise max_length to keep them).")
    module, train_loader, val_loader = training_loaders(trained, tokens, tokenizer, config, device, log, parallel)
    if callbacks is None:
        callbacks = [TqdmProgress()] if parallel.is_main_process else []
    if parallel.num_processes == 1:  # launched processes already split the cores between them
        callbacks = [*callbacks, *share_callbacks(device)]
    history = train(module, train_loader, val_loader, config, device, len(data.label_map.names),
                    callbacks, checkpoint, parallel)
    return FitResult(merge_adapters(trained), tokenizer, tokens, history)


def evaluate_on_test(fitted: FitResult, config: TrainConfig, n_labels: int) -> EvalResult:
    """Step 7, the part the seed never showed: score the untouched test set once."""
    parallel = Parallel.current()  # several processes: each scores a shard, all get the result
    loader = make_loader(fitted.tokens["test"], fitted.tokenizer, config.eval_batch_size,
                         sort_by_length=True, parallel=parallel)
    device = next(fitted.model.parameters()).device
    return evaluate(fitted.model, loader, device, n_labels, config.mixed_precision, parallel)


def compare_int8(model: nn.Module, loader: Iterable[dict], num_labels: int) -> dict:
    """Evaluate a model and its int8 copy back to back on CPU: accuracy, agreement and speed.

    Dynamic int8 quantisation is a CPU inference technique, so a model trained on a GPU is
    compared through a CPU copy (the trained model itself stays where it is).
    """
    cpu = torch.device("cpu")
    if next(model.parameters()).device.type != "cpu":
        model = copy.deepcopy(model).to(cpu)
    small = quantize_int8(model)
    return _compare_runs(lambda: evaluate(model, loader, cpu, num_labels),
                         lambda: evaluate(small, loader, cpu, num_labels))


def compare_bf16(model: nn.Module, loader: Iterable[dict], num_labels: int) -> dict:
    """Evaluate a CPU model in float32, then under bf16 autocast: accuracy, agreement and speed.

    Where the CPU has no native bf16 (speed.bf16_is_fast), autocast stays off: both runs are float32.
    """
    cpu = torch.device("cpu")
    return _compare_runs(lambda: evaluate(model, loader, cpu, num_labels, amp=False),
                         lambda: evaluate(model, loader, cpu, num_labels, amp=True))


def _compare_runs(reference: Callable[[], EvalResult], candidate: Callable[[], EvalResult]) -> dict:
    """Time two evaluations of the same reviews, one after the other, and compare their predictions."""
    runs = []
    for evaluation in (reference, candidate):
        start = time.perf_counter()
        runs.append((evaluation(), time.perf_counter() - start))
    (full, full_seconds), (other, other_seconds) = runs
    same = sum(a == b for a, b in zip(other.predictions, full.predictions, strict=True))
    return {
        "accuracy_float32": full.metrics["accuracy"],
        "accuracy": other.metrics["accuracy"],
        "accuracy_change": other.metrics["accuracy"] - full.metrics["accuracy"],
        "f1": other.metrics["f1"],
        "agreement_with_float32": same / len(full.predictions),
        "seconds_float32": full_seconds,
        "seconds": other_seconds,
        "speedup": full_seconds / other_seconds,
    }


def int8_report(fitted: FitResult, config: TrainConfig, num_labels: int, log: Log = print) -> dict:
    """Score an int8-quantised CPU copy of the model on the test set and compare it with float32."""
    loader = make_loader(fitted.tokens["test"], fitted.tokenizer, config.eval_batch_size, sort_by_length=True)
    report = compare_int8(fitted.model, loader, num_labels)
    log(f"int8 copy: test accuracy {report['accuracy']:.3f} ({report['accuracy_change']:+.3f}), "
        f"same prediction on {report['agreement_with_float32']:.1%} of reviews, "
        f"{report['speedup']:.2f}x the float32 evaluation speed.")
    return report


def run_finetune(
    config: RunConfig,
    callbacks: Iterable[TrainingCallback] | None = None,
    log: Log = print,
    save: bool = True,
    resume: bool = False,
) -> FinetuneResult:
    """Run the whole document and write model, metrics.json and loss_curve.png to output_dir.

    After every epoch the training state is kept in a checkpoint folder beside output_dir;
    `resume=True` continues an interrupted run from there.
    """
    config.validate()  # bad hyperparameters fail here, before anything slow happens
    _check_blocks(config)
    parallel = Parallel.current()
    if not parallel.is_main_process:  # one voice: only the main process prints and saves
        log = _silent  # (callbacks given here run in every process; the default bar only in the main one)
    checkpoint = checkpoint_for(config, parallel.num_processes)
    if resume and not checkpoint.exists():
        raise ConfigError(f"Nothing to resume: no checkpoint in {checkpoint.folder}.")
    if not resume and parallel.is_main_process:
        checkpoint.clear()
    parallel.wait_for_everyone()  # nobody looks for a checkpoint while the main process clears it
    clock = time.perf_counter()
    data = prepare_data(config.data)
    sizes = {k: len(v) for k, v in data.splits.items()}
    log(f"Data: {data.report.summary()}. Labels {data.label_map.names}. Split sizes {sizes}.")
    times = {"data": time.perf_counter() - clock}

    try:
        fitted = fit(config.model, data, config.train, callbacks, log, checkpoint)
    except KeyboardInterrupt:
        raise TrainingInterrupted(
            f"Interrupted. The last finished epoch is kept in {checkpoint.folder}; run the same "
            "command with --resume to continue from it."
        ) from None
    times["fit"] = time.perf_counter() - clock - times["data"]

    test = evaluate_on_test(fitted, config.train, len(data.label_map.names))
    baseline = majority_baseline(fitted.tokens["train"]["labels"], fitted.tokens["test"]["labels"])
    times["test"] = time.perf_counter() - clock - sum(times.values())
    log(f"Test accuracy {test.metrics['accuracy']:.3f}, macro F1 {test.metrics['f1']:.3f} "
        f"(majority baseline accuracy {baseline['accuracy']:.3f}, F1 {baseline['f1']:.3f}).")

    result = FinetuneResult(fitted.history, test.metrics, baseline, None, times, fitted.model,
                            fitted.tokenizer, data.label_map)
    if config.int8_report and parallel.is_main_process:
        result.int8 = int8_report(fitted, config.train, len(data.label_map.names), log)
    if save and parallel.is_main_process:
        result.output_dir = write_outputs(config, result, fitted.model, fitted.tokenizer,
                                          data.label_map, sizes)
        log(f"Saved model, metrics.json and loss_curve.png to {readable_path(result.output_dir)}")
    if parallel.is_main_process:
        checkpoint.clear()
    times["total"] = time.perf_counter() - clock
    return result


def checkpoint_for(config: RunConfig | GenerationRunConfig, processes: int = 1) -> TrainingCheckpoint:
    """The run's checkpoint folder: hidden beside output_dir, so a failed run leaves output_dir alone.

    A run resumes only with the same settings and number of processes (which set the batches).
    """
    out = Path(config.output_dir)
    fingerprint = {k: v for k, v in config.to_dict().items() if k != "output_dir"}
    if processes > 1:
        fingerprint["processes"] = processes
    return TrainingCheckpoint(out.parent / f".{out.name}.checkpoint", fingerprint)


def _silent(message: str) -> None:
    """The log of a process that is not the main one."""


def _check_blocks(config: RunConfig) -> None:
    """Compare train_blocks with the model's depth from its config, before loading any weights."""
    blocks = config.train.top_blocks()
    if blocks is None:
        return
    available = block_count(config.model)
    if blocks > available:
        raise ConfigError(
            f"train_blocks={blocks} but {config.model} has only {available} blocks; "
            f"use 0 to {available}, or 'all'."
        )


def write_outputs(
    config: RunConfig,
    result: FinetuneResult,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    label_map: LabelMap,
    sizes: dict[str, int],
) -> Path:
    """Write the run's folder in one atomic step: a failed run leaves nothing behind."""
    out = Path(config.output_dir)
    metrics = {
        "test": result.test_metrics,
        "majority_baseline": result.baseline,
        "split_sizes": sizes,
        "labels": label_map.names,
        "history": result.history.to_dict(),
        "seconds": result.seconds,
    }
    if result.int8 is not None:
        metrics["int8"] = result.int8
    with atomic_dir(out) as tmp:
        save_finetuned(tmp / "model", model, tokenizer, label_map, config.to_dict(), metrics, task=Task.CLASSIFY)
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
        plot_loss_curves(result.history).savefig(tmp / "loss_curve.png", dpi=120)
    return out


def load_or_train(
    config: RunConfig, log: Log = print
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, dict]:
    """Reuse the model saved in config.output_dir if it fits, or train one now.

    Chapters 6-8 need a fine-tuned model; this lets each run on its own in a fresh kernel
    without repeating chapter 5's training. A saved model is reused when it was trained on the
    same model and data (its training settings may be the learner's own choice from chapter 5);
    one trained on other data is moved aside, never overwritten.
    """
    folder = Path(config.output_dir) / "model"
    if (folder / INFO_FILE).exists():
        model, tokenizer, info = load_finetuned(folder, task=Task.CLASSIFY)
        saved, wanted = model_settings(info.get("config", {})), config.model_settings()
        if saved == wanted:
            log(f"Reusing the model saved in {readable_path(folder)} (same settings).")
            return model, tokenizer, info
        if {k: saved.get(k) for k in ("model", "data")} == {k: wanted[k] for k in ("model", "data")}:
            changed = settings_diff(saved.get("train", {}), wanted["train"])
            log(f"Reusing the model saved in {readable_path(folder)}, trained with your settings "
                f"({changed}) instead of the profile's.")
            return model, tokenizer, info
        kept = _move_aside(Path(config.output_dir))
        log(f"The model in {readable_path(folder)} was trained on other data or another base model; "
            f"it is kept in {readable_path(kept)}.")
    log("No saved model with these settings yet: fine-tuning one now.")
    run_finetune(config, log=log)
    return load_finetuned(folder)


def settings_diff(saved: dict, wanted: dict) -> str:
    """'learning_rate 0.0005 (profile 0.0001), epochs 2 (profile 3)': what a saved run changed."""
    changed = [f"{k} {saved.get(k)} (profile {v})" for k, v in wanted.items() if saved.get(k) != v]
    return ", ".join(changed) or "no differences"


def _move_aside(folder: Path) -> Path:
    """Rename a run folder to a free '<name>.previous-N' beside it and return the new path."""
    n = 1
    while (kept := folder.with_name(f"{folder.name}.previous-{n}")).exists():
        n += 1
    folder.rename(kept)
    return kept

"""Classify: read a text, answer with one of its labels (movie reviews: fresh or rotten).

The pretrained GPT gets a new, untrained head on its last token; the test score is accuracy and
macro F1 beside the majority-class baseline. `finetune --int8-report` also scores an int8 copy.
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from datasets import DatasetDict
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from course_lib.config import DataConfig, RunConfig, Strategy, Task, TrainConfig, parse_strategy
from course_lib.data import PreparedData, count_truncated, make_loader, prepare_data, tokenize
from course_lib.errors import ConfigError
from course_lib.features import training_loaders
from course_lib.metrics import majority_baseline
from course_lib.models import load_classifier
from course_lib.runtime.assets import ROTTEN_TOMATOES
from course_lib.runtime.speed import quantize_int8
from course_lib.saving import save_finetuned
from course_lib.tasks.base import Log, Model, Scores, TaskSpec, describe_training, option
from course_lib.training import EvalResult, evaluate


# `finetune`'s defaults for the classifier, chosen by measurement for a run of at most ten
# minutes on 2 CPU cores (README, "Run times"; every setting tried in benchmarks/README.md),
# with bf16 matrix maths where the CPU has it natively (without, it takes about twice as long).
# The notebooks' profiles (course_lib.notebook.profiles) keep the smaller runs their chapters time.
@dataclass(frozen=True)
class FinetuneDefaults:
    """What `finetune` trains when no option says otherwise (classification)."""

    max_train: int = 9000
    max_val: int = 500
    epochs: int = 2
    train_blocks: int = 12
    warmup_fraction: float = 0.03  # of all updates


CLI_DEFAULTS = FinetuneDefaults()


class Classify(TaskSpec):
    """Reviews in, labels out."""

    task = Task.CLASSIFY
    output_dir = "outputs/finetuned"
    size_field, unit, min_train = "max_train_examples", "reviews", 200
    score_columns = (("accuracy", "accuracy", "{:.3f}"), ("macro F1", "f1", "{:.3f}"))

    def defaults_line(self) -> str:
        train = TrainConfig(epochs=CLI_DEFAULTS.epochs, train_blocks=CLI_DEFAULTS.train_blocks,
                            warmup_fraction=CLI_DEFAULTS.warmup_fraction)
        return (f"Defaults: {CLI_DEFAULTS.max_train:,} reviews of the offline Rotten Tomatoes set (--data: a "
                f"CSV); {describe_training(train)}.")

    def add_options(self, group: argparse._ArgumentGroup) -> list[argparse.Action]:
        return [
            group.add_argument("--text-column", default="text"),
            group.add_argument("--label-column", default="label"),
            group.add_argument("--group-column", default=None, help="keep each group (e.g. a movie) in one split"),
            group.add_argument("--train-blocks", default=None,
                               help="top blocks to train, or 'all' for full fine-tuning "
                                    f"(default: {CLI_DEFAULTS.train_blocks})"),
            group.add_argument("--max-val", type=int, default=None,
                               help=f"validation reviews to use (0 = all; default: {CLI_DEFAULTS.max_val}); "
                                    "fewer make each epoch's check quicker"),
            group.add_argument("--no-cache", action="store_true",
                               help="recompute frozen blocks every epoch (slower; for comparison)"),
            group.add_argument("--int8-report", action="store_true",
                               help="also score an int8-quantised copy on the test set (CPU)"),
        ]

    def run_config(self, args: argparse.Namespace, common: dict, given: dict) -> RunConfig:
        blocks_option = args.train_blocks or str(CLI_DEFAULTS.train_blocks)
        blocks = None if blocks_option.lower() == "all" else _whole_number("--train-blocks", blocks_option)
        strategy = parse_strategy(args.strategy or TrainConfig().strategy)
        if blocks is None and strategy == Strategy.TOP_K:
            strategy = Strategy.FULL  # `--train-blocks all` is full fine-tuning
        defaults = {"epochs": CLI_DEFAULTS.epochs, "warmup_fraction": CLI_DEFAULTS.warmup_fraction}
        train = TrainConfig.for_strategy(strategy, train_blocks=blocks, cache_frozen=not args.no_cache,
                                         **common, **{**defaults, **given})
        data = DataConfig(path=args.data, hub_dataset=args.hub_dataset, text_column=args.text_column,
                          label_column=args.label_column, group_column=args.group_column,
                          max_train_examples=option(args.max_train, CLI_DEFAULTS.max_train) or None,
                          max_val_examples=option(args.max_val, CLI_DEFAULTS.max_val) or None, seed=args.seed)
        return RunConfig(model=args.model, output_dir=Path(args.output or self.output_dir), data=data,
                         train=train, int8_report=args.int8_report, blocks_at_most=args.train_blocks is None)

    def prepare(self, run: RunConfig) -> PreparedData:
        return prepare_data(run.data)

    def describe(self, data: PreparedData) -> tuple[str, dict]:
        sizes = {name: len(frame) for name, frame in data.splits.items()}
        return f"Data: {data.report.summary()}. Labels {data.label_map.names}. Split sizes {sizes}.", sizes

    def load_model(self, run: RunConfig, data: PreparedData, log: Log) -> Model:
        return load_classifier(run.model, data.label_map, log)

    def encode(self, run: RunConfig, data: PreparedData, tokenizer: PreTrainedTokenizerBase,
               log: Log) -> DatasetDict:
        max_length = run.train.max_length
        truncated = count_truncated(data.datasets, tokenizer, max_length)
        if truncated:
            log(f"{truncated} reviews are longer than max_length={max_length} tokens; "
                "their ends were cut off (raise max_length to keep them).")
        return tokenize(data.datasets, tokenizer, max_length)

    def num_labels(self, data: PreparedData) -> int:
        return len(data.label_map.names)

    def loaders(self, model, tokens, tokenizer, run, device, log, parallel):
        return training_loaders(model, tokens, tokenizer, run.train, device, log, parallel)

    def baselines(self, data: PreparedData, tokens: DatasetDict) -> dict[str, dict]:
        return {"majority_baseline": majority_baseline(tokens["train"]["labels"], tokens["test"]["labels"])}

    def score(self, model, tokenizer, data, tokens, run, parallel) -> Scores:
        """Step 7, the part the seed never showed: score the untouched test set once."""
        loader = make_loader(tokens["test"], tokenizer, run.train.eval_batch_size, sort_by_length=True,
                             parallel=parallel)  # several processes: each scores a shard
        device = next(model.parameters()).device
        result = evaluate(model, loader, device, self.num_labels(data), run.train.mixed_precision, parallel)
        return Scores(result.metrics)

    def reports(self, model, tokenizer, data, tokens, run, log) -> dict[str, dict]:
        if not run.int8_report:
            return {}
        loader = make_loader(tokens["test"], tokenizer, run.train.eval_batch_size, sort_by_length=True)
        report = compare_int8(model, loader, self.num_labels(data))
        log(f"int8 copy: test accuracy {report['accuracy']:.3f} ({report['accuracy_change']:+.3f}), "
            f"same prediction on {report['agreement_with_float32']:.1%} of reviews, "
            f"{report['speedup']:.2f}x the float32 evaluation speed.")
        return {"int8": report}

    def save_model(self, folder: Path, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                   data: PreparedData, run: RunConfig, metrics: dict) -> Path:
        return save_finetuned(folder, model, tokenizer, data.label_map, run.to_dict(), metrics, task=self.task)

    def data_source(self, run: RunConfig) -> tuple[str, str]:
        if run.data.hub_dataset:
            return f"the Hub data set {run.data.hub_dataset}", "see its dataset card"
        if run.data.path is None:
            return ROTTEN_TOMATOES.name, ROTTEN_TOMATOES.licence
        return super().data_source(run)

    def metrics_info(self, run: RunConfig, data: PreparedData) -> dict:
        return {"labels": data.label_map.names}


TASK = Classify()


def _whole_number(name: str, value: str) -> int:
    """Parse a whole number or raise a ConfigError naming the option."""
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number or 'all', got {value!r}.") from None


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

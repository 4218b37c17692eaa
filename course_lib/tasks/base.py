"""What a task tells the pipeline: how to read its data, load its model, batch it, score it and save it."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from datasets import DatasetDict
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from course_lib.config import RunConfig, Strategy, Task, TrainConfig
from course_lib.progress import TrainingCallback
from course_lib.runtime.distributed import Parallel

Log = Callable[[str], None]
Model = tuple[PreTrainedModel, PreTrainedTokenizerBase]


def option(value: Any, default: Any) -> Any:
    """An option's value when it was given (0 included, so it can be refused), else the default."""
    return default if value is None else value


def describe_training(train: TrainConfig) -> str:
    """'2 epochs of top-k (12 blocks) at lr 0.0001, warm-up 0.03, batch 16, max length 64'."""
    what = {Strategy.TOP_K: f"top-k ({train.train_blocks} blocks)",
            Strategy.LORA: f"LoRA rank {train.lora_rank} on {train.lora_targets or 'query/value'} layers"}
    return (f"{train.epochs} epochs of {what.get(train.strategy, train.strategy.value)} at lr "
            f"{train.learning_rate:g}, warm-up {train.warmup_fraction:g}, batch {train.batch_size}, "
            f"max length {train.max_length} tokens")


@dataclass
class Scores:
    """A split's metrics, and one row per example for test_outputs.jsonl (empty if the task writes none)."""

    metrics: dict
    outputs: list[dict] = field(default_factory=list)


class TaskSpec:
    """The parts of the document that differ between tasks; `pipeline` runs the rest once for all.

    `data` is whatever `prepare` returns (e.g. data.PreparedData, pairs.PreparedPairs).
    """

    task: Task
    output_dir: str  # where `finetune --task NAME` writes unless --output says otherwise
    score_columns: tuple[tuple[str, str, str], ...] = ()  # (header, metric, format) in the CLI's table
    scores_pretrained: bool = False  # score the model before fine-tuning ("zero_shot") on the test split
    shared_options: tuple[str, ...] = ()  # another task's `finetune` options this one reads too
    size_field: str = "max_train"  # the data config's field for the number of training examples
    unit: str = "examples"  # what one training example is, for messages
    min_train: int = 100  # fewer examples than this teach too little: a time budget that short is refused

    def defaults_line(self) -> str:
        """What `finetune --task NAME` trains when no option says otherwise (for --help)."""
        return ""

    def add_options(self, group: argparse._ArgumentGroup) -> list[argparse.Action]:
        """Add this task's own `finetune` options; return them (given to another task, they are refused)."""
        return []

    def run_config(self, args: argparse.Namespace, common: dict, given: dict) -> RunConfig:
        """The RunConfig for parsed options: `common` TrainConfig settings, `given` ones the user chose."""
        raise NotImplementedError

    def prepare(self, run: RunConfig) -> Any:
        """Steps 1-3: read, clean and split the data."""
        raise NotImplementedError

    def describe(self, data: Any) -> tuple[str, dict]:
        """A line about the data for the log, and the split sizes for metrics.json."""
        raise NotImplementedError

    def check(self, run: RunConfig) -> None:
        """Refuse settings this task cannot train with (ConfigError), before anything slow."""

    def load_model(self, run: RunConfig, data: Any, log: Log) -> Model:
        """The pretrained model with the output layer this task needs, and its tokenizer."""
        raise NotImplementedError

    def encode(self, run: RunConfig, data: Any, tokenizer: PreTrainedTokenizerBase, log: Log) -> DatasetDict:
        """Step 2's tokens for every split, with the labels the loss reads."""
        raise NotImplementedError

    def num_labels(self, data: Any) -> int | None:
        """Classes of a classifier, or None for a model that writes (the loop evaluates it as an LM)."""
        return None

    def loaders(self, model: nn.Module, tokens: DatasetDict, tokenizer: PreTrainedTokenizerBase, run: RunConfig,
                device: torch.device, log: Log, parallel: Parallel) -> tuple[nn.Module, Any, Any]:
        """The module the loop trains and its train and validation batches."""
        raise NotImplementedError

    def callbacks(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, data: Any, run: RunConfig,
                  parallel: Parallel) -> list[TrainingCallback]:
        """Extra callbacks the task adds to training (e.g. scores of generated text each epoch)."""
        return []

    def baselines(self, data: Any, tokens: DatasetDict) -> dict[str, dict]:
        """Scores that need no model, e.g. always predicting the most common class."""
        return {}

    def score(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, data: Any, tokens: DatasetDict,
              run: RunConfig, parallel: Parallel) -> Scores:
        """Steps 6-7: score the model on the test split (in every process; each gets the whole result)."""
        raise NotImplementedError

    def reports(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, data: Any, tokens: DatasetDict,
                run: RunConfig, log: Log) -> dict[str, dict]:
        """Optional extra measurements after the test score (main process only), e.g. an int8 copy's."""
        return {}

    def save_model(self, folder: Path, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, data: Any,
                   run: RunConfig, metrics: dict) -> Path:
        """Write the model folder with what `predict`/`generate` need to use it again."""
        raise NotImplementedError

    def data_source(self, run: RunConfig) -> tuple[str, str]:
        """The data's name and licence, for the model card."""
        return "the user's own data", "the user's; check it before sharing the model"

    def metrics_info(self, run: RunConfig, data: Any) -> dict:
        """Task facts for metrics.json beside the scores (e.g. label names, decoding settings)."""
        return {}

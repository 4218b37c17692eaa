"""Benchmark: the seed document's loop vs the Hugging Face Trainer vs the course default.

    ./run bench            # full run (~25 min on 2 CPU cores): writes benchmarks/results/bench.json
    ./run bench --quick    # a few minutes: small data, short budget (the suite runs it on a tiny model)
    ./run bench --contenders seed trainer course-default course-lora   # add any course strategy

Every contender fine-tunes the same pretrained model on the same reviews, each run in its own
fresh process (so peak memory is its own), once per training seed (`--seeds`; the data split is
the same for all). The clock counts everything training needs, including loading batches and
the course's frozen-feature caching; it pauses while validation accuracy is checked, which
happens every `--check-every` seconds of training, on the same validation reviews and with the
same evaluation function for everyone. A run stops when a check first reaches the target (the
time to target is what is compared) or when the training budget is spent.

Measured per run: real (non-pad) training tokens per second, evaluation examples per second
(each contender's own way of evaluating), peak memory, the checks, and the training time at
which validation accuracy first reached the target. The summary gives each contender's median
time to target over the seeds with its spread, and the course default's speed-up as the ratio
of medians. Timings are ratios from one run on one machine: compare rows, not runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

from course_lib.config import DEFAULT_MODEL, DataConfig, Strategy, TrainConfig
from course_lib.data import make_loader, prepare_data, tokenize
from course_lib.features import training_loaders
from course_lib.models import apply_strategy, count_parameters, load_classifier, merge_adapters, pick_device
from course_lib.progress import TrainingCallback
from course_lib.runtime.speed import prepare_backend, usable_cores, uses_bf16
from course_lib.tasks.classify import compare_int8
from course_lib.training import evaluate, set_seed, train

HERE = Path(__file__).resolve().parent
DEFAULT_CONTENDER = "course-default"  # what `./run finetune` trains, on the benchmark's reviews
CONTENDERS = ["seed", "trainer", "trainer-bf16", DEFAULT_CONTENDER, *(f"course-{s.value}" for s in Strategy)]
BASELINES = ("seed", "trainer")
RUN_BY_DEFAULT = [*BASELINES, DEFAULT_CONTENDER]


@dataclass
class BenchConfig:
    """What every contender shares."""

    model: str = DEFAULT_MODEL
    max_train: int = 3000  # training reviews (the course default trains on more when it has time)
    val_examples: int = 500  # reviews the accuracy checks use: one standard error is ~1.8 points at 80 %
    speed_examples: int = 128  # reviews the evaluation-speed measurement uses
    budget_s: float = 180.0  # training seconds per run at most
    check_every_s: float = 10.0
    target: float = 0.80
    stop_at_target: bool = True  # what is compared is the time to target, so a run can end there
    seed_max_length: int = 128  # the seed pads every batch to a fixed length
    seed_batch_size: int = 8  # the seed gives none; 8 is the Trainer's default too
    seeds: tuple[int, ...] = (42, 43, 44)  # training seeds: the head's start and the data order
    data_seed: int = 42  # which reviews are drawn, the same for every run
    seed: int = 42  # the seed of the run in progress (set per run)
    int8: bool = False  # also score the course default's int8 copy (first seed only)

    def first_seed(self) -> bool:
        """True in the first seed's runs: evaluation speed does not depend on the seed, so only they measure it."""
        return self.seed == self.seeds[0]


@dataclass
class Result:
    """One contender's figures."""

    name: str
    description: str
    trainable_params: int = 0
    total_params: int = 0
    steps: int = 0
    train_tokens: int = 0
    train_seconds: float = 0.0
    tokens_per_s: float = 0.0
    eval_examples_per_s: float = 0.0
    peak_memory_mb: float = 0.0
    checks: list[tuple[float, float]] = field(default_factory=list)  # (training seconds, val accuracy)
    final_val_accuracy: float = 0.0
    time_to_target_s: float | None = None
    int8: dict | None = None
    seed: int = 0


class BudgetReached(Exception):
    """Raised from inside a training loop when the time budget is used up."""


class Clock:
    """Training time with pauses for accuracy checks; checks every `every` s, stops at `budget` s."""

    def __init__(self, config: BenchConfig, check: Callable[[], float], result: Result):
        self.config, self.check, self.result = config, check, result
        self.start = time.perf_counter()
        self.paused = 0.0
        self.next_check = config.check_every_s
        self.last_step = self.start

    def elapsed(self) -> float:
        """Training seconds so far (checks excluded)."""
        return time.perf_counter() - self.start - self.paused

    def record(self, accuracy: float) -> None:
        """Log a check; the first one at or above the target sets time_to_target."""
        at = self.elapsed()
        self.result.checks.append((round(at, 2), accuracy))
        if accuracy >= self.config.target and self.result.time_to_target_s is None:
            self.result.time_to_target_s = at

    def after_step(self, tokens: int) -> bool:
        """Count a step; check accuracy when due; return True when the run should stop."""
        self.result.steps += 1
        self.result.train_tokens += tokens
        self.last_step = time.perf_counter()
        if self.elapsed() >= self.next_check:
            paused_at = time.perf_counter()
            accuracy = self.check()
            self.paused += time.perf_counter() - paused_at
            self.record(accuracy)
            self.next_check = self.elapsed() + self.config.check_every_s
        return self.elapsed() >= self.config.budget_s or self.reached()

    def reached(self) -> bool:
        """True once a check reached the target, if runs stop there."""
        return self.config.stop_at_target and self.result.time_to_target_s is not None

    def exclude_since_last_step(self) -> None:
        """Take time spent since the last step (e.g. the loop's own validation) off the clock."""
        self.paused += time.perf_counter() - self.last_step

    def finish(self, check: Callable[[], float]) -> None:
        """Final check (unless the run stopped at a check that reached the target) and throughput."""
        self.result.train_seconds = self.elapsed()
        if self.reached():
            accuracy = self.result.checks[-1][1]
        else:
            paused_at = time.perf_counter()
            accuracy = check()
            self.paused += time.perf_counter() - paused_at  # the check is not training time
            self.record(accuracy)
        self.result.final_val_accuracy = accuracy
        self.result.tokens_per_s = self.result.train_tokens / max(self.result.train_seconds, 1e-9)


# ---------------------------------------------------------------- shared data


def load_data(config: BenchConfig):
    """Cleaned, split reviews: the course's training subset and the first validation reviews."""
    data = prepare_data(DataConfig(max_train_examples=config.max_train,
                                   max_val_examples=config.val_examples, seed=config.data_seed))
    return data


def accuracy(model, loader, device, n_labels) -> float:
    """Validation accuracy with the course's evaluate: the same check, in the same precision, for all.

    bf16 where it is native (as `finetune` evaluates), so 500 reviews take seconds, not half a
    minute, for the full-model contenders; the check's time is off the clock either way.
    """
    return evaluate(model, loader, device, n_labels, amp=True).metrics["accuracy"]


def timed_eval(fn: Callable[[], int]) -> float:
    """Examples per second of an evaluation function that returns how many it scored."""
    start = time.perf_counter()
    count = fn()
    return count / (time.perf_counter() - start)


# ---------------------------------------------------------------- (a) the seed's loop


def run_seed(config: BenchConfig, device: torch.device) -> Result:
    """The seed's loop as written, made runnable: full fine-tuning, constant LR 2e-5, fixed padding."""
    result = Result("seed", "seed loop as written: full, AdamW 2e-5 constant, pad to "
                            f"{config.seed_max_length}, batch {config.seed_batch_size}, 3 epochs")
    data = load_data(config)
    set_seed(config.seed)
    model, tokenizer = load_classifier(config.model, data.label_map)  # the pad token fix is needed to run
    model.to(device)
    result.trainable_params, result.total_params = count_parameters(model)

    def fixed_length(split: str, shuffle: bool) -> DataLoader:
        texts = list(data.datasets[split]["text"])
        enc = tokenizer(texts, padding="max_length", truncation=True, max_length=config.seed_max_length,
                        return_tensors="pt")
        labels = torch.tensor(list(data.datasets[split]["labels"]))
        dataset = TensorDataset(enc["input_ids"], enc["attention_mask"], labels)
        generator = torch.Generator().manual_seed(config.seed)
        return DataLoader(dataset, batch_size=config.seed_batch_size, shuffle=shuffle, generator=generator)

    dataloader = fixed_length("train", True)
    check_loader = make_loader(tokenize(data.datasets, tokenizer, config.seed_max_length)["validation"],
                               tokenizer, 64, sort_by_length=True)
    n_labels = len(data.label_map.names)
    clock = Clock(config, lambda: accuracy(model, check_loader, device, n_labels), result)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5)
    try:
        for _epoch in range(3):
            model.train()
            for inputs, mask, labels in dataloader:
                outputs = model(inputs.to(device), labels=labels.to(device))  # no attention mask, as written
                loss = outputs.loss
                loss.backward()
                optimizer.step()
                optimizer.zero_grad()
                if clock.after_step(int(mask.sum())):
                    raise BudgetReached
    except BudgetReached:
        pass
    clock.finish(lambda: accuracy(model, check_loader, device, n_labels))

    @torch.no_grad()
    def seed_eval() -> int:  # "similar to training": fixed padding, batch 8, no inference mode
        model.eval()
        count = 0
        for inputs, _mask, _labels in speed_loader:
            model(inputs.to(device)).logits.argmax(-1)
            count += len(inputs)
        return count

    first = fixed_length("validation", False).dataset[: config.speed_examples]
    speed_loader = DataLoader(TensorDataset(*first), batch_size=config.seed_batch_size)
    if config.first_seed():
        result.eval_examples_per_s = timed_eval(seed_eval)
    return result


# ---------------------------------------------------------------- (b) the HF Trainer


def run_trainer(config: BenchConfig, device: torch.device, bf16: bool = False) -> Result:
    """transformers.Trainer with its defaults (lr 5e-5 linear, batch 8, 3 epochs, full fine-tuning).

    bf16=True is the one change a Trainer user would make on hardware with native bf16
    (`TrainingArguments(bf16=True)`), to separate the course's precision from its strategy.
    """
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    name = "trainer-bf16" if bf16 else "trainer"
    precision = ""
    if bf16:
        bf16 = uses_bf16(device, True)
        precision = ", bf16=True" if bf16 else ", float32 (bf16 is not native here)"
    result = Result(name, "HF Trainer defaults: full, AdamW 5e-5 linear decay, batch 8, 3 epochs, "
                          f"DataCollatorWithPadding{precision}")
    data = load_data(config)
    set_seed(config.seed)
    model, tokenizer = load_classifier(config.model, data.label_map)
    result.trainable_params, result.total_params = count_parameters(model)
    tokens = tokenize(data.datasets, tokenizer, TrainConfig().max_length)
    check_loader = make_loader(tokens["validation"], tokenizer, 64, sort_by_length=True)
    n_labels = len(data.label_map.names)
    clock_box: dict[str, Clock] = {}
    collator, budget = trainer_hooks(DataCollatorWithPadding(tokenizer), clock_box)
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, num_train_epochs=3, seed=config.seed, report_to="none",
                                 save_strategy="no", eval_strategy="no", logging_strategy="no",
                                 disable_tqdm=True, use_cpu=device.type == "cpu", bf16=bf16)
        trainer = Trainer(model=model, args=args, train_dataset=tokens["train"],
                          data_collator=collator, callbacks=[budget])
        clock_box["clock"] = clock = Clock(config, lambda: accuracy(model, check_loader, device, n_labels),
                                           result)
        trainer.train()
        clock.finish(lambda: accuracy(model, check_loader, device, n_labels))
        if config.first_seed():
            speed_set = tokens["validation"].select(range(min(config.speed_examples, len(tokens["validation"]))))
            result.eval_examples_per_s = trainer.evaluate(eval_dataset=speed_set)["eval_samples_per_second"]
    return result


def trainer_hooks(collator: Callable, clock_box: dict) -> tuple[Callable, object]:
    """For a transformers Trainer: a collator that counts each batch's real tokens, and a callback
    that hands them to `clock_box["clock"]` after every step and stops training when it says so.

    The Trainer does not show callbacks its batches, hence the counting collator.
    """
    from transformers import TrainerCallback

    counted = {"tokens": 0}

    def counting_collator(features):
        batch = collator(features)
        counted["tokens"] += int(batch["attention_mask"].sum())
        return batch

    class ClockCallback(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            tokens, counted["tokens"] = counted["tokens"], 0
            if clock_box["clock"].after_step(tokens):
                control.should_training_stop = True

    return counting_collator, ClockCallback()


# ---------------------------------------------------------------- (c) the course's strategies


class _BudgetCallback(TrainingCallback):
    """Connects the course loop to the clock: counts steps, checks accuracy, stops at the budget."""

    def __init__(self, clock_box: dict, counter: dict):
        self.clock_box, self.counter = clock_box, counter

    def on_step(self, step, loss, history) -> None:
        tokens, self.counter["tokens"] = self.counter["tokens"], 0
        if self.clock_box["clock"].after_step(tokens):
            raise BudgetReached

    def on_epoch_end(self, record, history) -> None:
        clock = self.clock_box["clock"]
        clock.exclude_since_last_step()  # the loop's own validation is not training time
        if record.val_accuracy is not None:  # a classifier's is a free accuracy check (a writer has none)
            clock.record(record.val_accuracy)


class _CountingLoader:
    """A loader that counts the real tokens of the batches it hands out."""

    def __init__(self, loader: DataLoader, counter: dict):
        self.loader, self.counter = loader, counter
        self.batch_sampler = loader.batch_sampler  # where train() finds the data order for checkpoints

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            self.counter["tokens"] += int(batch["attention_mask"].sum())
            yield batch


def finetune_config(config: BenchConfig) -> TrainConfig:
    """The TrainConfig `./run finetune` builds from its defaults (for this model and seed)."""
    from course_lib.cli import build_parser, run_config_from_args
    from course_lib.pipeline import check_blocks

    args = build_parser().parse_args(["finetune", "--model", config.model, "--seed", str(config.seed)])
    run = run_config_from_args(args)
    check_blocks(run, log=lambda line: None)  # a model with fewer blocks than the default trains them all
    return run.train


def run_course(name: str, config: BenchConfig, device: torch.device) -> Result:
    """A course setting (`finetune`'s default, or a strategy's), through the functions `finetune` uses."""
    if name == DEFAULT_CONTENDER:
        train_config = finetune_config(config)
    else:
        train_config = TrainConfig.for_strategy(Strategy(name.removeprefix("course-")), seed=config.seed)
    strategy = train_config.strategy
    blocks = f" (top {train_config.train_blocks} blocks)" if strategy == Strategy.TOP_K else ""
    result = Result(name, f"course {strategy.value}{blocks}: lr {train_config.learning_rate:g}, "
                    f"batch {train_config.batch_size}, {train_config.epochs} epochs, warm-up + decay, "
                    "dynamic padding, length-grouped, bf16 where native")
    data = load_data(config)
    set_seed(config.seed)
    model, tokenizer = load_classifier(config.model, data.label_map)
    trained = apply_strategy(model, train_config)
    result.trainable_params, result.total_params = count_parameters(trained)
    n_labels = len(data.label_map.names)
    counter = {"tokens": 0}
    clock_box: dict[str, Clock] = {}
    module_box: dict = {}

    def check() -> float:  # cached strategies check on cached features, as `finetune` does
        return accuracy(module_box["module"], module_box["val"], device, n_labels)

    tokens = tokenize(data.datasets, tokenizer, train_config.max_length)
    clock_box["clock"] = clock = Clock(config, check, result)  # caching counts as training time
    module, train_loader, val_loader = training_loaders(trained, tokens, tokenizer, train_config, device,
                                                        log=lambda s: None)
    module_box.update(module=module, val=val_loader)
    with contextlib.suppress(BudgetReached):  # train() restores the best epoch's weights on the way out
        train(module, _CountingLoader(train_loader, counter), val_loader, train_config, device, n_labels,
              [_BudgetCallback(clock_box, counter)])
    clock.finish(check)

    plain = merge_adapters(trained)  # what a saved model evaluates with
    speed_set = tokens["validation"].select(range(min(config.speed_examples, len(tokens["validation"]))))
    speed_loader = make_loader(speed_set, tokenizer, train_config.eval_batch_size, sort_by_length=True)
    if config.first_seed():  # as `finetune` evaluates: bf16 where native
        result.eval_examples_per_s = timed_eval(lambda: len(
            evaluate(plain, speed_loader, device, n_labels, train_config.mixed_precision).labels))
    if device.type == "cpu" and name == DEFAULT_CONTENDER and config.int8 and config.first_seed():
        result.int8 = int8_figures(plain, tokens, tokenizer, train_config, n_labels)
    return result


def int8_figures(model, tokens, tokenizer, train_config, n_labels) -> dict:
    """Accuracy and evaluation speed of the int8 copy against float32 on the validation reviews."""
    loader = make_loader(tokens["validation"], tokenizer, train_config.eval_batch_size, sort_by_length=True)
    return compare_int8(model, loader, n_labels)


# ---------------------------------------------------------------- orchestration


def run_contender(name: str, config: BenchConfig) -> Result:
    """Run one contender in this process and add its peak memory."""
    device = pick_device()
    prepare_backend(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    if name == "seed":
        result = run_seed(config, device)
    elif name in ("trainer", "trainer-bf16"):
        result = run_trainer(config, device, bf16=name == "trainer-bf16")
    else:
        result = run_course(name, config, device)
    result.seed = config.seed
    if device.type == "cuda":
        result.peak_memory_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        result.peak_memory_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return result


def time_to_target(result: Result) -> float:
    """Seconds to the target, or infinity for a run that did not reach it within its budget."""
    return math.inf if result.time_to_target_s is None else result.time_to_target_s


def summarise(runs: dict[int, dict[str, Result]]) -> dict:
    """Per contender: median time to target over the seeds, its spread, and median throughput."""
    names = list(next(iter(runs.values())))
    summary = {}
    for name in names:
        per_seed = [runs[seed][name] for seed in runs]
        times = [time_to_target(r) for r in per_seed]
        summary[name] = {
            "median_time_to_target_s": _finite(statistics.median(times)),
            "min_time_to_target_s": _finite(min(times)),
            "max_time_to_target_s": _finite(max(times)),
            "reached": sum(t < math.inf for t in times),
            "runs": len(times),
            "longest_budget_s": max(r.train_seconds for r in per_seed),
            "median_tokens_per_s": statistics.median(r.tokens_per_s for r in per_seed),
            # measured in the first seed's run only (it does not depend on the seed)
            "median_eval_examples_per_s": statistics.median(
                [r.eval_examples_per_s for r in per_seed if r.eval_examples_per_s > 0] or [0.0]),
        }
    return summary


def _finite(value: float) -> float | None:
    """JSON has no infinity: a time never reached is None."""
    return None if value == math.inf else value


def ratios(runs: dict[int, dict[str, Result]], summary: dict) -> dict:
    """The course default against each baseline: median times to target, divided, and per seed."""
    out = {}
    course = summary.get(DEFAULT_CONTENDER)
    if course is None:
        return out
    for base_name in BASELINES:
        if base_name not in summary:
            continue
        base = summary[base_name]
        per_seed = [_time_ratio(runs[seed][DEFAULT_CONTENDER], runs[seed][base_name]) for seed in runs]
        entry = {
            "tokens_per_s": course["median_tokens_per_s"] / base["median_tokens_per_s"],
            "eval_examples_per_s": course["median_eval_examples_per_s"] / base["median_eval_examples_per_s"],
            "per_seed": per_seed,
        }
        entry.update(_median_ratio(course, base, base_name))
        out[f"{DEFAULT_CONTENDER} vs {base_name}"] = entry
    return out


def _median_ratio(course: dict, base: dict, base_name: str) -> dict:
    """Median time to target of the baseline over the course default's; a lower bound if it never got there."""
    if course["median_time_to_target_s"] is None:
        return {"time_to_target": None, "note": "the course default did not reach the target in most runs"}
    if base["median_time_to_target_s"] is None:
        return {"time_to_target": base["longest_budget_s"] / course["median_time_to_target_s"],
                "lower_bound": True, "note": f"{base_name} did not reach the target in most runs "
                        f"({base['longest_budget_s']:.0f} s of training)"}
    return {"time_to_target": base["median_time_to_target_s"] / course["median_time_to_target_s"],
            "lower_bound": False}


def _time_ratio(course: Result, base: Result) -> dict:
    """How many times sooner the course reached the target in one seed's runs."""
    if course.time_to_target_s is None:
        return {"seed": course.seed, "time_to_target": None}
    if base.time_to_target_s is None:
        return {"seed": course.seed, "time_to_target": base.train_seconds / course.time_to_target_s,
                "lower_bound": True}
    return {"seed": course.seed, "time_to_target": base.time_to_target_s / course.time_to_target_s,
            "lower_bound": False}


def table(runs: dict[int, dict[str, Result]], summary: dict, config: BenchConfig) -> str:
    """A Markdown table of every contender: medians over the seeds and the spread."""
    lines = [
        f"| contender | trainable params | train tokens/s | eval examples/s | peak memory (MB) | "
        f"time to {config.target:.0%} val acc (s): median [min–max] | reached |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in summary.items():
        first = next(iter(runs.values()))[name]
        memory = statistics.median(runs[seed][name].peak_memory_mb for seed in runs)
        lines.append(f"| {name} | {first.trainable_params:,} | {row['median_tokens_per_s']:.0f} | "
                     f"{row['median_eval_examples_per_s']:.1f} | {memory:.0f} | {_spread(row)} | "
                     f"{row['reached']}/{row['runs']} |")
    return "\n".join(lines)


def _spread(row: dict) -> str:
    """'median [min–max]' in seconds, with '>' for runs that never reached the target."""
    def text(value: float | None) -> str:
        return f"> {row['longest_budget_s']:.0f}" if value is None else f"{value:.0f}"
    return (f"{text(row['median_time_to_target_s'])} [{text(row['min_time_to_target_s'])}–"
            f"{text(row['max_time_to_target_s'])}]")


def ratio_lines(found: dict) -> list[str]:
    """The ratios as readable lines."""
    lines = []
    for pair, entry in found.items():
        t = entry.get("time_to_target")
        bound = "≥ " if entry.get("lower_bound") else ""
        t_text = f"{bound}{t:.2f}x sooner to target (medians)" if t is not None else entry["note"]
        note = f" ({entry['note']})" if t is not None and "note" in entry else ""
        seeds = ", ".join("n/a" if r["time_to_target"] is None else
                          f"{'≥ ' if r.get('lower_bound') else ''}{r['time_to_target']:.2f}x"
                          for r in entry["per_seed"])
        lines.append(f"{pair}: {entry['tokens_per_s']:.2f}x tokens/s, {entry['eval_examples_per_s']:.2f}x "
                     f"eval examples/s, {t_text}{note}; per seed: {seeds}")
    return lines


def machine() -> dict:
    """Where the numbers came from."""
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu_cores_usable": usable_cores(), "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options; --quick shrinks everything to a few minutes."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small data and budget: a few minutes")
    parser.add_argument("--model", default=None)
    parser.add_argument("--contenders", nargs="+", choices=CONTENDERS, default=RUN_BY_DEFAULT)
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="training seeds (default 42 43 44)")
    parser.add_argument("--budget", type=float, default=None, help="training seconds per run at most")
    parser.add_argument("--check-every", type=float, default=None)
    parser.add_argument("--max-train", type=int, default=None)
    parser.add_argument("--val-examples", type=int, default=None)
    parser.add_argument("--target", type=float, default=None)
    parser.add_argument("--full-budget", action="store_true",
                        help="train for the whole budget instead of stopping at the target")
    parser.add_argument("--int8", action="store_true", help="also score the course default's int8 copy")
    parser.add_argument("--output", default=None, help="JSON file (default benchmarks/results/bench[-quick].json)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: run one contender
    parser.add_argument("--worker-seed", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def bench_config(args: argparse.Namespace) -> BenchConfig:
    """Defaults, the quick preset, then explicit options."""
    config = BenchConfig()
    if args.quick:
        config = BenchConfig(max_train=240, val_examples=96, speed_examples=48, budget_s=40, check_every_s=10,
                             target=0.70, seed_max_length=64, seeds=(42,))
    for option, name in [("model", "model"), ("budget", "budget_s"), ("check_every", "check_every_s"),
                         ("max_train", "max_train"), ("val_examples", "val_examples"), ("target", "target")]:
        value = getattr(args, option)
        if value is not None:
            setattr(config, name, value)
    if args.seeds:
        config.seeds = tuple(args.seeds)
    config.stop_at_target = not args.full_budget
    config.int8 = args.int8
    if args.worker_seed is not None:
        config.seed = args.worker_seed
    return config


def quiet_libraries() -> None:
    """Load reports, progress bars and per-step warnings would bury the benchmark's own lines."""
    import warnings

    import datasets
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    warnings.filterwarnings("ignore")


def main(argv: list[str] | None = None) -> int:
    """Run each contender once per seed, each run in a fresh process, then print and save the comparison."""
    args = parse_args(argv)
    config = bench_config(args)
    if args.worker:  # child process: one contender, one seed, result as JSON
        quiet_libraries()
        Path(args.worker_out).write_text(json.dumps(asdict(run_contender(args.worker, config))))
        return 0
    passed = list(argv if argv is not None else sys.argv[1:])
    runs: dict[int, dict[str, Result]] = {}
    for seed in config.seeds:
        runs[seed] = {}
        for name in args.contenders:
            print(f"[bench] seed {seed}: {name} ...", flush=True)
            runs[seed][name] = run_in_fresh_process(name, seed, passed)
            r = runs[seed][name]
            print(f"[bench] seed {seed}: {name}: {r.tokens_per_s:.0f} tokens/s, "
                  f"val acc {r.final_val_accuracy:.3f} after {r.train_seconds:.0f} s, "
                  f"target at {r.time_to_target_s}", flush=True)
    summary = summarise(runs)
    found = ratios(runs, summary)
    report = {"config": asdict(config), "machine": machine(), "summary": summary, "ratios": found,
              "runs": {str(seed): {k: asdict(v) for k, v in by_name.items()} for seed, by_name in runs.items()}}
    default = HERE / "results" / ("bench-quick.json" if args.quick else "bench.json")
    output = Path(args.output) if args.output else default
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2))
    print(table(runs, summary, config))
    for line in ratio_lines(found):
        print(line)
    print(f"Saved {output}")
    return 0


def run_in_fresh_process(name: str, seed: int, passed: list[str]) -> Result:
    """One contender and seed in its own interpreter, so its memory and thread pool are its own."""
    return Result(**run_worker(Path(__file__), name, seed, passed))


def run_worker(script: Path, name: str, seed: int, passed: list[str]) -> dict:
    """Run `script --worker NAME` (one contender, one seed) in a fresh interpreter; return its JSON."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, str(script.resolve()), *passed,
               "--worker", name, "--worker-seed", str(seed), "--worker-out", str(out)]
        # TQDM_DISABLE: the course's caching progress bars would bury the benchmark's lines.
        subprocess.run(cmd, check=True, env={**os.environ, "TQDM_DISABLE": "1"})
        return json.loads(out.read_text())


if __name__ == "__main__":
    sys.exit(main())

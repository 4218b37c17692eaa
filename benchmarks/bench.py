"""Benchmark: the seed document's loop vs the Hugging Face Trainer vs each course strategy.

    ./run bench            # full run (~50 min on 2 CPU cores): writes benchmarks/results/bench.json
    ./run bench --quick    # ~8.5 min on 2 cores: small data, short budget (the suite runs it on a tiny model)

Every contender fine-tunes the same pretrained model on the same reviews with the same seed,
each in its own fresh process (so peak memory is its own), for at most the same training-time
budget. The budget clock counts everything training needs, including loading batches and the
course's frozen-feature caching; it pauses while validation accuracy is checked, which happens
every `--check-every` seconds of training on the same validation reviews for everyone.

Measured per contender: real (non-pad) training tokens per second, evaluation examples per
second (each contender's own way of evaluating), peak memory, validation accuracy when the
budget ends (or its planned epochs do), and the training time at which validation accuracy
first reached the target. Timings are ratios from one run on one machine: compare rows, not runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
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
from course_lib.data import make_loader, tokenize
from course_lib.models import apply_strategy, count_parameters, load_classifier, merge_adapters, pick_device
from course_lib.pipeline import compare_int8, prepare_data, training_loaders
from course_lib.progress import TrainingCallback
from course_lib.speed import prepare_backend, usable_cores
from course_lib.training import evaluate, set_seed, train

HERE = Path(__file__).resolve().parent
CONTENDERS = ["seed", "trainer", *(f"course-{s.value}" for s in Strategy)]
BASELINES = ("seed", "trainer")
DEFAULT_CONTENDER = f"course-{TrainConfig().strategy.value}"


@dataclass
class BenchConfig:
    """What every contender shares."""

    model: str = DEFAULT_MODEL
    max_train: int = 3000  # the course default
    val_examples: int = 200  # reviews the accuracy checks use
    speed_examples: int = 128  # reviews the evaluation-speed measurement uses
    budget_s: float = 600.0
    check_every_s: float = 50.0
    target: float = 0.80
    seed_max_length: int = 128  # the seed pads every batch to a fixed length
    seed_batch_size: int = 8  # the seed gives none; 8 is the Trainer's default too
    seed: int = 42


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
        """Count a step; check accuracy when due; return True when the budget is used up."""
        self.result.steps += 1
        self.result.train_tokens += tokens
        self.last_step = time.perf_counter()
        if self.elapsed() >= self.next_check:
            paused_at = time.perf_counter()
            accuracy = self.check()
            self.paused += time.perf_counter() - paused_at
            self.record(accuracy)
            self.next_check = self.elapsed() + self.config.check_every_s
        return self.elapsed() >= self.config.budget_s

    def exclude_since_last_step(self) -> None:
        """Take time spent since the last step (e.g. the loop's own validation) off the clock."""
        self.paused += time.perf_counter() - self.last_step

    def finish(self, accuracy: float) -> None:
        """Final check and throughput."""
        self.result.train_seconds = self.elapsed()
        self.record(accuracy)
        self.result.final_val_accuracy = accuracy
        self.result.tokens_per_s = self.result.train_tokens / max(self.result.train_seconds, 1e-9)


# ---------------------------------------------------------------- shared data


def load_data(config: BenchConfig):
    """Cleaned, split reviews: the course's training subset and the first validation reviews."""
    data = prepare_data(DataConfig(max_train_examples=config.max_train,
                                   max_val_examples=config.val_examples, seed=config.seed))
    return data


def accuracy(model, loader, device, n_labels) -> float:
    """Validation accuracy with the course's evaluate (the same check for every contender)."""
    return evaluate(model, loader, device, n_labels).metrics["accuracy"]


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
    clock.finish(accuracy(model, check_loader, device, n_labels))

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
    result.eval_examples_per_s = timed_eval(seed_eval)
    return result


# ---------------------------------------------------------------- (b) the HF Trainer


def run_trainer(config: BenchConfig, device: torch.device) -> Result:
    """transformers.Trainer with its defaults (lr 5e-5 linear, batch 8, 3 epochs, full fine-tuning)."""
    from transformers import DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments

    result = Result("trainer", "HF Trainer defaults: full, AdamW 5e-5 linear decay, batch 8, 3 epochs, "
                               "DataCollatorWithPadding")
    data = load_data(config)
    set_seed(config.seed)
    model, tokenizer = load_classifier(config.model, data.label_map)
    result.trainable_params, result.total_params = count_parameters(model)
    tokens = tokenize(data.datasets, tokenizer, TrainConfig().max_length)
    check_loader = make_loader(tokens["validation"], tokenizer, 64, sort_by_length=True)
    n_labels = len(data.label_map.names)
    collator = DataCollatorWithPadding(tokenizer)
    counted = {"tokens": 0}

    def counting_collator(features):  # the Trainer does not show callbacks its batches
        batch = collator(features)
        counted["tokens"] += int(batch["attention_mask"].sum())
        return batch

    clock_box: dict[str, Clock] = {}

    class Budget(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            clock = clock_box["clock"]
            tokens, counted["tokens"] = counted["tokens"], 0
            if clock.after_step(tokens):
                control.should_training_stop = True

    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, num_train_epochs=3, seed=config.seed, report_to="none",
                                 save_strategy="no", eval_strategy="no", logging_strategy="no",
                                 disable_tqdm=True, use_cpu=device.type == "cpu")
        trainer = Trainer(model=model, args=args, train_dataset=tokens["train"],
                          data_collator=counting_collator, callbacks=[Budget()])
        clock_box["clock"] = clock = Clock(config, lambda: accuracy(model, check_loader, device, n_labels),
                                           result)
        trainer.train()
        clock.finish(accuracy(model, check_loader, device, n_labels))
        speed_set = tokens["validation"].select(range(min(config.speed_examples, len(tokens["validation"]))))
        metrics = trainer.evaluate(eval_dataset=speed_set)
        result.eval_examples_per_s = metrics["eval_samples_per_second"]
    return result


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
        clock.record(record.val_accuracy)  # and it is a free accuracy check


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


def run_course(strategy: Strategy, config: BenchConfig, device: torch.device) -> Result:
    """A course strategy with its defaults, through the same functions `finetune` uses."""
    train_config = TrainConfig.for_strategy(strategy, seed=config.seed)
    result = Result(f"course-{strategy.value}", f"course {strategy.value}: lr {train_config.learning_rate:g}, "
                    f"batch {train_config.batch_size}, {train_config.epochs} epochs, warm-up + decay, "
                    "dynamic padding, length-grouped")
    data = load_data(config)
    set_seed(config.seed)
    model, tokenizer = load_classifier(config.model, data.label_map)
    trained = apply_strategy(model, train_config)
    result.trainable_params, result.total_params = count_parameters(trained)
    n_labels = len(data.label_map.names)
    counter = {"tokens": 0}
    clock_box: dict[str, Clock] = {}
    module_box: dict = {}

    def check() -> float:
        return accuracy(module_box["module"], module_box["val"], device, n_labels)

    tokens = tokenize(data.datasets, tokenizer, train_config.max_length)
    clock_box["clock"] = clock = Clock(config, check, result)  # caching counts as training time
    module, train_loader, val_loader = training_loaders(trained, tokens, tokenizer, train_config, device,
                                                        log=lambda s: None)
    module_box.update(module=module, val=val_loader)
    with contextlib.suppress(BudgetReached):  # train() restores the best epoch's weights on the way out
        train(module, _CountingLoader(train_loader, counter), val_loader, train_config, device, n_labels,
              [_BudgetCallback(clock_box, counter)])
    clock.finish(check())

    plain = merge_adapters(trained)  # what a saved model evaluates with
    speed_set = tokens["validation"].select(range(min(config.speed_examples, len(tokens["validation"]))))
    speed_loader = make_loader(speed_set, tokenizer, train_config.eval_batch_size, sort_by_length=True)
    result.eval_examples_per_s = timed_eval(lambda: len(evaluate(plain, speed_loader, device, n_labels).labels))
    if device.type == "cpu" and strategy == TrainConfig().strategy:
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
    elif name == "trainer":
        result = run_trainer(config, device)
    else:
        result = run_course(Strategy(name.removeprefix("course-")), config, device)
    if device.type == "cuda":
        result.peak_memory_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        result.peak_memory_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return result


def ratios(results: dict[str, Result]) -> dict:
    """Course default against each baseline: speed-ups in tokens/s, eval speed and time to target."""
    course = results.get(DEFAULT_CONTENDER)
    out = {}
    if course is None:
        return out
    for base_name in BASELINES:
        base = results.get(base_name)
        if base is None:
            continue
        entry = {
            "tokens_per_s": course.tokens_per_s / base.tokens_per_s,
            "eval_examples_per_s": course.eval_examples_per_s / base.eval_examples_per_s,
        }
        entry.update(_time_ratio(course, base))
        out[f"{DEFAULT_CONTENDER} vs {base_name}"] = entry
    return out


def _time_ratio(course: Result, base: Result) -> dict:
    """How many times sooner the course reached the target; a lower bound when the baseline never did."""
    if course.time_to_target_s is None:
        return {"time_to_target": None, "note": "the course default did not reach the target"}
    if base.time_to_target_s is None:
        return {"time_to_target": base.train_seconds / course.time_to_target_s, "lower_bound": True,
                "note": f"{base.name} did not reach the target in {base.train_seconds:.0f} s of training"}
    return {"time_to_target": base.time_to_target_s / course.time_to_target_s, "lower_bound": False}


def table(results: dict[str, Result], config: BenchConfig) -> str:
    """A Markdown table of every contender."""
    lines = [
        f"| contender | trainable params | train tokens/s | eval examples/s | peak memory (MB) | "
        f"val acc at end | training s | time to {config.target:.0%} val acc (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results.values():
        reached = (f"{r.time_to_target_s:.0f}" if r.time_to_target_s is not None
                   else f"not in {r.train_seconds:.0f}")
        lines.append(f"| {r.name} | {r.trainable_params:,} | {r.tokens_per_s:.0f} | {r.eval_examples_per_s:.1f} | "
                     f"{r.peak_memory_mb:.0f} | {r.final_val_accuracy:.3f} | {r.train_seconds:.0f} | {reached} |")
    return "\n".join(lines)


def ratio_lines(found: dict) -> list[str]:
    """The ratios as readable lines."""
    lines = []
    for pair, entry in found.items():
        t = entry.get("time_to_target")
        bound = "≥ " if entry.get("lower_bound") else ""
        t_text = f"{bound}{t:.2f}x sooner to target" if t is not None else entry["note"]
        note = f" ({entry['note']})" if t is not None and "note" in entry else ""
        lines.append(f"{pair}: {entry['tokens_per_s']:.2f}x tokens/s, {entry['eval_examples_per_s']:.2f}x "
                     f"eval examples/s, {t_text}{note}")
    return lines


def machine() -> dict:
    """Where the numbers came from."""
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu_cores_usable": usable_cores(), "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options; --quick shrinks everything to under ten minutes."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small data and budget: under ten minutes")
    parser.add_argument("--model", default=None)
    parser.add_argument("--contenders", nargs="+", choices=CONTENDERS, default=CONTENDERS)
    parser.add_argument("--budget", type=float, default=None, help="training seconds per contender")
    parser.add_argument("--check-every", type=float, default=None)
    parser.add_argument("--max-train", type=int, default=None)
    parser.add_argument("--val-examples", type=int, default=None)
    parser.add_argument("--target", type=float, default=None)
    parser.add_argument("--output", default=None, help="JSON file (default benchmarks/results/bench[-quick].json)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: run one contender
    parser.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def bench_config(args: argparse.Namespace) -> BenchConfig:
    """Defaults, the quick preset, then explicit options."""
    config = BenchConfig()
    if args.quick:
        config = BenchConfig(max_train=240, val_examples=96, speed_examples=48, budget_s=40, check_every_s=10,
                             target=0.70, seed_max_length=64)
    for option, name in [("model", "model"), ("budget", "budget_s"), ("check_every", "check_every_s"),
                         ("max_train", "max_train"), ("val_examples", "val_examples"), ("target", "target")]:
        value = getattr(args, option)
        if value is not None:
            setattr(config, name, value)
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
    """Run each contender in a fresh process, then print and save the comparison."""
    args = parse_args(argv)
    config = bench_config(args)
    if args.worker:  # child process: one contender, result as JSON
        quiet_libraries()
        Path(args.worker_out).write_text(json.dumps(asdict(run_contender(args.worker, config))))
        return 0
    results: dict[str, Result] = {}
    for name in args.contenders:
        print(f"[bench] {name} ...", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "result.json"
            cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--worker-out", str(out),
                   *[a for a in (argv if argv is not None else sys.argv[1:])]]
            # TQDM_DISABLE: the course's caching progress bars would bury the benchmark's lines.
            subprocess.run(cmd, check=True, env={**os.environ, "TQDM_DISABLE": "1"})
            results[name] = Result(**json.loads(out.read_text()))
        r = results[name]
        print(f"[bench] {name}: {r.tokens_per_s:.0f} tokens/s, val acc {r.final_val_accuracy:.3f} after "
              f"{r.train_seconds:.0f} s, target at {r.time_to_target_s}", flush=True)
    found = ratios(results)
    report = {"config": asdict(config), "machine": machine(),
              "results": {k: asdict(v) for k, v in results.items()}, "ratios": found}
    default = HERE / "results" / ("bench-quick.json" if args.quick else "bench.json")
    output = Path(args.output) if args.output else default
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2))
    print(table(results, config))
    for line in ratio_lines(found):
        print(line)
    print(f"Saved {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The one pipeline: the document's steps, from data to a saved and scored model, for every task.

A task (course_lib.tasks) says what differs: its data, its model, how it scores the test split
and what it saves. The order of the steps, the one training loop, checkpoints, processes and
the output folder are written here once. Each step is its own function so the chapters can run
them one at a time; `run_finetune` chains them for the command line.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from datasets import DatasetDict
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from course_lib.config import RunConfig, Task, model_settings
from course_lib.data import make_loader
from course_lib.errors import ConfigError, TrainingInterrupted
from course_lib.model_card import model_card
from course_lib.models import apply_strategy, block_count, count_parameters, merge_adapters, pick_device
from course_lib.plots import plot_loss_curves
from course_lib.progress import TqdmProgress, TrainingCallback
from course_lib.records import History
from course_lib.runtime.assets import atomic_dir, readable_path
from course_lib.runtime.budget import SAVE_SECONDS, Budget, Deadline, Plan, measure_rates, plan_run
from course_lib.runtime.checkpoints import PLAN_FILE, TrainingCheckpoint
from course_lib.runtime.cpu_share import share_callbacks, sharing_note
from course_lib.runtime.distributed import Parallel
from course_lib.runtime.speed import busy_warning, precision_note, uses_bf16
from course_lib.saving import INFO_FILE, load_finetuned
from course_lib.tasks import Scores, TaskSpec, get_task
from course_lib.training import set_seed, train

Log = Callable[[str], None]
OUTPUTS_FILE = "test_outputs.jsonl"


@dataclass
class FitResult:
    """A fine-tuned model with its tokenizer, tokenized splits and History."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    tokens: DatasetDict
    history: History


@dataclass
class FinetuneResult:
    """What a run produced: test scores, the scores to compare them with, the History and the model."""

    task: Task
    history: History
    test: dict
    baselines: dict[str, dict]  # e.g. "majority_baseline" (classify) or "zero_shot" (generate)
    outputs: list[dict]  # per test example, for test_outputs.jsonl (tasks that write)
    output_dir: Path | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    reports: dict[str, dict] = field(default_factory=dict)  # e.g. "int8" with --int8-report
    plan: Plan | None = None  # the size a time budget chose, with its estimate (None without a budget)
    model: PreTrainedModel | None = field(default=None, repr=False)
    tokenizer: PreTrainedTokenizerBase | None = field(default=None, repr=False)


def fit(
    run: RunConfig,
    data: Any,
    model: PreTrainedModel | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    tokens: DatasetDict | None = None,
    callbacks: Iterable[TrainingCallback] | None = None,
    log: Log = print,
    checkpoint: TrainingCheckpoint | None = None,
) -> FitResult:
    """Steps 4-5: load the pretrained model (unless given), choose the weights that train, tokenize, train."""
    task, config = get_task(run.task), run.train
    config.validate()
    set_seed(config.seed)  # before loading: a new head's (or LoRA's) random start is seeded too
    parallel = Parallel.current()
    device = parallel.device(pick_device())
    if device.type == "cpu" and (warning := busy_warning()):
        log(warning)
    if model is None:
        model, tokenizer = task.load_model(run, data, log)
    trained = apply_strategy(model, config)  # the model itself, or wrapped with LoRA adapters
    trainable, total = count_parameters(trained)
    log(f"Model {run.model} on {device}, strategy {config.strategy.value}: "
        f"{trainable:,} of {total:,} parameters trainable ({trainable / total:.1%}).")
    log(precision_note(device, config.mixed_precision))
    if tokens is None:
        tokens = task.encode(run, data, tokenizer, log)
    module, train_loader, val_loader = task.loaders(trained, tokens, tokenizer, run, device, log, parallel)
    if callbacks is None:
        callbacks = default_callbacks(parallel)
    # The task's own first, so a progress line already shows what they add to an epoch's record.
    callbacks = [*task.callbacks(trained, tokenizer, data, run, parallel), *callbacks]
    if parallel.num_processes == 1:  # launched processes already split the cores between them
        callbacks += share_callbacks(device)
    history = train(module, train_loader, val_loader, config, device, task.num_labels(data),
                    callbacks, checkpoint, parallel)
    if note := sharing_note(history):
        log(note)
    return FitResult(merge_adapters(trained), tokenizer, tokens, history)


def default_callbacks(parallel: Parallel) -> list[TrainingCallback]:
    """A progress bar, in the main process only."""
    return [TqdmProgress()] if parallel.is_main_process else []


def run_finetune(
    run: RunConfig,
    callbacks: Iterable[TrainingCallback] | None = None,
    log: Log = print,
    save: bool = True,
    resume: bool = False,
    zero_shot: bool = True,
    budget: Budget | None = None,
) -> FinetuneResult:
    """Run the whole document for the run's task and write its output folder.

    Tasks that write are scored on the test split before fine-tuning too (`zero_shot=False`
    skips that). After every epoch the training state is kept in a checkpoint folder beside
    output_dir; `resume=True` continues an interrupted run from there. With a `budget`, the
    number of training examples is chosen by measuring this machine (`fit_to_budget`); with
    `budget.plan_only` the run stops after printing that plan (the result has no test scores).
    """
    task = get_task(run.task)
    run.validate()  # bad settings fail here, before anything slow happens
    task.check(run)
    parallel = Parallel.current()
    if not parallel.is_main_process:  # one voice: only the main process prints and saves
        log = _silent  # (callbacks given here run in every process; the default bar only in the main one)
    checkpoint = _start_checkpoint(run, parallel, resume)
    clock, times = time.perf_counter(), {}
    data = task.prepare(run)
    log(task.describe(data)[0])
    check_blocks(run, log)
    model = tokenizer = tokens = zero_shot_s = None
    baselines = {}
    if zero_shot and task.scores_pretrained:
        model, tokenizer = task.load_model(run, data, log)
        tokens = task.encode(run, data, tokenizer, log)  # a prompt too long fails here, not later
        scoring = time.perf_counter()
        before = task.score(model, tokenizer, data, tokens, run, parallel)
        zero_shot_s = time.perf_counter() - scoring
        baselines["zero_shot"] = before.metrics
        log(f"Zero-shot (before fine-tuning), test split: {scores_phrase(task, before.metrics)}.")
    times["data_and_model"] = _lap(clock, times)
    plan = None
    if budget is not None:
        data, model, tokenizer, tokens, plan = fit_to_budget(
            task, run, data, model, tokenizer, tokens, budget, zero_shot_s, checkpoint, log)
        times["plan"] = _lap(clock, times)
        if budget.plan_only:
            return FinetuneResult(run.task, History(), {}, baselines, [], plan=plan, seconds=times)
        # If the machine slows down mid-run, training ends early rather than the run late.
        deadline = Deadline(plan, budget.started)
        callbacks = [*(default_callbacks(parallel) if callbacks is None else callbacks), deadline]
    try:
        fitted = fit(run, data, model, tokenizer, tokens, callbacks, log, checkpoint)
    except KeyboardInterrupt:
        raise TrainingInterrupted(
            f"Interrupted. The last finished epoch is kept in {checkpoint.folder}; run the same "
            "command with --resume to continue from it."
        ) from None
    times["fit"] = _lap(clock, times)

    after = task.score(fitted.model, fitted.tokenizer, data, fitted.tokens, run, parallel)
    baselines.update(task.baselines(data, fitted.tokens))
    times["test"] = _lap(clock, times)
    log(f"Fine-tuned, test split: {scores_phrase(task, after.metrics)}"
        + "".join(f"; {name.replace('_', ' ')}: {scores_phrase(task, scores)}"
                  for name, scores in baselines.items() if name != "zero_shot") + ".")
    outputs = _merge_outputs(after, before if "zero_shot" in baselines else None)
    result = FinetuneResult(run.task, fitted.history, after.metrics, baselines, outputs, None, times,
                            model=fitted.model, tokenizer=fitted.tokenizer, plan=plan)
    if parallel.is_main_process:
        result.reports = task.reports(fitted.model, fitted.tokenizer, data, fitted.tokens, run, log)
        if save:  # the split sizes of the data trained on (a time budget may have chosen fewer)
            result.output_dir = write_outputs(task, run, data, result, task.describe(data)[1])
            log(f"Saved the model, metrics.json and loss_curve.png to {readable_path(result.output_dir)}")
        checkpoint.clear()
    times["total"] = time.perf_counter() - clock
    if plan is not None:
        log(f"Time budget: estimated {plan.fit_s:.0f} s of training, took {times['fit']:.0f} s "
            f"({times['fit'] / plan.fit_s - 1:+.0%}); the whole command so far {budget.spent():.0f} s "
            f"of the {plan.budget_s:.0f} s budget.")
        log(plan.against(fitted.history))
        if fitted.history.ended_by == type(deadline).__name__:
            history = fitted.history
            log(f"Training fell behind the plan, so it ended after {len(history.step_losses)} of "
                f"{history.steps_per_epoch * history.planned_epochs} steps to end within the budget.")
    return result


def fit_to_budget(task: TaskSpec, run: RunConfig, data: Any, model: PreTrainedModel | None,
                  tokenizer: PreTrainedTokenizerBase | None, tokens: DatasetDict | None, budget: Budget,
                  zero_shot_s: float | None, checkpoint: TrainingCheckpoint, log: Log = print) -> tuple:
    """Measure this machine, choose how many training examples fit the budget, and prepare that data.

    Returns (data, model, tokenizer, tokens, plan). The test pass is estimated from the zero-shot
    pass where there was one (writing the test outputs once more), else by timing a few test batches.
    A resumed run reuses the plan saved beside its checkpoint, so it trains on the same examples.
    """
    if model is None:
        set_seed(run.train.seed)  # the new head starts from the same random numbers as inside fit
        model, tokenizer = task.load_model(run, data, log)
    if tokens is None:
        tokens = task.encode(run, data, tokenizer, log)
    saved = checkpoint.folder / PLAN_FILE
    if checkpoint.exists() and saved.exists():
        plan = Plan.from_dict(json.loads(saved.read_text()))
        log(f"Resuming with the plan of the interrupted run: {plan.line()}")
    else:
        device = pick_device()
        precision = "bf16" if uses_bf16(device, run.train.mixed_precision) else "float32"
        # Without a zero-shot pass to go by, the test pass (one evaluation) is timed on a few test batches.
        test_loader = None if zero_shot_s is not None else lambda sample: make_loader(
            sample, tokenizer, run.train.eval_batch_size, sort_by_length=True)
        loaders = lambda m, t: task.loaders(m, t, tokenizer, run, device, _silent, Parallel())  # noqa: E731
        rates = measure_rates(model, tokens, run.train, loaders, device, task.num_labels(data), precision,
                              test_loader)
        test_s = zero_shot_s if zero_shot_s is not None else len(tokens["test"]) * rates.test
        plan = plan_run(rates, budget.minutes * 60, budget.spent(), test_s + SAVE_SECONDS, len(tokens["train"]),
                        len(tokens["validation"]), run.train.epochs, task.unit, task.min_train, budget.strict)
        log(plan.line())
        if not budget.plan_only:
            saved.parent.mkdir(parents=True, exist_ok=True)
            saved.write_text(json.dumps(plan.to_dict()))
    if plan.train_examples < len(tokens["train"]):
        data, tokens = resize_training(task, run, tokenizer, plan.train_examples, log)
    return data, model, tokenizer, tokens, plan


def resize_training(task: TaskSpec, run: RunConfig, tokenizer: PreTrainedTokenizerBase,
                    examples: int, log: Log = print) -> tuple[Any, DatasetDict]:
    """Prepare and encode the data again with `examples` training examples, as `--max-train` would.

    The run's config records the new size, so the saved model says what it was trained on; the
    validation and test splits do not depend on it.
    """
    run.data = replace(run.data, **{task.size_field: examples})
    data = task.prepare(run)
    log(task.describe(data)[0])
    return data, task.encode(run, data, tokenizer, _silent)


def scores_phrase(task: TaskSpec, scores: dict) -> str:
    """'accuracy 0.852, macro F1 0.849' or 'BLEU 50.0, ROUGE-L 64.8, ...': the task's headline scores."""
    return ", ".join(f"{header} {fmt.format(scores[key])}" for header, key, fmt in task.score_columns
                     if scores.get(key) is not None)


def _merge_outputs(after: Scores, before: Scores | None) -> list[dict]:
    """One row per test example: what it was, and what the model wrote before and after fine-tuning."""
    rows = []
    for i, row in enumerate(after.outputs):
        row = {k: v for k, v in row.items() if k != "output"}
        if before is not None:
            row["zero_shot"] = before.outputs[i]["output"]
        rows.append({**row, "fine_tuned": after.outputs[i]["output"]})
    return rows


def _start_checkpoint(run: RunConfig, parallel: Parallel, resume: bool) -> TrainingCheckpoint:
    """The run's checkpoint: kept to resume from, or cleared for a fresh start."""
    checkpoint = checkpoint_for(run, parallel.num_processes)
    if resume and not checkpoint.exists():
        raise ConfigError(f"Nothing to resume: no checkpoint in {checkpoint.folder}.")
    if not resume and parallel.is_main_process:
        checkpoint.clear()
    parallel.wait_for_everyone()  # nobody looks for a checkpoint while the main process clears it
    return checkpoint


def checkpoint_for(run: RunConfig, processes: int = 1) -> TrainingCheckpoint:
    """The run's checkpoint folder: hidden beside output_dir, so a failed run leaves output_dir alone.

    A run resumes only with the same settings and number of processes (which set the batches).
    """
    out = Path(run.output_dir)
    fingerprint = {k: v for k, v in run.to_dict().items() if k != "output_dir"}
    if processes > 1:
        fingerprint["processes"] = processes
    return TrainingCheckpoint(out.parent / f".{out.name}.checkpoint", fingerprint)


def _lap(clock: float, times: dict[str, float]) -> float:
    """Seconds since the last recorded phase ended."""
    return time.perf_counter() - clock - sum(times.values())


def _silent(message: str) -> None:
    """The log of a process that is not the main one."""


def check_blocks(run: RunConfig, log: Log = print) -> None:
    """Compare train_blocks with the model's depth from its config, before loading any weights."""
    blocks = run.train.top_blocks()
    if not blocks:
        return
    available = block_count(run.model)
    if blocks > available and run.blocks_at_most:
        log(f"{run.model} has {available} blocks, fewer than {blocks}: training all of them.")
        run.train.train_blocks = available
    elif blocks > available:
        raise ConfigError(
            f"train_blocks={blocks} but {run.model} has only {available} blocks; "
            f"use 0 to {available}, or 'all'."
        )


def write_outputs(task: TaskSpec, run: RunConfig, data: Any, result: FinetuneResult, sizes: dict) -> Path:
    """Write the run's folder in one atomic step (model with its card, metrics.json, test outputs, loss curve).

    A failed run leaves nothing behind.
    """
    out = Path(run.output_dir)
    metrics = {"task": run.task.value, "test": result.test, **result.baselines, "split_sizes": sizes,
               **task.metrics_info(run, data), "history": result.history.to_dict(), "seconds": result.seconds,
               **result.reports, **({"plan": result.plan.to_dict()} if result.plan else {})}
    with atomic_dir(out) as tmp:
        task.save_model(tmp / "model", result.model, result.tokenizer, data, run, metrics)
        bf16 = uses_bf16(next(result.model.parameters()).device, run.train.mixed_precision)
        card = model_card(run, metrics, task.data_source(run), result.outputs, "bf16" if bf16 else "float32")
        (tmp / "model" / "README.md").write_text(card, encoding="utf-8")
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
        if result.outputs:
            with open(tmp / OUTPUTS_FILE, "w", encoding="utf-8") as handle:
                handle.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in result.outputs)
        plot_loss_curves(result.history).savefig(tmp / "loss_curve.png", dpi=120)
    return out


def load_or_train(
    run: RunConfig, log: Log = print
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, dict]:
    """Reuse the model saved in run.output_dir if it fits, or train one now.

    Chapters 6-8 need a fine-tuned model; this lets each run on its own in a fresh kernel
    without repeating chapter 5's training. A saved model is reused when it was trained on the
    same model and data (its training settings may be the learner's own choice from chapter 5);
    one trained on other data is moved aside, never overwritten.
    """
    folder = Path(run.output_dir) / "model"
    if (folder / INFO_FILE).exists():
        model, tokenizer, info = load_finetuned(folder, task=run.task)
        saved, wanted = model_settings(info.get("config", {})), run.model_settings()
        if saved == wanted:
            log(f"Reusing the model saved in {readable_path(folder)} (same settings).")
            return model, tokenizer, info
        if {k: saved.get(k) for k in ("model", "data")} == {k: wanted[k] for k in ("model", "data")}:
            changed = settings_diff(saved.get("train", {}), wanted["train"])
            log(f"Reusing the model saved in {readable_path(folder)}, trained with your settings "
                f"({changed}) instead of the profile's.")
            return model, tokenizer, info
        kept = _move_aside(Path(run.output_dir))
        log(f"The model in {readable_path(folder)} was trained on other data or another base model; "
            f"it is kept in {readable_path(kept)}.")
    log("No saved model with these settings yet: fine-tuning one now.")
    run_finetune(run, log=log)
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

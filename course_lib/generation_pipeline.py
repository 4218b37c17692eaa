"""The whole document for generation: data, zero-shot scores, fine-tuning, saving, test scores.

The same steps as the classifier's (pipeline.py) and the same `train` loop; what changes is the
data (prompt-response pairs), the model's head (the language-model head it already has, so
nothing new starts from random) and the evaluation (text written by the model, scored with
BLEU and ROUGE-L against human references, before and after fine-tuning).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from datasets import DatasetDict
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from course_lib.assets import atomic_dir, readable_path
from course_lib.checkpoints import TrainingCheckpoint
from course_lib.config import GenerationRunConfig, Task
from course_lib.cpu_share import share_callbacks
from course_lib.data import make_loader
from course_lib.errors import ConfigError, TrainingInterrupted
from course_lib.generation import GenerationScores, generate
from course_lib.metrics import generation_metrics
from course_lib.models import (
    apply_strategy,
    count_parameters,
    load_causal_lm,
    merge_adapters,
    pick_device,
)
from course_lib.pairs import PreparedPairs, pair_collator, prepare_pairs, tokenize_pairs
from course_lib.pipeline import checkpoint_for
from course_lib.plots import plot_loss_curves
from course_lib.progress import TqdmProgress, TrainingCallback
from course_lib.saving import save_finetuned
from course_lib.speed import busy_warning, precision_note
from course_lib.training import History, set_seed, train

Log = Callable[[str], None]
OUTPUTS_FILE = "test_outputs.jsonl"


@dataclass
class WriterFit:
    """A model fine-tuned to write, with its tokenizer, tokenized pairs and History."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    tokens: DatasetDict
    history: History


@dataclass
class GenerationResult:
    """What a generation run produced: scores before and after, the texts, the History."""

    history: History
    zero_shot: dict | None
    test: dict
    outputs: list[dict]  # per test prompt: prompt, references, zero_shot, fine_tuned
    output_dir: Path | None
    seconds: dict[str, float] = field(default_factory=dict)
    model: PreTrainedModel | None = field(default=None, repr=False)
    tokenizer: PreTrainedTokenizerBase | None = field(default=None, repr=False)
    system: str | None = None  # the instruction the model was trained with


def score_split(model: nn.Module, tokenizer: PreTrainedTokenizerBase, data: PreparedPairs,
                config: GenerationRunConfig, split: str = "test") -> tuple[dict, list[str]]:
    """Generate for every distinct prompt of a split and score the texts against its references."""
    prompts, references = data.references(split)
    texts = generate(model, tokenizer, prompts, data.system, config.decode)
    return generation_metrics(texts, references, prompts), texts


def encode_splits(config: GenerationRunConfig, data: PreparedPairs, tokenizer: PreTrainedTokenizerBase,
                  log: Log = print) -> DatasetDict:
    """Step 2 for generation: every pair in the chat layout, labels masked on the prompt."""
    tokens, truncated = tokenize_pairs(data.splits, tokenizer, config.train.max_length, data.system,
                                       config.mask_prompt)
    if truncated:
        log(f"{truncated} prompt-response pairs are longer than max_length={config.train.max_length} "
            "tokens; their responses were cut (raise --max-length to keep them).")
    return tokens


def fit_writer(
    config: GenerationRunConfig,
    data: PreparedPairs,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    tokens: DatasetDict,
    callbacks: Iterable[TrainingCallback] | None = None,
    log: Log = print,
    checkpoint: TrainingCheckpoint | None = None,
    val_prompts: int = 0,
) -> WriterFit:
    """Step 5 for generation: choose the trainable weights and train on the encoded pairs.

    `val_prompts` > 0 also writes for that many validation prompts after each epoch and
    records their BLEU and ROUGE-L beside the validation loss.
    """
    train_config = config.train
    set_seed(train_config.seed)  # LoRA's random start and the data order, repeatable
    device = pick_device()
    if device.type == "cpu" and (warning := busy_warning()):
        log(warning)
    trained = apply_strategy(model, train_config)  # LoRA wraps the model; top-k/full freeze in place
    trainable, total = count_parameters(trained)
    log(f"Model {config.model} on {device}, strategy {train_config.strategy.value}: "
        f"{trainable:,} of {total:,} parameters trainable ({trainable / total:.1%}).")
    log(precision_note(device, train_config.mixed_precision))
    collator = pair_collator(tokenizer)
    train_loader = make_loader(tokens["train"], tokenizer, train_config.batch_size, shuffle=True,
                               seed=train_config.seed, collator=collator)
    val_loader = make_loader(tokens["validation"], tokenizer, train_config.eval_batch_size,
                             sort_by_length=True, collator=collator)
    callbacks = [*(callbacks if callbacks is not None else [TqdmProgress()]), *share_callbacks(device)]
    if val_prompts:
        prompts, references = data.references("validation")
        scores = GenerationScores(trained, tokenizer, prompts[:val_prompts], references[:val_prompts],
                                  data.system, config.decode)
        callbacks.insert(0, scores)  # first, so the progress line already shows the scores
    history = train(trained, train_loader, val_loader, train_config, device, None, callbacks, checkpoint)
    return WriterFit(merge_adapters(trained), tokenizer, tokens, history)


def run_generation_finetune(
    config: GenerationRunConfig,
    callbacks: Iterable[TrainingCallback] | None = None,
    log: Log = print,
    save: bool = True,
    resume: bool = False,
    zero_shot: bool = True,
    val_prompts: int = 0,
) -> GenerationResult:
    """Run the whole document for generation and write model, metrics.json and test outputs.

    The pretrained model is scored on the test prompts first (zero-shot), so the fine-tuned
    scores have something to be compared with.
    """
    config.validate()  # bad settings fail here, before anything slow happens
    checkpoint = checkpoint_for(config)
    if resume and not checkpoint.exists():
        raise ConfigError(f"Nothing to resume: no checkpoint in {checkpoint.folder}.")
    if not resume:
        checkpoint.clear()
    clock = time.perf_counter()
    data = prepare_pairs(config.data, config.system)
    sizes = {name: {"pairs": len(frame), "prompts": int(frame["prompt"].nunique())}
             for name, frame in data.splits.items()}
    log(f"Data: {data.report.summary()}. Split by prompt: {sizes}.")
    model, tokenizer = load_causal_lm(config.model)
    tokens = encode_splits(config, data, tokenizer, log)  # a prompt too long fails here, not later
    times = {"data_and_model": time.perf_counter() - clock}

    before, before_texts = None, None
    if zero_shot:
        before, before_texts = score_split(model, tokenizer, data, config)
        log(f"Zero-shot (before fine-tuning) on {sizes['test']['prompts']} test prompts: "
            f"{_scores_line(before)}.")
        times["zero_shot"] = _lap(clock, times)
    try:
        fitted = fit_writer(config, data, model, tokenizer, tokens, callbacks, log, checkpoint, val_prompts)
    except KeyboardInterrupt:
        raise TrainingInterrupted(
            f"Interrupted. The last finished epoch is kept in {checkpoint.folder}; run the same "
            "command with --resume to continue from it."
        ) from None
    times["fit"] = _lap(clock, times)
    after, after_texts = score_split(fitted.model, tokenizer, data, config)
    log(f"Fine-tuned on the same test prompts: {_scores_line(after)}.")
    times["test"] = _lap(clock, times)

    prompts, references = data.references("test")
    outputs = [{"prompt": p, "references": refs, "fine_tuned": text}
               for p, refs, text in zip(prompts, references, after_texts, strict=True)]
    if before_texts is not None:
        for row, text in zip(outputs, before_texts, strict=True):
            row["zero_shot"] = text
    result = GenerationResult(fitted.history, before, after, outputs, None, times, fitted.model, tokenizer,
                              data.system)
    if save:
        result.output_dir = write_generation_outputs(config, result, sizes)
        log(f"Saved model, metrics.json, {OUTPUTS_FILE} and loss_curve.png to {readable_path(result.output_dir)}")
    checkpoint.clear()
    times["total"] = time.perf_counter() - clock
    return result


def _lap(clock: float, times: dict[str, float]) -> float:
    """Seconds since the last recorded phase ended."""
    return time.perf_counter() - clock - sum(times.values())


def _scores_line(scores: dict) -> str:
    """BLEU, ROUGE-L (and coverage) as one short phrase."""
    line = f"BLEU {scores['bleu']:.1f}, ROUGE-L {scores['rouge_l']:.1f}"
    if "coverage" in scores:
        line += f", attributes mentioned {scores['coverage']:.0f} %"
    return line


def write_generation_outputs(config: GenerationRunConfig, result: GenerationResult, sizes: dict) -> Path:
    """Write the run's folder in one atomic step: model, metrics.json, test outputs, loss curve."""
    out = Path(config.output_dir)
    metrics = {
        "task": Task.GENERATE.value,
        "test": result.test,
        "zero_shot": result.zero_shot,
        "split_sizes": sizes,
        "decoding": {"max_new_tokens": config.decode.max_new_tokens, "do_sample": config.decode.do_sample},
        "history": result.history.to_dict(),
        "seconds": result.seconds,
    }
    with atomic_dir(out) as tmp:
        save_writer(tmp / "model", result.model, result.tokenizer, config, result.system, metrics)
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
        with open(tmp / OUTPUTS_FILE, "w", encoding="utf-8") as handle:
            for row in result.outputs:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        plot_loss_curves(result.history).savefig(tmp / "loss_curve.png", dpi=120)
    return out


def save_writer(folder: Path, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                config: GenerationRunConfig, system: str | None, metrics: dict | None = None) -> Path:
    """Save a writer with the instruction it was trained with, so `generate` can give it the same one."""
    return save_finetuned(folder, model, tokenizer, None, {**config.to_dict(), "system": system}, metrics,
                          task=Task.GENERATE)


def saved_system(info: dict) -> str | None:
    """The instruction a saved writer was trained with (from its course.json)."""
    return info.get("config", {}).get("system")

"""Generate: read a prompt, write a response (E2E restaurant descriptions, CommonGen sentences).

The model keeps its own language-model head, so nothing starts from random; the loss covers the
response tokens (the prompt's labels are masked), and the test score compares the text it
writes with every human reference (BLEU, ROUGE-L), before fine-tuning and after.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from datasets import DatasetDict
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from course_lib.config import (
    BUILTIN_PAIRS,
    RECOMMENDED_LR,
    DecodeConfig,
    PairDataConfig,
    RunConfig,
    Strategy,
    Task,
    TrainConfig,
    parse_strategy,
)
from course_lib.data import make_loader
from course_lib.errors import ConfigError
from course_lib.generation import GenerationScores, generate
from course_lib.metrics import generation_metrics
from course_lib.models import load_causal_lm
from course_lib.pairs import BUILTIN_TASKS, PreparedPairs, pair_collator, prepare_pairs, tokenize_pairs
from course_lib.runtime.distributed import Parallel
from course_lib.saving import save_finetuned
from course_lib.tasks.base import Log, Model, Scores, TaskSpec, describe_training, option


class Generate(TaskSpec):
    """Prompts in, texts out."""

    task = Task.GENERATE
    output_dir = "outputs/generator"
    size_field, unit, min_train = "max_train_pairs", "pairs", 48
    score_columns = (("BLEU", "bleu", "{:.1f}"), ("ROUGE-L", "rouge_l", "{:.1f}"),
                     ("attributes %", "coverage", "{:.0f}"), ("words", "mean_words", "{:.1f}"))
    scores_pretrained = True

    def defaults_line(self) -> str:
        return (f"Defaults: {PairDataConfig().max_train_pairs} pairs of the offline e2e set (--data: "
                f"{', '.join(BUILTIN_PAIRS)} or a CSV); {describe_training(TrainConfig.for_generation())}.")

    def add_options(self, group: argparse._ArgumentGroup) -> list[argparse.Action]:
        return [
            group.add_argument("--prompt-column", default="prompt", help="CSV/Hub column the model reads"),
            group.add_argument("--response-column", default="response", help="CSV/Hub column it learns to write"),
            group.add_argument("--max-new-tokens", type=int, default=None,
                               help="stop writing after this many tokens "
                                    f"(default: {DecodeConfig().max_new_tokens})"),
            group.add_argument("--repetition-penalty", type=float, default=None,
                               help="above 1, a token the reply already wrote is less likely again (the prompt "
                                    f"does not count; default: {DecodeConfig().repetition_penalty})"),
            group.add_argument("--system", default=None,
                               help="the instruction before each prompt (default: the built-in set's own)"),
            group.add_argument("--no-prompt-mask", action="store_true",
                               help="also learn to predict the prompt's tokens (default: only the response's)"),
            group.add_argument("--val-prompts", type=int, default=0,
                               help="after each epoch, write for this many validation prompts and report BLEU"),
            group.add_argument("--max-test-prompts", type=int, default=0,
                               help="test prompts to write for (0 = all)"),
        ]

    def run_config(self, args: argparse.Namespace, common: dict, given: dict) -> RunConfig:
        train = writer_training(args, {**common, **given})
        data = PairDataConfig(source=args.data or "e2e", hub_dataset=args.hub_dataset,
                              prompt_column=args.prompt_column, response_column=args.response_column,
                              max_train_pairs=option(args.max_train, PairDataConfig().max_train_pairs) or None,
                              max_test_prompts=args.max_test_prompts or None, seed=args.seed)
        decode = decode_from_args(args, DecodeConfig(), mixed_precision=common["mixed_precision"])
        return RunConfig.for_generation(model=args.model, output_dir=Path(args.output or self.output_dir),
                                        data=data, train=train, decode=decode, mask_prompt=not args.no_prompt_mask,
                                        system=args.system, val_prompts=args.val_prompts)

    def prepare(self, run: RunConfig) -> PreparedPairs:
        return prepare_pairs(run.data, run.system)

    def describe(self, data: PreparedPairs) -> tuple[str, dict]:
        sizes = {name: {"pairs": len(frame), "prompts": int(frame["prompt"].nunique())}
                 for name, frame in data.splits.items()}
        return f"Data: {data.report.summary()}. Split by prompt: {sizes}.", sizes

    def check(self, run: RunConfig) -> None:
        if run.train.strategy == Strategy.HEAD:
            raise ConfigError(
                "Strategy 'head' trains only a new classification head, and a writing model has "
                "none: its output layer is the vocabulary. Use lora (the default), top-k or full."
            )

    def load_model(self, run: RunConfig, data: PreparedPairs, log: Log) -> Model:
        return load_causal_lm(run.model)

    def encode(self, run: RunConfig, data: PreparedPairs, tokenizer: PreTrainedTokenizerBase,
               log: Log) -> DatasetDict:
        """Every pair in the chat layout, labels masked on the prompt."""
        tokens, truncated = tokenize_pairs(data.splits, tokenizer, run.train.max_length, data.system,
                                           run.mask_prompt)
        if truncated:
            log(f"{truncated} prompt-response pairs are longer than max_length={run.train.max_length} "
                "tokens; their responses were cut (raise --max-length to keep them).")
        return tokens

    def loaders(self, model, tokens, tokenizer, run, device, log, parallel):
        collator, train = pair_collator(tokenizer), run.train
        return model, *(make_loader(tokens[split], tokenizer, size, shuffle=shuffle, seed=train.seed,
                                    sort_by_length=not shuffle, collator=collator, parallel=parallel)
                        for split, size, shuffle in (("train", train.batch_size, True),
                                                     ("validation", train.eval_batch_size, False)))

    def callbacks(self, model, tokenizer, data, run, parallel):
        if not run.val_prompts:
            return []
        prompts, references = data.references("validation")
        return [GenerationScores(model, tokenizer, prompts[:run.val_prompts], references[:run.val_prompts],
                                 data.system, run.decode, parallel)]

    def score(self, model, tokenizer, data, tokens, run, parallel: Parallel) -> Scores:
        metrics, texts = score_split(model, tokenizer, data, run, "test", parallel)
        prompts, references = data.references("test")
        return Scores(metrics, [{"prompt": p, "references": refs, "output": text}
                                for p, refs, text in zip(prompts, references, texts, strict=True)])

    def save_model(self, folder: Path, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                   data: PreparedPairs, run: RunConfig, metrics: dict) -> Path:
        return save_writer(folder, model, tokenizer, run, data.system, metrics)

    def data_source(self, run: RunConfig) -> tuple[str, str]:
        if run.data.hub_dataset:
            return f"the Hub data set {run.data.hub_dataset}", "see its dataset card"
        if run.data.source in BUILTIN_TASKS:
            asset = BUILTIN_TASKS[run.data.source][0]
            return asset.name, asset.licence
        return super().data_source(run)

    def metrics_info(self, run: RunConfig, data: PreparedPairs) -> dict:
        return {"decoding": {"max_new_tokens": run.decode.max_new_tokens, "do_sample": run.decode.do_sample,
                             "repetition_penalty": run.decode.repetition_penalty}}


TASK = Generate()


def decode_from_args(args: argparse.Namespace, default: DecodeConfig, **changes) -> DecodeConfig:
    """`default` with the decoding options given on the command line (--max-new-tokens, --repetition-penalty)."""
    return replace(default, max_new_tokens=option(args.max_new_tokens, default.max_new_tokens),
                   repetition_penalty=option(args.repetition_penalty, default.repetition_penalty), **changes)


def writer_training(args: argparse.Namespace, settings: dict, defaults: TrainConfig | None = None) -> TrainConfig:
    """Training settings of a model that writes: the task's `defaults` (the writer's if None) with the
    options given; LoRA unless --strategy says otherwise, at its own rate."""
    strategy = parse_strategy(args.strategy or Strategy.LORA)
    train = replace(defaults or TrainConfig.for_generation(), strategy=strategy, **settings)
    if strategy != Strategy.LORA and args.learning_rate is None:
        train.learning_rate = RECOMMENDED_LR[strategy]
    return train


def score_split(model: nn.Module, tokenizer: PreTrainedTokenizerBase, data: PreparedPairs, run: RunConfig,
                split: str = "test", parallel: Parallel | None = None) -> tuple[dict, list[str]]:
    """Write for every distinct prompt of a split and score the texts against all of its references."""
    prompts, references = data.references(split)
    texts = generate(model, tokenizer, prompts, data.system, run.decode, parallel)
    return generation_metrics(texts, references, prompts), texts


def save_writer(folder: Path, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                run: RunConfig, system: str | None, metrics: dict | None = None) -> Path:
    """Save a writer with the instruction it was trained with, so `generate` or `chat` can give it the same one."""
    return save_finetuned(folder, model, tokenizer, None, {**run.to_dict(), "system": system}, metrics,
                          task=run.task)


def saved_system(info: dict) -> str | None:
    """The instruction a saved writer was trained with (from its course.json)."""
    return info.get("config", {}).get("system")

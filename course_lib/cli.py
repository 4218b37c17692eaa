"""Command line: `finetune` runs the whole document (to classify or to write), `predict` and
`generate` use a saved model, `fetch` prepares a classroom."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from course_lib.config import (
    BUILTIN_PAIRS,
    DEFAULT_MODEL,
    RECOMMENDED_LR,
    DataConfig,
    DecodeConfig,
    GenerationRunConfig,
    PairDataConfig,
    RunConfig,
    Strategy,
    Task,
    TrainConfig,
    parse_strategy,
    parse_task,
)
from course_lib.errors import CourseError, TrainingInterrupted

DEFAULTS = TrainConfig()
# `finetune`'s own defaults for the classifier, chosen by measurement for a run of at most ten
# minutes on 2 CPU cores (README, "Run times"; every setting tried in benchmarks/README.md):
# 9,000 reviews through the top 12 blocks for 2 epochs, checked on 500 validation reviews,
# with bf16 matrix maths where the CPU has it natively. Without native bf16 this takes about
# twice as long. The notebooks' profiles (course_lib.profiles) keep the smaller runs their
# chapters time.
@dataclass(frozen=True)
class FinetuneDefaults:
    """What `finetune` trains when no option says otherwise (classification)."""

    max_train: int = 9000
    max_val: int = 500
    epochs: int = 2
    train_blocks: int = 12
    warmup_fraction: float = 0.03  # of all updates


CLI_DEFAULTS = FinetuneDefaults()
GEN_DEFAULTS = TrainConfig.for_generation()
DECODE_DEFAULTS = DecodeConfig()
# Options that only one task understands, with their "not given" value: given to the other
# task, they are an error rather than silently ignored.
CLASSIFY_ONLY = {"text_column": "text", "label_column": "label", "group_column": None,
                 "max_val": None, "no_cache": False, "int8_report": False, "train_blocks": None}
GENERATE_ONLY = {"prompt_column": "prompt", "response_column": "response", "max_new_tokens": None,
                 "no_prompt_mask": False, "system": None, "val_prompts": 0, "max_test_prompts": 0}


def build_parser() -> argparse.ArgumentParser:
    """All subcommands and their options."""
    parser = argparse.ArgumentParser(prog="course", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    ft = sub.add_parser("finetune", help="fine-tune, validate each epoch, save, evaluate on test")
    ft.add_argument("--task", default=Task.CLASSIFY.value, choices=[t.value for t in Task],
                    help="classify texts (movie reviews, the default) or generate text (E2E restaurants)")
    ft.add_argument("--model", default=DEFAULT_MODEL,
                    help="offline default, a local folder, or a Hub id such as gpt2")
    ft.add_argument("--data", default=None,
                    help="CSV file (default: offline Rotten Tomatoes; for --task generate: "
                         f"the offline {' or '.join(BUILTIN_PAIRS)}, or a CSV)")
    ft.add_argument("--hub-dataset", default=None,
                    help="a Hub data set name such as imdb or GEM/e2e_nlg (needs internet)")
    ft.add_argument("--text-column", default="text")
    ft.add_argument("--label-column", default="label")
    ft.add_argument("--group-column", default=None,
                    help="keep each group (e.g. a movie) inside one split")
    ft.add_argument("--epochs", type=int, default=None,
                    help=f"default: {CLI_DEFAULTS.epochs} (generate: {GEN_DEFAULTS.epochs})")
    ft.add_argument("--strategy", default=None,
                    help=f"which weights to train: {', '.join(s.value for s in Strategy)} "
                         f"(default: {DEFAULTS.strategy.value} with --train-blocks; generate: "
                         f"{GEN_DEFAULTS.strategy.value})")
    ft.add_argument("--lr", "--learning-rate", dest="learning_rate", type=float, default=None,
                    help="default: the strategy's recommended rate ("
                         + ", ".join(f"{k.value} {v:g}" for k, v in RECOMMENDED_LR.items())
                         + f"; generate: {GEN_DEFAULTS.learning_rate:g})")
    ft.add_argument("--warmup", dest="warmup_fraction", type=float, default=None,
                    help="share of the updates that ramp the learning rate up from 0 (default: "
                         f"{CLI_DEFAULTS.warmup_fraction:g}; generate: {GEN_DEFAULTS.warmup_fraction:g})")
    ft.add_argument("--lora-rank", type=int, default=DEFAULTS.lora_rank, help="rank of LoRA adapters")
    ft.add_argument("--batch-size", type=int, default=None,
                    help=f"default: {DEFAULTS.batch_size} (generate: {GEN_DEFAULTS.batch_size})")
    ft.add_argument("--max-length", type=int, default=None,
                    help=f"tokens per example; default: {DEFAULTS.max_length} (generate: "
                         f"{GEN_DEFAULTS.max_length}, prompt and response together)")
    ft.add_argument("--train-blocks", default=None,
                    help="top blocks to train, or 'all' for full fine-tuning "
                         f"(default: {CLI_DEFAULTS.train_blocks})")
    ft.add_argument("--max-train", type=int, default=None,
                    help=f"training examples to use (0 = all; default: {CLI_DEFAULTS.max_train} reviews, "
                         "generate: "
                         f"{PairDataConfig().max_train_pairs} pairs); keeps CPU runs short")
    ft.add_argument("--max-val", type=int, default=None,
                    help=f"validation reviews to use (0 = all; default: {CLI_DEFAULTS.max_val}); fewer make "
                         "each epoch's check quicker")
    ft.add_argument("--seed", type=int, default=DEFAULTS.seed)
    gen = ft.add_argument_group("generation (--task generate)")
    gen.add_argument("--prompt-column", default="prompt", help="CSV/Hub column the model reads")
    gen.add_argument("--response-column", default="response", help="CSV/Hub column it learns to write")
    gen.add_argument("--max-new-tokens", type=int, default=None,
                     help=f"stop writing after this many tokens (default: {DECODE_DEFAULTS.max_new_tokens})")
    gen.add_argument("--system", default=None,
                     help="the instruction before each prompt (default: the built-in set's own)")
    gen.add_argument("--no-prompt-mask", action="store_true",
                     help="also learn to predict the prompt's tokens (default: only the response's)")
    gen.add_argument("--val-prompts", type=int, default=0,
                     help="after each epoch, write for this many validation prompts and report BLEU")
    gen.add_argument("--max-test-prompts", type=int, default=0,
                     help="test prompts to write for (0 = all)")
    ft.add_argument("--no-cache", action="store_true",
                    help="recompute frozen blocks every epoch (slower; for comparison)")
    ft.add_argument("--compile", action="store_true",
                    help="torch.compile the model (opt-in: compiling costs time up front)")
    ft.add_argument("--fp32", action="store_true",
                    help="compute in float32 even where bf16 is native (CUDA, CPUs with AVX512-BF16/AMX)")
    ft.add_argument("--int8-report", action="store_true",
                    help="also score an int8-quantised copy on the test set (CPU)")
    ft.add_argument("--output", default=None,
                    help="output folder (default: outputs/finetuned; generate: outputs/generator)")
    ft.add_argument("--resume", action="store_true",
                    help="continue an interrupted run (same options) from its last finished epoch")
    ft.add_argument("--processes", type=int, default=None,
                    help="train data-parallel in N processes through `accelerate launch` (one per GPU; "
                         "without GPUs, N CPU processes); --batch-size is per process")

    pr = sub.add_parser("predict", help="classify texts with a saved model")
    pr.add_argument("model_dir", help="the model folder inside a finetune output folder")
    pr.add_argument("texts", nargs="*", help="texts to classify")
    pr.add_argument("--file", help="a text file, one review per line")
    pr.add_argument("--json", action="store_true", help="print JSON lines")
    pr.add_argument("--int8", action="store_true",
                    help="quantise the model to int8 first (faster on CPU; check its accuracy)")

    gn = sub.add_parser("generate", help="write text with a model saved by finetune --task generate")
    gn.add_argument("model_dir", help="the model folder inside a finetune output folder")
    gn.add_argument("prompts", nargs="*", help="prompts, e.g. 'name: The Eagle, food: French'")
    gn.add_argument("--file", help="a text file, one prompt per line")
    gn.add_argument("--max-new-tokens", type=int, default=None,
                    help="default: what the model was evaluated with")
    gn.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    gn.add_argument("--temperature", type=float, default=DECODE_DEFAULTS.temperature)
    gn.add_argument("--top-p", type=float, default=DECODE_DEFAULTS.top_p)
    gn.add_argument("--seed", type=int, default=DECODE_DEFAULTS.seed, help="for --sample")
    gn.add_argument("--json", action="store_true", help="print JSON lines")

    fe = sub.add_parser("fetch", help="download and prepare every offline asset (classroom prep)")
    fe.add_argument("--skip-generation", action="store_true",
                    help="skip the generation data (a 358 MB download) if you only teach classification")
    return parser


def _check_task_options(args: argparse.Namespace, task: Task) -> None:
    """Refuse options that belong to the other task instead of ignoring them."""
    foreign = CLASSIFY_ONLY if task == Task.GENERATE else GENERATE_ONLY
    given = [name for name, unset in foreign.items() if getattr(args, name) != unset]
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        other = "classify" if task == Task.GENERATE else "generate"
        raise CourseError(f"{flags} belong(s) to --task {other}, not --task {task.value}. "
                          "See `finetune --help` for the options of each task.")


def generation_config_from_args(args: argparse.Namespace) -> GenerationRunConfig:
    """Turn parsed options into a GenerationRunConfig (validated later, before any model is loaded)."""
    _check_task_options(args, Task.GENERATE)
    strategy = parse_strategy(args.strategy or GEN_DEFAULTS.strategy)
    changes = {name: getattr(args, name) for name in ("epochs", "batch_size", "max_length", "learning_rate",
                                                      "warmup_fraction")
               if getattr(args, name) is not None}
    train = TrainConfig.for_generation(strategy=strategy, lora_rank=args.lora_rank, seed=args.seed,
                                       mixed_precision=not args.fp32, **changes)
    if strategy != Strategy.LORA and args.learning_rate is None:
        train.learning_rate = RECOMMENDED_LR[strategy]
    data = PairDataConfig(
        source=args.data or "e2e",
        hub_dataset=args.hub_dataset,
        prompt_column=args.prompt_column,
        response_column=args.response_column,
        max_train_pairs=_given(args.max_train, PairDataConfig().max_train_pairs) or None,
        max_test_prompts=args.max_test_prompts or None,
        seed=args.seed,
    )
    decode = DecodeConfig(max_new_tokens=_given(args.max_new_tokens, DECODE_DEFAULTS.max_new_tokens))
    return GenerationRunConfig(model=args.model, output_dir=Path(args.output or "outputs/generator"),
                               data=data, train=train, decode=decode, mask_prompt=not args.no_prompt_mask,
                               system=args.system)


def run_config_from_args(args: argparse.Namespace) -> RunConfig:
    """Turn parsed options into a RunConfig (validated later, before any model is loaded)."""
    _check_task_options(args, Task.CLASSIFY)
    given_blocks = args.train_blocks or str(_default_blocks(args.model))
    blocks = None if given_blocks.lower() == "all" else _int_option("--train-blocks", given_blocks)
    strategy = parse_strategy(args.strategy or DEFAULTS.strategy)
    if blocks is None and strategy == Strategy.TOP_K:
        strategy = Strategy.FULL  # `--train-blocks all` is full fine-tuning
    data = DataConfig(
        path=args.data,
        hub_dataset=args.hub_dataset,
        text_column=args.text_column,
        label_column=args.label_column,
        group_column=args.group_column,
        max_train_examples=_given(args.max_train, CLI_DEFAULTS.max_train) or None,
        max_val_examples=_given(args.max_val, CLI_DEFAULTS.max_val) or None,
        seed=args.seed,
    )
    train = TrainConfig.for_strategy(
        strategy,
        epochs=_given(args.epochs, CLI_DEFAULTS.epochs),
        batch_size=_given(args.batch_size, DEFAULTS.batch_size),
        max_length=_given(args.max_length, DEFAULTS.max_length),
        warmup_fraction=_given(args.warmup_fraction, CLI_DEFAULTS.warmup_fraction),
        train_blocks=blocks,
        lora_rank=args.lora_rank,
        cache_frozen=not args.no_cache,
        compile=args.compile,
        mixed_precision=not args.fp32,
        seed=args.seed,
        **({"learning_rate": args.learning_rate} if args.learning_rate is not None else {}),
    )
    return RunConfig(model=args.model, output_dir=Path(args.output or "outputs/finetuned"), data=data,
                     train=train, int8_report=args.int8_report)


def _default_blocks(model: str) -> int:
    """The default number of trained blocks, or every block of a model with fewer (e.g. distilgpt2)."""
    from course_lib.models import block_count

    try:
        return min(CLI_DEFAULTS.train_blocks, block_count(model))
    except CourseError:  # a model that cannot be read is reported, with advice, where it is loaded
        return CLI_DEFAULTS.train_blocks


def _given(value, default):
    """The option's value when it was given (0 included, so it can be refused), else the default."""
    return default if value is None else value


def _int_option(name: str, value: str) -> int:
    """Parse a whole number or raise a CourseError naming the option."""
    try:
        return int(value)
    except ValueError:
        raise CourseError(f"{name} must be a whole number or 'all', got {value!r}.") from None


def check_processes(args: argparse.Namespace) -> int:
    """The number of processes asked for, refused before anything starts when it cannot work."""
    from course_lib.distributed import launched_processes

    launched = launched_processes()
    wanted = launched if args.processes is None else args.processes
    if wanted < 1:
        raise CourseError(f"--processes must be 1 or more, got {wanted}.")
    if launched > 1 and wanted != launched:
        raise CourseError(f"--processes {wanted} but the launcher started {launched} processes; "
                          "give one of the two.")
    if wanted > 1 and parse_task(args.task) == Task.GENERATE:
        raise CourseError("--task generate runs in one process only for now (its per-epoch writing "
                          "and test generation are not sharded); drop --processes.")
    if wanted > 1 and launched == 1:
        import torch

        gpus = torch.cuda.device_count()
        if gpus and wanted > gpus:
            raise CourseError(f"--processes {wanted} but this machine has {gpus} GPU(s): use at most {gpus}.")
    return wanted


def launch_command(argv: list[str], processes: int) -> list[str]:
    """`accelerate launch` running this same finetune command in `processes` processes.

    --multi_gpu selects Accelerate's torchrun launcher, which also starts plain CPU processes
    (the course then joins them with gloo); the other flags only silence its "defaults used" notice.
    """
    rest = [a for i, a in enumerate(argv) if not a.startswith("--processes")
            and not (i > 0 and argv[i - 1] == "--processes")]
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
            "--num_processes", str(processes), "--num_machines", "1", "--mixed_precision", "no",
            "--dynamo_backend", "no", "-m", "course_lib", *rest]


def relaunch(argv: list[str], processes: int, config: RunConfig) -> int:
    """Start the run again under `accelerate launch` and wait for it."""
    import subprocess

    train = config.train
    print(f"Launching {processes} processes with accelerate: each trains on batches of {train.batch_size}, "
          f"so every update averages {processes * train.batch_size * train.grad_accum_steps} reviews "
          f"({processes} x {train.batch_size} x {train.grad_accum_steps} accumulated); the learning rate "
          f"stays {train.learning_rate:g}.", flush=True)
    return subprocess.call(launch_command(argv, processes))


def cmd_finetune(args: argparse.Namespace) -> int:
    """Run the whole document and print the headline numbers."""
    processes = check_processes(args)
    if parse_task(args.task) == Task.GENERATE:
        return cmd_finetune_generate(args)
    from course_lib.distributed import Parallel, launched_processes
    from course_lib.pipeline import run_finetune

    if processes > 1 and launched_processes() == 1:
        config = run_config_from_args(args)
        config.validate()  # a bad option fails here once, not in every process
        return relaunch(args.argv, processes, config)

    result = run_finetune(run_config_from_args(args), resume=args.resume)
    if not Parallel.current().is_main_process:
        return 0
    summary = {"test_accuracy": round(result.test_metrics["accuracy"], 4),
               "test_f1": round(result.test_metrics["f1"], 4),
               "majority_baseline_accuracy": round(result.baseline["accuracy"], 4),
               "seconds": round(result.seconds["total"], 1)}
    if result.int8 is not None:
        summary["int8_test_accuracy"] = round(result.int8["accuracy"], 4)
    print(json.dumps(summary))
    return 0


def cmd_finetune_generate(args: argparse.Namespace) -> int:
    """Fine-tune to write, then print zero-shot and fine-tuned test scores side by side."""
    from course_lib.generation_pipeline import run_generation_finetune

    result = run_generation_finetune(generation_config_from_args(args), resume=args.resume,
                                     val_prompts=args.val_prompts)
    print(score_table(result.zero_shot, result.test))
    summary = {"test_bleu": round(result.test["bleu"], 2), "test_rouge_l": round(result.test["rouge_l"], 2),
               "zero_shot_bleu": round(result.zero_shot["bleu"], 2),
               "zero_shot_rouge_l": round(result.zero_shot["rouge_l"], 2),
               "seconds": round(result.seconds["total"], 1)}
    print(json.dumps(summary))
    return 0


def score_table(zero_shot: dict, fine_tuned: dict) -> str:
    """Zero-shot and fine-tuned scores as a small aligned table."""
    columns = [("BLEU", "bleu", "{:.1f}"), ("ROUGE-L", "rouge_l", "{:.1f}"),
               ("attributes %", "coverage", "{:.0f}"), ("words", "mean_words", "{:.1f}")]
    columns = [c for c in columns if c[1] in fine_tuned]
    lines = [f"{'test set':<12}" + "".join(f"{name:>14}" for name, _, _ in columns)]
    for label, scores in (("zero-shot", zero_shot), ("fine-tuned", fine_tuned)):
        lines.append(f"{label:<12}" + "".join(f"{fmt.format(scores[key]):>14}" for _, key, fmt in columns))
    return "\n".join(lines)


def cmd_generate(args: argparse.Namespace) -> int:
    """Write a response to each prompt with a saved writer."""
    from course_lib.generation import generate
    from course_lib.generation_pipeline import saved_system
    from course_lib.saving import load_finetuned

    prompts = _texts_from(args.prompts, args.file, "prompts")
    model, tokenizer, info = load_finetuned(Path(args.model_dir), task=Task.GENERATE)
    saved = info.get("config", {}).get("decode", {})
    decode = DecodeConfig(max_new_tokens=_given(args.max_new_tokens, saved.get("max_new_tokens", 64)),
                          do_sample=args.sample, temperature=args.temperature, top_p=args.top_p,
                          batch_size=saved.get("batch_size", DECODE_DEFAULTS.batch_size), seed=args.seed)
    for prompt, text in zip(prompts, generate(model, tokenizer, prompts, saved_system(info), decode),
                            strict=True):
        print(json.dumps({"prompt": prompt, "text": text}, ensure_ascii=False) if args.json
              else f"{prompt}\n  -> {text}")
    return 0


def _texts_from(arguments: list[str], file: str | None, what: str) -> list[str]:
    """Texts given on the command line plus the non-empty lines of --file."""
    texts = list(arguments)
    if file:
        path = Path(file)
        if not path.exists():
            raise CourseError(f"{path} does not exist.")
        texts += [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not texts:
        raise CourseError(f"No {what} given: pass them as arguments or with --file.")
    return texts


def cmd_predict(args: argparse.Namespace) -> int:
    """Classify texts from the command line or a file."""
    from course_lib.saving import load_finetuned, predict

    texts = _texts_from(args.texts, args.file, "texts")
    model, tokenizer, info = load_finetuned(Path(args.model_dir), task=Task.CLASSIFY)
    if args.int8:
        from course_lib.speed import quantize_int8

        model = quantize_int8(model)
    max_length = info.get("config", {}).get("train", {}).get("max_length", 64)
    for p in predict(model, tokenizer, texts, max_length=max_length):
        if args.json:
            print(json.dumps({"label": p.label, "score": round(p.score, 4), "text": p.text}))
        else:
            print(f"{p.label}\t{p.score:.3f}\t{p.text}")
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    """Fetch every offline asset into the cache."""
    from course_lib.assets import cache_dir, fetch_all

    for name, path in fetch_all(generation=not args.skip_generation).items():
        print(f"{name}: {path}")
    print(f"All assets are in {cache_dir()}; copy that folder to classroom machines "
          "or set COURSE_CACHE_DIR to a shared copy.")
    return 0


def _quiet_libraries() -> None:
    """No progress bars from transformers or datasets: the course prints its own progress and errors."""
    import datasets
    import transformers

    transformers.logging.disable_progress_bar()
    datasets.disable_progress_bars()


def main(argv: list[str] | None = None) -> int:
    """Entry point: clear one-line errors instead of tracebacks for mistakes a user can fix."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # `--processes N` starts the same command again under accelerate launch
    _quiet_libraries()
    handlers = {"finetune": cmd_finetune, "predict": cmd_predict, "generate": cmd_generate, "fetch": cmd_fetch}
    try:
        return handlers[args.command](args)
    except TrainingInterrupted as exc:
        print(f"interrupted: {exc}", file=sys.stderr)
        return 130
    except CourseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130

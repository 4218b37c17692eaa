"""Command line: `finetune` runs the whole document, `predict` uses a saved model, `fetch` preps."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from course_lib.config import (
    DEFAULT_MODEL,
    RECOMMENDED_LR,
    DataConfig,
    RunConfig,
    Strategy,
    TrainConfig,
    parse_strategy,
)
from course_lib.errors import CourseError, TrainingInterrupted

DEFAULTS = TrainConfig()


def build_parser() -> argparse.ArgumentParser:
    """All subcommands and their options."""
    parser = argparse.ArgumentParser(prog="course", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    ft = sub.add_parser("finetune", help="fine-tune, validate each epoch, save, evaluate on test")
    ft.add_argument("--model", default=DEFAULT_MODEL,
                    help="offline default, a local folder, or a Hub id such as gpt2")
    ft.add_argument("--data", default=None, help="CSV file (default: offline Rotten Tomatoes)")
    ft.add_argument("--hub-dataset", default=None,
                    help="a Hub data set name such as imdb (needs internet)")
    ft.add_argument("--text-column", default="text")
    ft.add_argument("--label-column", default="label")
    ft.add_argument("--group-column", default=None,
                    help="keep each group (e.g. a movie) inside one split")
    ft.add_argument("--epochs", type=int, default=DEFAULTS.epochs)
    ft.add_argument("--strategy", default=DEFAULTS.strategy.value,
                    help=f"which weights to train: {', '.join(s.value for s in Strategy)} "
                         "(default: %(default)s, with --train-blocks)")
    ft.add_argument("--lr", "--learning-rate", dest="learning_rate", type=float, default=None,
                    help="default: the strategy's recommended rate ("
                         + ", ".join(f"{k.value} {v:g}" for k, v in RECOMMENDED_LR.items()) + ")")
    ft.add_argument("--lora-rank", type=int, default=DEFAULTS.lora_rank, help="rank of LoRA adapters")
    ft.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size)
    ft.add_argument("--max-length", type=int, default=DEFAULTS.max_length)
    ft.add_argument("--train-blocks", default=str(DEFAULTS.train_blocks),
                    help="top blocks to train, or 'all' for full fine-tuning")
    ft.add_argument("--max-train", type=int, default=3000,
                    help="training reviews to use (0 = all); keeps CPU runs short")
    ft.add_argument("--max-val", type=int, default=0,
                    help="validation reviews to use (0 = all); fewer make each epoch's check quicker")
    ft.add_argument("--seed", type=int, default=DEFAULTS.seed)
    ft.add_argument("--no-cache", action="store_true",
                    help="recompute frozen blocks every epoch (slower; for comparison)")
    ft.add_argument("--compile", action="store_true",
                    help="torch.compile the model (opt-in: compiling costs time up front)")
    ft.add_argument("--int8-report", action="store_true",
                    help="also score an int8-quantised copy on the test set (CPU)")
    ft.add_argument("--output", default="outputs/finetuned", help="output folder")
    ft.add_argument("--resume", action="store_true",
                    help="continue an interrupted run (same options) from its last finished epoch")

    pr = sub.add_parser("predict", help="classify texts with a saved model")
    pr.add_argument("model_dir", help="the model folder inside a finetune output folder")
    pr.add_argument("texts", nargs="*", help="texts to classify")
    pr.add_argument("--file", help="a text file, one review per line")
    pr.add_argument("--json", action="store_true", help="print JSON lines")
    pr.add_argument("--int8", action="store_true",
                    help="quantise the model to int8 first (faster on CPU; check its accuracy)")

    sub.add_parser("fetch", help="download and prepare every offline asset (classroom prep)")
    return parser


def run_config_from_args(args: argparse.Namespace) -> RunConfig:
    """Turn parsed options into a RunConfig (validated later, before any model is loaded)."""
    blocks = None if args.train_blocks.lower() == "all" else _int_option("--train-blocks", args.train_blocks)
    strategy = parse_strategy(args.strategy)
    if blocks is None and strategy == Strategy.TOP_K:
        strategy = Strategy.FULL  # `--train-blocks all` is full fine-tuning
    data = DataConfig(
        path=args.data,
        hub_dataset=args.hub_dataset,
        text_column=args.text_column,
        label_column=args.label_column,
        group_column=args.group_column,
        max_train_examples=args.max_train or None,
        max_val_examples=args.max_val or None,
        seed=args.seed,
    )
    train = TrainConfig.for_strategy(
        strategy,
        epochs=args.epochs,
        batch_size=args.batch_size,
        max_length=args.max_length,
        train_blocks=blocks,
        lora_rank=args.lora_rank,
        cache_frozen=not args.no_cache,
        compile=args.compile,
        seed=args.seed,
        **({"learning_rate": args.learning_rate} if args.learning_rate is not None else {}),
    )
    return RunConfig(model=args.model, output_dir=Path(args.output), data=data, train=train,
                     int8_report=args.int8_report)


def _int_option(name: str, value: str) -> int:
    """Parse a whole number or raise a CourseError naming the option."""
    try:
        return int(value)
    except ValueError:
        raise CourseError(f"{name} must be a whole number or 'all', got {value!r}.") from None


def cmd_finetune(args: argparse.Namespace) -> int:
    """Run the whole document and print the headline numbers."""
    from course_lib.pipeline import run_finetune

    result = run_finetune(run_config_from_args(args), resume=args.resume)
    summary = {"test_accuracy": round(result.test_metrics["accuracy"], 4),
               "test_f1": round(result.test_metrics["f1"], 4),
               "majority_baseline_accuracy": round(result.baseline["accuracy"], 4),
               "seconds": round(result.seconds["total"], 1)}
    if result.int8 is not None:
        summary["int8_test_accuracy"] = round(result.int8["accuracy"], 4)
    print(json.dumps(summary))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """Classify texts from the command line or a file."""
    from course_lib.saving import load_finetuned, predict

    texts = list(args.texts)
    if args.file:
        path = Path(args.file)
        if not path.exists():
            raise CourseError(f"{path} does not exist.")
        texts += [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not texts:
        raise CourseError("No texts given: pass them as arguments or with --file.")
    model, tokenizer, info = load_finetuned(Path(args.model_dir))
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

    for name, path in fetch_all().items():
        print(f"{name}: {path}")
    print(f"All assets are in {cache_dir()}; copy that folder to classroom machines "
          "or set COURSE_CACHE_DIR to a shared copy.")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point: clear one-line errors instead of tracebacks for mistakes a user can fix."""
    args = build_parser().parse_args(argv)
    handlers = {"finetune": cmd_finetune, "predict": cmd_predict, "fetch": cmd_fetch}
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

"""Command line: `finetune` runs the whole document (to classify, to write or to chat), `predict`,
`generate` and `chat` use a saved model, `export` takes it home as GGUF, `fetch` prepares a classroom."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from course_lib.config import (
    DEFAULT_MODEL,
    RECOMMENDED_LR,
    DecodeConfig,
    RunConfig,
    Strategy,
    Task,
    TrainConfig,
    parse_task,
)
from course_lib.errors import CourseError, TrainingInterrupted

if TYPE_CHECKING:
    from course_lib.runtime.budget import Budget

DEFAULTS = TrainConfig()
DEFAULT_BUDGET_MINUTES = 10.0
DECODE_DEFAULTS = DecodeConfig()


def build_parser() -> argparse.ArgumentParser:
    """All subcommands and their options; each task adds its own group of `finetune` options."""
    from course_lib.tasks import get_task

    parser = argparse.ArgumentParser(prog="course", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    ft = sub.add_parser("finetune", help="fine-tune, validate each epoch, save, evaluate on test")
    ft.add_argument("--task", default=Task.CLASSIFY.value, choices=[t.value for t in Task],
                    help="classify texts (movie reviews, the default), generate text (E2E restaurants) or chat "
                         "(an assistant: QA over a passage and chit-chat)")
    ft.add_argument("--model", default=DEFAULT_MODEL,
                    help="offline default, a local folder, or a Hub id such as gpt2")
    ft.add_argument("--data", default=None, help="the task's data: a built-in set or a file (see each task)")
    ft.add_argument("--hub-dataset", default=None,
                    help="a Hub data set name such as imdb or GEM/e2e_nlg (needs internet)")
    ft.add_argument("--max-train", type=int, default=None,
                    help="training examples to use (0 = all; default: the task's); keeps CPU runs short")
    ft.add_argument("--epochs", type=int, default=None, help="default: the task's")
    ft.add_argument("--strategy", default=None,
                    help=f"which weights to train: {', '.join(s.value for s in Strategy)} (default: the task's)")
    ft.add_argument("--lr", "--learning-rate", dest="learning_rate", type=float, default=None,
                    help="default: the task's, else the strategy's recommended rate ("
                         + ", ".join(f"{k.value} {v:g}" for k, v in RECOMMENDED_LR.items()) + ")")
    ft.add_argument("--warmup", dest="warmup_fraction", type=float, default=None,
                    help="share of the updates that ramp the learning rate up from 0 (default: the task's)")
    ft.add_argument("--lora-rank", type=int, default=DEFAULTS.lora_rank, help="rank of LoRA adapters")
    ft.add_argument("--batch-size", type=int, default=None, help="default: the task's")
    ft.add_argument("--max-length", type=int, default=None, help="tokens per example; default: the task's")
    ft.add_argument("--seed", type=int, default=DEFAULTS.seed)
    ft.add_argument("--compile", action="store_true",
                    help="torch.compile the model (opt-in: compiling costs time up front)")
    ft.add_argument("--fp32", action="store_true",
                    help="compute in float32 even where bf16 is native (CUDA, CPUs with AVX512-BF16/AMX)")
    ft.add_argument("--output", default=None, help="output folder (default: the task's)")
    ft.add_argument("--time-budget", type=float, default=None, metavar="MINUTES",
                    help=f"minutes for the whole run, loading and testing included (default "
                         f"{DEFAULT_BUDGET_MINUTES:g}; 0 = no limit): a few measured training steps choose how "
                         "many examples fit, at most the task's default; --max-train overrides it")
    ft.add_argument("--plan-only", action="store_true",
                    help="measure this machine, print what the time budget would train, and stop (for "
                         "generate and chat this includes the zero-shot test pass, whose time the plan needs)")
    ft.add_argument("--resume", action="store_true",
                    help="continue an interrupted run (same options) from its last finished epoch")
    ft.add_argument("--processes", type=int, default=None,
                    help="train data-parallel in N processes through `accelerate launch` (one per GPU; "
                         "without GPUs, N CPU processes); --batch-size is per process")
    # Options only one task understands, with their "not given" value: given to another task,
    # they are an error rather than silently ignored.
    ft.set_defaults(task_options={})
    for task in Task:
        spec = get_task(task)
        group = ft.add_argument_group(f"--task {task.value}", spec.defaults_line())
        ft.get_default("task_options")[task] = {a.dest: a.default for a in spec.add_options(group)}

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
    gn.add_argument("--repetition-penalty", type=float, default=None,
                    help="above 1, less likely to repeat its own tokens (default: as evaluated)")
    gn.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    gn.add_argument("--temperature", type=float, default=DECODE_DEFAULTS.temperature)
    gn.add_argument("--top-p", type=float, default=DECODE_DEFAULTS.top_p)
    gn.add_argument("--seed", type=int, default=DECODE_DEFAULTS.seed, help="for --sample")
    gn.add_argument("--json", action="store_true", help="print JSON lines")

    ch = sub.add_parser("chat", help="talk with a model saved by finetune --task chat (it keeps the history)")
    ch.add_argument("model_dir", help="the model folder inside a finetune output folder")
    ch.add_argument("--system", default=None, help="the system prompt (default: the one it was trained with)")
    ch.add_argument("--max-new-tokens", type=int, default=None, help="default: what the model was evaluated with")
    ch.add_argument("--repetition-penalty", type=float, default=None,
                    help="above 1, less likely to repeat its own tokens (default: as evaluated)")
    ch.add_argument("--json", action="store_true",
                    help="for scripts: read one message per line, print each reply as a JSON line")
    ch.add_argument("--file", help='reply once to each conversation of a JSON Lines file of {"messages": [...]} '
                                   "(test_outputs.jsonl works), as JSON lines")

    ex = sub.add_parser("export", help="write a writer or assistant as GGUF for llama.cpp, Ollama, LM Studio")
    ex.add_argument("model_dir", help="the model folder inside a finetune output folder")
    ex.add_argument("--gguf", required=True, help="the GGUF file to write; a Modelfile for Ollama goes beside it")
    ex.add_argument("--type", default="f16", choices=["f32", "f16", "q8_0", "q4_1"],
                    help="how weight matrices are stored: f16 (default, lossless enough), q8_0, q4_1 (smallest)")

    fe = sub.add_parser("fetch", help="download and prepare every offline asset (classroom prep)")
    fe.add_argument("--skip-generation", action="store_true",
                    help="skip the generation data (a 358 MB download) if you only teach classification")
    return parser


def _check_task_options(args: argparse.Namespace, task: Task) -> None:
    """Refuse options that belong to another task instead of ignoring them."""
    from course_lib.tasks import get_task

    shared = get_task(task).shared_options
    for other, options in args.task_options.items():
        given = [name for name, unset in options.items()
                 if other != task and name not in shared and getattr(args, name) != unset]
        if given:
            flags = ", ".join("--" + name.replace("_", "-") for name in given)
            raise CourseError(f"{flags} belong(s) to --task {other.value}, not --task {task.value}. "
                              "See `finetune --help` for the options of each task.")


def run_config_from_args(args: argparse.Namespace) -> RunConfig:
    """Turn parsed options into the task's RunConfig (validated later, before any model is loaded).

    Nothing is read or downloaded here: the model's depth is checked when the run starts.
    """
    from course_lib.tasks import get_task

    task = parse_task(args.task)
    _check_task_options(args, task)
    given = {name: getattr(args, name) for name in ("epochs", "batch_size", "max_length", "learning_rate",
                                                    "warmup_fraction") if getattr(args, name) is not None}
    common = dict(lora_rank=args.lora_rank, seed=args.seed, mixed_precision=not args.fp32, compile=args.compile)
    return get_task(task).run_config(args, common, given)


def check_processes(args: argparse.Namespace) -> int:
    """The number of processes asked for, refused before anything starts when it cannot work."""
    from course_lib.runtime.distributed import launched_processes

    launched = launched_processes()
    wanted = launched if args.processes is None else args.processes
    if wanted < 1:
        raise CourseError(f"--processes must be 1 or more, got {wanted}.")
    if launched > 1 and wanted != launched:
        raise CourseError(f"--processes {wanted} but the launcher started {launched} processes; "
                          "give one of the two.")
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
          f"so every update averages {processes * train.batch_size * train.grad_accum_steps} examples "
          f"({processes} x {train.batch_size} x {train.grad_accum_steps} accumulated); the learning rate "
          f"stays {train.learning_rate:g}.", flush=True)
    return subprocess.call(launch_command(argv, processes))


def cmd_finetune(args: argparse.Namespace) -> int:
    """Run the whole document for the chosen task and print its scores beside the baselines."""
    from course_lib.pipeline import run_finetune
    from course_lib.runtime.distributed import Parallel, end_processes, launched_processes
    from course_lib.tasks import get_task

    processes = check_processes(args)
    config = run_config_from_args(args)
    task = get_task(config.task)
    if processes > 1 and launched_processes() == 1:
        config.validate()  # a bad option fails here once, not in every process
        task.check(config)
        return relaunch(args.argv, processes, config)

    try:
        result = run_finetune(config, resume=args.resume, budget=budget_from_args(args, processes))
        is_main = Parallel.current().is_main_process
    finally:
        end_processes()
    if not is_main:
        return 0
    if args.plan_only:
        print("Plan only, nothing trained. To train exactly this size whatever the machine: "
              f"--max-train {result.plan.train_examples}")
        return 0
    print(score_table(task.score_columns, {**result.baselines, "fine_tuned": result.test}))
    keys = [key for _, key, _ in task.score_columns]
    summary = {f"{name}_{key}": round(scores[key], 4) for name, scores in
               {"test": result.test, **result.baselines}.items() for key in keys if scores.get(key) is not None}
    summary["seconds"] = round(result.seconds["total"], 1)
    if result.plan is not None:
        summary["planned_train_examples"] = result.plan.train_examples
        summary["planned_seconds"] = round(result.plan.total_s, 1)
    if "int8" in result.reports:
        summary["int8_test_accuracy"] = round(result.reports["int8"]["accuracy"], 4)
    print(json.dumps(summary))
    return 0


def budget_from_args(args: argparse.Namespace, processes: int) -> Budget | None:
    """The time budget that sizes this run, or None where explicit sizes (or several processes) decide."""
    from course_lib.runtime.budget import Budget

    minutes = DEFAULT_BUDGET_MINUTES if args.time_budget is None else args.time_budget
    if minutes < 0:
        raise CourseError(f"--time-budget must be 0 (no limit) or more minutes, got {minutes:g}.")
    reason = ("--max-train sets the size" if args.max_train is not None else
              "--processes: each process would measure its own speed" if processes > 1 else
              "--time-budget 0" if minutes == 0 else None)
    if reason is None:
        # The default budget trains the fewest useful examples where it is too short; one you give is refused.
        return Budget(minutes, args.started, args.plan_only, strict=args.time_budget is not None)
    if args.plan_only:
        raise CourseError(f"--plan-only prints what a time budget would train, but {reason}.")
    if args.time_budget:
        print(f"The time budget is not used: {reason}.")
    return None


def score_table(columns: tuple[tuple[str, str, str], ...], rows: dict[str, dict]) -> str:
    """Scores as a small aligned table: one row per model (baselines first), one column per metric."""
    columns = [c for c in columns if rows["fine_tuned"].get(c[1]) is not None]
    lines = [f"{'test set':<18}" + "".join(f"{name:>14}" for name, _, _ in columns)]
    for label, scores in rows.items():
        lines.append(f"{label.replace('_', '-'):<18}" + "".join(f"{fmt.format(scores[key]):>14}"
                                                               for _, key, fmt in columns))
    return "\n".join(lines)


def _saved_decoding(args: argparse.Namespace, info: dict, max_new_tokens: int, **changes) -> DecodeConfig:
    """How a saved model was evaluated (`max_new_tokens` for older folders), changed by the options given."""
    from course_lib.tasks.generate import decode_from_args

    saved, default = info.get("config", {}).get("decode", {}), DECODE_DEFAULTS
    evaluated = DecodeConfig(max_new_tokens=saved.get("max_new_tokens", max_new_tokens),
                             repetition_penalty=saved.get("repetition_penalty", default.repetition_penalty),
                             batch_size=saved.get("batch_size", default.batch_size),
                             # A folder saved before the setting existed wrote its test outputs in float32.
                             mixed_precision=saved.get("mixed_precision", False))
    return decode_from_args(args, evaluated, **changes)


def cmd_generate(args: argparse.Namespace) -> int:
    """Write a response to each prompt with a saved writer."""
    from course_lib.generation import generate
    from course_lib.saving import load_finetuned
    from course_lib.tasks.generate import saved_system

    prompts = _texts_from(args.prompts, args.file, "prompts")
    model, tokenizer, info = load_finetuned(Path(args.model_dir), task=Task.GENERATE)
    decode = _saved_decoding(args, info, 64, do_sample=args.sample, temperature=args.temperature,
                             top_p=args.top_p, seed=args.seed)
    for prompt, text in zip(prompts, generate(model, tokenizer, prompts, saved_system(info), decode),
                            strict=True):
        print(json.dumps({"prompt": prompt, "text": text}, ensure_ascii=False) if args.json
              else f"{prompt}\n  -> {text}")
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    """An interactive chat with a saved assistant, or one reply per conversation of --file."""
    from course_lib.generation import ChatSession, write
    from course_lib.saving import load_finetuned
    from course_lib.tasks.base import option
    from course_lib.tasks.generate import saved_system

    model, tokenizer, info = load_finetuned(Path(args.model_dir), task=Task.CHAT)
    decode = _saved_decoding(args, info, 48)
    if args.file:  # all at once, batched like the test split, so the replies are the same
        for reply in write(model, tokenizer, _conversations_from(Path(args.file)), None, decode):
            print(json.dumps({"reply": reply.text, "stopped": reply.stopped}, ensure_ascii=False))
        return 0
    session = ChatSession(model, tokenizer, option(args.system, saved_system(info)), decode)
    if not args.json:
        print("Chat with the model: /reset starts over, /exit (or Ctrl-D) ends.")
    while (line := _read_line("" if args.json else "you> ")) != "/exit":
        if line == "/reset":
            session.reset()
            print(json.dumps({"reset": True}) if args.json else "(history cleared)", flush=True)
        elif line:
            reply = session.say(line)
            print(json.dumps({"reply": reply.text, "stopped": reply.stopped}, ensure_ascii=False) if args.json
                  else f"assistant> {reply.text}", flush=True)
    return 0


def _read_line(prompt: str) -> str:
    """The next line typed, stripped; Ctrl-D (end of input) reads as /exit."""
    try:
        return input(prompt).strip()
    except EOFError:
        return "/exit"


def _conversations_from(path: Path) -> list[list[dict]]:
    """The "messages" of every line of a JSON Lines file, or a one-line error naming the line."""
    if not path.exists():
        raise CourseError(f"{path} does not exist.")
    conversations = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            conversations += [json.loads(line)["messages"]] if line.strip() else []
        except (json.JSONDecodeError, KeyError, TypeError):
            raise CourseError(f'{path}, line {n}: not a JSON object with "messages".') from None
    return conversations


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
        from course_lib.runtime.speed import quantize_int8

        model = quantize_int8(model)
    max_length = info.get("config", {}).get("train", {}).get("max_length", 64)
    for p in predict(model, tokenizer, texts, max_length=max_length):
        if args.json:
            print(json.dumps({"label": p.label, "score": round(p.score, 4), "text": p.text}))
        else:
            print(f"{p.label}\t{p.score:.3f}\t{p.text}")
    return 0


def _system_flag(system: str | None) -> str:
    """llama-cli's option for the trained system prompt: runtimes read the template, not the prompt."""
    return f" -sys {shlex.quote(system)}" if system else ""


def cmd_export(args: argparse.Namespace) -> int:
    """Export a saved model to GGUF and say how to run it."""
    from course_lib.export import export_model
    from course_lib.runtime.assets import readable_path

    done = export_model(Path(args.model_dir), Path(args.gguf), args.type)
    path = readable_path(done.path)
    print(f"Wrote {path}: {done.type}, {done.tensors} tensors, {done.bytes / 2**20:.0f} MiB; chat template "
          f"with end-of-turn {done.end_of_turn!r}" + (f", system prompt {done.system!r}" if done.system else "")
          + f"; Modelfile beside it.\n  llama.cpp: llama-cli -m {path} -cnv" + _system_flag(done.system)
          + f"\n  Ollama:    ollama create my-model -f {readable_path(done.path.with_suffix('.Modelfile'))} && "
          "ollama run my-model\n  LM Studio: lms import " + path
          + (" (then give it the system prompt above)" if done.system else ""))
    if args.type == "q4_1":
        print("Note: q4_1 keeps about 5 bits per weight, and fine-tuning moves most weights by less than "
              "one such step, so rounding can undo much of what the model learned. Check it before "
              "sharing: benchmarks/export_check.py scores each type against the saved folder.")
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    """Fetch every offline asset into the cache."""
    from course_lib.runtime.assets import cache_dir, fetch_all

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
    started = time.perf_counter()  # a time budget counts from here: loading the model is part of the run
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # `--processes N` starts the same command again under accelerate launch
    args.started = started
    _quiet_libraries()
    handlers = {"finetune": cmd_finetune, "predict": cmd_predict, "generate": cmd_generate, "chat": cmd_chat,
                "export": cmd_export, "fetch": cmd_fetch}
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

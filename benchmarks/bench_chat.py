"""Benchmark, assistant task: the course loop vs TRL's SFTTrainer, same conversations, LoRA and precision.

    ./run bench --task chat            # both contenders, seed 42 (20 min on 2 CPU cores in bf16, 45 in float32)
    ./run bench --task chat --quick    # a few minutes: fewer conversations and QA checks

Both contenders start from the same pretrained model and train on the same conversations (the
turns `finetune --task chat` keeps after cutting long ones), with rank-8 LoRA on every linear
layer, the task's learning rate (2e-3) with 5 % warm-up and linear decay, its batch size (4), weight decay
0.01, gradient clipping at 1.0, and bf16 autocast where the CPU has it. The course trains with
`training.train` on its own labels (`pairs.encode_conversation`); TRL renders the `messages` itself with
`assistant_only_loss=True`. SmolLM2's template has no `{% generation %}` markers, which TRL needs
for that mask, so TRL gets a marked copy that renders the same text (checked), and the benchmark
counts the conversations where TRL's targets are exactly the course's.

Every `--check-every` seconds of training the clock pauses and both write greedy answers to the
same held-out QA questions (validation split), scored with the course's F1. The target is the
pretrained model's F1 plus `--gain` points (issue #22's target). Measured per run: time to that
target, real (non-pad) training tokens per second, peak memory (RSS; each run in a fresh process)
and the last check's F1. Timings are ratios from one run on one machine: compare rows, not runs.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import sys
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: `benchmarks` importable

from benchmarks.bench import (
    BenchConfig,
    BudgetReached,
    Clock,
    Result,
    _BudgetCallback,
    _CountingLoader,
    machine,
    quiet_libraries,
    run_worker,
    trainer_hooks,
)
from course_lib.config import RunConfig
from course_lib.generation import write
from course_lib.metrics import qa_metrics
from course_lib.models import apply_strategy, count_parameters, pick_device
from course_lib.runtime.distributed import Parallel
from course_lib.runtime.speed import prepare_backend, uses_bf16
from course_lib.tasks import get_task
from course_lib.training import set_seed, train

HERE = Path(__file__).resolve().parent
CONTENDERS = ["course", "sft"]
GENERATION = ("{% generation %}", "{% endgeneration %}")


@dataclass
class ChatBench:
    """What both contenders share."""

    max_train: int = 200  # conversations (three quarters QA, as the task mixes them): about what its budget picks
    epochs: int = 1
    check_questions: int = 40  # held-out QA questions every check writes answers to
    check_every_s: float = 60.0  # each check writes answers for all the questions: ~20 s
    budget_s: float = 900.0  # training seconds per run at most
    gain: float = 20.0  # the target: the pretrained model's QA F1 plus this many points
    seed: int = 42
    model: str | None = None  # default: the course's model


def course_run(bench: ChatBench) -> RunConfig:
    """The run `./run finetune --task chat` makes, with the benchmark's sizes and enough QA to check on."""
    run = RunConfig.for_chat()
    if bench.model:
        run.model = bench.model
    # Validation is larger than finetune's (20) so that the checks have `check_questions` QA items.
    run.data = replace(run.data, max_train=bench.max_train, max_val=2 * bench.check_questions, seed=bench.seed)
    run.train = replace(run.train, epochs=bench.epochs, seed=bench.seed)
    return run


def marked_template(template: str) -> str:
    """SmolLM2's ChatML template with `{% generation %}` around each assistant reply and its <|im_end|>.

    The rendered text does not change (`check_marked_template`); the markers only tell
    `apply_chat_template(..., return_assistant_tokens_mask=True)` which characters are the reply.
    """
    plain = "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    if plain not in template:
        raise ValueError("This is not SmolLM2's ChatML template; the benchmark's marked copy is written for it.")
    marked = ("{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\n' }}" + GENERATION[0]
              + "{{ message['content'] + '<|im_end|>' }}" + GENERATION[1] + "{{ '\n' }}{% else %}" + plain
              + "{% endif %}")
    return template.replace(plain, marked)


def check_marked_template(tokenizer, marked: str, conversations: list[list[dict]]) -> None:
    """The marked copy must render every conversation to exactly the text the original renders."""
    for messages in conversations:
        if (tokenizer.apply_chat_template(messages, tokenize=False)
                != tokenizer.apply_chat_template(messages, tokenize=False, chat_template=marked)):
            raise AssertionError("The marked template renders differently from the model's own.")


def load(bench: ChatBench):
    """The run, its data, the model and tokenizer, the encoded conversations and the check questions."""
    run = course_run(bench)
    task = get_task(run.task)
    data = task.prepare(run)
    set_seed(bench.seed)
    model, tokenizer = task.load_model(run, data, lambda line: None)
    tokens = task.encode(run, data, tokenizer, lambda line: None)  # also cuts data.splits to the kept turns
    prompts, references = data.replies("validation")
    qa = [i for i, kind in enumerate(data.splits["validation"]["kind"]) if kind == "qa"][:bench.check_questions]
    return run, data, model, tokenizer, tokens, [prompts[i] for i in qa], [references[i] for i in qa]


def qa_f1(model, tokenizer, prompts, references, run: RunConfig) -> float:
    """Greedy answers to the check questions, scored with the course's F1 (the model's mode is kept)."""
    was_training = model.training
    replies = write(model, tokenizer, prompts, None, run.decode)
    model.train(was_training)
    return qa_metrics([r.text for r in replies], references)["f1"]


def new_result(name: str, description: str, trained, bench: ChatBench) -> Result:
    """A Result with the model's parameter counts; `checks` hold (training seconds, QA F1)."""
    result = Result(name, description, seed=bench.seed)
    result.trainable_params, result.total_params = count_parameters(trained)
    return result


def run_course(bench: ChatBench, config: BenchConfig, device: torch.device) -> tuple[Result, float]:
    """The course: `apply_strategy`, the task's loaders and `training.train`, as `finetune --task chat` runs."""
    run, _data, model, tokenizer, tokens, prompts, references = load(bench)
    zero_shot = qa_f1(model.to(device), tokenizer, prompts, references, run)
    config.target = zero_shot + bench.gain
    set_seed(bench.seed)  # LoRA's random start, as in pipeline.fit
    trained = apply_strategy(model, run.train)
    result = new_result("course", "course loop (training.train): labels from pairs.encode_conversation",
                        trained, bench)
    module, train_loader, val_loader = get_task(run.task).loaders(trained, tokens, tokenizer, run, device,
                                                                  lambda line: None, Parallel())
    counter = {"tokens": 0}
    clock = Clock(config, lambda: qa_f1(trained, tokenizer, prompts, references, run), result)
    with contextlib.suppress(BudgetReached):  # train() keeps the weights it has on the way out
        train(module, _CountingLoader(train_loader, counter), val_loader, run.train, device, None,
              [_BudgetCallback({"clock": clock}, counter)])
    clock.finish(lambda: qa_f1(trained, tokenizer, prompts, references, run))
    return result, zero_shot


def run_sft(bench: ChatBench, config: BenchConfig, device: torch.device) -> tuple[Result, float]:
    """TRL's SFTTrainer on the same conversations, LoRA, optimiser settings and precision."""
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    run, data, model, tokenizer, tokens, prompts, references = load(bench)
    zero_shot = qa_f1(model.to(device), tokenizer, prompts, references, run)
    config.target = zero_shot + bench.gain
    conversations = list(data.splits["train"]["messages"])
    sft_tokenizer = copy.deepcopy(tokenizer)
    sft_tokenizer.chat_template = marked_template(tokenizer.chat_template)
    check_marked_template(tokenizer, sft_tokenizer.chat_template, conversations)
    settings = run.train
    clock_box: dict[str, Clock] = {}
    updates = math.ceil(len(conversations) / settings.batch_size) * settings.epochs
    with tempfile.TemporaryDirectory() as tmp:
        args = SFTConfig(
            output_dir=tmp, num_train_epochs=settings.epochs, learning_rate=settings.learning_rate,
            per_device_train_batch_size=settings.batch_size, weight_decay=settings.weight_decay,
            max_grad_norm=settings.max_grad_norm, lr_scheduler_type="linear",
            warmup_steps=int(settings.warmup_fraction * updates),  # as training.train rounds it
            max_length=settings.max_length, assistant_only_loss=True, packing=False,
            gradient_checkpointing=False,  # TRL's default is on; the course does not checkpoint
            bf16=uses_bf16(device, settings.mixed_precision), use_cpu=device.type == "cpu", seed=bench.seed,
            report_to="none", save_strategy="no", eval_strategy="no", logging_strategy="no",
            disable_tqdm=True, dataset_num_proc=None,
        )
        lora = LoraConfig(r=settings.lora_rank, lora_alpha=2 * settings.lora_rank, lora_dropout=0.05,
                          target_modules=settings.lora_targets, task_type="CAUSAL_LM")
        set_seed(bench.seed)
        trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_dict({"messages": conversations}),
                             processing_class=sft_tokenizer, peft_config=lora)
        trainer.data_collator, budget = trainer_hooks(trainer.data_collator, clock_box)  # TRL's own collator
        trainer.add_callback(budget)
        result = new_result("sft", "TRL SFTTrainer, assistant_only_loss=True (marked template), "
                            "gradient_checkpointing=False", trainer.model, bench)
        result.description += f"; targets identical to the course's: {same_targets(trainer, tokens['train'])}"
        clock_box["clock"] = clock = Clock(
            config, lambda: qa_f1(trainer.model, tokenizer, prompts, references, run), result)
        trainer.train()
        clock.finish(lambda: qa_f1(trainer.model, tokenizer, prompts, references, run))
    return result, zero_shot


def same_targets(trainer, course_tokens) -> str:
    """'N of M conversations': TRL's tokens and labels (built from its assistant mask) equal the course's.

    TRL's text ends with the newline after the last <|im_end|>, which the course leaves out: a
    token that is not a target either way (checked), so the rest is compared at the course's length.
    """
    same = 0
    for theirs, ours in zip(trainer.train_dataset, course_tokens, strict=True):
        n = len(ours["input_ids"])
        same += (theirs["input_ids"][:n] == ours["input_ids"] and theirs["labels"][:n] == ours["labels"]
                 and all(label == -100 for label in theirs["labels"][n:]))
    return f"{same} of {len(course_tokens)} conversations"


def run_contender(name: str, bench: ChatBench, config: BenchConfig) -> dict:
    """One contender in this process, with its peak memory."""
    import resource

    device = pick_device()
    prepare_backend(device)
    result, zero_shot = (run_course if name == "course" else run_sft)(bench, config, device)
    result.peak_memory_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"result": asdict(result), "zero_shot_f1": zero_shot, "target_f1": config.target}


def table(rows: dict[str, dict], bench: ChatBench) -> str:
    """A Markdown table of the contenders."""
    lines = [f"| contender | trainable params | train tokens/s | peak memory (MB) | QA F1 pretrained → last check "
             f"| time to F1 +{bench.gain:g} (s) |", "|---|---:|---:|---:|---:|---:|"]
    for name, row in rows.items():
        r = Result(**row["result"])
        reached = "not reached" if r.time_to_target_s is None else f"{r.time_to_target_s:.0f}"
        lines.append(f"| {name} | {r.trainable_params:,} | {r.tokens_per_s:.0f} | {r.peak_memory_mb:.0f} | "
                     f"{row['zero_shot_f1']:.1f} → {r.final_val_accuracy:.1f} | {reached} "
                     f"(target {row['target_f1']:.1f}) |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer conversations and checks: a few minutes")
    parser.add_argument("--contenders", nargs="+", choices=CONTENDERS, default=CONTENDERS)
    parser.add_argument("--model", default=None)
    parser.add_argument("--max-train", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--check-questions", type=int, default=None)
    parser.add_argument("--check-every", type=float, default=None)
    parser.add_argument("--budget", type=float, default=None, help="training seconds per run at most")
    parser.add_argument("--gain", type=float, default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--output", default=None, help="JSON file (default benchmarks/results/bench-chat.json)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: run one contender
    parser.add_argument("--worker-seed", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def bench_settings(args: argparse.Namespace) -> ChatBench:
    """Defaults, the quick preset, then explicit options."""
    bench = ChatBench(max_train=48, check_questions=12, check_every_s=15) if args.quick else ChatBench()
    for option in ("model", "max_train", "epochs", "check_questions", "check_every", "budget", "gain", "seed"):
        value = getattr(args, option)
        name = {"check_every": "check_every_s", "budget": "budget_s"}.get(option, option)
        if value is not None:
            setattr(bench, name, value)
    return bench


def main(argv: list[str] | None = None) -> int:
    """Each contender in a fresh process, then the table and the JSON report."""
    args = parse_args(argv)
    bench = bench_settings(args)
    if args.worker:
        quiet_libraries()
        config = BenchConfig(budget_s=bench.budget_s, check_every_s=bench.check_every_s, stop_at_target=False,
                             seeds=(bench.seed,), seed=bench.seed)
        Path(args.worker_out).write_text(json.dumps(run_contender(args.worker, bench, config)))
        return 0
    passed = list(argv if argv is not None else sys.argv[1:])
    rows = {}
    for name in args.contenders:
        print(f"[bench chat] {name} ...", flush=True)
        rows[name] = run_worker(Path(__file__), name, bench.seed, passed)
        r = Result(**rows[name]["result"])
        reached = "not reached" if r.time_to_target_s is None else f"reached at {r.time_to_target_s:.0f} s"
        print(f"[bench chat] {name}: {r.tokens_per_s:.0f} tokens/s, QA F1 {r.final_val_accuracy:.1f} after "
              f"{r.train_seconds:.0f} s, target {rows[name]['target_f1']:.1f} {reached}", flush=True)
    report = {"settings": asdict(bench), "machine": machine(), "runs": rows}
    output = Path(args.output) if args.output else HERE / "results" / (
        "bench-chat-quick.json" if args.quick else "bench-chat.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2))
    print(table(rows, bench))
    print(f"Saved {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

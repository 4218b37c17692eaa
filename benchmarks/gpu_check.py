"""GPU check: training tokens/s and model FLOP utilisation (MFU) of a GPT-2-small-sized model.

    .venv/bin/python benchmarks/gpu_check.py             # on one CUDA GPU, no network needed (~3 min)
    .venv/bin/python benchmarks/gpu_check.py --quick     # a tiny model on CPU: checks the script runs
    .venv/bin/python benchmarks/gpu_check.py --runs compile,static   # chosen runs only (see --help)

The weights are randomly initialised (no download is possible on the GPU machines), which does
not change the cost of a training step. Every step is full fine-tuning of a sequence classifier
on random tokens of a fixed length, in bf16 autocast on CUDA. It compares the course's `train`
loop (eager, then with --compile's torch.compile) with `transformers.Trainer` on the same model
and batches. MFU = achieved FLOP/s / the card's peak dense bf16 FLOP/s, counting FLOPs as the
PaLM paper (appendix B) and nanoGPT do: 6 per non-embedding parameter per token, plus
12 * layers * length * width per token for the two attention matmuls (forward and backward).

With probes (on by default on a GPU) each course run also profiles 16 steps after the timed
ones (where the time goes, by kind of kernel) and counts the host waits in the 16 after that
(CUDA's sync debug mode).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
import warnings
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from transformers import GPT2Config, GPT2ForSequenceClassification

from course_lib import training
from course_lib.config import Strategy, TrainConfig
from course_lib.models import pick_device
from course_lib.progress import TrainingCallback
from course_lib.training import loss_read_interval, set_seed, train

HERE = Path(__file__).resolve().parent
# Dense bf16 peak (no sparsity) from the vendors' data sheets, FLOP/s.
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12, "4090": 165e12}


@dataclass
class Shape:
    """Model and batch size of the check."""

    layers: int = 12
    width: int = 768
    heads: int = 12
    vocab: int = 50257
    length: int = 1024
    batch: int = 16
    steps: int = 48
    warmup: int = 16  # steps not timed: CUDA kernels warm up, torch.compile compiles
    dropout: float | None = None  # None: GPT-2's own 0.1 (in attention, residuals and embeddings)


@dataclass
class Figures:
    """What one way of training achieved."""

    name: str
    tokens_per_s: float
    step_ms: float
    mfu: float | None
    peak_memory_mb: float | None
    first_window_s: float  # from the start of training to the end of the warm-up steps (compile included)
    profile: dict | None = None  # where the device's time went, per step (course runs with probes)
    host_waits: dict | None = None  # synchronisations per 16 steps and where they came from


class RandomTokens(Dataset):
    """Fixed-length random token rows with random labels: the cost of real data, none of the download."""

    def __init__(self, shape: Shape, rows: int, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, shape.vocab, (rows, shape.length), generator=generator)
        self.labels = torch.randint(0, 2, (rows,), generator=generator)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "attention_mask": torch.ones_like(self.ids[i]), "labels": self.labels[i]}


def build_model(shape: Shape) -> GPT2ForSequenceClassification:
    """A randomly initialised GPT-2 classifier of the given size."""
    set_seed(0)
    config = GPT2Config(n_layer=shape.layers, n_embd=shape.width, n_head=shape.heads, vocab_size=shape.vocab,
                        n_positions=shape.length, num_labels=2, pad_token_id=0)
    if shape.dropout is not None:
        config.attn_pdrop = config.resid_pdrop = config.embd_pdrop = shape.dropout
    return GPT2ForSequenceClassification(config)


def flops_per_token(model: torch.nn.Module, shape: Shape) -> float:
    """Training FLOPs per token: 6 per non-embedding weight, plus 12*L*T*d for attention (PaLM's count)."""
    embeddings = sum(p.numel() for n, p in model.named_parameters() if ".wte." in n or ".wpe." in n)
    weights = sum(p.numel() for p in model.parameters()) - embeddings
    return 6 * weights + 12 * shape.layers * shape.length * shape.width


def peak_flops(device: torch.device, override_tflops: float | None) -> float | None:
    """The card's dense bf16 peak, from --peak-tflops or the table above; None if unknown."""
    if override_tflops:
        return override_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(0)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


class StepTimer(TrainingCallback):
    """(step, time) every `every` steps, after a CUDA sync, so the time is the GPU's, not the launch's.

    Syncing only there keeps the timer from adding the per-step waits the loop itself avoids.
    """

    def __init__(self, every: int, last: int):
        self.every, self.last = every, last
        self.stamps: list[tuple[int, float]] = []

    def on_train_begin(self, total_steps) -> None:
        self.stamps.append((0, time.perf_counter()))

    def on_step(self, step, loss, history) -> None:
        if step % self.every == 0 and step <= self.last:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.stamps.append((step, time.perf_counter()))


def figures(name: str, stamps: list[tuple[int, float]], shape: Shape, model, device,
            peak: float | None) -> Figures:
    """Throughput over the steps after warm-up, and MFU when the peak is known."""
    timed = [(step, when) for step, when in stamps if step >= shape.warmup]
    (first_step, start), (last_step, end) = timed[0], timed[-1]
    seconds = (end - start) / (last_step - first_step)
    tokens_per_s = shape.batch * shape.length / seconds
    mfu = tokens_per_s * flops_per_token(model, shape) / peak if peak else None
    memory = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
    return Figures(name, tokens_per_s, seconds * 1000, mfu, memory, timed[0][1] - stamps[0][1])


# Kinds of work, by kernel (GPU) or operator (CPU) name; the first pattern that matches wins.
KINDS = [
    ("attention", r"flash|fmha|attention|sdpa|scaled_dot"),
    ("matrix products", r"gemm|cutlass|xmma|nvjet|cublas|triton_tem|aten::(addmm|mm|bmm)$"),
    ("optimizer", r"adam|multi_tensor|foreach"),
    ("fused elementwise (Triton)", r"^triton_"),
    ("embedding", r"embedding"),
    ("copies", r"memcpy|memset|aten::copy_"),
]


def kind_of(name: str) -> str:
    """Which kind of work a kernel or operator name belongs to."""
    return next((kind for kind, pattern in KINDS if re.search(pattern, name, re.IGNORECASE)), "other")


def breakdown(prof: torch.profiler.profile, steps: int, wall_s: float, device: torch.device) -> dict:
    """Milliseconds per step by kind of work, the busiest kernels, and how busy the device was."""
    from torch.autograd import DeviceType

    wanted = DeviceType.CUDA if device.type == "cuda" else DeviceType.CPU
    times: Counter = Counter()
    for event in prof.key_averages():
        # Skip annotations such as "Optimizer.step#AdamW.step": they span kernels counted already.
        if event.device_type == wanted and "#" not in event.key:
            self_us = event.self_device_time_total if device.type == "cuda" else event.self_cpu_time_total
            times[event.key] += self_us / 1000 / steps
    kinds: Counter = Counter()
    for name, ms in times.items():
        kinds[kind_of(name)] += ms
    step_ms = wall_s * 1000 / steps
    return {"step_ms": round(step_ms, 2), "device_busy": round(sum(times.values()) / step_ms, 3),
            "ms_per_step": {kind: round(ms, 2) for kind, ms in kinds.most_common()},
            "top": [[name[:100], round(ms, 3)] for name, ms in times.most_common(12)]}


class ProfileWindow(TrainingCallback):
    """Profiles the steps between two loss read-backs (where the loop has already waited for the GPU)."""

    def __init__(self, start: int, steps: int, device: torch.device):
        self.start, self.steps, self.device = start, steps, device
        self.result: dict | None = None

    def on_step(self, step, loss, history) -> None:
        if step == self.start:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if self.device.type == "cuda":
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self.prof = torch.profiler.profile(activities=activities)
            self.prof.__enter__()
            self.began = time.perf_counter()
        elif step == self.start + self.steps:
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            wall = time.perf_counter() - self.began
            self.prof.__exit__(None, None, None)
            self.result = breakdown(self.prof, self.steps, wall, self.device)


class HostWaits(TrainingCallback):
    """Counts the operations that make the host wait for the GPU (CUDA's sync debug mode), by source line."""

    def __init__(self, start: int, steps: int):
        self.start, self.steps = start, steps
        self.result: dict | None = None

    def on_step(self, step, loss, history) -> None:
        if not torch.cuda.is_available():
            return
        if step == self.start:
            self.catcher = warnings.catch_warnings(record=True)
            self.seen = self.catcher.__enter__()
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
        elif step == self.start + self.steps:
            torch.cuda.set_sync_debug_mode("default")
            self.catcher.__exit__(None, None, None)
            syncs = [w for w in self.seen if "synchroniz" in str(w.message)]
            where = Counter(f"{Path(w.filename).name}:{w.lineno}" for w in syncs)
            self.result = {"steps": self.steps, "waits": len(syncs), "where": dict(where.most_common(8))}


def run_course(shape: Shape, device: torch.device, peak: float | None, compile_model: bool,
               name: str, probes: bool) -> Figures:
    """The course's own `train` loop, full fine-tuning, bf16 autocast and fused AdamW on CUDA.

    With probes, 32 more steps follow the timed ones: 16 profiled, then 16 with host waits counted.
    """
    model = build_model(shape)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    config = TrainConfig(strategy=Strategy.FULL, train_blocks=None, epochs=1, batch_size=shape.batch,
                         learning_rate=1e-4, early_stopping_patience=None, compile=compile_model)
    every = loss_read_interval(device)  # stamps where the loop reads its losses back
    window = max(every, 2)
    timer = StepTimer(every, shape.steps)
    profile = ProfileWindow(shape.steps, window, device)
    waits = HostWaits(shape.steps + window, window)
    steps = shape.steps + (2 * window if probes else 0)
    loader = DataLoader(RandomTokens(shape, shape.batch * steps), batch_size=shape.batch,
                        pin_memory=device.type == "cuda")
    val = DataLoader(RandomTokens(shape, shape.batch, seed=1), batch_size=shape.batch)
    train(model, loader, val, config, device, 2, [timer, profile, waits] if probes else [timer])
    result = figures(name, timer.stamps, shape, model, device, peak)
    result.profile, result.host_waits = profile.result, waits.result
    return result


@contextmanager
def compiled_with(**options):
    """An ablation: the loop's torch.compile call with other options (e.g. static shapes)."""
    original = training.maybe_compile
    training.maybe_compile = lambda model, enabled: torch.compile(model, **options) if enabled else model
    try:
        yield
    finally:
        training.maybe_compile = original


def run_trainer(shape: Shape, device: torch.device, peak: float | None) -> Figures:
    """transformers.Trainer on the same model and batches, bf16 on CUDA."""
    from transformers import Trainer, TrainerCallback, TrainingArguments

    model = build_model(shape)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    stamps: list[tuple[int, float]] = []
    every = loss_read_interval(device)  # where the loop reads its losses back

    class Stamp(TrainerCallback):  # the same rule as StepTimer, so both are timed alike
        def on_train_begin(self, args, state, control, **kwargs):
            stamps.append((0, time.perf_counter()))

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step % every == 0:
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                stamps.append((state.global_step, time.perf_counter()))

    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, per_device_train_batch_size=shape.batch, max_steps=shape.steps,
                                 bf16=device.type == "cuda", report_to="none", save_strategy="no",
                                 logging_strategy="no", disable_tqdm=True, use_cpu=device.type == "cpu",
                                 dataloader_pin_memory=device.type == "cuda")
        Trainer(model=model, args=args, train_dataset=RandomTokens(shape, shape.batch * shape.steps),
                callbacks=[Stamp()]).train()
    return figures("HF Trainer (bf16)" if device.type == "cuda" else "HF Trainer", stamps, shape, model,
                   device, peak)


def main(argv: list[str] | None = None) -> int:
    """Run the check and print/save its figures after every run (a timeout keeps what finished)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny model, few steps: runs anywhere")
    parser.add_argument("--runs", default=None,
                        help=f"comma-separated, from {', '.join(RUNS)} (default: eager,compile,trainer on a "
                             "GPU, eager,trainer with --quick)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile run")
    parser.add_argument("--probes", action="store_true",
                        help="profile and count host waits in every course run (default: on a GPU)")
    parser.add_argument("--budget-s", type=float, default=None, help="start no run after this many seconds")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the card's dense bf16 peak, if not known")
    parser.add_argument("--label", default=None, help="a note saved with the results (e.g. which commit)")
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    began = time.perf_counter()
    device = pick_device()
    shape = Shape(layers=2, width=64, heads=4, vocab=512, length=64, batch=4, steps=6, warmup=2) if args.quick \
        else Shape()
    if device.type == "cpu" and not args.quick:
        print("No CUDA GPU here: use --quick on CPU (the full check is for a GPU).", file=sys.stderr)
        return 2
    default_runs = "eager,trainer" if args.quick or args.no_compile else "eager,compile,trainer"
    chosen = (args.runs or default_runs).split(",")
    unknown = [name for name in chosen if name not in RUNS]
    if unknown:
        parser.error(f"unknown run(s) {', '.join(unknown)}: choose from {', '.join(RUNS)}")
    probes = args.probes or device.type == "cuda"
    peak = peak_flops(device, args.peak_tflops)
    default = HERE / "results" / ("gpu-quick.json" if args.quick else "gpu.json")
    output = Path(args.output) if args.output else default
    report = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "label": args.label, "shape": asdict(shape),
              "flops_per_token": flops_per_token(build_model(shape), shape), "peak_flops": peak, "runs": []}
    print(f"{report['device']}: GPT-2-sized classifier, {shape.layers} layers x {shape.width}, "
          f"batch {shape.batch} x {shape.length} tokens")
    for name in chosen:
        if args.budget_s is not None and time.perf_counter() - began > args.budget_s:
            print(f"  {name}: skipped (past --budget-s)")
            continue
        torch._dynamo.reset()  # every compiled run compiles afresh, so its compile time is its own
        result = RUNS[name](shape, device, peak, probes)
        report["runs"].append(asdict(result))
        mfu = f"{result.mfu:.1%}" if result.mfu is not None else "n/a (peak unknown)"
        print(f"  {result.name:44s} {result.tokens_per_s:12,.0f} tokens/s  {result.step_ms:8.1f} ms/step  "
              f"MFU {mfu}  (first {shape.warmup} steps {result.first_window_s:.1f} s)", flush=True)
        _save(report, output)
    print(f"Saved {output}")
    return 0


def _save(report: dict, output: Path) -> None:
    """Write the report whole or not at all (a rename is atomic)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_suffix(".tmp")
    partial.write_text(json.dumps(report, indent=2))
    partial.replace(output)


# The runs --runs chooses from. The last two are ablations of the compiled run's options.
RUNS = {
    "eager": lambda shape, device, peak, probes: run_course(shape, device, peak, False, "course loop", probes),
    "compile": lambda shape, device, peak, probes: run_course(
        shape, device, peak, True, "course loop + torch.compile", probes),
    "trainer": lambda shape, device, peak, probes: run_trainer(shape, device, peak),
}


def _ablation(name: str, dropout: float | None = None, **options):
    def run(shape, device, peak, probes):
        with compiled_with(**options):
            return run_course(replace(shape, dropout=dropout), device, peak, True, name, probes)
    return run


RUNS["static"] = _ablation("course loop + torch.compile, static shapes", dynamic=False)
RUNS["nodropout"] = _ablation("course loop + torch.compile, static shapes, no dropout", dropout=0.0,
                              dynamic=False)
RUNS["autotune"] = _ablation("course loop + torch.compile, max-autotune", dynamic=False,
                             mode="max-autotune-no-cudagraphs")


if __name__ == "__main__":
    sys.exit(main())

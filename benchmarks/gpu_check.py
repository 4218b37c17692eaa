"""GPU check: training tokens/s and model FLOP utilisation (MFU) of a GPT-2-small-sized model.

    .venv/bin/python benchmarks/gpu_check.py             # on one CUDA GPU, no network needed (~3 min)
    .venv/bin/python benchmarks/gpu_check.py --quick     # a tiny model on CPU: checks the script runs

The weights are randomly initialised (no download is possible on the GPU machines), which does
not change the cost of a training step. Every step is full fine-tuning of a sequence classifier
on random tokens of a fixed length, in bf16 autocast on CUDA. It compares the course's `train`
loop (eager, then with --compile's torch.compile) with `transformers.Trainer` on the same model
and batches. MFU = achieved FLOP/s / the card's peak dense bf16 FLOP/s, counting FLOPs as the
PaLM paper (appendix B) and nanoGPT do: 6 per non-embedding parameter per token, plus
12 * layers * length * width per token for the two attention matmuls (forward and backward).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from transformers import GPT2Config, GPT2ForSequenceClassification

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


@dataclass
class Figures:
    """What one way of training achieved."""

    name: str
    tokens_per_s: float
    step_ms: float
    mfu: float | None
    peak_memory_mb: float | None


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

    def __init__(self, every: int):
        self.every = every
        self.stamps: list[tuple[int, float]] = []

    def on_step(self, step, loss, history) -> None:
        if step % self.every == 0:
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
    return Figures(name, tokens_per_s, seconds * 1000, mfu, memory)


def run_course(shape: Shape, device: torch.device, peak: float | None, compile_model: bool) -> Figures:
    """The course's own `train` loop, full fine-tuning, bf16 autocast and fused AdamW on CUDA."""
    model = build_model(shape)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    config = TrainConfig(strategy=Strategy.FULL, train_blocks=None, epochs=1, batch_size=shape.batch,
                         learning_rate=1e-4, early_stopping_patience=None, compile=compile_model)
    loader = DataLoader(RandomTokens(shape, shape.batch * shape.steps), batch_size=shape.batch,
                        pin_memory=device.type == "cuda")
    val = DataLoader(RandomTokens(shape, shape.batch, seed=1), batch_size=shape.batch)
    timer = StepTimer(loss_read_interval(device))  # stamps where the loop reads its losses back
    train(model, loader, val, config, device, 2, [timer])
    return figures("course loop" + (" + torch.compile" if compile_model else ""), timer.stamps, shape, model,
                   device, peak)


def run_trainer(shape: Shape, device: torch.device, peak: float | None) -> Figures:
    """transformers.Trainer on the same model and batches, bf16 on CUDA."""
    from transformers import Trainer, TrainerCallback, TrainingArguments

    model = build_model(shape)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    stamps: list[tuple[int, float]] = []
    every = loss_read_interval(device)  # where the loop reads its losses back

    class Stamp(TrainerCallback):  # the same rule as StepTimer, so both are timed alike
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
    """Run the check and print/save its figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny model, few steps: runs anywhere")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile run")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the card's dense bf16 peak, if not known")
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    device = pick_device()
    shape = Shape(layers=2, width=64, heads=4, vocab=512, length=64, batch=4, steps=6, warmup=2) if args.quick \
        else Shape()
    if device.type == "cpu" and not args.quick:
        print("No CUDA GPU here: use --quick on CPU (the full check is for a GPU).", file=sys.stderr)
        return 2
    peak = peak_flops(device, args.peak_tflops)
    runs = [run_course(shape, device, peak, False), run_trainer(shape, device, peak)]
    if not args.no_compile and not args.quick:
        runs.insert(1, run_course(shape, device, peak, True))
    report = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "shape": asdict(shape),
              "flops_per_token": flops_per_token(build_model(shape), shape), "peak_flops": peak,
              "runs": [asdict(r) for r in runs]}
    print(f"{report['device']}: GPT-2-sized classifier, {shape.layers} layers x {shape.width}, "
          f"batch {shape.batch} x {shape.length} tokens")
    for r in runs:
        mfu = f"{r.mfu:.1%}" if r.mfu is not None else "n/a (peak unknown)"
        print(f"  {r.name:32s} {r.tokens_per_s:12,.0f} tokens/s  {r.step_ms:8.1f} ms/step  MFU {mfu}")
    default = HERE / "results" / ("gpu-quick.json" if args.quick else "gpu.json")
    output = Path(args.output) if args.output else default
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2))
    print(f"Saved {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Where a cached training step's time goes: forward, backward, clipping and the optimizer step.

`finetune`'s classifier trains the top 12 blocks on hidden states the frozen-feature cache
kept from the first epoch, so a step from the second epoch on is the trained blocks alone.
This times the parts of such a step with AdamW as `training.make_optimizer` builds it, once
with the fused kernel and once without (on a CPU torch then loops over the weight tensors in
Python, one tensor at a time), in the course's precision. Run it with nothing else on the machine:

    .venv/bin/python benchmarks/optimizer_step.py            # ~40 s on 2 cores
    .venv/bin/python benchmarks/optimizer_step.py --quick    # a smoke test (tiny model, seconds)

The batch is 16 random hidden-state rows of 25 positions, about what the length-grouped loader
pads the reviews to. Medians over `--steps` steps, after two warm-up steps.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
PARTS = ("forward", "backward", "clip", "optimizer")


def load(quick: bool):
    """The classifier to time: the offline SmolLM2-135M, or with --quick a tiny one."""
    from course_lib.data import LabelMap
    from course_lib.models import load_classifier

    name = "smollm2-135m"
    if quick:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from conftest import _save
        from transformers import LlamaConfig, LlamaForCausalLM

        name = str(Path(os.environ.get("TMPDIR", "/tmp")) / f"optimizer-step-tiny-{os.getpid()}")
        _save(LlamaForCausalLM(LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128,
                                           num_hidden_layers=4, num_attention_heads=4,
                                           num_key_value_heads=2)), Path(name))
    return load_classifier(name, LabelMap(["fresh", "rotten"]))[0]


def time_parts(top, optimizer, inputs: dict, steps: int) -> dict[str, float]:
    """Median seconds of each part of a training step."""
    import torch

    from course_lib.runtime.speed import autocast

    trainable = [p for p in top.parameters() if p.requires_grad]
    times: dict[str, list[float]] = {part: [] for part in PARTS}
    for step in range(steps + 2):
        marks = [time.perf_counter()]
        with autocast(torch.device("cpu"), True):  # bf16 where the CPU has it natively, as in training
            loss = top(**inputs).loss
        marks.append(time.perf_counter())
        loss.backward()
        marks.append(time.perf_counter())
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        marks.append(time.perf_counter())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        marks.append(time.perf_counter())
        if step >= 2:  # the first steps allocate the optimizer's state
            for part, start, end in zip(PARTS, marks[:-1], marks[1:], strict=True):
                times[part].append(end - start)
    return {part: statistics.median(values) for part, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny model and few steps: checks that it runs")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per optimizer")
    parser.add_argument("--output", type=Path, help="results file (default: results/optimizer-step.json)")
    args = parser.parse_args()
    import torch

    from course_lib.config import TrainConfig
    from course_lib.features import TrainableTop
    from course_lib.models import freeze_for_training, transformer_blocks
    from course_lib.runtime.speed import uses_bf16
    from course_lib.training import make_optimizer

    torch.manual_seed(0)
    model = load(args.quick)
    config = TrainConfig()
    blocks = min(12, len(transformer_blocks(model)))  # finetune's default depth
    freeze_for_training(model, blocks)
    top = TrainableTop(model, blocks).train()
    hidden = model.config.hidden_size
    inputs = {"hidden_states": torch.randn(16, 25, hidden), "attention_mask": torch.ones(16, 25, dtype=torch.long),
              "labels": torch.randint(0, 2, (16,))}
    trainable = [p for p in top.parameters() if p.requires_grad]
    steps = 3 if args.quick else args.steps
    rows = {}
    for name, fused in (("fused", True), ("loop", False)):
        optimizer = make_optimizer(trainable, config, torch.device("cpu"), fused=fused)
        rows[name] = time_parts(top, optimizer, inputs, steps)
    report = {"trained_weights": sum(p.numel() for p in trainable), "trained_blocks": blocks,
              "bf16": uses_bf16(torch.device("cpu"), True), "threads": torch.get_num_threads(),
              "quick": args.quick, "steps": steps, "seconds": rows}
    out = args.output or RESULTS / ("optimizer-step-quick.json" if args.quick else "optimizer-step.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{report['trained_weights']:,} trained weights, {'bf16' if report['bf16'] else 'float32'}, "
          f"{report['threads']} threads; median seconds per cached step of 16 reviews:")
    print(f"{'optimizer':10}" + "".join(f"{part:>11}" for part in PARTS) + f"{'step':>11}")
    for name, parts in rows.items():
        print(f"{name:10}" + "".join(f"{parts[p]:11.3f}" for p in PARTS) + f"{sum(parts.values()):11.3f}")
    print(f"Wrote {out.name} to benchmarks/results/.")


if __name__ == "__main__":
    main()

"""CPU contention: seconds per training batch alone and with a second run on the same cores.

For each OpenMP setting, one worker trains alone, then two workers train at the same time;
each reports its median seconds per batch. A fair share of 2 cores between two runs would be
2x the lone time; PyTorch's thread pool, spin-waiting for a sibling thread whose core another
process took, can lose far more. Run it with nothing else on the machine:

    .venv/bin/python benchmarks/contention.py            # ~10 min on 2 cores
    .venv/bin/python benchmarks/contention.py --quick    # a smoke test (tiny model, seconds)

Each worker is the course's training step on real data: SmolLM2-135M with the top 4 blocks
trainable, batches of 16 reviews at max_length 64 (no frozen-feature cache, so every step
runs the whole model forward, as the first epoch does), in bf16 autocast where the CPU has it
natively, and with the course's free-core thread count (course_lib.runtime.cpu_share) unless the
setting turns the course's policy off.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
# The settings compared, as environment variables set before torch starts its thread pool.
# "off" turns the course's own default off, so libgomp's built-in behaviour is measured.
SETTINGS = {
    "libgomp default": {"COURSE_THREAD_POLICY": "off"},
    "OMP_WAIT_POLICY=PASSIVE": {"COURSE_THREAD_POLICY": "off", "OMP_WAIT_POLICY": "PASSIVE"},
    "GOMP_SPINCOUNT=10000": {"COURSE_THREAD_POLICY": "off", "GOMP_SPINCOUNT": "10000"},
    "GOMP_SPINCOUNT=3000": {"COURSE_THREAD_POLICY": "off", "GOMP_SPINCOUNT": "3000"},
    "GOMP_SPINCOUNT=1000": {"COURSE_THREAD_POLICY": "off", "GOMP_SPINCOUNT": "1000"},
    "course default": {},
}


def worker(steps: int, quick: bool) -> dict:
    """Train `steps` batches (after 2 warm-up batches) and return the median seconds per batch."""
    importlib.import_module("course_lib")  # first: it sets the thread policy before torch loads libgomp
    import datasets
    import torch
    import transformers

    from course_lib.data import LabelMap, make_loader, to_dataset_dict, tokenize
    from course_lib.models import freeze_for_training, load_classifier
    from course_lib.runtime.cpu_share import share_callbacks
    from course_lib.runtime.speed import autocast

    if quick:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from conftest import _save, toy_reviews
        from transformers import LlamaConfig, LlamaForCausalLM

        folder = Path(os.environ.get("TMPDIR", "/tmp")) / f"contention-tiny-{os.getpid()}"
        _save(LlamaForCausalLM(LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128,
                                           num_hidden_layers=4, num_attention_heads=4,
                                           num_key_value_heads=2)), folder)
        model_name, frame = str(folder), toy_reviews(16 * (steps + 2))
    else:
        from course_lib.config import DataConfig
        from course_lib.data import clean_table, read_table

        model_name = "smollm2-135m"
        frame, _ = clean_table(read_table(DataConfig()))
        frame = frame.sample(16 * (steps + 2), random_state=0)
    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    labels = LabelMap.from_labels(frame["label"])
    torch.manual_seed(0)
    model, tokenizer = load_classifier(model_name, labels)
    freeze_for_training(model, 4)
    tokens = tokenize(to_dataset_dict({"train": frame}, labels), tokenizer, 64)["train"]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    # What the course hangs off its loop on a CPU (unless COURSE_THREAD_POLICY=off): the thread
    # count follows the cores other programs leave free, checked every second here (5 s in the
    # course) so that a short measurement sees it settle.
    sharing = share_callbacks(torch.device("cpu"))
    for cb in sharing:
        cb.every_s = 1.0
        cb.on_train_begin(steps + 2)
    times, threads = [], []
    for step, batch in enumerate(make_loader(tokens, tokenizer, 16, shuffle=True), start=1):
        start = time.perf_counter()
        with autocast(torch.device("cpu"), True):  # the course's precision: bf16 where native
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - start)
        threads.append(torch.get_num_threads())
        for cb in sharing:
            cb.on_step(step, 0.0, None)
    timed = times[2:]
    return {"s_per_batch": statistics.median(timed), "threads": statistics.median(threads[2:]),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "gomp_spincount": os.environ.get("GOMP_SPINCOUNT")}


def run_workers(n: int, env: dict, steps: int, quick: bool) -> list[dict]:
    """Start `n` workers at once with `env` added, and collect what each reports."""
    command = [sys.executable, __file__, "--worker", "--steps", str(steps)] + (["--quick"] if quick else [])
    # Each setting starts from a clean slate: no OpenMP wait settings inherited from this process.
    inherited = {k: v for k, v in os.environ.items()
                 if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "COURSE_THREAD_POLICY")}
    procs = [subprocess.Popen(command, env={**inherited, **env}, stdout=subprocess.PIPE, text=True)
             for _ in range(n)]
    results = []
    for proc in procs:
        out, _ = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"worker failed with exit code {proc.returncode}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="tiny model and few steps: checks that it runs")
    parser.add_argument("--steps", type=int, default=16, help="timed batches per worker")
    parser.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated names to compare")
    parser.add_argument("--output", type=Path, help="results file (default: benchmarks/results/contention.json)")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.steps, args.quick)))
        return
    steps = 4 if args.quick else args.steps
    rows = {}
    for name in args.settings.split(","):
        alone = run_workers(1, SETTINGS[name], steps, args.quick)[0]
        lone = alone["s_per_batch"]
        pair_runs = run_workers(2, SETTINGS[name], steps, args.quick)
        pair = [r["s_per_batch"] for r in pair_runs]
        pair_threads = [r["threads"] for r in pair_runs]
        rows[name] = {"lone_s_per_batch": lone, "pair_s_per_batch": pair, "pair_over_lone": max(pair) / lone,
                      "lone_threads": alone["threads"], "pair_threads": pair_threads,
                      "omp_wait_policy": alone["omp_wait_policy"], "gomp_spincount": alone["gomp_spincount"]}
        print(f"{name:28} alone {lone:.2f} s/batch; two at once {pair[0]:.2f} and {pair[1]:.2f} "
              f"({max(pair) / lone:.2f}x)", flush=True)
    out = args.output or RESULTS / ("contention-quick.json" if args.quick else "contention.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"cores": len(os.sched_getaffinity(0)), "steps": steps, "results": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

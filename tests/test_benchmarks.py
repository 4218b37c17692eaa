"""The benchmark scripts run end to end and report consistent figures (no timing assertions)."""

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args],
                          capture_output=True, text=True, timeout=600)


def test_bench_quick_runs_every_contender_and_reports_ratios(tiny_llama_dir, tmp_path):
    out = tmp_path / "bench.json"
    proc = _run("bench.py", "--quick", "--model", str(tiny_llama_dir), "--budget", "3", "--check-every", "1",
                "--output", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    results = report["results"]
    assert list(results) == ["seed", "trainer", "course-full", "course-top-k", "course-lora", "course-head"]
    for r in results.values():
        assert r["steps"] > 0 and r["train_tokens"] > 0 and r["tokens_per_s"] > 0
        assert r["eval_examples_per_s"] > 0 and r["peak_memory_mb"] > 0
        assert 0.0 <= r["final_val_accuracy"] <= 1.0
        assert r["checks"] and r["checks"][-1][1] == r["final_val_accuracy"]
        if r["time_to_target_s"] is not None:  # the first check at or above the target
            first = next(t for t, acc in r["checks"] if acc >= report["config"]["target"])
            assert r["time_to_target_s"] == pytest.approx(first, abs=0.01)
    trainable = {name: r["trainable_params"] for name, r in results.items()}
    order = ["course-head", "course-lora", "course-top-k", "course-full"]
    counts = [trainable[name] for name in order]
    assert all(a < b for a, b in itertools.pairwise(counts)), counts
    assert trainable["seed"] == trainable["trainer"] == trainable["course-full"] == results["seed"]["total_params"]
    ratios = report["ratios"]["course-top-k vs seed"]
    seed, course = results["seed"], results["course-top-k"]
    assert ratios["tokens_per_s"] == pytest.approx(course["tokens_per_s"] / seed["tokens_per_s"])
    assert "int8" in results["course-top-k"] and "accuracy_change" in results["course-top-k"]["int8"]
    assert "| course-top-k |" in proc.stdout and "course-top-k vs trainer" in proc.stdout


def test_gpu_check_quick_runs_on_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    proc = _run("gpu_check.py", "--quick", "--output", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    names = [r["name"] for r in report["runs"]]
    assert names == ["course loop", "HF Trainer"]
    assert all(r["tokens_per_s"] > 0 for r in report["runs"])
    # 2 layers x 64 wide: 6 FLOPs per non-embedding weight plus attention over 64 tokens.
    assert report["flops_per_token"] > 6 * 2 * 12 * 64 * 64


def test_gpu_check_refuses_full_size_without_a_gpu():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the full check would run")
    proc = _run("gpu_check.py")
    assert proc.returncode == 2 and "use --quick" in proc.stderr


def test_contention_quick_runs_alone_and_in_pairs_with_the_course_policy(tmp_path):
    out = tmp_path / "contention.json"
    proc = _run("contention.py", "--quick", "--settings", "course default,libgomp default", "--output", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["results"]
    from course_lib.threads import DEFAULTS

    assert rows["course default"]["gomp_spincount"] == DEFAULTS["GOMP_SPINCOUNT"]
    assert rows["libgomp default"]["gomp_spincount"] is None  # COURSE_THREAD_POLICY=off
    for row in rows.values():
        assert row["lone_s_per_batch"] > 0 and len(row["pair_s_per_batch"]) == 2

"""The benchmark scripts run end to end and report consistent figures (no timing assertions)."""

import itertools
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.bench import CONTENDERS, DEFAULT_CONTENDER, BenchConfig, Clock, Result, ratios, summarise

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args],
                          capture_output=True, text=True, timeout=600)


@pytest.mark.benchmark
def test_bench_quick_runs_every_contender_and_reports_ratios(tiny_llama_dir, tmp_path):
    out = tmp_path / "bench.json"
    proc = _run("bench.py", "--quick", "--model", str(tiny_llama_dir), "--budget", "3", "--check-every", "1",
                "--contenders", *CONTENDERS, "--full-budget", "--int8", "--output", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert list(report["runs"]) == ["42"]  # --quick: one seed
    results = report["runs"]["42"]
    assert list(results) == CONTENDERS
    for r in results.values():
        assert r["seed"] == 42
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
    # The tiny model has fewer blocks than finetune's default trains: it trains all of them.
    from course_lib.models import block_count

    assert f"top {block_count(str(tiny_llama_dir))} blocks" in results["course-default"]["description"]
    ratios = report["ratios"]["course-default vs seed"]
    seed, course = results["seed"], results["course-default"]
    assert ratios["tokens_per_s"] == pytest.approx(course["tokens_per_s"] / seed["tokens_per_s"])
    assert "int8" in course and "accuracy_change" in course["int8"]
    assert "| course-default |" in proc.stdout and "course-default vs trainer" in proc.stdout


def _result(name: str, seed: int, reached: float | None, budget: float = 100.0) -> Result:
    return Result(name, "", seed=seed, time_to_target_s=reached, train_seconds=reached or budget,
                  tokens_per_s=10.0 if name == DEFAULT_CONTENDER else 5.0, eval_examples_per_s=1.0)


def test_summary_takes_medians_and_bounds_runs_that_never_reached():
    times = {"seed": [None, 90.0, None], "trainer": [40.0, 60.0, 50.0], DEFAULT_CONTENDER: [20.0, 10.0, 30.0]}
    runs = {s: {name: _result(name, s, t[i]) for name, t in times.items()} for i, s in enumerate((1, 2, 3))}
    summary = summarise(runs)
    assert summary[DEFAULT_CONTENDER]["median_time_to_target_s"] == 20.0
    assert (summary["trainer"]["min_time_to_target_s"], summary["trainer"]["max_time_to_target_s"]) == (40.0, 60.0)
    assert summary["seed"]["median_time_to_target_s"] is None and summary["seed"]["reached"] == 1
    found = ratios(runs, summary)
    assert found[f"{DEFAULT_CONTENDER} vs trainer"]["time_to_target"] == 2.5  # 50 / 20, not a mean of ratios
    vs_seed = found[f"{DEFAULT_CONTENDER} vs seed"]
    assert vs_seed["lower_bound"] and vs_seed["time_to_target"] == 100.0 / 20.0
    assert [r["time_to_target"] for r in vs_seed["per_seed"]] == [5.0, 9.0, 100.0 / 30.0]
    assert found[f"{DEFAULT_CONTENDER} vs trainer"]["tokens_per_s"] == 2.0


def test_clock_stops_at_the_first_check_that_reaches_the_target():
    accuracies = iter([0.5, 0.7, 0.85, 0.9])
    config = BenchConfig(check_every_s=0.0, budget_s=1e9, target=0.8)
    result = Result("x", "")
    clock = Clock(config, lambda: next(accuracies), result)
    stops = [clock.after_step(tokens=3) for _ in range(3)]
    assert stops == [False, False, True]
    assert [acc for _, acc in result.checks] == [0.5, 0.7, 0.85] and result.train_tokens == 9
    clock.finish(lambda: next(accuracies))  # no extra check: the last one reached the target
    assert result.final_val_accuracy == 0.85 and len(result.checks) == 3
    assert result.time_to_target_s == pytest.approx(result.checks[-1][0], abs=0.01)  # checks keep 2 decimals


@pytest.mark.benchmark
def test_gpu_check_quick_runs_on_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    proc = _run("gpu_check.py", "--quick", "--probes", "--output", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    names = [r["name"] for r in report["runs"]]
    assert names == ["course loop", "HF Trainer"]
    assert all(r["tokens_per_s"] > 0 and r["first_window_s"] > 0 for r in report["runs"])
    profile = report["runs"][0]["profile"]  # the course run was profiled: time by kind of work
    assert profile["ms_per_step"]["matrix products"] > 0 and profile["step_ms"] > 0
    assert report["runs"][0]["host_waits"] is None  # counted on a GPU only
    # 2 layers x 64 wide: 6 FLOPs per non-embedding weight plus attention over 64 tokens.
    assert report["flops_per_token"] > 6 * 2 * 12 * 64 * 64


def test_gpu_check_refuses_full_size_without_a_gpu():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the full check would run")
    proc = _run("gpu_check.py")
    assert proc.returncode == 2 and "use --quick" in proc.stderr


@pytest.mark.benchmark
def test_contention_quick_runs_alone_and_in_pairs_with_the_course_policy(tmp_path):
    out = tmp_path / "contention.json"
    proc = _run("contention.py", "--quick", "--settings", "course default,libgomp default", "--output", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["results"]
    from course_lib.runtime.threads import DEFAULTS

    assert rows["course default"]["gomp_spincount"] == DEFAULTS["GOMP_SPINCOUNT"]
    assert rows["libgomp default"]["gomp_spincount"] is None  # COURSE_THREAD_POLICY=off
    for row in rows.values():
        assert row["lone_s_per_batch"] > 0 and len(row["pair_s_per_batch"]) == 2


def test_gpu_check_names_the_kind_of_each_kernel():
    from benchmarks.gpu_check import kind_of

    assert kind_of("cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma_f16") == "attention"
    assert kind_of("nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_TNT") == "matrix products"
    assert kind_of("aten::addmm") == "matrix products"
    assert kind_of("triton_per_fused_native_dropout_native_layer_norm_12") == "fused elementwise (Triton)"
    assert kind_of("void at::native::multi_tensor_apply_kernel<AdamW>") == "optimizer"
    assert kind_of("aten::gelu") == "other"


def test_gpu_check_refuses_an_unknown_run():
    proc = _run("gpu_check.py", "--quick", "--runs", "eager,warp-speed")
    assert proc.returncode == 2 and "unknown run(s) warp-speed" in proc.stderr


def test_chat_bench_marks_smollm2_template_so_the_masks_equal_the_course_labels():
    """TRL's assistant mask, from the marked copy of SmolLM2's template, is the course's label mask."""
    from conftest import require_assets
    from test_chat import TURNS

    from benchmarks.bench_chat import check_marked_template, marked_template
    from course_lib.models import load_tokenizer
    from course_lib.pairs import encode_conversation
    from course_lib.runtime.assets import SMOLLM2_GGUF

    require_assets(SMOLLM2_GGUF)
    tokenizer = load_tokenizer("smollm2-135m")
    marked = marked_template(tokenizer.chat_template)
    check_marked_template(tokenizer, marked, [TURNS, TURNS[1:]])  # the same text as the original
    for messages in (TURNS, TURNS[1:]):
        theirs = tokenizer.apply_chat_template(messages, chat_template=marked, return_dict=True,
                                               return_assistant_tokens_mask=True)
        ours, _ = encode_conversation(tokenizer, messages, 512)
        n = len(ours["input_ids"])
        assert theirs["input_ids"][:n] == ours["input_ids"]
        assert theirs["assistant_masks"][:n] == [int(label != -100) for label in ours["labels"]]
        assert not any(theirs["assistant_masks"][n:])  # only the final newline follows, not a target
    with pytest.raises(ValueError, match="not SmolLM2's ChatML template"):
        marked_template("{{ messages }}")


@pytest.mark.benchmark
def test_chat_bench_quick_trains_course_and_sft_on_the_same_targets(tmp_path):
    """Both contenders train and check QA F1; TRL's targets equal the course's for every conversation."""
    from conftest import require_assets

    from course_lib.runtime.assets import CHITCHAT, DISFL_QA, SMOLLM2_GGUF

    require_assets(SMOLLM2_GGUF, DISFL_QA, CHITCHAT)
    out = tmp_path / "bench-chat.json"
    proc = _run("bench_chat.py", "--quick", "--max-train", "16", "--check-questions", "4", "--budget", "20",
                "--check-every", "5", "--output", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert list(report["runs"]) == ["course", "sft"]
    for row in report["runs"].values():
        r = row["result"]
        assert r["steps"] > 0 and r["tokens_per_s"] > 0 and r["peak_memory_mb"] > 0
        assert row["target_f1"] == pytest.approx(row["zero_shot_f1"] + report["settings"]["gain"])
        assert r["checks"] and r["checks"][-1][1] == r["final_val_accuracy"]
    course, sft = (report["runs"][name]["result"] for name in ("course", "sft"))
    assert course["trainable_params"] == sft["trainable_params"]  # the same LoRA adapters
    assert report["runs"]["course"]["zero_shot_f1"] == report["runs"]["sft"]["zero_shot_f1"]
    same = re.search(r"targets identical to the course's: (\d+) of (\d+) conversations", sft["description"])
    assert same and same[1] == same[2] and int(same[1]) > 0
    assert "| sft |" in proc.stdout


def test_the_final_check_is_stamped_at_the_end_of_training_not_after_itself():
    import time

    def slow_check() -> float:
        time.sleep(0.2)
        return 0.5

    result = Result("x", "")
    clock = Clock(BenchConfig(check_every_s=1e9, budget_s=1e9, target=0.8), slow_check, result)
    clock.after_step(tokens=1)
    clock.finish(slow_check)
    assert result.checks[-1][0] == pytest.approx(result.train_seconds, abs=0.05)  # not 0.2 s later


@pytest.mark.benchmark
def test_optimizer_step_quick_times_every_part_with_the_fused_kernel_and_the_loop(tmp_path):
    out = tmp_path / "optimizer-step.json"
    proc = _run("optimizer_step.py", "--quick", "--output", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report["seconds"]) == {"fused", "loop"} and report["steps"] == 3
    for parts in report["seconds"].values():
        assert set(parts) == {"forward", "backward", "clip", "optimizer"} and all(v > 0 for v in parts.values())
    assert report["trained_blocks"] == 4 and report["trained_weights"] > 0

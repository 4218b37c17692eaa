"""Speed features: they must make things faster without changing what is learned or predicted."""

import json
from pathlib import Path

import pytest
import torch
from conftest import toy_reviews
from torch import nn

from course_lib.cli import main
from course_lib.config import Strategy, TrainConfig
from course_lib.data import LabelMap, make_loader, to_dataset_dict, tokenize
from course_lib.features import TrainableTop, training_loaders
from course_lib.models import apply_strategy, load_causal_lm, load_classifier
from course_lib.runtime import speed
from course_lib.runtime.speed import (
    autocast,
    bf16_is_fast,
    mask_can_be_dropped,
    precision_note,
    prepare_backend,
    quantize_int8,
    usable_cores,
    without_end_padding_mask,
)
from course_lib.tasks.classify import compare_bf16, compare_int8
from course_lib.training import set_seed, train

LABELS = LabelMap(["neg", "pos"])
CPU = torch.device("cpu")
TEXTS = ["great film", "the plot was dull and boring", "really superb story", "awful"]


def test_threads_never_exceed_usable_cores():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(usable_cores() + 3)
        prepare_backend(CPU)
        assert torch.get_num_threads() == usable_cores()
    finally:
        torch.set_num_threads(before)


def _cpu_flags() -> set[str] | None:
    """The CPU's feature flags as Linux reports them, read without torch; None where unknown."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return None
    return next((set(line.split(":", 1)[1].split()) for line in lines if line.startswith("flags")), None)


FLAGS = _cpu_flags()
# Native bf16 matrix maths on this CPU, known independently of speed.bf16_is_fast (the function under
# test): AVX512-BF16 or AMX in the kernel's flags. Where no flags can be read, it is that answer.
NATIVE_BF16 = bool({"avx512_bf16", "amx_tile", "amx_bf16"} & FLAGS) if FLAGS is not None else bf16_is_fast(CPU)


def test_bf16_is_fast_exactly_where_the_cpu_flags_say_so():
    if FLAGS is None:
        pytest.skip("no /proc/cpuinfo here: the CPU's flags cannot be read without torch")
    assert bf16_is_fast(CPU) == NATIVE_BF16
    assert bf16_is_fast(torch.device("cuda"))
    assert not bf16_is_fast(torch.device("meta"))


@pytest.mark.parametrize("native", [True, False], ids=["native-bf16", "no-native-bf16"])
def test_autocast_uses_bf16_exactly_where_it_is_native(native, monkeypatch):
    monkeypatch.setattr(speed, "bf16_is_fast", lambda device: native)  # both kinds of CPU, on any CPU
    layer = nn.Linear(8, 8)
    x = torch.randn(2, 8)
    with autocast(CPU, True):
        on = layer(x).dtype
    with autocast(CPU, False):
        off = layer(x).dtype
    assert on == (torch.bfloat16 if native else torch.float32)
    assert off == torch.float32


@pytest.mark.parametrize("native", [True, False], ids=["native-bf16", "no-native-bf16"])
def test_precision_note_says_what_runs_and_how_to_change_it(native, monkeypatch):
    monkeypatch.setattr(speed, "bf16_is_fast", lambda device: native)
    assert precision_note(CPU, False) == "Matrix maths in float32 (asked for)."
    assert precision_note(CPU, True) == (
        "Matrix maths in bf16 (autocast; native on this CPU); --fp32 turns it off." if native
        else "Matrix maths in float32: this CPU has no native bf16.")


def test_int8_copy_quantises_linears_and_leaves_the_original(tiny_llama_dir):
    model, tokenizer = load_classifier(str(tiny_llama_dir), LABELS)
    model.eval()
    quantized = quantize_int8(model)
    assert not any(type(m) is nn.Linear for m in quantized.modules())
    assert any(type(m) is nn.Linear for m in model.modules())  # the original is untouched
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        full, small = model(**batch).logits, quantized(**batch).logits
    assert torch.allclose(full, small, atol=0.1)  # close, not equal: weights lost precision


def _predictions(model, loader, bf16=False, quantized=None):
    """Labels and argmax predictions computed here, without course_lib's evaluate."""
    labels, predictions = [], []
    with torch.no_grad():
        for batch in loader:
            inputs = {key: value for key, value in batch.items() if key != "labels"}
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logits = (quantized or model)(**inputs).logits.float()
            labels += batch["labels"].tolist()
            predictions += logits.argmax(dim=-1).tolist()
    return labels, predictions


def _check_report(report, labels, reference, candidate):
    """The comparison's numbers against predictions counted independently, and their relations."""
    n = len(labels)
    same = sum(a == b for a, b in zip(reference, candidate, strict=True))
    right = [sum(p == y for p, y in zip(run, labels, strict=True)) for run in (reference, candidate)]
    assert report["accuracy_float32"] == pytest.approx(right[0] / n)
    assert report["accuracy"] == pytest.approx(right[1] / n)
    assert report["agreement_with_float32"] == pytest.approx(same / n)
    assert 0.0 <= report["agreement_with_float32"] <= 1.0
    assert report["accuracy_change"] == pytest.approx(report["accuracy"] - report["accuracy_float32"])
    # Reviews both runs predict alike score alike: accuracy moves by at most the share that differ.
    assert abs(report["accuracy_change"]) <= 1.0 - report["agreement_with_float32"] + 1e-9
    assert report["seconds"] > 0 and report["seconds_float32"] > 0
    assert report["speedup"] == pytest.approx(report["seconds_float32"] / report["seconds"])


def _toy_loader(tokenizer):
    frame = toy_reviews(40, seed=3)
    tokens = tokenize(to_dataset_dict({"validation": frame}, LABELS), tokenizer, 32)["validation"]
    return make_loader(tokens, tokenizer, 16, sort_by_length=True)


def test_bf16_comparison_scores_the_same_reviews_both_ways(tiny_llama_dir):
    model, tokenizer = load_classifier(str(tiny_llama_dir), LABELS)
    loader = _toy_loader(tokenizer)
    report = compare_bf16(model, loader, 2)
    labels, float32 = _predictions(model, loader)
    _, bf16 = _predictions(model, loader, bf16=NATIVE_BF16)
    _check_report(report, labels, float32, bf16)
    if not NATIVE_BF16:  # autocast stays off: the "bf16" run is the same float32 run, prediction for prediction
        assert report["agreement_with_float32"] == 1.0 and report["accuracy_change"] == 0.0


def test_int8_comparison_counts_what_the_int8_copy_predicts(tiny_llama_dir):
    model, tokenizer = load_classifier(str(tiny_llama_dir), LABELS)
    loader = _toy_loader(tokenizer)
    report = compare_int8(model, loader, 2)
    labels, float32 = _predictions(model, loader)
    _, int8 = _predictions(model, loader, quantized=quantize_int8(model))
    _check_report(report, labels, float32, int8)


def _loaders(model_dir, logs, **changes):
    set_seed(0)
    model, tok = load_classifier(str(model_dir), LABELS)
    config = TrainConfig(epochs=2, batch_size=8, learning_rate=1e-3, train_blocks=1,
                         early_stopping_patience=None, **changes)
    trained = apply_strategy(model, config)
    frame = toy_reviews(96, seed=7)
    tokens = tokenize(to_dataset_dict({"train": frame.iloc[:64], "validation": frame.iloc[64:]}, LABELS), tok, 32)
    return training_loaders(trained, tokens, tok, config, CPU, log=logs.append), config


def test_second_run_reuses_frozen_features_and_learns_the_same(tiny_llama_dir):
    first_logs, second_logs = [], []
    (module1, train1, val1), config = _loaders(tiny_llama_dir, first_logs)
    history1 = train(module1, train1, val1, config, CPU, 2)
    (module2, train2, val2), _ = _loaders(tiny_llama_dir, second_logs)
    history2 = train(module2, train2, val2, config, CPU, 2)
    assert not any("Reusing" in line for line in first_logs)
    assert sum("Reusing" in line for line in second_logs) == 2  # train and validation
    assert history1.step_losses == history2.step_losses


def test_float32_run_never_reuses_bf16_features(tiny_llama_dir):
    first_logs, second_logs = [], []
    (module1, train1, val1), config = _loaders(tiny_llama_dir, first_logs)  # bf16 where native
    train(module1, train1, val1, config, CPU, 2)
    _loaders(tiny_llama_dir, second_logs, mixed_precision=False)
    reused = sum("Reusing" in line for line in second_logs)
    # Where bf16 is native the first run's features are bf16's, so the float32 run computes its own.
    assert reused == (0 if NATIVE_BF16 else 2)


@pytest.mark.slow  # inductor compiles C++ kernels: about 2 minutes on 2 idle cores, 5 on a busy machine
def test_compiled_training_matches_eager(tiny_llama_dir):
    histories = []
    for compiled in (False, True):
        torch._dynamo.reset()
        logs = []
        # float32: compiled and eager kernels round bf16 differently, which would hide a real mismatch
        (module, train_loader, val_loader), config = _loaders(tiny_llama_dir, logs, mixed_precision=False)
        config.compile = compiled
        config.epochs = 1
        histories.append(train(module, train_loader, val_loader, config, CPU, 2))
    eager, compiled = histories
    assert torch.allclose(torch.tensor(eager.step_losses), torch.tensor(compiled.step_losses), atol=1e-4)


def test_int8_report_is_written_with_the_accuracy_change(tiny_llama_dir, toy_csv, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["finetune", "--model", str(tiny_llama_dir), "--data", str(toy_csv), "--text-column", "review",
            "--label-column", "sentiment", "--epochs", "2", "--lr", "3e-3", "--train-blocks", "all",
            "--max-train", "0", "--batch-size", "8", "--output", str(out), "--int8-report"]
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    int8 = metrics["int8"]
    assert abs(int8["accuracy_change"] - (int8["accuracy"] - metrics["test"]["accuracy"])) < 1e-9
    assert int8["accuracy_float32"] == pytest.approx(metrics["test"]["accuracy"])
    assert 0.0 <= int8["agreement_with_float32"] <= 1.0
    assert abs(int8["accuracy_change"]) <= 1.0 - int8["agreement_with_float32"] + 1e-9
    assert int8["speedup"] == pytest.approx(int8["seconds_float32"] / int8["seconds"])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["int8_test_accuracy"] == round(int8["accuracy"], 4)


def test_busy_machine_is_warned_about_once(monkeypatch):
    from course_lib.runtime import speed

    monkeypatch.setattr(speed, "_warned_busy", False)
    assert speed.busy_warning(load=1.5, cores=2) is None  # our own work, not contention
    message = speed.busy_warning(load=4.2, cores=2)
    assert "load 4.2 on 2 cores" in message and "slower" in message
    assert speed.busy_warning(load=6.0, cores=2) is None  # once per process


def test_progress_to_a_file_is_a_few_plain_lines():
    import io

    from course_lib.progress import TqdmProgress
    from course_lib.records import EpochRecord, History

    log = io.StringIO()
    progress = TqdmProgress(file=log, every=3600)
    history = History(planned_epochs=1)
    progress.on_train_begin(500)
    for step in range(1, 501):
        progress.on_step(step, 0.5, history)
    progress.on_epoch_end(EpochRecord(1, 0.5, 0.4, 0.8, 0.8, 10.0), history)
    progress.on_train_end(history)
    lines = log.getvalue().splitlines()
    assert progress.bar is None and "\r" not in log.getvalue()
    assert lines[0].startswith("Training: batch 500/500") and lines[1].startswith("Epoch 1/1") and len(lines) == 2


def test_thread_policy_is_set_unless_the_user_chose():
    from course_lib.runtime.threads import DEFAULTS, apply_thread_policy

    env = {}
    assert apply_thread_policy(env) == DEFAULTS and env == DEFAULTS
    mine = {"OMP_WAIT_POLICY": "ACTIVE"}
    assert apply_thread_policy(mine) == {} and mine == {"OMP_WAIT_POLICY": "ACTIVE"}
    off = {"COURSE_THREAD_POLICY": "off"}
    assert apply_thread_policy(off) == {} and off == {"COURSE_THREAD_POLICY": "off"}


def test_the_policy_reaches_a_fresh_interpreter():
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    out = subprocess.run([sys.executable, "-c", "import course_lib, os; print(os.environ.get('GOMP_SPINCOUNT'))"],
                         env=env, capture_output=True, text=True, check=True).stdout.strip()
    from course_lib.runtime.threads import DEFAULTS

    assert out == DEFAULTS["GOMP_SPINCOUNT"]


def test_end_padding_mask_changes_nothing_the_classifier_reads(tiny_gpt2_dir, tiny_llama_dir):
    for folder in (tiny_gpt2_dir, tiny_llama_dir):
        model, tokenizer = load_classifier(str(folder), LABELS)
        model.eval()
        batch = tokenizer(TEXTS, padding=True, return_tensors="pt")  # padded at the ends of rows
        assert not batch["attention_mask"].all()  # there is padding for the mask to mark
        trimmed = without_end_padding_mask(dict(batch))
        assert "attention_mask" not in trimmed
        with torch.no_grad():
            assert torch.allclose(model(**batch).logits, model(**trimmed).logits, atol=1e-5)


def test_end_padding_mask_changes_nothing_the_writers_loss_reads(tiny_gpt2_dir):
    model, tokenizer = load_causal_lm(str(tiny_gpt2_dir))
    model.eval()
    batch = dict(tokenizer(TEXTS, padding=True, return_tensors="pt"))
    batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    with torch.no_grad():
        assert torch.allclose(model(**batch).loss, model(**without_end_padding_mask(batch)).loss, atol=1e-6)


def test_a_mask_that_hides_tokens_before_real_ones_is_kept():
    ids = torch.ones(2, 4, dtype=torch.long)
    left = {"input_ids": ids, "attention_mask": torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])}
    gap = {"input_ids": ids, "attention_mask": torch.tensor([[1, 0, 1, 1], [1, 1, 1, 1]])}
    assert without_end_padding_mask(left) is left
    assert without_end_padding_mask(gap) is gap


def test_mask_is_dropped_only_for_a_compiled_causal_transformers_model_on_a_gpu(tiny_llama_dir):
    model, _ = load_classifier(str(tiny_llama_dir), LABELS)
    gpu = torch.device("cuda")  # only a name here: nothing runs on it
    assert mask_can_be_dropped(model, gpu, compiled=True)
    assert not mask_can_be_dropped(model, gpu, compiled=False)
    assert not mask_can_be_dropped(model, CPU, compiled=True)
    lora = apply_strategy(model, TrainConfig(strategy=Strategy.LORA, train_blocks=2))
    assert mask_can_be_dropped(lora, gpu, compiled=True)
    assert not mask_can_be_dropped(TrainableTop(model, 2), gpu, compiled=True)  # reads the mask itself


def test_without_the_mask_compiled_attention_is_asked_for_its_causal_kernel(tiny_gpt2_dir):
    """What the dropped mask is for: torch.compile traces SDPA with is_causal=True and no mask."""
    model, tokenizer = load_classifier(str(tiny_gpt2_dir), LABELS)
    batch = dict(tokenizer(TEXTS, padding=True, return_tensors="pt"))

    def attention_calls(inputs: dict) -> list[dict]:
        calls = []

        def backend(graph_module, example_inputs):  # records the traced graph, runs it uncompiled
            calls.extend(node.kwargs for node in graph_module.graph.nodes
                         if node.target is torch.nn.functional.scaled_dot_product_attention)
            return graph_module.forward

        torch._dynamo.reset()
        torch.compile(model, backend=backend)(**inputs)
        return calls

    with_mask, without = attention_calls(batch), attention_calls(without_end_padding_mask(batch))
    assert with_mask and all(call["attn_mask"] is not None and not call["is_causal"] for call in with_mask)
    assert without and all(call["attn_mask"] is None and call["is_causal"] is True for call in without)

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

from course_lib.cli import build_parser, main, run_config_from_args
from course_lib.config import TrainConfig
from course_lib.pipeline import run_finetune
from course_lib.saving import predict

TEXTS = ["great film", "the plot was dull and boring", "really superb story", "awful"]


def _args(model_dir, csv, out, *extra):
    return ["finetune", "--model", str(model_dir), "--data", str(csv), "--text-column", "review",
            "--label-column", "sentiment", "--epochs", "2", "--lr", "3e-3", "--train-blocks", "all",
            "--max-train", "0", "--batch-size", "8", "--output", str(out), *extra]


def test_finetune_csv_with_other_columns_and_string_labels(tiny_llama_dir, toy_csv, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_args(tiny_llama_dir, toy_csv, out)) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["labels"] == ["neg", "pos"]
    assert summary["test_accuracy"] == round(metrics["test"]["accuracy"], 4)
    assert metrics["test"]["accuracy"] > 0.9  # the toy task is easy once trained
    assert len(metrics["history"]["epochs"]) == 2
    assert (out / "loss_curve.png").stat().st_size > 1000
    assert (out / "model" / "model.safetensors").exists()


def test_saved_model_predicts_the_same_in_a_new_process(tiny_llama_dir, toy_csv, tmp_path):
    args = build_parser().parse_args(_args(tiny_llama_dir, toy_csv, tmp_path / "run"))
    result = run_finetune(run_config_from_args(args), callbacks=[], log=lambda s: None)
    before = [p.label for p in predict(result.model, result.tokenizer, TEXTS)]
    proc = subprocess.run(
        [sys.executable, "-m", "course_lib", "predict", str(tmp_path / "run" / "model"), *TEXTS, "--json"],
        capture_output=True, text=True, check=True,
    )
    after = [json.loads(line)["label"] for line in proc.stdout.splitlines()]
    assert after == before


def test_same_seed_gives_same_metrics(tiny_llama_dir, toy_csv, tmp_path, fixed_threads):
    runs = []
    for name in ("a", "b"):
        args = build_parser().parse_args(_args(tiny_llama_dir, toy_csv, tmp_path / name, "--seed", "5"))
        runs.append(run_finetune(run_config_from_args(args), callbacks=[], log=lambda s: None))
    assert runs[0].test == runs[1].test
    assert runs[0].history.step_losses == runs[1].history.step_losses


def _run_cli(capsys, *args) -> SimpleNamespace:
    """The command as a user types it, in this process (a new interpreter costs seconds of imports)."""
    returncode = main(list(args))
    printed = capsys.readouterr()
    return SimpleNamespace(returncode=returncode, stdout=printed.out, stderr=printed.err)


def test_wrong_column_gives_one_clear_line_and_writes_nothing(toy_csv, tmp_path, capsys):
    out = tmp_path / "run"  # no model is read or fetched before the data is checked
    proc = _run_cli(capsys, "finetune", "--data", str(toy_csv), "--output", str(out),
                    "--model", str(tmp_path / "none"))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: Column(s) ['text', 'label'] not found. The data has columns "
        "['review', 'sentiment', 'group']; choose them with --text-column / --label-column "
        "(or --group-column)."
    ]
    assert not out.exists()


def test_bad_learning_rate_fails_before_loading_anything(tmp_path, capsys):
    proc = _run_cli(capsys, "finetune", "--lr", "0", "--model", "no-such-model", "--output", str(tmp_path / "x"))
    assert proc.returncode == 2 and "learning_rate must be above 0" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_predict_rejects_a_folder_that_is_not_a_model(tmp_path, capsys):
    proc = _run_cli(capsys, "predict", str(tmp_path), "some text")
    assert proc.returncode == 2 and "not a saved course model" in proc.stderr


def test_unknown_model_name_gets_a_clear_error(toy_csv, tmp_path, monkeypatch):
    proc = subprocess.run(
        [sys.executable, "-m", "course_lib", "finetune", "--model", str(Path(tmp_path) / "no-model"),
         "--data", str(toy_csv), "--text-column", "review", "--label-column", "sentiment",
         "--output", str(tmp_path / "o")],
        capture_output=True, text=True, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 2 and "Could not load model" in proc.stderr


def test_too_many_blocks_fails_before_loading_weights(tiny_llama_dir, toy_csv, tmp_path, capsys):
    out = tmp_path / "run"
    proc = _run_cli(capsys, *_args(tiny_llama_dir, toy_csv, out, "--train-blocks", "9"))  # the last one counts
    assert proc.returncode == 2 and "has only 4 blocks" in proc.stderr
    assert not out.exists()


def test_ctrl_c_then_resume_gives_the_uninterrupted_result(tiny_llama_dir, toy_csv, tmp_path, fixed_threads):
    from course_lib.errors import TrainingInterrupted
    from course_lib.pipeline import checkpoint_for
    from course_lib.progress import TrainingCallback

    class CtrlC(TrainingCallback):
        def on_step(self, step, loss, history):
            if step == history.steps_per_epoch + 2:
                raise KeyboardInterrupt

    def config(name):
        args = build_parser().parse_args(_args(tiny_llama_dir, toy_csv, tmp_path / name,
                                               "--epochs", "3", "--train-blocks", "2"))
        return run_config_from_args(args)

    quiet = {"log": lambda s: None}
    expected = run_finetune(config("a"), callbacks=[], **quiet)
    try:
        run_finetune(config("b"), callbacks=[CtrlC()], **quiet)
        raise AssertionError("the interrupt did not stop training")
    except TrainingInterrupted as exc:
        assert "--resume" in str(exc)
    assert not (tmp_path / "b").exists() and checkpoint_for(config("b")).exists()
    resumed = run_finetune(config("b"), callbacks=[], resume=True, **quiet)
    assert resumed.test == expected.test
    assert resumed.history.step_losses == expected.history.step_losses
    assert not checkpoint_for(config("b")).exists()  # cleared once results are saved


def test_resume_without_checkpoint_is_a_clear_error(tmp_path, capsys):
    proc = _run_cli(capsys, "finetune", "--resume", "--output", str(tmp_path / "x"), "--train-blocks", "all")
    assert proc.returncode == 2 and "Nothing to resume" in proc.stderr


def test_finetune_defaults_are_the_measured_ten_minute_run(tiny_llama_dir, toy_csv, tmp_path):
    config = run_config_from_args(build_parser().parse_args(["finetune"]))
    assert (config.data.max_train_examples, config.data.max_val_examples) == (9000, 500)
    assert (config.train.epochs, config.train.train_blocks, config.train.strategy.value) == (2, 12, "top-k")
    assert config.train.warmup_fraction == 0.03  # a short ramp: the first minutes count
    assert config.train.mixed_precision  # bf16 where native; --fp32 turns it off
    warm = run_config_from_args(build_parser().parse_args(["finetune", "--warmup", "0.1"]))
    assert warm.train.warmup_fraction == 0.1
    writer = run_config_from_args(build_parser().parse_args(["finetune", "--task", "generate"]))
    assert writer.train.warmup_fraction == TrainConfig.for_generation().warmup_fraction  # its own default
    assert not run_config_from_args(build_parser().parse_args(["finetune", "--fp32"])).train.mixed_precision
    # Parsing reads no model; a model with fewer blocks than the default trains all of them.
    small = _args(tiny_llama_dir, toy_csv, tmp_path / "small")[:-10]
    assert main([*small, "--max-train", "0", "--output", str(tmp_path / "small")]) == 0
    assert json.loads((tmp_path / "small" / "model" / "course.json").read_text())["config"]["train"][
        "train_blocks"] == 4
    all_reviews = ["finetune", "--max-train", "0", "--max-val", "0"]
    everything = run_config_from_args(build_parser().parse_args(all_reviews))
    assert everything.data.max_train_examples is None and everything.data.max_val_examples is None

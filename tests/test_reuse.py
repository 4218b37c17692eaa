"""Chapters 6-8 reuse the learner's saved model: compared by what changes the weights, never overwritten."""

from dataclasses import replace

from course_lib.config import DataConfig, RunConfig, TrainConfig
from course_lib.data import LabelMap
from course_lib.models import load_classifier
from course_lib.pipeline import load_or_train
from course_lib.saving import save_finetuned


def _saved_run(tiny_llama_dir, toy_csv, out, **train):
    run = RunConfig(model=str(tiny_llama_dir), output_dir=out,
                    data=DataConfig(path=str(toy_csv), text_column="review", label_column="sentiment"),
                    train=TrainConfig(epochs=1, batch_size=16, **train))
    model, tok = load_classifier(str(tiny_llama_dir), LabelMap(["neg", "pos"]))
    save_finetuned(out / "model", model, tok, LabelMap(["neg", "pos"]), run.to_dict())
    return run


def test_a_copied_model_is_reused_whatever_its_folder(tiny_llama_dir, toy_csv, tmp_path):
    run = _saved_run(tiny_llama_dir, toy_csv, tmp_path / "instructor" / "run")
    copy = tmp_path / "laptop" / "run"
    copy.parent.mkdir()
    (tmp_path / "instructor" / "run").rename(copy)
    messages = []
    _, _, info = load_or_train(replace(run, output_dir=copy, int8_report=True,
                                       train=replace(run.train, eval_batch_size=8)), log=messages.append)
    assert "same settings" in messages[0] and info["config"]["output_dir"].startswith(str(tmp_path / "instructor"))


def test_the_learners_own_training_settings_are_reused_and_named(tiny_llama_dir, toy_csv, tmp_path):
    run = _saved_run(tiny_llama_dir, toy_csv, tmp_path / "run", learning_rate=5e-4)
    messages = []
    load_or_train(replace(run, train=replace(run.train, learning_rate=1e-4)), log=messages.append)
    assert len(messages) == 1 and "learning_rate 0.0005 (profile 0.0001)" in messages[0]


def test_a_model_trained_on_other_data_is_kept_not_overwritten(tiny_llama_dir, toy_csv, tmp_path):
    run = _saved_run(tiny_llama_dir, toy_csv, tmp_path / "run")
    messages = []
    other_data = replace(run, data=replace(run.data, seed=7))
    load_or_train(other_data, log=messages.append)
    assert (tmp_path / "run.previous-1" / "model" / "course.json").exists()
    assert (tmp_path / "run" / "metrics.json").exists()  # trained anew in the run's own folder
    assert any("kept in" in m for m in messages)

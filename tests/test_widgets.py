"""The notebook widgets, clicked as a learner would click them."""

import threading
import time

import torch
from conftest import toy_reviews

from course_lib.config import TrainConfig
from course_lib.data import LabelMap, make_loader, to_dataset_dict, tokenize
from course_lib.models import freeze_for_training, load_classifier
from course_lib.notebook.widgets import HEADLESS_ENV, HyperparameterPanel, PredictBox
from course_lib.progress import TrainingCallback
from course_lib.saving import predict
from course_lib.training import set_seed, train

LABELS = LabelMap(["neg", "pos"])


def _train_fn(model_dir, slow_from_step=None):
    """A train_fn(config, callbacks, log) on toy reviews; optionally slowed so a Stop can land."""
    calls = []
    reached = threading.Event()

    class Slow(TrainingCallback):
        def on_step(self, step, loss, history):
            if slow_from_step is not None and step >= slow_from_step:
                reached.set()
                time.sleep(0.05)

    def train_fn(config, callbacks, log):
        set_seed(config.seed)
        model, tok = load_classifier(str(model_dir), LABELS)
        freeze_for_training(model, config.train_blocks)
        frame = toy_reviews(96)
        tokens = tokenize(to_dataset_dict({"train": frame[:64], "validation": frame[64:]}, LABELS),
                          tok, config.max_length)
        calls.append(config)
        log(f"training {len(frame)} toy reviews")
        return train(model, make_loader(tokens["train"], tok, config.batch_size, shuffle=True),
                     make_loader(tokens["validation"], tok, 32), config, torch.device("cpu"), 2,
                     [*callbacks, Slow()])
    train_fn.reached = reached
    return train_fn, calls


def _output_text(panel) -> str:
    return "".join(o.get("text", "") for o in panel.output.outputs)


def test_train_button_trains_in_the_background_with_the_typed_values(tiny_llama_dir):
    train_fn, calls = _train_fn(tiny_llama_dir)
    panel = HyperparameterPanel(train_fn, TrainConfig(epochs=1, batch_size=8), max_blocks=4)
    assert panel.image.layout.display == "none"  # no broken-image icon before the first drawing
    panel.epochs.value = 2
    panel.learning_rate.value = "5e-4"  # typed: kept exactly, not snapped to a slider step
    panel.train_blocks.value = 4
    panel.train_button.click()
    panel.wait(120)
    assert not panel.running and panel.error is None
    assert calls[0].epochs == 2 and calls[0].train_blocks == 4 and calls[0].learning_rate == 5e-4
    assert panel.trained_config == calls[0]
    assert len(panel.history.epochs) == 2
    assert panel.plot.redraws >= 3  # during the epoch, after each epoch, at the end
    ax = panel.plot.figure.axes[0]
    assert len(ax.get_lines()[0].get_xdata()) == len(panel.history.step_losses)
    assert "Best epoch" in panel.status.value
    assert not panel.train_button.disabled and panel.stop_button.disabled
    assert bytes(panel.image.value[:4]) == b"\x89PNG" and panel.image.layout.display is None
    text = _output_text(panel)
    assert "training 96 toy reviews" in text and "Epoch 1/2" in text and "Epoch 2/2" in text
    assert panel.bar.value == panel.bar.max == 16 and "batch 16/16" in panel.progress_line.value
    assert "left" not in panel.progress_line.value and "in all" in panel.progress_line.value  # no countdown


def test_stop_works_on_every_click(tiny_llama_dir):
    for attempt in range(2):  # ipykernel once delivered only the first stop; a flag works every time
        train_fn, _ = _train_fn(tiny_llama_dir, slow_from_step=3)
        panel = HyperparameterPanel(train_fn, TrainConfig(epochs=10, batch_size=8), max_blocks=4)
        for _ in range(attempt + 1):
            train_fn.reached.clear()
            panel.train_button.click()
            assert train_fn.reached.wait(60)
            assert panel.status.value.startswith("training")  # the status follows the run
            panel.stop_button.click()
            panel.wait(60)
            assert not panel.running
            assert 3 <= len(panel.history.step_losses) < 80  # 10 epochs would be 80 batches
            assert "stopped after" in panel.status.value and not panel.train_button.disabled
            assert "left" not in panel.progress_line.value  # a stopped run shows no countdown
            assert _output_text(panel).count("training 96 toy reviews") == 1  # each run's log starts fresh
            assert panel.image.layout.display is None  # this run's plot (hidden again until it drew)
            assert panel.trained_config is None and panel.result is None  # nothing finished


def test_bad_values_are_reported_not_trained(tiny_llama_dir):
    train_fn, calls = _train_fn(tiny_llama_dir)
    panel = HyperparameterPanel(train_fn, TrainConfig(), max_blocks=4)
    panel.learning_rate.value = "fast please"
    panel.train_button.click()
    panel.wait(5)
    assert calls == [] and "not a number" in panel.error and "1e-4" in panel.status.value
    panel.learning_rate.value = "1e-4"
    panel.batch_size.options = [0, 8]
    panel.batch_size.value = 0
    assert panel.train_now() is None
    assert calls == [] and "batch_size" in panel.error and "batch_size" in panel.status.value


def test_errors_while_training_show_in_the_panel():
    def broken(config, callbacks, log):
        log("loading")
        raise RuntimeError("shapes do not match")

    panel = HyperparameterPanel(broken, TrainConfig(), max_blocks=4)
    panel.train_button.click()
    panel.wait(10)
    assert "RuntimeError: shapes do not match" in panel.status.value
    errors = "".join(o.get("text", "") for o in panel.output.outputs if o.get("name") == "stderr")
    assert "Traceback" in errors and panel.trained_config is None and not panel.train_button.disabled


def test_train_is_pressed_only_when_nobody_is_at_the_screen(tiny_llama_dir, monkeypatch, capsys):
    train_fn, calls = _train_fn(tiny_llama_dir)
    panel = HyperparameterPanel(train_fn, TrainConfig(epochs=1, batch_size=8), max_blocks=4)
    monkeypatch.delenv(HEADLESS_ENV, raising=False)
    assert panel.press_train_if_headless() is None and calls == []
    assert "press Train" in capsys.readouterr().out
    monkeypatch.setenv(HEADLESS_ENV, "1")
    history = panel.press_train_if_headless()
    assert len(calls) == 1 and len(history.epochs) == 1


def test_estimate_follows_the_settings():
    from course_lib.notebook.estimate import CostModel

    cost = CostModel(seconds_per_token=1e-4, train_lengths=[20, 40, 80] * 100, val_lengths=[30] * 30, blocks=30)
    panel = HyperparameterPanel(lambda *a: None, TrainConfig(), max_blocks=30, estimate=cost.epoch_seconds)
    top_k = panel.estimate.value
    assert "estimated training time" in top_k
    panel.strategy.value = "full"
    assert panel.estimate.value != top_k
    assert cost.seconds(panel.config()) > 3 * cost.seconds(TrainConfig())
    panel.learning_rate.value = "abc"
    assert "not a number" in panel.estimate.value


def test_predict_box_classifies_each_line(tiny_llama_dir):
    model, tok = load_classifier(str(tiny_llama_dir), LABELS)
    box = PredictBox(lambda texts: predict(model, tok, texts))
    box.text.value = "great film\n\nawful plot"
    box.button.click()
    assert [p.text for p in box.predictions] == ["great film", "awful plot"]
    assert box.result.value.count("<tr>") == 3
    box.text.value = "   "
    assert box.on_predict_clicked() == [] and "Type" in box.result.value


def test_strategy_dropdown_sets_strategy_and_its_learning_rate(tiny_llama_dir):
    from course_lib.config import RECOMMENDED_LR, Strategy

    train_fn, _ = _train_fn(tiny_llama_dir)
    panel = HyperparameterPanel(train_fn, TrainConfig(), max_blocks=4)
    assert panel.strategy.value == "top-k" and not panel.train_blocks.disabled
    panel.strategy.value = "lora"
    config = panel.config()
    assert config.strategy == Strategy.LORA and panel.train_blocks.disabled
    assert config.learning_rate == RECOMMENDED_LR[Strategy.LORA]


def test_generation_playground_shows_each_models_text_and_refuses_bad_settings():
    from course_lib.config import DecodeConfig
    from course_lib.errors import ConfigError
    from course_lib.notebook.widgets import GenerationPlayground

    calls = []

    def write(prompt, decode):
        calls.append(decode)
        if decode.max_new_tokens > 100:
            raise ConfigError("too long for this test")
        return {"pretrained": f"{prompt} <base>", "fine-tuned": f"{prompt} <tuned & better>"}

    playground = GenerationPlayground(write, prompt="name: The Eagle")
    assert playground.temperature.disabled  # greedy by default: temperature does not apply
    texts = playground.on_write_clicked()
    assert texts == {"pretrained": "name: The Eagle <base>", "fine-tuned": "name: The Eagle <tuned & better>"}
    assert "&lt;tuned &amp; better&gt;" in playground.result.value and not calls[-1].do_sample
    playground.sample.value = True
    playground.temperature.value = 1.5
    playground.button.click()  # the real button, as a learner clicks it
    assert calls[-1].do_sample and calls[-1].temperature == 1.5 and not playground.temperature.disabled
    first_seed = calls[-1].seed
    playground.button.click()  # again: a new sample, not the same text
    assert calls[-1].seed == first_seed + 1 and f"sampled with seed {first_seed + 1}" in playground.result.value
    playground.seed.value = first_seed  # a seed typed on purpose repeats its sample
    playground.button.click()
    assert calls[-1].seed == first_seed
    playground.max_new_tokens.value = 128
    assert playground.on_write_clicked() == {} and "too long" in playground.result.value
    assert not playground.button.disabled
    playground.prompt.value = "  "
    assert playground.on_write_clicked() == {} and "Type a prompt" in playground.result.value
    assert isinstance(playground.decode(), DecodeConfig)


def test_countdown_starts_from_the_estimate_and_the_end_compares_with_it():
    import ipywidgets as w

    from course_lib.notebook.widgets import PanelProgress
    from course_lib.records import History

    bar, status, line = w.IntProgress(), w.HTML(), w.HTML()
    progress = PanelProgress(bar, status, line, lambda s: None, estimate=[60.0, 20.0])  # seconds per epoch
    progress.on_train_begin(20)
    progress.on_step(1, 0.7, History(planned_epochs=2, steps_per_epoch=10))
    # A first batch in no time: the estimate still counts for 2/3 (74 s to go × 2/3), not "0:00 left".
    assert line.value.endswith("about 0:49 left")
    progress.end()
    assert "in all (estimated 1:20)" in line.value

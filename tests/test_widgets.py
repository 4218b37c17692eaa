"""The notebook widgets, clicked as a learner would click them."""

import torch
from conftest import toy_reviews

from course_lib.config import TrainConfig
from course_lib.data import LabelMap, make_loader, to_dataset_dict, tokenize
from course_lib.models import freeze_for_training, load_classifier
from course_lib.saving import predict
from course_lib.training import set_seed, train
from course_lib.widgets import HyperparameterPanel, PredictBox

LABELS = LabelMap(["neg", "pos"])


def _train_fn(model_dir):
    calls = []

    def train_fn(config, callbacks):
        set_seed(config.seed)
        model, tok = load_classifier(str(model_dir), LABELS)
        freeze_for_training(model, config.train_blocks)
        frame = toy_reviews(96)
        tokens = tokenize(to_dataset_dict({"train": frame[:64], "validation": frame[64:]}, LABELS),
                          tok, config.max_length)
        calls.append(config)
        return train(model, make_loader(tokens["train"], tok, config.batch_size, shuffle=True),
                     make_loader(tokens["validation"], tok, 32), config, torch.device("cpu"), 2,
                     callbacks)
    return train_fn, calls


def test_train_button_trains_with_the_slider_values_and_draws(tiny_llama_dir):
    train_fn, calls = _train_fn(tiny_llama_dir)
    panel = HyperparameterPanel(train_fn, TrainConfig(epochs=1, batch_size=8), max_blocks=4)
    panel.epochs.value = 2
    panel.learning_rate.value = 1e-3
    panel.train_blocks.value = 4
    panel.train_button.click()
    assert calls[0].epochs == 2 and calls[0].train_blocks == 4
    assert abs(calls[0].learning_rate - 1e-3) < 1e-12
    assert len(panel.history.epochs) == 2
    assert panel.plot.redraws >= 3  # during the epoch, after each epoch, at the end
    ax = panel.plot.figure.axes[0]
    assert len(ax.get_lines()[0].get_xdata()) == len(panel.history.step_losses)
    assert "best epoch" in panel.status.value
    assert not panel.train_button.disabled
    assert bytes(panel.image.value[:4]) == b"\x89PNG"  # the figure, redrawn in place


def test_bad_slider_values_are_reported_not_trained(tiny_llama_dir):
    train_fn, calls = _train_fn(tiny_llama_dir)
    panel = HyperparameterPanel(train_fn, TrainConfig(), max_blocks=4)
    panel.batch_size.options = [0, 8]
    panel.batch_size.value = 0
    assert panel.on_train_clicked() is None
    assert calls == [] and "batch_size" in panel.error and "batch_size" in panel.status.value


def test_predict_box_classifies_each_line(tiny_llama_dir):
    model, tok = load_classifier(str(tiny_llama_dir), LABELS)
    box = PredictBox(lambda texts: predict(model, tok, texts))
    box.text.value = "great film\n\nawful plot"
    box.button.click()
    assert [p.text for p in box.predictions] == ["great film", "awful plot"]
    assert box.result.value.count("<tr>") == 3
    box.text.value = "   "
    assert box.on_predict_clicked() == [] and "Type" in box.result.value


def test_stop_button_keeps_the_history_drawn_so_far(tiny_llama_dir):
    from course_lib.progress import TrainingCallback

    class StopAtStep(TrainingCallback):
        def on_step(self, step, loss, history):
            if step == 12:
                raise KeyboardInterrupt  # what Jupyter's stop button raises in the kernel

    train_fn, _ = _train_fn(tiny_llama_dir)
    panel = HyperparameterPanel(lambda config, callbacks: train_fn(config, [*callbacks, StopAtStep()]),
                                TrainConfig(epochs=3, batch_size=8), max_blocks=4)
    history = panel.on_train_clicked()
    assert history is not None and len(history.step_losses) == 12
    assert "interrupted" in panel.status.value and not panel.train_button.disabled


def test_strategy_dropdown_sets_strategy_and_its_learning_rate(tiny_llama_dir):
    from course_lib.config import RECOMMENDED_LR, Strategy

    train_fn, _ = _train_fn(tiny_llama_dir)
    panel = HyperparameterPanel(train_fn, TrainConfig(), max_blocks=4)
    assert panel.strategy.value == "top-k" and not panel.train_blocks.disabled
    panel.strategy.value = "lora"
    config = panel.config()
    assert config.strategy == Strategy.LORA and panel.train_blocks.disabled
    assert abs(config.learning_rate - RECOMMENDED_LR[Strategy.LORA]) < 1e-9


def test_generation_playground_shows_each_models_text_and_refuses_bad_settings():
    from course_lib.config import DecodeConfig
    from course_lib.errors import ConfigError
    from course_lib.widgets import GenerationPlayground

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
    playground.max_new_tokens.value = 128
    assert playground.on_write_clicked() == {} and "too long" in playground.result.value
    assert not playground.button.disabled
    playground.prompt.value = "  "
    assert playground.on_write_clicked() == {} and "Type a prompt" in playground.result.value
    assert isinstance(playground.decode(), DecodeConfig)

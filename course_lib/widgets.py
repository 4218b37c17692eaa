"""Widgets: a hyperparameter panel with a Train button and a live loss plot; a generation playground.

The panel only collects settings and draws; training itself is the plain `train` function,
reached through a `train_fn(config, callbacks)` the notebook passes in. Tests click the button
exactly as a learner would, through `panel.train_button.click()`.
"""

from __future__ import annotations

import html
import io
from collections.abc import Callable
from dataclasses import replace

import ipywidgets as w
from matplotlib.figure import Figure

from course_lib.config import RECOMMENDED_LR, DecodeConfig, Strategy, TrainConfig
from course_lib.errors import CourseError
from course_lib.plots import plot_loss_curves
from course_lib.progress import TrainingCallback
from course_lib.training import EpochRecord, History

TrainFn = Callable[[TrainConfig, list[TrainingCallback]], History]


class LivePlot(TrainingCallback):
    """Redraws the loss plot every `every` steps and after each epoch."""

    def __init__(self, show: Callable[[Figure], None], every: int = 5):
        self.show = show
        self.every = every
        self.figure = Figure(figsize=(7, 4))
        self.redraws = 0
        self.history: History | None = None  # the latest one drawn, kept if training is stopped

    def on_step(self, step: int, loss: float, history: History) -> None:
        if step % self.every == 0:
            self.redraw(history)

    def on_epoch_end(self, record: EpochRecord, history: History) -> None:
        self.redraw(history)

    def on_train_end(self, history: History) -> None:
        self.redraw(history)

    def redraw(self, history: History) -> None:
        """Draw the current history into the same figure and show it."""
        self.history = history
        plot_loss_curves(history, figure=self.figure)
        self.show(self.figure)
        self.redraws += 1


class HyperparameterPanel:
    """Sliders for the main hyperparameters, a Train button, a live plot and a status line."""

    def __init__(self, train_fn: TrainFn, defaults: TrainConfig, max_blocks: int):
        self.train_fn = train_fn
        self.defaults = defaults
        self.plot: LivePlot | None = None
        self.history: History | None = None
        self.error: str | None = None
        self.learning_rate = w.FloatLogSlider(
            value=defaults.learning_rate, base=10, min=-6, max=-2, step=0.25,
            description="learning rate", readout_format=".0e", style={"description_width": "110px"})
        self.epochs = w.IntSlider(value=defaults.epochs, min=1, max=10, description="epochs")
        self.batch_size = w.Dropdown(options=[4, 8, 16, 32, 64], value=defaults.batch_size,
                                     description="batch size")
        self.max_length = w.IntSlider(value=defaults.max_length, min=8, max=256, step=8,
                                      description="max length")
        self.strategy = w.Dropdown(options=[s.value for s in Strategy], value=Strategy(defaults.strategy).value,
                                   description="strategy")
        self.train_blocks = w.IntSlider(value=defaults.train_blocks or 0, min=0, max=max_blocks,
                                        description="train blocks")
        # The block count only means something for top-k; greying it out says so.
        self.strategy.observe(self._on_strategy, names="value")
        self._on_strategy()
        self.warmup = w.FloatSlider(value=defaults.warmup_fraction, min=0.0, max=0.5, step=0.05,
                                    description="warm-up")
        self.train_button = w.Button(description="Train", button_style="primary", icon="play")
        self.status = w.HTML()
        # An Image widget (not an Output area) shows the plot: it updates in place in
        # JupyterLab, in a headless run and in tests alike.
        self.image = w.Image(format="png")
        self.train_button.on_click(self.on_train_clicked)

    def config(self) -> TrainConfig:
        """The TrainConfig the sliders describe (validated before any training)."""
        config = replace(
            self.defaults,
            learning_rate=float(self.learning_rate.value),
            epochs=int(self.epochs.value),
            batch_size=int(self.batch_size.value),
            max_length=int(self.max_length.value),
            strategy=Strategy(self.strategy.value),
            train_blocks=int(self.train_blocks.value),
            warmup_fraction=float(self.warmup.value),
        )
        config.validate()
        return config

    def widget(self) -> w.Widget:
        """The whole panel, ready for display()."""
        sliders = w.VBox([self.strategy, self.learning_rate, self.epochs, self.batch_size, self.max_length,
                          self.train_blocks, self.warmup])
        return w.VBox([sliders, w.HBox([self.train_button, self.status]), self.image])

    def _on_strategy(self, _change: dict | None = None) -> None:
        """Enable the block slider for top-k only, and move the learning rate to the strategy's."""
        strategy = Strategy(self.strategy.value)
        self.train_blocks.disabled = strategy != Strategy.TOP_K
        if _change is not None:
            self.learning_rate.value = RECOMMENDED_LR[strategy]

    def on_train_clicked(self, _button: w.Button | None = None) -> History | None:
        """What the Train button does: validate, train with a live plot, report the result."""
        self.error = None
        try:
            config = self.config()
        except CourseError as exc:
            self.error = str(exc)
            self.status.value = f"<b style='color:#b00'>{exc}</b>"
            return None
        self.train_button.disabled = True
        self.status.value = "training…"
        self.plot = LivePlot(self._show)
        try:
            self.history = self.train_fn(config, [self.plot])
        except KeyboardInterrupt:
            # The notebook's stop button: keep what was learned and drawn so far.
            self.history = self.plot.history
            self.status.value = "interrupted: the model keeps its best weights so far"
            return self.history
        finally:
            self.train_button.disabled = False
        self.status.value = _summary(self.history)
        return self.history

    def _show(self, figure: Figure) -> None:
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=90)
        self.image.value = buffer.getvalue()


def _summary(history: History) -> str:
    """One line: the best epoch's validation accuracy."""
    if not history.epochs:
        return "no epoch finished"
    best = min(history.epochs, key=lambda r: r.val_loss)
    return (f"best epoch {best.epoch}: val loss {best.val_loss:.3f}, "
            f"val accuracy {best.val_accuracy:.3f}")



class PredictBox:
    """A text box for the learner's own reviews and a button that classifies them."""

    def __init__(self, predict_fn: Callable[[list[str]], list], placeholder: str = ""):
        self.predict_fn = predict_fn
        self.text = w.Textarea(value=placeholder, layout=w.Layout(width="100%", height="80px"),
                               description="reviews", placeholder="one review per line")
        self.button = w.Button(description="Classify", button_style="info", icon="search")
        self.result = w.HTML()
        self.predictions: list = []
        self.button.on_click(self.on_predict_clicked)

    def widget(self) -> w.Widget:
        """The box, ready for display()."""
        return w.VBox([self.text, self.button, self.result])

    def on_predict_clicked(self, _button: w.Button | None = None) -> list:
        """Classify each non-empty line and show label and confidence."""
        lines = [line for line in self.text.value.splitlines() if line.strip()]
        if not lines:
            self.result.value = "<i>Type at least one review.</i>"
            self.predictions = []
            return []
        self.predictions = self.predict_fn(lines)
        rows = "".join(f"<tr><td><b>{html.escape(p.label)}</b></td><td>{p.score:.2f}</td>"
                       f"<td>{html.escape(p.text)}</td></tr>" for p in self.predictions)
        self.result.value = f"<table><tr><th>label</th><th>p</th><th>review</th></tr>{rows}</table>"
        return self.predictions


WriteFn = Callable[[str, DecodeConfig], dict[str, str]]


class GenerationPlayground:
    """A prompt box, decoding controls and a Write button that shows each model's text side by side.

    `write_fn(prompt, decode)` returns {model name: text}; the notebook passes one that calls
    `generation.generate` for the pretrained and the fine-tuned model.
    """

    def __init__(self, write_fn: WriteFn, prompt: str = "", defaults: DecodeConfig | None = None):
        defaults = defaults or DecodeConfig()
        self.write_fn = write_fn
        self.texts: dict[str, str] = {}
        self.error: str | None = None
        style = {"description_width": "120px"}
        self.prompt = w.Textarea(value=prompt, description="prompt", style=style,
                                 layout=w.Layout(width="100%", height="60px"))
        self.sample = w.Checkbox(value=defaults.do_sample, description="sample (off: greedy)", style=style)
        self.temperature = w.FloatSlider(value=defaults.temperature, min=0.1, max=2.0, step=0.1,
                                         description="temperature", style=style)
        self.top_p = w.FloatSlider(value=defaults.top_p, min=0.05, max=1.0, step=0.05, description="top-p",
                                   style=style)
        self.max_new_tokens = w.IntSlider(value=defaults.max_new_tokens, min=4, max=128, step=4,
                                          description="max new tokens", style=style)
        self.seed = w.IntText(value=defaults.seed, description="seed", style=style)
        self.button = w.Button(description="Write", button_style="primary", icon="pencil")
        self.result = w.HTML()
        # Temperature and top-p only matter when sampling; greying them out says so.
        self.sample.observe(self._on_sample, names="value")
        self._on_sample()
        self.button.on_click(self.on_write_clicked)

    def decode(self) -> DecodeConfig:
        """The DecodeConfig the controls describe (validated)."""
        config = DecodeConfig(max_new_tokens=int(self.max_new_tokens.value), do_sample=bool(self.sample.value),
                              temperature=float(self.temperature.value), top_p=float(self.top_p.value),
                              seed=int(self.seed.value), batch_size=1)
        config.validate()
        return config

    def widget(self) -> w.Widget:
        """The playground, ready for display()."""
        controls = w.VBox([self.sample, self.temperature, self.top_p, self.max_new_tokens, self.seed])
        return w.VBox([self.prompt, controls, self.button, self.result])

    def _on_sample(self, _change: dict | None = None) -> None:
        self.temperature.disabled = self.top_p.disabled = self.seed.disabled = not self.sample.value

    def on_write_clicked(self, _button: w.Button | None = None) -> dict[str, str]:
        """What the Write button does: each model writes a response, shown in one row."""
        self.error, self.texts = None, {}
        prompt = self.prompt.value.strip()
        if not prompt:
            self.result.value = "<i>Type a prompt, e.g. name: The Eagle, food: French, area: riverside</i>"
            return {}
        self.button.disabled = True
        self.result.value = "<i>writing…</i>"
        try:
            self.texts = self.write_fn(prompt, self.decode())
        except CourseError as exc:
            self.error = str(exc)
            self.result.value = f"<b style='color:#b00'>{html.escape(str(exc))}</b>"
            return {}
        finally:
            self.button.disabled = False
        cells = "".join(f"<td style='vertical-align:top;padding:4px 12px'>{html.escape(t)}</td>"
                        for t in self.texts.values())
        heads = "".join(f"<th style='text-align:left;padding:4px 12px'>{html.escape(n)}</th>" for n in self.texts)
        self.result.value = f"<table><tr>{heads}</tr><tr>{cells}</tr></table>"
        return self.texts

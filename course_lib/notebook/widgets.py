"""Widgets: a hyperparameter panel with a Train button and a live loss plot; a generation playground.

The panel only collects settings and draws; training itself is the plain `train` function,
reached through a `train_fn(config, callbacks, log)` the notebook passes in. Tests click the
buttons exactly as a learner would, through `panel.train_button.click()`.
"""

from __future__ import annotations

import html
import io
import os
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import ipywidgets as w
from matplotlib.figure import Figure

from course_lib.config import RECOMMENDED_LR, DecodeConfig, Strategy, TrainConfig
from course_lib.errors import ConfigError, CourseError, TrainingStopped
from course_lib.notebook.estimate import format_duration, remaining_seconds
from course_lib.plots import plot_loss_curves
from course_lib.progress import StopSwitch, TrainingCallback, epoch_line
from course_lib.records import EpochRecord, History

# train_fn(config, callbacks, log) trains and returns a History, or an object with .history.
TrainFn = Callable[[TrainConfig, list[TrainingCallback], Callable[[str], None]], Any]
HEADLESS_ENV = "COURSE_HEADLESS"  # "1": nobody is at the screen (nbval, scripted runs) and cells press Train


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


class PanelProgress(TrainingCallback):
    """A progress bar, a status that follows the run, a one-line countdown and the epoch lines."""

    def __init__(self, bar: w.IntProgress, status: w.HTML, line: w.HTML, log: Callable[[str], None],
                 estimate: Sequence[float] | None = None):
        self.bar, self.status, self.line, self.log = bar, status, line, log
        self.estimate = estimate  # seconds per epoch, as the panel showed them before Train
        self.start = time.perf_counter()
        self.first_step = 0
        self.bar.value, self.line.value = 0, ""
        self.status.value = "loading the model and the data…"

    def on_train_begin(self, total_steps: int) -> None:
        self.bar.max, self.bar.value = max(total_steps, 1), 0
        self.start = time.perf_counter()
        self.status.value = "training…"

    def on_step(self, step: int, loss: float, history: History) -> None:
        if self.bar.value == 0:
            self.first_step = step - 1  # a resumed run starts counting after its saved steps
        done = step - self.first_step
        self.bar.value = done
        elapsed = time.perf_counter() - self.start
        if self.estimate and history.steps_per_epoch:  # the estimate, corrected by the batches so far
            left = remaining_seconds(self.estimate, history.steps_per_epoch, done, elapsed)
        else:  # no estimate: extrapolate from the batches so far
            left = elapsed / done * (self.bar.max - done)
        self.line.value = (f"batch {done}/{self.bar.max} · loss {loss:.3f} · {_clock(elapsed)} elapsed, "
                           f"about {_clock(left)} left")

    def on_epoch_end(self, record: EpochRecord, history: History) -> None:
        self.log(epoch_line(record, history.planned_epochs))
        if record.epoch < history.planned_epochs:
            self.status.value = f"training… epoch {record.epoch} of {history.planned_epochs} done"

    def end(self) -> None:
        """The run is over (finished, stopped or failed): the countdown gives way to the time it took."""
        if self.bar.value:
            estimated = f" (estimated {_clock(sum(self.estimate))})" if self.estimate else ""
            self.line.value = (f"batch {self.bar.value}/{self.bar.max} · "
                               f"{_clock(time.perf_counter() - self.start)} in all{estimated}")


def _clock(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}:{secs:02d}"


class HyperparameterPanel:
    """Controls for the main hyperparameters, Train and Stop, a live loss plot and an output area.

    A click on Train runs `train_fn(config, callbacks, log)` in a background thread, so the
    kernel stays free to receive the Stop click; `train_now()` runs it in the calling thread
    (for headless runs and tests, where the next cell needs the result).
    """

    def __init__(self, train_fn: TrainFn, defaults: TrainConfig, max_blocks: int,
                 estimate: Callable[[TrainConfig], Sequence[float]] | None = None):
        self.train_fn, self.defaults, self.estimate_fn = train_fn, defaults, estimate
        self.plot: LivePlot | None = None
        self.result: Any = None  # what train_fn returned for the last run that finished
        self.history: History | None = None
        self.trained_config: TrainConfig | None = None  # the settings `result` was trained with
        self.error: str | None = None
        self.thread: threading.Thread | None = None
        self._stop: StopSwitch | None = None
        style = {"description_width": "110px"}
        self.strategy = w.Dropdown(options=[s.value for s in Strategy], value=Strategy(defaults.strategy).value,
                                   description="strategy", style=style)
        # A text box, not a log slider: a slider snaps to its steps, a typed 5e-4 must stay 5e-4.
        self.learning_rate = w.Text(value=f"{defaults.learning_rate:g}", description="learning rate",
                                    style=style, continuous_update=False)
        self.epochs = w.IntSlider(value=defaults.epochs, min=1, max=10, description="epochs", style=style)
        self.batch_size = w.Dropdown(options=[4, 8, 16, 32, 64], value=defaults.batch_size,
                                     description="batch size", style=style)
        self.max_length = w.IntSlider(value=defaults.max_length, min=8, max=256, step=8,
                                      description="max length", style=style)
        self.train_blocks = w.IntSlider(value=defaults.train_blocks or 0, min=0, max=max_blocks,
                                        description="train blocks", style=style)
        self.warmup = w.FloatSlider(value=defaults.warmup_fraction, min=0.0, max=0.5, step=0.05,
                                    description="warm-up", style=style)
        self.train_button = w.Button(description="Train", button_style="primary", icon="play")
        self.stop_button = w.Button(description="Stop", button_style="danger", icon="stop", disabled=True)
        self.status = w.HTML()
        self.estimate = w.HTML()
        self.bar = w.IntProgress(value=0, min=0, max=1, description="progress", style=style)
        self.progress_line = w.HTML()
        # The plot is an Image updated in place; hidden until the first drawing (no broken icon).
        self.image = w.Image(format="png", layout=w.Layout(display="none", max_width="640px"))
        # Everything training prints (model summary, epoch lines, errors) lands here, under the
        # panel, instead of in JupyterLab's log console.
        self.output = w.Output(layout=w.Layout(max_height="220px", overflow="auto"))
        self.strategy.observe(self._on_strategy, names="value")
        self._on_strategy()
        for control in (self.learning_rate, self.epochs, self.batch_size, self.max_length, self.train_blocks,
                        self.warmup):
            control.observe(self._update_estimate, names="value")
        self._update_estimate()
        self.train_button.on_click(self.on_train_clicked)
        self.stop_button.on_click(self.on_stop_clicked)

    @property
    def running(self) -> bool:
        """True while a training run started by Train is still going."""
        return self.thread is not None and self.thread.is_alive()

    def config(self) -> TrainConfig:
        """The TrainConfig the controls describe (validated before any training)."""
        config = replace(
            self.defaults,
            learning_rate=_parse_learning_rate(self.learning_rate.value),
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
        controls = w.VBox([self.strategy, self.learning_rate, self.epochs, self.batch_size, self.max_length,
                           self.train_blocks, self.warmup, self.estimate])
        progress = w.HBox([self.bar, self.progress_line])
        return w.VBox([controls, w.HBox([self.train_button, self.stop_button, self.status]), progress,
                       self.image, self.output])

    def log(self, message: str) -> None:
        """Print a line into the panel's output area (safe from the training thread)."""
        self.output.append_stdout(message.rstrip("\n") + "\n")

    def on_train_clicked(self, _button: w.Button | None = None) -> None:
        """What the Train button does: check the settings, then train in the background."""
        if self.running:
            return
        config = self._checked_config()
        if config is None:
            return
        self.thread = threading.Thread(target=self._run, args=(config,), daemon=True)
        self.thread.start()

    def on_stop_clicked(self, _button: w.Button | None = None) -> None:
        """What the Stop button does: training ends after the batch it is on."""
        if self._stop is not None:
            self._stop.request()
            self.status.value = "stopping after this batch…"

    def train_now(self) -> History | None:
        """Train with the current settings in this thread and return the History (or None if refused)."""
        config = self._checked_config()
        return None if config is None else self._run(config)

    def press_train_if_headless(self) -> History | None:
        """Press Train when nobody can (nbval, a scripted run); a person is asked to press it instead."""
        if os.environ.get(HEADLESS_ENV) == "1":
            return self.train_now()
        print("Choose settings in the panel above and press Train; the next cells use what it trains.")
        return None

    def wait(self, timeout: float | None = None) -> None:
        """Block until a run started by Train has finished."""
        if self.thread is not None:
            self.thread.join(timeout)

    def _checked_config(self) -> TrainConfig | None:
        self.error = None
        try:
            return self.config()
        except CourseError as exc:
            self.error = str(exc)
            self.status.value = f"<b style='color:#b00'>{html.escape(str(exc))}</b>"
            return None

    def _run(self, config: TrainConfig) -> History | None:
        """One training run with plot, progress and stop switch; reports instead of raising."""
        self.train_button.disabled, self.stop_button.disabled = True, False
        # A fresh log and no old plot: set in place, which (unlike clear_output) works from a thread.
        self.output.outputs = ()
        self.image.layout.display = "none"
        self._stop = StopSwitch()
        self.plot = LivePlot(self._show)
        estimate = self.estimate_fn(config) if self.estimate_fn else None
        progress = PanelProgress(self.bar, self.status, self.progress_line, self.log, estimate)
        callbacks = [progress, self.plot, self._stop]
        try:
            self.result = self.train_fn(config, callbacks, self.log)
            self.history = getattr(self.result, "history", self.result)
            self.status.value = html.escape(_summary(self.history))
        except (TrainingStopped, KeyboardInterrupt):
            # Stop (or Jupyter's interrupt): show what was drawn; `result` stays the last finished run.
            self.history = self.plot.history
            steps = len(self.history.step_losses) if self.history else 0
            kept = "your last finished run is kept" if self.trained_config else "nothing was trained to the end"
            self.status.value = f"stopped after {steps} batches; {kept}."
        except CourseError as exc:
            self.error = str(exc)
            self.log(f"Error: {exc}")
            self.status.value = f"<b style='color:#b00'>{html.escape(str(exc))}</b>"
        except Exception as exc:  # a bug must be seen in the panel, not lost in a thread
            self.error = f"{type(exc).__name__}: {exc}"
            self.output.append_stderr(traceback.format_exc())
            self.status.value = f"<b style='color:#b00'>{html.escape(self.error)}</b>"
        else:
            self.trained_config = config
        finally:
            progress.end()
            self.train_button.disabled, self.stop_button.disabled = False, True
        return self.history

    def _on_strategy(self, _change: dict | None = None) -> None:
        """Enable the block slider for top-k only, and move the learning rate to the strategy's."""
        strategy = Strategy(self.strategy.value)
        self.train_blocks.disabled = strategy != Strategy.TOP_K
        if _change is not None:
            self.learning_rate.value = f"{RECOMMENDED_LR[strategy]:g}"
        self._update_estimate()

    def _update_estimate(self, _change: dict | None = None) -> None:
        if self.estimate_fn is None or not hasattr(self, "estimate"):
            return
        try:
            seconds = sum(self.estimate_fn(self.config()))
        except CourseError as exc:
            self.estimate.value = f"<b style='color:#b00'>{html.escape(str(exc))}</b>"
            return
        warning = " — long: top-k with 4 blocks is much faster" if seconds > 15 * 60 else ""
        self.estimate.value = (f"estimated training time on this machine: <b>{format_duration(seconds)}</b>"
                               f"{warning}")

    def _show(self, figure: Figure) -> None:
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=90)
        self.image.value = buffer.getvalue()
        self.image.layout.display = None


def _parse_learning_rate(text: str) -> float:
    """The learning rate typed in the box, e.g. '5e-4' or '0.0005'."""
    try:
        return float(str(text).strip())
    except ValueError:
        raise ConfigError(f"learning rate {text!r} is not a number; type one like 1e-4 or 0.0005.") from None


def _summary(history: History) -> str:
    """One line: the best epoch's validation scores."""
    if not history.epochs:
        return "no epoch finished"
    best = min(history.epochs, key=lambda r: r.val_loss)
    accuracy = f", val accuracy {best.val_accuracy:.3f}" if best.val_accuracy is not None else ""
    return f"done. Best epoch {best.epoch}: val loss {best.val_loss:.3f}{accuracy}"


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
        self.defaults = defaults = defaults or DecodeConfig()  # what the controls do not set (e.g. precision)
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
        config = replace(self.defaults, max_new_tokens=int(self.max_new_tokens.value),
                         do_sample=bool(self.sample.value), temperature=float(self.temperature.value),
                         top_p=float(self.top_p.value), seed=int(self.seed.value), batch_size=1)
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
            decode = self.decode()
            self.texts = self.write_fn(prompt, decode)
        except CourseError as exc:
            self.error = str(exc)
            self.result.value = f"<b style='color:#b00'>{html.escape(str(exc))}</b>"
            return {}
        finally:
            self.button.disabled = False
        cells = "".join(f"<td style='vertical-align:top;padding:4px 12px'>{html.escape(t)}</td>"
                        for t in self.texts.values())
        heads = "".join(f"<th style='text-align:left;padding:4px 12px'>{html.escape(n)}</th>" for n in self.texts)
        note = ""
        if decode.do_sample:  # the next Write samples anew; typing a seed back repeats a sample
            self.seed.value = decode.seed + 1
            note = (f"<i>sampled with seed {decode.seed}; Write again for a new sample (seed {decode.seed + 1}), "
                    "or type a seed to repeat its text</i>")
        self.result.value = f"<table><tr>{heads}</tr><tr>{cells}</tr></table>{note}"
        return self.texts

"""Plots: loss curves and confusion matrices, each returned as a matplotlib Figure."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from course_lib.records import History

LABEL_COLORS = ["tab:green", "tab:red", "tab:gray", "tab:blue"]  # fresh, rotten, then any other labels


def _moving_average(values: Sequence[float], window: int) -> np.ndarray:
    """Smooth noisy per-batch losses so the trend is visible."""
    if len(values) < window or window < 2:
        return np.asarray(values, dtype=float)
    kernel = np.ones(window) / window
    return np.convolve(values, kernel, mode="valid")


def plot_loss_curves(history: History, figure: Figure | None = None, chance: float | None = None) -> Figure:
    """Training loss per step (raw and smoothed) and validation loss at each epoch's end.

    `chance` draws the loss of guessing, e.g. ln 2 for two balanced classes: a curve must get below it.
    """
    fig = figure or Figure(figsize=(7, 4))
    fig.clear()
    _draw_losses(fig.add_subplot(), history, "Fine-tuning loss", chance)
    fig.tight_layout()
    return fig


def plot_loss_comparison(histories: dict[str, History], chance: float | None = None) -> Figure:
    """Loss curves of several runs side by side, on one shared loss axis so their heights compare.

    The axis is logarithmic: a loss near zero and a loss of 20 both stay readable on it.
    """
    fig = Figure(figsize=(6 * len(histories), 4))
    axes = fig.subplots(1, len(histories), sharey=True, squeeze=False)[0]
    for ax, (title, history) in zip(axes, histories.items(), strict=True):
        _draw_losses(ax, history, title, chance)
        ax.set_yscale("log")
        ax.set_ylabel("cross-entropy loss (nats, log scale)")
    fig.tight_layout()
    return fig


def _draw_losses(ax, history: History, title: str, chance: float | None = None) -> None:
    """One panel: per-batch train loss, its moving average, and per-epoch validation loss."""
    steps = np.arange(1, len(history.step_losses) + 1)
    if len(steps):
        ax.plot(steps, history.step_losses, color="tab:blue", alpha=0.25, label="train (per batch)")
        window = max(1, history.steps_per_epoch // 10)
        smooth = _moving_average(history.step_losses, window)
        ax.plot(steps[len(steps) - len(smooth):], smooth, color="tab:blue", label="train (smoothed)")
    if history.epochs:
        epoch_steps = [r.epoch * history.steps_per_epoch for r in history.epochs]
        ax.plot(epoch_steps, [r.val_loss for r in history.epochs], "o-", color="tab:orange",
                label="validation (per epoch)")
    if chance is not None:
        ax.axhline(chance, color="grey", linestyle="--", linewidth=1, label=f"chance ({chance:.3f})")
    ax.set_title(title)
    ax.set_xlabel("training step (batches)")
    ax.set_ylabel("cross-entropy loss (nats)")
    ax.grid(alpha=0.3)
    if len(steps) or history.epochs:
        ax.legend()


def plot_confusion_matrix(
    matrix: Sequence[Sequence[int]], label_names: Sequence[str], title: str = "Confusion matrix"
) -> Figure:
    """Counts of (true label, predicted label) pairs; the diagonal holds the correct answers."""
    data = np.asarray(matrix)
    fig = Figure(figsize=(4.5, 4))
    ax = fig.add_subplot()
    image = ax.imshow(data, cmap="Blues")
    fig.colorbar(image, ax=ax, label="reviews")
    ticks = range(len(label_names))
    ax.set_xticks(ticks, label_names)
    ax.set_yticks(ticks, label_names)
    ax.set_xlabel("predicted label")
    ax.set_ylabel("true label")
    ax.set_title(title)
    threshold = data.max() / 2 if data.size else 0
    for (i, j), count in np.ndenumerate(data):
        ax.text(j, i, str(count), ha="center", va="center",
                color="white" if count > threshold else "black")
    fig.tight_layout()
    return fig


def plot_label_balance(counts: dict[str, int], title: str = "Reviews per label") -> Figure:
    """Bar chart of how many examples each label has, with the share written on each bar."""
    fig = Figure(figsize=(5, 3.5))
    ax = fig.add_subplot()
    names, values = list(counts), [int(v) for v in counts.values()]
    bars = ax.bar(names, values, color=LABEL_COLORS[: len(names)])
    total = sum(values)
    for bar, value in zip(bars, values, strict=True):
        ax.annotate(f"{value / total:.1%}", (bar.get_x() + bar.get_width() / 2, value),
                    ha="center", va="bottom")
    ax.set_title(title)
    ax.set_xlabel("label")
    ax.set_ylabel("reviews (count)")
    fig.tight_layout()
    return fig


def integer_bins(values: np.ndarray, max_bins: int = 60) -> np.ndarray:
    """Bin edges on half-integers, each bin as wide as a whole number of units.

    Lengths are whole numbers; bins of fractional width would hold one or two of them by
    chance and draw spikes that are not in the data.
    """
    if not values.size:
        return np.arange(0, 2) - 0.5
    low, high = int(values.min()), int(values.max())
    width = max(1, -(-(high - low + 1) // max_bins))  # ceiling division
    return np.arange(low, high + width + 1, width) - 0.5


def plot_split_sizes(splits: dict[str, pd.DataFrame], title: str = "Reviews per split") -> Figure:
    """Stacked bars of each split's labels, with the split's share of all reviews on top."""
    fig = Figure(figsize=(5.5, 3.5))
    ax = fig.add_subplot()
    labels = sorted({label for part in splits.values() for label in part["label"]})
    total = sum(len(part) for part in splits.values())
    bottoms = np.zeros(len(splits))
    for label, color in zip(labels, LABEL_COLORS, strict=False):
        counts = np.array([(part["label"] == label).sum() for part in splits.values()])
        ax.bar(list(splits), counts, bottom=bottoms, color=color, label=label)
        bottoms += counts
    for x, size in enumerate(bottoms):
        ax.annotate(f"{size / total:.0%}", (x, size), ha="center", va="bottom")
    ax.set_ylim(0, bottoms.max() * 1.15 if total else 1)  # room for the shares above the bars
    ax.set_title(title)
    ax.set_xlabel("split")
    ax.set_ylabel("reviews (count)")
    ax.legend()
    fig.tight_layout()
    return fig


def plot_length_histogram(
    lengths: Sequence[int], unit: str = "tokens", cutoff: int | None = None
) -> Figure:
    """Histogram of text lengths; `cutoff` draws the chosen max_length and how much it truncates."""
    data = np.asarray(lengths)
    fig = Figure(figsize=(6, 3.5))
    ax = fig.add_subplot()
    ax.hist(data, bins=integer_bins(data), color="tab:blue")
    if cutoff is not None:
        # A count, not a percentage: 5 of 12,751 would round to "0.0%" and read as none.
        cut = int((data > cutoff).sum())
        ax.axvline(cutoff, color="tab:red", linestyle="--",
                   label=f"max_length = {cutoff} (truncates {cut:,} of {data.size:,})")
        ax.legend()
    ax.set_title(f"Review length in {unit}")
    ax.set_xlabel(f"length ({unit})")
    ax.set_ylabel("reviews (count)")
    fig.tight_layout()
    return fig


def plot_accuracy_over_time(
    curves: dict[str, Sequence[tuple[float, float]]], target: float | None = None,
    title: str = "Validation accuracy while training",
) -> Figure:
    """Validation accuracy against training seconds, one line per run (e.g. the benchmark's)."""
    fig = Figure(figsize=(8, 4.5))
    ax = fig.add_subplot()
    for name, points in curves.items():
        if points:
            seconds, accuracy = zip(*points, strict=True)
            ax.plot(seconds, accuracy, "o-", markersize=3, label=name)
    if target is not None:
        ax.axhline(target, color="grey", linestyle="--", linewidth=1, label=f"target {target:.0%}")
    ax.set_xlabel("training time (s)")
    ax.set_ylabel("validation accuracy")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig

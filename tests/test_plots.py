from matplotlib.figure import Figure

from course_lib.plots import plot_confusion_matrix, plot_loss_comparison, plot_loss_curves
from course_lib.records import EpochRecord, History


def _history():
    h = History(planned_epochs=2, steps_per_epoch=5)
    h.step_losses = [0.7, 0.69, 0.6, 0.55, 0.5, 0.45, 0.4, 0.42, 0.38, 0.35]
    h.epochs = [EpochRecord(1, 0.6, 0.58, 0.7, 0.69, 1.0), EpochRecord(2, 0.4, 0.5, 0.8, 0.79, 1.0)]
    return h


def test_loss_curves_have_train_and_validation_lines_and_labels():
    fig = plot_loss_curves(_history())
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert ax.get_title() and "step" in ax.get_xlabel() and "loss" in ax.get_ylabel()
    labels = [line.get_label() for line in ax.get_lines()]
    assert "validation (per epoch)" in labels and "train (per batch)" in labels
    val = ax.get_lines()[labels.index("validation (per epoch)")]
    assert list(val.get_xdata()) == [5, 10] and list(val.get_ydata()) == [0.58, 0.5]


def test_loss_curves_redraw_into_the_same_figure():
    fig = plot_loss_curves(History())
    again = plot_loss_curves(_history(), figure=fig)
    assert again is fig and len(fig.axes) == 1


def test_confusion_matrix_shows_counts():
    fig = plot_confusion_matrix([[5, 1], [2, 7]], ["fresh", "rotten"])
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.texts] == ["5", "1", "2", "7"]
    assert ax.get_xlabel() == "predicted label" and ax.get_ylabel() == "true label"


def test_loss_comparison_has_one_titled_panel_per_run_on_one_loss_axis_with_chance():
    import math

    fig = plot_loss_comparison({"a": _history(), "b": History()}, chance=math.log(2))
    assert [ax.get_title() for ax in fig.axes] == ["a", "b"]
    assert fig.axes[0].get_ylim() == fig.axes[1].get_ylim()  # noise does not look like signal
    assert all(any(line.get_label() == "chance (0.693)" for line in ax.get_lines()) for ax in fig.axes)


def test_accuracy_over_time_has_one_line_per_run_and_the_target():
    from course_lib.plots import plot_accuracy_over_time

    fig = plot_accuracy_over_time({"seed": [(10.0, 0.5), (20.0, 0.6)], "course": [(5.0, 0.7), (9.0, 0.82)],
                                   "empty": []}, target=0.8)
    ax = fig.axes[0]
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels == ["seed", "course", "target 80%"]
    assert list(ax.get_lines()[1].get_xdata()) == [5.0, 9.0]


def test_length_bins_hold_whole_numbers_only():
    import numpy as np

    from course_lib.plots import integer_bins

    edges = integer_bins(np.array([3, 4, 4, 9, 17]))
    assert edges[0] == 2.5 and np.allclose(np.diff(edges), 1) and edges[-1] >= 17.5
    wide = integer_bins(np.arange(1, 301))
    width = np.diff(wide)[0]
    assert float(width).is_integer() and len(wide) <= 61 and np.allclose(np.diff(wide), width)


def test_split_plot_stacks_labels_and_shows_shares():
    import pandas as pd

    from course_lib.plots import plot_split_sizes

    splits = {"train": pd.DataFrame({"label": ["fresh"] * 48 + ["rotten"] * 32}),
              "validation": pd.DataFrame({"label": ["fresh"] * 6 + ["rotten"] * 4}),
              "test": pd.DataFrame({"label": ["fresh"] * 6 + ["rotten"] * 4})}
    ax = plot_split_sizes(splits).axes[0]
    assert [t.get_text() for t in ax.texts] == ["80%", "10%", "10%"]
    assert ax.get_xlabel() == "split" and len(ax.patches) == 6


def test_confusion_matrix_title_says_which_data():
    assert plot_confusion_matrix([[1, 2], [3, 4]], ["a", "b"], title="toy").axes[0].get_title() == "toy"


def test_length_histogram_counts_the_few_truncated_texts_instead_of_rounding_them_to_zero():
    from course_lib.plots import plot_length_histogram

    lengths = [10] * 12_746 + [70] * 5  # 5 of 12,751 over the cutoff: "0.0%" as a rounded share
    legend = plot_length_histogram(lengths, cutoff=64).axes[0].get_legend()
    assert legend.get_texts()[0].get_text() == "max_length = 64 (truncates 5 of 12,751)"

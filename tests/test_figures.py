"""The concept figures draw what their captions say."""

from course_lib.notebook.figures import (
    data_parallel_figure,
    frozen_blocks_figure,
    last_token_figure,
    pipeline_figure,
)


def _texts(fig) -> str:
    return " ".join(t.get_text() for t in fig.axes[0].texts)


def test_pipeline_names_every_chapter():
    text = _texts(pipeline_figure())
    assert all(f"Ch. {n}" in text for n in range(11))


def test_head_reads_the_last_real_token_not_padding():
    text = _texts(last_token_figure())
    assert "mask 0" in text and "h4" in text and "last real token" in text


def test_frozen_figure_follows_its_arguments():
    text = _texts(frozen_blocks_figure(blocks=12, trainable=3))
    assert "blocks 1-9 (layers.0-8)" in text and "blocks 10-12 (layers.9-11): train" in text
    assert "top-k = 3" in text


def test_data_parallel_figure_draws_one_copy_per_process():
    text = _texts(data_parallel_figure(processes=3))
    assert all(f"process {i}:" in text for i in range(3)) and "process 3" not in text
    assert "all-reduce" in text

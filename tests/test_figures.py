"""The concept figures draw what their captions say."""

import re
from pathlib import Path

from course_lib.notebook.figures import (
    data_parallel_figure,
    frozen_blocks_figure,
    last_token_figure,
    pipeline_figure,
)


def _texts(fig) -> str:
    return " ".join(t.get_text() for t in fig.axes[0].texts)


def test_pipeline_names_every_chapter():
    """One box per chapter notebook, each named once: a new chapter needs a box."""
    notebooks = (Path(__file__).parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb")
    chapters = sorted(int(p.name[:2]) for p in notebooks)
    named = [int(n) for n in re.findall(r"Ch\. (\d+)\b", _texts(pipeline_figure()))]
    assert sorted(named) == chapters


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

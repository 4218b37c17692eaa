"""Concept figures: course map, classification head, frozen blocks (matplotlib); tokens and loss mask (HTML).

Drawn from code rather than committed as images, so a learner can read (and change) how each
picture is made: `print(inspect.getsource(figures.pipeline_figure))`.
"""

from __future__ import annotations

import html

from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

STEPS = [  # (chapter, the document's step)
    (1, "task and\ndata set"), (2, "clean and\ntokenize"), (3, "train / val /\ntest split"),
    (4, "choose\nmetrics"), (5, "fine-tuning loop,\nvalidate each epoch"), (6, "save and\nreload"),
    (7, "evaluate on\nthe test set"),
]


def _box(ax, x: float, y: float, w: float, h: float, text: str, color: str, size: int = 9) -> None:
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.08",
                                facecolor=color, edgecolor="black", linewidth=0.8))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=size)


def _arrow(ax, start: tuple[float, float], end: tuple[float, float], color: str = "black") -> None:
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=12, color=color, linewidth=1))


def _canvas(width: float, height: float, xlim: tuple, ylim: tuple):
    fig = Figure(figsize=(width, height))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.axis("off")
    return fig, ax


def pipeline_figure() -> Figure:
    """The seed document's steps, left to right, each with the chapter that teaches it."""
    fig, ax = _canvas(12, 3.2, (0, 7.2), (0, 3.2))
    for i, (chapter, step) in enumerate(STEPS):
        _box(ax, i + 0.1, 1.7, 0.85, 1.0, f"Ch. {chapter}\n{step}", "#dbe9f6" if chapter != 5 else "#fde2c4")
        if i:
            _arrow(ax, (i - 0.05, 2.2), (i + 0.1, 2.2))
    _arrow(ax, (4.65, 1.7), (4.65, 1.15), color="grey")  # validation feeds back into the loop
    _box(ax, 0.1, 0.2, 1.6, 0.9, "Ch. 0 setup: model and data\nfrom PyPI, all offline", "#f4f4f4")
    _box(ax, 1.8, 0.2, 1.1, 0.9, "Ch. 10 several\nprocesses", "#e8e8e8")
    _box(ax, 3.0, 0.2, 2.0, 0.9, "Ch. 8 faster: strategies,\nfrozen-feature cache, int8", "#e8e8e8")
    _box(ax, 5.1, 0.2, 1.0, 0.9, "Ch. 9 the same\nsteps to write", "#e3f4e1")
    _box(ax, 6.2, 0.2, 0.95, 0.9, "Ch. 11 your own\nassistant", "#e3f4e1")
    ax.text(3.6, 3.05, "Fine-tuning a GPT: the document's steps and the chapters", ha="center", fontsize=11)
    return fig


def last_token_figure() -> Figure:
    """How a decoder classifies: padding masked out, the last real token's state read by the head."""
    tokens = ["A", " great", " film", ".", "<pad>", "<pad>"]
    mask = [1, 1, 1, 1, 0, 0]
    fig, ax = _canvas(10, 4.2, (-0.4, 7.6), (0, 4.4))
    for i, (token, m) in enumerate(zip(tokens, mask, strict=True)):
        _box(ax, i, 0.3, 0.9, 0.5, repr(token).strip("'"), "#ffffff" if m else "#eeeeee")
        ax.text(i + 0.45, 0.05, f"mask {m}", ha="center", fontsize=8, color="black" if m else "grey")
        _arrow(ax, (i + 0.45, 0.85), (i + 0.45, 1.35), color="black" if m else "lightgrey")
        _box(ax, i, 2.3, 0.9, 0.5, f"h{i + 1}", "#fde2c4" if i == 3 else ("#dbe9f6" if m else "#eeeeee"))
        _arrow(ax, (i + 0.45, 2.05), (i + 0.45, 2.3), color="black" if m else "lightgrey")
    _box(ax, 0, 1.35, 5.9, 0.7, "30 transformer blocks (causal: each token sees only itself and the tokens "
         "before it)", "#f4f4f4", size=9)
    _arrow(ax, (3.45, 2.85), (6.3, 3.55), color="tab:orange")
    _box(ax, 6.2, 3.5, 1.3, 0.7, "head: 576 → 2\nlogits", "#fde2c4")
    ax.text(3.2, 3.75, "the last real token has read the whole review:\nits state h4 is the one "
            "the head classifies", ha="center", fontsize=9)
    ax.text(6.85, 3.15, "softmax →\nfresh / rotten", ha="center", va="top", fontsize=8)
    return fig


def frozen_blocks_figure(blocks: int = 30, trainable: int = 4) -> Figure:
    """The model as a stack: frozen blocks (no gradients, cacheable) under the trainable top and head."""
    fig, ax = _canvas(6, 6.5, (0, 6), (0, blocks + 6))
    _box(ax, 1, 0.2, 2.6, 1.2, "token embeddings", "#e8e8e8")
    for i in range(blocks):
        top = i >= blocks - trainable
        ax.add_patch(FancyBboxPatch((1, 1.8 + i), 2.6, 0.8, boxstyle="square,pad=0",
                                    facecolor="#fde2c4" if top else "#e8e8e8", edgecolor="white"))
    # Counted from 1 here, from 0 in the weights' names (model.layers.0 is block 1): say both.
    frozen = blocks - trainable
    ax.text(2.3, 1.8 + frozen / 2, f"blocks 1-{frozen} (layers.0-{frozen - 1})\nfrozen: "
            "requires_grad=False", ha="center", va="center", fontsize=9)
    ax.text(2.3, 1.8 + blocks - trainable / 2, f"blocks {frozen + 1}-{blocks} "
            f"(layers.{frozen}-{blocks - 1}): train", ha="center", va="center", fontsize=9)
    _box(ax, 1, blocks + 2.2, 2.6, 1.0, "final norm + head: train", "#fde2c4")
    ax.annotate("", (4.0, 1.8), (4.0, 1.8 + blocks - trainable),
                arrowprops={"arrowstyle": "<->", "color": "grey"})
    # Only `fit` caches it (chapter 8); a plain loop such as chapter 5's runs every block each batch.
    ax.text(4.15, 1.8 + (blocks - trainable) / 2, "output never changes:\nfit() computes it once\nper "
            "review (ch. 8)", va="center", fontsize=8)
    ax.annotate("", (4.0, 1.8 + blocks - trainable), (4.0, blocks + 3.2),
                arrowprops={"arrowstyle": "<->", "color": "tab:orange"})
    ax.text(4.15, blocks + 0.5, "gradients flow\nonly here", va="center", fontsize=8)
    ax.text(3.0, blocks + 4.6, f"top-k = {trainable}: which weights train", ha="center", fontsize=11)
    return fig


def data_parallel_figure(processes: int = 2) -> Figure:
    """Data parallelism: each process a full model copy and its own batches; gradients averaged."""
    fig, ax = _canvas(10, 4.4, (0, 10), (0, 4.6))
    _box(ax, 0.2, 3.5, 9.6, 0.7, "one global batch of reviews, cut into a shard per process "
         "(batch k of every N goes to process k mod N)", "#f4f4f4")
    width = 9.6 / processes
    for i in range(processes):
        x = 0.2 + i * width + 0.15
        _arrow(ax, (x + width / 2 - 0.15, 3.5), (x + width / 2 - 0.15, 3.15))
        _box(ax, x, 2.3, width - 0.3, 0.8, f"process {i}: its shard → full model copy\n"
             "forward, loss, backward", "#dbe9f6")
        _arrow(ax, (x + width / 2 - 0.15, 2.3), (x + width / 2 - 0.15, 1.75))
        _arrow(ax, (x + width / 2 - 0.15, 1.05), (x + width / 2 - 0.15, 0.92))
        _box(ax, x, 0.2, width - 0.3, 0.7, f"optimizer step (process {i})", "#fde2c4")
    _box(ax, 0.35, 1.05, 9.3, 0.65, "all-reduce: every process gets the mean of all the gradients", "#e3f4e1")
    ax.text(5.0, 4.4, "the same step everywhere, so the copies never drift apart", ha="center", fontsize=10)
    return fig


def token_mask_html(tokens: list[str], learned: list[bool]) -> str:
    """Tokens as coloured boxes: green where the loss asks the model to write the token, grey where it is masked.

    `tokens` are the decoded token texts; a newline token also breaks the line, so a rendered
    conversation keeps its shape.
    """
    box = "display:inline-block;margin:1px;padding:0 2px;border-radius:3px;font-family:monospace;font-size:12px"
    green, grey = "background:#c8ecc8;border:1px solid #3a9a3a", "background:#eee;color:#777"
    boxes = []
    for text, target in zip(tokens, learned, strict=True):
        shown = html.escape(text.replace("\n", "↵")).replace(" ", "&nbsp;")
        newline = "<br>" if text.endswith("\n") else ""
        boxes.append(f"<span style='{box};{green if target else grey}'>{shown}</span>{newline}")
    legend = (f"<p><span style='{box};{green}'>trained</span> the loss asks the model to write this token &nbsp; "
              f"<span style='{box};{grey}'>masked</span> label -100, no loss</p>")
    return legend + "<div style='line-height:1.9'>" + "".join(boxes) + "</div>"

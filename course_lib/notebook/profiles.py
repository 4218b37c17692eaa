"""Run profiles for the notebooks: `default` (real model, real data), `workshop` (a 3-hour class on
laptops) or `fast` (CI, quick checks).

Set COURSE_PROFILE=workshop or COURSE_PROFILE=fast before starting JupyterLab. Every profile
uses the real pretrained model and real reviews, only fewer of them; `fast` is a smoke-test size.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from course_lib.config import (
    DEFAULT_MODEL,
    ChatDataConfig,
    DataConfig,
    DecodeConfig,
    PairDataConfig,
    RunConfig,
    TrainConfig,
)

PROFILE_ENV = "COURSE_PROFILE"


@dataclass(frozen=True)
class Profile:
    """Data and training settings shared by every chapter."""

    name: str
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    pairs: PairDataConfig = field(default_factory=PairDataConfig)  # chapter 9: teaching it to write
    writer: TrainConfig = field(default_factory=TrainConfig.for_generation)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    # Chapter 11, the assistant: fewer conversations than `finetune --task chat`, since the chapter
    # trains twice (with the end-of-turn token learned, and masked) and scores three times.
    chats: ChatDataConfig = field(default_factory=lambda: ChatDataConfig(max_train=96, max_val=8, max_test=16))
    chat_decode: DecodeConfig = field(default_factory=lambda: RunConfig.for_chat().decode)

    def run_config(self) -> RunConfig:
        """The run the chapters share: chapter 5 trains it, chapters 6 and 7 reuse it."""
        return RunConfig(model=DEFAULT_MODEL, output_dir=_output_root() / f"course-{self.name}",
                         data=self.data, train=self.train)

    def generation_config(self) -> RunConfig:
        """Chapter 9's run: the same document, for generation."""
        return RunConfig.for_generation(model=DEFAULT_MODEL, output_dir=_output_root() / f"writer-{self.name}",
                                        data=self.pairs, train=self.writer, decode=self.decode)

    def assistant_config(self) -> RunConfig:
        """Chapter 11's run: QA and chit-chat conversations, LoRA, loss on the assistant turns."""
        return RunConfig.for_chat(model=DEFAULT_MODEL, output_dir=_output_root() / f"assistant-{self.name}",
                                  data=self.chats, decode=self.chat_decode)


def _output_root() -> Path:
    """Where chapters write models ($COURSE_OUTPUT_DIR, else outputs/ in the repository)."""
    return Path(os.environ.get("COURSE_OUTPUT_DIR") or Path(__file__).resolve().parents[2] / "outputs")


PROFILES = {
    "default": Profile("default", DataConfig(max_train_examples=3000), TrainConfig()),
    # Sized for a 3-hour workshop on 2-4-core laptops: every wait is a few minutes at most, and
    # the model still clearly learns (see README, "Teaching a workshop", for measured times).
    "workshop": Profile(
        "workshop",
        DataConfig(max_train_examples=1500, max_val_examples=300, max_test_examples=600),
        TrainConfig(epochs=2),
        PairDataConfig(max_train_pairs=160, max_val_pairs=32, max_test_prompts=16),
        TrainConfig.for_generation(epochs=1),
        chats=ChatDataConfig(max_train=64, max_val=8, max_test=12),
    ),
    "fast": Profile(
        "fast",
        DataConfig(max_train_examples=80, max_val_examples=48, max_test_examples=64),
        TrainConfig(epochs=2, max_length=32, train_blocks=2, learning_rate=2e-4),
        # A smoke-test size: it learns the layout of the answers, not yet the attributes.
        PairDataConfig(max_train_pairs=64, max_val_pairs=24, max_test_prompts=8),
        TrainConfig.for_generation(epochs=1),
        DecodeConfig(max_new_tokens=40),
        ChatDataConfig(max_train=16, max_val=4, max_test=4),
        # Shorter replies, the same repetition penalty: chapter 11 compares the model with and without it.
        replace(RunConfig.for_chat().decode, max_new_tokens=24),
    ),
}


def current_profile() -> Profile:
    """The profile named by $COURSE_PROFILE (default: `default`)."""
    name = os.environ.get(PROFILE_ENV, "default").strip().lower() or "default"
    if name not in PROFILES:
        raise ValueError(f"{PROFILE_ENV}={name!r} is not one of {sorted(PROFILES)}.")
    return PROFILES[name]

"""Run profiles for the notebooks: `default` (real model, real data) or `fast` (CI, quick checks).

Set COURSE_PROFILE=fast to run every notebook on a small slice of the reviews with few steps.
It still uses the real pretrained model and real reviews, only fewer of them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from course_lib.config import DEFAULT_MODEL, DataConfig, RunConfig, TrainConfig

PROFILE_ENV = "COURSE_PROFILE"


@dataclass(frozen=True)
class Profile:
    """Data and training settings shared by every chapter."""

    name: str
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def run_config(self) -> RunConfig:
        """The run the chapters share: chapter 5 trains it, chapters 6 and 7 reuse it."""
        root = Path(os.environ.get("COURSE_OUTPUT_DIR") or Path(__file__).resolve().parents[1] / "outputs")
        return RunConfig(model=DEFAULT_MODEL, output_dir=root / f"course-{self.name}",
                         data=self.data, train=self.train)


PROFILES = {
    "default": Profile("default", DataConfig(max_train_examples=3000), TrainConfig()),
    "fast": Profile(
        "fast",
        DataConfig(max_train_examples=160, max_val_examples=80, max_test_examples=120),
        TrainConfig(epochs=2, max_length=32, train_blocks=2, learning_rate=2e-4),
    ),
}


def current_profile() -> Profile:
    """The profile named by $COURSE_PROFILE (default: `default`)."""
    name = os.environ.get(PROFILE_ENV, "default").strip().lower() or "default"
    if name not in PROFILES:
        raise ValueError(f"{PROFILE_ENV}={name!r} is not one of {sorted(PROFILES)}.")
    return PROFILES[name]

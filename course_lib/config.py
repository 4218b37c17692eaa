"""Configuration dataclasses: every knob of the course in one typed place."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path

from course_lib.errors import ConfigError

DEFAULT_MODEL = "smollm2-135m"  # the offline default; any Hub name or local folder also works


@dataclass
class DataConfig:
    """Where the reviews come from and how they are cleaned and split."""

    path: str | None = None  # CSV file; None means the offline Rotten Tomatoes reviews
    hub_dataset: str | None = None  # e.g. "imdb" via datasets.load_dataset (needs internet)
    text_column: str = "text"
    label_column: str = "label"
    group_column: str | None = None  # e.g. the movie: one group never spans two splits
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    max_train_examples: int | None = None  # a random, stratified subset keeps CPU runs short
    max_val_examples: int | None = None
    max_test_examples: int | None = None
    seed: int = 42

    def validate(self) -> None:
        """Raise ConfigError for fractions or sizes that cannot work."""
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0.0 < value < 0.5:
                raise ConfigError(f"{name} must be between 0 and 0.5, got {value}.")
        for name in ("max_train_examples", "max_val_examples", "max_test_examples"):
            value = getattr(self, name)
            if value is not None and value < 2:
                raise ConfigError(f"{name} must be at least 2 (or unset for all), got {value}.")


class Strategy(str, Enum):  # a str, so configs stay JSON-ready
    """Which weights fine-tuning changes; the fewer, the faster (and the less it can adapt)."""

    FULL = "full"  # every weight: the seed document's choice, slowest on a CPU
    TOP_K = "top-k"  # the top `train_blocks` blocks, final norm and head; the rest is frozen
    LORA = "lora"  # small low-rank adapters in every block's attention (peft), plus the head
    HEAD = "head"  # only the new classification head: a linear probe of frozen features


# A good first learning rate per strategy: the fewer weights train, the larger the steps they take.
RECOMMENDED_LR = {Strategy.FULL: 3e-5, Strategy.TOP_K: 1e-4, Strategy.LORA: 5e-4, Strategy.HEAD: 1e-3}


@dataclass
class TrainConfig:
    """Hyperparameters of the fine-tuning loop."""

    epochs: int = 3
    learning_rate: float = 1e-4
    batch_size: int = 16
    eval_batch_size: int = 64
    max_length: int = 64
    strategy: Strategy = Strategy.TOP_K
    train_blocks: int | None = 4  # for top-k: blocks to train; None = all (same as strategy full)
    lora_rank: int = 8  # for lora: rank r of each adapter; lora_alpha is 2r
    warmup_fraction: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    grad_accum_steps: int = 1
    early_stopping_patience: int | None = 2  # epochs without val-loss improvement; None = off
    cache_frozen: bool = True  # compute frozen blocks once and reuse them across epochs
    mixed_precision: bool = True  # bf16 autocast, used on CUDA only
    compile: bool = False  # torch.compile the model: opt-in, the first steps pay for compiling
    seed: int = 42

    @classmethod
    def for_strategy(cls, strategy: Strategy | str, **changes) -> TrainConfig:
        """Defaults for a strategy, with its recommended learning rate unless one is given."""
        strategy = parse_strategy(strategy)
        changes.setdefault("learning_rate", RECOMMENDED_LR[strategy])
        return cls(strategy=strategy, **changes)

    def top_blocks(self) -> int | None:
        """Blocks trained on top of a frozen bottom (0 = head only); None when nothing is frozen.

        Only a frozen bottom can have its outputs cached; full and LoRA training change
        (or add weights to) every block, so every epoch must run the whole model.
        """
        if self.strategy == Strategy.HEAD:
            return 0
        if self.strategy == Strategy.TOP_K:
            return self.train_blocks
        return None

    def validate(self) -> None:
        """Raise ConfigError for any value that cannot train; called before loading a model."""
        self.strategy = parse_strategy(self.strategy)
        if not isinstance(self.lora_rank, int) or self.lora_rank < 1:
            raise ConfigError(f"lora_rank must be a whole number of at least 1, got {self.lora_rank!r}.")
        positive_ints = ("epochs", "batch_size", "eval_batch_size", "max_length", "grad_accum_steps")
        for name in positive_ints:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a whole number of at least 1, got {value!r}.")
        if not self.learning_rate > 0 or self.learning_rate >= 1:
            raise ConfigError(
                f"learning_rate must be above 0 and below 1, got {self.learning_rate}; "
                "fine-tuning usually uses 1e-5 to 5e-4."
            )
        if not 0 <= self.warmup_fraction < 1:
            raise ConfigError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}.")
        if self.train_blocks is not None and self.train_blocks < 0:
            raise ConfigError(f"train_blocks must be 0 or more (or None for all), got {self.train_blocks}.")
        if self.max_grad_norm <= 0:
            raise ConfigError(f"max_grad_norm must be above 0, got {self.max_grad_norm}.")


def parse_strategy(value: Strategy | str) -> Strategy:
    """A Strategy from its name, or a ConfigError listing the choices."""
    try:
        return Strategy(value)
    except ValueError:
        choices = ", ".join(s.value for s in Strategy)
        raise ConfigError(f"Unknown strategy {value!r}; choose one of: {choices}.") from None


@dataclass
class RunConfig:
    """One end-to-end run of the document: model, data, training and where results go."""

    model: str = DEFAULT_MODEL
    output_dir: Path = Path("outputs/finetuned")
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    int8_report: bool = False  # also score an int8-quantised copy on the test set (CPU inference)

    def validate(self) -> None:
        """Check data and training settings together."""
        self.data.validate()
        self.train.validate()

    def to_dict(self) -> dict:
        """A JSON-ready copy (paths become strings)."""
        result = asdict(self)
        result["output_dir"] = str(self.output_dir)
        return result

"""Time budgets: measure how fast this machine trains, then size the run to end within the minutes given.

`finetune --time-budget 10` cannot know in advance whether the CPU computes bf16 natively, how
many cores it has or what else is running, so it measures. A copy of the run's own model, with
its strategy, precision and batches, trains a few real steps (two tiny epochs where the frozen
blocks are cached, since later epochs then cost less). That gives seconds per example for the
first epoch, later epochs and validation. `plan_run` turns them, the time already spent and the
budget into a number of training examples. It is a pure function: the same rates and budget
always give the same plan, so it is unit-tested with given rates. `Deadline` then watches the
run: where training falls behind the plan, it ends training so the whole command still ends in time.
"""

from __future__ import annotations

import copy
import itertools
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields, replace

import torch
from datasets import DatasetDict

from course_lib.config import TrainConfig
from course_lib.errors import ConfigError
from course_lib.progress import TrainingCallback
from course_lib.records import History

# Plan for this share of the budget: the measurement is a few batches, and data order, padding
# and the machine itself vary by some per cent over a run.
SAFETY = 0.9
DEADLINE = 0.98  # where the plan proves too low, training ends so the run ends by this share of the budget
SAVE_SECONDS = 10.0  # writing the model, metrics.json, the card and the loss curve (2 s for the classifier)
PROBE_BATCHES = 3  # the first warms up; the other two are timed


@dataclass(frozen=True)
class Budget:
    """What the user asked for: minutes for the whole command, counted from `started` (time.perf_counter())."""

    minutes: float
    started: float
    plan_only: bool = False
    strict: bool = True  # refuse a budget too short for the fewest examples (False: train those, say so)

    def spent(self) -> float:
        """Seconds since the command started (loading the data and model count against the budget)."""
        return time.perf_counter() - self.started


@dataclass(frozen=True)
class Rates:
    """Seconds per example on this machine, measured on real batches and scaled to the data's lengths."""

    first_epoch: float  # per training example in epoch 1 (which also runs the frozen blocks, if cached)
    later_epochs: float  # per training example once frozen features are cached (else as epoch 1)
    val_first: float  # per validation example, first validation
    val_later: float
    precision: str  # "bf16" or "float32"
    test: float = 0.0  # per test example, one evaluation pass of the whole model (0: not measured)

    def epoch_seconds(self, train: int, val: int, epoch: int) -> tuple[float, float]:
        """Training and validation time of epoch `epoch` (0-based) over `train` and `val` examples."""
        first = epoch == 0
        return (train * (self.first_epoch if first else self.later_epochs),
                val * (self.val_first if first else self.val_later))

    def fit_seconds(self, train: int, val: int, epochs: int) -> float:
        """Training and validation time of `epochs` epochs over `train` and `val` examples."""
        return sum(sum(self.epoch_seconds(train, val, epoch)) for epoch in range(epochs))


@dataclass(frozen=True)
class Plan:
    """How many examples a run trains on to end within its budget, and the estimate behind the choice."""

    budget_s: float
    train_examples: int
    available: int  # the task's default size (or the data's size): the plan never trains on more
    epochs: int
    unit: str  # "reviews", "pairs", "conversations"
    spent_s: float  # before training: data, model, zero-shot scores, the measurement itself
    fit_s: float  # estimated training and validation
    after_s: float  # estimated test scoring and saving
    rates: Rates
    val_examples: int = 0

    def epoch_s(self, epoch: int) -> tuple[float, float]:
        """Estimated seconds of epoch `epoch` (0-based): its training and its validation."""
        return self.rates.epoch_seconds(self.train_examples, self.val_examples, epoch)

    @property
    def total_s(self) -> float:
        """The whole command's estimated wall time."""
        return self.spent_s + self.fit_s + self.after_s

    def line(self) -> str:
        """One line for the log: the measured speed, the choice and the estimate it rests on."""
        per_s = 1 / self.rates.first_epoch
        speed = f"~{per_s:.1f}" if per_s < 10 else f"~{per_s:.0f}"
        limit = " (all there are: the budget is not the limit)" if self.train_examples == self.available else ""
        if self.total_s > self.budget_s:
            limit = (f" (the fewest worth training: this machine needs more than the {self.budget_s / 60:g} "
                     "minutes; --time-budget sets more)")
        return (f"budget {self.budget_s / 60:g} min: this machine trains {speed} {self.unit}/s in "
                f"{self.rates.precision} (first epoch) → {self.train_examples:,} {self.unit} × {self.epochs} "
                f"epochs{limit}; estimated {self.total_s / 60:.1f} min in all ({self.spent_s:.0f} s spent "
                f"before training, {self.fit_s:.0f} s training, {self.after_s:.0f} s to test and save)")

    def against(self, history: History) -> str:
        """Each epoch's training and validation time against the plan's: a slow run shows which part was slow."""
        parts = []
        for i, record in enumerate(history.epochs):
            if record.train_seconds is None:
                continue
            planned_train, planned_val = self.epoch_s(i)
            steps = min(history.steps_per_epoch, len(history.step_losses) - i * history.steps_per_epoch)
            planned_train *= steps / max(history.steps_per_epoch, 1)  # an epoch the deadline cut short
            val = record.seconds - record.train_seconds
            parts.append(f"epoch {record.epoch}: training {record.train_seconds:.0f} s of {planned_train:.0f} s "
                         f"planned ({_ratio(record.train_seconds, planned_train)}), validation {val:.0f} s of "
                         f"{planned_val:.0f} s ({_ratio(val, planned_val)})")
        return "Against the plan, " + "; ".join(parts) + "." if parts else "No epoch finished to compare."

    def to_dict(self) -> dict:
        """A JSON-ready copy for metrics.json."""
        return {**asdict(self), "total_s": self.total_s, "line": self.line()}

    @classmethod
    def from_dict(cls, saved: dict) -> Plan:
        """The plan `to_dict` wrote (a resumed run trains on the size the interrupted one chose)."""
        values = {f.name: saved[f.name] for f in fields(cls) if f.name in saved}  # (older plans lack some)
        return cls(**{**values, "rates": Rates(**values["rates"])})


def _ratio(took: float, planned: float) -> str:
    return f"{took / planned:.2f}×" if planned > 0 else "not planned"


def round_down(examples: int) -> int:
    """`examples` rounded down to two significant digits: 7,291 -> 7,200, 193 -> 190, 57 -> 57.

    A few per cent of noise in the measured rates then rarely changes the plan, and rounding
    never gives away more than a tenth of the budget's examples (100 would, for 190 conversations).
    """
    step = 10 ** max(0, len(str(examples)) - 2)
    return examples // step * step


def plan_run(rates: Rates, budget_s: float, spent_s: float, after_s: float, available: int, val: int,
             epochs: int, unit: str, minimum: int, strict: bool = True) -> Plan:
    """The most training examples (at most `available`) for which the run's estimate fits the budget.

    A pure function of its arguments. When even `minimum` examples do not fit, a `strict`
    budget (one the user gave) is refused with a ConfigError naming the budget that would do;
    otherwise (the default budget) the plan trains `minimum` examples and its line says it will
    take longer.
    """
    minimum = min(minimum, available)
    per_example = rates.first_epoch + (epochs - 1) * rates.later_epochs
    left = SAFETY * budget_s - spent_s - after_s - rates.fit_seconds(0, val, epochs)
    fits = max(0, math.floor(left / per_example))
    n = available if fits >= available else round_down(fits)
    if n < minimum:
        needed = math.ceil((spent_s + after_s + rates.fit_seconds(minimum, val, epochs)) / SAFETY / 60)
        if strict:
            raise ConfigError(f"A {budget_s / 60:g}-minute budget is too short on this machine: {minimum} {unit} "
                              f"would need about {needed} minutes. Give --time-budget {needed} or more, or "
                              "--time-budget 0 for no limit.")
        n = minimum
    return Plan(budget_s, n, available, epochs, unit, spent_s, rates.fit_seconds(n, val, epochs), after_s, rates,
                val)


def padded_tokens(lengths: Sequence[int], max_length: int, batch_size: int, seed: int) -> int:
    """Tokens one epoch of the course's training loader processes: each batch padded to its longest row.

    The loader groups reviews of similar length into its random batches (data.length_grouped_sampler),
    so the padding counted here is the little that grouping leaves, as in the real run.
    """
    from course_lib.data import length_grouped_sampler

    clipped = [min(n, max_length) for n in lengths]
    order = list(length_grouped_sampler(clipped, batch_size, seed)) if len(clipped) > 1 else [0] * len(clipped)
    return sum(len(batch) * max(clipped[i] for i in batch)
               for batch in (order[start:start + batch_size] for start in range(0, len(order), batch_size)))


def probe_examples(lengths: Sequence[int], count: int, batch_size: int, seed: int) -> list[int]:
    """`count` examples for the probe, in batches as alike in length as the real run's.

    The real loader groups similar lengths within chunks of ~50 batches, so its batches carry
    little padding; a batch of random examples carries much more. A step's time does not shrink
    in proportion to its tokens (part of it is per step: the optimizer, the many small kernels),
    so scaling such a batch down to the run's lengths made the run look faster than it was
    (README, "Time budgets"). These examples are the middle of one random chunk sorted by length:
    however the probe's loader shuffles them, its batches are padded about as the run's are.
    """
    rng = random.Random(seed)
    chunk = sorted(rng.sample(range(len(lengths)), min(len(lengths), 50 * batch_size)), key=lengths.__getitem__)
    start = max(0, (len(chunk) - count) // 2)
    return chunk[start:start + count]


class Deadline(TrainingCallback):
    """Ends training early where the run falls behind its plan, so the whole command still ends in its budget.

    The plan is fixed before training, from a few measured steps. A machine that slows down
    mid-run (another program starts, the CPU clocks down when hot) would carry the run past
    the budget. After every update this compares the run's pace with the plan's, and ends
    training once validating this epoch, the test pass and saving, at that pace, would end
    past DEADLINE (98 %) of the budget. The epoch is then validated and kept as usual, on fewer examples.
    A run a few per cent behind its plan is not cut: the plan leaves a tenth of the budget spare.
    """

    MAX_PACE = 3.0  # a pace beyond this says more about a bad measurement than about the machine

    def __init__(self, plan: Plan, started: float, clock: Callable[[], float] = time.perf_counter):
        # `started`: when the budget began, on `clock`. Aim a little before its end: the time to test
        # and save is itself an estimate.
        self.plan, self.ends_at, self.clock = plan, started + DEADLINE * plan.budget_s, clock
        self.steps_per_epoch = 1
        self.first: tuple[float, float] | None = None  # (planned, clock) at the first update asked about
        self.asked = 0

    def on_train_begin(self, total_steps: int) -> None:
        self.steps_per_epoch = max(1, total_steps // self.plan.epochs)

    def planned(self, epoch: int, step: int) -> float:
        """Seconds the plan expected training to take up to `step` of `epoch` (from 1), validations included."""
        done = sum(sum(self.plan.epoch_s(e)) for e in range(epoch - 1))
        return done + self.plan.epoch_s(epoch - 1)[0] * step / self.steps_per_epoch

    def pace(self, epoch: int, step: int, now: float) -> float:
        """Seconds the run took per second the plan expected (1: on plan), from 1 to MAX_PACE.

        Counted from the first update asked about: the first step warms buffers up and is slow,
        and the probe's rates leave it out too.
        """
        planned, then = self.first
        if self.asked < 4:  # too few steps to say anything yet
            return 1.0
        return min(self.MAX_PACE, max(1.0, (now - then) / max(self.planned(epoch, step) - planned, 1e-9)))

    def ends_training(self, epoch: int, step: int) -> bool:
        now = self.clock()
        self.asked += 1
        if self.first is None:
            self.first = (self.planned(epoch, step), now)
        if (epoch, step) == (self.plan.epochs, self.steps_per_epoch):
            return False  # the last update: nothing is left to cut
        rest = self.plan.epoch_s(epoch - 1)[1] + self.plan.after_s  # this epoch's validation, test and saving
        return now + self.pace(epoch, step, now) * rest > self.ends_at


class StepClock(TrainingCallback):
    """Records when each training step and each validation ended, for measure_rates."""

    def __init__(self):
        self.steps: list[list[float]] = []  # per epoch: when it started, then when each step ended
        self.validations: list[float] = []  # seconds each epoch's validation took

    def on_train_begin(self, total_steps: int) -> None:
        self.steps.append([self._now()])

    def ends_training(self, epoch: int, step: int) -> bool:
        # Asked after every update (the probe updates after every batch). On a GPU the step's
        # losses reach on_step in bursts, so this is where a step's end can be timed.
        self.steps[-1].append(self._now())
        return False

    def on_epoch_end(self, record, history: History) -> None:
        now = self._now()
        self.validations.append(now - self.steps[-1][-1])
        self.steps.append([now])

    @staticmethod
    def _now() -> float:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()  # the GPU works behind the host: wait for it before reading the clock
        return time.perf_counter()

    def per_step(self, epoch: int) -> float:
        """Seconds of the fastest training step of an epoch after its first (buffers warm up over the first ones).

        The fastest, as `timeit` reports: a few steps of a fresh model run slower than the
        hundreds of a real epoch, so their mean overstates the time (by about 30 % here).
        """
        times = self.steps[epoch]
        durations = [b - a for a, b in itertools.pairwise(times)]
        return min(durations[1:] or durations)


def measure_rates(
    model: torch.nn.Module,
    tokens: DatasetDict,
    config: TrainConfig,
    make_loaders: Callable,  # (model, tokens) -> (module, train_loader, val_loader): the task's own
    device: torch.device,
    num_labels: int | None,
    precision: str,
    test_loader: Callable | None = None,  # (tokens) -> batches as the test pass makes them, to time it too
) -> Rates:
    """Train a copy of `model` on a few real batches and return its seconds per example.

    The copy gets the run's strategy, precision and loaders; `model` itself is not changed.
    The probe's examples are a seeded random sample, and its rates are scaled by the padded
    tokens per example of the whole split over the sample's, so a sample of long or short
    examples does not skew them. With `test_loader`, a pass of the whole model over some test
    examples is timed as well (after a warm-up on a few of them).
    """
    from course_lib.models import apply_strategy
    from course_lib.training import evaluate, train

    train_split, val_split = tokens["train"], tokens["validation"]
    n_train = min(len(train_split), PROBE_BATCHES * config.batch_size)
    n_val = min(len(val_split), 32)  # (the split check of a cached model also runs the full model on them)
    pick = probe_examples([len(ids) for ids in train_split["input_ids"]], n_train, config.batch_size, config.seed)
    probe = DatasetDict({"train": train_split.select(pick), "validation": val_split.select(range(n_val))})
    trained = apply_strategy(copy.deepcopy(model), config)
    module, train_loader, val_loader = make_loaders(trained, probe)
    cached = module is not trained  # a split model: later epochs skip the frozen blocks
    clock = StepClock()
    probe_config = replace(config, epochs=2 if cached else 1, early_stopping_patience=None, compile=False,
                           grad_accum_steps=1)  # an update after every batch, so StepClock times each one
    train(module, train_loader, val_loader, probe_config, device, num_labels, [clock])

    def per_example(split, batch: int) -> float:
        lengths = [len(ids) for ids in split["input_ids"]]
        return padded_tokens(lengths, config.max_length, batch, config.seed) / max(len(lengths), 1)

    # A whole split's validation batches are sorted by length, so they carry almost no padding
    # (batch 1 models that); the probe's few examples share one batch, padded to the longest.
    train_scale = per_example(train_split, config.batch_size) / per_example(probe["train"], config.batch_size)
    val_scale = per_example(val_split, 1) / per_example(probe["validation"], config.eval_batch_size)
    batch = min(config.batch_size, n_train)
    first = clock.per_step(0) / batch * train_scale
    later = clock.per_step(1) / batch * train_scale if cached else first
    val_first = clock.validations[0] / n_val * val_scale  # also runs the frozen blocks, where cached
    val_later = clock.validations[-1] / n_val * val_scale
    test = 0.0
    if test_loader is not None:
        sample = tokens["test"].select(range(min(len(tokens["test"]), 32)))
        batches = test_loader(sample)
        evaluate(trained, test_loader(sample.select(range(8))), device, num_labels, config.mixed_precision)
        start = time.perf_counter()
        evaluate(trained, batches, device, num_labels, config.mixed_precision)
        seconds = time.perf_counter() - start
        test = seconds / len(sample) * per_example(tokens["test"], 1) / per_example(sample, config.eval_batch_size)
    return Rates(first, later, val_first, val_later, precision, test)

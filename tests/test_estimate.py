"""The training-time estimate shown before Train: counts that follow the strategy's cost."""

import pytest

from course_lib.config import Strategy, TrainConfig
from course_lib.models import load_causal_lm
from course_lib.notebook.estimate import CostModel, format_duration, measure_seconds_per_token, remaining_seconds
from course_lib.runtime.budget import padded_tokens

COST = CostModel(seconds_per_token=1e-4, train_lengths=[10, 30, 50, 70] * 50, val_lengths=[40] * 20, blocks=30)


def test_padding_counts_each_batch_at_its_longest_row():
    assert padded_tokens([3, 5, 2, 9], max_length=100, batch_size=4, seed=0) == 4 * 9
    assert padded_tokens([3, 5, 2, 9], max_length=4, batch_size=4, seed=0) == 4 * 4
    assert padded_tokens([3, 5, 2, 9], max_length=100, batch_size=1, seed=0) == 19


def test_cost_follows_the_strategy_and_epochs():
    top4 = COST.seconds(TrainConfig(epochs=3))
    # Frozen blocks are paid once; the top 4 of 30 three times per epoch.
    assert COST.seconds(TrainConfig(epochs=6)) < 2 * top4
    full = COST.seconds(TrainConfig.for_strategy(Strategy.FULL, epochs=3))
    assert full > 4 * top4
    assert COST.seconds(TrainConfig.for_strategy(Strategy.HEAD)) < top4
    assert COST.seconds(TrainConfig(max_length=16)) < top4


def test_measured_cost_is_a_small_positive_number(tiny_llama_dir):
    model, tok = load_causal_lm(str(tiny_llama_dir))
    seconds = measure_seconds_per_token(model, tok, ["great film", "the plot was dull"], max_length=16)
    assert 0 < seconds < 0.1


def test_cached_top_k_pays_the_frozen_blocks_in_the_first_epoch_only():
    first, second, third = COST.epoch_seconds(TrainConfig(epochs=3))
    assert first > 2 * second and second == third
    assert sum(COST.epoch_seconds(TrainConfig(epochs=3))) == COST.seconds(TrainConfig(epochs=3))
    full = COST.epoch_seconds(TrainConfig.for_strategy(Strategy.FULL, epochs=2))
    assert full[0] == full[1]


def test_time_left_follows_the_estimate_then_the_run():
    epochs, steps = [60.0, 20.0], 10  # a first epoch that also runs the frozen blocks, then a cheap one
    # On schedule after epoch 1: what is left is epoch 2's estimate, not epoch 1's pace.
    assert remaining_seconds(epochs, steps, done=10, elapsed=60.0) == pytest.approx(20.0)
    # Running twice as slow as estimated (with enough batches to trust it): twice what is left.
    assert remaining_seconds(epochs, steps, done=10, elapsed=120.0) == pytest.approx(40.0)
    # One slow first batch says little: the estimate still counts most.
    early = remaining_seconds(epochs, steps, done=1, elapsed=30.0)
    assert 74 < early < 30 / 6 * 74
    assert remaining_seconds(epochs, steps, done=20, elapsed=90.0) == 0.0


@pytest.mark.parametrize(("seconds", "text"),
                         [(12, "10 s"), (61, "1 min"), (81, "1 min 20 s"), (1900, "32 min"), (3900, "1 h 05 min")])
def test_durations_read_at_a_glance(seconds, text):
    assert format_duration(seconds) == text

"""Fine-tune the real offline pretrained model briefly, on real reviews, through the real pipeline."""

import pytest

from course_lib.config import DataConfig, RunConfig, TrainConfig
from course_lib.pipeline import run_finetune


@pytest.mark.slow
def test_real_model_learns_sentiment_well_above_chance(tmp_path):
    config = RunConfig(
        output_dir=tmp_path / "run",
        data=DataConfig(max_train_examples=600, max_val_examples=300, max_test_examples=300),
        train=TrainConfig(epochs=2, learning_rate=2e-4, max_length=48, train_blocks=4),
    )
    result = run_finetune(config, callbacks=[], save=False)
    # Majority-class guessing scores about 0.57 on these reviews.
    assert result.baseline["accuracy"] < 0.62
    assert result.test_metrics["accuracy"] > 0.70
    assert result.test_metrics["accuracy"] > result.baseline["accuracy"] + 0.1
    assert result.history.epochs[-1].val_accuracy > 0.70

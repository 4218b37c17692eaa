import pytest

from course_lib.config import DataConfig, DecodeConfig, RunConfig, TrainConfig
from course_lib.errors import ConfigError


def test_defaults_are_valid():
    RunConfig().validate()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("learning_rate", 0.0, "learning_rate"),
        ("learning_rate", -1e-4, "learning_rate"),
        ("epochs", 0, "epochs"),
        ("batch_size", -8, "batch_size"),
        ("max_length", 0, "max_length"),
        ("train_blocks", -1, "train_blocks"),
        ("warmup_fraction", 1.5, "warmup_fraction"),
    ],
)
def test_bad_hyperparameters_are_named(field, value, message):
    config = TrainConfig(**{field: value})
    with pytest.raises(ConfigError, match=message):
        config.validate()


def test_bad_fractions_are_rejected():
    with pytest.raises(ConfigError, match="val_fraction"):
        DataConfig(val_fraction=0.0).validate()


@pytest.mark.parametrize("penalty", [0.9, 0.0, 2.5])
def test_a_repetition_penalty_outside_one_to_two_is_refused(penalty):
    with pytest.raises(ConfigError, match="repetition_penalty"):
        DecodeConfig(repetition_penalty=penalty).validate()


def test_run_config_to_dict_is_json_ready():
    import json

    json.dumps(RunConfig().to_dict())

"""Fine-tuning strategies: which weights train, and that each one trains and saves for real."""

import json

import pytest
import torch

from course_lib.cli import build_parser, main, run_config_from_args
from course_lib.config import RECOMMENDED_LR, Strategy, TrainConfig
from course_lib.data import LabelMap
from course_lib.errors import ConfigError
from course_lib.models import (
    apply_strategy,
    classification_head,
    count_parameters,
    load_classifier,
    merge_adapters,
)
from course_lib.saving import load_finetuned, predict

LABELS = LabelMap(["neg", "pos"])
TEXTS = ["great film", "the plot was dull and boring", "really superb story", "awful"]


def _counts(model_dir, strategy, **changes):
    model, _ = load_classifier(str(model_dir), LABELS)
    trained = apply_strategy(model, TrainConfig.for_strategy(strategy, **changes))
    return count_parameters(trained), model


def test_each_strategy_trains_what_it_says(tiny_llama_dir):
    (full, total), _ = _counts(tiny_llama_dir, "full")
    (top1, _), _ = _counts(tiny_llama_dir, "top-k", train_blocks=1)
    (lora, lora_total), _ = _counts(tiny_llama_dir, "lora", lora_rank=4)
    (head, _), model_h = _counts(tiny_llama_dir, "head")
    assert full == total
    assert head == sum(p.numel() for p in classification_head(model_h).parameters())
    # 4 blocks x (q_proj + v_proj) x rank 4 x (in + out), plus the head peft keeps trainable.
    hidden, kv = 32, 2 * 8  # tiny Llama: 4 heads of 8, 2 key-value heads
    adapters = 4 * (4 * (hidden + hidden) + 4 * (hidden + kv))
    assert lora == adapters + head
    assert lora_total == total + adapters + head  # peft trains a copy of the head (modules_to_save)
    assert head < lora < top1 < full


def test_recommended_learning_rate_unless_given():
    assert TrainConfig.for_strategy("lora").learning_rate == RECOMMENDED_LR[Strategy.LORA]
    assert TrainConfig.for_strategy("head", learning_rate=0.01).learning_rate == 0.01
    with pytest.raises(ConfigError, match="Unknown strategy 'bitfit'; choose one of: full, top-k, lora, head"):
        TrainConfig.for_strategy("bitfit")


def test_cache_applies_only_where_the_bottom_is_frozen():
    assert TrainConfig.for_strategy("head").top_blocks() == 0
    assert TrainConfig.for_strategy("top-k", train_blocks=3).top_blocks() == 3
    assert TrainConfig.for_strategy("lora").top_blocks() is None
    assert TrainConfig.for_strategy("full").top_blocks() is None


def test_merged_lora_model_gives_the_adapted_outputs(tiny_llama_dir):
    model, tokenizer = load_classifier(str(tiny_llama_dir), LABELS)
    lora = apply_strategy(model, TrainConfig.for_strategy("lora"))
    with torch.no_grad():  # make the adapters do something (B starts at zero)
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)
    lora.eval()
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        adapted = lora(**batch).logits
        merged_model = merge_adapters(lora)
        merged = merged_model(**batch).logits
    assert type(merged_model).__name__ == "LlamaForSequenceClassification"
    assert torch.allclose(adapted, merged, atol=1e-4)


def _args(model_dir, csv, out, *extra):
    return ["finetune", "--model", str(model_dir), "--data", str(csv), "--text-column", "review",
            "--label-column", "sentiment", "--epochs", "2", "--max-train", "0", "--batch-size", "8",
            "--output", str(out), *extra]


@pytest.mark.parametrize("strategy, lr", [("lora", "1e-2"), ("head", "3e-2")])
def test_strategy_end_to_end_learns_and_saves_a_plain_model(strategy, lr, tiny_llama_dir, toy_csv, tmp_path,
                                                            capsys):
    out = tmp_path / strategy
    assert main(_args(tiny_llama_dir, toy_csv, out, "--strategy", strategy, "--lr", lr, "--epochs", "4")) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] >= 0.7, metrics["test"]  # chance is 0.5 on the balanced toy task
    model, tok, info = load_finetuned(out / "model")
    assert info["config"]["train"]["strategy"] == strategy
    assert not any("lora" in name for name, _ in model.named_parameters())  # merged, no peft needed
    assert len(predict(model, tok, TEXTS)) == 4


def test_train_blocks_all_means_full(tiny_llama_dir, toy_csv, tmp_path):
    args = build_parser().parse_args(_args(tiny_llama_dir, toy_csv, tmp_path / "x", "--train-blocks", "all"))
    config = run_config_from_args(args)
    assert config.train.strategy == Strategy.FULL
    assert config.train.learning_rate == RECOMMENDED_LR[Strategy.FULL]


def test_unknown_strategy_is_one_clear_line(toy_csv, tmp_path, capsys):
    assert main(_args("smollm2-135m", toy_csv, tmp_path / "x", "--strategy", "adapters")) == 2
    err = capsys.readouterr().err
    assert "Unknown strategy 'adapters'; choose one of: full, top-k, lora, head" in err
    assert not (tmp_path / "x").exists()

import logging

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from course_lib.data import LabelMap
from course_lib.errors import ConfigError
from course_lib.models import (
    classification_head,
    count_parameters,
    ensure_pad_token,
    freeze_for_training,
    load_classifier,
    pick_device,
    transformer_blocks,
)

LABELS = LabelMap(["neg", "pos"])


def test_pick_device_is_cpu_here():
    assert pick_device().type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_gpt_tokenizer_without_pad_token_cannot_pad(tiny_tokenizer):
    assert tiny_tokenizer.pad_token is None
    with pytest.raises(ValueError, match="pad"):
        tiny_tokenizer(["great", "dull film"], padding=True)
    assert ensure_pad_token(tiny_tokenizer) is True
    assert tiny_tokenizer.pad_token == tiny_tokenizer.eos_token
    assert ensure_pad_token(tiny_tokenizer) is False
    assert tiny_tokenizer(["great", "dull film"], padding=True)["attention_mask"] == [[1, 0], [1, 1]]


@pytest.mark.parametrize("fixture", ["tiny_gpt2_dir", "tiny_llama_dir"])
def test_padding_does_not_change_predictions(fixture, request):
    """The classifier pools the last real token, so a padded row scores like an unpadded one."""
    model, tokenizer = load_classifier(str(request.getfixturevalue(fixture)), LABELS)
    model.eval()
    assert model.config.pad_token_id == tokenizer.pad_token_id
    assert model.config.id2label == {0: "neg", 1: "pos"}
    texts = ["great", "the film was really quite dull"]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        together = model(**batch).logits
        alone = torch.cat([model(**tokenizer([t], return_tensors="pt")).logits for t in texts])
    assert torch.allclose(together, alone, atol=1e-5)


def test_freeze_top_blocks(tiny_llama_dir):
    model, _ = load_classifier(str(tiny_llama_dir), LABELS)
    blocks = transformer_blocks(model)
    assert len(blocks) == 4
    freeze_for_training(model, 1)
    assert all(p.requires_grad for p in blocks[3].parameters())
    assert not any(p.requires_grad for p in blocks[2].parameters())
    assert all(p.requires_grad for p in classification_head(model).parameters())
    assert not model.get_input_embeddings().weight.requires_grad
    trainable, total = count_parameters(model)
    block = sum(p.numel() for p in blocks[3].parameters())
    head = sum(p.numel() for p in classification_head(model).parameters())
    norm = model.model.norm.weight.numel()
    assert trainable == block + head + norm < total


def test_head_only_and_full(tiny_gpt2_dir):
    model, _ = load_classifier(str(tiny_gpt2_dir), LABELS)
    freeze_for_training(model, 0)
    head = sum(p.numel() for p in classification_head(model).parameters())
    assert count_parameters(model)[0] == head
    freeze_for_training(model, None)
    assert count_parameters(model)[0] == count_parameters(model)[1]


def test_too_many_blocks_is_a_config_error(tiny_gpt2_dir):
    model, _ = load_classifier(str(tiny_gpt2_dir), LABELS)
    with pytest.raises(ConfigError, match="only 2 blocks"):
        freeze_for_training(model, 3)


def test_a_fine_tuned_head_must_match_the_labels(tiny_llama_dir, tmp_path):
    from course_lib.errors import DataError
    from course_lib.saving import save_finetuned

    model, tok = load_classifier(str(tiny_llama_dir), LABELS)
    folder = save_finetuned(tmp_path / "model", model, tok, LABELS)
    again, _ = load_classifier(str(folder), LabelMap(["neg", "pos"]))  # same labels: fine
    assert again.config.num_labels == 2
    with pytest.raises(DataError, match=r"fine-tuned for 2 labels .* the data has 3"):
        load_classifier(str(folder), LabelMap(["neg", "neutral", "pos"]))


def test_new_head_is_one_line_not_a_load_report(tiny_llama_dir):
    """transformers' table of missing weights reads like an error; the course says it in one line."""
    reports, lines = [], []
    handler = logging.Handler()
    handler.emit = reports.append
    logger = logging.getLogger("transformers.modeling_utils")
    logger.addHandler(handler)
    try:
        AutoModelForSequenceClassification.from_pretrained(str(tiny_llama_dir), num_labels=2)
        assert any("LOAD REPORT" in record.getMessage() for record in reports)  # what transformers says
        reports.clear()
        load_classifier(str(tiny_llama_dir), LABELS, log=lines.append)
    finally:
        logger.removeHandler(handler)
    assert not reports
    assert len(lines) == 1 and "score.weight" in lines[0] and "untrained" in lines[0]

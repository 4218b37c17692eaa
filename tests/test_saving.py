import json

import pytest
import torch

from course_lib.data import LabelMap
from course_lib.errors import ModelFolderError
from course_lib.models import load_classifier
from course_lib.saving import load_finetuned, predict, save_finetuned

LABELS = LabelMap(["neg", "pos"])
TEXTS = ["great film", "the plot was dull and boring", "really superb story", "awful"]


def test_save_and_reload_predict_the_same(tiny_llama_dir, tmp_path):
    model, tok = load_classifier(str(tiny_llama_dir), LABELS)
    before = predict(model, tok, TEXTS)
    folder = save_finetuned(tmp_path / "model", model, tok, LABELS, {"train": {"max_length": 64}},
                            {"test": {"accuracy": 1.0}})
    assert (folder / "model.safetensors").exists()
    info = json.loads((folder / "course.json").read_text())
    assert info["labels"] == ["neg", "pos"] and info["metrics"]["test"]["accuracy"] == 1.0
    reloaded, tok2, _info2 = load_finetuned(folder)
    after = predict(reloaded, tok2, TEXTS)
    assert [p.label for p in after] == [p.label for p in before]
    assert [p.score for p in after] == pytest.approx([p.score for p in before], abs=1e-6)
    assert {p.label for p in after} <= {"neg", "pos"}


def test_works_through_a_transformers_pipeline(tiny_llama_dir, tmp_path):
    from transformers import pipeline

    model, tok = load_classifier(str(tiny_llama_dir), LABELS)
    folder = save_finetuned(tmp_path / "model", model, tok, LABELS)
    reloaded, tok2, _ = load_finetuned(folder)
    clf = pipeline("text-classification", model=reloaded, tokenizer=tok2, device=-1)
    expected = predict(reloaded, tok2, TEXTS)
    assert [r["label"] for r in clf(TEXTS)] == [p.label for p in expected]


def test_failed_save_keeps_the_previous_model(tiny_llama_dir, tmp_path):
    model, tok = load_classifier(str(tiny_llama_dir), LABELS)
    folder = save_finetuned(tmp_path / "model", model, tok, LABELS)
    original = (folder / "model.safetensors").read_bytes()

    class BrokenTokenizer:
        def save_pretrained(self, path):
            raise OSError("No space left on device")

    with torch.no_grad():
        model.score.weight.add_(1.0)
    with pytest.raises(OSError):
        save_finetuned(folder, model, BrokenTokenizer(), LABELS)
    assert (folder / "model.safetensors").read_bytes() == original
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_refuses_folders_that_are_not_course_models(tiny_llama_dir, tmp_path):
    with pytest.raises(ModelFolderError, match="not a saved course model"):
        load_finetuned(tiny_llama_dir)
    with pytest.raises(ModelFolderError, match="not a folder"):
        load_finetuned(tmp_path / "missing")


def test_refuses_pickled_weights(tiny_llama_dir, tmp_path):
    model, tok = load_classifier(str(tiny_llama_dir), LABELS)
    folder = save_finetuned(tmp_path / "model", model, tok, LABELS)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    with pytest.raises(ModelFolderError, match="pickled"):
        load_finetuned(folder)

"""Saving and loading a fine-tuned model, and classifying new texts with it.

A saved course model is one folder: the weights as safetensors (no pickle, so loading cannot run
code), the tokenizer, and course.json with the task (classify, generate or chat), the label map of a
classifier, the training config and metrics. It is written to a temporary folder and renamed
into place, so a crash never leaves half a model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from course_lib.config import Task
from course_lib.data import LabelMap, clean_text
from course_lib.errors import ModelFolderError
from course_lib.runtime.assets import atomic_dir

INFO_FILE = "course.json"
FORMAT_VERSION = 1


@dataclass
class Prediction:
    """A predicted label and the model's probability for it."""

    text: str
    label: str
    score: float


def save_finetuned(
    folder: Path,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    label_map: LabelMap | None,
    run_config: dict | None = None,
    metrics: dict | None = None,
    task: Task = Task.CLASSIFY,
) -> Path:
    """Write model, tokenizer and course.json atomically into `folder` (label_map: classifiers only)."""
    folder = Path(folder)
    info = {"format_version": FORMAT_VERSION, "task": Task(task).value}
    if label_map is not None:
        model.config.id2label = label_map.id2label
        model.config.label2id = label_map.label2id
        info["labels"] = label_map.names
    info.update(config=run_config or {}, metrics=metrics or {})
    with atomic_dir(folder) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2))
    return folder


def load_finetuned(
    folder: Path, device: torch.device | None = None, task: Task | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, dict]:
    """Load a folder written by save_finetuned: safetensors only, no remote code.

    With `task`, a model saved for the other task is refused with a message saying what to use.
    """
    folder = Path(folder)
    _check_model_folder(folder)
    info = json.loads((folder / INFO_FILE).read_text())
    saved = Task(info.get("task", Task.CLASSIFY.value))  # models saved before generation existed classify
    if task is not None and Task(task) != saved:
        raise ModelFolderError(_wrong_task(folder, saved, Task(task)))
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    tokenizer.padding_side = "right"
    model_class = AutoModelForSequenceClassification if saved == Task.CLASSIFY else AutoModelForCausalLM
    model = model_class.from_pretrained(folder, use_safetensors=True, trust_remote_code=False)
    model.to(device or torch.device("cpu")).eval()
    return model, tokenizer, info


# What each task's saved model is, and the command that uses it.
SAVED_AS = {Task.CLASSIFY: ("a classifier (task classify), which cannot write text", "predict"),
            Task.GENERATE: ("a model fine-tuned to write (task generate)", "generate"),
            Task.CHAT: ("an assistant fine-tuned on conversations (task chat)", "chat")}
WANTED = {Task.CLASSIFY: "a classifier", Task.GENERATE: "a writer of one response per prompt",
          Task.CHAT: "an assistant"}


def _wrong_task(folder: Path, saved: Task, wanted: Task) -> str:
    """One line for a model given to the command of another task: what it is, and what to use instead."""
    what, command = SAVED_AS[saved]
    return (f"{folder} holds {what}, not {WANTED[wanted]}. Use `{command}` with it, or `{SAVED_AS[wanted][1]}` "
            f"with a model from `finetune --task {wanted.value}`.")


def _check_model_folder(folder: Path) -> None:
    """Refuse folders that are not course models or that hold pickled weights."""
    if not folder.is_dir():
        raise ModelFolderError(f"{folder} is not a folder. Give the folder `finetune` wrote.")
    if not (folder / INFO_FILE).exists():
        raise ModelFolderError(
            f"{folder} is not a saved course model (no {INFO_FILE}). "
            "Give the `model` folder inside a finetune output folder."
        )
    pickled = sorted(p.name for p in folder.iterdir() if p.suffix in {".bin", ".pt", ".pth", ".pkl"})
    if pickled:
        raise ModelFolderError(
            f"{folder} contains pickled weights {pickled}; loading them could run arbitrary "
            "code, so the course only loads safetensors. Remove them or re-save the model."
        )
    if not any(folder.glob("*.safetensors")):
        raise ModelFolderError(f"{folder} has no .safetensors weights.")


@torch.inference_mode()
def predict(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    max_length: int = 64,
    batch_size: int = 64,
) -> list[Prediction]:
    """Classify raw texts, cleaned the same way as the training data."""
    model.eval()
    device = next(model.parameters()).device
    results = []
    for start in range(0, len(texts), batch_size):
        chunk = texts[start:start + batch_size]
        enc = tokenizer(
            [clean_text(t) for t in chunk], truncation=True, max_length=max_length,
            padding=True, return_tensors="pt",
        ).to(device)
        probs = model(**enc).logits.float().softmax(dim=-1)
        scores, ids = probs.max(dim=-1)
        results += [
            Prediction(text, model.config.id2label[int(i)], float(s))
            for text, i, s in zip(chunk, ids, scores, strict=True)
        ]
    return results

"""Models: a causal LM as a classifier or as a writer, its pad token, its trainable weights, its device."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from contextlib import contextmanager

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from course_lib.config import DEFAULT_MODEL, Strategy, TrainConfig
from course_lib.data import LabelMap
from course_lib.errors import AssetError, ConfigError, DataError
from course_lib.runtime.assets import resolve_model


def pick_device(allow_mps: bool = False) -> torch.device:
    """CUDA if present, else CPU; Apple's MPS only when asked (some ops are still missing there)."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if allow_mps and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def ensure_pad_token(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel | None = None) -> bool:
    """Give GPT-style tokenizers a pad token (reusing end-of-text); return True if one was added.

    GPT-2 was trained on unbroken text and never needed padding, so it has no pad token.
    Batches of different lengths need one, and the classifier needs `config.pad_token_id`
    to find each row's last real token, which is the one it classifies.
    """
    added = tokenizer.pad_token is None
    if added:
        tokenizer.pad_token = tokenizer.eos_token
    if model is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return added


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    """The model's tokenizer, padding on the right (the last real token is then easy to find)."""
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(name), trust_remote_code=False)
    tokenizer.padding_side = "right"
    ensure_pad_token(tokenizer)
    return tokenizer


def load_classifier(
    name: str, label_map: LabelMap, log: Callable[[str], None] | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a pretrained causal LM with a fresh classification head sized for the labels.

    `log` hears one line when the head is new (a pretrained LM has none), in place of the table
    transformers would print for every weight the checkpoint lacks.
    """
    _check_head_size(name, label_map)
    try:
        tokenizer = load_tokenizer(name)
        with _without_load_report():
            model, info = AutoModelForSequenceClassification.from_pretrained(
                resolve_model(name),
                num_labels=len(label_map.names),
                id2label=label_map.id2label,
                label2id=label_map.label2id,
                trust_remote_code=False,
                use_safetensors=True,
                output_loading_info=True,
            )
    except OSError as exc:
        # transformers raises OSError both for unknown names and for an unreachable Hub.
        raise AssetError(_cannot_load(name, exc)) from exc
    missing = sorted(info["missing_keys"])
    head = [key for key in missing if key.split(".")[0] != model.base_model_prefix]
    if len(head) < len(missing):  # a pretrained block without weights is a broken checkpoint, not a new head
        warnings.warn(f"{name} lacks pretrained weights, which start random: {sorted(set(missing) - set(head))}",
                      stacklevel=2)
    if head and log is not None:
        log(f"New classification head ({', '.join(head)}, {len(label_map.names)} labels): it starts "
            "untrained, from random weights; fine-tuning trains it.")
    ensure_pad_token(tokenizer, model)
    return model, tokenizer


@contextmanager
def _without_load_report():
    """Keep transformers' table of missing weights out of the log (it reads like an error)."""
    logger = logging.getLogger("transformers.modeling_utils")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def load_causal_lm(name: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a pretrained causal LM with its own language-model head, for teaching it to write."""
    _check_not_classifier(name)
    try:
        tokenizer = load_tokenizer(name)
        model = AutoModelForCausalLM.from_pretrained(
            resolve_model(name), trust_remote_code=False, use_safetensors=True
        )
    except OSError as exc:
        raise AssetError(_cannot_load(name, exc)) from exc
    ensure_pad_token(tokenizer, model)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def _check_not_classifier(name: str) -> None:
    """A model fine-tuned as a classifier has lost its language-model head: it cannot write."""
    config = model_config(name)
    if any(arch.endswith("ForSequenceClassification") for arch in config.architectures or []):
        raise ConfigError(
            f"{name} is a classifier (labels {list(config.id2label.values())}): its language-model "
            "head was replaced by a label head, so it cannot write. Start from a pretrained model."
        )


def _cannot_load(name: str, exc: Exception) -> str:
    """The message for a model name that is neither a local folder nor reachable on the Hub."""
    return (
        f"Could not load model {name!r}: it is not a local folder, and the Hugging Face Hub "
        f"did not provide it ({str(exc).splitlines()[0]}). Check the name, your connection, "
        f"or use the offline default --model {DEFAULT_MODEL}."
    )


def _check_head_size(name: str, label_map: LabelMap) -> None:
    """A model already fine-tuned as a classifier must have one output per label of the data."""
    config = model_config(name)
    is_classifier = any(arch.endswith("ForSequenceClassification") for arch in config.architectures or [])
    if is_classifier and config.num_labels != len(label_map.names):
        raise DataError(
            f"{name} was fine-tuned for {config.num_labels} labels {list(config.id2label.values())}, "
            f"but the data has {len(label_map.names)}: {label_map.names}. Start from the pretrained "
            "model instead, or map the labels to the ones the model knows."
        )


def transformer_blocks(model: PreTrainedModel) -> nn.ModuleList:
    """The stack of transformer blocks (model.model.layers in Llama, model.transformer.h in GPT-2)."""
    n_layers = model.config.num_hidden_layers
    for module in model.base_model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == n_layers:
            return module
    raise TypeError(f"Cannot find the {n_layers} transformer blocks of {type(model).__name__}.")


def classification_head(model: PreTrainedModel) -> nn.Module:
    """The new layer on top of the base model (called `score` in GPT-2 and Llama)."""
    heads = [m for n, m in model.named_children() if n != model.base_model_prefix]
    if len(heads) != 1:
        raise TypeError(f"Expected one head beside the base model, found {len(heads)}.")
    return heads[0]


def final_norms(model: PreTrainedModel) -> list[nn.Module]:
    """Normalisation layers after the last block (ln_f in GPT-2, norm in Llama)."""
    return [m for _, m in model.base_model.named_children() if "norm" in type(m).__name__.lower()]


def is_causal_lm(model: nn.Module) -> bool:
    """True for a model that writes (an output layer over the vocabulary), False for a classifier."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return head is not None and getattr(head, "out_features", None) == model.config.vocab_size


def freeze_for_training(model: PreTrainedModel, train_blocks: int | None) -> None:
    """Train only the top `train_blocks` blocks, the final norm and the head; None trains all.

    A writing model keeps its language-model head frozen: that head is usually tied to the
    token embeddings (one 28 M-parameter matrix in SmolLM2), and training it would change
    every token's input meaning too.
    """
    if train_blocks is None:
        model.requires_grad_(True)
        return
    blocks = transformer_blocks(model)
    if train_blocks > len(blocks):
        raise ConfigError(
            f"train_blocks={train_blocks} but the model has only {len(blocks)} blocks; "
            f"use 0 to {len(blocks)} (or all)."
        )
    model.requires_grad_(False)
    if not is_causal_lm(model):
        classification_head(model).requires_grad_(True)
    if train_blocks > 0:
        for block in blocks[len(blocks) - train_blocks:]:
            block.requires_grad_(True)
        for norm in final_norms(model):
            norm.requires_grad_(True)


def apply_strategy(model: PreTrainedModel, config: TrainConfig) -> nn.Module:
    """Make only the strategy's weights trainable; LoRA returns the model wrapped by peft."""
    if config.strategy == Strategy.LORA:
        return add_lora(model, config.lora_rank, config.lora_targets)
    freeze_for_training(model, config.top_blocks())
    return model


def add_lora(model: PreTrainedModel, rank: int, targets: str | None = None) -> nn.Module:
    """Wrap the model with peft LoRA adapters (on `targets`, default: attention query/value).

    A classifier's new head trains fully beside the adapters; a writing model's head stays frozen.
    """
    from peft import LoraConfig, TaskType, get_peft_model  # imported here: only LoRA needs peft

    # TaskType.SEQ_CLS tells peft to keep the new classification head trainable and saved;
    # target modules default to peft's per-architecture choice (q_proj/v_proj, GPT-2's c_attn),
    # and "all-linear" puts adapters on every linear layer of the blocks (not the output layer).
    task = TaskType.CAUSAL_LM if is_causal_lm(model) else TaskType.SEQ_CLS
    lora = LoraConfig(task_type=task, r=rank, lora_alpha=2 * rank, lora_dropout=0.05,
                      target_modules=targets)
    with warnings.catch_warnings():
        # peft still calls transformers' renamed `is_gradient_checkpointing`; the warning is
        # about peft's code, not the learner's, and would clutter every LoRA run.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, lora)


def merge_adapters(model: nn.Module) -> PreTrainedModel:
    """Fold LoRA adapters into the weights, giving back a plain transformers model (no-op otherwise).

    The merged model is exactly as fast as the original and saves as ordinary safetensors,
    so saving, loading and prediction need not know that LoRA was used.
    """
    if hasattr(model, "merge_and_unload"):
        return model.merge_and_unload()
    return model


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total


def model_config(name: str) -> PretrainedConfig:
    """A model's config (architecture, depth, labels) without loading its weights."""
    try:
        return AutoConfig.from_pretrained(resolve_model(name), trust_remote_code=False)
    except OSError as exc:
        raise AssetError(_cannot_load(name, exc)) from exc


def block_count(name: str) -> int:
    """Number of transformer blocks of a model, read from its config."""
    return model_config(name).num_hidden_layers

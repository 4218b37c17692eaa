"""Frozen-block caching: run the frozen bottom of the model once, train only the top.

When only the top k blocks are trained, the bottom blocks compute the same thing for a review
in every epoch. Computing their output once (the first time a review is drawn) and reusing it
makes each later epoch cost only the top k blocks, which is most of the speed-up on a CPU.
The split is checked against the full model on real data before it is used; an architecture
where it does not match exactly trains without the cache instead.
"""

from __future__ import annotations

import copy
import hashlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from datasets import Dataset, DatasetDict
from torch import nn
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding, PreTrainedModel, PreTrainedTokenizerBase
from transformers.modeling_outputs import SequenceClassifierOutput

from course_lib.config import TrainConfig
from course_lib.data import make_loader
from course_lib.models import classification_head, final_norms, transformer_blocks
from course_lib.runtime.distributed import Parallel
from course_lib.runtime.speed import autocast, uses_bf16


def _truncated_base(model: PreTrainedModel, blocks: list[nn.Module], keep_norm: bool) -> nn.Module:
    """A shallow copy of the base model sharing its weights but holding only `blocks`."""
    base = model.base_model
    stack = transformer_blocks(model)
    clone = copy.copy(base)
    clone._modules = dict(base._modules)  # its own module table; the weights stay shared
    for name, child in base.named_children():
        if child is stack:
            clone._modules[name] = nn.ModuleList(blocks)
        elif not keep_norm and any(child is norm for norm in final_norms(model)):
            clone._modules[name] = nn.Identity()
    return clone


class FrozenBottom(nn.Module):
    """Embeddings and the frozen blocks; its output is the input of the first trained block."""

    def __init__(self, model: PreTrainedModel, train_blocks: int):
        super().__init__()
        blocks = list(transformer_blocks(model))
        # With no block to train, the features are the final (normalised) hidden states.
        self.base = _truncated_base(model, blocks[: len(blocks) - train_blocks], train_blocks == 0)

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Hidden states (batch, length, hidden) of the frozen part."""
        return self.base(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)[0]


class TrainableTop(nn.Module):
    """The trained blocks, final norm and head, applied to cached hidden states."""

    def __init__(self, model: PreTrainedModel, train_blocks: int):
        super().__init__()
        blocks = list(transformer_blocks(model))
        self.head = classification_head(model)
        self.top = _truncated_base(model, blocks[len(blocks) - train_blocks:], True) if train_blocks else None

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor | None = None,
    ) -> SequenceClassifierOutput:
        """Same output as the full classifier's forward, from the cached hidden states."""
        hidden = hidden_states
        if self.top is not None:
            hidden = self.top(inputs_embeds=hidden, attention_mask=attention_mask, use_cache=False)[0]
        # Right padding: each row's last real token sits at (its length - 1).
        last = attention_mask.sum(dim=1) - 1
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        logits = self.head(pooled)
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


def collate_features(items: list[dict]) -> dict[str, torch.Tensor]:
    """Pad cached hidden states to the batch's longest review (dynamic padding, as for tokens)."""
    states = [item["hidden_states"] for item in items]
    lengths = torch.tensor([s.shape[0] for s in states])
    mask = (torch.arange(int(lengths.max()))[None, :] < lengths[:, None]).long()
    return {
        "hidden_states": pad_sequence(states, batch_first=True),
        "attention_mask": mask,
        "labels": torch.tensor([item["labels"] for item in items]),
    }


class CachingLoader:
    """Batches of frozen-part features; each review's are computed the first time it is drawn.

    The first epoch runs the frozen blocks batch by batch as training goes, so learning starts
    at once instead of after a long caching pass; later epochs (and later validations) only
    read the stored features. Batches follow `batch_sampler`, the token loader's own (sharded
    when several processes train), so cached training sees the same batches as uncached training.
    """

    def __init__(
        self,
        bottom: FrozenBottom,
        tokens: Dataset,
        tokenizer: PreTrainedTokenizerBase,
        batch_sampler: Iterable[list[int]],
        device: torch.device,
        store: dict[int, torch.Tensor] | None = None,
        amp: bool = False,
    ):
        self.bottom, self.tokens, self.device, self.amp = bottom, tokens, device, amp
        self.batch_sampler = batch_sampler  # train() saves its generator's state in checkpoints
        self.collator = DataCollatorWithPadding(tokenizer, return_tensors="pt")
        self.labels = list(tokens["labels"])
        self.store = {} if store is None else store  # review index -> (length, hidden) features

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for indices in self.batch_sampler:
            self._compute([i for i in indices if i not in self.store])
            yield collate_features([{"hidden_states": self.store[i], "labels": self.labels[i]} for i in indices])

    def _compute(self, indices: list[int]) -> None:
        """Run the frozen part on reviews not seen yet and keep each one's unpadded states."""
        if not indices:
            return
        self.bottom.eval()
        batch = self.collator([self.tokens[i] for i in indices])
        mask = batch["attention_mask"]
        with autocast(self.device, self.amp):  # the same precision as the uncached forward pass
            hidden = self.bottom(batch["input_ids"].to(self.device), mask.to(self.device)).float().cpu()
        for index, row, length in zip(indices, hidden, mask.sum(dim=1).tolist(), strict=True):
            self.store[index] = row[:length].clone()


@torch.inference_mode()
def split_matches_full_model(
    model: PreTrainedModel, bottom: FrozenBottom, top: TrainableTop, batch: dict, device: torch.device
) -> bool:
    """True when bottom+top reproduce the full model's logits on a real batch (eval mode)."""
    was_training = model.training
    model.eval()
    ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
    full = model(input_ids=ids, attention_mask=mask).logits
    split = top(bottom(ids, mask), mask).logits
    model.train(was_training)
    return torch.allclose(full, split, atol=1e-4, rtol=1e-3)



# Frozen features of recent runs, so re-running training (another learning rate, a widget click)
# skips the frozen pass. Four entries: train and validation of the last two settings.
_MEMO: OrderedDict[str, dict[int, torch.Tensor]] = OrderedDict()
_MEMO_SIZE = 4


def feature_key(model_path: str, train_blocks: int, input_ids: list[list[int]], labels: list[int],
                precision: str = "float32") -> str:
    """What frozen features depend on: the pretrained weights, where the split is, the tokens, the precision.

    The tokens already reflect the data, its cleaning and max_length; the frozen blocks never
    change during training, so weights loaded from the same path give the same features. bf16
    and float32 give slightly different features, so a float32 run never reuses a bf16 run's.
    """
    digest = hashlib.sha256(repr((input_ids, labels)).encode())
    return f"{model_path}|top={train_blocks}|{precision}|{digest.hexdigest()}"


def feature_store(key: str) -> tuple[dict[int, torch.Tensor], bool]:
    """The feature store for `key` (shared with earlier runs); True when it already holds features."""
    if key in _MEMO:
        _MEMO.move_to_end(key)
        return _MEMO[key], bool(_MEMO[key])
    _MEMO[key] = {}
    while len(_MEMO) > _MEMO_SIZE:
        _MEMO.popitem(last=False)
    return _MEMO[key], False


def training_loaders(
    model: PreTrainedModel,
    tokens: DatasetDict,
    tokenizer: PreTrainedTokenizerBase,
    config: TrainConfig,
    device: torch.device,
    log: Callable[[str], None] = print,
    parallel: Parallel | None = None,
) -> tuple[nn.Module, Iterable[dict], Iterable[dict]]:
    """The module to train and its train/validation batches, with the frozen blocks cached if possible.

    With several processes the loaders yield this process's shard; the cache then holds the
    features of the reviews this process has drawn.
    """
    def token_loader(split: str, shuffle: bool) -> DataLoader:
        size = config.batch_size if shuffle else config.eval_batch_size
        return make_loader(tokens[split], tokenizer, size, shuffle=shuffle, seed=config.seed,
                           sort_by_length=not shuffle, parallel=parallel)

    k = config.top_blocks()
    if config.cache_frozen and k is not None and k < len(transformer_blocks(model)):
        model.to(device)
        bottom, top = FrozenBottom(model, k), TrainableTop(model, k)
        probe = next(iter(token_loader("validation", False)))
        if split_matches_full_model(model, bottom, top, probe, device):
            loaders = []
            precision = "bf16" if uses_bf16(device, config.mixed_precision) else "float32"
            for split, shuffle in (("train", True), ("validation", False)):
                plain = token_loader(split, shuffle)  # its sampler: the same batches as uncached
                key = feature_key(model.config.name_or_path, k, list(tokens[split]["input_ids"]),
                                  list(tokens[split]["labels"]), precision)
                store, reused = feature_store(key)
                if reused:
                    log(f"Reusing the {split} features an earlier run in this process computed.")
                loaders.append(CachingLoader(bottom, tokens[split], tokenizer, plain.batch_sampler,
                                             device, store, config.mixed_precision))
            log(f"The {len(transformer_blocks(model)) - k} frozen blocks run once per review (during the "
                "first epoch); later epochs reuse their output.")
            return top, loaders[0], loaders[1]
        log(f"{type(model).__name__} cannot be split exactly; training without the cache.")
    return model, token_loader("train", True), token_loader("validation", False)

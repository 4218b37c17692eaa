"""Generation: let a (fine-tuned) GPT write responses, in batches, and score them while training.

`model.generate` does the decoding (greedy or sampled, with the key-value cache, so each new
token costs one step through the model, not a pass over the whole text). This module adds what
a course needs around it: the prompt in the model's chat layout, batches of similar length,
padding on the left, and the answers back in the order of the prompts.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import pandas as pd
import torch
from torch import nn
from transformers import LogitsProcessorList, PreTrainedTokenizerBase, RepetitionPenaltyLogitsProcessor

from course_lib.config import DecodeConfig
from course_lib.metrics import generation_metrics
from course_lib.pairs import format_prompt, render_chat
from course_lib.progress import TrainingCallback
from course_lib.records import EpochRecord, History
from course_lib.runtime.distributed import Parallel
from course_lib.runtime.speed import autocast

Prompt = str | list[dict[str, str]]  # a prompt, or a conversation's turns so far


@contextmanager
def padding_side(tokenizer: PreTrainedTokenizerBase, side: str) -> Iterator[PreTrainedTokenizerBase]:
    """Pad on `side` inside the block, then restore the tokenizer's own setting."""
    before = tokenizer.padding_side
    tokenizer.padding_side = side
    try:
        yield tokenizer
    finally:
        tokenizer.padding_side = before


@dataclass
class Reply:
    """A written text, how many tokens it took, and whether the model ended it itself."""

    text: str
    tokens: int  # written before the end-of-turn token (or all max_new_tokens of them)
    stopped: bool  # the model wrote its end-of-turn token before max_new_tokens


def generate(model: nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Prompt],
             system: str | None = None, decode: DecodeConfig | None = None, parallel: Parallel | None = None,
             ) -> list[str]:
    """Write one response per prompt, in the prompts' order (see `write`, which also says how each ended)."""
    return [reply.text for reply in write(model, tokenizer, prompts, system, decode, parallel)]


@torch.inference_mode()
def write(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Prompt],
    system: str | None = None,
    decode: DecodeConfig | None = None,
    parallel: Parallel | None = None,
) -> list[Reply]:
    """Write one reply per prompt (a text, or a conversation's turns so far), in the prompts' order.

    Prompts are padded on the left: a decoder writes after the last token of its input, so
    every row of a batch must end at the same place. Greedy decoding (the default) always
    picks the most likely token, so the same model and prompts give the same texts. With
    `parallel` from several processes, each writes for every Nth prompt and all get every text.
    """
    if parallel is not None and parallel.num_processes > 1:
        mine = range(parallel.process_index, len(prompts), parallel.num_processes)
        replies = write(model, tokenizer, [prompts[i] for i in mine], system, decode)
        return [reply for _, reply in sorted(parallel.gather_object(list(zip(mine, replies, strict=True))),
                                             key=lambda pair: pair[0])]
    decode = decode or DecodeConfig()
    decode.validate()
    model.eval()
    device = next(model.parameters()).device
    texts = [format_prompt(tokenizer, p, system) if isinstance(p, str) else render_chat(tokenizer, p, True)
             for p in prompts]
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False).input_ids]
    order = sorted(range(len(texts)), key=lengths.__getitem__)  # similar lengths share a batch
    results: list[Reply] = [Reply("", 0, False)] * len(texts)
    if decode.do_sample:
        torch.manual_seed(decode.seed)  # sampled text is random, but repeatable with its seed
    with padding_side(tokenizer, "left"), autocast(device, decode.mixed_precision):
        for start in range(0, len(order), decode.batch_size):
            chosen = order[start:start + decode.batch_size]
            batch = tokenizer([texts[i] for i in chosen], return_tensors="pt", padding=True,
                              add_special_tokens=False).to(device)
            output = model.generate(**batch, **_decoding_options(decode, tokenizer, batch["input_ids"].shape[1]))
            for i, row in zip(chosen, output[:, batch["input_ids"].shape[1]:].tolist(), strict=True):
                results[i] = _reply(tokenizer, row)  # the echoed prompt dropped
    return results


def _reply(tokenizer: PreTrainedTokenizerBase, row: list[int]) -> Reply:
    """The text of newly written tokens, up to the end-of-turn token (rows that end early are padded)."""
    stopped = tokenizer.eos_token_id in row
    tokens = row.index(tokenizer.eos_token_id) if stopped else len(row)
    return Reply(tokenizer.decode(row, skip_special_tokens=True).strip(), tokens, stopped)


def _decoding_options(decode: DecodeConfig, tokenizer: PreTrainedTokenizerBase, prompt_width: int) -> dict:
    """Keyword arguments for model.generate; sampling settings only when sampling (else they are unused).

    `prompt_width` is the padded prompts' length: the repetition penalty counts only what comes after.
    """
    options = {"max_new_tokens": decode.max_new_tokens, "do_sample": decode.do_sample,
               "pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id}
    if decode.repetition_penalty != 1:
        options["logits_processor"] = LogitsProcessorList([RepetitionPenaltyLogitsProcessor(
            float(decode.repetition_penalty), prompt_ignore_length=prompt_width)])
    if decode.do_sample:
        options.update(temperature=decode.temperature, top_p=decode.top_p, top_k=0)
    else:
        # Cleared so a model's own sampling defaults (some ship them) do not trigger warnings.
        options.update(temperature=None, top_p=None, top_k=None)
    return options


def side_by_side(prompts: Sequence[str], columns: dict[str, Sequence[str]],
                 references: Sequence[Sequence[str]] | None = None) -> pd.DataFrame:
    """A table of prompts with each model's text beside them (and one reference), for reading outputs."""
    table = pd.DataFrame({"prompt": list(prompts), **{name: list(texts) for name, texts in columns.items()}})
    if references is not None:
        table["a human reference"] = [refs[0] for refs in references]
    return table


class ChatSession:
    """A conversation with a model that keeps its history: what `./run chat` and chapter 11's chat box use.

    Each reply is written for the whole conversation so far, rendered by the chat template: the
    model itself has no memory between calls, so the history *is* its memory.
    """

    def __init__(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, system: str | None = None,
                 decode: DecodeConfig | None = None):
        self.model, self.tokenizer, self.decode = model, tokenizer, decode or DecodeConfig()
        self.system = system
        self.messages: list[dict[str, str]] = []
        self.reset()

    def reset(self, system: str | None = None) -> None:
        """Forget every turn; keep the system prompt, or start with a new one."""
        if system is not None:
            self.system = system.strip() or None
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def say(self, text: str) -> Reply:
        """Add the user's turn, write the assistant's reply, keep both in the history."""
        self.messages.append({"role": "user", "content": text})
        reply = write(self.model, self.tokenizer, [self.messages], None, self.decode)[0]
        self.messages.append({"role": "assistant", "content": reply.text})
        return reply


class GenerationScores(TrainingCallback):
    """After each epoch, write for some validation prompts and add BLEU and ROUGE-L to the epoch's record.

    The validation loss says how well the model predicts the references token by token; these
    say how good its own text is. Generating costs time, so keep the prompt list short.
    """

    def __init__(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
                 references: Sequence[Sequence[str]], system: str | None, decode: DecodeConfig,
                 parallel: Parallel | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.prompts, self.references = list(prompts), list(references)
        self.system, self.decode, self.parallel = system, decode, parallel

    def on_epoch_end(self, record: EpochRecord, history: History) -> None:
        texts = generate(self.model, self.tokenizer, self.prompts, self.system, self.decode, self.parallel)
        scores = generation_metrics(texts, self.references)
        record.metrics["val_bleu"] = scores["bleu"]
        record.metrics["val_rouge_l"] = scores["rouge_l"]

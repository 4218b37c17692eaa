"""The zero-shot baseline: ask the pretrained chat model for the label, with no fine-tuning at all.

An instruction-tuned model can already be asked "positive or negative?". Comparing the first
token of its answer for each label word gives a classifier for free; fine-tuning has to beat it
to be worth its cost.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from course_lib.errors import ConfigError
from course_lib.generation import padding_side
from course_lib.pairs import format_prompt

INSTRUCTION = "Is this movie review positive or negative? Answer with one word."


def answer_token_ids(tokenizer: PreTrainedTokenizerBase, words: Sequence[str]) -> list[list[int]]:
    """For each answer word, the first token of its spellings (chat models often capitalise)."""
    per_word = []
    for word in words:
        ids = {tokenizer(variant, add_special_tokens=False).input_ids[0]
               for variant in (word.lower(), word.capitalize())}
        per_word.append(sorted(ids - {tokenizer.unk_token_id}))
    flat = [i for ids in per_word for i in ids]
    if not all(per_word) or len(set(flat)) != len(flat):
        raise ConfigError(f"The answer words {list(words)} start with the same (or an unknown) token; "
                          "choose words whose first tokens differ.")
    return per_word


@torch.inference_mode()
def zero_shot_predict(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    words: Sequence[str],
    instruction: str = INSTRUCTION,
    batch_size: int = 16,
) -> list[int]:
    """For each text, the index of the answer word the model finds likeliest to reply with."""
    ids = answer_token_ids(tokenizer, words)
    device = next(model.parameters()).device
    model.eval()
    prompts = [format_prompt(tokenizer, text, instruction) for text in texts]
    predictions = []
    with padding_side(tokenizer, "left"):  # every row must end where the answer starts
        for start in range(0, len(prompts), batch_size):
            batch = tokenizer(prompts[start:start + batch_size], return_tensors="pt", padding=True,
                              add_special_tokens=False).to(device)
            next_token = model(**batch).logits[:, -1].float().log_softmax(dim=-1)
            # Every spelling of a word counts for it: log(p(lower) + p(Capitalised)).
            per_word = torch.stack([next_token[:, word_ids].logsumexp(dim=-1) for word_ids in ids], dim=-1)
            predictions += per_word.argmax(dim=-1).tolist()
    return predictions

"""Prompt-response data for teaching a GPT to write: load, clean, split by prompt, tokenize, batch.

The classification half reads (text, label) rows; this half reads (prompt, response) rows. A
prompt may come with several human responses (E2E has about 4.7 per restaurant): training sees
each pair, and evaluation compares one generated text with all of that prompt's references.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from datasets import Dataset, DatasetDict
from sklearn.model_selection import GroupShuffleSplit
from transformers import DataCollatorForSeq2Seq, PreTrainedTokenizerBase

from course_lib.config import BUILTIN_PAIRS, ChatDataConfig, PairDataConfig
from course_lib.data import (
    SPLITS,
    CleaningReport,
    clean_text,
    drop_rows,
    finish_cleaning,
    load_hub_dataset,
    read_csv_file,
    select_columns,
    subsample,
)
from course_lib.errors import DataError
from course_lib.records import IGNORE_INDEX
from course_lib.runtime.assets import COMMON_GEN, E2E_NLG, asset_path

# Each built-in set (named in config.BUILTIN_PAIRS) with its instruction, given to the model as
# the chat's system turn.
BUILTIN_TASKS = dict(zip(BUILTIN_PAIRS, (
    (E2E_NLG, "Describe the restaurant in one or two sentences, using every attribute."),
    (COMMON_GEN, "Write one short everyday sentence that uses all of these words."),
), strict=True))


@dataclass
class PreparedPairs:
    """Cleaned prompt-response pairs split by prompt, with the instruction that goes with them."""

    splits: dict[str, pd.DataFrame]  # columns prompt, response
    report: CleaningReport
    system: str | None

    def references(self, split: str) -> tuple[list[str], list[list[str]]]:
        """The split's distinct prompts and, for each, all of its responses (the references)."""
        return references_by_prompt(self.splits[split])


def read_pairs(config: PairDataConfig) -> pd.DataFrame:
    """Read prompt-response pairs as a table with columns prompt and response."""
    if config.hub_dataset:
        return _read_hub_pairs(config)
    if config.source in BUILTIN_PAIRS:
        return read_bigbench_task(asset_path(BUILTIN_TASKS[config.source][0]))
    path = Path(config.source)
    if not path.exists() and path.suffix.lower() != ".csv":
        raise DataError(
            f"--data {config.source!r} is neither a built-in set ({', '.join(BUILTIN_PAIRS)}) nor an "
            "existing CSV file."
        )
    return _select_pairs(read_csv_file(path), config)


def read_bigbench_task(path: Path) -> pd.DataFrame:
    """One row per (input, target) of a BIG-bench JSON task; a list of targets gives one row each."""
    task = json.loads(Path(path).read_text(encoding="utf-8"))
    rows = []
    for example in task["examples"]:
        targets = example["target"] if isinstance(example["target"], list) else [example["target"]]
        rows += [{"prompt": example["input"], "response": target} for target in targets]
    return pd.DataFrame(rows)


def _read_hub_pairs(config: PairDataConfig) -> pd.DataFrame:
    """All splits of a Hub data set as one table; the course re-splits it by prompt."""
    from datasets import concatenate_datasets

    frame = concatenate_datasets(list(load_hub_dataset(config.hub_dataset).values())).to_pandas()
    return _select_pairs(frame, config)


def _select_pairs(frame: pd.DataFrame, config: PairDataConfig) -> pd.DataFrame:
    """Keep and rename the prompt and response columns, or say which columns exist."""
    columns = {"prompt": config.prompt_column, "response": config.response_column}
    return select_columns(frame, columns, "--prompt-column / --response-column")


def clean_pairs(frame: pd.DataFrame) -> tuple[pd.DataFrame, CleaningReport]:
    """Drop pairs that cannot teach anything (missing or empty text, exact repeats) and report each drop."""
    report = CleaningReport(rows_in=len(frame))
    is_text = frame["prompt"].map(lambda v: isinstance(v, str)) & frame["response"].map(
        lambda v: isinstance(v, str))
    frame = drop_rows(frame, is_text, report, "non-text")
    frame = frame.assign(prompt=frame["prompt"].map(clean_text), response=frame["response"].map(clean_text))
    frame = drop_rows(frame, (frame["prompt"] != "") & (frame["response"] != ""), report,
                      "empty prompt or response")
    frame = drop_rows(frame, ~frame.duplicated(keep="first"), report, "duplicate")
    return finish_cleaning(frame, report, "prompt-response pairs", " Check that --response-column holds "
                           "the texts the model should learn to write.")


def split_pairs(frame: pd.DataFrame, config: PairDataConfig) -> dict[str, pd.DataFrame]:
    """Split by prompt: all responses to one prompt stay in one split, so test prompts are unseen."""
    prompts = frame["prompt"].nunique()
    if prompts < 10:
        raise DataError(f"Only {prompts} distinct prompts: a train/validation/test split by prompt "
                        "needs at least 10. Add examples.")
    train, val, test = split_by_group(frame, config, "prompt")
    train = subsample(train, config.max_train_pairs, config.seed)
    val = subsample(val, config.max_val_pairs, config.seed)
    if config.max_test_prompts is not None:
        keep = pd.Series(test["prompt"].unique()).sample(frac=1.0, random_state=config.seed)
        test = test[test["prompt"].isin(set(keep[: config.max_test_prompts]))]
    return {"train": train.reset_index(drop=True), "validation": val.reset_index(drop=True),
            "test": test.reset_index(drop=True)}


def split_by_group(frame: pd.DataFrame, config: PairDataConfig | ChatDataConfig,
                   group: str) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Train, validation and test, each holding whole groups: about val_fraction and test_fraction of them."""
    rest, test = _hold_out(frame, config.test_fraction, config.seed, group)
    train, val = _hold_out(rest, config.val_fraction / (1 - config.test_fraction), config.seed + 1, group)
    return train, val, test


def _hold_out(frame: pd.DataFrame, fraction: float, seed: int, group: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Hold out about `fraction` of the groups (prompts), with all of their rows (responses)."""
    splitter = GroupShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
    keep, held = next(splitter.split(frame, groups=frame[group]))
    return frame.iloc[keep], frame.iloc[held]


def references_by_prompt(frame: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Distinct prompts in first-seen order, each with the list of its responses."""
    grouped = frame.groupby("prompt", sort=False)["response"].apply(list)
    return list(grouped.index), list(grouped.values)


def prepare_pairs(config: PairDataConfig, system: str | None = None) -> PreparedPairs:
    """Steps 1-3 of the document for generation: load the pairs, clean them, split them by prompt."""
    frame, report = clean_pairs(read_pairs(config))
    if system is None and config.source in BUILTIN_TASKS and not config.hub_dataset:
        system = BUILTIN_TASKS[config.source][1]
    return PreparedPairs(split_pairs(frame, config), report, system)


def chat_messages(prompt: str, system: str | None) -> list[dict[str, str]]:
    """The conversation the model sees: an optional instruction, then the prompt as the user's turn."""
    messages = [{"role": "system", "content": system}] if system else []
    return [*messages, {"role": "user", "content": prompt}]


def format_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str, system: str | None) -> str:
    """The prompt as the model was taught to read it: its chat template, ending where the answer starts."""
    return render_chat(tokenizer, chat_messages(prompt, system), add_generation_prompt=True)


# The layout for tokenizers without a chat template, per role; an assistant turn ends with end-of-text.
PLAIN_LAYOUT = {"system": "### Instruction:\n{}\n\n", "user": "### Input:\n{}\n\n",
                "assistant": "### Response:\n{}"}


def render_chat(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]],
                add_generation_prompt: bool = False) -> str:
    """A conversation as the model reads it; with `add_generation_prompt`, ending where its reply starts.

    Instruction-tuned models (SmolLM2-Instruct) were trained on text in their chat template's
    exact layout, so using it gives them their best start. Base models such as GPT-2 have no
    template; for them a plain "Instruction / Input / Response" layout is used, the one Alpaca
    made common.
    """
    if tokenizer.chat_template:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    text = "".join(PLAIN_LAYOUT[m["role"]].format(m["content"]) + tokenizer.eos_token * (m["role"] == "assistant")
                   for m in messages)
    return text + ("### Response:\n" if add_generation_prompt else "")


def marks_assistant_turns(chat_template: str | None) -> bool:
    """Whether a template has `{% generation %}` markers, which TRL's assistant-only loss needs.

    Matched as transformers matches them, so `{%- generation %}` and other spacings count too.
    """
    return bool(chat_template and re.search(r"\{%-?\s*generation\s*-?%\}", chat_template))


def response_suffix(tokenizer: PreTrainedTokenizerBase) -> str:
    """What follows the response in training text: the end-of-turn token the model must learn to write.

    Generation stops when the model writes it, so it is part of the target, not of the padding.
    """
    if tokenizer.chat_template:
        return tokenizer.eos_token + "\n"  # <|im_end|> closes the assistant's turn
    return tokenizer.eos_token


def encode_pair(
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    response: str,
    system: str | None,
    max_length: int,
    mask_prompt: bool = True,
) -> dict[str, list[int]]:
    """Token ids of prompt + response, labels -100 on the prompt (when masked): only the response is learned."""
    return _join(*_pair_ids(tokenizer, prompt, response, system, max_length), max_length, mask_prompt)


def _pair_ids(
    tokenizer: PreTrainedTokenizerBase, prompt: str, response: str, system: str | None, max_length: int
) -> tuple[list[int], list[int]]:
    """The formatted prompt's ids and the response's ids (end-of-turn included), unshortened."""
    prompt_ids = tokenizer(format_prompt(tokenizer, prompt, system), add_special_tokens=False).input_ids
    if len(prompt_ids) >= max_length:
        raise DataError(
            f"A prompt is {len(prompt_ids)} tokens long with its template, which leaves no room for "
            f"the response within max_length={max_length}: {prompt[:60]!r}... Raise --max-length "
            "or shorten the prompts."
        )
    response_ids = tokenizer(response + response_suffix(tokenizer), add_special_tokens=False).input_ids
    return prompt_ids, response_ids


def _join(prompt_ids: list[int], response_ids: list[int], max_length: int, mask_prompt: bool) -> dict:
    """One training row: inputs are prompt then response; the loss looks only at unmasked labels."""
    input_ids = (prompt_ids + response_ids)[:max_length]
    # The model shifts labels itself (position t predicts token t+1), so labels line up with inputs.
    labels = ([IGNORE_INDEX] * len(prompt_ids) if mask_prompt else prompt_ids) + response_ids
    return {"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "labels": labels[:max_length]}


def tokenize_pairs(
    splits: dict[str, pd.DataFrame],
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    system: str | None,
    mask_prompt: bool = True,
) -> tuple[DatasetDict, int]:
    """Every pair of every split encoded like encode_pair, and how many were cut at max_length."""
    parts, truncated = {}, 0
    for name in SPLITS:
        rows = []
        for prompt, response in zip(splits[name]["prompt"], splits[name]["response"], strict=True):
            prompt_ids, response_ids = _pair_ids(tokenizer, prompt, response, system, max_length)
            truncated += len(prompt_ids) + len(response_ids) > max_length
            rows.append(_join(prompt_ids, response_ids, max_length, mask_prompt))
        parts[name] = rows_dataset(rows)
    return DatasetDict(parts), truncated


def rows_dataset(rows: list[dict]) -> Dataset:
    """Encoded rows (input_ids, attention_mask, labels) as a Dataset the loaders batch."""
    keys = ("input_ids", "attention_mask", "labels")
    return Dataset.from_dict({key: [row[key] for row in rows] for key in keys})


def assistant_spans(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]],
                    max_length: int | None = None) -> tuple[list[int], list[tuple[int, int]]]:
    """A conversation's token ids and, per assistant turn, the [start, end) of its tokens.

    The bounds come from rendering the conversation turn by turn with the tokenizer's own
    template (up to the reply's start, then through the reply) and counting tokens, so they hold
    for any template that renders a conversation as its turns one after the other. A turn ends
    with its end-of-turn token (the model must learn to write it, or it never stops); what the
    template adds after it (ChatML's newline) belongs to no turn, so it is no target.

    With `max_length`, the turns stop at the first one that ends past it. Each turn renders the
    conversation up to it again, so a long chat costs the square of its turns without this limit
    (a minute for the chat task's 500 conversations on 2 cores, against seconds with it).
    """
    ids = _token_ids(tokenizer, render_chat(tokenizer, messages))
    spans = []
    for i, message in enumerate(messages):
        if message["role"] == "assistant":
            start = _prefix_length(tokenizer, messages[:i], True, ids)
            end = _prefix_length(tokenizer, messages[:i + 1], False, ids)
            ends = [j for j in range(start, end) if ids[j] == tokenizer.eos_token_id]
            end = ends[-1] + 1 if ends else end
            if max_length is not None and end > max_length:
                break  # later turns end later still
            spans.append((start, end))
    return ids, spans


def _token_ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Token ids of rendered text (the template already wrote every special token)."""
    return tokenizer(text, add_special_tokens=False).input_ids


def _prefix_length(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], reply_starts: bool,
                   ids: list[int]) -> int:
    """How many of the whole conversation's tokens the first turns (and a reply's opening) take."""
    prefix = _token_ids(tokenizer, render_chat(tokenizer, messages, reply_starts))
    if ids[:len(prefix)] != prefix:
        raise DataError("The tokenizer's chat template does not render a conversation as its turns one after "
                        "the other, so the assistant's tokens cannot be found; use a model with such a template.")
    return len(prefix)


def encode_conversation(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], max_length: int,
                        learn_end_of_turn: bool = True) -> tuple[dict, int] | None:
    """Token ids of a conversation with labels on its assistant turns only, and how many messages it kept.

    A conversation longer than max_length is cut after its last assistant turn that fits (None
    when not even the first fits). `learn_end_of_turn=False` masks the end-of-turn token like
    padding: the pitfall that makes a model never stop.
    """
    ids, fitting = assistant_spans(tokenizer, messages, max_length)
    if not fitting:
        return None
    end = fitting[-1][1]
    labels = [IGNORE_INDEX] * end
    for start, stop in fitting:
        if not learn_end_of_turn and ids[stop - 1] == tokenizer.eos_token_id:
            stop -= 1
        labels[start:stop] = ids[start:stop]
    assistant_turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    row = {"input_ids": ids[:end], "attention_mask": [1] * end, "labels": labels}
    return row, assistant_turns[len(fitting) - 1] + 1


def pair_collator(tokenizer: PreTrainedTokenizerBase) -> DataCollatorForSeq2Seq:
    """Pads each batch to its longest pair: pad tokens in the inputs, -100 in the labels.

    transformers' seq2seq collator pads `labels` with -100 separately from the inputs, which is
    exactly what a decoder-only model with masked labels needs (padding must never be a target,
    and here the pad token is the end-of-turn token, which is one).
    """
    return DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX,
                                  return_tensors="pt")

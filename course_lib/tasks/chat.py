"""Chat: answer the user's turns of a conversation as an assistant (questions over a passage, chit-chat).

What differs from `generate`, which it extends: the data are whole conversations (chats.py); the
loss covers every assistant turn with its end-of-turn token and nothing else, found from the
chat template (pairs.encode_conversation); the test score is exact match and F1 of the QA
replies, the held-out assistant loss, the stop rate (replies the model ends itself) and the
length of its replies, before fine-tuning and after.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from statistics import mean

import pandas as pd
from datasets import Dataset, DatasetDict
from torch import nn
from transformers import PreTrainedTokenizerBase

from course_lib.chats import BUILTIN_ASSETS, QUESTION, PreparedChats, prepare_chats
from course_lib.config import BUILTIN_CHATS, ChatDataConfig, RunConfig, Task
from course_lib.data import SPLITS, make_loader
from course_lib.errors import ConfigError, DataError
from course_lib.generation import Reply, side_by_side, write
from course_lib.metrics import qa_metrics
from course_lib.pairs import encode_conversation, pair_collator, rows_dataset
from course_lib.runtime.distributed import Parallel
from course_lib.tasks.base import Log, Scores, TaskSpec, describe_training, option
from course_lib.tasks.generate import Generate, decode_from_args, save_writer, writer_training
from course_lib.training import evaluate

DEFAULTS = RunConfig.for_chat()


class Chat(Generate):
    """Conversations in, assistant replies out."""

    task = Task.CHAT
    output_dir = "outputs/assistant"
    size_field, unit, min_train = "max_train", "conversations", 48
    score_columns = (("EM", "exact_match", "{:.1f}"), ("F1", "f1", "{:.1f}"), ("stop %", "stop_rate", "{:.0f}"),
                     ("loss", "assistant_loss", "{:.2f}"), ("reply tokens", "reply_tokens", "{:.1f}"))
    shared_options = ("system", "max_new_tokens", "repetition_penalty")

    def defaults_line(self) -> str:
        return (f"Defaults: {DEFAULTS.data.max_train} conversations of the offline {BUILTIN_CHATS[0]} sets "
                f"(--data: {', '.join(BUILTIN_CHATS)} or a .jsonl file of {{\"messages\": [...]}} lines); "
                f"{describe_training(DEFAULTS.train)}.")

    def add_options(self, group: argparse._ArgumentGroup) -> list[argparse.Action]:
        return [
            group.add_argument("--max-test", type=int, default=None,
                               help="test conversations of each kind, QA and chat "
                                    f"(default {DEFAULTS.data.max_test})"),
            group.add_argument("--mask-end-of-turn", action="store_true",
                               help="the pitfall, for comparison: mask the end-of-turn token like padding, "
                                    "so the model never learns to stop"),
        ]

    def run_config(self, args: argparse.Namespace, common: dict, given: dict) -> RunConfig:
        if args.hub_dataset:
            raise ConfigError("--task chat reads conversations from a JSON Lines file (--data), "
                              "not --hub-dataset.")
        train = writer_training(args, {**common, **given}, DEFAULTS.train)
        data = ChatDataConfig(source=args.data or BUILTIN_CHATS[0], seed=args.seed,
                              max_train=option(args.max_train, DEFAULTS.data.max_train) or None,
                              max_test=option(args.max_test, DEFAULTS.data.max_test) or None)
        decode = decode_from_args(args, DEFAULTS.decode, mixed_precision=common["mixed_precision"])
        return RunConfig.for_chat(model=args.model, output_dir=Path(args.output or self.output_dir), data=data,
                                  train=train, decode=decode, system=args.system,
                                  learn_end_of_turn=not args.mask_end_of_turn)

    def prepare(self, run: RunConfig) -> PreparedChats:
        return prepare_chats(run.data, run.system)

    def describe(self, data: PreparedChats) -> tuple[str, dict]:
        sizes = {name: frame["kind"].value_counts().to_dict() for name, frame in data.splits.items()}
        return f"Data: {'; '.join(data.notes)}. Split by passage and conversation: {sizes}.", sizes

    def encode(self, run: RunConfig, data: PreparedChats, tokenizer: PreTrainedTokenizerBase,
               log: Log) -> DatasetDict:
        """Every conversation with labels on its assistant turns; too long ones cut at a turn, or dropped.

        The splits keep the turns that were encoded, so the replies scored are the ones trained on.
        """
        parts, counts = {}, {"cut": 0, "dropped": 0}
        for name in SPLITS:
            parts[name] = _encode_split(data, name, tokenizer, run, counts)
        if any(counts.values()):
            log(f"Longer than max_length={run.train.max_length} tokens: {counts['cut']} conversations cut "
                f"after their last assistant turn that fits, {counts['dropped']} dropped (raise --max-length "
                "to keep them).")
        return DatasetDict(parts)

    def score(self, model, tokenizer, data, tokens, run, parallel: Parallel) -> Scores:
        prompts, references = data.replies("test")
        kinds = list(data.splits["test"]["kind"])
        replies = write(model, tokenizer, prompts, None, run.decode, parallel)
        chats = [i for i, kind in enumerate(kinds) if kind == "chat"]
        metrics = {**reply_scores(replies, references, kinds, tokenizer),
                   **assistant_loss(model, tokenizer, tokens["test"].select(chats) if chats else tokens["test"],
                                    run, parallel)}
        rows = zip(kinds, prompts, references, replies, strict=True)
        return Scores(metrics, [{"kind": kind, "messages": prompt, "references": refs, "output": reply.text}
                                for kind, prompt, refs, reply in rows])

    def save_model(self, folder, model, tokenizer, data: PreparedChats, run: RunConfig, metrics: dict) -> Path:
        return save_writer(folder, model, tokenizer, run, data.system, metrics)

    def data_source(self, run: RunConfig) -> tuple[str, str]:
        if run.data.source not in BUILTIN_CHATS:
            return TaskSpec.data_source(self, run)
        assets = [BUILTIN_ASSETS[name] for name in run.data.source.split("+")]
        return " and ".join(a.name for a in assets), "; ".join(a.licence for a in assets)


TASK = Chat()


def _encode_split(data: PreparedChats, name: str, tokenizer: PreTrainedTokenizerBase, run: RunConfig,
                  counts: dict[str, int]) -> Dataset:
    """One split's conversations encoded; the split's table keeps only the turns that fit."""
    frame, rows, kept, turns = data.splits[name], [], [], []
    for i, (messages, where) in enumerate(zip(frame["messages"], frame["where"], strict=True)):
        encoded = encode_conversation(tokenizer, messages, run.train.max_length, run.learn_end_of_turn)
        if encoded is None and data.from_file:
            raise DataError(f"{where}: longer than --max-length {run.train.max_length} tokens even cut after its "
                            "first assistant turn; raise --max-length or shorten the conversation.")
        if encoded is None:
            counts["dropped"] += 1
            continue
        row, length = encoded
        counts["cut"] += length < 1 + max(j for j, m in enumerate(messages) if m["role"] == "assistant")
        rows.append(row)
        kept.append(i)
        turns.append(messages[:length])
    frame = frame.iloc[kept].reset_index(drop=True)
    frame["messages"] = turns
    data.splits[name] = frame
    return rows_dataset(rows)


def reply_scores(replies: list[Reply], references: list[list[str]], kinds: list[str],
                 tokenizer: PreTrainedTokenizerBase) -> dict[str, float | None]:
    """EM and F1 of the QA replies (of all when there are none), stop rates (%), reply lengths in tokens."""
    qa = [i for i, kind in enumerate(kinds) if kind == "qa"]
    chat = [i for i, kind in enumerate(kinds) if kind == "chat"]
    scored = qa or list(range(len(kinds)))
    metrics = qa_metrics([replies[i].text for i in scored], [references[i] for i in scored])

    def stop_rate(items: list[int]) -> float | None:
        return 100.0 * mean(replies[i].stopped for i in items) if items else None

    human = [len(tokenizer(references[i][0], add_special_tokens=False).input_ids) for i in chat]
    return {**metrics, "stop_rate": stop_rate(list(range(len(kinds)))), "qa_stop_rate": stop_rate(qa),
            "chat_stop_rate": stop_rate(chat), "reply_tokens": mean(replies[i].tokens for i in chat or scored),
            "human_reply_tokens": mean(human) if human else None}


def assistant_loss(model: nn.Module, tokenizer: PreTrainedTokenizerBase, tokens: Dataset, run: RunConfig,
                   parallel: Parallel) -> dict[str, float]:
    """Mean loss per assistant token (nats) of held-out conversations, and its perplexity."""
    loader = make_loader(tokens, tokenizer, run.train.eval_batch_size, sort_by_length=True,
                         collator=pair_collator(tokenizer), parallel=parallel)
    result = evaluate(model, loader, next(model.parameters()).device, None, run.train.mixed_precision, parallel)
    return {"assistant_loss": result.loss, "perplexity": result.metrics["perplexity"]}


def replies_table(kind: str, count: int, **outputs: list[dict]) -> pd.DataFrame:
    """The first `count` test items of one kind ("qa" or "chat"), each model's reply beside a reference.

    `outputs` are Scores.outputs of the same test set, one keyword per model. The prompt shown is
    the user's last turn, a QA question without its passage.
    """
    first = next(iter(outputs.values()))
    rows = [i for i, output in enumerate(first) if output["kind"] == kind][:count]
    asked = [first[i]["messages"][-1]["content"].split(QUESTION)[-1].strip() for i in rows]
    replies = {name: [items[i]["output"] for i in rows] for name, items in outputs.items()}
    return side_by_side(asked, replies, [first[i]["references"] for i in rows])

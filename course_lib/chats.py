"""Conversations for teaching a GPT to be an assistant: read JSON Lines or the built-in sets, check, split.

The format is the conversational one of TRL and of hosted fine-tuning services: one conversation
per line, `{"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}`. Each
mistake is refused with one line naming the file, the line and the fix, before anything is
written. The built-in sets are turned into the same conversations: questions over a passage
(BIG-bench disfl_qa, kind "qa", scored by exact match) and human chit-chat (kind "chat").
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path

import pandas as pd

from course_lib.config import BUILTIN_CHATS, ChatDataConfig
from course_lib.data import SPLITS, subsample
from course_lib.errors import DataError
from course_lib.pairs import split_by_group
from course_lib.runtime.assets import CHITCHAT, DISFL_QA, asset_path

ROLES = ("system", "user", "assistant")
EXAMPLE = '{"messages": [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello!"}]}'
QA_SYSTEM = ("Answer the question with a short span copied from the passage, "
             "or with unknown if the passage does not answer it.")
CHAT_SYSTEM = "You are a friendly person chatting casually. Keep your replies short."
UNANSWERABLE = "unknown"  # disfl_qa's target for a question the passage does not answer
QUESTION = "Question: "  # starts a QA user turn's question, after the passage in the first turn
BUILTIN_ASSETS = {"disfl_qa": DISFL_QA, "chitchat": CHITCHAT}  # the sets BUILTIN_CHATS names, joined by +


@dataclass
class PreparedChats:
    """Conversations split so that one conversation (or passage) stays in one split.

    Each split is a table with columns messages, kind ("qa" or "chat"), group (the passage or
    the conversation), answers (every reference answer of a QA item) and where (file and line).
    """

    splits: dict[str, pd.DataFrame]
    notes: list[str] = field(default_factory=list)  # what reading and cleaning did, for the log
    system: str | None = None  # the chat system prompt `./run chat` starts with
    from_file: bool = False  # a user's file: a conversation too long to keep is an error, not a drop

    def replies(self, split: str) -> tuple[list[list[dict]], list[list[str]]]:
        """Per conversation, the turns before its last assistant reply, and that reply's references.

        A QA item's references are all of its answers; a conversation's, the human's reply.
        """
        prompts, references = [], []
        for messages, answers in zip(self.splits[split]["messages"], self.splits[split]["answers"], strict=True):
            last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
            prompts.append(messages[:last])
            references.append(list(answers) if answers else [messages[last]["content"]])
        return prompts, references


def read_jsonl(path: Path) -> pd.DataFrame:
    """Every conversation of a JSON Lines file, checked line by line (blank lines are skipped)."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise DataError(f"{path}, line {line}: not UTF-8 text (byte {raw[exc.start]:#04x}); "
                        "save the file with UTF-8 encoding.") from None
    lines = enumerate(text.splitlines(), 1)
    rows = [_conversation(f"{path}, line {n}", line) for n, line in lines if line.strip()]
    if not rows:
        raise DataError(f"{path}, line 1: the file is empty; write one conversation per line, e.g. {EXAMPLE}")
    return pd.DataFrame(rows)


def _conversation(where: str, line: str) -> dict:
    """One line as a table row, or a DataError saying what is wrong with it and how to fix it."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: not JSON ({exc.msg}); write one JSON object per line, e.g. {EXAMPLE}") from None
    if not isinstance(record, dict) or "messages" not in record:
        raise DataError(f'{where}: no "messages"; each line is an object with a "messages" list, e.g. {EXAMPLE}')
    messages = record["messages"]
    if not isinstance(messages, list):
        raise DataError(f'{where}: "messages" is a {type(messages).__name__}, not a list; write the turns '
                        'as a list of {"role": ..., "content": ...} objects.')
    for k, message in enumerate(messages, 1):
        if problem := _message_problem(message):
            raise DataError(f"{where}, message {k}: {problem}")
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError(f'{where}: no assistant turn, so nothing to learn; add the reply the model should '
                        'write as {"role": "assistant", "content": "..."}.')
    turns = [{"role": m["role"], "content": m["content"].strip()} for m in messages]
    return {"messages": turns, "kind": "chat", "group": where, "answers": None, "where": where}


def _message_problem(message: object) -> str | None:
    """What is wrong with one message, or None."""
    if not isinstance(message, dict):
        return 'not an object; write {"role": ..., "content": ...}.'
    if message.get("role") not in ROLES:
        return f"role {message.get('role')!r} is not one of {', '.join(ROLES)}; rename it."
    content = message.get("content")
    if not isinstance(content, str) or not content.strip():
        return "empty content; write the turn's text or remove the message."
    return None


def read_disfl_qa(max_unanswerable: float, seed: int,
                  max_passage_chars: int | None = None) -> tuple[pd.DataFrame, str]:
    """disfl_qa's questions over SQuAD passages, one conversation each, "unknown" kept to its share."""
    examples = json.loads(asset_path(DISFL_QA).read_text(encoding="utf-8"))["examples"]
    answers: dict[str, list[str]] = {}
    for example in examples:  # a repeated question gives every one of its answers as a reference
        answers.setdefault(example["input"], []).append(example["target"].strip())
    rows = []
    for i, (text, targets) in enumerate(answers.items()):
        question, passage = (part.strip() for part in text.split("\ncontext:", 1))
        if max_passage_chars and len(passage) > max_passage_chars:
            continue
        rows.append({"messages": [{"role": "system", "content": QA_SYSTEM},
                                  {"role": "user", "content": f"Passage: {passage}\n{QUESTION}{question}"},
                                  {"role": "assistant", "content": targets[0]}],
                     "kind": "qa", "group": passage, "answers": sorted(set(targets)), "where": f"disfl_qa #{i}"})
    frame = pd.DataFrame(rows)
    kept = limit_unanswerable(frame, max_unanswerable, seed)
    shorter = f" of at most {max_passage_chars} characters" if max_passage_chars else ""
    unanswerable = int(_unanswerable(frame).sum())
    note = (f"disfl_qa: {len(frame)} questions on {frame['group'].nunique()} passages{shorter}, "
            f"{len(frame) - len(kept)} of the {unanswerable} unanswerable ones left out to keep their share at "
            f"{max_unanswerable:.0%}")
    return kept.reset_index(drop=True), note


def _unanswerable(frame: pd.DataFrame) -> pd.Series:
    return frame["answers"].map(lambda refs: refs == [UNANSWERABLE])


def limit_unanswerable(frame: pd.DataFrame, share: float, seed: int) -> pd.DataFrame:
    """The QA items with unanswerable ones dropped at random until they are at most `share` of all."""
    if share >= 1:
        return frame
    unanswerable = _unanswerable(frame)
    keep = int(share / (1 - share) * (~unanswerable).sum())
    return frame.drop(index=frame[unanswerable].sample(frac=1.0, random_state=seed).index[keep:])


def ask_together(frame: pd.DataFrame) -> pd.DataFrame:
    """The questions over one passage as one conversation: the passage once, then question, answer, question...

    A training conversation then teaches several answers for the cost of reading its passage once
    (as many as fit max_length); held-out items stay one question each, as they are scored.
    """
    rows, first = [], []
    for passage, group in frame.groupby("group", sort=False):
        messages = list(group["messages"].iloc[0])
        for turns in group["messages"].iloc[1:]:
            question = turns[1]["content"].split(QUESTION, 1)[1]
            messages += [{"role": "user", "content": f"{QUESTION}{question}"}, turns[2]]
        rows.append({"messages": messages, "kind": "qa", "group": passage, "answers": None,
                     "where": group["where"].iloc[0]})
        first.append(group.index[0])
    return pd.DataFrame(rows, index=first)


def read_chitchat() -> tuple[pd.DataFrame, str]:
    """Human chit-chat as conversations: the first speaker is the user, consecutive messages form one turn."""
    conversations = json.loads(asset_path(CHITCHAT).read_text(encoding="utf-8"))
    rows = []
    for key, conversation in conversations.items():
        utterances = [u for message in conversation["messages"] for u in message if u["text"].strip()]
        runs = groupby(utterances, key=lambda u: u["sender"])
        turns = [" ".join(u["text"].strip() for u in run) for _, run in runs]
        messages = [{"role": "system", "content": CHAT_SYSTEM}] + [
            {"role": ("user", "assistant")[i % 2], "content": turn} for i, turn in enumerate(turns)]
        if len(turns) >= 2:
            rows.append({"messages": messages, "kind": "chat", "group": key, "answers": None,
                         "where": f"chitchat {key}"})
    return pd.DataFrame(rows), f"chitchat: {len(rows)} of {len(conversations)} conversations have a reply"


def read_chats(config: ChatDataConfig) -> tuple[pd.DataFrame, list[str]]:
    """The conversations of a built-in set (or sets joined by +) or of a JSON Lines file."""
    path = Path(config.source)
    if config.source not in BUILTIN_CHATS:
        if not path.is_file():
            raise DataError(f"--data {config.source!r} is neither a built-in set ({', '.join(BUILTIN_CHATS)}) "
                            "nor an existing JSON Lines file; check the name or the path.")
        frame = read_jsonl(path)
        return frame, [f"{path}: {len(frame)} conversations"]
    readers = {"disfl_qa": lambda: read_disfl_qa(config.max_unanswerable, config.seed, config.max_passage_chars),
               "chitchat": read_chitchat}
    parts = [readers[name]() for name in config.source.split("+")]
    return pd.concat([frame for frame, _ in parts], ignore_index=True), [note for _, note in parts]


def split_chats(frame: pd.DataFrame, config: ChatDataConfig) -> dict[str, pd.DataFrame]:
    """Split each kind by group (passage, conversation), then cap the sizes: train and validation shared
    between the kinds, test per kind."""
    kinds = sorted(frame["kind"].unique())
    parts: dict[str, list[pd.DataFrame]] = {name: [] for name in SPLITS}
    for kind in kinds:
        rows = frame[frame["kind"] == kind]
        if rows["group"].nunique() < 10:
            raise DataError(f"Only {rows['group'].nunique()} {kind} conversations: a train/validation/test split "
                            "needs at least 10. Add conversations.")
        train, val, test = split_by_group(rows, config, "group")
        if kind == "qa":
            train = ask_together(limit_unanswerable(train, config.train_unanswerable, config.seed))
        share = {"train": kind_size(config.max_train, kind, kinds, config.qa_share),
                 "validation": kind_size(config.max_val, kind, kinds, 1 / len(kinds))}
        for name, split in (("train", train), ("validation", val)):
            parts[name].append(subsample(split, share[name], config.seed))
        parts["test"].append(subsample(test, config.max_test, config.seed))
    return {name: pd.concat(split, ignore_index=True) for name, split in parts.items()}


def kind_size(total: int | None, kind: str, kinds: list[str], qa_share: float) -> int | None:
    """How many of `total` conversations are of `kind`: `qa_share` of them QA when both kinds are there."""
    if not total or len(kinds) == 1:
        return total
    qa = min(total - 1, max(1, round(total * qa_share)))  # at least one of each kind
    return qa if kind == "qa" else total - qa


def prepare_chats(config: ChatDataConfig, system: str | None = None) -> PreparedChats:
    """Steps 1-3 for an assistant: read the conversations, check them, split them.

    `system` is given as the system turn to conversations that have none.
    """
    frame, notes = read_chats(config)
    if system:
        turn = {"role": "system", "content": system}
        frame["messages"] = frame["messages"].map(
            lambda turns: turns if turns[0]["role"] == "system" else [turn, *turns])
    chat_system = system or (CHAT_SYSTEM if "chitchat" in config.source.split("+") else None)
    return PreparedChats(split_chats(frame, config), notes, chat_system, config.source not in BUILTIN_CHATS)


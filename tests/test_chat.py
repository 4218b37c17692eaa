"""Task chat on tiny models: the assistant mask, bad conversations, the stop-rate pitfall, `chat` in a terminal."""

import json
import random
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import FILLER, NEGATIVE, POSITIVE, require_assets

from course_lib.cli import main
from course_lib.config import ChatDataConfig, DecodeConfig, RunConfig, Strategy, Task, TrainConfig
from course_lib.errors import ConfigError
from course_lib.metrics import qa_metrics
from course_lib.models import load_causal_lm, load_tokenizer
from course_lib.pairs import assistant_spans, encode_conversation, marks_assistant_turns
from course_lib.pipeline import OUTPUTS_FILE, run_finetune
from course_lib.records import IGNORE_INDEX
from course_lib.runtime.assets import CHITCHAT, DISFL_QA, SMOLLM2_GGUF
from course_lib.saving import save_finetuned

ROOT = Path(__file__).resolve().parents[1]
TURNS = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "the film was great"},
         {"role": "assistant", "content": "great fun"}, {"role": "user", "content": "and the plot"},
         {"role": "assistant", "content": "really dull and boring"}]


def toy_chats(n: int, seed: int = 0) -> list[dict]:
    """One-exchange conversations whose reply names the sentiment word of the user's turn: learnable."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        positive = i % 2 == 0
        words = [*rng.sample(FILLER, 3), rng.choice(POSITIVE if positive else NEGATIVE)]
        rows.append({"messages": [{"role": "user", "content": " ".join(words)},
                                  {"role": "assistant", "content": "great fun" if positive else "really awful"}]})
    return rows


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def assert_mask_is_exact(tokenizer, messages):
    """Labels are each assistant turn's own tokens plus the end-of-turn token, and -100 everywhere else."""
    row, kept = encode_conversation(tokenizer, messages, 512)
    assert kept == len(messages)
    expected = [IGNORE_INDEX] * len(row["input_ids"])
    _, spans = assistant_spans(tokenizer, messages)
    replies = [m["content"] for m in messages if m["role"] == "assistant"]
    assert len(spans) == len(replies)
    for (start, end), reply in zip(spans, replies, strict=True):
        own = [*tokenizer(reply, add_special_tokens=False).input_ids, tokenizer.eos_token_id]
        assert row["input_ids"][start:end] == own  # the turn's tokens and its end-of-turn, nothing more
        expected[start:end] = own
    assert row["labels"] == expected


def test_mask_is_exact_for_the_plain_layout(tiny_llama_dir):
    _, tokenizer = load_causal_lm(str(tiny_llama_dir))
    assert not tokenizer.chat_template  # the fallback layout
    assert_mask_is_exact(tokenizer, TURNS)
    assert_mask_is_exact(tokenizer, TURNS[1:])


def test_mask_is_exact_for_smollm2_chat_template():
    require_assets(SMOLLM2_GGUF)
    tokenizer = load_tokenizer("smollm2-135m")
    assert "<|im_start|>" in tokenizer.chat_template and tokenizer.eos_token == "<|im_end|>"
    assert_mask_is_exact(tokenizer, TURNS)
    assert_mask_is_exact(tokenizer, TURNS[1:])  # the template adds its own system turn
    ids, spans = assistant_spans(tokenizer, TURNS)
    assert [tokenizer.decode(ids[a:b]) for a, b in spans] == ["great fun<|im_end|>",
                                                              "really dull and boring<|im_end|>"]


def test_too_long_conversations_are_cut_at_a_turn_or_dropped_and_end_of_turn_can_be_masked(tiny_llama_dir):
    _, tokenizer = load_causal_lm(str(tiny_llama_dir))
    _, spans = assistant_spans(tokenizer, TURNS)
    row, kept = encode_conversation(tokenizer, TURNS, spans[1][1] - 1)
    assert kept == 3 and len(row["input_ids"]) == spans[0][1]  # cut after the first reply, not inside the second
    assert encode_conversation(tokenizer, TURNS, spans[0][1] - 1) is None
    pitfall, _ = encode_conversation(tokenizer, TURNS, 512, learn_end_of_turn=False)
    assert tokenizer.eos_token_id not in pitfall["labels"]
    # With max_length the turns stop at the first that ends past it (the encoder needs no more).
    assert assistant_spans(tokenizer, TURNS, spans[1][1])[1] == spans
    assert assistant_spans(tokenizer, TURNS, spans[1][1] - 1)[1] == spans[:1]
    assert assistant_spans(tokenizer, TURNS, spans[0][1] - 1)[1] == []


def test_qa_metrics_follow_squad():
    scores = qa_metrics(["The Eiffel tower!", "in 1999", "no"],
                        [["eiffel tower"], ["1999", "in year 1999"], ["y"]])
    assert scores["exact_match"] == pytest.approx(100 / 3)
    assert scores["f1"] == pytest.approx(100 * (1 + 0.8 + 0) / 3)


GOOD = {"role": "user", "content": "hi"}
REPLY = {"role": "assistant", "content": "hello"}
BAD_LINES = [
    (b'{"messages": [', "line 2: not JSON"),
    (b'{"turns": []}', 'line 2: no "messages"'),
    (b'{"messages": "hi"}', '"messages" is a str, not a list'),
    (json.dumps({"messages": [GOOD, {"role": "bot", "content": "x"}]}).encode(), "role 'bot' is not one of"),
    (json.dumps({"messages": [GOOD]}).encode(), "line 2: no assistant turn"),
    (json.dumps({"messages": [GOOD, {"role": "assistant", "content": " "}]}).encode(), "message 2: empty content"),
    (b'{"messages": [{"role": "user", "content": "caf\xe9"}]}', "line 2: not UTF-8"),
]


@pytest.mark.parametrize(("line", "message"), BAD_LINES)
def test_each_bad_line_gives_one_error_naming_file_and_line_and_writes_nothing(tiny_llama_dir, tmp_path, capsys,
                                                                                line, message):
    data = tmp_path / "chats.jsonl"
    data.write_bytes(json.dumps({"messages": [GOOD, REPLY]}).encode() + b"\n" + line + b"\n")
    _assert_refused(tiny_llama_dir, tmp_path, capsys, ["--data", str(data)], [str(data), message])


@pytest.mark.parametrize(("content", "options", "message"), [
    ("", [], "line 1: the file is empty"),
    ("\n".join(json.dumps(r) for r in toy_chats(40)) + "\n" + json.dumps({"messages": [
        {"role": "user", "content": " ".join(["great"] * 80)}, REPLY]}), ["--max-length", "32"],
     "line 41: longer than --max-length 32 tokens even cut after its first assistant turn"),
])
def test_empty_file_and_too_long_conversation_are_refused(tiny_llama_dir, tmp_path, capsys, content, options,
                                                          message):
    data = tmp_path / "chats.jsonl"
    data.write_text(content)
    _assert_refused(tiny_llama_dir, tmp_path, capsys, ["--data", str(data), *options], [str(data), message])


def test_unknown_data_name_is_refused(tiny_llama_dir, tmp_path, capsys):
    _assert_refused(tiny_llama_dir, tmp_path, capsys, ["--data", "chitchatt"],
                    ["--data 'chitchatt' is neither a built-in set (disfl_qa+chitchat, disfl_qa, chitchat)"])


def _assert_refused(model_dir, tmp_path, capsys, options, parts):
    out = tmp_path / "run"
    assert main(["finetune", "--task", "chat", "--model", str(model_dir), "--output", str(out), *options]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and all(part in err[0] for part in parts), err
    assert not out.exists()


def _stop_run(model_dir, data, learn_end_of_turn):
    run = RunConfig.for_chat(model=str(model_dir), data=ChatDataConfig(source=str(data), max_train=None),
                             train=TrainConfig.for_generation(strategy=Strategy.FULL, learning_rate=3e-3, epochs=4,
                                                              max_length=32),
                             decode=DecodeConfig(max_new_tokens=8), learn_end_of_turn=learn_end_of_turn)
    return run_finetune(run, callbacks=[], log=lambda s: None, save=False, zero_shot=False).test


def test_masking_the_end_of_turn_token_makes_the_model_never_stop(tiny_llama_dir, tmp_path):
    data = write_jsonl(tmp_path / "chats.jsonl", toy_chats(160))
    fixed, pitfall = _stop_run(tiny_llama_dir, data, True), _stop_run(tiny_llama_dir, data, False)
    assert fixed["stop_rate"] >= 90 and fixed["exact_match"] >= 90  # measured: 100 and 100
    assert pitfall["stop_rate"] <= 10 < fixed["stop_rate"] - 50  # measured: 0, every reply runs to max_new_tokens
    assert pitfall["reply_tokens"] > fixed["reply_tokens"]


@pytest.fixture(scope="module")
def assistant(tiny_llama_dir, tmp_path_factory) -> Path:
    """A tiny assistant trained and saved by `finetune --task chat` (its output folder)."""
    folder = tmp_path_factory.mktemp("assistant")
    data = write_jsonl(folder / "chats.jsonl", toy_chats(160))
    assert main(["finetune", "--task", "chat", "--model", str(tiny_llama_dir), "--data", str(data), "--strategy",
                 "full", "--lr", "3e-3", "--epochs", "4", "--max-length", "32", "--max-new-tokens", "8",
                 "--system", "be brief", "--max-train", "0", "--output", str(folder / "run")]) == 0
    return folder / "run"


def test_finetune_chat_writes_scores_before_and_after_and_test_outputs(assistant):
    metrics = json.loads((assistant / "metrics.json").read_text())
    for scores in (metrics["test"], metrics["zero_shot"]):
        assert {"exact_match", "f1", "assistant_loss", "stop_rate", "perplexity"} <= set(scores)
    assert metrics["test"]["assistant_loss"] < metrics["zero_shot"]["assistant_loss"]
    rows = [json.loads(line) for line in (assistant / OUTPUTS_FILE).read_text().splitlines()]
    assert len(rows) == sum(metrics["split_sizes"]["test"].values())
    assert rows[0]["messages"][0] == {"role": "system", "content": "be brief"}
    saved = json.loads((assistant / "model" / "course.json").read_text())
    assert saved["task"] == "chat"  # and the decoding `./run chat` reuses, the penalty included
    assert saved["config"]["decode"]["repetition_penalty"] == RunConfig.for_chat().decode.repetition_penalty > 1
    card = (assistant / "model" / "README.md").read_text()
    assert "./run chat MODEL_FOLDER" in card and "- **" + rows[0]["messages"][-1]["content"] in card


def test_saved_assistant_reloaded_in_a_new_process_reproduces_the_test_outputs(assistant):
    rows = [json.loads(line) for line in (assistant / OUTPUTS_FILE).read_text().splitlines()]
    out = subprocess.run([sys.executable, "-m", "course_lib", "chat", str(assistant / "model"), "--json", "--file",
                          str(assistant / OUTPUTS_FILE)], capture_output=True, text=True, check=True, cwd=ROOT)
    replies = [json.loads(line)["reply"] for line in out.stdout.splitlines()]
    assert replies == [row["fine_tuned"] for row in rows]


def test_chat_in_a_terminal_keeps_history_resets_and_exits(assistant):
    pexpect = pytest.importorskip("pexpect")
    child = pexpect.spawn(sys.executable, ["-m", "course_lib", "chat", str(assistant / "model")], cwd=str(ROOT),
                          encoding="utf-8", timeout=120)
    child.expect("/reset starts over")
    for message, reply in (("the film was great", "great fun"), ("really a boring plot", "really awful")):
        child.expect("you> ")
        child.sendline(message)
        child.expect(f"assistant> {reply}")
    child.expect("you> ")
    child.sendline("/reset")
    child.expect(r"\(history cleared\)")
    child.expect("you> ")
    child.sendline("/exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    ctrl_d = pexpect.spawn(sys.executable, ["-m", "course_lib", "chat", str(assistant / "model")], cwd=str(ROOT),
                           encoding="utf-8", timeout=120)
    ctrl_d.expect("you> ")
    ctrl_d.sendeof()
    ctrl_d.expect(pexpect.EOF)
    ctrl_d.close()
    assert ctrl_d.exitstatus == 0


def test_chat_json_mode_serves_scripts_with_history(assistant):
    out = subprocess.run([sys.executable, "-m", "course_lib", "chat", str(assistant / "model"), "--json"],
                         input="the film was great\n/reset\nawful boring film\n", capture_output=True, text=True,
                         check=True, cwd=ROOT)
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert lines == [{"reply": "great fun", "stopped": True}, {"reset": True},
                     {"reply": "really awful", "stopped": True}]


def test_chat_generate_and_predict_refuse_each_others_models(assistant, tiny_llama_dir, tmp_path, capsys):
    writer, tokenizer = load_causal_lm(str(tiny_llama_dir))
    save_finetuned(tmp_path / "writer", writer, tokenizer, None, task=Task.GENERATE)
    for command, message in ((["generate", str(assistant / "model"), "x"], "holds an assistant"),
                             (["predict", str(assistant / "model"), "x"], "holds an assistant"),
                             (["chat", str(tmp_path / "writer")], "fine-tuned to write (task generate), not an "
                                                                  "assistant")):
        assert main(command) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err


def test_the_command_line_trains_with_the_chat_defaults_chapter_11_uses():
    from course_lib.cli import build_parser, run_config_from_args

    parsed = run_config_from_args(build_parser().parse_args(["finetune", "--task", "chat"]))
    defaults = RunConfig.for_chat().train
    # No option given: exactly RunConfig.for_chat()'s training, as chapter 11 builds it.
    assert parsed.train == defaults, {k: (v, getattr(defaults, k)) for k, v in vars(parsed.train).items()
                                      if v != getattr(defaults, k)}
    given = run_config_from_args(build_parser().parse_args(["finetune", "--task", "chat", "--lr", "5e-4",
                                                            "--batch-size", "2"]))
    assert (given.train.learning_rate, given.train.batch_size) == (5e-4, 2)


def test_qa_share_splits_the_training_conversations_between_the_kinds():
    from course_lib.chats import kind_size

    both = ["chat", "qa"]
    assert [kind_size(400, kind, both, 0.5) for kind in both] == [200, 200]
    assert [kind_size(131, kind, both, 0.75) for kind in both] == [33, 98]  # every conversation is used
    assert [kind_size(10, kind, both, 1.0) for kind in both] == [1, 9]  # never none of a kind
    assert kind_size(50, "chat", ["chat"], 0.75) == 50 and kind_size(None, "qa", both, 0.75) is None
    with pytest.raises(ConfigError, match="qa_share"):
        ChatDataConfig(qa_share=1.5).validate()


def test_built_in_sets_keep_passages_in_one_split_and_unknown_answers_to_their_share():
    require_assets(DISFL_QA, CHITCHAT)
    from course_lib.chats import UNANSWERABLE, limit_unanswerable, prepare_chats, read_disfl_qa

    config = ChatDataConfig(max_train=None, max_val=None, max_test=None)
    data = prepare_chats(config)
    groups = {name: set(frame["group"]) for name, frame in data.splits.items()}
    assert not (groups["train"] & groups["test"]) and not (groups["train"] & groups["validation"])
    qa = data.splits["train"][data.splits["train"]["kind"] == "qa"]
    # Training asks every question of a passage in one conversation; held-out items ask one each.
    assert qa["group"].is_unique
    answers = [m["content"] for messages in qa["messages"] for m in messages if m["role"] == "assistant"]
    questions, _ = read_disfl_qa(config.max_unanswerable, config.seed, config.max_passage_chars)
    in_train = questions[questions["group"].isin(groups["train"])]
    assert len(answers) == len(limit_unanswerable(in_train, config.train_unanswerable, config.seed))
    # Fewer "unknown" targets in training than in the held-out splits, which keep their share.
    share = sum(answer == UNANSWERABLE for answer in answers) / len(answers)
    # (+0.005: a few questions asked twice have "unknown" as one of two answers, and train on it)
    assert config.train_unanswerable - 0.03 < share <= config.train_unanswerable + 0.005 < config.max_unanswerable
    held_out = pd.concat([data.splits[name].query("kind == 'qa'") for name in ("validation", "test")])
    assert 0.15 < held_out["answers"].map(lambda refs: refs == [UNANSWERABLE]).mean() <= 0.21
    assert all(qa["messages"].map(lambda turns: [m["role"] for m in turns[1:3]] == ["user", "assistant"]))
    assert all(len(turns) == 3 for turns in data.splits["test"].query("kind == 'qa'")["messages"])
    chat = data.splits["train"][data.splits["train"]["kind"] == "chat"]
    for messages in chat["messages"].head(200):  # one turn per sender: the roles alternate
        roles = [m["role"] for m in messages[1:]]
        assert roles == ["user", "assistant"] * (len(roles) // 2) + ["user"] * (len(roles) % 2)


@pytest.mark.parametrize(("share", "unknown_kept"), [(1.0, 6), (0.5, 4), (0.2, 1), (0.0, 0)])
def test_limit_unanswerable_keeps_at_most_its_share(share, unknown_kept):
    from course_lib.chats import UNANSWERABLE, limit_unanswerable

    frame = pd.DataFrame({"answers": [[UNANSWERABLE]] * 6 + [["a span"], ["one", "two"]] * 2})
    kept = limit_unanswerable(frame, share, seed=0)
    assert (kept["answers"].map(lambda refs: refs == [UNANSWERABLE])).sum() == unknown_kept
    assert len(kept) == unknown_kept + 4  # every answerable question stays


def test_chat_box_keeps_history_resets_with_the_edited_system_prompt(assistant):
    from course_lib.generation import ChatSession
    from course_lib.notebook.chat_box import ChatBox
    from course_lib.saving import load_finetuned

    model, tokenizer, _ = load_finetuned(assistant / "model", task=Task.CHAT)
    box = ChatBox(ChatSession(model, tokenizer, "be brief", DecodeConfig(max_new_tokens=8)))
    box.send_button.click()
    assert "Type a message first" in box.status.value and box.session.messages[-1]["role"] == "system"
    for message, reply in (("the film was great", "great fun"), ("really a boring plot", "really awful")):
        box.message.value = message
        box.send_button.click()
        assert box.last.text == reply and box.message.value == ""
    assert [m["role"] for m in box.session.messages] == ["system", "user", "assistant", "user", "assistant"]
    assert box.history.value.count("assistant:</b>") == 2 and "really awful" in box.history.value
    assert "ended its turn itself" in box.status.value
    box.system.value = "be very brief"
    box.reset_button.click()
    assert box.session.messages == [{"role": "system", "content": "be very brief"}]
    assert "really awful" not in box.history.value and "be very brief" in box.history.value


def test_token_mask_html_colours_exactly_the_targets():
    from course_lib.notebook.figures import token_mask_html

    page = token_mask_html(["<|im_start|>", "user\n", "hi", "<|im_end|>"], [False, False, True, True])
    body = page.split("<div", 1)[1]
    assert body.count("#c8ecc8") == 2 and body.count("#eee") == 2 and body.count("<br>") == 1


def test_replies_table_shows_the_last_user_turn_without_the_passage_and_every_models_reply():
    from course_lib.tasks.chat import replies_table

    def item(kind, asked, reference, output):
        return {"kind": kind, "messages": [{"role": "user", "content": asked}], "references": [reference],
                "output": output}

    before = [item("qa", "Passage: P.\nQuestion: Who?", "Ann", "Bob"), item("chat", "Hi", "Hey", "Hello"),
              item("qa", "Passage: Q.\nQuestion: When?", "1804", "2004")]
    after = [{**row, "output": text} for row, text in zip(before, ["Ann", "Yo", "1804"], strict=True)]
    table = replies_table("qa", 5, pretrained=before, fine_tuned=after)
    assert list(table["prompt"]) == ["Who?", "When?"]
    assert list(table["pretrained"]) == ["Bob", "2004"] and list(table["fine_tuned"]) == ["Ann", "1804"]
    assert list(table["a human reference"]) == ["Ann", "1804"]
    assert len(replies_table("chat", 1, fine_tuned=after)) == 1


@pytest.mark.parametrize(("template", "marked"), [
    ("{% for m in messages %}{{ m['content'] }}{% endfor %}", False), (None, False),
    ("{{ 'generation' }}", False), ("{% generation %}x{% endgeneration %}", True),
    ("{%- generation -%}x{%- endgeneration %}", True), ("{%generation%}x{%endgeneration%}", True),
])
def test_generation_markers_are_found_in_any_spacing(template, marked):
    """TRL's assistant-only loss needs these markers; a plain substring test misses `{%- generation %}`."""
    assert marks_assistant_turns(template) is marked

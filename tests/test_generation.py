"""Generation on tiny models: masked labels, the shared loop's language-model loss, decoding, metrics."""

import random

import pandas as pd
import pytest
import sacrebleu
import torch
from conftest import FILLER, NEGATIVE, POSITIVE

from course_lib.cli import build_parser, run_config_from_args
from course_lib.config import DecodeConfig, PairDataConfig, RunConfig, TrainConfig
from course_lib.data import make_loader
from course_lib.errors import DataError
from course_lib.generation import generate, write
from course_lib.metrics import attribute_coverage, corpus_bleu, generation_metrics, rouge_l
from course_lib.models import load_causal_lm
from course_lib.pairs import (
    clean_pairs,
    encode_pair,
    format_prompt,
    pair_collator,
    read_bigbench_task,
    split_pairs,
    tokenize_pairs,
)
from course_lib.records import IGNORE_INDEX
from course_lib.training import evaluate, loss_targets

CPU = torch.device("cpu")
# A tiny ChatML template, the layout SmolLM2-Instruct uses, to test the chat-template path.
CHATML = ("{% for m in messages %}<|im_start|> {{ m['role'] }} {{ m['content'] }} <|im_end|> {% endfor %}"
          "{% if add_generation_prompt %}<|im_start|> assistant {% endif %}")


def toy_pairs(n: int, seed: int = 0) -> pd.DataFrame:
    """Prompts of filler words with one sentiment word; the response names the sentiment.

    Responses have five words: BLEU counts up to 4-word sequences, and a text shorter than
    that scores 0 however right it is.
    """
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        positive = i % 2 == 0
        words = [*rng.sample(FILLER, 3), rng.choice(POSITIVE if positive else NEGATIVE), f"#{i % 60}"]
        response = "the film was great fun" if positive else "the film was really awful"
        rows.append({"prompt": " ".join(words), "response": response})
    return pd.DataFrame(rows)


@pytest.fixture()
def tiny_writer(tiny_llama_dir):
    model, tokenizer = load_causal_lm(str(tiny_llama_dir))
    return model, tokenizer


def test_masking_puts_ignore_index_exactly_on_prompt_and_padding(tiny_writer):
    _, tok = tiny_writer
    rows = [encode_pair(tok, "the film was great", "great fun", None, 64),
            encode_pair(tok, "movie", "awful bad really bad", None, 64)]
    batch = pair_collator(tok)(rows)
    for i, prompt in enumerate(["the film was great", "movie"]):
        prompt_len = len(tok(format_prompt(tok, prompt, None), add_special_tokens=False).input_ids)
        labels, ids, mask = batch["labels"][i], batch["input_ids"][i], batch["attention_mask"][i]
        real = int(mask.sum())
        assert (labels[:prompt_len] == IGNORE_INDEX).all()  # the prompt is never a target
        assert (labels[real:] == IGNORE_INDEX).all()  # nor is padding
        assert torch.equal(labels[prompt_len:real], ids[prompt_len:real])  # the response is
        assert labels[real - 1] == tok.eos_token_id  # ... up to the end token, so it learns to stop
    assert batch["input_ids"].shape == batch["labels"].shape == (2, max(len(r["input_ids"]) for r in rows))


def test_chat_template_prompt_is_masked_and_end_of_turn_is_learned(tiny_writer):
    _, tok = tiny_writer
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = CHATML
    tok.eos_token = "<|im_end|>"
    text = format_prompt(tok, "great film", "be brief")
    assert text.startswith("<|im_start|> system be brief <|im_end|>") and text.endswith("assistant ")
    row = encode_pair(tok, "great film", "great fun", "be brief", 64)
    targets = [t for t in row["labels"] if t != IGNORE_INDEX]
    # The turn's end token is a target; the "\n" after it is whitespace, no token, in this toy tokenizer.
    assert tok.decode(targets).split() == ["great", "fun", "<|im_end|>"]


def test_unmasked_prompt_is_learned_too(tiny_writer):
    _, tok = tiny_writer
    row = encode_pair(tok, "the film", "great", None, 64, mask_prompt=False)
    assert row["labels"] == row["input_ids"]


def test_prompt_longer_than_max_length_is_a_clear_error(tiny_writer):
    _, tok = tiny_writer
    with pytest.raises(DataError, match="no room for the response"):
        encode_pair(tok, " ".join(["film"] * 40), "great", None, 16)


def test_long_responses_are_cut_and_counted(tiny_writer):
    _, tok = tiny_writer
    splits = {"train": toy_pairs(4), "validation": toy_pairs(2), "test": toy_pairs(2)}
    splits["train"].loc[0, "response"] = " ".join(["great"] * 40)
    tokens, truncated = tokenize_pairs(splits, tok, 24, None)
    assert truncated == 1
    assert max(len(ids) for ids in tokens["train"]["input_ids"]) == 24


def test_split_by_prompt_keeps_every_prompt_in_one_split():
    frame = pd.concat([toy_pairs(60), toy_pairs(60, seed=1)])  # every prompt twice or more
    frame, _ = clean_pairs(frame)
    splits = split_pairs(frame, PairDataConfig(source="x.csv"))
    seen = [set(part["prompt"]) for part in splits.values()]
    assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])
    assert sum(len(part) for part in splits.values()) == len(frame)


def test_empty_responses_are_dropped_and_all_empty_is_an_error():
    frame = pd.DataFrame({"prompt": ["a", "b", "c"], "response": ["x", "  ", None]})
    kept, report = clean_pairs(frame)
    assert list(kept["response"]) == ["x"] and report.dropped["empty prompt or response"] == 1
    with pytest.raises(DataError, match="No usable prompt-response pairs"):
        clean_pairs(pd.DataFrame({"prompt": ["a"], "response": [""]}))


def test_bigbench_task_gives_a_row_per_reference(tmp_path):
    path = tmp_path / "task.json"
    path.write_text('{"canary": "x", "examples": [{"input": "a b", "target": ["s1", "s2"]},'
                    ' {"input": "c", "target": "s3"}]}')
    frame = read_bigbench_task(path)
    assert frame.to_dict("records") == [{"prompt": "a b", "response": "s1"},
                                        {"prompt": "a b", "response": "s2"},
                                        {"prompt": "c", "response": "s3"}]


def test_language_model_loss_is_weighted_by_target_tokens(tiny_writer):
    model, tok = tiny_writer
    rows = [encode_pair(tok, p, r, None, 64) for p, r in toy_pairs(12).itertuples(index=False)]
    rows[0] = encode_pair(tok, "film", "great fun " * 8, None, 64)  # one much longer response
    from datasets import Dataset

    data = Dataset.from_list(rows)
    small = evaluate(model, make_loader(data, tok, 2, collator=pair_collator(tok)), CPU, None)
    whole = evaluate(model, make_loader(data, tok, 64, collator=pair_collator(tok)), CPU, None)
    # Batching must not change the mean: every target token counts once, whatever its batch.
    assert small.loss == pytest.approx(whole.loss, rel=1e-5)
    assert whole.metrics["perplexity"] == pytest.approx(torch.tensor(whole.loss).exp().item(), rel=1e-5)
    assert loss_targets(torch.tensor([[IGNORE_INDEX, 5, 6], [IGNORE_INDEX, IGNORE_INDEX, 7]])) == 3


def test_greedy_generation_is_repeatable_in_order_and_independent_of_batching(tiny_writer):
    model, tok = tiny_writer
    prompts = ["the film was great", "movie", "a really quite dull plot and story", "fun"]
    one_by_one = generate(model, tok, prompts, decode=DecodeConfig(max_new_tokens=6, batch_size=1))
    batched = generate(model, tok, prompts, decode=DecodeConfig(max_new_tokens=6, batch_size=4))
    # Left padding done right: a prompt's text does not depend on its batch neighbours.
    assert batched == one_by_one
    assert generate(model, tok, prompts[::-1], decode=DecodeConfig(max_new_tokens=6)) == batched[::-1]
    assert all(len(text.split()) <= 6 for text in batched)  # the max_new_tokens guard
    assert tok.padding_side == "right"  # restored for training


def test_repetition_penalty_counts_only_the_reply_and_breaks_its_loops(tiny_writer):
    model, tok = tiny_writer
    loop = write(model, tok, ["movie"], decode=DecodeConfig(max_new_tokens=16))[0].text
    assert len(set(loop.split())) < len(loop.split()) - 2, loop  # greedy: the tiny model repeats itself
    # A prompt that ends with the word the model writes next. transformers' own penalty counts
    # the prompt, so it changes that first word; the course's counts only the reply, empty then.

    def first_word(text: str, penalty: float) -> str:
        ids = tok(format_prompt(tok, text, None), return_tensors="pt", add_special_tokens=False).input_ids
        out = model.generate(ids, max_new_tokens=1, do_sample=False, repetition_penalty=penalty,
                             pad_token_id=tok.pad_token_id)
        return tok.decode(out[0, -1:], skip_special_tokens=True).strip()

    prompt = f"movie {first_word('movie', 1.0)}"
    assert first_word(prompt, 1.0) in prompt.split() and first_word(prompt, 2.0) != first_word(prompt, 1.0)
    ours = write(model, tok, [prompt], decode=DecodeConfig(max_new_tokens=1, repetition_penalty=2.0))
    assert ours[0].text == first_word(prompt, 1.0)
    penalty = DecodeConfig(max_new_tokens=16, repetition_penalty=2.0)
    penalised = write(model, tok, ["movie"], decode=penalty)[0].text
    assert len(set(penalised.split())) > len(set(loop.split()))


def test_sampling_is_repeatable_with_its_seed(tiny_writer):
    model, tok = tiny_writer
    prompts = ["the film was great", "movie"] * 3
    sample = DecodeConfig(max_new_tokens=8, do_sample=True, temperature=1.5, seed=3)
    first, second = generate(model, tok, prompts, decode=sample), generate(model, tok, prompts, decode=sample)
    assert first == second
    other = generate(model, tok, prompts, decode=DecodeConfig(max_new_tokens=8, do_sample=True,
                                                              temperature=1.5, seed=4))
    assert other != first


def test_bleu_matches_sacrebleu_with_one_and_several_references():
    hyps = ["the cat sat on the mat", "a dog ran in the park today"]
    refs = [["the cat sat on a mat"], ["a dog ran in the park"]]
    expected = sacrebleu.corpus_bleu(hyps, [[r[0] for r in refs]]).score
    assert corpus_bleu(hyps, refs) == pytest.approx(expected)
    assert corpus_bleu(hyps, [[h] for h in hyps]) == pytest.approx(100.0)
    # A second reference for one hypothesis can only help, and uneven counts are allowed.
    assert corpus_bleu(hyps, [refs[0] + ["the cat sat on the mat"], refs[1]]) > expected


def test_rouge_l_is_the_best_reference_lcs_f_measure():
    # LCS("the cat sat on the mat", "the cat on the mat") = 5 words: P = 5/6, R = 1, F = 10/11.
    assert rouge_l(["the cat sat on the mat"], [["the cat on the mat"]]) == pytest.approx(100 * 10 / 11)
    assert rouge_l(["the cat sat on the mat"], [["dogs bark", "the cat sat on the mat"]]) == pytest.approx(100)
    with pytest.raises(ValueError, match="one list of references per hypothesis"):
        rouge_l(["a", "b"], [["a"]])


def test_attribute_coverage_counts_values_a_sentence_mentions():
    prompt = "name: Blue Spice, eatType: pub, familyFriendly: no, near: Crowne Plaza Hotel"
    assert attribute_coverage([prompt], ["Blue Spice is a pub near Crowne Plaza Hotel."]) == 100
    assert attribute_coverage([prompt], ["Blue Spice is a pub."]) == pytest.approx(200 / 3)
    scores = generation_metrics(["Blue Spice is a pub."], [["Blue Spice is a pub."]], [prompt])
    assert scores["bleu"] == pytest.approx(100) and scores["mean_words"] == 5


def test_head_strategy_is_refused_for_generation():
    from course_lib.tasks import get_task

    config = RunConfig.for_generation(train=TrainConfig.for_generation(strategy="head"))
    with pytest.raises(ValueError, match="a writing model has none"):
        get_task(config.task).check(config)


def test_hub_style_data_set_pools_its_splits_and_checks_columns(tmp_path):
    from course_lib.pairs import read_pairs

    folder = tmp_path / "hub-like"
    folder.mkdir()
    frame = toy_pairs(30).rename(columns={"prompt": "question", "response": "answer"})
    frame.iloc[:20].to_csv(folder / "train.csv", index=False)
    frame.iloc[20:].to_csv(folder / "test.csv", index=False)
    pooled = read_pairs(PairDataConfig(hub_dataset=str(folder), prompt_column="question",
                                       response_column="answer"))
    assert len(pooled) == 30 and list(pooled.columns) == ["prompt", "response"]
    with pytest.raises(DataError, match="choose them with --prompt-column"):
        read_pairs(PairDataConfig(hub_dataset=str(folder)))


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("mixed_precision", [True, False])
def test_replies_are_written_in_bf16_where_asked_and_native(tiny_writer, monkeypatch, mixed_precision, native):
    from course_lib.runtime import speed

    monkeypatch.setattr(speed, "bf16_is_fast", lambda device: native)  # CPU bf16 runs (emulated) anywhere
    model, tok = tiny_writer
    seen = []
    hook = model.lm_head.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    try:
        write(model, tok, ["the film was great"], decode=DecodeConfig(max_new_tokens=2,
                                                                     mixed_precision=mixed_precision))
    finally:
        hook.remove()
    assert seen and set(seen) == {torch.bfloat16 if mixed_precision and native else torch.float32}


def test_fp32_writers_keep_float32_and_older_folders_read_back_as_float32():
    from argparse import Namespace

    from course_lib.cli import _saved_decoding

    for task in ("generate", "chat"):
        run = run_config_from_args(build_parser().parse_args(["finetune", "--task", task, "--fp32"]))
        assert run.decode.mixed_precision is False
        assert run_config_from_args(build_parser().parse_args(["finetune", "--task", task])).decode.mixed_precision
    args = Namespace(max_new_tokens=None, repetition_penalty=None)
    saved = {"config": {"decode": {"max_new_tokens": 48, "repetition_penalty": 1.1}}}  # before the setting
    assert _saved_decoding(args, saved, 64).mixed_precision is False
    saved["config"]["decode"]["mixed_precision"] = True
    assert _saved_decoding(args, saved, 64).mixed_precision is True

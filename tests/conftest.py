"""Fixtures: tiny GPT-2 and Llama models and a tiny tokenizer, saved as real model folders.

They are built from configs (no download), but loaded through the same from_pretrained code
path as the real SmolLM2 or a Hub model.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pandas as pd
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

# Nobody is at the screen during tests: notebook cells press the panel's Train button themselves.
# nbval starts its kernels from this process, so they inherit it.
os.environ.setdefault("COURSE_HEADLESS", "1")

POSITIVE = ["great", "wonderful", "moving", "brilliant", "fun", "superb"]
NEGATIVE = ["dull", "awful", "boring", "clumsy", "tedious", "bad"]
FILLER = ["the", "film", "movie", "was", "a", "plot", "and", "actors", "story", "quite", "really"]


def toy_reviews(n: int, seed: int = 0) -> pd.DataFrame:
    """Short reviews whose sentiment word decides the label: learnable in a few steps."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        positive = i % 2 == 0
        words = rng.sample(FILLER, rng.randint(2, 8))
        words.insert(rng.randint(0, len(words)), rng.choice(POSITIVE if positive else NEGATIVE))
        rows.append({"text": " ".join(words) + f" #{i}", "label": "pos" if positive else "neg",
                     "group": f"movie{i % 40}"})
    return pd.DataFrame(rows)


def _tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer with an end-of-text token and, like GPT-2, no pad token."""
    vocab_words = ["[UNK]", "<eos>", *POSITIVE, *NEGATIVE, *FILLER] + [f"#{i}" for i in range(400)]
    vocab = {w: i for i, w in enumerate(vocab_words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="<eos>")


@pytest.fixture()
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    return _tiny_tokenizer()


def _save(model, folder: Path) -> Path:
    tok = _tiny_tokenizer()
    model.config.eos_token_id = tok.eos_token_id
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """A 4-block Llama-architecture causal LM (the family of the offline SmolLM2)."""
    config = LlamaConfig(vocab_size=512, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=128)
    import torch
    torch.manual_seed(0)
    return _save(LlamaForCausalLM(config), tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory) -> Path:
    """A 2-block GPT-2-architecture causal LM."""
    config = GPT2Config(vocab_size=512, n_embd=32, n_layer=2, n_head=4, n_positions=128)
    import torch
    torch.manual_seed(0)
    return _save(GPT2LMHeadModel(config), tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture()
def fixed_threads(monkeypatch) -> None:
    """No CPU sharing during the run (COURSE_THREAD_POLICY=off): for tests that compare two runs bit
    for bit. On a busy machine the sharing callback gives a thread up mid-run, and another thread
    count sums in another order, which moves a loss in its last bits (1e-8) while the run is right."""
    monkeypatch.setenv("COURSE_THREAD_POLICY", "off")


@pytest.fixture()
def toy_csv(tmp_path) -> Path:
    """A CSV with its own column names and string labels."""
    frame = toy_reviews(240).rename(columns={"text": "review", "label": "sentiment"})
    path = tmp_path / "reviews.csv"
    frame.to_csv(path, index=False)
    return path


def require_assets(*items) -> None:
    """Skip, saying why, when fetching is off ($COURSE_OFFLINE=1) and an asset is not in the cache.

    A machine without a package registry (e.g. a lent GPU machine) cannot fetch the offline
    model or data; with fetching allowed, a missing asset is fetched and a failure is a failure.
    """
    from course_lib.errors import AssetError
    from course_lib.runtime.assets import asset_path, is_offline

    if not is_offline():
        return
    for asset in items:
        try:
            asset_path(asset, fetch=False)
        except AssetError:
            pytest.skip(f"{asset.name} is not in the cache and COURSE_OFFLINE=1 forbids fetching it; "
                        "run `./run fetch` on a machine with PyPI access first.")

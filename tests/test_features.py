import torch
from conftest import toy_reviews

from course_lib.config import TrainConfig
from course_lib.data import LabelMap, make_loader, to_dataset_dict, tokenize
from course_lib.features import (
    CachingLoader,
    FrozenBottom,
    TrainableTop,
    collate_features,
    split_matches_full_model,
    training_loaders,
)
from course_lib.models import freeze_for_training, load_classifier
from course_lib.training import set_seed, train

LABELS = LabelMap(["neg", "pos"])
CPU = torch.device("cpu")


def _tokens(tokenizer, n=96):
    frame = toy_reviews(n)
    splits = {"train": frame.iloc[: n - 32], "validation": frame.iloc[n - 32:]}
    return tokenize(to_dataset_dict(splits, LABELS), tokenizer, 32)


def test_collate_pads_and_masks():
    batch = collate_features([
        {"hidden_states": torch.ones(3, 4), "labels": 1},
        {"hidden_states": torch.ones(1, 4), "labels": 0},
    ])
    assert batch["hidden_states"].shape == (2, 3, 4)
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [1, 0]


def test_llama_split_reproduces_full_model(tiny_llama_dir):
    model, tok = load_classifier(str(tiny_llama_dir), LABELS)
    batch = next(iter(make_loader(_tokens(tok)["validation"], tok, 8)))
    for k in (0, 1, 3):
        assert split_matches_full_model(model, FrozenBottom(model, k), TrainableTop(model, k), batch, CPU)


def test_gpt2_split_is_detected_as_inexact(tiny_gpt2_dir):
    """GPT-2 adds position embeddings to inputs_embeds again, so its top cannot run alone."""
    model, tok = load_classifier(str(tiny_gpt2_dir), LABELS)
    batch = next(iter(make_loader(_tokens(tok)["validation"], tok, 8)))
    assert not split_matches_full_model(model, FrozenBottom(model, 1), TrainableTop(model, 1), batch, CPU)
    # k=0 needs no top blocks, so even GPT-2 can cache its final hidden states.
    assert split_matches_full_model(model, FrozenBottom(model, 0), TrainableTop(model, 0), batch, CPU)


def _train(model_dir, cache: bool):
    set_seed(0)
    model, tok = load_classifier(str(model_dir), LABELS)
    config = TrainConfig(epochs=2, batch_size=8, learning_rate=1e-3, train_blocks=1, cache_frozen=cache,
                         early_stopping_patience=None)
    freeze_for_training(model, config.train_blocks)
    module, train_loader, val_loader = training_loaders(model, _tokens(tok), tok, config, CPU, log=lambda s: None)
    history = train(module, train_loader, val_loader, config, CPU, 2)
    return module is model, history, model


def test_cached_training_equals_uncached_training(tiny_llama_dir):
    uncached_is_model, plain, plain_model = _train(tiny_llama_dir, cache=False)
    cached_is_model, fast, fast_model = _train(tiny_llama_dir, cache=True)
    assert uncached_is_model and not cached_is_model
    assert len(plain.step_losses) == len(fast.step_losses)
    assert torch.allclose(torch.tensor(plain.step_losses), torch.tensor(fast.step_losses), atol=1e-4)
    for a, b in zip(plain_model.parameters(), fast_model.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-4)


def test_gpt2_falls_back_to_uncached(tiny_gpt2_dir):
    is_model, history, _ = _train(tiny_gpt2_dir, cache=True)
    assert is_model and len(history.epochs) == 2




def test_caching_loader_runs_the_frozen_part_once_per_review(tiny_llama_dir):
    model, tok = load_classifier(str(tiny_llama_dir), LABELS)
    tokens = _tokens(tok)["train"]
    bottom = FrozenBottom(model, 1)
    rows = []
    bottom.register_forward_hook(lambda module, args, out: rows.append(out.shape[0]))
    loader = CachingLoader(bottom, tokens, tok, make_loader(tokens, tok, 8, shuffle=True).batch_sampler, CPU)
    first_epoch = [batch["labels"].tolist() for batch in loader]
    assert sum(rows) == len(tokens)  # each review once, batch by batch during the first epoch
    second_epoch = [batch["labels"].tolist() for batch in loader]
    assert sum(rows) == len(tokens)  # the second epoch only reads the stored features
    assert len(first_epoch) == len(loader) == 8 and first_epoch != second_epoch  # reshuffled
    # The same batches, in the same order, as the token loader with the same seed.
    assert first_epoch == [batch["labels"].tolist() for batch in make_loader(tokens, tok, 8, shuffle=True)]

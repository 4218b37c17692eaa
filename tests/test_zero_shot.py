"""The zero-shot baseline reads the first answer token of each label word."""

import pytest

from course_lib.errors import ConfigError
from course_lib.models import load_causal_lm
from course_lib.zero_shot import answer_token_ids, zero_shot_predict


def test_predicts_one_label_per_text_batched_or_not(tiny_llama_dir):
    model, tok = load_causal_lm(str(tiny_llama_dir))
    texts = ["great film", "the plot was dull and boring really", "awful"]
    batched = zero_shot_predict(model, tok, texts, ["great", "awful"], batch_size=3)
    single = zero_shot_predict(model, tok, texts, ["great", "awful"], batch_size=1)
    assert batched == single and set(batched) <= {0, 1} and len(batched) == 3


def test_answer_words_must_differ_in_their_first_token(tiny_llama_dir):
    _, tok = load_causal_lm(str(tiny_llama_dir))
    with pytest.raises(ConfigError, match="start with the same"):
        answer_token_ids(tok, ["boring", "boring"])

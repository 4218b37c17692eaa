import pandas as pd
import pytest
from conftest import require_assets, toy_reviews

from course_lib.config import DataConfig
from course_lib.data import (
    LabelMap,
    clean_table,
    clean_text,
    count_truncated,
    make_loader,
    read_table,
    split_table,
    to_dataset_dict,
    tokenize,
)
from course_lib.errors import DataError
from course_lib.runtime.assets import ROTTEN_TOMATOES


def test_clean_text_removes_html_and_spaces():
    assert clean_text("  A <br /><i>fine</i>   film &amp; cast\n") == "A fine film & cast"


def test_clean_table_reports_every_drop():
    frame = pd.DataFrame({
        "text": ["Good film", "good   FILM", None, "<br/>", "Bad film", "Okay"],
        "label": ["pos", "pos", "neg", "neg", "neg", None],
    })
    cleaned, report = clean_table(frame)
    assert cleaned["text"].tolist() == ["Good film", "Bad film"]
    assert report.dropped == {"non-text": 1, "missing label": 1, "empty": 1, "duplicate": 1}
    assert "6 rows in, 2 kept" in report.summary()


def test_numeric_labels_become_strings():
    frame = pd.DataFrame({"text": ["a", "b"], "label": [1.0, 0.0]})
    cleaned, _ = clean_table(frame)
    assert cleaned["label"].tolist() == ["1", "0"]


def test_label_map_is_sorted_and_round_trips():
    lm = LabelMap.from_labels(pd.Series(["rotten", "fresh", "rotten"]))
    assert lm.names == ["fresh", "rotten"]
    assert lm.id2label == {0: "fresh", 1: "rotten"} and lm.label2id["rotten"] == 1


def _split(frame, **kw):
    cleaned, _ = clean_table(frame)
    return split_table(cleaned, DataConfig(**kw))


def test_split_is_deterministic_stratified_and_disjoint():
    frame = toy_reviews(400).drop(columns="group")
    a, b = _split(frame, seed=3), _split(frame, seed=3)
    for name in a:
        assert a[name]["text"].tolist() == b[name]["text"].tolist()
    texts = [set(part["text"]) for part in a.values()]
    assert not (texts[0] & texts[1]) and not (texts[0] & texts[2]) and not (texts[1] & texts[2])
    assert sum(len(p) for p in a.values()) == 400
    assert len(a["test"]) == 40 and len(a["validation"]) == 40
    for part in a.values():  # the 50/50 balance survives in every split
        assert part["label"].value_counts().min() / len(part) >= 0.45
    assert _split(frame, seed=4)["test"]["text"].tolist() != a["test"]["text"].tolist()


def test_grouped_split_keeps_each_group_in_one_split():
    parts = _split(toy_reviews(400), seed=0)
    groups = [set(p["group"]) for p in parts.values()]
    assert not (groups[0] & groups[1]) and not (groups[0] & groups[2]) and not (groups[1] & groups[2])


def test_max_train_examples_subsamples_stratified():
    parts = _split(toy_reviews(400).drop(columns="group"), max_train_examples=50)
    assert len(parts["train"]) == 50
    assert parts["train"]["label"].value_counts().tolist() == [25, 25]


def test_single_class_is_refused():
    frame = pd.DataFrame({"text": [f"t{i}" for i in range(30)], "label": ["pos"] * 30})
    with pytest.raises(DataError, match="Only one class"):
        _split(frame)


def test_tiny_class_is_refused_with_counts():
    frame = toy_reviews(100).drop(columns="group")
    frame.loc[0, "label"] = "meh"
    with pytest.raises(DataError, match=r"\{'meh': 1\} have fewer than 10 examples"):
        _split(frame)


def test_missing_column_lists_existing_columns(toy_csv):
    with pytest.raises(DataError, match=r"\['review', 'sentiment', 'group'\]"):
        read_table(DataConfig(path=str(toy_csv)))


def test_csv_with_other_column_names(toy_csv):
    frame = read_table(DataConfig(path=str(toy_csv), text_column="review", label_column="sentiment",
                                  group_column="group"))
    assert list(frame.columns) == ["text", "label", "group"] and len(frame) == 240


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "empty"), (b"text,label\n", "no rows"), (b"text,label\n\xff\xfe bad,1\n", "UTF-8")],
)
def test_unreadable_csvs_get_clear_errors(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        read_table(DataConfig(path=str(path)))


def test_json_file_is_named_as_not_csv(tmp_path):
    path = tmp_path / "reviews.json"
    path.write_text('{"reviews": [{"text": "great", "label": 1}]}')
    with pytest.raises(DataError, match=r"is a \.json file, not CSV"):
        read_table(DataConfig(path=str(path)))


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_table(DataConfig(path=str(tmp_path / "nope.csv")))


def test_default_reviews_load_and_clean():
    require_assets(ROTTEN_TOMATOES)
    frame, _report = clean_table(read_table(DataConfig()))
    assert set(frame["label"]) == {"fresh", "rotten"}
    assert 12_500 < len(frame) < 13_000
    assert frame["text"].str.casefold().duplicated().sum() == 0
    assert "group" in frame.columns


def test_dynamic_padding_pads_each_batch_to_its_own_longest(tiny_tokenizer):
    tiny_tokenizer.pad_token = tiny_tokenizer.eos_token
    frame = pd.DataFrame({"text": ["great", "dull film", "the film was really quite great"],
                          "label": ["pos", "neg", "pos"]})
    data = to_dataset_dict({"train": frame}, LabelMap(["neg", "pos"]))
    tokens = tokenize(data, tiny_tokenizer, max_length=4)
    assert max(len(ids) for ids in tokens["train"]["input_ids"]) == 4  # truncated
    batches = list(make_loader(tokens["train"], tiny_tokenizer, batch_size=2))
    assert batches[0]["input_ids"].shape == (2, 2)  # padded to 2, not to max_length
    assert batches[0]["attention_mask"].tolist() == [[1, 0], [1, 1]]
    assert batches[0]["labels"].tolist() == [1, 0]
    assert batches[1]["input_ids"].shape == (1, 4)


def test_length_grouped_batches_waste_less_padding(tiny_tokenizer):
    tiny_tokenizer.pad_token = tiny_tokenizer.eos_token
    frame = toy_reviews(200)
    tokens = tokenize(to_dataset_dict({"train": frame}, LabelMap(["neg", "pos"])), tiny_tokenizer, 32)

    def padding(loader):
        return sum(int((1 - b["attention_mask"]).sum()) for b in loader)

    grouped = make_loader(tokens["train"], tiny_tokenizer, 8, shuffle=True, seed=0)
    plain = make_loader(tokens["train"], tiny_tokenizer, 8)
    assert padding(grouped) < padding(plain) / 2

    def epochs(loader, n=2):
        return [[b["input_ids"].tolist() for b in loader] for _ in range(n)]

    run_a = epochs(make_loader(tokens["train"], tiny_tokenizer, 8, shuffle=True, seed=0))
    run_b = epochs(make_loader(tokens["train"], tiny_tokenizer, 8, shuffle=True, seed=0))
    assert run_a == run_b  # same seed, same batches in every epoch
    assert run_a[0] != run_a[1]  # but each epoch is shuffled anew


def test_count_truncated_counts_texts_longer_than_max_length(tiny_tokenizer):
    frame = pd.DataFrame({"text": ["great", "the film was really quite great", "dull film"],
                          "label": ["pos", "pos", "neg"]})
    data = to_dataset_dict({"train": frame, "test": frame.iloc[:1]}, LabelMap(["neg", "pos"]))
    assert count_truncated(data, tiny_tokenizer, max_length=2) == 1
    assert count_truncated(data, tiny_tokenizer, max_length=1) == 2

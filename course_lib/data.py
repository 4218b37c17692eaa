"""Data: load reviews, clean them, split train/validation/test, tokenize and batch them."""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from datasets import Dataset, DatasetDict
from sklearn.model_selection import StratifiedGroupKFold, train_test_split
from torch.utils.data import BatchSampler, DataLoader
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase
from transformers.trainer_pt_utils import LengthGroupedSampler

from course_lib.config import DataConfig
from course_lib.errors import DataError
from course_lib.runtime.assets import reviews_csv
from course_lib.runtime.distributed import Parallel

SPLITS = ("train", "validation", "test")
# The offline reviews: critics' snippets labelled fresh/rotten, plus plot summaries we drop.
DEFAULT_COLUMNS = {"text": "text", "label": "category", "group": "movie_name"}

REVIEW_OPTIONS = "--text-column / --label-column (or --group-column)"
NOT_CSV = {".json", ".jsonl", ".xlsx", ".xls", ".parquet", ".arrow", ".pkl", ".pickle"}
_TAG = re.compile(r"<[^>]+>")
_SPACE = re.compile(r"\s+")


@dataclass
class LabelMap:
    """Label names in id order; kept with the model so predictions come back as names."""

    names: list[str]

    @classmethod
    def from_labels(cls, labels: pd.Series) -> LabelMap:
        """Sorted unique labels: the same data always gives the same ids."""
        return cls(sorted(str(v) for v in labels.unique()))

    def to_id(self, label: str) -> int:
        """Id of a label name."""
        return self.names.index(label)

    @property
    def id2label(self) -> dict[int, str]:
        """The mapping transformers stores in the model config."""
        return dict(enumerate(self.names))

    @property
    def label2id(self) -> dict[str, int]:
        """Inverse of id2label."""
        return {name: i for i, name in enumerate(self.names)}


@dataclass
class CleaningReport:
    """How many rows each cleaning rule removed, so nothing disappears silently."""

    rows_in: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    rows_out: int = 0

    def summary(self) -> str:
        """One line a learner can read."""
        parts = ", ".join(f"{n} {why}" for why, n in self.dropped.items() if n) or "nothing"
        return f"{self.rows_in} rows in, {self.rows_out} kept; dropped: {parts}"


def read_table(config: DataConfig) -> pd.DataFrame:
    """Read the reviews as a table with columns text, label and (optionally) group."""
    if config.hub_dataset:
        return _read_hub_dataset(config)
    if config.path is None:
        raw = pd.read_csv(reviews_csv())
        raw = raw[raw[DEFAULT_COLUMNS["label"]] != "plot"]  # plot summaries are not reviews
        columns = dict(DEFAULT_COLUMNS)
        if config.group_column == "":
            columns.pop("group")
    else:
        raw = read_csv_file(Path(config.path))
        columns = {"text": config.text_column, "label": config.label_column}
        if config.group_column:
            columns["group"] = config.group_column
    return select_columns(raw, columns, REVIEW_OPTIONS)


def load_hub_dataset(name: str) -> DatasetDict:
    """All splits of a data set from the Hugging Face Hub (or a local folder), with a clear error."""
    from datasets import load_dataset

    try:
        return load_dataset(name)
    except Exception as exc:  # datasets raises many types for "not reachable" / "not found"
        raise DataError(
            f"Could not load {name!r} from the Hugging Face Hub ({exc}). "
            "Check the name and your connection, or use a CSV with --data."
        ) from exc


def _read_hub_dataset(config: DataConfig) -> pd.DataFrame:
    """All splits of a Hub data set as one table; the course re-splits it its own way."""
    from datasets import concatenate_datasets

    parts = load_hub_dataset(config.hub_dataset)
    labelled = [part for part in parts.values() if -1 not in set(part[config.label_column])]
    return table_from_dataset(concatenate_datasets(labelled), config.text_column, config.label_column)


def table_from_dataset(dataset: Dataset, text_column: str, label_column: str) -> pd.DataFrame:
    """Turn a datasets.Dataset (e.g. from load_dataset on the Hub) into the course's table."""
    frame = dataset.to_pandas()
    feature = dataset.features.get(label_column)
    if feature is not None and hasattr(feature, "int2str"):
        # ClassLabel columns hold ids; the course keeps names so label maps stay readable.
        frame[label_column] = frame[label_column].map(feature.int2str)
    return select_columns(frame, {"text": text_column, "label": label_column}, REVIEW_OPTIONS)


def read_csv_file(path: Path) -> pd.DataFrame:
    """pandas.read_csv with errors that say what to fix."""
    if not path.exists():
        raise DataError(f"Data file {path} does not exist. Check the path given with --data.")
    if path.suffix.lower() in NOT_CSV:
        raise DataError(
            f"{path} is a {path.suffix} file, not CSV. Save it as CSV with a header row "
            "(e.g. with pandas: pd.read_json(path).to_csv('reviews.csv', index=False))."
        )
    try:
        frame = pd.read_csv(path, encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}). "
            "Re-save it as UTF-8 (e.g. in a spreadsheet: CSV UTF-8)."
        ) from exc
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"{path} is empty. It needs a header row and one row per review.") from exc
    except pd.errors.ParserError as exc:
        raise DataError(f"{path} could not be read as CSV: {exc}") from exc
    if frame.empty:
        raise DataError(f"{path} has a header but no rows.")
    return frame


def select_columns(frame: pd.DataFrame, columns: dict[str, str], options: str) -> pd.DataFrame:
    """Keep the chosen columns under the course's names ({course name: data's name}), or say which exist."""
    missing = [name for name in columns.values() if name not in frame.columns]
    if missing:
        raise DataError(
            f"Column(s) {missing} not found. The data has columns {list(frame.columns)}; "
            f"choose them with {options}."
        )
    return frame[list(columns.values())].set_axis(list(columns), axis=1)


def clean_text(text: str) -> str:
    """Undo HTML escapes, remove tags such as <br />, and collapse whitespace."""
    text = html.unescape(text)
    text = _TAG.sub(" ", text)
    return _SPACE.sub(" ", text).strip()


def clean_table(frame: pd.DataFrame) -> tuple[pd.DataFrame, CleaningReport]:
    """Drop rows that cannot teach the model anything, and report each drop."""
    report = CleaningReport(rows_in=len(frame))
    frame = drop_rows(frame, frame["text"].map(lambda v: isinstance(v, str)), report, "non-text")
    frame = drop_rows(frame, frame["label"].notna(), report, "missing label")
    frame = frame.assign(label=frame["label"].map(_label_str), text=frame["text"].map(clean_text))
    frame = drop_rows(frame, frame["text"] != "", report, "empty")
    # Near-identical copies (case, spacing) would leak between splits; keep the first one.
    key = frame["text"].str.casefold().str.replace(_SPACE, " ", regex=True)
    frame = drop_rows(frame, ~key.duplicated(keep="first"), report, "duplicate")
    return finish_cleaning(frame, report)


def drop_rows(frame: pd.DataFrame, keep: pd.Series, report: CleaningReport, reason: str) -> pd.DataFrame:
    """The rows to keep; how many were dropped is counted in the report under `reason`."""
    report.dropped[reason] = int((~keep).sum())
    return frame[keep]


def finish_cleaning(frame: pd.DataFrame, report: CleaningReport, what: str = "rows",
                    advice: str = "") -> tuple[pd.DataFrame, CleaningReport]:
    """Renumber the kept rows and count them, or refuse data with nothing left."""
    frame = frame.reset_index(drop=True)
    report.rows_out = len(frame)
    if report.rows_out == 0:
        raise DataError(f"No usable {what} left after cleaning ({report.summary()}).{advice}")
    return frame, report


def _label_str(value: object) -> str:
    """Labels become strings; 1.0 read by pandas from a column with gaps becomes '1'."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def split_table(frame: pd.DataFrame, config: DataConfig) -> dict[str, pd.DataFrame]:
    """Deterministic, stratified train/validation/test split; groups never span two splits."""
    _check_splittable(frame, config)
    if "group" in frame.columns:
        rest, test = _group_split(frame, config.test_fraction, config.seed)
        val_share = config.val_fraction / (1 - config.test_fraction)
        train, val = _group_split(rest, val_share, config.seed + 1)
    else:
        rest, test = train_test_split(
            frame, test_size=config.test_fraction, stratify=frame["label"], random_state=config.seed
        )
        val_share = config.val_fraction / (1 - config.test_fraction)
        train, val = train_test_split(
            rest, test_size=val_share, stratify=rest["label"], random_state=config.seed
        )
    splits = {"train": train, "validation": val, "test": test}
    limits = {
        "train": config.max_train_examples,
        "validation": config.max_val_examples,
        "test": config.max_test_examples,
    }
    return {
        name: subsample(part, limits[name], config.seed, "label").reset_index(drop=True)
        for name, part in splits.items()
    }


def _check_splittable(frame: pd.DataFrame, config: DataConfig) -> None:
    """Stratifying needs two classes and enough examples of each in every split."""
    counts = frame["label"].value_counts()
    if len(counts) < 2:
        raise DataError(
            f"Only one class ({counts.index[0]!r}) in the label column: a classifier needs at "
            "least two. Check --label-column."
        )
    needed = max(3, round(1 / min(config.val_fraction, config.test_fraction)))
    small = counts[counts < needed]
    if not small.empty:
        sizes = {str(label): int(n) for label, n in small.items()}
        raise DataError(
            f"Class(es) {sizes} have fewer than {needed} examples, too few to appear in "
            "train, validation and test. Add examples, merge classes, or remove those rows."
        )


def _group_split(frame: pd.DataFrame, fraction: float, seed: int):
    """Hold out about `fraction` of rows as whole groups, keeping class balance."""
    n_splits = max(2, round(1 / fraction))
    if frame["group"].nunique() < n_splits:
        raise DataError(
            f"Only {frame['group'].nunique()} groups: a grouped split needs at least {n_splits}. "
            "Use fewer/other groups or no --group-column."
        )
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    keep_idx, held_idx = next(splitter.split(frame, frame["label"], frame["group"]))
    return frame.iloc[keep_idx], frame.iloc[held_idx]


def subsample(frame: pd.DataFrame, limit: int | None, seed: int, stratify: str | None = None) -> pd.DataFrame:
    """A random subset of `limit` rows (all rows when limit is None or larger).

    With `stratify`, the subset keeps that column's class balance; without, it keeps the rows' order.
    """
    if limit is None or limit >= len(frame):
        return frame
    if stratify is None:
        return frame.sample(n=limit, random_state=seed).sort_index()
    subset, _ = train_test_split(frame, train_size=limit, stratify=frame[stratify], random_state=seed)
    return subset


@dataclass
class PreparedData:
    """The cleaned, split reviews with their label map."""

    splits: dict[str, pd.DataFrame]
    label_map: LabelMap
    report: CleaningReport
    datasets: DatasetDict


def prepare_data(config: DataConfig) -> PreparedData:
    """Steps 1-3 of the document: load the reviews, clean them, split them."""
    frame, report = clean_table(read_table(config))
    label_map = LabelMap.from_labels(frame["label"])
    splits = split_table(frame, config)
    return PreparedData(splits, label_map, report, to_dataset_dict(splits, label_map))


def to_dataset_dict(splits: dict[str, pd.DataFrame], label_map: LabelMap) -> DatasetDict:
    """Turn the split tables into a datasets.DatasetDict with integer `labels`."""
    parts = {}
    for name, frame in splits.items():
        unknown = set(frame["label"]) - set(label_map.names)
        if unknown:
            raise DataError(f"Labels {sorted(unknown)} in {name} are not in {label_map.names}.")
        table = pd.DataFrame({
            "text": frame["text"].tolist(),
            "labels": [label_map.to_id(v) for v in frame["label"]],
        })
        parts[name] = Dataset.from_pandas(table, preserve_index=False)
    return DatasetDict(parts)


def tokenize(
    data: DatasetDict, tokenizer: PreTrainedTokenizerBase, max_length: int
) -> DatasetDict:
    """Token ids for every text, truncated to max_length; padding waits for the batch."""
    def encode(batch: dict) -> dict:
        return tokenizer(batch["text"], truncation=True, max_length=max_length)

    return data.map(encode, batched=True, remove_columns=["text"], desc="Tokenizing")


def count_truncated(data: DatasetDict, tokenizer: PreTrainedTokenizerBase, max_length: int) -> int:
    """How many texts, over all splits, are longer than max_length tokens (and get cut)."""
    return sum(
        sum(len(ids) > max_length for ids in tokenizer(list(split["text"])).input_ids)
        for split in data.values()
    )


def make_loader(
    dataset: Dataset,
    tokenizer: PreTrainedTokenizerBase,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    sort_by_length: bool = False,
    collator: Callable[[list[dict]], dict] | None = None,
    parallel: Parallel | None = None,
) -> DataLoader:
    """Batches padded to their own longest sequence.

    shuffle=True (training) groups similar lengths in random batches; sort_by_length=True
    (evaluation, where order does not matter) sorts all reviews so batches carry almost no padding.
    The collator pads a batch; the default pads inputs for a classifier (pairs.pair_collator
    also pads token labels for a language model). With `parallel` from several processes, each
    process's loader yields its own shard of those batches.
    """
    collator = collator or DataCollatorWithPadding(tokenizer, return_tensors="pt")
    pin = torch.cuda.is_available()  # page-locked batches copy to the GPU without blocking the host
    lengths = [len(ids) for ids in dataset["input_ids"]]
    sampler = None
    if shuffle:
        sampler = length_grouped_sampler(lengths, batch_size, seed)
    elif sort_by_length:
        sampler = sorted(range(len(lengths)), key=lengths.__getitem__)
    if parallel is not None and parallel.num_processes > 1:
        # The same batches as one process would see, every Nth to each (same seed everywhere).
        order = sampler if sampler is not None else range(len(lengths))
        batches = BatchSampler(order, batch_size, drop_last=False)
        return DataLoader(dataset, batch_sampler=parallel.shard(batches), collate_fn=collator, pin_memory=pin)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collator, pin_memory=pin)


def length_grouped_sampler(lengths: list[int], batch_size: int, seed: int) -> LengthGroupedSampler:
    """Shuffle, then sort within chunks of ~50 batches: little padding, still random batches.

    The generator is seeded once, so epoch e of a run always sees the same order (reproducible),
    while each epoch still gets a new order because the generator advances.
    """
    generator = torch.Generator().manual_seed(seed)
    return LengthGroupedSampler(batch_size, lengths=lengths, generator=generator)

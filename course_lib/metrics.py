"""Metrics: accuracy, F1 and baselines for classifiers; BLEU, ROUGE-L, coverage and SQuAD's EM/F1 for text.

Every score but SQuAD's comes from a maintained library (scikit-learn, sacrebleu, rouge-score):
metrics written by hand drift from the published definitions in ways nobody notices. SQuAD's
two are a dozen lines in its official evaluation script, followed here line for line.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support


def classification_metrics(
    y_true: Sequence[int], y_pred: Sequence[int], num_labels: int
) -> dict[str, float | list[list[int]]]:
    """Accuracy plus macro-averaged precision, recall and F1 (each class counts equally)."""
    labels = list(range(num_labels))
    precision, recall, f1, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average="macro", zero_division=0
    )
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def majority_baseline(train_labels: Sequence[int], eval_labels: Sequence[int]) -> dict[str, float]:
    """Score of always answering the training set's most common class: the bar to beat."""
    majority = Counter(train_labels).most_common(1)[0][0]
    predictions = [majority] * len(eval_labels)
    return {
        "label": int(majority),
        "accuracy": float(accuracy_score(eval_labels, predictions)),
        "f1": float(precision_recall_fscore_support(
            eval_labels, predictions, average="macro", zero_division=0
        )[2]),
    }


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus BLEU (0-100) with sacrebleu's standard settings, each hypothesis against all its references.

    BLEU counts the 1- to 4-word sequences a hypothesis shares with any of its references, over
    the whole corpus, with a penalty for being shorter than the references.
    """
    from sacrebleu.metrics import BLEU

    _check_pairs(hypotheses, references)
    # sacrebleu wants reference *streams*: stream k holds every hypothesis's k-th reference.
    # Prompts with fewer references fill the missing places with None, which sacrebleu skips.
    depth = max(len(refs) for refs in references)
    streams = [[refs[k] if k < len(refs) else None for refs in references] for k in range(depth)]
    return float(BLEU().corpus_score(list(hypotheses), streams).score)


def rouge_l(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Mean ROUGE-L F-measure (0-100), each hypothesis scored against its best-matching reference.

    ROUGE-L looks at the longest common subsequence of words: the words the two texts share
    in the same order, gaps allowed.
    """
    from rouge_score.rouge_scorer import RougeScorer

    _check_pairs(hypotheses, references)
    scorer = RougeScorer(["rougeL"], use_stemmer=True)
    scores = [scorer.score_multi(list(refs), hyp)["rougeL"].fmeasure
              for hyp, refs in zip(hypotheses, references, strict=True)]
    return 100.0 * sum(scores) / len(scores)


def _check_pairs(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    """One list of references per hypothesis, none of them empty."""
    if len(hypotheses) != len(references) or not hypotheses:
        raise ValueError(f"Need one list of references per hypothesis, got {len(hypotheses)} "
                         f"hypotheses and {len(references)} reference lists.")
    if any(len(refs) == 0 for refs in references):
        raise ValueError("Every hypothesis needs at least one reference.")


# E2E attributes whose value a good description repeats word for word (unlike familyFriendly:
# yes, or a price range that can be paraphrased): the slots a sentence can be checked for.
VERBATIM_ATTRIBUTES = ("name", "eatType", "food", "area", "near")


def parse_attributes(prompt: str) -> dict[str, str]:
    """An E2E prompt such as 'name: Blue Spice, eatType: pub' as {'name': 'Blue Spice', 'eatType': 'pub'}."""
    pairs = (part.split(":", 1) for part in prompt.split(", ") if ":" in part)
    return {key.strip(): value.strip() for key, value in pairs}


def attribute_coverage(prompts: Sequence[str], texts: Sequence[str]) -> float | None:
    """Share (0-100) of the checkable attribute values (name, food, area ...) that the texts mention.

    None when the prompts have no such attributes (e.g. CommonGen's concept words).

    BLEU and ROUGE reward shared words, whichever they are; a fluent sentence that drops the
    restaurant's name can still score well. This check counts what a reader needs.
    """
    mentioned = total = 0
    for prompt, text in zip(prompts, texts, strict=True):
        for key, value in parse_attributes(prompt).items():
            if key in VERBATIM_ATTRIBUTES:
                total += 1
                mentioned += value.lower() in text.lower()
    return 100.0 * mentioned / total if total else None


def generation_metrics(
    hypotheses: Sequence[str], references: Sequence[Sequence[str]], prompts: Sequence[str] | None = None
) -> dict[str, float]:
    """BLEU and ROUGE-L against the references, the mean length, and attribute coverage when prompts are given."""
    metrics = {
        "bleu": corpus_bleu(hypotheses, references),
        "rouge_l": rouge_l(hypotheses, references),
        "mean_words": sum(len(h.split()) for h in hypotheses) / len(hypotheses),
    }
    coverage = attribute_coverage(prompts, hypotheses) if prompts is not None else None
    if coverage is not None:
        metrics["coverage"] = coverage
    return metrics


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles (a, an, the), single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def answer_f1(answer: str, reference: str) -> float:
    """SQuAD's token F1: the harmonic mean of precision and recall of the normalised words."""
    predicted, gold = normalize_answer(answer).split(), normalize_answer(reference).split()
    common = sum((Counter(predicted) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def qa_metrics(answers: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """Exact match and token F1 (0-100), each answer scored against its best reference, as in SQuAD."""
    _check_pairs(answers, references)
    pairs = list(zip(answers, references, strict=True))
    exact = [max(normalize_answer(a) == normalize_answer(r) for r in refs) for a, refs in pairs]
    f1 = [max(answer_f1(a, r) for r in refs) for a, refs in pairs]
    return {"exact_match": 100.0 * sum(exact) / len(exact), "f1": 100.0 * sum(f1) / len(f1)}


def grouped_bootstrap_interval(
    correct: Sequence[bool], groups: Sequence[object], n_resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """A 95 % interval for accuracy that resamples whole groups (movies), not single reviews.

    Reviews of one movie are not independent, so resampling reviews one by one would give an
    interval that is too narrow.
    """
    frame = pd.DataFrame({"correct": np.asarray(correct, dtype=float), "group": list(groups)})
    per_group = frame.groupby("group")["correct"].agg(["sum", "count"]).to_numpy()
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(per_group), size=(n_resamples, len(per_group)))
    sums, counts = per_group[picks, 0].sum(axis=1), per_group[picks, 1].sum(axis=1)
    low, high = np.percentile(sums / counts, [2.5, 97.5])
    return float(low), float(high)

"""Metrics: accuracy, precision, recall, F1, confusion matrix and a majority-class baseline."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

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

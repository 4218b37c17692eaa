"""Exercises: each chapter's questions, a check that says right or wrong and why, and solutions.

In a notebook:  `check("2.1", answer)`  prints whether the answer is right and why
(`is_right` returns the verdict instead);
`solution("2.1")` prints the worked solution (kept here, out of the learner's way).
An answer left as None is reported as "not answered yet", so notebooks still run headless.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from course_lib.training import IGNORE_INDEX

Verdict = tuple[bool, str]


@dataclass(frozen=True)
class Exercise:
    """One question with its checker and solution."""

    key: str
    question: str
    checker: Callable[..., Verdict]
    solution: str


def _close(answer: Any, expected: float, tol: float = 1e-3) -> bool:
    try:
        return math.isclose(float(answer), expected, abs_tol=tol)
    except (TypeError, ValueError):
        return False


def _exact(expected: Any, why: str) -> Callable[..., Verdict]:
    def checker(answer: Any, **_: Any) -> Verdict:
        if answer == expected:
            return True, why
        return False, f"{answer!r} is not it. Hint: {why.split('.')[0]}."
    return checker


def _steps_checker(answer: Any, n_examples: int, batch_size: int, epochs: int, accum: int = 1) -> Verdict:
    expected = math.ceil(math.ceil(n_examples / batch_size) / accum) * epochs
    if answer == expected:
        return True, f"ceil({n_examples}/{batch_size}) batches per epoch, one update every {accum}, × {epochs}."
    return False, (f"{answer!r} is not it. Count the batches in one epoch (the last one may be "
                   "smaller), divide by the accumulation steps (rounding up), multiply by epochs.")


def _accuracy_checker(answer: Any, matrix: list[list[int]]) -> Verdict:
    total = sum(sum(row) for row in matrix)
    expected = sum(matrix[i][i] for i in range(len(matrix))) / total
    if _close(answer, expected):
        return True, f"correct answers sit on the diagonal: {expected:.3f}."
    return False, f"{answer!r} is not it: add the diagonal and divide by all {total} reviews."


def _precision_checker(answer: Any, matrix: list[list[int]], label: int) -> Verdict:
    column = sum(row[label] for row in matrix)
    expected = matrix[label][label] / column
    if _close(answer, expected):
        return True, f"of the {column} reviews predicted as class {label}, {matrix[label][label]} were right."
    return False, (f"{answer!r} is not it: precision looks down the predicted column "
                   f"(all reviews predicted as class {label}), not along the true row.")


def _fraction_checker(answer: Any, expected: float) -> Verdict:
    if _close(answer, expected, tol=0.005):
        return True, f"the share is {expected:.3f}; a model must beat this to be useful."
    return False, f"{answer!r} is not it: count the label's rows and divide by all rows."


def _normalise(answer: Any) -> str:
    """Forgiving text matching: case, spaces, hyphens and underscores do not matter."""
    return "".join(ch for ch in str(answer).lower() if ch.isalnum())


def _masked_count_checker(answer: Any, row: dict) -> Verdict:
    expected = sum(label == IGNORE_INDEX for label in row["labels"])
    if _close(answer, expected, tol=0):
        return True, (f"all {expected} prompt tokens, template and instruction included, carry -100: the "
                      "loss never asks the model to predict the prompt, only its answer.")
    return False, ("The masked positions are exactly the formatted prompt's tokens; count the "
                   "labels equal to -100, e.g. with a comprehension over row['labels'].")


def _metric_checker(answer: Any) -> Verdict:
    if _normalise(answer) in {"coverage", "attributecoverage", "attributes"}:
        return True, ("coverage checks the prompt's own values (name, food, area ...). BLEU and ROUGE-L "
                      "only count words shared with the references, whichever words they are.")
    if _normalise(answer) in {"bleu", "rougel", "rouge"}:
        return False, ("That score counts words shared with human references; a short sentence "
                       "can share many of them and still leave things out. Which score reads the prompt?")
    return False, "Answer 'bleu', 'rouge_l' or 'coverage'."


def _masking_experiment_checker(answer: Any, measured: dict) -> Verdict:
    if not {True, False} <= set(measured):
        return False, ("Run the experiment cell twice first, once with mask_prompt = True and once with "
                       "mask_prompt = False, so both BLEU scores are measured.")
    masked, unmasked = measured[True], measured[False]
    truth = "same" if abs(masked - unmasked) < 2 else ("masked" if masked > unmasked else "unmasked")
    if _normalise(answer) == truth:
        return True, (f"masked {masked:.1f} vs unmasked {unmasked:.1f} BLEU. Masking spends the whole "
                      "loss on the answer; Raschka measured it as roughly neutral on his instruction data, "
                      "so it is a choice to measure, not a rule. One seed and a small test set make "
                      "a difference of a few points uncertain.")
    if _normalise(answer) not in {"masked", "unmasked", "same"}:
        return False, "Answer 'masked', 'unmasked' or 'same'."
    return False, ("Compare the two BLEU scores the experiment printed; 'same' means they differ "
                   "by less than 2 points.")


EXERCISES: dict[str, Exercise] = {ex.key: ex for ex in [
    Exercise("0.1", "How many parameters does the pretrained model have? (pass model= to check)",
             lambda answer, model: (answer == sum(p.numel() for p in model.parameters()),
                                         "sum(p.numel() for p in model.parameters())"),
             "`sum(p.numel() for p in model.parameters())` counts every weight, head included."),
    Exercise("0.2", "How many transformer blocks does the model stack? (pass model=)",
             lambda answer, model: (answer == model.config.num_hidden_layers,
                                    "model.config.num_hidden_layers counts them"),
             "`model.config.num_hidden_layers`: 30 for SmolLM2-135M (GPT-2 small has 12)."),
    Exercise("1.1", "What fraction of the cleaned reviews are 'fresh'? (pass expected=)",
             lambda answer, expected: _fraction_checker(answer, expected),
             "`(table['label'] == 'fresh').mean()`: about 0.58. Always guessing 'fresh' scores that."),
    Exercise("1.2", "Is the data set balanced enough that accuracy alone is informative? (True/False)",
             _exact(False, "58/42 is mild imbalance. A constant answer already gets 58 %, so compare "
                           "with the majority baseline and look at F1 too"),
             "False: report the majority baseline and macro F1 next to accuracy."),
    Exercise("2.1", "How many GPT-2 tokens is ' unbelievably boring'? (pass tokenizer=)",
             lambda answer, tokenizer: (answer == len(tokenizer(" unbelievably boring").input_ids),
                                        "each word with its leading space is one token here"),
             "`len(gpt2(' unbelievably boring').input_ids)` is 2: both words are common enough "
             "to be single BPE tokens (with their leading space)."),
    Exercise("2.2", "Which token id does GPT-2 use for padding after the fix?",
             _exact(50256, "The fix reuses <|endoftext|>, id 50256, as the pad token"),
             "50256: `tokenizer.pad_token = tokenizer.eos_token`. The attention mask keeps the "
             "model from reading it, and the classifier pools the last real token."),
    Exercise("3.1", "Why split by movie? Pick 'a' (more data), 'b' (no leakage of a movie's "
                    "reviews into test) or 'c' (faster)",
             _exact("b", "Reviews of one movie share names and plot words, so a test review of a "
                         "training movie is partly memorised, not generalised"),
             "b: grouping keeps each movie's reviews in one split."),
    Exercise("3.2", "With 1,000 reviews, val_fraction=0.1 and test_fraction=0.1, how many "
                    "training reviews are left?",
             _exact(800, "10 % go to validation and 10 % to test: 1000 - 100 - 100"),
             "800."),
    Exercise("4.1", "Accuracy of this confusion matrix? (pass matrix=)",
             lambda answer, matrix: _accuracy_checker(answer, matrix),
             "(top-left + bottom-right) / total."),
    Exercise("4.2", "A model always answers 'fresh' on a test set that is 58 % fresh. Its accuracy?",
             lambda answer: (_close(answer, 0.58, 0.005), "the majority baseline equals the "
                             "majority share: 0.58"),
             "0.58, with macro F1 only about 0.37, which is why F1 is reported too."),
    Exercise("5.1", "How many optimizer updates does training make? (pass n_examples=, "
                    "batch_size=, epochs=, accum=)",
             _steps_checker,
             "ceil(ceil(n / batch) / accum) × epochs; the scheduler is built with this number."),
    Exercise("5.2", "Validation loss rises while training loss keeps falling. Is that "
                    "'overfitting' or 'underfitting'?",
             _exact("overfitting", "The model keeps fitting the training set better but "
                                   "generalises worse"),
             "overfitting: stop early (the course restores the best epoch), use more data, "
             "train fewer blocks or lower the learning rate."),
    Exercise("6.1", "Which file format holds the weights, so that loading runs no code?",
             _exact("safetensors", "Pickle files (.bin/.pt) can run code when loaded; "
                                   "safetensors only holds tensors"),
             "safetensors."),
    Exercise("6.2", "After reloading, do predictions match the original model? (pass "
                    "before= and after=, lists of labels)",
             lambda answer, before, after: (answer is True and before == after,
                                            "same weights, same tokenizer, same padding"),
             "True: `[p.label for p in before] == [p.label for p in after]`."),
    Exercise("7.1", "Precision of class 1 in this confusion matrix? (pass matrix=)",
             lambda answer, matrix: _precision_checker(answer, matrix, 1),
             "matrix[1][1] / (matrix[0][1] + matrix[1][1])."),
    Exercise("7.2", "May you tune hyperparameters on the test set? (True/False)",
             _exact(False, "Choosing settings by test score makes the test score optimistic; "
                           "tune on validation, test once"),
             "False."),
    Exercise("8.1", "Top 4 of 30 blocks trained with the frozen-feature cache, 3 epochs: how many "
                    "times does each training review pass through the 26 frozen blocks?",
             _exact(1, "The cache runs the frozen blocks once per review and reuses their output "
                       "in every epoch"),
             "1: without the cache it would be 3 (once per epoch), plus once per validation pass."),
    Exercise("8.2", "Which strategy cannot use the frozen-feature cache: 'head', 'top-k' or 'lora'?",
             _exact("lora", "LoRA adds trainable adapters inside every block, so no block's output "
                            "stays the same from one step to the next"),
             "lora: its adapters change every block, so each step must run the whole model."),
    Exercise("8.3", "A LoRA adapter of rank 8 on one 576 x 576 projection: how many parameters "
                    "does it add?",
             _exact(9216, "It adds A (8 x 576) and B (576 x 8): 8 x (576 + 576)"),
             "9216 = 8 x (576 + 576), against 331,776 in the projection itself (2.8 %)."),
    Exercise("9.1", "How many labels of the encoded example `row` are -100? (pass row=)",
             _masked_count_checker,
             "`sum(label == -100 for label in row['labels'])`: every token of the formatted prompt "
             "(system turn, user turn, the assistant header). The response and its end-of-turn token "
             "keep their ids."),
    Exercise("9.2", "A writer produces 'Blue Spice is a pub.' for 'name: Blue Spice, eatType: pub, food: "
                    "Chinese, area: riverside'. Which score shows most directly what is missing: 'bleu', "
                    "'rouge_l' or 'coverage'?",
             lambda answer: _metric_checker(answer),
             "coverage: it counts the prompt's values that the sentence mentions (2 of 4 here). BLEU and "
             "ROUGE-L can stay high for a fluent sentence that leaves attributes out."),
    Exercise("9.3", "Did masking the prompt help on this data, at this budget? 'masked', 'unmasked' or "
                    "'same' (within 2 BLEU). (pass measured=, the experiment's {mask_prompt: BLEU})",
             _masking_experiment_checker,
             "Whatever your two runs measured: the answer is read from them. On this data both settings "
             "learn the task; differences of a few BLEU points are within the noise of one seed."),
]}


def is_right(key: str, answer: Any, **context: Any) -> bool:
    """True when `answer` to exercise `key` is right (for code that needs the verdict)."""
    return answer is not None and EXERCISES[key].checker(answer, **context)[0]


def check(key: str, answer: Any, **context: Any) -> None:
    """Print whether `answer` to exercise `key` is right, and why."""
    exercise = EXERCISES[key]
    if answer is None:
        print(f"Exercise {key}: not answered yet. {exercise.question}")
        return
    right, why = exercise.checker(answer, **context)
    print(f"Exercise {key}: {'right' if right else 'not yet'} — {why}")


def solution(key: str) -> None:
    """Print the worked solution of exercise `key`."""
    print(f"Solution {key}: {EXERCISES[key].solution}")

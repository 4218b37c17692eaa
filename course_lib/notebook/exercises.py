"""Exercises: each chapter's questions, a check that says right or wrong, and worked solutions.

In a notebook:  `check("2.1", answer)`  prints whether the answer is right (with the reason) or
not yet (with a hint that points the way but never contains the answer); `is_right` returns
the verdict instead. `solution("2.1", reveal=True)` prints the worked solution; without
`reveal=True` it only says that the solution is hidden, so a notebook that runs every cell
(headless, or nbval in CI) never shows one, and no committed output holds one.

Every exercise knows its right answer as a function of the context the notebook passes
(`model=`, `matrix=`, `measured=` ...), so experiments are checked against what the learner's
own run measured. Matching forgives case, spaces and common spellings, and numbers are
compared with a tolerance. An answer left as None is "not answered yet", so notebooks run headless.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from course_lib.metrics import classification_metrics
from course_lib.models import transformer_blocks
from course_lib.records import IGNORE_INDEX

NUMBER, CHOICE = "number", "choice"


@dataclass(frozen=True)
class Exercise:
    """One question: its right answer (from context), a hint, the reason, the worked solution."""

    key: str
    question: str
    expected: Callable[..., Any]  # the right answer, computed from the context the notebook passes
    hint: str  # for a wrong answer: where to look or what to compute, never the answer itself
    why: str  # for a right answer: the reasoning; may use {expected}
    solution: str
    kind: str = NUMBER  # NUMBER: compared with `tolerance`; CHOICE: one of `choices`
    tolerance: float = 0.0
    choices: dict[str, str] = field(default_factory=dict)  # accepted spelling (normalised) -> choice
    wrong_hints: dict[str, str] = field(default_factory=dict)  # a hint for one specific wrong choice
    missing: Callable[..., str | None] = lambda **_: None  # experiments: what to run first, if unmeasured


def normalise(answer: Any) -> str:
    """Forgiving text matching: case, spaces, hyphens, quotes and underscores do not matter."""
    return "".join(ch for ch in str(answer).lower() if ch.isalnum())


def _as_number(answer: Any) -> float | None:
    """A number from 0.85, '0.85', '85%', '1,234' or '1e-3'; None when it is not one."""
    if isinstance(answer, bool):
        return None
    text = str(answer).strip().replace(",", "").replace("_", "")
    scale = 0.01 if text.endswith("%") else 1.0
    try:
        return float(text.rstrip("%").strip()) * scale
    except ValueError:
        return None


def _choice(answer: Any, exercise: Exercise) -> str | None:
    if isinstance(answer, bool):
        answer = "true" if answer else "false"
    return exercise.choices.get(normalise(answer))


def verdict(exercise: Exercise, answer: Any, **context: Any) -> tuple[bool, str]:
    """(right?, message) for one answer; the message of a wrong answer never holds the right one."""
    missing = exercise.missing(**context)
    if missing:
        return False, missing
    expected = exercise.expected(**context)
    if exercise.kind == CHOICE:
        given = _choice(answer, exercise)
        if given is None:
            options = sorted(set(exercise.choices.values()))
            return False, "Answer one of " + ", ".join(repr(o) for o in options) + "."
        right = given == expected
        hint = exercise.wrong_hints.get(given, exercise.hint)
    else:
        number = _as_number(answer)
        if number is None:
            return False, f"{answer!r} is not a number. {exercise.hint}"
        right = math.isclose(number, float(expected), abs_tol=exercise.tolerance, rel_tol=0)
        hint = exercise.hint
    return (True, exercise.why.format(expected=expected)) if right else (False, hint)


def _steps(n_examples: int, batch_size: int, epochs: int, accum: int = 1) -> int:
    return math.ceil(math.ceil(n_examples / batch_size) / accum) * epochs


def _measured_pair(first: Any, second: Any, what: str) -> Callable[..., str | None]:
    """An experiment's check needs both settings measured: say which run is still missing."""
    def missing(measured: dict | None = None, **_: Any) -> str | None:
        if not measured or first not in measured or second not in measured:
            return f"Run the experiment cell with {what} first, so both results are measured."
        return None
    return missing


def _ran_once(measured: dict | None = None, **_: Any) -> str | None:
    """An experiment's check needs the experiment cell to have run once."""
    return None if measured else "Run the experiment cell first."


def _loop_edited(measured: dict | None = None, **_: Any) -> str | None:
    """5.4 needs section 4's run and the edited loop's, and identical losses mean the loop was not edited."""
    both = _measured_pair("section 4", "edited loop", "your edited loop")(measured)
    if both or len(set(measured.values())) == 2:
        return both
    return ("Both runs measured the same loss, so your loop is unchanged: put a # before "
            "optimizer.zero_grad() in my_training_loop, run that cell, then the experiment cell again.")


def _agreeing_movies(table: Any, agree: float = 0.8) -> float:
    """The share of movies whose reviews mostly agree: at least `agree` of them fresh, or of them rotten."""
    share = table.groupby("group")["label"].apply(lambda labels: (labels == "fresh").mean())
    # A tolerance, since 1 - 0.8 is 0.19999999999999996: a movie 7 of 35 fresh must count, as in share <= 0.2.
    return float(((share >= agree - 1e-9) | (share <= 1 - agree + 1e-9)).mean())


def _compare(measured: dict, first: Any, second: Any, same_within: float) -> str:
    """'higher', 'lower' or 'same': how the second setting's result compares with the first's."""
    difference = measured[second] - measured[first]
    return "same" if abs(difference) < same_within else ("higher" if difference > 0 else "lower")


YES_NO = {"yes": "yes", "true": "yes", "y": "yes", "no": "no", "false": "no", "n": "no"}
HIGHER_LOWER = {"higher": "higher", "more": "higher", "larger": "higher", "lower": "lower", "less": "lower",
                "smaller": "lower", "same": "same", "equal": "same", "aboutthesame": "same"}


def _macro_f1(matrix: list[list[int]]) -> float:
    """Macro F1 of a confusion matrix, by scikit-learn (via the course's metrics) on its cells."""
    y_true = [t for t, row in enumerate(matrix) for p, count in enumerate(row) for _ in range(count)]
    y_pred = [p for t, row in enumerate(matrix) for p, count in enumerate(row) for _ in range(count)]
    return classification_metrics(y_true, y_pred, len(matrix))["f1"]


EXERCISES: dict[str, Exercise] = {ex.key: ex for ex in [
    Exercise("0.1", "How many parameters does the pretrained part of the model have, without the new head? "
                    "(pass model=)",
             lambda model: sum(p.numel() for name, p in model.named_parameters() if not name.startswith("score.")),
             "model.named_parameters() yields (name, tensor) pairs, and every tensor has .numel(). The "
             "head's weights are named 'score.…': add up all the others.",
             "{expected:,} pretrained weights; the new head adds 1,152 (2 × 576) that start random.",
             "`sum(p.numel() for name, p in model.named_parameters() if not name.startswith('score.'))`, or "
             "the total minus `model.score.weight.numel()`: 134,515,008."),
    Exercise("0.2", "How many weights does one transformer block hold? (pass model=)",
             lambda model: sum(p.numel() for p in transformer_blocks(model)[0].parameters()),
             "transformer_blocks(model) lists the blocks; count the parameters of one of them as in 0.1.",
             "{expected:,} weights per block: the blocks hold most of the model, the token embeddings "
             "most of the rest.",
             "`sum(p.numel() for p in transformer_blocks(model)[0].parameters())`: 3,540,096 (attention "
             "and feed-forward projections, two norms); 30 blocks hold 106 M of the 135 M."),
    Exercise("1.1", "In what fraction of the movies do at least 80 % of the reviews give the same label? "
                    "(pass table=)",
             lambda table: float(_agreeing_movies(table)),
             "Group `table` by movie (`group`), take each movie's share of fresh reviews, and count the "
             "movies where that share is at least 0.8 or at most 0.2.",
             "{expected:.3f}: in many movies the critics mostly agree, so a model that recognises the "
             "movie can guess the label without judging the sentiment. Chapter 3 keeps each movie in "
             "one split for this reason.",
             "`share = table.groupby('group')['label'].apply(lambda s: (s == 'fresh').mean())`, then "
             "`((share >= 0.8) | (share <= 0.2)).mean()`: about 0.42.",
             tolerance=0.005),
    Exercise("1.2", "A spam filter scores 96 % accuracy on emails of which 97 % are not spam. Does it beat "
                    "always answering 'not spam'? ('yes'/'no')",
             lambda: "no",
             "What accuracy does a filter get that never reads the email and always answers 'not spam'?",
             "Always answering 'not spam' scores 97 %, so 96 % is below the majority baseline. Accuracy "
             "means something only next to that baseline, and F1 shows whether the rare class is found.",
             "no: the constant answer already scores 97 %, above the filter's 96 %.",
             kind=CHOICE, choices=YES_NO),
    Exercise("1.3", "Experiment: are short reviews (fewer words than `threshold`) more often fresh than "
                    "long ones? ('yes'/'no', pass measured=)",
             lambda measured: "yes" if measured["short"] > measured["long"] else "no",
             "Compare the two fresh shares the experiment cell printed.",
             "Read from your run: {expected}. Look at the size of the gap too: with a few thousand "
             "reviews a share moves by about a point by chance, so a gap that small is no evidence.",
             "Whatever your threshold measured: compare measured['short'] with measured['long'].",
             kind=CHOICE, choices=YES_NO,
             missing=_ran_once),
    Exercise("2.1", "How many GPT-2 tokens is ' Tarantinoesque'? (pass tokenizer=)",
             lambda tokenizer: len(tokenizer(" Tarantinoesque").input_ids),
             "Tokenize the string with gpt2 and count its input_ids (mind the leading space).",
             "{expected}: a rare word is split into frequent pieces, so BPE never needs an "
             "unknown-word token.",
             "`len(gpt2(' Tarantinoesque').input_ids)` is 3: 'ĠTarant', 'ino' and 'esque'."),
    Exercise("2.2", "In the padded batch, which position of the first row (counting from 0) does the "
                    "classifier read its label from? (pass batch=)",
             lambda batch: sum(batch["attention_mask"][0]) - 1,
             "The classifier reads the hidden state of the row's last real token. The attention mask "
             "marks real tokens with 1; positions count from 0.",
             "{expected}: the last real token, just before the first pad. A classifier that read the "
             "last position would read a pad, which is what config.pad_token_id prevents.",
             "`sum(batch['attention_mask'][0]) - 1` is 3: the '.' of 'A great film.', the last of its "
             "four real tokens."),
    Exercise("2.3", "Experiment: how many reviews does max_length=32 truncate? (pass lengths=)",
             lambda lengths: sum(n > 32 for n in lengths),
             "Set max_length = 32 in the experiment cell and read the count it prints.",
             "{expected} reviews lose their end at 32 tokens: cheaper batches, some lost words.",
             "`sum(n > 32 for n in lengths)`: count the reviews longer than the limit."),
    Exercise("3.1", "You classify customer-support emails, and each customer wrote many. Group the split by "
                    "'a' (the label), 'b' (the customer) or 'c' (the email's length)?",
             lambda: "b",
             "What do one customer's emails share that a model could learn to recognise, instead of "
             "the content you want it to judge?",
             "One customer's emails share names, products and phrasing, so a test email from a "
             "customer seen in training is partly memorised, as a review of a training movie would be.",
             "b: grouping by customer keeps each customer's emails in one split.",
             kind=CHOICE, choices={"a": "a", "b": "b", "c": "c", "label": "a", "customer": "b",
                                   "thecustomer": "b", "length": "c"},
             wrong_hints={"a": "Grouping by label would put each label in one split only; stratifying "
                               "already keeps the label shares. What do many emails have in common?"}),
    Exercise("3.2", "Split 1,000 rows of which 50 are 'rotten', with the toy's seed and fractions: how many "
                    "'rotten' rows does the test set get?",
             lambda: 5,
             "A stratified split keeps each label's share in every split. What share of the rows is "
             "rotten, and how many rows does the test set get?",
             "{expected}: 5 % of the 100 test rows. Stratifying keeps the share, however rare the class.",
             "5 = 100 test rows × 50 / 1,000: `split_table` on such a toy table prints it."),
    Exercise("3.3", "Experiment: with grouped = False, how many test reviews are about a movie that also "
                    "has reviews in training? (pass measured=)",
             lambda measured: measured[False],
             "Set grouped = False in the experiment cell, rerun it, and read the count it prints.",
             "{expected} test reviews would be about movies the model trained on: leakage.",
             "Whatever your ungrouped split measured; grouped, the count is 0.",
             missing=_measured_pair(True, False, "grouped = True and with grouped = False")),
    Exercise("4.1", "Accuracy of this confusion matrix? (pass matrix=)",
             lambda matrix: sum(matrix[i][i] for i in range(len(matrix))) / sum(map(sum, matrix)),
             "Correct answers sit on one diagonal of the matrix; divide them by all reviews.",
             "{expected:.3f}.",
             "(top-left + bottom-right) / total.", tolerance=1e-3),
    Exercise("4.2", "Training reviews are mostly fresh, so the majority baseline always answers 'fresh'. "
                    "Its accuracy on a test set of 300 fresh and 700 rotten reviews?",
             lambda: 0.3,
             "Which test reviews does a constant 'fresh' get right, and what share of this test set "
             "are they?",
             "{expected}: a constant answer scores the test set's share of that answer. Here that is "
             "below chance, because the label mix changed between training and test.",
             "0.3 = 300 / 1,000: the baseline's answer comes from the training labels, its score from "
             "the test labels.", tolerance=0.005),
    Exercise("4.3", "Compute the macro F1 of `matrix` yourself, from precision and recall of each class "
                    "(pass matrix=)",
             _macro_f1,
             "For each class: precision from its predicted column, recall from its true row, "
             "F1 = 2PR/(P+R); then average the classes.",
             "{expected:.3f}, the same as scikit-learn's f1_score(average='macro').",
             "Per class k: P = m[k][k]/column sum, R = m[k][k]/row sum, F1 = 2PR/(P+R); average them.",
             tolerance=2e-3),
    Exercise("4.4", "Experiment: with n_rotten = 40 instead of 5, is the always-'fresh' model's accuracy "
                    "'higher', 'lower' or 'same'? (pass measured=, {n_rotten: accuracy})",
             lambda measured: _compare(measured, 5, 40, 0.005),
             "Compare the two accuracies the experiment cell printed.",
             "Read from your runs: {expected}. The majority baseline is the majority share, so it depends "
             "on the balance of the test set: always compare a model with the baseline of the same data.",
             "Lower: with 40 of 135 reviews rotten, always 'fresh' is right on 95/135 = 0.70, not 0.95.",
             kind=CHOICE, choices=HIGHER_LOWER,
             missing=_measured_pair(5, 40, "n_rotten = 5 and with n_rotten = 40")),
    Exercise("5.1", "How many optimizer updates does training make? (pass n_examples=, batch_size=, "
                    "epochs=, accum=)",
             _steps,
             "Count the batches in one epoch, then the optimizer steps accumulation makes of them (does a "
             "last, incomplete group of batches get its step?), then what the epochs do.",
             "{expected}: the scheduler is built with this number.",
             "ceil(ceil(n / batch) / accum) × epochs; the scheduler is built with this number."),
    Exercise("5.2", "In section 7's overfitting run (left panel), after which epoch was the validation loss "
                    "lowest, the epoch whose weights `train` keeps? (pass history=)",
             lambda history: min(history.epochs, key=lambda record: record.val_loss).epoch,
             "Read the validation line of the left panel (one point per epoch), or print each record's "
             "val_loss in history.epochs; the smallest one is kept.",
             "Epoch {expected}: after it the validation loss climbs while the training loss keeps "
             "falling, which is overfitting. `train` restores that epoch's weights at the end, "
             "whatever the patience.",
             "`min(history.epochs, key=lambda r: r.val_loss).epoch`: the epoch just before the "
             "validation loss turns up."),
    Exercise("5.3", "Experiment: after two epochs, is the validation loss with a 10x larger learning rate "
                    "'lower', 'higher' or 'same' (within 0.01) as with 2e-4? (pass measured=)",
             lambda measured: _compare(measured, 2e-4, next(k for k in measured if k != 2e-4), 0.01),
             "Compare the two validation losses your runs printed.",
             "Read from your runs: {expected}. Larger steps learn faster until they overshoot; "
             "where that happens depends on the data, the batch size and how many weights train.",
             "Whatever your two runs measured; the lesson is to measure, not to guess.",
             kind=CHOICE, choices=HIGHER_LOWER,
             missing=lambda measured=None, **_: None if measured and len(measured) == 2 and 2e-4 in measured else
             "Change learning_rate in the experiment cell (e.g. to 2e-3) and run it, so both runs are measured."),
    Exercise("5.4", "Experiment: with optimizer.zero_grad() taken out of your loop, is the validation loss "
                    "after two epochs 'lower', 'higher' or 'same' (within 0.01) as with it? (pass measured=)",
             lambda measured: _compare(measured, "section 4", "edited loop", 0.01),
             "Compare the two validation losses: section 4's run and the edited loop's.",
             "Read from your runs: {expected}. backward() adds each new gradient to the one already in "
             ".grad; without zero_grad every step follows the sum of all gradients since training "
             "began, so old batches keep pushing the weights. No error says so: only the measured loss does.",
             "Whatever your two runs measured: one line changes what the loop learns, and only a "
             "measurement shows it. Put zero_grad back afterwards.",
             kind=CHOICE, choices=HIGHER_LOWER,
             missing=_loop_edited),
    Exercise("6.1", "Which file format holds the weights, so that loading runs no code?",
             lambda: "safetensors",
             "Look at the file names in the saved folder: one format only stores tensors, the older "
             "pickle-based one can run code when loaded.",
             "safetensors only holds tensors and their shapes; pickle files (.bin, .pt) can run code.",
             "safetensors: the file holds only tensors, names and shapes, so loading it cannot run "
             "code, unlike a pickled .bin or .pt file.",
             kind=CHOICE, choices={"safetensors": "safetensors", "safetensor": "safetensors",
                                   "modelsafetensors": "safetensors", "pickle": "pickle", "bin": "pickle",
                                   "pt": "pickle", "pytorchmodelbin": "pickle"}),
    Exercise("6.2", "Would the reloaded weights give the same predictions with another tokenizer, say GPT-2's? "
                    "('yes'/'no')",
             lambda: "no",
             "The weights were trained on token ids. Does one id stand for the same piece of text in two "
             "vocabularies?",
             "Each id picks one row of the embedding matrix. Another tokenizer cuts the text into other "
             "pieces and numbers them otherwise, so the model would read rows that mean something else. "
             "That is why the folder keeps the tokenizer with the weights.",
             "No: GPT-2's ids would pick the wrong embedding rows (SmolLM2's vocabulary is another one), "
             "so the predictions would be noise. Save and load the tokenizer with the model.",
             kind=CHOICE, choices=YES_NO,
             wrong_hints={"yes": "Chapter 2 encoded one text with two tokenizers: compare the ids. Which "
                                 "row of the embedding matrix does each id select?"}),
    Exercise("6.3", "Experiment: how many times smaller is the folder saved in float16 than in float32? "
                    "(pass measured=, rounded to one decimal is fine)",
             lambda measured: measured["float32"] / measured["float16"],
             "Save once with each dtype in the experiment cell and divide the two sizes it printed.",
             "{expected:.2f}×: two bytes per weight instead of four (the tokenizer files do not shrink).",
             "size in float32 / size in float16, about 2.",
             tolerance=0.06, missing=_measured_pair("float32", "float16", "dtype float32 and with float16")),
    Exercise("7.1", "Precision of class 1 in this confusion matrix? (pass matrix=)",
             lambda matrix: matrix[1][1] / (matrix[0][1] + matrix[1][1]),
             "Precision looks down the predicted column: of all reviews predicted as class 1, "
             "how many are class 1? (Along the true row is recall.)",
             "{expected:.3f}.",
             "matrix[1][1] / (matrix[0][1] + matrix[1][1]).", tolerance=1e-3),
    Exercise("7.2", "May you try a few learning rates and keep the one with the best test accuracy? "
                    "('yes'/'no')",
             lambda: "no",
             "What would the test score measure after you picked the settings that score best on it?",
             "Choosing settings by test score makes the test score optimistic; tune on validation, "
             "test once.",
             "No: the test set has to stay unseen by every choice, or its score is optimistic. Pick the "
             "learning rate on the validation set and use the test set once, at the end.",
             kind=CHOICE, choices=YES_NO),
    Exercise("7.3", "Experiment: on the reviews the model is at least `threshold` sure of, is accuracy "
                    "'higher', 'lower' or 'same' (within 0.01) as on all test reviews? (pass measured=)",
             lambda measured: _compare(measured, "all", "confident", 0.01),
             "Compare the two accuracies the experiment cell printed.",
             "Read from your run: {expected}. A calibrated model is right more often when it is sure; "
             "how much more is what the confidence is worth.",
             "Whatever your threshold measured; most models are more accurate on confident reviews.",
             kind=CHOICE, choices=HIGHER_LOWER,
             missing=_ran_once),
    Exercise("8.1", "Top 4 of 30 blocks trained on 1,000 reviews for 3 epochs: how many passes of a review "
                    "through the 26 frozen blocks does the frozen-feature cache save during training?",
             lambda: 2000,
             "Count the passes without the cache (every review, every epoch), then with it (when is it "
             "filled, and when is it read?), and subtract.",
             "{expected}: 3 × 1,000 = 3,000 passes without the cache, 1,000 with it (the first epoch "
             "fills it, the other two read it). The more epochs, the more it saves.",
             "2000: one pass per review per epoch without the cache (3,000), one per review with it "
             "(1,000)."),
    Exercise("8.2", "Someone trains only the lowest block and freezes the 29 above it, hoping the cache skips "
                    "those 29. From epoch 2 on, how many can it skip: 'all 29', 'some' or 'none'?",
             lambda: "none",
             "The cache keeps what the frozen part outputs for each review and reuses it. When block 1 "
             "trains, does the input to block 2 stay the same from one update to the next?",
             "{expected}: the frozen blocks read the output of the block that trains, which changes after "
             "every update, so they must run again. The cache needs the frozen part below everything "
             "that trains, as in `top-k` and `head`.",
             "none: only a frozen part below every trained weight gives the same output every epoch; "
             "here the frozen blocks sit above the trained one.",
             kind=CHOICE, choices={"all29": "all 29", "all": "all 29", "29": "all 29", "some": "some",
                                   "none": "none", "0": "none", "zero": "none"},
             wrong_hints={"all 29": "Frozen means the weights stay fixed. Does that fix the output too, "
                                    "whatever the input?"}),
    Exercise("8.3", "A LoRA adapter of rank 8 on one 576 x 576 projection: how many parameters does it add?",
             lambda: 8 * (576 + 576),
             "It adds two thin matrices, A (r × input size) and B (output size × r); count both.",
             "{expected} = 8 × (576 + 576), against 331,776 in the projection itself (2.8 %).",
             "9216 = 8 x (576 + 576): A is 8 x 576 and B is 576 x 8, 2.8 % of the projection."),
    Exercise("8.4", "Experiment: how many times more trainable parameters does LoRA rank 16 have than "
                    "rank 8, head included? (pass measured=, {rank: trainable})",
             lambda measured: measured[16] / measured[8],
             "Set rank = 16 in the experiment cell, rerun it, and divide the two counts it printed.",
             "{expected:.2f}×: the adapters double, the new head does not.",
             "measured[16] / measured[8]: a little under 2, because the head's weights stay the same.",
             tolerance=0.02, missing=_measured_pair(8, 16, "rank = 8 and with rank = 16")),
    Exercise("9.1", "How many labels of `second_row`, the second training pair encoded as section 3 encoded "
                    "the first, does the loss train on (labels that are not -100)? (pass row=)",
             lambda row: sum(label != IGNORE_INDEX for label in row["labels"]),
             "The formatted prompt's tokens carry -100; the answer's tokens keep their ids, and so does what "
             "the encoding appends after the answer (look at the row's last tokens). Count the labels of "
             "second_row that are not -100.",
             "{expected}: the reference's tokens, its <|im_end|> and the newline after it. The prompt, "
             "template and instruction included, is input only: the loss never asks the model to predict it.",
             "`sum(label != -100 for label in second_row['labels'])`: every token of the response, its "
             "end-of-turn token and the newline after it; the system turn, the user turn and the assistant "
             "header carry -100."),
    Exercise("9.2", "A writer produces 'Blue Spice is a pub.' for 'name: Blue Spice, eatType: pub, food: "
                    "Chinese, area: riverside'. Which score shows most directly what is missing: 'bleu', "
                    "'rouge_l' or 'coverage'?",
             lambda: "coverage",
             "Think about what each score compares the sentence with.",
             "Coverage checks the prompt's own values (name, food, area ...). BLEU and ROUGE-L only "
             "count words shared with the references, whichever words they are.",
             "coverage: it counts the prompt's values that the sentence mentions (2 of 4 here). BLEU and "
             "ROUGE-L can stay high for a fluent sentence that leaves attributes out.",
             kind=CHOICE,
             choices={"bleu": "bleu", "rougel": "rouge_l", "rouge": "rouge_l", "coverage": "coverage",
                      "attributecoverage": "coverage", "attributes": "coverage"},
             wrong_hints={"bleu": "That score counts words shared with human references; a short sentence "
                                  "can share many of them and still leave things out.",
                          "rouge_l": "That score counts words shared with human references; a short "
                                     "sentence can share many of them and still leave things out."}),
    Exercise("9.3", "Did masking the prompt help on this data, at this budget? 'masked', 'unmasked' or "
                    "'same' (within 2 BLEU). (pass measured=, the experiment's {mask_prompt: BLEU})",
             lambda measured: {"same": "same", "higher": "unmasked", "lower": "masked"}[
                 _compare(measured, True, False, 2.0)],
             "Compare the two BLEU scores the experiment printed; 'same' means they differ by less "
             "than 2 points.",
             "Read from your runs: {expected}. Masking spends the whole loss on the answer; Raschka "
             "measured it as roughly neutral on his instruction data, so it is a choice to measure, not a "
             "rule. One seed and a small test set make a difference of a few points uncertain.",
             "Whatever your two runs measured: the answer is read from them. On this data both settings "
             "learn the task; differences of a few BLEU points are within the noise of one seed.",
             kind=CHOICE, choices={"masked": "masked", "unmasked": "unmasked", "same": "same"},
             missing=_measured_pair(True, False, "mask_prompt = True and with mask_prompt = False")),
    Exercise("10.1", "4 processes, batch_size 16 per process, gradient accumulation over 2 batches: how many "
                     "reviews does each weight update average over?",
             lambda: 4 * 16 * 2,
             "Each process contributes its own batches to every update, and accumulation adds batches "
             "before the step: multiply what each factor contributes.",
             "{expected} = 4 processes × 16 reviews × 2 accumulated batches: DDP averages the "
             "gradients of all of them before the one optimizer step.",
             "128 = 4 x 16 x 2, eight times the 16 reviews of one process without accumulation. Keep the "
             "learning rate in mind: an 8x larger batch takes 8x fewer steps per epoch."),
    Exercise("10.2", "Two processes on this 2-core machine took about as long as one, not half as long. What "
                     "limits them? 'cores' (what they compute on), 'averaging' (what they exchange after every "
                     "step) or 'sequential' (how Accelerate schedules them)",
             lambda: "cores",
             "Compare how much computing power one process with 2 threads has with what two processes "
             "with 1 thread each have together. What does the second process add besides work?",
             "The two processes split the same two cores, so the arithmetic per second is unchanged, "
             "and averaging gradients after every step adds communication. Data parallelism pays when "
             "each process has its own device (a GPU per process, or another machine).",
             "cores: one process already used both cores. Two processes do the same arithmetic on the "
             "same cores, plus an all-reduce of the gradients every step.",
             kind=CHOICE, choices={"cores": "cores", "sharedcores": "cores", "averaging": "averaging",
                                   "sequential": "sequential"},
             wrong_hints={"averaging": "The all-reduce moves about 7 million numbers per step through "
                                       "memory; a forward and backward pass over 8 reviews does far more "
                                       "arithmetic than that. Look at what the arithmetic runs on.",
                          "sequential": "Both processes run at the same time (watch `top` while the cell "
                                        "runs). Ask what they run on."}),
    Exercise("10.3", "Experiment: with COUNT_WITH = 'gather', how many validation predictions did the "
                     "2-process run count? (pass counted=, the run's count, and n_val=)",
             lambda counted, n_val: counted,
             "Set COUNT_WITH = 'gather' in the validation cell (section 3), run it and the two-process cell "
             "again, and read the count it printed; then compare it with n_val.",
             "{expected} instead of the validation set's size: `gather` also collects the repeats "
             "Accelerate adds so that every process gets full batches; `gather_for_metrics` drops them.",
             "Whatever your run printed: more than n_val, because the last batches of each shard are "
             "completed with repeated reviews. gather_for_metrics removes exactly those.",
             missing=lambda counted=None, n_val=None, **_: None if counted is not None and counted != n_val
             else "Set COUNT_WITH = 'gather' in the validation cell (section 3) and run the two-process cell "
                  "again; with 'gather_for_metrics' it counts each review exactly once."),
    Exercise("11.1", "How many tokens of the QA example `qa_example` does the loss train on? (pass row=, its "
                     "encoded row)",
             lambda row: sum(label != IGNORE_INDEX for label in row["labels"]),
             "qa_row is qa_example encoded as section 2 encoded the chat example: count its labels "
             "that are not -100.",
             "{expected}: each answer span that fits with its end-of-turn token. The passage, the questions, "
             "the system prompt and the template's headers are input only, however long they are.",
             "`row, _ = encode_conversation(tokenizer, qa_example['messages'], run.train.max_length)`, then "
             "`sum(label != -100 for label in row['labels'])`: the tokens of every answer that fits, each "
             "with its <|im_end|>."),
    Exercise("11.2", "A collator sets every label equal to the pad token id to -100. How many targets would it "
                     "remove from `long_row`, the whole chat example? (pass row=, pad_token_id=)",
             lambda row, pad_token_id: sum(label == pad_token_id for label in row["labels"]),
             "Which token is SmolLM2's pad token (the last line under the coloured tokens)? Count the targets "
             "whose label is its id; a long conversation is cut at max_length.",
             "{expected}: one per assistant turn. SmolLM2's pad token is its end-of-turn token, so masking "
             "by id removes exactly the targets that teach the model to stop.",
             "`sum(label == tokenizer.pad_token_id for label in long_row['labels'])`: every assistant turn "
             "that fits ends with <|im_end|> (id 2), which is also the pad token, so each loses its stop "
             "signal."),
    Exercise("11.3", "Experiment: with SmolLM2's default system prompt instead of the QA one, is the fine-tuned "
                     "model's QA F1 'higher', 'lower' or the 'same' (within 2 points)? (pass measured=, the "
                     "experiment's {drop_system: F1})",
             lambda measured: _compare(measured, False, True, 2.0),
             "Compare the two F1 scores the experiment printed; 'same' means they differ by less than "
             "2 points.",
             "Read from your runs: {expected}. The system prompt is input like any other, and the model was "
             "fine-tuned with the QA one; on 15 questions a difference of one answer is a few points, so "
             "treat a small difference as noise.",
             "Whatever your two runs measured: the answer is read from them. A prompt the model trained "
             "with is part of what it learned; another prompt can change the replies.",
             kind=CHOICE, choices=HIGHER_LOWER,
             missing=_measured_pair(False, True, "drop_system = False and with drop_system = True")),
]}


def is_right(key: str, answer: Any, **context: Any) -> bool:
    """True when `answer` to exercise `key` is right (for code that needs the verdict)."""
    return answer is not None and verdict(EXERCISES[key], answer, **context)[0]


def check(key: str, answer: Any, **context: Any) -> None:
    """Print whether `answer` to exercise `key` is right (and why) or not yet (and a hint)."""
    exercise = EXERCISES[key]
    if answer is None:
        print(f"Exercise {key}: not answered yet. {exercise.question}")
        return
    right, message = verdict(exercise, answer, **context)
    print(f"Exercise {key}: {'right' if right else 'not yet'} — {message}")


def solution(key: str, *, reveal: bool = False) -> None:
    """Print the worked solution of exercise `key`, but only when asked on purpose (`reveal=True`).

    Without it, one line says the solution is hidden: notebooks that run every cell (nbconvert,
    nbval in CI) print no solution, so committed outputs never give one away.
    """
    exercise = EXERCISES[key]
    if not reveal:
        print(f"Solution {key} hidden: pass reveal=True once you have tried the exercise.")
        return
    print(f"Solution {key}: {exercise.solution}")

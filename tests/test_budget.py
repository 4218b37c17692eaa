"""Time budgets: the plan is a pure function of measured rates; the CLI measures, prints and obeys it."""

import json
import math
import re
from dataclasses import replace

import pytest
import torch

from course_lib.cli import build_parser, main, run_config_from_args
from course_lib.data import make_loader
from course_lib.errors import ConfigError
from course_lib.pipeline import resize_training
from course_lib.records import EpochRecord, History
from course_lib.runtime.budget import (
    DEADLINE,
    SAFETY,
    Deadline,
    Plan,
    Rates,
    measure_rates,
    plan_run,
    probe_examples,
    round_down,
)
from course_lib.tasks import get_task

# 0.05 s per review in the first epoch, 0.01 s later (frozen blocks cached), validation 0.02 / 0.005 s.
RATES = Rates(first_epoch=0.05, later_epochs=0.01, val_first=0.02, val_later=0.005, precision="float32")


def _plan(budget_s=600.0, spent_s=60.0, after_s=30.0, available=9000, val=500, epochs=2, rates=RATES):
    return plan_run(rates, budget_s, spent_s, after_s, available, val, epochs, "reviews", minimum=200)


def test_plan_fills_the_budget_with_the_measured_rates():
    plan = _plan()
    left = SAFETY * 600 - 60 - 30 - 500 * (0.02 + 0.005)  # 437.5 s for training examples
    assert plan.train_examples == math.floor(left / (0.05 + 0.01) / 100) * 100 == 7200
    assert plan.fit_s == pytest.approx(7200 * 0.06 + 500 * 0.025)
    assert plan.total_s == pytest.approx(60 + plan.fit_s + 30)
    assert plan.total_s <= SAFETY * 600


def test_plans_round_down_to_two_significant_digits_so_small_sets_keep_their_budget():
    assert [round_down(n) for n in (7291, 193, 57, 0)] == [7200, 190, 57, 0]
    conversations = Rates(1.3, 1.3, 0.5, 0.5, "bf16")  # ~190 conversations fit: none are given away to rounding
    plan = plan_run(conversations, 600, 190, 90, 400, 20, 1, "conversations", minimum=20)
    assert plan.train_examples == round_down(math.floor((SAFETY * 600 - 190 - 90 - 20 * 0.5) / 1.3)) == 190


def test_plan_never_exceeds_the_data_and_says_so():
    plan = _plan(budget_s=3600)
    assert plan.train_examples == 9000
    assert "all there are" in plan.line()
    assert plan.total_s < 3600


def test_slower_machines_more_epochs_and_time_already_spent_all_mean_fewer_examples():
    base = _plan().train_examples
    slower = Rates(0.1, 0.02, 0.04, 0.01, "float32")
    assert _plan(rates=slower).train_examples < base
    assert _plan(epochs=3).train_examples < base
    assert _plan(spent_s=200).train_examples < base
    assert _plan().train_examples == base  # a pure function: the same inputs give the same plan


def test_a_budget_too_short_is_refused_with_the_minutes_that_would_do():
    with pytest.raises(ConfigError, match=r"too short on this machine: 200 reviews would need about 3 minutes\. "
                                          r"Give --time-budget 3 or more"):
        _plan(budget_s=60)


def test_a_data_set_smaller_than_the_minimum_is_not_refused():
    assert _plan(available=50).train_examples == 50


def test_the_plan_line_names_speed_choice_and_estimate_and_survives_json():
    plan = _plan()
    assert plan.line().startswith("budget 10 min: this machine trains ~20 reviews/s in float32 (first epoch) "
                                  "→ 7,200 reviews × 2 epochs; estimated ")
    again = Plan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert again == plan


def _run_against_deadline(plan, slowdown, first_step_s=0.0, batch=8, actual=None):
    """Simulate the planned run on a clock, `slowdown` times slower than planned (or than `actual`, a
    plan with the true rates; and with a slow first step), asking the Deadline after each update as
    the loop does. Returns the steps trained and when the command would end (test and saving too)."""
    now = [plan.spent_s]
    deadline = Deadline(plan, started=0.0, clock=lambda: now[0])
    steps_per_epoch = plan.train_examples // batch
    deadline.on_train_begin(steps_per_epoch * plan.epochs)
    done = 0
    for epoch in range(1, plan.epochs + 1):
        train_s, val_s = (actual or plan).epoch_s(epoch - 1)
        for step in range(1, steps_per_epoch + 1):
            now[0] += slowdown * train_s / steps_per_epoch + (first_step_s if done == 0 else 0)
            done += 1
            if deadline.ends_training(epoch, step):
                return done, now[0] + slowdown * (val_s + plan.after_s)
        now[0] += slowdown * val_s
    return done, now[0] + slowdown * plan.after_s


def test_a_run_on_plan_is_never_cut_short():
    plan = _plan()  # 7,200 reviews x 2 epochs at 8 a batch: 1,800 steps, ending near 90 % of 600 s
    assert _run_against_deadline(plan, 1.0, first_step_s=5.0)[0] == 1800


def test_a_machine_that_slows_down_ends_training_early_and_the_run_within_its_budget():
    plan = _plan()
    for slowdown in (1.3, 1.5, 2.0):
        steps, ends = _run_against_deadline(plan, slowdown)
        assert steps < 1800
        assert DEADLINE * 600 - 2 < ends <= DEADLINE * 600 + 1  # about when the deadline aims, not later
    assert _run_against_deadline(plan, 2.0)[0] < _run_against_deadline(plan, 1.3)[0] < 1800


def test_a_deadline_does_not_trust_a_pace_no_machine_has():
    # A fast GPU whose probe was timed a thousand times too fast must not have its short run cut:
    # training really takes 44 s of the 600, though the plan expected 0.04 s.
    plan = _plan()
    wrong = replace(plan, rates=Rates(5e-5, 1e-5, 2e-5, 5e-6, "bf16"))
    gpu = replace(plan, rates=Rates(5e-3, 1e-3, 2e-3, 5e-4, "bf16"))
    assert _run_against_deadline(wrong, 1.0, actual=gpu)[0] == 1800


def test_a_run_compared_with_its_plan_says_which_part_was_slow():
    plan = replace(_plan(), train_examples=1000, val_examples=500)  # epoch 1: 50 s training, 10 s validation
    history = History(planned_epochs=2, steps_per_epoch=100, step_losses=[0.5] * 150)  # cut at step 50 of epoch 2
    history.epochs = [EpochRecord(1, 0.5, 0.5, 0.8, 0.8, seconds=85.0, train_seconds=75.0),
                      EpochRecord(2, 0.4, 0.4, 0.8, 0.8, seconds=8.0, train_seconds=5.5)]
    line = plan.against(history)
    assert "epoch 1: training 75 s of 50 s planned (1.50×), validation 10 s of 10 s (1.00×)" in line
    assert "epoch 2: training 6 s of 5 s planned (1.10×), validation 2 s of 2 s (1.00×)" in line  # half an epoch
    assert plan.against(History()) == "No epoch finished to compare."


def _classify_args(model_dir, csv, out, *extra):
    return ["finetune", "--model", str(model_dir), "--data", str(csv), "--text-column", "review",
            "--label-column", "sentiment", "--epochs", "2", "--train-blocks", "1", "--batch-size", "8",
            "--output", str(out), *extra]


def test_probe_examples_are_alike_in_length_as_the_runs_batches_are():
    lengths = [5 + (i * 37) % 60 for i in range(2000)]  # 5 to 64 tokens, spread evenly
    picked = probe_examples(lengths, 48, 16, seed=0)
    assert len(set(picked)) == 48 and picked == probe_examples(lengths, 48, 16, seed=0)
    chosen = sorted(lengths[i] for i in picked)
    # From the middle of the lengths, in a narrow band: a random 48 would span about 5 to 64.
    assert chosen[-1] - chosen[0] <= 6 and 30 <= chosen[0] <= chosen[-1] <= 40
    assert sorted(probe_examples(lengths[:30], 48, 16, seed=0)) == list(range(30))  # fewer: all of them


def test_measuring_trains_a_copy_and_leaves_the_model_alone(tiny_llama_dir, toy_csv, tmp_path):
    run = run_config_from_args(build_parser().parse_args(_classify_args(tiny_llama_dir, toy_csv, tmp_path)))
    task = get_task(run.task)
    data = task.prepare(run)
    model, tokenizer = task.load_model(run, data, lambda s: None)
    tokens = task.encode(run, data, tokenizer, lambda s: None)
    before = {name: p.clone() for name, p in model.state_dict().items()}
    device = torch.device("cpu")
    rates = measure_rates(model, tokens, run.train, lambda m, t: task.loaders(
        m, t, tokenizer, run, device, lambda s: None, None), device, 2, "float32",
        lambda sample: make_loader(sample, tokenizer, 16, sort_by_length=True))
    assert all(math.isfinite(r) and r > 0 for r in (rates.first_epoch, rates.later_epochs, rates.val_first,
                                                     rates.test))
    assert all(torch.equal(before[name], p) for name, p in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())  # the copy was frozen, not the model


def test_resizing_gives_the_data_max_train_would(tiny_llama_dir, toy_csv, tmp_path):
    args = _classify_args(tiny_llama_dir, toy_csv, tmp_path)
    run = run_config_from_args(build_parser().parse_args(args))
    task = get_task(run.task)
    tokenizer = task.load_model(run, task.prepare(run), lambda s: None)[1]
    lines = []
    data, tokens = resize_training(task, run, tokenizer, 40, lines.append)
    assert len(tokens["train"]) == 40 and run.data.max_train_examples == 40
    assert task.describe(data)[1]["train"] == 40 and "'train': 40" in lines[0]  # what metrics.json records
    explicit = run_config_from_args(build_parser().parse_args([*args, "--max-train", "40"]))
    same = task.prepare(explicit)
    assert list(data.splits["train"]["text"]) == list(same.splits["train"]["text"])
    assert list(data.splits["test"]["text"]) == list(same.splits["test"]["text"])


def test_plan_only_prints_the_plan_and_trains_nothing(tiny_llama_dir, toy_csv, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_classify_args(tiny_llama_dir, toy_csv, out, "--time-budget", "5", "--plan-only")) == 0
    printed = capsys.readouterr().out
    assert "budget 5 min: this machine trains ~" in printed
    assert "Plan only, nothing trained. To train exactly this size whatever the machine: --max-train " in printed
    assert "Epoch 1" not in printed and not out.exists()


def test_a_budgeted_run_records_its_plan_and_its_actual_time(tiny_llama_dir, toy_csv, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_classify_args(tiny_llama_dir, toy_csv, out)) == 0  # the default budget, 10 minutes
    printed = capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    plan = metrics["plan"]
    assert plan["budget_s"] == 600 and plan["train_examples"] == metrics["split_sizes"]["train"]
    assert "Time budget: estimated" in printed and "took" in printed
    assert re.search(r"Against the plan, epoch 1: training \d+ s of \d+ s planned \(\d+\.\d\d×\)", printed)
    assert all(0 < epoch["train_seconds"] < epoch["seconds"] for epoch in metrics["history"]["epochs"])
    assert json.loads(printed.strip().splitlines()[-1])["planned_train_examples"] == plan["train_examples"]


def test_explicit_sizes_and_a_zero_budget_turn_the_plan_off(tiny_llama_dir, toy_csv, tmp_path, capsys):
    for name, extra in {"sized": ["--max-train", "60"], "unlimited": ["--time-budget", "0"]}.items():
        out = tmp_path / name
        assert main(_classify_args(tiny_llama_dir, toy_csv, out, *extra)) == 0
        assert "budget" not in capsys.readouterr().out.lower()
        assert "plan" not in json.loads((out / "metrics.json").read_text())


def test_budget_mistakes_are_one_line_errors(tiny_llama_dir, toy_csv, tmp_path, capsys):
    cases = {("--time-budget", "-1"): "--time-budget must be 0 (no limit) or more minutes, got -1.",
             ("--max-train", "60", "--plan-only"): "--plan-only prints what a time budget would train, but "
                                                   "--max-train sets the size.",
             ("--time-budget", "0.001"): "A 0.001-minute budget is too short on this machine"}
    for extra, message in cases.items():
        assert main(_classify_args(tiny_llama_dir, toy_csv, tmp_path / "x", *extra)) == 2
        error = capsys.readouterr().err.strip().splitlines()
        assert len(error) == 1 and error[0].startswith("error: " + message)
    assert not (tmp_path / "x").exists()


def test_the_default_budget_trains_the_fewest_useful_examples_and_says_it_takes_longer():
    plan = plan_run(RATES, 60, 60, 30, 9000, 500, 2, "reviews", minimum=200, strict=False)
    assert plan.train_examples == 200 and plan.total_s > 60
    assert "(the fewest worth training: this machine needs more than the 1 minutes" in plan.line()

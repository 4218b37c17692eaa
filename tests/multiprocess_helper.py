"""Started by tests/test_distributed.py under `accelerate launch` (and alone, for comparison).

    python tests/multiprocess_helper.py finetune [--stop-at-step K] [--end-at-step K] [--resume] [--accum A] \
        RESULT.json \
        -- FINETUNE ARGS
    python tests/multiprocess_helper.py evaluate RESULT.json MODEL_DIR CSV

The main process writes what it measured to RESULT.json; every process runs the same code.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import sys

import torch

from course_lib.cli import build_parser, run_config_from_args
from course_lib.config import DataConfig
from course_lib.data import make_loader, prepare_data, tokenize
from course_lib.errors import TrainingInterrupted
from course_lib.models import load_classifier
from course_lib.pipeline import run_finetune
from course_lib.progress import TrainingCallback
from course_lib.runtime.distributed import Parallel, end_processes
from course_lib.training import evaluate, set_seed


class CtrlC(TrainingCallback):
    """Raises KeyboardInterrupt at the same step in every process, like Ctrl-C in a terminal."""

    def __init__(self, step: int):
        self.step = step

    def on_step(self, step, loss, history):
        if step == self.step:
            raise KeyboardInterrupt


class EndInLastProcess(TrainingCallback):
    """Wants to end training after update `step` of epoch 1, in the last process only (as a deadline might)."""

    def __init__(self, step: int):
        self.step, self.last = step, Parallel.current().process_index == Parallel.current().num_processes - 1

    def ends_training(self, epoch, step):
        return self.last and (epoch, step) == (1, self.step)


def finetune(options: argparse.Namespace) -> dict:
    config = run_config_from_args(build_parser().parse_args(["finetune", *options.rest]))
    config.train.grad_accum_steps = options.accum
    callbacks = [CtrlC(options.stop_at_step)] if options.stop_at_step else []
    callbacks += [EndInLastProcess(options.end_at_step)] if options.end_at_step else []
    result = run_finetune(config, callbacks=callbacks, log=lambda s: None, resume=options.resume)
    return {"test": result.test, "history": result.history.to_dict()}


def evaluate_once(options: argparse.Namespace) -> dict:
    data = prepare_data(DataConfig(path=options.csv, text_column="review", label_column="sentiment"))
    set_seed(0)  # the new head's random start: the same in every run and process
    model, tokenizer = load_classifier(options.model_dir, data.label_map)

    tokens = tokenize(data.datasets, tokenizer, 64)["validation"]
    parallel = Parallel.current()
    loader = make_loader(tokens, tokenizer, 5, sort_by_length=True, parallel=parallel)
    result = evaluate(model, loader, parallel.device(model.device), 2, parallel=parallel)
    return {"batches_here": len(loader), "labels": result.labels, "predictions": result.predictions,
            "probabilities": result.probabilities, "loss": result.loss, "examples": len(tokens)}


# A launched run that hangs (a process left waiting in a collective for the other) shows only as the
# test's 600 s subprocess timeout, with no output; once in CI the interrupted run of
# test_two_process_run_resumes_after_an_interruption did, and it did not recur in 15 tries alone.
# Each helper process dumps every thread's stack and exits first, so the test fails with where it hung.
HANG_S = 300  # a launch takes 15-50 s on 2 CPU cores


def main() -> int:
    faulthandler.dump_traceback_later(HANG_S, exit=True)
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="mode", required=True)
    ft = sub.add_parser("finetune")
    ft.add_argument("result")
    ft.add_argument("--stop-at-step", type=int, default=0)
    ft.add_argument("--end-at-step", type=int, default=0)
    ft.add_argument("--resume", action="store_true")
    ft.add_argument("--accum", type=int, default=1, help="gradient accumulation steps")
    ft.add_argument("rest", nargs=argparse.REMAINDER)
    ev = sub.add_parser("evaluate")
    ev.add_argument("result")
    ev.add_argument("model_dir")
    ev.add_argument("csv")
    options = parser.parse_args()
    if getattr(options, "rest", None) and options.rest[0] == "--":
        options.rest = options.rest[1:]
    try:
        measured = finetune(options) if options.mode == "finetune" else evaluate_once(options)
    except TrainingInterrupted:
        end_processes()
        return 130
    parallel = Parallel.current()
    measured["processes"] = parallel.num_processes
    end_processes()
    # Read after end_processes: a launched run must not leave its process group open at exit.
    measured["group_open_at_exit"] = torch.distributed.is_initialized()
    if parallel.is_main_process:
        with open(options.result, "w") as handle:
            json.dump(measured, handle)
    return 0


if __name__ == "__main__":
    sys.exit(main())

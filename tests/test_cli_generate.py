"""`finetune --task generate` and `generate` end to end on a tiny model, and their clear errors."""

import json
import subprocess
import sys

import pytest
from conftest import toy_reviews
from test_generation import toy_pairs

from course_lib.cli import build_parser, main, run_config_from_args
from course_lib.config import Task
from course_lib.data import LabelMap
from course_lib.errors import TrainingInterrupted
from course_lib.models import load_causal_lm, load_classifier
from course_lib.pipeline import OUTPUTS_FILE, checkpoint_for, run_finetune
from course_lib.progress import TrainingCallback
from course_lib.saving import save_finetuned

QUIET = {"log": lambda s: None, "callbacks": []}


@pytest.fixture()
def pairs_csv(tmp_path):
    path = tmp_path / "pairs.csv"
    toy_pairs(240).rename(columns={"prompt": "question", "response": "answer"}).to_csv(path, index=False)
    return path


def _args(model_dir, csv, out, *extra):
    return ["finetune", "--task", "generate", "--model", str(model_dir), "--data", str(csv),
            "--prompt-column", "question", "--response-column", "answer", "--strategy", "full",
            "--lr", "3e-3", "--epochs", "3", "--batch-size", "8", "--max-train", "0", "--max-length", "32",
            "--max-new-tokens", "8", "--output", str(out), *extra]


def _config(model_dir, csv, out, *extra):
    return run_config_from_args(build_parser().parse_args(_args(model_dir, csv, out, *extra)))


def test_finetune_generate_scores_before_and_after_and_saves_everything(tiny_llama_dir, pairs_csv, tmp_path,
                                                                         capsys):
    out = tmp_path / "run"
    assert main(_args(tiny_llama_dir, pairs_csv, out)) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(printed[-1])
    assert printed[-3].split()[0] == "zero-shot" and printed[-2].split()[0] == "fine-tuned"
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["test"]) >= {"bleu", "rouge_l"} and set(metrics["zero_shot"]) >= {"bleu", "rouge_l"}
    assert summary["test_bleu"] == round(metrics["test"]["bleu"], 4)
    # The toy task (one of two fixed sentences) is learned; the random start cannot write it.
    assert metrics["test"]["bleu"] > 60 > metrics["zero_shot"]["bleu"] + 40
    assert [r["val_accuracy"] for r in metrics["history"]["epochs"]] == [None] * 3
    rows = [json.loads(line) for line in (out / OUTPUTS_FILE).read_text().splitlines()]
    assert len(rows) == metrics["split_sizes"]["test"]["prompts"]
    assert set(rows[0]) == {"prompt", "references", "zero_shot", "fine_tuned"}
    info = json.loads((out / "model" / "course.json").read_text())
    assert info["task"] == "generate" and "labels" not in info
    card = (out / "model" / "README.md").read_text()  # the model card, with the scores it measured
    assert card.startswith("---\nbase_model: ") and "pipeline_tag: text-generation" in card
    assert f"| bleu | {metrics['test']['bleu']:.3g} | {metrics['zero_shot']['bleu']:.3g} |" in card
    assert rows[0]["fine_tuned"][:40] in " ".join(card.split())  # a real test output as an example


def test_generate_in_a_new_process_reproduces_the_saved_test_outputs(tiny_llama_dir, pairs_csv, tmp_path):
    out = tmp_path / "run"
    run_finetune(_config(tiny_llama_dir, pairs_csv, out, "--strategy", "lora"), **QUIET)
    assert not list((out / "model").glob("adapter_*"))  # LoRA merged: a plain transformers folder
    rows = [json.loads(line) for line in (out / OUTPUTS_FILE).read_text().splitlines()]
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(r["prompt"] for r in rows))
    proc = subprocess.run([sys.executable, "-m", "course_lib", "generate", str(out / "model"),
                           "--file", str(prompts), "--json"], capture_output=True, text=True, check=True)
    texts = [json.loads(line)["text"] for line in proc.stdout.splitlines()]
    assert texts == [r["fine_tuned"] for r in rows]


def test_same_seed_gives_the_same_scores(tiny_llama_dir, pairs_csv, tmp_path, fixed_threads):
    runs = [run_finetune(_config(tiny_llama_dir, pairs_csv, tmp_path / n, "--strategy", "lora"),
                                    save=False, **QUIET) for n in "ab"]
    assert runs[0].test == runs[1].test and runs[0].baselines == runs[1].baselines
    assert runs[0].history.step_losses == runs[1].history.step_losses


def test_ctrl_c_then_resume_gives_the_uninterrupted_result(tiny_llama_dir, pairs_csv, tmp_path, fixed_threads):
    class CtrlC(TrainingCallback):
        def on_step(self, step, loss, history):
            if step == history.steps_per_epoch + 1:
                raise KeyboardInterrupt

    expected = run_finetune(_config(tiny_llama_dir, pairs_csv, tmp_path / "a", "--strategy", "lora"),
                                       save=False, **QUIET)
    config = _config(tiny_llama_dir, pairs_csv, tmp_path / "b", "--strategy", "lora")
    with pytest.raises(TrainingInterrupted, match="--resume"):
        run_finetune(config, callbacks=[CtrlC()], log=QUIET["log"])
    assert checkpoint_for(config).exists() and not (tmp_path / "b").exists()
    resumed = run_finetune(config, resume=True, **QUIET)
    assert resumed.history.step_losses == expected.history.step_losses
    assert resumed.test == expected.test


@pytest.mark.parametrize(("extra", "message"), [
    (["--label-column", "x"], "--label-column belong(s) to --task classify"),
    (["--strategy", "head"], "a writing model has none"),
    (["--response-column", "reply"], "Column(s) ['reply'] not found. The data has columns ['question', 'answer']"),
    (["--max-length", "4"], "leaves no room for the response within max_length=4"),
    (["--max-new-tokens", "0"], "max_new_tokens must be a whole number from 1 to 1024"),
])
def test_bad_generation_options_give_one_clear_line(tiny_llama_dir, pairs_csv, tmp_path, capsys, extra, message):
    out = tmp_path / "run"
    assert main(_args(tiny_llama_dir, pairs_csv, out, *extra)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert not out.exists()


def test_unknown_data_name_is_a_clear_error(tiny_llama_dir, tmp_path, capsys):
    assert main(["finetune", "--task", "generate", "--model", str(tiny_llama_dir), "--data", "e2e_nlgg",
                 "--output", str(tmp_path / "o")]) == 2
    assert "neither a built-in set (e2e, common_gen) nor an existing CSV" in capsys.readouterr().err


def test_generation_options_are_refused_for_classification(capsys):
    assert main(["finetune", "--max-new-tokens", "20"]) == 2
    assert "--max-new-tokens belong(s) to --task generate" in capsys.readouterr().err


def test_models_of_the_other_task_are_refused_with_what_to_use(tiny_llama_dir, tmp_path, capsys):
    classifier, tok = load_classifier(str(tiny_llama_dir), LabelMap(["neg", "pos"]))
    save_finetuned(tmp_path / "clf", classifier, tok, LabelMap(["neg", "pos"]))
    writer, tok = load_causal_lm(str(tiny_llama_dir))
    save_finetuned(tmp_path / "writer", writer, tok, None, task=Task.GENERATE)

    assert main(["generate", str(tmp_path / "clf"), "great film"]) == 2
    assert "holds a classifier (task classify), which cannot write text" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "writer"), "great film"]) == 2
    assert "fine-tuned to write (task generate), not a classifier" in capsys.readouterr().err
    assert main(["generate", str(tmp_path / "writer")]) == 2
    assert "No prompts given" in capsys.readouterr().err
    csv = tmp_path / "p.csv"
    toy_pairs(60).to_csv(csv, index=False)
    assert main(["finetune", "--task", "generate", "--model", str(tmp_path / "clf"), "--data", str(csv),
                 "--output", str(tmp_path / "o")]) == 2
    assert "is a classifier" in capsys.readouterr().err


def test_classification_still_reads_its_own_options(tiny_llama_dir, tmp_path, capsys):
    csv = tmp_path / "r.csv"
    toy_reviews(200).to_csv(csv, index=False)
    assert main(["finetune", "--model", str(tiny_llama_dir), "--data", str(csv), "--epochs", "1", "--max-train",
                 "0", "--train-blocks", "all", "--lr", "3e-3", "--output", str(tmp_path / "c")]) == 0
    info = json.loads((tmp_path / "c" / "model" / "course.json").read_text())
    assert info["task"] == "classify" and info["labels"] == ["neg", "pos"]


def test_val_prompts_add_bleu_to_every_epoch_record_and_line(tiny_llama_dir, pairs_csv, tmp_path, capsys):
    from course_lib.progress import EpochLines

    config = _config(tiny_llama_dir, pairs_csv, tmp_path / "run", "--epochs", "2", "--val-prompts", "6")
    result = run_finetune(config, callbacks=[EpochLines()], log=QUIET["log"], save=False, zero_shot=False)
    records = result.history.epochs
    assert [set(r.metrics) for r in records] == [{"val_bleu", "val_rouge_l"}] * 2
    assert records[-1].metrics["val_bleu"] > 50  # by the second epoch the toy sentences are learned
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Epoch")]
    assert len(lines) == 2 and "val bleu" in lines[-1] and "val accuracy" not in lines[-1]

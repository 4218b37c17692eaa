"""Export round trip: a fine-tuned writer as GGUF, read back by transformers and by llama.cpp.

    ./run finetune --task generate --max-train 120 --epochs 1 --output X
    .venv/bin/python benchmarks/export_check.py X          # writes benchmarks/results/export-check.json

For each --type it exports X/model, reports the file size, and writes greedily for X's test
prompts with the GGUF read back through transformers' own GGUF loader (`gguf_file=`), counting
the prompts whose text is exactly the saved folder model's (test_outputs.jsonl's prompts, written
again here in float32, the precision the export approximates) and scoring the texts
against the references (BLEU, ROUGE-L) beside the folder's own scores. Where a text parts from the
folder's, it also reports the folder model's margin there (top-1 minus top-2 logit, teacher-forced
on the folder's text): small margins mean near-ties that any rounding can flip. It also counts
the weights fine-tuning moved by less than half a step of the base's Q4_1 grid, which q4_1
rounds back to the base model's values. Where the
llama-cpp-python package is installed (it builds llama.cpp from source, several minutes), the
f16 and q8_0 files also run in llama.cpp itself through the chat template stored in the file:
the same greedy comparison, and whether each reply ended at the end-of-turn token.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from course_lib.config import DecodeConfig
from course_lib.export import export_model
from course_lib.generation import format_prompt, generate
from course_lib.metrics import generation_metrics
from course_lib.models import load_causal_lm
from course_lib.pipeline import OUTPUTS_FILE
from course_lib.saving import load_finetuned
from course_lib.tasks.generate import saved_system


def read_back(gguf_file: Path):
    """The GGUF file as transformers' own GGUF loader reads it (dequantised to float32)."""
    return AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name).eval()


@torch.inference_mode()
def divergence_margins(folder_model, exported, tokenizer, prompts: list[str], replies: list[str],
                       system: str | None) -> list[float]:
    """For each reply the exported model would leave: the folder model's top-1 minus top-2 logit there.

    Both models read the folder's own reply (teacher forcing); the first position where their
    greedy choices differ is where the exported text leaves the folder's. A small margin there
    means a near-tie that any rounding of the weights can flip.
    """
    margins = []
    for prompt, reply in zip(prompts, replies, strict=True):
        start = tokenizer(format_prompt(tokenizer, prompt, system), add_special_tokens=False).input_ids
        written = [*tokenizer(reply, add_special_tokens=False).input_ids, tokenizer.eos_token_id]
        ids = torch.tensor([start + written])
        ours, theirs = (m(ids).logits[0, len(start) - 1:-1] for m in (folder_model, exported))
        differ = (ours.argmax(-1) != theirs.argmax(-1)).nonzero()
        if len(differ):
            top = ours[differ[0, 0]].topk(2).values
            margins.append(round((top[0] - top[1]).item(), 3))
    return margins


def llama_cpp_texts(gguf_file: Path, prompts: list[str], system: str | None,
                    max_new_tokens: int) -> tuple[list[str], list[bool]] | None:
    """Greedy texts from llama.cpp and whether each stopped at end of turn; None when not installed."""
    try:
        from llama_cpp import Llama
    except ImportError:
        return None
    llm = Llama(model_path=str(gguf_file), n_ctx=512, seed=0, verbose=False)  # chat format from the file
    texts, stopped = [], []
    for prompt in prompts:
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": prompt})
        reply = llm.create_chat_completion(messages, temperature=0.0, top_k=1, max_tokens=max_new_tokens)
        texts.append(reply["choices"][0]["message"]["content"].strip())
        stopped.append(reply["choices"][0]["finish_reason"] == "stop")
    return texts, stopped


def share_equal(texts: list[str], expected: list[str]) -> float:
    return sum(a.strip() == b.strip() for a, b in zip(texts, expected, strict=True)) / len(expected)


@torch.inference_mode()
def moved_within_half_a_q4_1_step(folder_model, base_model) -> float:
    """The share of the weights stored as Q4_1 that fine-tuning moved by less than half a grid step.

    A Q4_1 block of 32 weights has 16 levels between its minimum and maximum. The base model was
    dequantised from such blocks, so its weights sit on the grid; a weight that moved by less
    than half a step rounds back to where it started. (The tied embedding is stored as Q8_0.)
    """
    below = total = 0
    for (name, tuned), base in zip(folder_model.named_parameters(), base_model.parameters(), strict=True):
        if tuned.dim() != 2 or "embed" in name:
            continue
        tuned, base = tuned.float().reshape(-1, 32), base.float().reshape(-1, 32)
        step = (base.amax(1) - base.amin(1)).clamp_min(1e-12) / 15
        below += int(((tuned - base).abs() < step[:, None] / 2).sum())
        total += tuned.numel()
    return below / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a finetune --task generate output folder")
    parser.add_argument("--types", default="f16,q8_0,q4_1")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "export-check.json")
    args = parser.parse_args()
    rows = [json.loads(line) for line in (args.run / OUTPUTS_FILE).read_text().splitlines()]
    prompts, references = [r["prompt"] for r in rows], [r["references"] for r in rows]
    folder_model, tokenizer, info = load_finetuned(args.run / "model")
    system = saved_system(info)
    saved = info["config"]["decode"]
    decode = DecodeConfig(**{k: v for k, v in saved.items() if k in DecodeConfig.__annotations__})
    # The exported files approximate the float32 weights, so the folder model is the reference in
    # float32 (its test outputs may have been written in bf16) and every model here writes in float32.
    decode = replace(decode, mixed_precision=False)
    expected = generate(folder_model, tokenizer, prompts, system, decode)
    folder = generation_metrics(expected, references, prompts)
    base_model, _ = load_causal_lm(info["config"]["model"])
    results = {"prompts": len(prompts), "folder": {"bleu": round(folder["bleu"], 1),
                                                   "rouge_l": round(folder["rouge_l"], 1)},
               "moved_within_half_a_q4_1_step": moved_within_half_a_q4_1_step(folder_model, base_model),
               "types": {}}
    print("weights fine-tuning moved by less than half a Q4_1 step:",
          f"{results['moved_within_half_a_q4_1_step']:.4%}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.types.split(","):
            start = time.perf_counter()
            done = export_model(args.run / "model", Path(tmp) / f"model-{kind}.gguf", kind)
            exported = read_back(done.path)
            texts = generate(exported, tokenizer, prompts, system, decode)
            scores = generation_metrics(texts, references, prompts)
            row = {"mib": round(done.bytes / 2**20, 1), "export_s": round(time.perf_counter() - start, 1),
                   "transformers_same_text": share_equal(texts, expected),
                   "bleu": round(scores["bleu"], 1), "rouge_l": round(scores["rouge_l"], 1),
                   "margins_where_texts_part": divergence_margins(folder_model.eval(), exported, tokenizer,
                                                                  prompts, expected, system)}
            llama = llama_cpp_texts(done.path, prompts, system, decode.max_new_tokens)
            if llama is not None:
                row["llama_cpp_same_text"] = share_equal(llama[0], expected)
                row["llama_cpp_stopped_at_end_of_turn"] = sum(llama[1]) / len(llama[1])
                row["llama_cpp_example"] = {"prompt": prompts[0], "course": expected[0], "llama.cpp": llama[0][0]}
            results["types"][kind] = row
            print(kind, json.dumps(row, ensure_ascii=False), flush=True)
    args.out.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()

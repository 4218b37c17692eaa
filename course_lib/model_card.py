"""Model card: the README.md every saved model carries, in the Hugging Face model-card layout.

A model that leaves the notebook needs to say what it is: its base and licence, the data it saw,
how it was trained, how well it does next to the baselines, and where it fails. The YAML front
matter is what the Hub reads; the rest is for people.
"""

from __future__ import annotations

from typing import Any

from course_lib.config import DEFAULT_MODEL, RunConfig, Task

# Base models the course knows: Hub id and licence (anything else: the name as given, licence unknown).
BASE_MODELS = {
    DEFAULT_MODEL: ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0"),
    "gpt2": ("openai-community/gpt2", "mit"),
    "distilgpt2": ("distilbert/distilgpt2", "apache-2.0"),
}
PIPELINE_TAGS = {Task.CLASSIFY: "text-classification"}  # every other task writes text
USE = {
    Task.CLASSIFY: ("./run predict {folder} \"An absolute triumph.\"", "AutoModelForSequenceClassification"),
    Task.GENERATE: ("./run generate {folder} \"name: The Eagle, food: French\"", "AutoModelForCausalLM"),
}


def model_card(run: RunConfig, metrics: dict, data: tuple[str, str], outputs: list[dict], precision: str,
               examples: int = 3) -> str:
    """The card's Markdown: front matter, then base, data, training, results, limits and use.

    `precision` is what the matrix maths ran in ('bf16' or 'float32'), which depends on the machine.
    """
    base, licence = BASE_MODELS.get(run.model, (run.model, "unknown"))
    task = Task(run.task)
    train = run.train
    front = [
        "---", f"base_model: {base}", f"license: {licence}", "language:", "- en", "library_name: transformers",
        f"pipeline_tag: {PIPELINE_TAGS.get(task, 'text-generation')}",
        "tags:", "- fine-tuning-gpt-course", f"- {train.strategy.value}", "---",
    ]
    command, auto_class = USE.get(task, ("./run chat {folder}", "AutoModelForCausalLM"))
    sections = [
        f"# {base.split('/')[-1]} fine-tuned to {task.value}",
        f"Fine-tuned with the *Fine-Tuning GPT Models* course (`./run finetune --task {task.value}`).",
        "## Base model", f"[{base}](https://huggingface.co/{base}), licence {licence}. A small English "
        "model: it can learn a narrow task well, but it knows little of the world and makes things up.",
        "## Data", f"{data[0]} (licence: {data[1]}). Split sizes: {_sizes(metrics.get('split_sizes', {}))}.",
        "## Training", _training(run, precision),
        "## Results on the test split", _results(metrics),
        "## Intended use and limits",
        "For learning and experiments with this one task. English only, short inputs (at most "
        f"{train.max_length} tokens in training). Check its outputs before relying on them; "
        "it has not been evaluated for safety or bias.",
        *_examples(outputs, examples),
        "## How to use", f"```bash\n{command.format(folder='MODEL_FOLDER')}\n```",
        f"```python\nfrom transformers import {auto_class}, AutoTokenizer\n"
        f"model = {auto_class}.from_pretrained(\"MODEL_FOLDER\")\n"
        "tokenizer = AutoTokenizer.from_pretrained(\"MODEL_FOLDER\")\n```",
    ]
    if task != Task.CLASSIFY:
        sections.append("For llama.cpp, Ollama or LM Studio: `./run export MODEL_FOLDER --gguf model.gguf` "
                        "writes one GGUF file and an Ollama Modelfile beside it.")
    return "\n".join(front) + "\n\n" + "\n\n".join(sections) + "\n"


def _sizes(sizes: dict[str, Any]) -> str:
    """'train 9,000, validation 500, test 1,270' (or pairs/prompts per split for writers)."""
    def one(value: Any) -> str:
        return ", ".join(f"{n:,} {k}" for k, n in value.items()) if isinstance(value, dict) else f"{value:,}"
    return "; ".join(f"{name} {one(value)}" for name, value in sizes.items()) or "not recorded"


def _training(run: RunConfig, precision: str) -> str:
    """Strategy, hyperparameters and precision as a small table."""
    train = run.train
    rows = {"strategy": train.strategy.value, "epochs": train.epochs, "learning rate": f"{train.learning_rate:g}",
            "batch size": train.batch_size, "max length": train.max_length,
            "warm-up": f"{train.warmup_fraction:g}",
            "seed": train.seed, "precision": precision}
    if train.strategy.value == "lora":
        rows["LoRA rank"] = f"{train.lora_rank} on {train.lora_targets or 'query/value'} layers (merged)"
    if train.strategy.value == "top-k":
        rows["blocks trained"] = train.train_blocks
    return "| setting | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows.items())


def _results(metrics: dict) -> str:
    """The test scores beside every baseline recorded (zero-shot, majority class)."""
    columns = {name: scores for name, scores in metrics.items()
               if name in ("test", "zero_shot", "majority_baseline") and isinstance(scores, dict)}
    keys = [k for k, v in columns.get("test", {}).items() if isinstance(v, int | float)]
    header = "| metric | " + " | ".join(n.replace("test", "fine-tuned").replace("_", " ") for n in columns) + " |"
    rows = ["| " + k + " | " + " | ".join(_number(c.get(k)) for c in columns.values()) + " |" for k in keys]
    return "\n".join([header, "|---" * (len(columns) + 1) + "|", *rows])


def _number(value: Any) -> str:
    return "" if value is None else f"{value:.3g}" if isinstance(value, float) else str(value)


def _examples(outputs: list[dict], n: int) -> list[str]:
    """A few test outputs, so a reader sees what the model really writes (mistakes included)."""
    if not outputs:
        return []
    # A writer's row has its prompt; an assistant's, the conversation so far (its last turn is shown).
    rows = [f"- **{_short(row.get('prompt') or row.get('messages', [{}])[-1].get('content', ''))}** → "
            f"{_short(row.get('fine_tuned', ''))}"
            + (f"  \n  reference: {_short(row['references'][0])}" if row.get("references") else "")
            for row in outputs[:n]]
    return [f"Test outputs as written (the first {len(rows)} of test_outputs.jsonl):", "\n".join(rows)]


def _short(text: Any, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 1] + "…"

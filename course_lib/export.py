"""Export: a fine-tuned writer or assistant as one GGUF file for llama.cpp, Ollama and LM Studio.

GGUF is llama.cpp's single-file format: hyperparameters, tokenizer, chat template and tensors
together. The course writes it with the `gguf` package and follows llama.cpp's own converter
(`convert_hf_to_gguf.py`) where it has a convention: the tensor names of its Llama architecture,
and the row order of the query and key projections, which llama.cpp keeps as Meta's original
checkpoints had it (transformers interleaves the two rotary halves differently).

Only Llama-style models with a GPT-2-style byte-level BPE tokenizer (the course's SmolLM2 and its
family) are exported; for anything else llama.cpp's converter is the right tool. A classifier is
refused: its new head is not a language model's output layer, so no GGUF runtime can run it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from course_lib.errors import CourseError

# --type: how the 2-D weight matrices are stored. Norm weights always stay F32 (tiny, sensitive).
GGUF_TYPES = {
    "f32": (gguf.GGMLQuantizationType.F32, gguf.LlamaFileType.ALL_F32),
    "f16": (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
    "q8_0": (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
    "q4_1": (gguf.GGMLQuantizationType.Q4_1, gguf.LlamaFileType.MOSTLY_Q4_1),
}
# A tied embedding is also the output layer, the most quantisation-sensitive matrix: llama.cpp's
# Q4_1 files (the course's own source file included) keep it at Q8_0.
SENSITIVE_FLOOR = gguf.GGMLQuantizationType.Q8_0
# Tokenizers whose pre-tokenizer llama.cpp knows, recognised like its converter does: by the ids
# they give a probe text (digits, spaces, accents, code). The value is llama.cpp's name for it.
PROBE_TEXT = "Hello  world!\n\t1234567 'll 've ÄÖü naïve café 🦙 def f(x): return x**2"
KNOWN_PRE_TOKENIZERS = {"ea8211c4d49b565ff22c833566376c6e37cef0994dfb14877669a600396a2840": "smollm"}


@dataclass
class GgufExport:
    """What was written: the file, its type and size, and what a runtime needs to chat with it."""

    path: Path
    type: str
    tensors: int
    bytes: int
    chat_template: str
    end_of_turn: str
    system: str | None


def refuse_unless_exportable(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenizer, or a CourseError saying why not."""
    if model.config.model_type != "llama":
        raise CourseError(f"GGUF export supports Llama-style models (the course's SmolLM2); this one is "
                          f"{model.config.model_type!r}. Use llama.cpp's convert_hf_to_gguf.py for it.")
    probe = hashlib.sha256(str(tokenizer(PROBE_TEXT).input_ids).encode()).hexdigest()
    if probe not in KNOWN_PRE_TOKENIZERS:
        raise CourseError("This tokenizer is not one the course's exporter knows (it knows SmolLM2's). "
                          "Use llama.cpp's convert_hf_to_gguf.py, which knows many more.")
    if not tokenizer.chat_template:
        raise CourseError("The tokenizer has no chat template, so a runtime would not know how to "
                          "prompt the model. Save the model with the template it was trained with.")
    return KNOWN_PRE_TOKENIZERS[probe]


def llama_row_order(weight: np.ndarray, heads: int) -> np.ndarray:
    """Reorder a query/key projection's rows from transformers' rotary layout to llama.cpp's.

    Within each head transformers rotates the first half of the dimensions with the second
    half; llama.cpp (like Meta's original checkpoints) rotates neighbouring pairs. The same
    reshape as llama.cpp's converter; transformers' GGUF loader undoes it exactly.
    """
    return (weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def gguf_tensors(model: PreTrainedModel, kind: str) -> list[tuple[str, np.ndarray, gguf.GGMLQuantizationType]]:
    """(llama.cpp name, data, stored type) for every tensor a runtime needs, in the model's order."""
    config = model.config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    wanted, _ = GGUF_TYPES[kind]
    tensors = []
    # Sorted names, as llama.cpp's converter reads them from safetensors: the same tensor order.
    for hf_name, value in sorted(model.state_dict().items()):
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # the same matrix as the token embedding: stored once
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise CourseError(f"No GGUF name for tensor {hf_name!r}: not a plain Llama model.")
        data = value.detach().to(torch.float32).cpu().numpy()
        if hf_name.endswith("q_proj.weight"):
            data = llama_row_order(data, config.num_attention_heads)
        elif hf_name.endswith("k_proj.weight"):
            data = llama_row_order(data, config.num_key_value_heads)
        tensors.append((name, data, _stored_type(name, data, wanted)))
    return tensors


def _stored_type(name: str, data: np.ndarray, wanted: gguf.GGMLQuantizationType) -> gguf.GGMLQuantizationType:
    """F32 for vectors; the tied embedding no lower than Q8_0; else the asked-for type."""
    if data.ndim == 1:
        return gguf.GGMLQuantizationType.F32
    quantised = wanted not in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16)
    if quantised and name == "token_embd.weight" and wanted != SENSITIVE_FLOOR:
        return SENSITIVE_FLOOR
    return wanted


def write_gguf(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out: Path, kind: str = "f16",
               name: str = "fine-tuned", system: str | None = None, base: dict | None = None) -> GgufExport:
    """Write `out` atomically: metadata, tokenizer, chat template, then every tensor in type `kind`.

    `base` holds the base model's general.* facts (licence, languages, ...; see base_metadata);
    a model whose `name` differs from the base's records the base as its general.base_model.
    """
    if kind not in GGUF_TYPES:
        raise CourseError(f"Unknown GGUF type {kind!r}; choose one of: {', '.join(GGUF_TYPES)}.")
    pre = refuse_unless_exportable(model, tokenizer)
    out = Path(out)
    if not out.parent.is_dir():
        raise CourseError(f"The folder {out.parent} does not exist: create it, or choose another --gguf path.")
    tmp = out.with_name(f".{out.name}.partial")
    writer = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    _add_general(writer, name, base or {})
    _add_hyperparameters(writer, model, kind)
    end_of_turn = _add_tokenizer(writer, tokenizer, pre)
    if system:
        writer.add_string("course.system_prompt", system)  # what the model was fine-tuned with
    tensors = gguf_tensors(model, kind)
    for tensor_name, data, stored in tensors:
        if stored in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            writer.add_tensor(tensor_name, data.astype(np.float16 if stored.name == "F16" else np.float32))
        else:
            writer.add_tensor(tensor_name, gguf.quants.quantize(data, stored), raw_dtype=stored)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()  # flushed and closed before it takes the real name
        os.replace(tmp, out)  # a crash leaves no half-written model under the real name
    except OSError as exc:  # a full disk or a file-size limit: say so, keep nothing half-written
        raise CourseError(f"Could not write {out} ({exc.strerror or exc}): free some disk space "
                          "(f16 needs about 2 bytes per weight, q4_1 about 0.6) or write elsewhere.") from exc
    finally:
        writer.close()
        tmp.unlink(missing_ok=True)
    return GgufExport(out, kind, len(tensors), out.stat().st_size, tokenizer.chat_template, end_of_turn, system)


def base_metadata(gguf_file: Path) -> dict:
    """The general.* facts of the GGUF file a model came from, except its name and storage type."""
    reader = gguf.GGUFReader(gguf_file)
    skip = {"general.name", "general.file_type", "general.quantization_version", "general.architecture"}
    return {key: field.contents() for key, field in reader.fields.items()
            if key.startswith("general.") and key not in skip}


def _add_general(writer: gguf.GGUFWriter, name: str, base: dict) -> None:
    """Name, the base model's licence, languages and origin, and the base itself when fine-tuned."""
    writer.add_name(name)
    for key, value in base.items():
        if isinstance(value, list):
            writer.add_array(key, value)
        else:
            writer.add_string(key, str(value))
    base_name = base.get("general.basename")
    if base_name and not name.lower().startswith(base_name.lower()):
        writer.add_uint32("general.base_model.count", 1)
        writer.add_string("general.base_model.0.name", base_name)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _add_hyperparameters(writer: gguf.GGUFWriter, model: PreTrainedModel, kind: str) -> None:
    """The architecture numbers llama.cpp builds the model from."""
    config = model.config
    rope = getattr(config, "rope_parameters", None) or {"rope_theta": getattr(config, "rope_theta", 10000.0)}
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(float(rope["rope_theta"]))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_file_type(GGUF_TYPES[kind][1])
    writer.add_vocab_size(config.vocab_size)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)


def _add_tokenizer(writer: gguf.GGUFWriter, tokenizer: PreTrainedTokenizerBase, pre: str) -> str:
    """Tokens, merges, special ids and the chat template; returns the end-of-turn token."""
    vocab = tokenizer.get_vocab()
    tokens = sorted(vocab, key=vocab.get)
    special = {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
    added = {t.content for t in tokenizer.added_tokens_decoder.values()}
    types = [gguf.TokenType.CONTROL if t in special else gguf.TokenType.USER_DEFINED if t in added
             else gguf.TokenType.NORMAL for t in tokens]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(_merges(tokenizer.backend_tokenizer.to_str()))
    end_of_turn = tokenizer.eos_token
    ids = {"bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id, "unk": tokenizer.unk_token_id,
           "pad": tokenizer.pad_token_id}
    for kind, token_id in ids.items():
        if token_id is not None:
            getattr(writer, f"add_{kind}_token_id")(token_id)
    writer.add_eot_token_id(tokenizer.convert_tokens_to_ids(end_of_turn))
    writer.add_add_bos_token(False)  # the chat template writes every special token itself
    writer.add_add_space_prefix(False)
    writer.add_chat_template(tokenizer.chat_template)
    return end_of_turn


def _merges(tokenizer_json: str) -> list[str]:
    """BPE merges as 'left right' strings, whichever of the two layouts tokenizer.json uses."""
    merges = json.loads(tokenizer_json)["model"]["merges"]
    return [m if isinstance(m, str) else " ".join(m) for m in merges]


# Ollama's Go template for ChatML, the layout of SmolLM2's chat template: a system turn when there
# is a system prompt, each message as <|im_start|>role ... <|im_end|>, then the assistant's cue.
# Ollama passes the system prompt twice, as .System and as a message in .Messages (its Modelfile
# SYSTEM becomes a system message), so the loop skips system messages or the turn would repeat.
CHATML_OLLAMA = ('{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}'
                 '{{- range .Messages }}{{ if ne .Role "system" }}'
                 '<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}{{ end }}'
                 '<|im_start|>assistant\n')


def chatml(messages: list[dict[str, str]]) -> str:
    """What CHATML_OLLAMA renders in Ollama: its system prompts joined into one turn, then the rest."""
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    turns = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n"
                    for m in messages if m["role"] != "system")
    head = f"<|im_start|>system\n{system}<|im_end|>\n" if system else ""
    return head + turns + "<|im_start|>assistant\n"


def template_default_system(tokenizer: PreTrainedTokenizerBase) -> str | None:
    """The system prompt the chat template adds when a conversation has none (SmolLM2 has one)."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False)
    start = "<|im_start|>system\n"
    return text[len(start):text.index("<|im_end|>")] if text.startswith(start) else None


def ollama_modelfile(tokenizer: PreTrainedTokenizerBase, gguf_name: str, system: str | None) -> str:
    """A Modelfile whose template renders conversations exactly as the chat template does."""
    system = system or template_default_system(tokenizer)
    probe = [{"role": "system", "content": system or "s"}, {"role": "user", "content": "u"},
             {"role": "assistant", "content": "a"}, {"role": "user", "content": "v"}]
    if tokenizer.apply_chat_template(probe, tokenize=False, add_generation_prompt=True) != chatml(probe):
        raise CourseError("The chat template is not ChatML, the one layout the course writes for Ollama; "
                          "write the Modelfile's TEMPLATE by hand from tokenizer.chat_template.")
    lines = [f"FROM ./{gguf_name}", f'TEMPLATE """{CHATML_OLLAMA}"""', f'PARAMETER stop "{tokenizer.eos_token}"']
    if system:
        lines.append(f'SYSTEM """{system}"""')
    return "\n".join(lines) + "\n"


def export_model(model_dir: Path, out: Path, kind: str = "f16") -> GgufExport:
    """Export a model folder saved by `finetune` (a writer or an assistant) and write its Modelfile."""
    from course_lib.config import DEFAULT_MODEL, Task
    from course_lib.runtime.assets import SMOLLM2_GGUF, asset_path
    from course_lib.saving import load_finetuned
    from course_lib.tasks.generate import saved_system

    model, tokenizer, info = load_finetuned(Path(model_dir))
    task = info.get("task", Task.CLASSIFY.value)
    if task == Task.CLASSIFY.value:
        raise CourseError(f"{model_dir} holds a classifier; GGUF runtimes only run language models, and its "
                          "new head is not one. Export a model from `finetune --task generate` (or chat).")
    base = {}
    if info.get("config", {}).get("model") == DEFAULT_MODEL:
        # The base model's licence and origin, from the file it was converted from; if the cache
        # has moved, the GGUF is still complete, only without the base's general.* facts.
        with contextlib.suppress(CourseError):
            base = base_metadata(asset_path(SMOLLM2_GGUF, fetch=False))
    system = saved_system(info)
    name = f"{base.get('general.basename', 'model')} {base.get('general.size_label', '')} course {task}"
    result = write_gguf(model, tokenizer, out, kind, " ".join(name.split()), system, base)
    modelfile = ollama_modelfile(tokenizer, result.path.name, system)
    (result.path.parent / f"{result.path.stem}.Modelfile").write_text(modelfile, encoding="utf-8")
    return result


def gguf_summary(path: Path) -> dict[str, object]:
    """What a runtime reads first from a GGUF file: architecture, size, tokenizer and chat facts."""
    fields = gguf.GGUFReader(path).fields
    tokens = fields["tokenizer.ggml.tokens"].contents()

    def value(key: str) -> object:
        return fields[key].contents() if key in fields else None

    arch = value("general.architecture")
    return {
        "name": value("general.name"), "architecture": arch, "blocks": value(f"{arch}.block_count"),
        "width": value(f"{arch}.embedding_length"), "context": value(f"{arch}.context_length"),
        "vocabulary": len(tokens), "end of turn": tokens[value("tokenizer.ggml.eot_token_id")],
        "licence": value("general.license"), "system prompt": value("course.system_prompt"),
        "chat template": value("tokenizer.chat_template"),
    }

"""GGUF export: checked tensor for tensor against the packaged SmolLM2 file, read back by
transformers' own GGUF loader, and refused with one clear line for bad input."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from conftest import require_assets
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from course_lib.cli import main
from course_lib.config import Task
from course_lib.data import LabelMap
from course_lib.export import (
    CHATML_OLLAMA,
    base_metadata,
    export_model,
    gguf_summary,
    llama_row_order,
    ollama_modelfile,
    template_default_system,
    write_gguf,
)
from course_lib.runtime.assets import SMOLLM2_GGUF, asset_path, readable_path, smollm2_folder
from course_lib.saving import save_finetuned

SYSTEM = "Answer in one short sentence."


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    require_assets(SMOLLM2_GGUF)
    return AutoTokenizer.from_pretrained(smollm2_folder())


@pytest.fixture(scope="module")
def writer_dir(smollm2_tokenizer, tmp_path_factory):
    """A small random Llama with SmolLM2's real tokenizer and chat template, saved as a course writer."""
    config = LlamaConfig(vocab_size=len(smollm2_tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    folder = tmp_path_factory.mktemp("writer") / "model"
    return save_finetuned(folder, model, smollm2_tokenizer, None, {"model": "tiny", "system": SYSTEM}, {},
                          task=Task.GENERATE)


def _greedy(model, tokenizer, prompt: str, tokens: int = 12) -> list[int]:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                        return_dict=True, return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return out[0, ids["input_ids"].shape[1]:].tolist()


def test_an_exported_writer_reads_back_through_transformers_gguf_loader(writer_dir, tmp_path):
    out = tmp_path / "writer.gguf"
    done = export_model(writer_dir, out, "f32")
    assert done.system == SYSTEM and done.end_of_turn == "<|im_end|>"
    source = AutoModelForCausalLM.from_pretrained(writer_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(writer_dir)
    back = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=out.name).eval()
    ids = torch.tensor([tokenizer("name: The Eagle, food: French").input_ids])
    with torch.no_grad():
        assert torch.allclose(source(ids).logits, back(ids).logits, atol=1e-5)
    for prompt in ("name: The Eagle, food: French", "area: riverside, priceRange: cheap"):
        assert _greedy(back, tokenizer, prompt) == _greedy(source, tokenizer, prompt)
    fields = gguf.GGUFReader(out).fields
    assert fields["tokenizer.chat_template"].contents() == tokenizer.chat_template
    assert fields["course.system_prompt"].contents() == SYSTEM
    assert fields["tokenizer.ggml.eot_token_id"].contents() == tokenizer.convert_tokens_to_ids("<|im_end|>")
    summary = gguf_summary(out)
    assert (summary["architecture"], summary["blocks"], summary["end of turn"]) == ("llama", 2, "<|im_end|>")
    modelfile = (tmp_path / "writer.Modelfile").read_text()
    assert modelfile.startswith("FROM ./writer.gguf\n") and f'SYSTEM """{SYSTEM}"""' in modelfile
    assert 'PARAMETER stop "<|im_end|>"' in modelfile


def test_the_modelfile_keeps_the_templates_own_system_prompt_and_refuses_other_layouts(smollm2_tokenizer):
    modelfile = ollama_modelfile(smollm2_tokenizer, "m.gguf", None)
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM' in modelfile
    other = AutoTokenizer.from_pretrained(smollm2_folder())
    other.chat_template = "{% for m in messages %}### {{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    with pytest.raises(Exception, match="not ChatML"):
        ollama_modelfile(other, "m.gguf", None)


def _ollama_render(template: str, messages: list[dict[str, str]], tmp_path: Path) -> str:
    """The Modelfile template rendered by Go's text/template, fed as Ollama feeds it (tests/ollama_render.go)."""
    go = shutil.which("go")
    if go is None:
        message = "no Go toolchain to render Ollama templates (Debian: apt install golang-go)"
        if os.environ.get("CI") == "true":
            pytest.fail(message + "; CI installs it in ./run test")
        pytest.skip(message)
    (tmp_path / "template.txt").write_text(template, encoding="utf-8")
    (tmp_path / "messages.json").write_text(json.dumps(messages), encoding="utf-8")
    program = Path(__file__).with_name("ollama_render.go")
    done = subprocess.run([go, "run", str(program), "template.txt", "messages.json"], cwd=tmp_path,
                          capture_output=True, text=True, env={**os.environ, "GOFLAGS": "-mod=mod"}, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.parametrize("system", [SYSTEM, None])
def test_ollama_renders_a_conversation_exactly_as_the_chat_template_does(smollm2_tokenizer, system, tmp_path):
    """The system prompt appears once, although Ollama passes it both as .System and in .Messages."""
    turns = [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello."},
             {"role": "user", "content": "Who wrote Hamlet?"}]
    given = [{"role": "system", "content": system}] * (system is not None) + turns
    expected = smollm2_tokenizer.apply_chat_template(given, tokenize=False, add_generation_prompt=True)
    # Without one, Ollama sends the Modelfile's SYSTEM (the template's own default) as a message.
    system = system or template_default_system(smollm2_tokenizer)
    rendered = _ollama_render(CHATML_OLLAMA, [{"role": "system", "content": system}, *turns], tmp_path)
    assert rendered == expected
    assert rendered.count("<|im_start|>system") == 1


@pytest.mark.slow
def test_exporting_the_unmodified_base_reproduces_the_packaged_gguf(tmp_path):
    """Names, shapes, order and metadata as llama.cpp wrote them; F32 values exact; Q4_1 blocks identical."""
    require_assets(SMOLLM2_GGUF)
    source_file = asset_path(SMOLLM2_GGUF)
    original = gguf.GGUFReader(source_file)
    model = AutoModelForCausalLM.from_pretrained(smollm2_folder())
    tokenizer = AutoTokenizer.from_pretrained(smollm2_folder())
    name = original.fields["general.name"].contents()
    for kind in ("f32", "q4_1"):
        exported = gguf.GGUFReader(write_gguf(model, tokenizer, tmp_path / f"{kind}.gguf", kind, name,
                                              base=base_metadata(source_file)).path)
        assert [(t.name, list(t.shape)) for t in exported.tensors] == [(t.name, list(t.shape))
                                                                       for t in original.tensors]
        for ours, theirs in zip(exported.tensors, original.tensors, strict=True):
            if kind == "f32":
                assert np.array_equal(gguf.quants.dequantize(ours.data, ours.tensor_type),
                                      gguf.quants.dequantize(theirs.data, theirs.tensor_type)), ours.name
            else:
                assert ours.tensor_type == theirs.tensor_type and np.array_equal(ours.data, theirs.data), ours.name
        assert set(exported.fields) - set(original.fields) == {"tokenizer.ggml.eot_token_id"}
        for key, field in original.fields.items():
            if not key.startswith("GGUF.") and (key != "general.file_type" or kind == "q4_1"):
                assert exported.fields[key].contents() == field.contents(), key


def test_the_query_reordering_is_what_makes_the_tensors_match():
    """The check above has teeth: without llama.cpp's row order the query rows differ."""
    rows = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)
    reordered = llama_row_order(rows, heads=2)
    assert not np.array_equal(reordered, rows)
    assert sorted(map(tuple, reordered)) == sorted(map(tuple, rows))  # the same rows, in another order
    assert np.array_equal(reordered[:4], rows[[0, 2, 1, 3]])  # halves interleaved within a head


def _export(capsys, *args) -> tuple[int, str]:
    code = main(["export", *map(str, args)])
    return code, capsys.readouterr().err


def test_export_tells_llama_cpp_the_trained_system_prompt(writer_dir, tmp_path, capsys):
    """llama.cpp renders the GGUF's template but never reads the course's system prompt: pass it as -sys."""
    assert main(["export", str(writer_dir), "--gguf", str(tmp_path / "w.gguf"), "--type", "f16"]) == 0
    out = capsys.readouterr().out
    assert f"llama-cli -m {readable_path(tmp_path / 'w.gguf')} -cnv -sys {shlex.quote(SYSTEM)}" in out


def test_bad_exports_give_one_clear_line_and_write_nothing(writer_dir, tiny_llama_dir, tmp_path, capsys):
    code, err = _export(capsys, tmp_path, "--gguf", tmp_path / "a.gguf")
    assert code == 2 and "not a saved course model" in err
    code, err = _export(capsys, writer_dir, "--gguf", tmp_path / "missing" / "a.gguf")
    assert code == 2 and "does not exist" in err
    classifier = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    folder = save_finetuned(tmp_path / "clf", classifier, AutoTokenizer.from_pretrained(tiny_llama_dir),
                            LabelMap(["neg", "pos"]), {}, {}, task=Task.CLASSIFY)
    code, err = _export(capsys, folder, "--gguf", tmp_path / "c.gguf")
    assert code == 2 and "classifier" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit):
        main(["export", str(writer_dir), "--gguf", str(tmp_path / "b.gguf"), "--type", "q2"])
    assert "invalid choice: 'q2'" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clf"]


def test_a_full_disk_leaves_no_half_written_file(writer_dir, tmp_path):
    """A file-size limit (like a full disk) fails the write: one line, and neither file nor partial."""
    script = ("import resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (2_000_000, 2_000_000)); "
              "from course_lib.cli import main; sys.exit(main(sys.argv[1:]))")
    proc = subprocess.run([sys.executable, "-c", script, "export", str(writer_dir), "--gguf",
                           str(tmp_path / "big.gguf"), "--type", "f32"], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: Could not write")
    assert list(tmp_path.iterdir()) == []

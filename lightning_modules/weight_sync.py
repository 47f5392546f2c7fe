"""The trainer -> rollout engine weight sync, and its canary.

``gathered_weights`` yields the training model's parameters as ``(HF name, full tensor)`` pairs, one parameter at
a time in module order: under FSDP2 each parameter is a DTensor shard and ``full_tensor()`` all-gathers it (a
collective: every rank iterates), so at most one full parameter exists beyond the shards at any time while the
engine consumes the iterator (``RolloutEngine.load_weights``). The names are the HF model's own
(``model.layers.0.self_attn.q_proj.weight``), what vLLM's ``load_weights`` maps onto its fused layers; wrappers
that activation checkpointing and ``torch.compile`` insert into names are stripped. Tied embeddings appear once
(``named_parameters`` yields a shared parameter once), as in an HF checkpoint.

The canary (``check_weight_sync``): the engine's log-probabilities of a fixed token sequence must equal the
training model's to ``tolerance`` (1e-3 suits float32 on both sides); otherwise ``WeightSyncError``, one line, and
the run stops. A silently stale engine would otherwise keep sampling from old weights (TRL #5312).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from skill_distill.generation.base import GenerationError

# name parts inserted by torch's activation-checkpoint wrapper and by torch.compile
_WRAPPER_PARTS = ("_checkpoint_wrapped_module.", "_orig_mod.", "_fsdp_wrapped_module.")


class WeightSyncError(GenerationError):
    """The rollout engine does not hold the training model's weights (the canary failed)."""


def hf_name(name: str) -> str:
    """A parameter name without the wrapper parts that checkpointing / compile / FSDP1 insert."""
    for part in _WRAPPER_PARTS:
        name = name.replace(part, "")
    return name


def gathered_weights(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """``(HF name, full tensor)`` of every parameter of ``model``, gathered one at a time (see module docstring).
    Under FSDP2 every rank must consume the whole iterator (each ``full_tensor()`` is a collective)."""
    for name, param in model.named_parameters():
        tensor = param.detach()
        if hasattr(tensor, "full_tensor"):  # a DTensor shard (FSDP2)
            tensor = tensor.full_tensor()
        yield hf_name(name), tensor


def training_logprobs(model: torch.nn.Module, token_ids: Sequence[int]) -> torch.Tensor:
    """The training model's log p(token t | tokens < t), t >= 1, in float32, without gradients (a root forward,
    so it also runs under FSDP2)."""
    device = next(model.parameters()).device
    ids = torch.tensor([list(token_ids)], dtype=torch.long, device=device)
    with torch.no_grad():
        logits = model(input_ids=ids, use_cache=False).logits[0, :-1].float()
    return logits.log_softmax(-1).gather(-1, ids[0, 1:, None]).squeeze(-1).cpu()


def check_weight_sync(engine, model: torch.nn.Module, token_ids: Sequence[int], tolerance: float = 1e-3,
                      step: int | None = None) -> float:
    """The largest absolute difference between the engine's and the training model's log-probabilities of
    ``token_ids``; raises WeightSyncError (one line) when it exceeds ``tolerance``."""
    expected = training_logprobs(model, token_ids)
    got = torch.tensor(engine.sequence_logprobs(token_ids), dtype=torch.float32)
    if got.shape != expected.shape:
        raise WeightSyncError(f"weight-sync canary: the engine returned {got.numel()} log-probabilities for a "
                              f"{len(token_ids)}-token sequence (expected {expected.numel()})")
    error = float((got - expected).abs().max())
    if not error <= tolerance:  # also catches nan
        at = f" at step {step}" if step is not None else ""
        raise WeightSyncError(f"weight-sync canary failed{at}: the rollout engine's log-probabilities differ from the "
                              f"training model's by {error:.3g} (> {tolerance:g}); the engine holds stale or "
                              "mis-mapped weights, so rollouts would not be on-policy. Stopping")
    return error


def sync_weights(engine, model: torch.nn.Module) -> int:
    """Load the training model's current weights into ``engine`` in place; returns the number of tensors."""
    return engine.load_weights(gathered_weights(model))

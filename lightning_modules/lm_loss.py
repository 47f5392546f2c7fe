"""Cross-entropy of a causal LM over its supervised positions, with or without materialising the logits.

docs/METHOD.md §6 trains on the assistant turn only. The loss is the *sum* of token cross-entropies over the
supervised positions (the caller normalises it by the whole step's supervised tokens), computed by one of:

- ``dense``: ``lm_head`` on the supervised positions' hidden states, fp32 logits, ``F.cross_entropy``. Memory grows
  with (supervised tokens x vocabulary): 10 T V bytes in bf16 compute (docs/SCALING.md's memory plan).
- ``linear_ce``: torch's own chunked linear cross-entropy (the op behind ``F.linear_cross_entropy`` with
  ``torch.nn.LinearCrossEntropyOptions``, CPU and CUDA): chunks of ``chunk_size`` supervised positions, each chunk's
  logits computed, reduced and turned into gradients at once, so only one (chunk x vocabulary) block ever exists.
  The gradients are computed during forward and handed to autograd in backward (``_ChunkedLinearCE``).
- ``liger``: Liger-Kernel's fused linear cross-entropy (CUDA and triton only).

``auto`` resolves to ``linear_ce`` (present in every supported torch, on every device), ``dense`` for a model whose
logits are post-processed (soft-capping, scaling), which the fused kernels do not model.

Under FSDP2 the loss must run inside the root module's forward: there the root group's parameters (embeddings,
``lm_head``) are gathered, and the backward hooks that reduce their gradients are attached to the forward's outputs.
``attach`` binds :func:`supervised_ce` to the HF model as a method and ``lightning_modules/sharding.py`` registers
it with ``register_fsdp_forward_method``, so calling ``model.supervised_ce(...)`` is a root forward.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F

from skill_distill.batch_contract import IGNORE_INDEX
from skill_distill.io import ConfigError

LOSS_IMPLEMENTATIONS = ("auto", "dense", "linear_ce", "liger")
METHOD_NAME = "supervised_ce"


def default_chunk_size(hidden_size: int) -> int:
    """Rows per linear_ce chunk when ``model.loss_chunk_size`` is not set: hidden / 4 (at least 64).

    The rule is one of memory: a chunk's fp32 logits (4 C V bytes) are then a quarter of the fp32 gradient of the
    output embedding (4 V H bytes), which exists from the loss's forward to the optimizer step whatever the loss, so
    the chunk adds at most 25 % to the head's inherent memory, for any vocabulary: 256 rows (0.16 GB) for Qwen3-0.6B,
    640 for 4B, 1,024 for 8B. The weight-gradient accumulation of a chunk does 2 C V H flops on 8 V H bytes (C / 4
    flop per byte), enough for CPU GEMMs at 256 rows: benchmarks/bench_long_traces.py measures the loss's speed at
    this and larger chunks side by side with dense. torch's own heuristic ("aspect_ratio:2") picks 16-128 rows for a
    152k vocabulary, where that accumulation, not the GEMMs, sets the time."""
    return max(64, hidden_size // 4)


class _ChunkedLinearCE(torch.autograd.Function):
    """torch's chunked linear cross-entropy op with the loss as the only autograd output.

    ``F.linear_cross_entropy`` returns the op's first output, but the op has four (the loss and the gradients it
    precomputes for input, weight and bias); autograd materialises zeros for the three it never receives a gradient
    for at the start of backward: a (vocabulary x hidden) block, 0.62 GB for Qwen3-0.6B's fp32 head, allocated at
    the step's memory peak (benchmarks/bench_long_traces.py, ``--only memory``). Here the op runs below autograd and
    this function hands its gradients on, scaled by the upstream gradient, as the op's own backward does."""

    @staticmethod
    def forward(ctx, states, weight, target, bias, chunk_size):
        from torch.nn.modules.linear_cross_entropy import _linear_cross_entropy_batch_chunked

        options = torch.nn.LinearCrossEntropyOptions(batch_chunk_size=chunk_size, chunking_method=None)._adjust(
            num_batches=states.shape[0], in_features=states.shape[1], num_classes=weight.shape[0],
            dtype=states.dtype, device=states.device)
        need_states, need_weight, _, need_bias, _ = ctx.needs_input_grad
        loss, g_states, g_weight, g_bias = _linear_cross_entropy_batch_chunked(
            states, weight, target, bias, None, "sum", IGNORE_INDEX, 0.0, options.batch_chunk_size,
            options.acc_policy, options.acc_dtype, False, need_states, need_weight, bias is not None and need_bias)
        ctx.grads = (g_states if need_states else None, g_weight if need_weight else None,
                     g_bias if bias is not None and need_bias else None)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grads, ctx.grads = ctx.grads, None
        if grads is None:
            raise RuntimeError("linear_ce backward called twice; retain_graph is not supported")
        g_states, g_weight, g_bias = (None if g is None else g.mul_(grad_loss) for g in grads)
        return g_states, g_weight, None, g_bias, None


def post_processed_logits(config) -> str | None:
    """Why a model's logits are not just ``lm_head(hidden)`` (then only ``dense`` is exact), or None."""
    for attr in ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale"):
        value = getattr(config, attr, None)
        if value not in (None, 1, 1.0):
            return f"{attr}={value}"
    return None


def pick_loss_implementation(requested: str, config=None) -> str:
    """Resolve ``auto``; refuse, in one line, an explicit choice that cannot work here."""
    if requested not in LOSS_IMPLEMENTATIONS:
        raise ConfigError(f"model.loss_implementation={requested!r} is unknown; use one of "
                          f"{', '.join(LOSS_IMPLEMENTATIONS)}")
    reason = post_processed_logits(config) if config is not None else None
    if requested == "auto":
        return "dense" if reason else "linear_ce"
    if requested != "dense" and reason:
        raise ConfigError(f"model.loss_implementation={requested} computes lm_head(hidden) only, but this "
                          f"{config.model_type} model post-processes its logits ({reason}); use dense or auto")
    if requested == "linear_ce" and not hasattr(torch.nn, "LinearCrossEntropyOptions"):
        raise ConfigError(f"model.loss_implementation=linear_ce needs torch >= 2.13 (installed {torch.__version__}); "
                          "use auto or dense")
    if requested == "liger":
        if not torch.cuda.is_available():
            raise ConfigError("model.loss_implementation=liger needs CUDA (triton kernels); use auto on this machine")
        try:
            from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss  # noqa: F401 - only to see that it loads
        except Exception as e:  # noqa: BLE001 - a broken triton raises anything
            raise ConfigError(f"model.loss_implementation=liger: liger_kernel does not import "
                              f"({type(e).__name__}); pip install liger-kernel, or use auto") from None
    return requested


def attach(model) -> None:
    """Give an HF causal LM the method ``supervised_ce`` (idempotent); FSDP2 registers it as a forward."""
    if not isinstance(getattr(model, METHOD_NAME, None), types.MethodType):
        setattr(model, METHOD_NAME, types.MethodType(supervised_ce, model))


def supervised_ce(lm, input_ids: torch.Tensor, labels: torch.Tensor, implementation: str = "dense",
                  chunk_size: int | None = None, **model_kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of token cross-entropies over the positions whose label is not IGNORE_INDEX, and their number.

    ``lm`` is an HF causal LM (its decoder, then its output embedding, tied to the input embedding or not);
    ``chunk_size``: linear_ce's rows per chunk (None: :func:`default_chunk_size`); ``model_kwargs`` go to the
    decoder (position_ids, attention_mask, the packed-sequence boundaries).
    """
    hidden = lm.get_decoder()(input_ids=input_ids, use_cache=False, **model_kwargs).last_hidden_state
    head = lm.get_output_embeddings()
    weight, bias = head.weight, getattr(head, "bias", None)
    if implementation == "dense":
        # columns holding a supervised position in any row (the logits_to_keep of HF's forward), as before
        keep = (labels != IGNORE_INDEX).any(dim=0).nonzero().squeeze(-1)
        target = labels[:, keep]
        logits = F.linear(hidden[:, keep], weight, bias).float()
        ce = F.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1), ignore_index=IGNORE_INDEX,
                             reduction="sum")
        return ce, (target != IGNORE_INDEX).sum()
    supervised = labels != IGNORE_INDEX
    states, target = hidden[supervised], labels[supervised]
    if implementation == "linear_ce":
        ce = _ChunkedLinearCE.apply(states, weight, target, bias, chunk_size or default_chunk_size(weight.shape[1]))
    elif implementation == "liger":
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        ce = LigerFusedLinearCrossEntropyLoss(ignore_index=IGNORE_INDEX, reduction="sum")(weight, states, target, bias)
    else:
        raise ValueError(f"unresolved loss implementation {implementation!r}")  # pick_loss_implementation first
    return ce.float(), target.new_tensor(target.numel())

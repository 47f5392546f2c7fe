"""Cross-entropy of a causal LM over its supervised positions, with or without materialising the logits.

docs/METHOD.md §6 trains on the assistant turn only. The loss is the *sum* of token cross-entropies over the
supervised positions (the caller normalises it by the whole step's supervised tokens), computed by one of:

- ``dense``: ``lm_head`` on the supervised positions' hidden states, fp32 logits, ``F.cross_entropy``. Memory grows
  with (supervised tokens x vocabulary): 10 T V bytes in bf16 compute (docs/SCALING.md's memory plan).
- ``linear_ce``: torch's own chunked ``F.linear_cross_entropy`` (``torch.nn.LinearCrossEntropyOptions``, CPU and
  CUDA): chunks of ``chunk_size`` supervised positions, each chunk's logits computed, reduced and turned into
  gradients at once, so only one (chunk x vocabulary) block ever exists. The gradients are computed during forward
  and handed to autograd in backward.
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

from datamodules.batching import IGNORE_INDEX
from skill_distill.io import ConfigError

LOSS_IMPLEMENTATIONS = ("auto", "dense", "linear_ce", "liger")
METHOD_NAME = "supervised_ce"
# 1,024 positions x 151,936 classes = 0.62 GB of fp32 logits per chunk. torch's own heuristic ("aspect_ratio:2")
# picks 16-128 rows for a 152k vocabulary, which on CPU runs the weight-gradient GEMM at a fraction of its speed
# (benchmarks/bench_long_traces.py measures the chunk sizes side by side).
DEFAULT_CHUNK_SIZE = 1024


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
                  chunk_size: int = DEFAULT_CHUNK_SIZE, **model_kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of token cross-entropies over the positions whose label is not IGNORE_INDEX, and their number.

    ``lm`` is an HF causal LM (its decoder, then its output embedding, tied to the input embedding or not);
    ``model_kwargs`` go to the decoder (position_ids, attention_mask, the packed-sequence boundaries).
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
        options = torch.nn.LinearCrossEntropyOptions(batch_chunk_size=chunk_size, chunking_method=None)
        ce = F.linear_cross_entropy(states, weight, target, linear_bias=bias, reduction="sum",
                                    ignore_index=IGNORE_INDEX, options=options)
    elif implementation == "liger":
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        ce = LigerFusedLinearCrossEntropyLoss(ignore_index=IGNORE_INDEX, reduction="sum")(weight, states, target, bias)
    else:
        raise ValueError(f"unresolved loss implementation {implementation!r}")  # pick_loss_implementation first
    return ce.float(), target.new_tensor(target.numel())

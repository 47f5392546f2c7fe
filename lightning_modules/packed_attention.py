"""``sdpa_packed``: SDPA attention for packed rows without a dense block-causal mask.

A packed batch is one row of several sequences whose ``position_ids`` restart at 0 (``datamodules/batching.py``).
The collator also gives the boundaries once per batch as ``cu_seq_lens_q/k`` and ``max_length_q/k``, the keyword
arguments of transformers' flash path, which passes them to ``flash_attn_varlen_func`` as they are; here they are
turned into Python lengths once per batch (one host read, remembered for every layer and for the recompute of
activation checkpointing) instead of being re-derived from ``position_ids`` in every layer. Plain ``sdpa`` in
transformers instead builds a (T x T) boolean block-causal mask and runs the masked kernel over the whole row, which
on CPU spends most of the step on masked-out pairs. Here the row is split at the boundaries and each sequence runs
the causal kernel alone:
the same result (the masked pairs contribute nothing), with work proportional to the sum of squared lengths.

A row whose sequences share a prefix held once (``shared_prefix``, a ``SharedPrefixLayout``: a prompt followed by
its n completions, on-policy distillation) runs each completion's queries over the prompt's keys and its own, with a
bottom-right causal mask; the prompt is computed once instead of n times. Only this function reads the layout: the
other implementations would attend across the row, so the on-policy module packs that way only under this one.

Padded batches (a 2-D ``attention_mask``) and generation with a cache take the ordinary SDPA path unchanged.
"""

from __future__ import annotations

import functools
import weakref

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

from skill_distill.batch_contract import SharedPrefixLayout
from skill_distill.io import ConfigError

PACKED_SDPA = "sdpa_packed"


def packed_sdpa_mask(*args, attention_mask: torch.Tensor | None = None, **kwargs):
    """No mask for unpadded rows (the attention function splits packed ones); the usual SDPA mask otherwise."""
    if attention_mask is None:
        return None
    return sdpa_mask(*args, attention_mask=attention_mask, **kwargs)


def sequence_lengths(position_ids: torch.Tensor) -> list[int]:
    """Lengths of the sequences packed in one row, read from where ``position_ids`` restart at 0."""
    starts = torch.nonzero(position_ids == 0).flatten().tolist()
    if not starts or starts[0] != 0:
        starts = [0, *starts]
    return [b - a for a, b in zip(starts, [*starts[1:], position_ids.numel()], strict=True)]


# the last batch's cu_seq_lens tensor (weakly) and its lengths as Python ints: every layer of a forward, and the
# recompute in backward, receive the same tensor object
_last_boundaries: list = [lambda: None, []]


def lengths_from_cu_seq_lens(cu_seq_lens: torch.Tensor) -> list[int]:
    """Sequence lengths of cumulative lengths ``[0, n1, n1 + n2, ...]``, read from the device once per tensor."""
    ref, lengths = _last_boundaries
    if ref() is not cu_seq_lens:
        lengths = cu_seq_lens.diff().tolist()
        _last_boundaries[:] = [weakref.ref(cu_seq_lens), lengths]
    return lengths


@functools.lru_cache(maxsize=4096)
def _after_prefix_mask(length: int, prefix: int, device: torch.device) -> torch.Tensor:
    """(1, 1, length, prefix + length) boolean: query i sees the whole prefix and its own keys 0..i."""
    keys = torch.arange(prefix + length, device=device)
    return (keys[None, :] <= prefix + torch.arange(length, device=device)[:, None]).view(1, 1, length, prefix + length)


def shared_prefix_attention(module, query, key, value, layout: SharedPrefixLayout, **kwargs) -> torch.Tensor:
    """Causal SDPA per segment of ``layout``, each after its shared prefix's keys (see the module docstring)."""
    if sum(layout.lengths) != query.shape[2]:
        raise ValueError(f"shared_prefix covers {sum(layout.lengths)} positions but the row has {query.shape[2]}")
    pieces, start = [], 0
    for length, p_start, p_len in zip(layout.lengths, layout.prefix_start, layout.prefix_len, strict=True):
        q = query[:, :, start:start + length]
        k, v = key[:, :, start:start + length], value[:, :, start:start + length]
        if p_len:
            k = torch.cat([key[:, :, p_start:p_start + p_len], k], dim=2)
            v = torch.cat([value[:, :, p_start:p_start + p_len], v], dim=2)
            mask = _after_prefix_mask(length, p_len, query.device)
        else:
            mask = None  # sdpa_attention_forward then runs the causal kernel (module.is_causal)
        # outputs come back as (batch, seq, heads, dim), so the pieces join along the sequence axis
        pieces.append(sdpa_attention_forward(module, q, k, v, mask, **kwargs)[0])
        start += length
    return torch.cat(pieces, dim=1)


def packed_sdpa_attention(module, query, key, value, attention_mask, position_ids=None, cu_seq_lens_q=None,
                          cu_seq_lens_k=None, max_length_q=None, max_length_k=None, shared_prefix=None, **kwargs):
    """Causal SDPA per packed sequence; falls back to ``sdpa`` for masks, caches and batches of several rows.

    The boundaries come from ``shared_prefix`` (a row with shared prefixes), ``cu_seq_lens_q`` (given by the
    collator) or else from where ``position_ids`` restart."""
    rows_of_one = attention_mask is None and query.shape[0] == 1 and query.shape[2] == key.shape[2] > 1
    if shared_prefix is not None:
        if not rows_of_one or kwargs.get("sliding_window") is not None:
            raise ValueError("shared_prefix needs one packed row without a mask, a cache or a sliding window")
        return shared_prefix_attention(module, query, key, value, shared_prefix, **kwargs), None
    packed = rows_of_one and (cu_seq_lens_q is not None or position_ids is not None)
    if not packed:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    if kwargs.get("sliding_window") is not None:  # check_model_config refuses such models before training
        raise NotImplementedError(f"{PACKED_SDPA} does not implement sliding-window attention; use sdpa")
    if cu_seq_lens_q is not None:  # self-attention without a cache: the key boundaries are the query's
        lengths = lengths_from_cu_seq_lens(cu_seq_lens_q)
        if sum(lengths) != query.shape[2]:
            raise ValueError(f"cu_seq_lens_q covers {sum(lengths)} positions but the row has {query.shape[2]}")
    else:
        lengths = sequence_lengths(position_ids[0])
    if len(lengths) == 1:
        return sdpa_attention_forward(module, query, key, value, None, **kwargs)
    # separate sequences: segments without a shared prefix, one loop for both layouts
    no_prefix = [0] * len(lengths)
    return shared_prefix_attention(module, query, key, value, SharedPrefixLayout(lengths, no_prefix, no_prefix),
                                   **kwargs), None


def uses_sliding_window(config) -> bool:
    """Whether any layer of an HF model config attends through a sliding window."""
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        return "sliding_attention" in layer_types
    return getattr(config, "sliding_window", None) is not None and getattr(config, "use_sliding_window", True)


def check_model_config(config, attn_implementation: str) -> None:
    """Refuse, before training, a model whose attention ``sdpa_packed`` does not implement (sliding windows)."""
    if attn_implementation == PACKED_SDPA and uses_sliding_window(config):
        raise ConfigError(f"model.attn_implementation resolved to {PACKED_SDPA}, which does not implement the "
                          f"sliding-window attention of this {config.model_type} model; set "
                          "model.attn_implementation: sdpa (or flash_attention_2 on GPUs)")


def register() -> str:
    """Make ``attn_implementation="sdpa_packed"`` available to every HF model (idempotent)."""
    AttentionInterface.register(PACKED_SDPA, packed_sdpa_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(PACKED_SDPA, packed_sdpa_mask)
    return PACKED_SDPA

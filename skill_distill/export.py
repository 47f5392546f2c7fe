"""The project's one exporter: model weights -> an HF directory (safetensors, config, tokenizer, generation config)
that transformers and vLLM load.

Works for plain and FSDP2-sharded models: the full state dict is gathered with torch.distributed.checkpoint's
state-dict API (a collective: every rank must call), then rank 0 writes into a temporary directory that is renamed
into place, so a crash never leaves a half-written export.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def full_state_dict(model) -> dict:
    """The unsharded state dict on CPU (collective when parameters are DTensors)."""
    import torch

    is_sharded = any(type(p).__name__ == "DTensor" for p in model.parameters())
    if is_sharded:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().to("cpu", copy=True) if isinstance(v, torch.Tensor) else v for k, v in model.state_dict().items()}


def tied_output_key(model) -> str | None:
    """State-dict key of the output embedding when it is tied to the input embedding (Qwen3-4B), else None."""
    if not getattr(model.config, "tie_word_embeddings", False) or model.get_output_embeddings() is None:
        return None
    out_emb = model.get_output_embeddings()
    for name, module in model.named_modules():
        if module is out_emb:
            return f"{name}.weight"
    return None


def export_hf_model(model, tokenizer: str | None, out_dir: str | os.PathLike, is_global_zero: bool = True,
                    barrier: Callable[[], None] | None = None, dtype: str | None = None) -> str:
    """Export ``model`` (an HF PreTrainedModel) to ``out_dir``; returns the directory.

    ``config.use_cache`` is switched back on in the exported config (training turns it off). Tied input/output
    embeddings stay tied (the output matrix is not written twice). ``dtype`` casts floating weights (e.g.
    "bfloat16") on the way out.
    """
    import torch

    state = full_state_dict(model)
    tied = tied_output_key(model)
    if tied is not None:
        state.pop(tied, None)  # tied to the input embeddings: written once, re-tied on load
    out = Path(out_dir)
    if is_global_zero:
        if dtype is not None:
            target = getattr(torch, dtype)
            state = {k: v.to(target) if v.is_floating_point() else v for k, v in state.items()}
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            config = model.config.__class__.from_dict(model.config.to_dict())
            config.use_cache = True
            if dtype is not None:
                config.dtype = dtype
            # the model's own class writes the config and drops tied duplicates; we pass the gathered weights
            model.save_pretrained(tmp, state_dict=state, safe_serialization=True)
            config.save_pretrained(tmp)
            if getattr(model, "generation_config", None) is not None:
                model.generation_config.save_pretrained(tmp)
            if tokenizer:
                from transformers import AutoTokenizer

                AutoTokenizer.from_pretrained(tokenizer).save_pretrained(tmp)
            if out.exists():
                old = out.with_name(f".{out.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(out, old)
                os.replace(tmp, out)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, out)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    if barrier is not None:
        barrier()
    return str(out)

"""The project's one exporter: model weights -> an HF directory (safetensors, config, tokenizer, generation config)
that transformers and vLLM load.

Works for plain and FSDP2-sharded models: the full state dict is gathered with torch.distributed.checkpoint's
state-dict API (a collective: every rank must call), then rank 0 writes into a temporary directory that is renamed
into place, so a crash never leaves a half-written export.

Model-generic only (torch, transformers): reading Lightning's checkpoint layout and the ``export`` stage live on the
Lightning side, in ``lightning_modules.checkpoint_export``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from skill_distill.io import atomic_directory


def full_state_dict(model) -> dict:
    """The unsharded state dict on CPU (collective when parameters are DTensors)."""
    import torch

    is_sharded = any(type(p).__name__ == "DTensor" for p in model.parameters())
    if is_sharded:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().to("cpu", copy=True) if isinstance(v, torch.Tensor) else v
            for k, v in model.state_dict().items()}


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
    state = full_state_dict(model)
    out = Path(out_dir)
    if is_global_zero:
        write_hf_dir(model, state, tokenizer, out, dtype)
    if barrier is not None:
        barrier()
    return str(out)


def write_hf_dir(model, state: dict, tokenizer: str | None, out_dir: str | os.PathLike,
                 dtype: str | None = None) -> Path:
    """Write ``state`` (full, unsharded, CPU tensors with ``model``'s names) as an HF directory for ``model``'s class
    and config, atomically (temporary directory, then rename). ``model`` may live on the meta device: only its
    class, config and generation config are used."""
    import torch

    tied = tied_output_key(model)
    if tied is not None:
        state = {k: v for k, v in state.items() if k != tied}  # tied to the input embeddings: written once
    out = Path(out_dir)
    if dtype is not None:
        target = getattr(torch, dtype)
        state = {k: v.to(target) if v.is_floating_point() else v for k, v in state.items()}
    with atomic_directory(out) as tmp:
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
            from skill_distill.assets import load_tokenizer

            load_tokenizer(tokenizer).save_pretrained(tmp)
    return out


# ---- a model skeleton for recorded weights ------------------------------------------------------------------
@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Create every ``nn.Parameter`` on the meta device while buffers are computed for real.

    Parameters cost nothing (and their random initialisation is skipped, since it runs on meta tensors); buffers
    that are not in checkpoints, like RoPE ``inv_freq``, keep correct values.
    """
    import torch

    original = torch.nn.Module.register_parameter

    def register_on_meta(module, name, param):
        original(module, name, param)
        if param is not None and param.device.type != "meta":
            kwargs = dict(param.__dict__)
            module._parameters[name] = type(param)(param.to("meta"), requires_grad=param.requires_grad)
            module._parameters[name].__dict__.update(kwargs)

    torch.nn.Module.register_parameter = register_on_meta
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = original


def model_skeleton(hparams: dict, model: str | None = None):
    """The HF model of recorded hyperparameters (``model``: a name or path, or ``model_config``: a config dict;
    the ``model`` argument overrides the recorded one), with its parameters on the meta device: class, config and
    generation config only."""
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    from skill_distill import assets

    source = model or hparams.get("model")
    if hparams.get("model_config") and not model:
        cfg = dict(hparams["model_config"])
        config = AutoConfig.for_model(cfg.pop("model_type", "qwen3"), **cfg)
        source = None
    else:
        from skill_distill.io import DataError

        if not source:
            raise DataError("the checkpoint records no model name or config; pass --model <HF dir or hub name>")
        config = assets.load_pretrained(AutoConfig.from_pretrained, source, "model")
        source = assets.resolve(source)
    with parameters_on_meta():
        skeleton = AutoModelForCausalLM.from_config(config)
    if source and Path(source, "generation_config.json").is_file():
        skeleton.generation_config = GenerationConfig.from_pretrained(source)
    return skeleton

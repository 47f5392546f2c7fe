"""Building an HF causal LM for training or as a frozen teacher: the one implementation both use.

``build_causal_lm`` makes the model from a hub name, local path or ``asset:<name>`` (or from a model config, for
randomly initialised test models). Under a device mesh (Lightning's ``ModelParallelStrategy``) a pretrained model is
built on the meta device, FSDP2-sharded and loaded shard by shard (``sharding.build_sharded_pretrained``); a config
model is built in full and then sharded. Without a mesh it is built in full on the CPU (Lightning moves it).
"""

from __future__ import annotations

from typing import Any

import torch

from lightning_modules import lm_loss, packed_attention
from skill_distill import assets


def build_causal_lm(model: str | None, model_config: dict[str, Any] | None, attn_implementation: str,
                    dtype: torch.dtype, device_mesh=None, device: torch.device | None = None,
                    mixed_precision: bool = True, reshard_after_forward: bool = True, compile_layers: bool = False,
                    gradient_checkpointing: bool = False, setting: str = "model.model"):
    """An HF causal LM in training mode with ``use_cache`` off and ``lm_loss`` attached (see the module docstring).
    ``setting``: the config key that names ``model``, for the one-line error when it cannot be loaded."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if device_mesh is not None and model_config is None:
        from lightning_modules.sharding import build_sharded_pretrained

        return build_sharded_pretrained(model, device_mesh, device, dtype, attn_implementation,
                                        mixed_precision=mixed_precision, reshard_after_forward=reshard_after_forward,
                                        compile_layers=compile_layers, gradient_checkpointing=gradient_checkpointing)
    if model_config is not None:
        cfg = dict(model_config)
        config = AutoConfig.for_model(cfg.pop("model_type", "qwen3"), **cfg)
        config._attn_implementation = attn_implementation
    else:
        config = assets.load_pretrained(AutoConfig.from_pretrained, model, setting)
    packed_attention.check_model_config(config, attn_implementation)
    if model_config is not None:
        hf = AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation, dtype=dtype)
    else:  # the config read above is reused, not parsed again
        hf = AutoModelForCausalLM.from_pretrained(assets.resolve(model), config=config,
                                                  attn_implementation=attn_implementation, dtype=dtype)
    # a cache makes padding-free (packed) batches silently wrong, and training never needs it
    hf.config.use_cache = False
    hf.train()  # from_pretrained returns eval mode; Lightning keeps module modes as they are
    if gradient_checkpointing:
        hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lm_loss.attach(hf)
    if device_mesh is not None:
        from lightning_modules.sharding import apply_fsdp2

        apply_fsdp2(hf, device_mesh, mixed_precision=mixed_precision, reshard_after_forward=reshard_after_forward,
                    compile_layers=compile_layers)
    elif compile_layers:
        for layer in hf.model.layers:
            layer.compile()
    return hf

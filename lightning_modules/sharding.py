"""FSDP2 for HF decoder models, and memory-light construction of large ones.

- ``apply_fsdp2``: ``fully_shard`` per decoder layer, then the root (embeddings, final norm, lm_head; tied input and
  output embeddings stay one parameter), with a bf16-compute / fp32-reduce mixed-precision policy; the training loss
  (``lm_loss.supervised_ce``) is registered as a forward method of the root.
- ``build_sharded_pretrained``: no rank ever holds the full model. Parameters are created on the meta device,
  sharded, allocated as local shards only, then filled from the checkpoint's safetensors with
  torch.distributed.checkpoint, each rank reading only the slices it owns. Buffers (RoPE ``inv_freq``, which is not
  in the checkpoint) are computed for real at construction and put back after allocation.

Runs unchanged on CPU (gloo) and GPU (nccl) under Lightning's ``ModelParallelStrategy``, which builds the device
mesh and calls ``configure_model()`` where this is applied.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from lightning_modules import lm_loss
from lightning_modules.packed_attention import check_model_config
from skill_distill.export import parameters_on_meta
from skill_distill.io import ConfigError


def decoder_layers(model) -> list[torch.nn.Module]:
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise ValueError(f"{type(model).__name__}: cannot find decoder layers at .model.layers for FSDP2")
    return list(layers)


def data_parallel_mesh(device_mesh):
    """The data-parallel sub-mesh of Lightning's (data_parallel, tensor_parallel) mesh, or the mesh itself."""
    return device_mesh["data_parallel"] if "data_parallel" in (device_mesh.mesh_dim_names or ()) else device_mesh


def apply_fsdp2(model, device_mesh, mixed_precision: bool = True, reshard_after_forward: bool = True,
                compile_layers: bool = False) -> None:
    """Shard ``model`` in place over the mesh's data-parallel dimension (works on meta-device parameters too)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    dp_mesh = data_parallel_mesh(device_mesh)
    mp = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if mixed_precision
          else MixedPrecisionPolicy())
    for layer in decoder_layers(model):
        if compile_layers:
            layer.compile()
        fully_shard(layer, mesh=dp_mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward)
    # the root group holds embeddings, final norm and lm_head; tied embeddings stay one parameter
    fully_shard(model, mesh=dp_mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward)
    # the loss runs as a forward of the root (gathered lm_head, gradient hooks on its output): lm_loss.py
    lm_loss.attach(model)
    register_fsdp_forward_method(model, lm_loss.METHOD_NAME)


def resolve_pretrained_dir(name_or_path: str) -> Path:
    """A local HF directory for ``name_or_path`` (downloading config and safetensors from the hub if needed)."""
    from skill_distill import assets

    local = Path(assets.resolve(name_or_path))
    if local.is_dir():
        return local
    try:
        from huggingface_hub import snapshot_download

        patterns = ["*.json", "*.safetensors", "*.txt", "*.jinja"]
        return Path(snapshot_download(str(name_or_path), allow_patterns=patterns))
    except Exception as e:  # noqa: BLE001 - offline, unknown repo, no permission: one line for the user
        raise ConfigError(assets.load_failure("model.model", str(name_or_path), e)) from None


def load_safetensors_into(model, checkpoint_dir: str | os.PathLike) -> None:
    """Fill ``model``'s parameters (plain tensors or FSDP2 DTensor shards) from an HF safetensors directory.

    A collective when parameters are DTensors (every rank calls). Each rank reads only its slices; dtypes are cast
    to the parameters' (e.g. a bf16 checkpoint into fp32 master weights). An output embedding tied to the input
    embedding may be absent from the files. Raises ConfigError naming missing tensors.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageReader

    from skill_distill.export import tied_output_key

    directory = Path(checkpoint_dir)
    if not any(directory.glob("*.safetensors")):
        raise ConfigError(f"{directory}: no *.safetensors files; sharded loading needs safetensors weights "
                          "(re-save the model with save_pretrained(safe_serialization=True))")
    reader = HuggingFaceStorageReader(str(directory))
    available = set(reader.read_metadata().state_dict_metadata)
    state = {k: v for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
    tied = tied_output_key(model)
    if tied in state and tied not in available:
        state.pop(tied)  # the same parameter as the input embedding, loaded through it
    missing = sorted(set(state) - available)
    if missing:
        raise ConfigError(f"{directory}: {len(missing)} weights of {type(model).__name__} are not in the checkpoint "
                          f"(e.g. {missing[:3]}); is it the right architecture?")
    dcp.load(state, storage_reader=reader)


def build_sharded_pretrained(name_or_path: str, device_mesh, device: torch.device, dtype: torch.dtype,
                             attn_implementation: str, mixed_precision: bool = True,
                             reshard_after_forward: bool = True, compile_layers: bool = False,
                             gradient_checkpointing: bool = False):
    """An HF causal LM from a checkpoint, FSDP2-sharded, never materialised in full on any rank.

    Steps: parameters on meta -> ``apply_fsdp2`` -> allocate local shards on ``device`` -> restore the buffers ->
    read each rank's slices of the safetensors (``load_safetensors_into``). A collective: every rank calls.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    directory = resolve_pretrained_dir(name_or_path)
    config = AutoConfig.from_pretrained(directory)
    check_model_config(config, attn_implementation)
    with parameters_on_meta():
        model = AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation, dtype=dtype)
    if (directory / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(directory)
    model.config.use_cache = False  # packed batches need it off; training never needs a cache
    model.train()
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    apply_fsdp2(model, device_mesh, mixed_precision=mixed_precision, reshard_after_forward=reshard_after_forward,
                compile_layers=compile_layers)
    model.to_empty(device=device)
    with torch.no_grad():
        for name, value in buffers.items():
            model.get_buffer(name).copy_(value)
    load_safetensors_into(model, directory)
    return model

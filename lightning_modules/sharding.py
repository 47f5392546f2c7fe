"""FSDP2 for HF decoder models: ``fully_shard`` per decoder layer, then the root.

Runs unchanged on CPU (gloo) and GPU (nccl) under Lightning's ``ModelParallelStrategy``, which builds the device
mesh and calls ``configure_model()`` where this is applied.
"""

from __future__ import annotations

import torch
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard


def decoder_layers(model) -> list[torch.nn.Module]:
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise ValueError(f"{type(model).__name__}: cannot find decoder layers at .model.layers for FSDP2")
    return list(layers)


def apply_fsdp2(model, device_mesh, mixed_precision: bool = True, reshard_after_forward: bool = True,
                compile_layers: bool = False) -> None:
    """Shard ``model`` in place over the mesh's data-parallel dimension."""
    dp_mesh = device_mesh["data_parallel"] if "data_parallel" in (device_mesh.mesh_dim_names or ()) else device_mesh
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if mixed_precision else MixedPrecisionPolicy()
    for layer in decoder_layers(model):
        if compile_layers:
            layer.compile()
        fully_shard(layer, mesh=dp_mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward)
    # the root group holds embeddings, final norm and lm_head; tied embeddings stay one parameter
    fully_shard(model, mesh=dp_mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward)

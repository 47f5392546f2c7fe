"""Memory-light sharded loading vs plain transformers, on 2 ranks (launched by tests/test_fsdp2.py as 2 processes
with RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT set).

CausalLMModule.configure_model() under a device mesh builds the tiny Qwen3 on the meta device, FSDP2-shards it and
reads each rank's slices of the safetensors. Rank 0 writes a JSON of measured differences against
``AutoModelForCausalLM.from_pretrained`` of the same directory:
- fp32 policy: logits, and gradients with per-layer activation checkpointing (both ranks see the same batch, so the
  averaged gradient equals the single-process one);
- bf16 mixed-precision policy: logits against the same model cast to bf16;
- tied embeddings stay one parameter; RoPE inv_freq (a buffer absent from checkpoints) is correct.
"""

from __future__ import annotations

import argparse
import json
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    cuda = torch.cuda.is_available()  # scripts/first_gpu_run.py runs this over NCCL
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    dist.init_process_group("nccl" if cuda else "gloo")
    from torch.distributed.device_mesh import init_device_mesh
    from transformers import AutoModelForCausalLM

    from lightning_modules import CausalLMModule

    mesh = init_device_mesh(device.type, (dist.get_world_size(),), mesh_dim_names=("data_parallel",))
    ids = torch.tensor([[151644, 872, 198, 3838, 374, 220, 17, 10, 17, 30, 151645, 198, 151644, 77091, 198]],
                       device=device)
    labels = ids.roll(-1, dims=1)

    def sharded(mixed_precision: bool):
        module = CausalLMModule(model=args.model, attn_implementation="sdpa", gradient_checkpointing=True,
                                fsdp_mixed_precision=mixed_precision)
        module._device_mesh = mesh
        module.configure_model()
        return module.model

    fsdp = sharded(False)
    fsdp_logits = fsdp(input_ids=ids).logits
    F.cross_entropy(fsdp_logits[0], labels[0]).backward()
    fsdp_grads = {n: p.grad.full_tensor() for n, p in fsdp.named_parameters()}
    inner = fsdp.model
    tied = fsdp.lm_head.weight is inner.embed_tokens.weight
    is_dtensor = type(inner.layers[0].self_attn.q_proj.weight).__name__ == "DTensor"
    local_rows = inner.embed_tokens.weight.to_local().shape[0]
    inv_freq = inner.rotary_emb.inv_freq.clone()

    mp = sharded(True)
    with torch.no_grad():
        mp_logits = mp(input_ids=ids).logits.float()

    if dist.get_rank() == 0:
        plain = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32, attn_implementation="sdpa")
        plain = plain.to(device)
        plain.train()
        plain.config.use_cache = False
        logits = plain(input_ids=ids, use_cache=False).logits
        F.cross_entropy(logits[0], labels[0]).backward()
        grad_diff = max((fsdp_grads[n] - p.grad).abs().max().item() for n, p in plain.named_parameters())
        inv_freq_diff = (inv_freq - plain.model.rotary_emb.inv_freq).abs().max().item()
        with torch.no_grad():  # (casts buffers too: compare inv_freq before this)
            bf16_logits = plain.to(torch.bfloat16)(input_ids=ids, use_cache=False).logits.float()
        result = {
            "world_size": dist.get_world_size(),
            "params_are_dtensors": is_dtensor,
            "local_embedding_rows": local_rows,
            "vocab_size": plain.config.vocab_size,
            "tied": tied,
            "inv_freq_diff": inv_freq_diff,
            "logits_diff_fp32": (fsdp_logits.detach() - logits.detach()).abs().max().item(),
            "logits_scale": logits.detach().abs().max().item(),
            "grad_diff_fp32": grad_diff,
            "grad_names": sorted(fsdp_grads) == sorted(n for n, _ in plain.named_parameters()),
            "logits_diff_bf16": (mp_logits - bf16_logits).abs().max().item(),
            "bf16_scale": bf16_logits.abs().max().item(),
        }
        with open(args.out, "w") as f:
            json.dump(result, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()

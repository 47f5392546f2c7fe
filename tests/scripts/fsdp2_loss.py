"""The chunked loss inside the FSDP2 root's forward, on 2 ranks (launched by tests/test_fsdp2.py as 2 processes with
RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT set).

Both ranks build the tiny Qwen3 (real 151,936-token vocabulary, tied embeddings) through CausalLMModule under a
device mesh (fp32 policy), each takes its half of a packed batch of real token ids, and calls
``model.supervised_ce`` (a registered forward of the root: gathered lm_head, gradient hooks on its output) with
``linear_ce``; the loss is normalised by the supervised tokens of both halves, as training_step does. Rank 0 runs
the whole batch through the unsharded model with today's dense loss and writes the differences of loss and
gradients as JSON.
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.distributed as dist


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--batch", required=True, help="torch.save'd list of two packed batches (one per rank)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    from torch.distributed.device_mesh import init_device_mesh

    from lightning_modules import CausalLMModule

    rank, world = dist.get_rank(), dist.get_world_size()
    halves = torch.load(args.batch)
    step_tokens = sum(int((b["labels"] != -100).sum()) for b in halves)
    mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("data_parallel",))

    module = CausalLMModule(model=args.model, attn_implementation="sdpa_packed", gradient_checkpointing=True,
                            fsdp_mixed_precision=False, loss_implementation="linear_ce", loss_chunk_size=16)
    module._device_mesh = mesh
    module.configure_model()
    fsdp = module.model
    batch = halves[rank]
    ce, n = module.forward_ce(batch)
    (ce * world / step_tokens).backward()  # FSDP2 averages gradients over ranks; undo it as training_step does
    grads = {name: p.grad.full_tensor() for name, p in fsdp.named_parameters()}
    totals = torch.tensor([ce.item(), float(n)], dtype=torch.float64)
    dist.all_reduce(totals)
    tied = fsdp.lm_head.weight is fsdp.model.embed_tokens.weight

    if rank == 0:
        plain_module = CausalLMModule(model=args.model, attn_implementation="sdpa_packed", loss_implementation="dense")
        plain_module.configure_model()
        plain = plain_module.model
        ref_ce = sum(plain_module.forward_ce(b)[0] for b in halves)
        (ref_ce / step_tokens).backward()
        grad_diff = max((grads[name] - p.grad).abs().max().item() for name, p in plain.named_parameters())
        grad_scale = max(p.grad.abs().max().item() for p in plain.parameters())
        result = {"world_size": world, "tied": tied, "registered": "supervised_ce" in vars(fsdp),
                  "is_fsdp": type(fsdp).__name__.startswith("FSDP"), "grad_names": sorted(grads),
                  "loss": totals[0].item() / step_tokens, "ref_loss": ref_ce.item() / step_tokens,
                  "tokens": totals[1].item(), "step_tokens": step_tokens, "grad_diff": grad_diff,
                  "grad_scale": grad_scale}
        with open(args.out, "w") as f:
            json.dump(result, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

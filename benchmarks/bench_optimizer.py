"""CPU time of one AdamW step with torch's three kernels (``model.optimizer_implementation``): fused (the module's
default), foreach, and the for-loop torch uses on CPU when not told.

Each model's parameters are built by ``CausalLMModule.configure_model`` and stepped by the optimizer its
``configure_optimizers`` returns, with fixed random gradients: the tiny Qwen3 of the tests (real 151,936-token
vocabulary, tied embeddings, hidden 128: 19.7M parameters) and a 4-layer Qwen3 of hidden 1,024 (the Qwen3-0.6B
layer shape, 32k vocabulary). The kernels alternate, ``--rounds`` times ``--steps`` steps each, one thread; printed:
the median CPU ms per step of each kernel and its ratio to the for-loop, and the largest difference of the weights
after the same steps (fp32 rounding only).

    .venv/bin/python benchmarks/bench_optimizer.py [--rounds 5] [--steps 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_modules.causal_lm import CausalLMModule  # noqa: E402
from skill_distill.assets import tiny_qwen3_config  # noqa: E402

MODELS = {
    "tiny Qwen3 (tests)": tiny_qwen3_config().to_dict(),
    "4 layers of Qwen3-0.6B's shape": dict(model_type="qwen3", vocab_size=32768, hidden_size=1024,
                                           intermediate_size=3072, num_hidden_layers=4, num_attention_heads=16,
                                           num_key_value_heads=8, head_dim=128, tie_word_embeddings=True),
}
KERNELS = ("fused", "foreach", "for-loop")


def stepper(config: dict, kernel: str):
    """The module's optimizer over its parameters, gradients set; returns (optimizer, model)."""
    torch.manual_seed(0)
    module = CausalLMModule(model_config=config, optimizer_implementation=kernel)
    module.configure_model()
    optimizer = module.configure_optimizers()["optimizer"]
    for group in optimizer.param_groups:
        group["lr"] = 1e-4  # the schedule's warm-up starts at 0
    grads = torch.Generator().manual_seed(1)
    for p in module.model.parameters():
        p.grad = torch.randn(p.shape, generator=grads)
    optimizer.step()  # the state (m, v) exists before the timed steps
    return optimizer, module.model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for name, config in MODELS.items():
        runs = {kernel: stepper(config, kernel) for kernel in KERNELS}
        count = sum(p.numel() for p in runs["fused"][1].parameters())
        ms: dict[str, list[float]] = {kernel: [] for kernel in KERNELS}
        for _ in range(args.rounds):
            for kernel, (optimizer, _) in runs.items():
                start = time.process_time()
                for _ in range(args.steps):
                    optimizer.step()
                ms[kernel].append((time.process_time() - start) / args.steps * 1000)
        loop = statistics.median(ms["for-loop"])
        print(f"{name}, {count / 1e6:.1f}M parameters: " + ", ".join(
            f"{kernel} {statistics.median(ms[kernel]):.1f} ms ({statistics.median(ms[kernel]) / loop:.3f}x)"
            for kernel in KERNELS))
        weights = {kernel: dict(model.named_parameters()) for kernel, (_, model) in runs.items()}
        diff = max((weights["fused"][k] - weights["for-loop"][k]).abs().max().item() for k in weights["fused"])
        print(f"  largest weight difference, fused vs for-loop, after the same steps: {diff:.2e}")


if __name__ == "__main__":
    main()

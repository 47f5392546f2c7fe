"""AdamW's kernels are a setting (``model.optimizer_implementation``): fused by default (one kernel per step over
every parameter), and fused, foreach and for-loop make the same update. An unknown kernel is a one-line error
(``test_run_safety.user_mistakes``)."""

from __future__ import annotations

import torch

from lightning_modules.causal_lm import CausalLMModule

TINY_QWEN3 = dict(model_type="qwen3", vocab_size=1024, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=2, num_key_value_heads=1, head_dim=16, tie_word_embeddings=True)


def weights_after_two_steps(**kernel) -> tuple[torch.optim.Optimizer, dict[str, torch.Tensor]]:
    module = CausalLMModule(model_config=TINY_QWEN3, learning_rate=1e-2, weight_decay=0.1, **kernel)
    torch.manual_seed(0)
    module.configure_model()
    optimizer = module.configure_optimizers()["optimizer"]
    for group in optimizer.param_groups:
        group["lr"] = 1e-2  # the schedule's warm-up starts at 0; its factor is tested in test_lr_schedule
    grads = torch.Generator().manual_seed(1)
    for _ in range(2):
        for p in module.model.parameters():
            p.grad = torch.randn(p.shape, generator=grads)
        optimizer.step()
    return optimizer, {k: v.detach().clone() for k, v in module.model.state_dict().items()}


def test_fused_by_default_and_every_kernel_makes_the_same_update():
    default, fused = weights_after_two_steps()
    assert default.defaults["fused"] is True
    initial = CausalLMModule(model_config=TINY_QWEN3)
    torch.manual_seed(0)
    initial.configure_model()
    assert any(not torch.equal(fused[k], v) for k, v in initial.model.state_dict().items())  # the steps moved them
    for name, flags in (("foreach", {"foreach": True}), ("for-loop", {"foreach": False})):
        optimizer, weights = weights_after_two_steps(optimizer_implementation=name)
        assert {k: optimizer.defaults[k] for k in flags} == flags and not optimizer.defaults["fused"]
        for key, value in fused.items():
            torch.testing.assert_close(weights[key], value, rtol=1e-5, atol=1e-6, msg=key)


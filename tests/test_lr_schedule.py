"""The warmup + cosine schedule comes from transformers, stays lazy (its length is read at the first real step, never
at construction) and gives the values of the formula the project used before, to 1e-9."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_modules.causal_lm import LazyWarmupCosine


def formula(step: int, total: int, warmup_ratio: float, min_lr_ratio: float) -> float:
    """The project's former hand-written schedule (HF's cosine-with-warmup, progress clamped at the end)."""
    if step == 0:
        return 0.0 if warmup_ratio > 0 else 1.0
    warmup = math.ceil(total * warmup_ratio)
    if step < warmup:
        return step / warmup
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


@pytest.mark.parametrize("total,warmup_ratio,min_lr_ratio", [(625, 0.1, 0.0), (7, 0.1, 0.0), (100, 0.0, 0.0),
                                                             (50, 0.25, 0.1), (1, 0.1, 0.0)])
def test_values_equal_the_former_formula(total, warmup_ratio, min_lr_ratio):
    schedule = LazyWarmupCosine(warmup_ratio, min_lr_ratio, lambda: total)
    for step in range(total + 3):  # a few steps past the end stay at the floor
        assert schedule(step) == pytest.approx(formula(step, total, warmup_ratio, min_lr_ratio), abs=1e-9), step


def test_length_is_read_at_the_first_real_step_only():
    asked = []
    schedule = LazyWarmupCosine(0.1, 0.0, lambda: asked.append(1) or 20)
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=1e-5)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: schedule(step))
    assert asked == [] and optimizer.param_groups[0]["lr"] == 0.0  # construction evaluates step 0 only
    optimizer.step()
    scheduler.step()
    assert asked == [1] and optimizer.param_groups[0]["lr"] == pytest.approx(1e-5 * 1 / 2)  # warmup of 2 steps
    for _ in range(5):
        optimizer.step()
        scheduler.step()
    assert asked == [1]

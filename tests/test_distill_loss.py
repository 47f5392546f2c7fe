"""The chunked distillation losses (lightning_modules/distill_loss.py) equal dense references built from full logits
and ``torch.nn.functional.kl_div``, values and gradients, in fp32; top-k plus the tail bucket equals the full KL when
k is the whole vocabulary; ``token_logprobs`` equals a dense log-softmax, gradients included."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lightning_modules import distill_loss as dl

ROWS, HIDDEN, T_HIDDEN, VOCAB = 37, 16, 24, 300


def inputs(seed: int = 0, bias: bool = False):
    g = torch.Generator().manual_seed(seed)
    states = torch.randn(ROWS, HIDDEN, generator=g, dtype=torch.float64).float().requires_grad_(True)
    weight = (0.5 * torch.randn(VOCAB, HIDDEN, generator=g)).requires_grad_(True)
    b = (0.1 * torch.randn(VOCAB, generator=g)).requires_grad_(True) if bias else None
    targets = torch.randint(0, VOCAB, (ROWS,), generator=g)
    teacher = dl.TeacherLogits(torch.randn(ROWS, T_HIDDEN, generator=g),
                               0.5 * torch.randn(VOCAB, T_HIDDEN, generator=g))
    return states, weight, b, targets, teacher


def dense_reference(states, weight, bias, targets, teacher_logits, alpha, kind, beta, tau):
    """Full logits at once; each divergence written with F.kl_div (input: log q of the 'other' side)."""
    logits = F.linear(states, weight, bias)
    ce = F.cross_entropy(logits, targets, reduction="sum")
    d = reference_divergence(F.log_softmax(logits / tau, -1), F.log_softmax(teacher_logits / tau, -1), kind, beta)
    return alpha * ce + (1 - alpha) * tau**2 * d, ce, d


def reference_divergence(s, t, kind, beta):
    """D summed over rows from the student's and the teacher's log-distributions, written with F.kl_div (whose
    input is the log-distribution of the second argument of KL)."""
    if kind == "forward_kl":  # KL(p_T || p_S)
        return F.kl_div(s, t, reduction="sum", log_target=True)
    if kind == "reverse_kl":  # KL(p_S || p_T)
        return F.kl_div(t, s, reduction="sum", log_target=True)
    m = torch.log(beta * t.exp() + (1 - beta) * s.exp())
    return beta * F.kl_div(m, t, reduction="sum", log_target=True) \
        + (1 - beta) * F.kl_div(m, s, reduction="sum", log_target=True)


def grads_of(loss, tensors):
    return torch.autograd.grad(loss, [t for t in tensors if t is not None])


def assert_all_close(got, expected):
    """Pairwise equal to 1e-5 (values and gradients alike)."""
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind,beta", [("forward_kl", 0.5), ("reverse_kl", 0.5), ("jsd", 0.5), ("jsd", 0.1)])
@pytest.mark.parametrize("alpha,tau,chunk,bias", [(0.0, 1.0, 5, False), (0.5, 1.0, 7, True), (0.3, 2.0, 8, True),
                                                (0.5, 0.7, 1000, False)])
def test_in_process_teacher_equals_the_dense_reference(kind, beta, alpha, tau, chunk, bias):
    states, weight, b, targets, teacher = inputs(bias=bias)
    teacher_logits = F.linear(teacher.states, teacher.weight)
    ref, ref_ce, ref_d = dense_reference(states, weight, b, targets, teacher_logits, alpha, kind, beta, tau)
    ref_grads = grads_of(ref, (states, weight, b))
    loss, ce, d = dl.supervised_kd(states, weight, b, targets, teacher, alpha, kind, beta, tau, chunk)
    grads = grads_of(loss, (states, weight, b))
    assert ref_d.item() > 1.0  # two random models disagree: the check below compares non-trivial numbers
    assert_all_close((loss, ce, d, *grads), (ref, ref_ce, ref_d, *ref_grads))


@pytest.mark.parametrize("kind", dl.DIVERGENCES)
def test_topk_with_the_whole_vocabulary_equals_the_full_loss(kind):
    """Stored top-k = every id (in a shuffled order), tail mass 0: the same loss and gradients as the full teacher."""
    states, weight, _, targets, teacher = inputs(seed=1)
    teacher_logp = F.log_softmax(F.linear(teacher.states, teacher.weight), -1)
    order = torch.stack([torch.randperm(VOCAB, generator=torch.Generator().manual_seed(i)) for i in range(ROWS)])
    topk = dl.TeacherTopK(order, teacher_logp.gather(-1, order))
    full, _, full_d = dl.supervised_kd(states, weight, None, targets, teacher, 0.2, kind, 0.5, 1.0, 6)
    full_grads = grads_of(full, (states, weight))
    stored, _, stored_d = dl.supervised_kd(states, weight, None, targets, topk, 0.2, kind, 0.5, 1.0, 6)
    stored_grads = grads_of(stored, (states, weight))
    assert_all_close((stored_d, stored, *stored_grads), (full_d, full, *full_grads))


@pytest.mark.parametrize("kind", dl.DIVERGENCES)
def test_topk_with_a_tail_equals_the_bucketed_dense_divergence(kind):
    """k = 7 of 300: the student's probabilities outside the k ids are summed into one bucket, the teacher's tail is
    1 - the top-k mass; equal to the divergence of those (k + 1)-bucket distributions built densely."""
    states, weight, _, targets, teacher = inputs(seed=2)
    teacher_logp = F.log_softmax(F.linear(teacher.states, teacher.weight), -1)
    top_lp, top_ids = teacher_logp.topk(7, dim=-1)
    loss, _, d = dl.supervised_kd(states, weight, None, targets, dl.TeacherTopK(top_ids, top_lp.half()), 0.0, kind,
                                  0.5, 1.0, 4)
    grads = grads_of(loss, (states, weight))
    s = F.log_softmax(F.linear(states, weight), -1)
    in_top = torch.zeros_like(s, dtype=torch.bool).scatter(-1, top_ids, True)
    s_buckets = torch.cat([s.gather(-1, top_ids), torch.logsumexp(s.masked_fill(in_top, -torch.inf), -1, True)], -1)
    p_top = top_lp.half().float()
    t_buckets = torch.cat([p_top, (1 - p_top.exp().sum(-1, keepdim=True)).log()], -1)
    ref = reference_divergence(s_buckets, t_buckets, kind, 0.5)
    assert_all_close((d, *grads), (ref, *grads_of(ref, (states, weight))))


def test_token_logprobs_equals_log_softmax_with_gradients():
    states, weight, _, targets, _ = inputs(seed=3)
    ref = F.log_softmax(F.linear(states, weight), -1).gather(-1, targets[:, None]).squeeze(-1)
    ref_grads = grads_of((ref * torch.arange(ROWS)).sum(), (states, weight))
    got = dl.token_logprobs(states, weight, targets, chunk_size=5)
    assert_all_close((got, *grads_of((got * torch.arange(ROWS)).sum(), (states, weight))), (ref, *ref_grads))


def test_tied_weight_gradient_sums_both_uses():
    """The student's output weight also used as its input embedding (tied): one parameter, both gradients."""
    states, weight, _, targets, teacher = inputs(seed=4)
    tokens = torch.randint(0, VOCAB, (ROWS,), generator=torch.Generator().manual_seed(5))
    def hidden():  # the weight's first use: the input embedding
        return torch.tanh(F.embedding(tokens, weight) + states)

    loss, _, _ = dl.supervised_kd(hidden(), weight, None, targets, teacher, 0.5, "forward_kl", 0.5, 1.0, 7)
    ref, _, _ = dense_reference(hidden(), weight, None, targets, F.linear(teacher.states, teacher.weight), 0.5,
                                "forward_kl", 0.5, 1.0)
    torch.testing.assert_close(grads_of(loss, (weight,))[0], grads_of(ref, (weight,))[0], rtol=1e-5, atol=1e-5)

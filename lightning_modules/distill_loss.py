"""Logit distillation losses over the supervised positions, chunked so that no model's full-sequence logits exist.

Pure torch (no Lightning). The interface other code uses:

- :func:`supervised_kd`: ``alpha x CE + (1 - alpha) x tau^2 x D`` summed over the given rows (supervised positions),
  with D one of ``forward_kl`` = KL(p_T || p_S), ``reverse_kl`` = KL(p_S || p_T), ``jsd`` = GKD's generalised JSD
  ``beta KL(p_T || M) + (1 - beta) KL(p_S || M)``, ``M = beta p_T + (1 - beta) p_S``, both distributions taken from
  logits / tau. The teacher is either in-process (:class:`TeacherLogits`: its final hidden states at the same rows and
  its output embedding) or stored (:class:`TeacherTopK`: top-k token ids and logprobs per row, the remaining mass
  1 - sum of the top-k probabilities being one extra "tail" bucket, compared with the student's mass outside those k
  ids). Returns the loss sum, the CE sum and the D sum (the last two detached, for logging); the caller normalises
  by the step's supervised tokens exactly as for plain SFT (``CausalLMModule.training_step``).
- :func:`token_logprobs`: ``log p(targets)`` per row from hidden states and an output embedding, chunked (on-policy
  distillation scores sampled tokens with it); differentiable, each chunk's logits recomputed in backward.
- :func:`divergence`: D per row from two log-distributions over the same buckets (the dense formula).
- :func:`row_divergence`: D per row against an in-process teacher, chunked, without gradient (the held-out per-skill
  divergence of the evaluation report).

Chunking follows ``lm_loss.linear_ce``: rows are taken ``chunk_size`` at a time; a chunk's student logits (and the
teacher's) are computed, the loss and its gradient with respect to those logits are computed at once (autograd on the
chunk alone), turned into the gradients of the hidden states, the output weight and bias, and the logits are freed.
The gradients are handed to autograd in backward (:class:`_ChunkedDistillation`), so the step's peak holds one chunk's
logits, never (rows x vocabulary). Under FSDP2 call it inside the student root's forward (``CausalLMModule`` registers
``supervised_kd`` as a forward method), where the output embedding is gathered and its gradient hooks attach.

Temperature: D is multiplied by tau^2 (Hinton et al.), which keeps the soft-target gradient's scale independent of
tau; the CE term always uses tau = 1. Stored top-k logprobs are the teacher's at tau = 1 and are only used with tau = 1
(the config refuses other values), since the tail cannot be re-tempered.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from skill_distill.io import ConfigError

Divergence = Literal["forward_kl", "reverse_kl", "jsd"]
DIVERGENCES = ("forward_kl", "reverse_kl", "jsd")
LOG_FLOOR = -30.0
"""Teacher log-probabilities below this (p < 1e-13) count as this in reverse KL: a tail bucket whose stored mass
rounds to 0 (fp16 top-k probabilities summing to about 1) would otherwise make the reverse KL infinite."""
_MASKED = -1e30  # a finite stand-in for -inf: an all-masked logsumexp keeps finite gradients


@dataclass
class TeacherLogits:
    """An in-process teacher at the loss's rows: ``states`` (rows x teacher hidden), its output embedding."""

    states: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor | None = None


@dataclass
class TeacherTopK:
    """Stored teacher top-k at the loss's rows: ``ids`` (rows x k, int) and ``logprobs`` (rows x k, at tau = 1)."""

    ids: torch.Tensor
    logprobs: torch.Tensor


def divergence(student_logp: torch.Tensor, teacher_logp: torch.Tensor, kind: str, beta: float = 0.5) -> torch.Tensor:
    """D per row (summed over the last dimension) of two log-distributions over the same buckets.

    ``teacher_logp`` may hold -inf (a bucket of zero teacher mass); ``student_logp`` must be finite."""
    p = teacher_logp.exp()
    if kind == "forward_kl":
        return (torch.xlogy(p, p) - p * student_logp).sum(-1)
    if kind == "reverse_kl":
        q = student_logp.exp()
        return (q * (student_logp - teacher_logp.clamp_min(LOG_FLOOR))).sum(-1)
    if kind == "jsd":
        q = student_logp.exp()
        log_m = torch.logaddexp(teacher_logp + math.log(beta), student_logp + math.log1p(-beta))
        return (beta * (torch.xlogy(p, p) - p * log_m) + (1 - beta) * q * (student_logp - log_m)).sum(-1)
    raise ValueError(f"unknown divergence {kind!r}; use one of {', '.join(DIVERGENCES)}")


def topk_bucket_logprobs(logits: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log-probabilities of the k given ids and of the rest (one tail bucket), rows x (k + 1); and the rows whose
    k ids are the whole vocabulary (an empty tail, whose bucket then holds no mass on either side)."""
    top = logits.gather(-1, ids)
    tail = torch.logsumexp(logits.scatter(-1, ids, _MASKED), dim=-1, keepdim=True)
    return torch.log_softmax(torch.cat([top, tail], dim=-1), dim=-1), tail.squeeze(-1) < _MASKED / 2


def stored_bucket_logprobs(logprobs: torch.Tensor) -> torch.Tensor:
    """The stored top-k logprobs and the log of the tail mass 1 - sum(exp): rows x (k + 1), fp32."""
    logprobs = logprobs.float()
    tail = (1 - logprobs.exp().sum(-1, keepdim=True)).clamp_min(0)
    return torch.cat([logprobs, tail.log()], dim=-1)


def _chunk_loss(logits, targets, teacher_logp, teacher_ids, alpha, kind, beta, tau):
    """(loss sum, CE sum, D sum) of one chunk from its fp32 student logits."""
    ce = F.cross_entropy(logits, targets, reduction="sum")  # also logged when alpha = 0
    scaled = logits / tau if tau != 1 else logits
    if teacher_ids is None:
        student = torch.log_softmax(scaled, dim=-1)
    else:
        student, empty_tail = topk_bucket_logprobs(scaled, teacher_ids)
        # the stored tail mass of such a row is rounding error of the top-k sum: exactly 0 there
        teacher_logp = teacher_logp.clone()
        teacher_logp[empty_tail, -1] = -torch.inf
    d = divergence(student, teacher_logp, kind, beta).sum()
    return alpha * ce + (1 - alpha) * tau * tau * d, ce, d


def _linear_into(out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` as fp32, written into ``out`` (a reused chunk buffer: a fresh (chunk x vocabulary)
    block per chunk costs its page faults every time); a matmul of another dtype is computed, then copied."""
    if x.dtype != out.dtype or weight.dtype != out.dtype:
        return out.copy_(F.linear(x, weight, bias))
    if bias is None:
        return torch.mm(x, weight.t(), out=out)
    return torch.addmm(bias.to(out.dtype), x, weight.t(), out=out)


def _forward_kl_chunk(logits, targets, teacher_logits, scratch, alpha, tau):
    """(loss sum, CE sum, D sum, d loss / d logits) of one chunk for forward KL against full teacher logits, in
    closed form: d/dz [alpha CE + (1 - alpha) tau^2 KL(p_T || q_tau)] = alpha (softmax(z) - onehot(y)) +
    (1 - alpha) tau (q_tau - p_T). Autograd through ``_chunk_loss`` runs about 15 vocabulary-wide kernels per chunk
    for this, which made the KD step 2.83x an SFT step's time (benchmarks/bench_distillation.py). Here, in three
    (rows x vocabulary) fp32 buffers that the caller reuses for every chunk (``logits``, ``teacher_logits``: both
    models' raw logits, overwritten; ``scratch``): log q by one fused log-softmax, CE gathered from it (at tau 1), the
    teacher's log p and p, KL = sum p (log p - log q) in place, and the gradient built in log q's
    memory (returned: a view of ``scratch``)."""
    rows = torch.arange(logits.shape[0], device=logits.device)
    log_q = scratch
    softmax_z = None
    if tau == 1:
        torch.log_softmax(logits, dim=-1, out=log_q)
        ce = -log_q[rows, targets].sum()
    else:  # the CE and its gradient term are at tau 1
        ce = (torch.logsumexp(logits, dim=-1) - logits[rows, targets]).sum()
        softmax_z = torch.softmax(logits, dim=-1) if alpha else None
        torch.log_softmax(logits.div_(tau), dim=-1, out=log_q)
        teacher_logits.div_(tau)
    log_p = torch.log_softmax(teacher_logits, dim=-1, out=logits)  # the student's logits are no longer needed
    p = torch.exp(log_p, out=teacher_logits)
    # sum p (log p - log q) in log p's memory (no longer needed after): two elementwise passes and a cascade sum,
    # several times faster on CPU than the (rows x 1 x V) @ (rows x V x 1) batched product it replaces
    d = log_p.sub_(log_q).mul_(p).sum()
    q = log_q.exp_()
    if tau == 1:  # q is softmax(z) itself: alpha q + (1 - alpha) (q - p_T) = q - (1 - alpha) p_T
        g = q.sub_(p, alpha=1 - alpha)
    else:
        g = q.sub_(p).mul_((1 - alpha) * tau)
        if alpha:
            g.add_(softmax_z, alpha=alpha)
    if alpha:
        g[rows, targets] -= alpha
    return alpha * ce + (1 - alpha) * tau * tau * d, ce, d, g


class _ChunkedDistillation(torch.autograd.Function):
    """The chunked loss with its gradients computed during forward (as ``lm_loss._ChunkedLinearCE`` does)."""

    @staticmethod
    def forward(ctx, states, weight, bias, targets, teacher, alpha, kind, beta, tau, chunk_size):
        need_states, need_weight, need_bias = ctx.needs_input_grad[:3]
        g_states = torch.zeros_like(states) if need_states else None
        g_weight = torch.zeros_like(weight, dtype=torch.float32) if need_weight else None
        g_bias = torch.zeros_like(bias, dtype=torch.float32) if bias is not None and need_bias else None
        total = states.new_zeros((), dtype=torch.float32)
        ce_sum, d_sum = total.clone(), total.clone()
        closed_form = kind == "forward_kl" and isinstance(teacher, TeacherLogits)
        if closed_form:  # both models' logits and a scratch block, (chunk x vocabulary) fp32, reused by every chunk
            buffers = states.new_empty((3, min(chunk_size, states.shape[0]), weight.shape[0]), dtype=torch.float32)
        for start in range(0, states.shape[0], chunk_size):
            rows = slice(start, start + chunk_size)
            h = states[rows]
            if closed_form:
                with torch.no_grad():
                    logits, t_logits, scratch = (b[:h.shape[0]] for b in buffers)
                    _linear_into(logits, h, weight, bias)
                    _linear_into(t_logits, teacher.states[rows], teacher.weight, teacher.bias)
                    loss, ce, d, g_logits = _forward_kl_chunk(logits, targets[rows], t_logits, scratch, alpha, tau)
                del logits, t_logits, scratch
            else:
                with torch.no_grad():
                    if isinstance(teacher, TeacherLogits):
                        t_logits = F.linear(teacher.states[rows], teacher.weight, teacher.bias).float()
                        teacher_logp = torch.log_softmax(t_logits if tau == 1 else t_logits / tau, dim=-1)
                        teacher_ids = None
                        del t_logits
                    else:
                        teacher_ids = teacher.ids[rows].long()
                        teacher_logp = stored_bucket_logprobs(teacher.logprobs[rows])
                    logits = F.linear(h, weight, bias).float()
                logits.requires_grad_(True)
                with torch.enable_grad():
                    loss, ce, d = _chunk_loss(logits, targets[rows], teacher_logp, teacher_ids, alpha, kind, beta,
                                              tau)
                    (g_logits,) = torch.autograd.grad(loss, logits)
                del logits, teacher_logp
            total += loss.detach()
            ce_sum += ce.detach()
            d_sum += d.detach()
            g = g_logits.to(weight.dtype)
            if g_states is not None:
                g_states[rows] = g @ weight
            if g_weight is not None:  # accumulated in fp32 whatever the weight's dtype, without a temporary
                if g.dtype == torch.float32 and h.dtype == torch.float32:
                    g_weight.addmm_(g.t(), h)
                else:
                    g_weight.add_(g.t() @ h)
            if g_bias is not None:
                g_bias.add_(g_logits.sum(0))
            del g_logits, g
        ctx.grads = (g_states, None if g_weight is None else g_weight.to(weight.dtype),
                     None if g_bias is None else g_bias.to(bias.dtype))
        ctx.mark_non_differentiable(ce_sum, d_sum)
        return total, ce_sum, d_sum

    @staticmethod
    def backward(ctx, grad_loss, _grad_ce, _grad_d):
        grads, ctx.grads = ctx.grads, None
        if grads is None:
            raise RuntimeError("supervised_kd backward called twice; retain_graph is not supported")
        g_states, g_weight, g_bias = (None if g is None else g.mul_(grad_loss.to(g.dtype)) for g in grads)
        return g_states, g_weight, g_bias, None, None, None, None, None, None, None


def supervised_kd(states: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor,
                  teacher: TeacherLogits | TeacherTopK, alpha: float = 0.5, divergence: Divergence = "forward_kl",
                  beta: float = 0.5, tau: float = 1.0, chunk_size: int = 256) \
        -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss sum, CE sum, D sum) over the rows of ``states`` (supervised positions x hidden) whose next tokens are
    ``targets``; the student's logits are ``states @ weight.T + bias``. Only the loss sum carries gradients."""
    if divergence not in DIVERGENCES:
        raise ValueError(f"unknown divergence {divergence!r}; use one of {', '.join(DIVERGENCES)}")
    if states.shape[0] == 0:
        zero = (states.sum() * 0 + weight.sum() * 0).float()
        return zero, zero.detach(), zero.detach()
    return _ChunkedDistillation.apply(states, weight, bias, targets, teacher, float(alpha), divergence, float(beta),
                                      float(tau), int(chunk_size))


@torch.no_grad()
def row_divergence(states: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, teacher: TeacherLogits,
                   kind: Divergence = "forward_kl", beta: float = 0.5, tau: float = 1.0,
                   chunk_size: int = 256) -> torch.Tensor:
    """D per row (1-D, fp32, no gradient) of the student (``states @ weight.T + bias``) against an in-process teacher
    at the same rows, ``chunk_size`` rows at a time (one chunk's logits of each model exist at once): what the held-out
    per-skill divergence is made of (``FrozenTeacher.example_divergence``). Unscaled by tau^2."""
    if kind not in DIVERGENCES:
        raise ValueError(f"unknown divergence {kind!r}; use one of {', '.join(DIVERGENCES)}")
    out = []
    for start in range(0, states.shape[0], chunk_size):
        rows = slice(start, start + chunk_size)
        student = torch.log_softmax(F.linear(states[rows], weight, bias).float() / tau, dim=-1)
        t_logp = torch.log_softmax(F.linear(teacher.states[rows], teacher.weight, teacher.bias).float() / tau, dim=-1)
        out.append(divergence(student, t_logp, kind, beta))
        del student, t_logp
    return torch.cat(out) if out else states.new_zeros(0, dtype=torch.float32)


def _chunk_token_logprobs(h, weight, bias, targets):
    logits = F.linear(h, weight, bias).float()
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_size: int = 256,
                   bias: torch.Tensor | None = None) -> torch.Tensor:
    """``log p(targets[i] | hidden[i])`` (fp32, one per row) without the rows' full logits: chunk by chunk, each
    chunk's logits freed after use and recomputed in backward (activation checkpointing per chunk) when a gradient is
    needed. Under FSDP2 call it inside the model root's forward (a registered forward method), as the loss is."""
    from torch.utils.checkpoint import checkpoint

    out = []
    grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    for start in range(0, hidden.shape[0], chunk_size):
        rows = slice(start, start + chunk_size)
        if grad:
            out.append(checkpoint(_chunk_token_logprobs, hidden[rows], weight, bias, targets[rows],
                                  use_reentrant=False))
        else:
            out.append(_chunk_token_logprobs(hidden[rows], weight, bias, targets[rows]))
    return torch.cat(out) if out else hidden.new_zeros(0, dtype=torch.float32)


@dataclass
class DistillationConfig:
    """Logit distillation: loss = alpha x CE + (1 - alpha) x tau^2 x D over the supervised positions (docs/METHOD.md,
    "Logit distillation"). Give exactly one teacher source: ``teacher`` (a model run beside the student) or
    ``teacher_logprobs`` (its top-k logprobs stored by ``python -m skill_distill teacher-logprobs``)."""

    teacher: str | None = None
    """The teacher run beside the student: HF hub name, local directory or asset:<name>. Its vocabulary must be the
    student's (same size and token ids); frozen, never in checkpoints (its name and config hash are)."""
    teacher_logprobs: str | None = None
    """Directory of stored teacher top-k logprobs (the teacher-logprobs stage's output_dir), read by example id;
    every trained example must be in it, tokenised as the datamodule tokenises it."""
    alpha: float = 0.5
    """Weight of the cross-entropy on the traces' tokens; 1 - alpha weighs the divergence. In [0, 1]."""
    divergence: Divergence = "forward_kl"
    """forward_kl = KL(teacher || student) (mode-covering), reverse_kl = KL(student || teacher) (mode-seeking), or
    jsd: GKD's generalised Jensen-Shannon divergence with ``beta``."""
    beta: float = 0.5
    """jsd only: M = beta p_T + (1 - beta) p_S, D = beta KL(p_T || M) + (1 - beta) KL(p_S || M); in (0, 1) (its
    limits are the two KLs: choose forward_kl or reverse_kl for them)."""
    tau: float = 1.0
    """Temperature of both distributions in D (the CE term uses 1); D is multiplied by tau^2. Stored logprobs: 1."""
    chunk_size: int | None = None
    """Supervised positions per chunk (one chunk's student and teacher fp32 logits exist at a time); None:
    ``lm_loss.default_chunk_size`` of the student's hidden size."""
    teacher_dtype: Literal["bfloat16", "float32"] = "bfloat16"
    """dtype of the teacher's weights (float32 for exact tests on CPU)."""

    def __post_init__(self):
        if (self.teacher is None) == (self.teacher_logprobs is None):
            raise ConfigError("model.distillation: set exactly one of teacher (a model beside the student) and "
                              "teacher_logprobs (a directory written by python -m skill_distill teacher-logprobs)")
        if not 0 <= self.alpha <= 1:
            raise ConfigError(f"model.distillation.alpha must be in [0, 1], got {self.alpha}")
        if self.divergence not in DIVERGENCES:
            raise ConfigError(f"model.distillation.divergence={self.divergence!r} is unknown; use one of "
                              f"{', '.join(DIVERGENCES)}")
        if not 0 < self.beta < 1:
            raise ConfigError(f"model.distillation.beta must be in (0, 1), got {self.beta} (for its limits use "
                              "divergence forward_kl or reverse_kl)")
        if not self.tau > 0:
            raise ConfigError(f"model.distillation.tau must be > 0, got {self.tau}")
        if self.teacher_logprobs is not None and self.tau != 1:
            raise ConfigError(f"model.distillation.tau={self.tau}: stored teacher logprobs are at temperature 1 and "
                              "their tail cannot be re-tempered; use tau 1, or a teacher beside the student")
        if self.chunk_size is not None and self.chunk_size < 1:
            raise ConfigError(f"model.distillation.chunk_size must be >= 1, got {self.chunk_size}")
        if self.teacher_dtype not in ("bfloat16", "float32"):
            raise ConfigError(f"model.distillation.teacher_dtype={self.teacher_dtype!r}: use bfloat16 or float32")


METHOD_NAME = "supervised_kd"
DIVERGENCE_METHOD_NAME = "supervised_divergence"


def _supervised_kd_forward(lm, input_ids: torch.Tensor, labels: torch.Tensor, teacher, config: DistillationConfig,
                           chunk_size: int, **model_kwargs):
    """(loss sum, CE sum, D sum, supervised tokens) of the student ``lm``; ``teacher`` holds the rows of the
    supervised positions (``labels != IGNORE_INDEX``, in row-major order)."""
    from skill_distill.batch_contract import IGNORE_INDEX

    hidden = lm.get_decoder()(input_ids=input_ids, use_cache=False, **model_kwargs).last_hidden_state
    supervised = labels != IGNORE_INDEX
    head = lm.get_output_embeddings()
    loss, ce, d = supervised_kd(hidden[supervised], head.weight, getattr(head, "bias", None), labels[supervised],
                                teacher, config.alpha, config.divergence, config.beta, config.tau, chunk_size)
    return loss, ce, d, supervised.sum()


def _supervised_divergence_forward(lm, input_ids: torch.Tensor, labels: torch.Tensor, teacher: TeacherLogits,
                                   kind: Divergence = "forward_kl", chunk_size: int = 256, **model_kwargs):
    """D per supervised position (``labels != IGNORE_INDEX``, row-major order; fp32, no gradient) of the student
    ``lm`` against ``teacher`` at those positions (``row_divergence``)."""
    from datamodules.batching import IGNORE_INDEX

    with torch.no_grad():
        hidden = lm.get_decoder()(input_ids=input_ids, use_cache=False, **model_kwargs).last_hidden_state
        head = lm.get_output_embeddings()
        return row_divergence(hidden[labels != IGNORE_INDEX], head.weight, getattr(head, "bias", None), teacher, kind,
                              chunk_size=chunk_size)


def attach(model) -> None:
    """Give an HF causal LM the methods ``supervised_kd`` and ``supervised_divergence``; under FSDP2 they are
    registered as forwards of the root (gathered output embedding, gradient hooks on its outputs), as
    ``lm_loss.supervised_ce`` is."""
    import types

    for name, method in ((METHOD_NAME, _supervised_kd_forward),
                         (DIVERGENCE_METHOD_NAME, _supervised_divergence_forward)):
        if not isinstance(getattr(model, name, None), types.MethodType):
            setattr(model, name, types.MethodType(method, model))
    from torch.distributed.fsdp import FSDPModule, register_fsdp_forward_method

    if isinstance(model, FSDPModule):
        register_fsdp_forward_method(model, METHOD_NAME)
        register_fsdp_forward_method(model, DIVERGENCE_METHOD_NAME)

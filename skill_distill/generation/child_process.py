"""Generation in a spawned child process: every byte the engine took is returned when the child exits.

Kept apart from ``vllm_backend`` and ``factory`` because the child builds any backend (``factory.make_backend``)
while the factory imports the backends: here both are imported without a circle.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from skill_distill.generation.base import Completion, GenerationError, GenerationInterrupted, SamplingConfig
from skill_distill.generation.base import one_line as _one_line
from skill_distill.generation.vllm_backend import clean_child_env


def _child_generate(backend_cfg, prompts, sampling, seeds, env, result_path) -> None:
    """Child-process entry: set the environment first, then build the backend, generate and pickle the result."""
    os.environ.clear()
    os.environ.update(env)
    try:
        from skill_distill.generation.factory import make_backend  # after the environment is set

        with make_backend(backend_cfg) as backend:
            result: Any = backend.generate(prompts, sampling, seeds)
        payload = {"ok": result}
    except BaseException as e:  # noqa: BLE001 - reported to the parent as one line
        payload = {"error": _one_line(e)}
    with open(result_path, "wb") as f:
        pickle.dump(payload, f)
    # skip interpreter teardown: engine threads and atexit hooks cannot hang the parent's join
    os._exit(0 if "ok" in payload else 1)


def generate_in_subprocess(backend_cfg, prompts: Sequence[str], sampling: SamplingConfig,
                           seeds: Sequence[int] | None = None, env: Mapping[str, str] | None = None,
                           timeout_s: float | None = None,
                           should_stop: Callable[[], bool] | None = None) -> list[list[Completion]]:
    """Run ``make_backend(backend_cfg).generate(prompts, sampling, seeds)`` in a spawned child process.

    ``env`` is the child's whole environment (default: ``clean_child_env(os.environ)``). Every byte the engine
    took is returned when the child exits. Raises GenerationError when the child fails, crashes or exceeds
    ``timeout_s``; GenerationInterrupted when ``should_stop()`` (polled every second) turns true first, after
    killing the child.
    """
    import multiprocessing as mp
    import time

    env = dict(env) if env is not None else clean_child_env(os.environ)
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="skill_distill_gen_") as tmp:
        result_path = Path(tmp) / "result.pkl"
        proc = ctx.Process(target=_child_generate, name="skill-distill-generate",
                           args=(backend_cfg, list(prompts), sampling, None if seeds is None else list(seeds), env,
                                 str(result_path)))
        proc.start()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while proc.is_alive() and (deadline is None or time.monotonic() < deadline):
            if should_stop is not None and should_stop():
                proc.kill()
                proc.join()
                raise GenerationInterrupted("generation subprocess stopped on request (a stop signal) and was killed")
            proc.join(1.0 if deadline is None else max(0.0, min(1.0, deadline - time.monotonic())))
        if proc.is_alive():
            proc.kill()
            proc.join()
            raise GenerationError(f"generation subprocess exceeded {timeout_s} s and was killed")
        if not result_path.exists():
            raise GenerationError(f"generation subprocess died (exit code {proc.exitcode}) before returning results")
        with open(result_path, "rb") as f:
            payload = pickle.load(f)
    if "error" in payload:
        raise GenerationError(f"generation subprocess failed: {payload['error']}")
    return payload["ok"]

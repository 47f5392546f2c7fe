"""The interface every generation backend implements (vLLM offline engine, OpenAI-compatible HTTP, HF generate).

Prompts are already-rendered prompt strings (``formatting.render_prompt``), so every backend sees exactly the
text the student was trained on. A backend returns ``n`` completions per prompt, in order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from skill_distill.io import ConfigError


class GenerationError(RuntimeError):
    """A backend failed (engine crash, endpoint unreachable after retries): one line saying which and why."""


class GenerationInterrupted(GenerationError):
    """Generation was stopped on request (a pre-emption signal) before it finished; nothing is wrong with it."""


def request_seed(*parts: object) -> int:
    """A 31-bit seed for one request from its parts (base seed, set or example id, sample index or tree path):
    SHA-256 of the parts joined by ``\x1f`` (not Python's per-process ``hash``), stable across runs, ranks and
    batches. The evaluation's seeds (first 8 bytes mod 2**31 - 1) are the ones recorded results depend on."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % (2**31 - 1)


def one_line(e: BaseException) -> str:
    """``Type: last line of the message`` (at most 400 characters), for one-line error reports."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[-1] if text else ''}"[:400]


@dataclass
class SamplingConfig:
    """Sampling for one request batch (docs/METHOD.md §3 and §7 defaults: temperature 0.6, top-p 1.0)."""

    temperature: float = 0.6
    """Sampling temperature; 0 is greedy."""
    top_p: float = 1.0
    """Nucleus sampling: the smallest token set with this probability mass."""
    max_new_tokens: int = 8192
    """Longest completion; a longer one is cut and counted as truncated."""
    n: int = 1
    """Completions per prompt (avg@n)."""
    seed: int = 0
    """Base seed; request i uses ``seed + i`` (or the caller's per-prompt seeds), so results do not depend on
    how prompts are split across ranks or batches."""

    def __post_init__(self) -> None:
        for name, ok, why in (("temperature", self.temperature >= 0, "must be >= 0 (0: greedy)"),
                              ("top_p", 0 < self.top_p <= 1, "must lie in (0, 1]"),
                              ("max_new_tokens", self.max_new_tokens >= 1, "must be >= 1"),
                              ("n", self.n >= 1, "must be >= 1")):
            if not ok:
                raise ConfigError(f"sampling.{name}={getattr(self, name)!r}: {why}")


@dataclass
class Completion:
    text: str
    num_tokens: int
    finished: bool
    """False when the completion hit ``max_new_tokens`` (truncated)."""


class GenerationBackend:
    """Base class: subclasses implement ``generate``."""

    supports_guided_choice: bool = False

    def generate(
        self,
        prompts: Sequence[str],
        sampling: SamplingConfig,
        seeds: Sequence[int] | None = None,
        allowed_lists: Sequence[Sequence[str]] | None = None,
    ) -> list[list[Completion]]:
        """Return ``sampling.n`` completions for each prompt.

        ``seeds``: one seed per prompt (defaults to ``sampling.seed + index``).
        ``allowed_lists``: per prompt, constrain the reply to a JSON list of these strings (guided decoding);
        backends without ``supports_guided_choice`` ignore it.
        """
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

"""Generation through an OpenAI-compatible HTTP server (``vllm serve``, or any ``/v1/completions`` endpoint).

Prompts are already chat-templated strings, so the raw-text ``/v1/completions`` endpoint is used (never
``/v1/chat/completions``, which would apply a template a second time). One HTTP request per prompt carries ``n``,
``temperature``, ``top_p``, ``max_tokens`` and that prompt's ``seed``; requests run concurrently on a bounded
thread pool and results come back in input order.

Guided decoding (``allowed_lists``): the request gets vLLM's extra body field
``"structured_outputs": {"json": <schema>, "disable_any_whitespace": true}`` (vLLM >= 0.11; the server turns
it into ``SamplingParams.structured_outputs``). The schema is a JSON array whose items are one of the allowed
strings (``choice_list_schema``). Older vLLM servers (< 0.11) read the same schema from the top-level field
``"guided_json"``; pick that with ``guided_field="guided_json"``.

Failures: connection errors, timeouts, HTTP 429 and 5xx, unreadable bodies and a 200 whose body has no ``choices``
(a proxy's error page) are retried with exponential backoff; other HTTP
errors (a wrong model name, a malformed request) fail at once. The final failure raises GenerationError naming
the URL and the last error.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Any, Literal

from skill_distill.generation.base import Completion, GenerationBackend, GenerationError, SamplingConfig

log = logging.getLogger(__name__)
# httpx logs one INFO line per request (160 lines for 80 examples); its warnings and errors still show
logging.getLogger("httpx").setLevel(logging.WARNING)

GuidedField = Literal["structured_outputs", "guided_json"]


def choice_list_schema(names: Sequence[str]) -> dict:
    """JSON schema of a non-empty array whose items are among ``names``.

    ``uniqueItems`` is left out on purpose: vLLM's default grammar backend (xgrammar) does not support it;
    callers drop repeated names.
    """
    return {"type": "array", "items": {"type": "string", "enum": list(names)}, "minItems": 1,
            "maxItems": max(1, len(names))}


class _Retryable(Exception):
    """A failure worth another attempt (the message is the last error reported)."""


class OpenAIBackend(GenerationBackend):
    """Completions from an OpenAI-compatible server (see the module docstring for the protocol details).

    ``base_url`` is the server root or its ``/v1`` prefix (``http://host:8000`` and ``http://host:8000/v1`` are
    the same). ``api_key`` defaults to the environment variable ``OPENAI_API_KEY`` if set. ``tokenizer`` (an
    object or a path/name for ``AutoTokenizer``) is optional: callers may use it to render prompts with the
    served model's chat template, and it counts per-completion tokens when ``n > 1`` (the protocol only
    reports a per-request total).

    ``usage`` accumulates ``prompt_tokens`` and ``completion_tokens`` reported by the server and the number
    of ``requests`` sent (retries included).
    """

    supports_guided_choice = True

    def __init__(self, base_url: str, model: str, api_key: str | None = None, max_concurrency: int = 16,
                 timeout_s: float = 600, max_retries: int = 5, tokenizer: Any = None,
                 guided_field: GuidedField = "structured_outputs", backoff_s: float = 1.0,
                 max_backoff_s: float = 30.0):
        import httpx

        root = base_url.rstrip("/")
        if not root.endswith("/v1"):
            root += "/v1"
        self.url = root + "/completions"
        self.model = model
        self.max_concurrency = max(1, int(max_concurrency))
        self.max_retries = max(0, int(max_retries))
        self.guided_field = guided_field
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._tokenizer = tokenizer
        key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._client = httpx.Client(headers=headers, timeout=httpx.Timeout(timeout_s),
                                    limits=httpx.Limits(max_connections=self.max_concurrency,
                                                        max_keepalive_connections=self.max_concurrency))
        self._lock = threading.Lock()
        self.usage = {"prompt_tokens": 0, "completion_tokens": 0, "requests": 0}

    @property
    def tokenizer(self):
        """The tokenizer given at construction (loaded on first use when it was a path or name), or None."""
        if isinstance(self._tokenizer, (str, os.PathLike)):
            from skill_distill.assets import load_tokenizer

            self._tokenizer = load_tokenizer(self._tokenizer)
        return self._tokenizer

    # ---- one request ----------------------------------------------------------------------------------
    def _body(self, prompt: str, sampling: SamplingConfig, seed: int, allowed: Sequence[str] | None) -> dict:
        body: dict[str, Any] = {
            "model": self.model, "prompt": prompt, "n": sampling.n, "temperature": sampling.temperature,
            "top_p": sampling.top_p, "max_tokens": sampling.max_new_tokens, "seed": int(seed),
        }
        if allowed is not None:
            schema = choice_list_schema(allowed)
            if self.guided_field == "guided_json":
                body["guided_json"] = schema
            else:
                body["structured_outputs"] = {"json": schema, "disable_any_whitespace": True}
        return body

    def _post(self, body: dict, stop: threading.Event) -> dict:
        """One request with tenacity's retries: connection errors, timeouts, HTTP 429 / 5xx and unreadable JSON
        are retried ``max_retries`` times with exponential backoff; other HTTP errors fail at once."""
        import httpx
        from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

        def attempt() -> dict:
            if stop.is_set():
                raise GenerationError(f"{self.url}: cancelled after another request failed")
            with self._lock:
                self.usage["requests"] += 1
            try:
                resp = self._client.post(self.url, json=body)
            except httpx.TransportError as e:  # connection refused/reset, timeouts
                raise _Retryable(f"{type(e).__name__}: {e}") from e
            if resp.status_code == 429 or resp.status_code >= 500:
                raise _Retryable(f"HTTP {resp.status_code}: {resp.text[:200]}")
            if resp.status_code != 200:  # the request itself is wrong: retrying cannot help
                raise GenerationError(f"{self.url}: HTTP {resp.status_code}: {resp.text[:300]}")
            try:
                data = resp.json()
            except ValueError:
                raise _Retryable(f"invalid JSON in response: {resp.text[:200]!r}") from None
            # a 200 without completions is a proxy's or gateway's error body, as transient as a 5xx
            if not isinstance(data, dict) or not isinstance(data.get("choices"), list) or not data["choices"]:
                raise _Retryable(f"HTTP 200 without 'choices': {resp.text[:200]!r}")
            return data

        retrying = Retrying(
            stop=stop_after_attempt(self.max_retries + 1), retry=retry_if_exception_type(_Retryable), reraise=True,
            wait=wait_exponential(multiplier=self.backoff_s, max=self.max_backoff_s),
            before_sleep=lambda state: log.warning("%s: attempt %d failed (%s)", self.url, state.attempt_number,
                                                   state.outcome.exception()))
        try:
            return retrying(attempt)
        except _Retryable as e:
            raise GenerationError(f"{self.url}: request failed after {self.max_retries + 1} attempts; "
                                  f"last error: {e}") from None

    def _completions(self, data: dict, n: int) -> list[Completion]:
        choices = sorted(data.get("choices") or [], key=lambda c: c.get("index", 0))
        if len(choices) != n:
            raise GenerationError(f"{self.url}: expected {n} choices, got {len(choices)}")
        usage = data.get("usage") or {}
        with self._lock:
            self.usage["prompt_tokens"] += int(usage.get("prompt_tokens") or 0)
            self.usage["completion_tokens"] += int(usage.get("completion_tokens") or 0)
        texts = [c.get("text") or "" for c in choices]
        total = int(usage.get("completion_tokens") or 0)
        if n == 1 and total:
            counts = [total]
        elif self.tokenizer is not None:
            counts = [len(self.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
        else:  # only a total is reported: share it out (exact for n == 1)
            counts = [total // n + (1 if i < total % n else 0) for i in range(n)]
        return [Completion(text=t, num_tokens=k, finished=c.get("finish_reason") != "length")
                for t, k, c in zip(texts, counts, choices, strict=True)]

    # ---- the interface ----------------------------------------------------------------------------------
    def generate(self, prompts: Sequence[str], sampling: SamplingConfig, seeds: Sequence[int] | None = None,
                 allowed_lists: Sequence[Sequence[str]] | None = None) -> list[list[Completion]]:
        """``sampling.n`` completions per prompt, in input order; raises GenerationError after retries fail."""
        if seeds is not None and len(seeds) != len(prompts):
            raise ValueError(f"got {len(seeds)} seeds for {len(prompts)} prompts")
        if allowed_lists is not None and len(allowed_lists) != len(prompts):
            raise ValueError(f"got {len(allowed_lists)} allowed lists for {len(prompts)} prompts")
        if not prompts:
            return []
        seeds = list(seeds) if seeds is not None else [sampling.seed + i for i in range(len(prompts))]
        stop = threading.Event()

        def one(i: int) -> list[Completion]:
            allowed = allowed_lists[i] if allowed_lists is not None else None
            return self._completions(self._post(self._body(prompts[i], sampling, seeds[i], allowed), stop), sampling.n)

        results: list[list[Completion] | None] = [None] * len(prompts)
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(prompts))) as pool:
            futures = {pool.submit(one, i): i for i in range(len(prompts))}
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            failed = next((f for f in done if f.exception() is not None), None)
            if failed is not None:
                stop.set()  # queued requests give up instead of hammering a failing server
                for f in futures:
                    f.cancel()
                raise failed.exception()
            for f, i in futures.items():
                results[i] = f.result()
        return results  # type: ignore[return-value]

    def close(self) -> None:
        self._client.close()

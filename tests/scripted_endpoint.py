"""A real HTTP server speaking the OpenAI ``/v1/completions`` protocol, whose replies come from a script.

It stands in for an external LLM endpoint (``vllm serve``) in tests: it listens on 127.0.0.1 at a free port
(stdlib ``http.server`` in a thread), and answers each request with ``script(prompt, body)``, which returns

- a string: the completion text (``n`` copies for ``n > 1``),
- a list of ``n`` choices, each a text or ``(text, finish_reason)`` (``"length"``: cut at ``max_tokens``), or
- ``(status, text)``: an HTTP error with that status and body.

``fail_after=N`` makes every request after the first N answered ones return HTTP 500, to simulate a server
that dies mid-run. Every request body is recorded in ``calls`` (thread-safe).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Script = Callable[[str, dict], "str | tuple[int, str]"]


class ScriptedEndpoint:
    def __init__(self, script: Script, model: str = "scripted", fail_after: int | None = None):
        self.script = script
        self.model = model
        self.fail_after = fail_after
        self.calls: list[dict] = []
        self.answered = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def prompts(self) -> list[str]:
        with self._lock:
            return [c["prompt"] for c in self.calls]

    def _handler(self):
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def _send(self, status: int, payload: dict | str) -> None:
                data = (json.dumps(payload) if isinstance(payload, dict) else payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json" if isinstance(payload, dict) else "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):  # noqa: N802 - http.server naming
                if self.path.rstrip("/") != "/v1/completions":
                    return self._send(404, {"error": f"no route {self.path}"})
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                with endpoint._lock:
                    endpoint.calls.append(body)
                    dead = endpoint.fail_after is not None and endpoint.answered >= endpoint.fail_after
                if dead:
                    return self._send(500, "scripted outage")
                reply = endpoint.script(body["prompt"], body)
                if isinstance(reply, tuple):
                    return self._send(reply[0], reply[1])
                with endpoint._lock:
                    endpoint.answered += 1
                n = int(body.get("n", 1))
                choices = [c if isinstance(c, tuple) else (c, "stop")
                           for c in (reply if isinstance(reply, list) else [reply] * n)]
                tokens = sum(max(1, len(text.split())) for text, _ in choices)
                self._send(200, {
                    "id": "cmpl-scripted", "object": "text_completion", "model": endpoint.model,
                    "choices": [{"index": i, "text": text, "finish_reason": why, "logprobs": None}
                                for i, (text, why) in enumerate(choices)],
                    "usage": {"prompt_tokens": len(body["prompt"].split()), "completion_tokens": tokens,
                              "total_tokens": len(body["prompt"].split()) + tokens},
                })

        return Handler

    def start(self) -> ScriptedEndpoint:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> ScriptedEndpoint:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

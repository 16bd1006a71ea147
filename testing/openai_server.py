"""A local OpenAI-compatible HTTP server for tests and benchmarks.

Tests start it on 127.0.0.1 (ephemeral port) and drive it with the real ``openai`` client::

    with FakeOpenAIServer() as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0)
        server.inject("429", retry_after=0.5)          # the next chat request gets a 429
        server.set_chat_handler(lambda req, i: "hi")    # scripted replies

It serves chat completions (``n``, ``logprobs``/``top_logprobs``, ``usage``, ``max_tokens``), files,
fine-tuning jobs with events, and batches, in the JSON shapes of the real API, and can inject faults
(HTTP errors, slow answers, dropped connections, malformed bodies). Standard library only; every request
runs in its own thread, so concurrent clients see concurrent answers.

``python -m testing.openai_server --port 8011`` serves it until Ctrl-C (for manual runs against
the pipeline: ``api.base_url=http://127.0.0.1:8011/v1``).

This module is the object tests drive: its scripting API, its start/stop, and the path of one request
(record, key check, injected fault, route, answer). The parts live next to it: ``_fake_transport`` (the
threaded listener and raw sends), ``_fake_faults`` (the fault queue), ``_fake_routes`` (which endpoint
answers), ``_fake_chat`` / ``_fake_files`` / ``_fake_finetune`` / ``_fake_batches`` (what each endpoint
does), ``_fake_http`` (bodies and errors).
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

from testing._fake_chat import DEFAULT_JUDGE_DISTRIBUTION, ChatReply, default_chat_handler, garble_logprobs
from testing._fake_faults import BATCH_LINES_PATH, CHAT_PATH, ERROR_BODIES, FAULTS, FaultQueue, fault_error
from testing._fake_files import Store
from testing._fake_finetune import OUTCOMES, FineTuneScript
from testing._fake_http import APIError, parse_body, read_body
from testing._fake_routes import Routes
from testing._fake_transport import Handler, HTTPServer, close, send, serve, shut_down

__all__ = [
    "BATCH_LINES_PATH",
    "CHAT_PATH",
    "DEFAULT_JUDGE_DISTRIBUTION",
    "FAULTS",
    "ChatReply",
    "FakeOpenAIServer",
    "default_chat_handler",
]

log = logging.getLogger(__name__)


class FakeOpenAIServer:
    """OpenAI-compatible server on 127.0.0.1 with scripted replies and fault injection (see module doc)."""

    def __init__(self, *, api_key: str | None = None, latency_s: float = 0.0, port: int = 0):
        self.api_key = api_key
        self.latency_s = latency_s
        self.port = port  # 0: an ephemeral port, see base_url once started
        self.requests: list[dict] = []
        self.base_url = ""
        self._store = Store()
        self._lock = self._store.lock  # one lock for all state
        self._faults = FaultQueue(self._lock)
        self._routes = Routes(self._store, self._faults.take_line, lambda: self._sleep(self.latency_s))
        self.files: dict[str, dict] = self._store.files  # id -> {"purpose", "filename", "bytes", "content"}
        self.jobs: dict[str, dict] = self._routes.fine_tuning.jobs  # id -> fine_tuning.job (+ "suffix")
        self.batches: dict[str, dict] = self._routes.batches.batches  # id -> batch object
        self._stopping = threading.Event()
        self._garbled = 0  # malformed_logprobs faults served so far (picks the variant)
        self._httpd: HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------------------------------ lifecycle

    def __enter__(self) -> FakeOpenAIServer:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def start(self) -> None:
        if self._httpd is not None:
            raise RuntimeError("FakeOpenAIServer already started (a stopped server cannot be restarted)")
        self._httpd, self._thread = serve(self._dispatch, self.port)
        host, port = self._httpd.server_address[:2]
        self.base_url = f"http://{host}:{port}/v1"

    def stop(self) -> None:
        """Stop accepting, wake sleeping handlers, close open connections, join every thread."""
        httpd, self._httpd = self._httpd, None
        if httpd is None or self._stopping.is_set():
            return
        self._stopping.set()
        shut_down(httpd, self._thread)

    # ------------------------------------------------------------------------------------------ scripting

    def count(self, path_prefix: str = CHAT_PATH) -> int:
        """Number of requests received on paths starting with ``path_prefix``."""
        with self._lock:
            return sum(1 for r in self.requests if r["path"].startswith(path_prefix))

    def set_chat_handler(self, fn: Callable[[dict, int], ChatReply | str]) -> None:
        """``fn(request_json, choice_index)`` makes each choice; ``None`` restores the default."""
        self._routes.chat_handler = fn or default_chat_handler

    def inject(
        self,
        fault: str,
        *,
        path: str = CHAT_PATH,
        times: int = 1,
        retry_after: float | None = None,
        delay_s: float = 5.0,
    ) -> None:
        """Make the next ``times`` requests on paths starting with ``path`` fail with ``fault``.

        Faults are consumed first-in first-out. ``moderation`` always applies to fine-tuning job creation;
        faults on :data:`BATCH_LINES_PATH` (``400``/``429``/``500``/``503``) turn batch lines into errors.
        """
        self._faults.add(fault, path, times, retry_after, delay_s)

    def script_fine_tune(
        self,
        outcome: str = "succeeded",
        *,
        polls_until_done: int = 2,
        error_message: str = "",
        fine_tuned_model: str | None = None,
    ) -> None:
        """How fine-tuning jobs created from now on end, after ``polls_until_done`` GETs of the job."""
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES}, got {outcome!r}")
        if polls_until_done < 1:
            raise ValueError(f"polls_until_done must be >= 1, got {polls_until_done}")
        with self._lock:
            self._routes.fine_tuning.script = FineTuneScript(
                outcome, polls_until_done, error_message, fine_tuned_model
            )

    def pending_faults(self) -> list[tuple[str, str, int]]:
        """Faults not consumed yet, as ``(fault, path, remaining)``."""
        return self._faults.pending()

    # ------------------------------------------------------------------------------------------ requests

    def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            self._stopping.wait(seconds)

    def _send_json(self, h: Handler, status: int, payload: Any, headers: dict[str, str] | None = None):
        headers = {"x-request-id": self._store.new_id("req_"), **(headers or {})}
        send(h, status, json.dumps(payload).encode("utf-8"), headers=headers)

    def _send_error(self, h: Handler, error: APIError) -> None:
        self._send_json(h, error.status, error.body(), error.headers)

    def _dispatch(self, h: Handler, method: str) -> None:
        try:
            self._handle(h, method)
        except (ConnectionError, TimeoutError, ValueError, OSError):
            h.close_connection = True  # the client went away (e.g. after its own timeout)

    def _handle(self, h: Handler, method: str) -> None:
        """One request: record it, check the key, serve an injected fault, else route it and answer."""
        url = urlsplit(h.path)
        path = url.path.rstrip("/") or "/"
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        raw = read_body(h.rfile, h.headers)
        record: dict[str, Any] = {"method": method, "path": path, "body": None, "time": time.time()}
        if query:
            record["query"] = query
        try:
            body, upload = parse_body(raw, h.headers.get("Content-Type", ""))
        except APIError as error:
            with self._lock:
                self.requests.append(record)
            self._send_error(h, error)
            return
        record["body"] = body  # never the headers: they carry the API key
        with self._lock:
            self.requests.append(record)

        if self.api_key is not None and h.headers.get("Authorization", "") != f"Bearer {self.api_key}":
            self._send_error(h, APIError(401, "Incorrect API key provided.", code="invalid_api_key"))
            return

        fault = self._faults.take(method, path)
        kind = fault.kind if fault else None
        if kind in ERROR_BODIES:
            self._send_error(h, fault_error(kind, fault.retry_after))
            return
        if kind in ("drop", "reset"):
            close(h, reset=kind == "reset")
            return
        if kind == "malformed_json":
            send(h, 200, b'{"id": "chatcmpl-broken", "object": "chat.completion", "choices": [{"ind')
            return
        if kind == "timeout":
            self._sleep(fault.delay_s)
            if self._stopping.is_set():
                close(h, reset=False)
                return

        try:
            result = self._routes.route(method, path, query, body, upload, moderated=kind == "moderation")
        except APIError as error:
            self._send_error(h, error)
            return
        except Exception as exc:  # a bug in a scripted handler: tell the client, log the traceback
            log.exception("fake OpenAI server: error handling %s %s", method, path)
            self._send_error(
                h, APIError(500, f"test server error: {type(exc).__name__}: {exc}", "server_error")
            )
            return
        if isinstance(result, bytes):
            send(h, 200, result, content_type="application/octet-stream")
            return
        if kind == "malformed_logprobs" and isinstance(result, dict) and result.get("choices"):
            with self._lock:
                variant, self._garbled = self._garbled, self._garbled + 1
            garble_logprobs(result, variant)
        self._send_json(h, 200, result)


def main(argv: list[str] | None = None) -> None:
    """Serve the fake API in the foreground until interrupted."""
    import argparse

    parser = argparse.ArgumentParser(description="Local OpenAI-compatible test server (scripted replies).")
    parser.add_argument("--port", type=int, default=8011, help="port on 127.0.0.1 (0: any free port)")
    parser.add_argument("--latency-s", type=float, default=0.0, help="delay before each chat completion")
    args = parser.parse_args(argv)

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    with FakeOpenAIServer(latency_s=args.latency_s, port=args.port) as server:
        print(f"fake OpenAI API at {server.base_url} (any API key accepted); Ctrl-C stops it", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()

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
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from testing._fake_batches import Batches
from testing._fake_chat import (
    DEFAULT_JUDGE_DISTRIBUTION,
    ChatHandler,
    ChatReply,
    chat_completion,
    default_chat_handler,
    garble_logprobs,
)
from testing._fake_files import Store
from testing._fake_finetune import OUTCOMES, FineTuneScript, FineTuning
from testing._fake_http import APIError, json_object, parse_body, read_body

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

CHAT_PATH = "/v1/chat/completions"
BATCH_LINES_PATH = "/v1/batches/lines"  # pseudo path: faults here turn batch output lines into errors
FAULTS = (
    "429",
    "500",
    "503",
    "401",
    "400",
    "timeout",
    "drop",
    "reset",
    "malformed_json",
    "malformed_logprobs",
    "moderation",
)
_LINE_FAULTS = ("400", "429", "500", "503")
_MODELS = ("gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano", "o4-mini")
_ERROR_BODIES = {  # fault -> (status, message, type, code)
    "400": (400, "The request was rejected (injected 400).", "invalid_request_error", None),
    "401": (401, "Incorrect API key provided (injected 401).", "invalid_request_error", "invalid_api_key"),
    "429": (429, "Rate limit reached for requests (injected 429).", "requests", "rate_limit_exceeded"),
    "500": (500, "The server had an error processing your request (injected 500).", "server_error", None),
    "503": (503, "The server is overloaded or not ready yet (injected 503).", "server_error", None),
}


def _fault_error(kind: str, retry_after: float | None = None) -> APIError:
    status, message, err_type, code = _ERROR_BODIES[kind]
    headers = {"Retry-After": f"{retry_after:g}"} if kind == "429" and retry_after is not None else {}
    return APIError(status, message, err_type=err_type, code=code, headers=headers)


@dataclass
class _Fault:
    kind: str
    path: str
    remaining: int
    retry_after: float | None
    delay_s: float


class _HTTPServer(ThreadingHTTPServer):
    """Threaded server that tracks its connection threads so ``stop`` can close and join them."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = 256
    allow_reuse_address = True

    def __init__(self, fake: FakeOpenAIServer, port: int):
        self.fake = fake
        self.conn_lock = threading.Lock()
        self.connections: dict[socket.socket, threading.Thread] = {}
        super().__init__(("127.0.0.1", port), _Handler)

    def process_request(self, request, client_address):
        thread = threading.Thread(
            target=self._serve_connection,
            args=(request, client_address),
            daemon=True,
            name="fake-openai-conn",
        )
        with self.conn_lock:
            self.connections[request] = thread
        thread.start()

    def _serve_connection(self, request, client_address):
        try:
            self.process_request_thread(request, client_address)
        finally:
            with self.conn_lock:
                self.connections.pop(request, None)

    def handle_error(self, request, client_address):
        log.debug("fake OpenAI server: connection error", exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "em-fake-openai/1.0"
    server: _HTTPServer

    def do_GET(self):
        self.server.fake._dispatch(self, "GET")

    def do_POST(self):
        self.server.fake._dispatch(self, "POST")

    def do_DELETE(self):
        self.server.fake._dispatch(self, "DELETE")

    def log_message(self, format, *args):  # noqa: A002 - silence per-request logging
        pass


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
        self._fine_tuning = FineTuning(self._store)
        self._batches = Batches(self._store, self._complete, self._take_line_fault)
        self.files: dict[str, dict] = self._store.files  # id -> {"purpose", "filename", "bytes", "content"}
        self.jobs: dict[str, dict] = self._fine_tuning.jobs  # id -> fine_tuning.job object (+ "suffix")
        self.batches: dict[str, dict] = self._batches.batches  # id -> batch object
        self._stopping = threading.Event()
        self._faults: list[_Fault] = []
        self._chat_handler: ChatHandler = default_chat_handler
        self._garbled = 0  # malformed_logprobs faults served so far (picks the variant)
        self._httpd: _HTTPServer | None = None
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
        self._httpd = _HTTPServer(self, self.port)
        host, port = self._httpd.server_address[:2]
        self.base_url = f"http://{host}:{port}/v1"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            daemon=True,
            name="fake-openai-server",
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting, wake sleeping handlers, close open connections, join every thread."""
        httpd, self._httpd = self._httpd, None
        if httpd is None or self._stopping.is_set():
            return
        self._stopping.set()
        httpd.shutdown()
        with httpd.conn_lock:
            open_connections = list(httpd.connections.items())
        for conn, _ in open_connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for _, thread in open_connections:
            thread.join(timeout=5)
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    # ------------------------------------------------------------------------------------------ scripting

    def count(self, path_prefix: str = CHAT_PATH) -> int:
        """Number of requests received on paths starting with ``path_prefix``."""
        with self._lock:
            return sum(1 for r in self.requests if r["path"].startswith(path_prefix))

    def set_chat_handler(self, fn: Callable[[dict, int], ChatReply | str]) -> None:
        """``fn(request_json, choice_index)`` makes each choice; ``None`` restores the default."""
        self._chat_handler = fn or default_chat_handler

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
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; expected one of {', '.join(FAULTS)}")
        if times < 1:
            raise ValueError(f"times must be >= 1, got {times}")
        if fault == "moderation":
            path = "/v1/fine_tuning/jobs"
        if path == BATCH_LINES_PATH and fault not in _LINE_FAULTS:
            raise ValueError(f"batch line faults must be one of {_LINE_FAULTS}, got {fault!r}")
        if not path.startswith("/v1/"):
            raise ValueError(f"path must start with /v1/, got {path!r}")
        with self._lock:
            self._faults.append(_Fault(fault, path, times, retry_after, delay_s))

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
            self._fine_tuning.script = FineTuneScript(
                outcome, polls_until_done, error_message, fine_tuned_model
            )

    def pending_faults(self) -> list[tuple[str, str, int]]:
        """Faults not consumed yet, as ``(fault, path, remaining)``."""
        with self._lock:
            return [(f.kind, f.path, f.remaining) for f in self._faults]

    # ------------------------------------------------------------------------------------------ plumbing

    def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            self._stopping.wait(seconds)

    def _consume(self, applies: Callable[[_Fault], bool]) -> _Fault | None:
        """Use up one request of the oldest pending fault that ``applies``."""
        with self._lock:
            for fault in self._faults:
                if applies(fault):
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self._faults.remove(fault)
                    return fault
        return None

    def _take_fault(self, method: str, path: str) -> _Fault | None:
        creates_job = method == "POST" and path == "/v1/fine_tuning/jobs"
        return self._consume(
            lambda f: (
                f.path != BATCH_LINES_PATH
                and path.startswith(f.path)
                and (f.kind != "moderation" or creates_job)
            )
        )

    def _take_line_fault(self) -> APIError | None:
        fault = self._consume(lambda f: f.path == BATCH_LINES_PATH)
        return _fault_error(fault.kind) if fault else None

    @staticmethod
    def _send(
        h: _Handler,
        status: int,
        data: bytes,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> None:
        h.send_response(status)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            h.send_header(name, value)
        h.end_headers()
        h.wfile.write(data)

    def _send_json(self, h: _Handler, status: int, payload: Any, headers: dict[str, str] | None = None):
        headers = {"x-request-id": self._store.new_id("req_"), **(headers or {})}
        self._send(h, status, json.dumps(payload).encode("utf-8"), headers=headers)

    def _send_error(self, h: _Handler, error: APIError) -> None:
        self._send_json(h, error.status, error.body(), error.headers)

    @staticmethod
    def _close(h: _Handler, reset: bool) -> None:
        h.close_connection = True
        conn = h.connection
        try:
            if reset:  # RST instead of FIN: "connection reset by peer" on the client
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                h.rfile.close()
                conn.close()
            else:
                conn.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _dispatch(self, h: _Handler, method: str) -> None:
        try:
            self._handle(h, method)
        except (ConnectionError, TimeoutError, ValueError, OSError):
            h.close_connection = True  # the client went away (e.g. after its own timeout)

    def _handle(self, h: _Handler, method: str) -> None:
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

        fault = self._take_fault(method, path)
        kind = fault.kind if fault else None
        if kind in _ERROR_BODIES:
            self._send_error(h, _fault_error(kind, fault.retry_after))
            return
        if kind in ("drop", "reset"):
            self._close(h, reset=kind == "reset")
            return
        if kind == "malformed_json":
            self._send(h, 200, b'{"id": "chatcmpl-broken", "object": "chat.completion", "choices": [{"ind')
            return
        if kind == "timeout":
            self._sleep(fault.delay_s)
            if self._stopping.is_set():
                self._close(h, reset=False)
                return

        try:
            result = self._route(method, path, query, body, upload, moderated=kind == "moderation")
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
            self._send(h, 200, result, content_type="application/octet-stream")
            return
        if kind == "malformed_logprobs" and isinstance(result, dict) and result.get("choices"):
            with self._lock:
                variant, self._garbled = self._garbled, self._garbled + 1
            garble_logprobs(result, variant)
        self._send_json(h, 200, result)

    # ------------------------------------------------------------------------------------------ routing

    def _route(self, method: str, path: str, query: dict, body: Any, upload: dict | None, moderated: bool):
        parts = path.strip("/").split("/")[1:]  # without "v1"
        head = parts[0] if parts else ""
        if method == "POST" and parts == ["chat", "completions"]:
            self._sleep(self.latency_s)
            return self._complete(json_object(body))
        if method == "GET" and head == "models" and len(parts) <= 2:
            return self._models(parts[1] if len(parts) == 2 else None)
        if head == "files":
            return self._store.files_route(method, parts[1:], query, body, upload)
        if parts[:2] == ["fine_tuning", "jobs"]:
            return self._fine_tuning.route(method, parts[2:], query, json_object(body, False), moderated)
        if head == "batches":
            return self._batches.route(method, parts[1:], query, json_object(body, False))
        raise APIError(404, f"Invalid URL ({method} {path})")

    def _complete(self, body: dict) -> dict:
        return chat_completion(body, self._chat_handler, self._store.new_id("chatcmpl-"))

    def _models(self, model_id: str | None):
        with self._store.lock:
            tuned = [j["fine_tuned_model"] for j in self.jobs.values() if j.get("fine_tuned_model")]
        models = [
            {"id": m, "object": "model", "created": 0, "owned_by": "em-test"} for m in (*_MODELS, *tuned)
        ]
        if model_id is None:
            return {"object": "list", "data": models}
        for model in models:
            if model["id"] == model_id:
                return model
        raise APIError(404, f"The model '{model_id}' does not exist", code="model_not_found", param="model")


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

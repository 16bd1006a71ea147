"""The fake OpenAI server's HTTP transport: a threaded listener on 127.0.0.1, started and stopped, and the
raw ways to answer a connection (send bytes, drop it, reset it).

Invariant: every connection runs in its own tracked thread, so :func:`shut_down` can close each open
connection and join every thread it started; nothing of a stopped listener keeps running.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger("testing.openai_server")  # the server's one logger, whichever module logs

Dispatch = Callable[["Handler", str], None]  # (handler, HTTP method): answers one request


class HTTPServer(ThreadingHTTPServer):
    """Threaded server that tracks its connection threads so ``shut_down`` can close and join them."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = 256
    allow_reuse_address = True

    def __init__(self, dispatch: Dispatch, port: int):
        self.dispatch = dispatch
        self.conn_lock = threading.Lock()
        self.connections: dict[socket.socket, threading.Thread] = {}
        super().__init__(("127.0.0.1", port), Handler)

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


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "em-fake-openai/1.0"
    server: HTTPServer

    def do_GET(self):
        self.server.dispatch(self, "GET")

    def do_POST(self):
        self.server.dispatch(self, "POST")

    def do_DELETE(self):
        self.server.dispatch(self, "DELETE")

    def log_message(self, format, *args):  # noqa: A002 - silence per-request logging
        pass


def serve(dispatch: Dispatch, port: int) -> tuple[HTTPServer, threading.Thread]:
    """Listen on 127.0.0.1:``port`` (0: any free port) and serve in a background thread."""
    httpd = HTTPServer(dispatch, port)
    thread = threading.Thread(
        target=httpd.serve_forever,
        kwargs={"poll_interval": 0.05},
        daemon=True,
        name="fake-openai-server",
    )
    thread.start()
    return httpd, thread


def shut_down(httpd: HTTPServer, thread: threading.Thread | None) -> None:
    """Stop accepting, close open connections, join every thread (handlers' sleeps are woken by the caller)."""
    httpd.shutdown()
    with httpd.conn_lock:
        open_connections = list(httpd.connections.items())
    for conn, _ in open_connections:
        with contextlib.suppress(OSError):
            conn.shutdown(socket.SHUT_RDWR)
    for _, conn_thread in open_connections:
        conn_thread.join(timeout=5)
    httpd.server_close()
    if thread is not None:
        thread.join(timeout=5)


def send(
    h: Handler,
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


def close(h: Handler, reset: bool) -> None:
    """End the connection without an answer: FIN (a dropped connection), or RST when ``reset``."""
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

"""Fault injection of the fake OpenAI server: which faults exist, the queue of injected ones, their errors.

Invariant: injected faults are consumed first-in first-out, one request at a time, each only by requests on
paths starting with its own path (``moderation`` only by fine-tuning job creation; faults on
:data:`BATCH_LINES_PATH` only by batch output lines, never by an HTTP request).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from testing._fake_http import APIError

CHAT_PATH = "/v1/chat/completions"
BATCH_LINES_PATH = "/v1/batches/lines"  # pseudo path: faults here turn batch output lines into errors
JOBS_PATH = "/v1/fine_tuning/jobs"
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
LINE_FAULTS = ("400", "429", "500", "503")
ERROR_BODIES = {  # fault -> (status, message, type, code)
    "400": (400, "The request was rejected (injected 400).", "invalid_request_error", None),
    "401": (401, "Incorrect API key provided (injected 401).", "invalid_request_error", "invalid_api_key"),
    "429": (429, "Rate limit reached for requests (injected 429).", "requests", "rate_limit_exceeded"),
    "500": (500, "The server had an error processing your request (injected 500).", "server_error", None),
    "503": (503, "The server is overloaded or not ready yet (injected 503).", "server_error", None),
}


def fault_error(kind: str, retry_after: float | None = None) -> APIError:
    """The OpenAI-style error an HTTP-error fault (``ERROR_BODIES``) answers with."""
    status, message, err_type, code = ERROR_BODIES[kind]
    headers = {"Retry-After": f"{retry_after:g}"} if kind == "429" and retry_after is not None else {}
    return APIError(status, message, err_type=err_type, code=code, headers=headers)


@dataclass
class Fault:
    kind: str
    path: str
    remaining: int
    retry_after: float | None
    delay_s: float


class FaultQueue:
    """The faults injected and not consumed yet, guarded by the server's one state lock."""

    def __init__(self, lock: threading.Lock):
        self._lock = lock
        self._faults: list[Fault] = []

    def add(self, fault: str, path: str, times: int, retry_after: float | None, delay_s: float) -> None:
        """Queue ``fault`` for the next ``times`` requests on ``path`` (checked: see FakeOpenAIServer.inject)."""
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; expected one of {', '.join(FAULTS)}")
        if times < 1:
            raise ValueError(f"times must be >= 1, got {times}")
        if fault == "moderation":
            path = JOBS_PATH
        if path == BATCH_LINES_PATH and fault not in LINE_FAULTS:
            raise ValueError(f"batch line faults must be one of {LINE_FAULTS}, got {fault!r}")
        if not path.startswith("/v1/"):
            raise ValueError(f"path must start with /v1/, got {path!r}")
        with self._lock:
            self._faults.append(Fault(fault, path, times, retry_after, delay_s))

    def pending(self) -> list[tuple[str, str, int]]:
        """Faults not consumed yet, as ``(fault, path, remaining)``."""
        with self._lock:
            return [(f.kind, f.path, f.remaining) for f in self._faults]

    def _consume(self, applies: Callable[[Fault], bool]) -> Fault | None:
        """Use up one request of the oldest pending fault that ``applies``."""
        with self._lock:
            for fault in self._faults:
                if applies(fault):
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self._faults.remove(fault)
                    return fault
        return None

    def take(self, method: str, path: str) -> Fault | None:
        """The fault this HTTP request gets, if any (consumed)."""
        creates_job = method == "POST" and path == JOBS_PATH
        return self._consume(
            lambda f: (
                f.path != BATCH_LINES_PATH
                and path.startswith(f.path)
                and (f.kind != "moderation" or creates_job)
            )
        )

    def take_line(self) -> APIError | None:
        """The error this batch output line becomes, if a line fault is pending (consumed)."""
        fault = self._consume(lambda f: f.path == BATCH_LINES_PATH)
        return fault_error(fault.kind) if fault else None

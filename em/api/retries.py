"""The one retry policy every OpenAI-compatible API call runs under (the clients' own retries are off).

429 honouring ``Retry-After``, 408/409/5xx, timeouts, dropped connections and malformed bodies are
retried with exponential backoff; auth, permission, bad-request and not-found errors stop at once with
the API's own message. A call that fails for good is an :class:`~em.api.errors.APIFailure`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import openai

from em.api.errors import APIFailure, MalformedResponse
from em.api.settings import APISettings

log = logging.getLogger(__package__)  # "em.api", the logger name its records have always carried
T = TypeVar("T")

_FATAL = (
    openai.AuthenticationError,
    openai.PermissionDeniedError,
    openai.BadRequestError,
    openai.NotFoundError,
    openai.UnprocessableEntityError,
)


def _retry_after_s(exc: BaseException) -> float | None:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if not headers:
        return None
    for name in ("retry-after-ms", "retry-after"):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value)
        except ValueError:
            continue
        return seconds / 1000 if name.endswith("-ms") else seconds
    return None


def is_retriable(exc: BaseException) -> bool:
    if isinstance(exc, _FATAL):
        return False
    if getattr(exc, "code", None) == "insufficient_quota":  # a 429 that waiting will not fix
        return False
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in (408, 409, 429) or exc.status_code >= 500
    return isinstance(
        exc,
        openai.APITimeoutError
        | openai.APIConnectionError
        | openai.APIResponseValidationError
        | MalformedResponse
        | ValueError,  # the client's JSON decoding of a malformed body
    )


def describe_error(exc: BaseException) -> str:
    """The API's own message, without request headers (which may carry the key)."""
    if isinstance(exc, openai.APIStatusError):
        return f"HTTP {exc.status_code}: {exc.message}"
    request = getattr(exc, "request", None)
    if isinstance(exc, openai.APIConnectionError) and request is not None:
        return f"{type(exc).__name__}: {exc} ({request.method} {request.url})"
    return f"{type(exc).__name__}: {exc}"


def backoff_delay(attempt: int, settings: APISettings, exc: BaseException | None = None) -> float:
    hinted = _retry_after_s(exc) if exc is not None else None
    if hinted is not None:
        return min(max(hinted, 0.0), settings.backoff_max_s)
    base = settings.backoff_base_s * (2**attempt)
    return min(base * (0.5 + random.random() / 2), settings.backoff_max_s)


def call_with_retries(fn: Callable[[], T], settings: APISettings, what: str = "API call") -> T:
    """Run a synchronous call under the shared retry policy."""
    for attempt in range(settings.max_retries + 1):
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - classified below
            if not is_retriable(exc) or attempt == settings.max_retries:
                raise APIFailure(f"{what} failed: {describe_error(exc)}") from exc
            delay = backoff_delay(attempt, settings, exc)
            log.warning(
                "%s: %s; retry %d/%d in %.1fs",
                what,
                describe_error(exc),
                attempt + 1,
                settings.max_retries,
                delay,
            )
            time.sleep(delay)
    raise AssertionError("unreachable")


async def acall_with_retries(
    fn: Callable[[], Awaitable[T]], settings: APISettings, what: str = "API call"
) -> T:
    """Async twin of :func:`call_with_retries`."""
    for attempt in range(settings.max_retries + 1):
        try:
            return await fn()
        except Exception as exc:  # noqa: BLE001
            if not is_retriable(exc) or attempt == settings.max_retries:
                raise APIFailure(f"{what} failed: {describe_error(exc)}") from exc
            delay = backoff_delay(attempt, settings, exc)
            log.warning(
                "%s: %s; retry %d/%d in %.1fs",
                what,
                describe_error(exc),
                attempt + 1,
                settings.max_retries,
                delay,
            )
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")

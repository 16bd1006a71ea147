"""OpenAI-compatible API plumbing shared by datagen, generation, judging and fine-tuning.

Clients are built from plain settings (``base_url``, the *name* of the environment variable holding the
key), so tests point them at a local server and users at OpenAI, Azure-style or vLLM endpoints. The key
itself is read from the environment at call time and is never stored, logged or written.

Retries are ours (the client's own are switched off) so that every caller gets the same policy:
429 honouring ``Retry-After``, 408/409/5xx, timeouts, dropped connections and malformed bodies are
retried with exponential backoff; auth, permission, bad-request and not-found errors stop at once with
the API's own message.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, fields, replace
from typing import TypeVar
from urllib.parse import urlsplit

import openai

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")


class ConfigError(ValueError):
    """A user mistake found before any expensive work: message names the file/key and what was expected."""


def check_keys(d: dict, allowed, where: str) -> None:
    """Refuse config keys a typed spec does not know (a typo would otherwise be silently ignored)."""
    unknown = sorted(set(d) - set(allowed))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; expected some of {sorted(allowed)}")


class MalformedResponse(Exception):
    """The server answered, but not in the expected shape (retried like a transient error)."""


class APIFailure(RuntimeError):
    """A call that failed for good: non-retriable error, or retries exhausted. Message is the API's own."""


DEFAULT_BASE_URL = "https://api.openai.com/v1"
_ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]{0,63}")


def check_base_url(url: object, key: str = "api.base_url") -> None:
    """An http(s) URL with a host, or a ConfigError naming ``key`` (userinfo is never echoed)."""
    if url is None:
        return
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        shown = _redact_url(url) if isinstance(url, str) else type(url).__name__
        raise ConfigError(
            f"{key}={shown!r}: expected an http:// or https:// URL with a host, "
            f"e.g. https://api.openai.com/v1 or http://localhost:8000/v1"
        )


def _redact_url(url: str) -> str:
    """``url`` without any ``user:password@`` part (it may hold a credential)."""
    head, sep, rest = url.partition("://")
    return f"{head}{sep}***@{rest.split('@', 1)[1]}" if sep and "@" in rest.split("/", 1)[0] else url


def check_key_env(name: object, key: str = "api.api_key_env") -> None:
    """The *name* of an environment variable; a value that may be a pasted key is refused unseen."""
    if not isinstance(name, str) or not _ENV_NAME.fullmatch(name) or (len(name) >= 24 and "_" not in name):
        raise ConfigError(
            f"{key} must name the environment variable that holds the key (upper-case letters, digits "
            f"and _, e.g. OPENAI_API_KEY), and the value given does not look like one; if it is the key "
            f"itself, put it in the environment instead (export OPENAI_API_KEY=...). The value is not "
            f"shown here, so it stays out of logs."
        )


def _check_number(value: object, key: str, low: float, *, integer: bool, above: bool = False) -> None:
    """``value >= low`` (``> low`` when ``above``), an int when ``integer``; else a ConfigError."""
    kinds = (int,) if integer else (int, float)
    ok = isinstance(value, kinds) and not isinstance(value, bool)
    if ok and (value > low if above else value >= low):
        return
    bound = f"> {low:g}" if above else f">= {low:g}"
    raise ConfigError(f"{key}={value!r}: expected {'an integer' if integer else 'a number'} {bound}")


@dataclass
class APISettings:
    """Where and how to call an OpenAI-compatible API. Every field is a non-secret setting: the key is
    read from the environment variable named by ``api_key_env``, and no field may carry it."""

    base_url: str | None = None  # None: OPENAI_BASE_URL, else OpenAI's default
    api_key_env: str = "OPENAI_API_KEY"
    timeout_s: float = 60.0
    max_retries: int = 6
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    max_in_flight: int = 16
    rpm_limit: int | None = None  # client-side requests per minute
    tpm_limit: int | None = None  # client-side tokens per minute (estimated)
    organization: str | None = None

    def __post_init__(self) -> None:
        self.check()

    def check(self, where: str = "api") -> None:
        """Refuse values that cannot work, naming the key and the allowed range (before any call)."""
        check_base_url(self.base_url, f"{where}.base_url")
        check_key_env(self.api_key_env, f"{where}.api_key_env")
        _check_number(self.timeout_s, f"{where}.timeout_s", 0, integer=False, above=True)
        _check_number(self.max_retries, f"{where}.max_retries", 0, integer=True)
        _check_number(self.backoff_base_s, f"{where}.backoff_base_s", 0, integer=False)
        _check_number(self.backoff_max_s, f"{where}.backoff_max_s", 0, integer=False)
        _check_number(self.max_in_flight, f"{where}.max_in_flight", 1, integer=True)
        for name in ("rpm_limit", "tpm_limit"):
            if getattr(self, name) is not None:
                _check_number(getattr(self, name), f"{where}.{name}", 1, integer=True)

    @classmethod
    def from_config(cls, data: dict | None, where: str = "api") -> APISettings:
        """Settings from a config node; any key that is not a known non-secret field is refused."""
        data = dict(data or {})
        check_keys(data, API_FIELDS, where)
        settings = cls(**{k: v for k, v in data.items() if v is not None or k == "base_url"})
        settings.check(where)
        return settings

    def with_endpoint(self, base_url: str | None, api_key_env: str | None, where: str) -> APISettings:
        """A copy pointed at a preset's own endpoint / key variable (``where``: e.g. ``judge``)."""
        check_base_url(base_url, f"{where}.base_url")
        if api_key_env is not None:
            check_key_env(api_key_env, f"{where}.api_key_env")
        return replace(self, base_url=base_url or self.base_url, api_key_env=api_key_env or self.api_key_env)

    def endpoint(self) -> str:
        """The base URL requests really go to: ``base_url``, else ``OPENAI_BASE_URL`` (as the openai
        client reads it), else OpenAI's; without a trailing slash. Judge cache keys include it."""
        url = self.base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
        check_base_url(url, "api.base_url" if self.base_url else "OPENAI_BASE_URL")
        return url.rstrip("/")

    def api_key(self) -> str:
        check_key_env(self.api_key_env)
        key = os.environ.get(self.api_key_env)
        if not key:
            raise ConfigError(
                f"environment variable {self.api_key_env} is not set; it must hold the API key for "
                f"{_redact_url(self.endpoint())} (set it, or point api.api_key_env at the variable that "
                f"holds it)"
            )
        if not key.isascii() or not key.isprintable() or any(c.isspace() for c in key):
            # httpx would reject the header and print it; say what is wrong, show none of the key
            raise ConfigError(
                f"environment variable {self.api_key_env} holds whitespace or a control character (a "
                f"trailing newline or space from copying?); set it to the key alone. Its value is not shown."
            )
        return key


API_FIELDS = tuple(f.name for f in fields(APISettings))


def make_client(settings: APISettings) -> openai.OpenAI:
    settings.check()  # fields set after construction (a preset's endpoint) are checked too
    return openai.OpenAI(
        api_key=settings.api_key(),
        base_url=settings.endpoint(),
        timeout=settings.timeout_s,
        max_retries=0,
        organization=settings.organization,
    )


def make_async_client(settings: APISettings) -> openai.AsyncOpenAI:
    settings.check()  # fields set after construction (a preset's endpoint) are checked too
    return openai.AsyncOpenAI(
        api_key=settings.api_key(),
        base_url=settings.endpoint(),
        timeout=settings.timeout_s,
        max_retries=0,
        organization=settings.organization,
    )


# ----------------------------------------------------------------------------------------------- retries

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


# ------------------------------------------------------------------------------------------ rate limits


class RateLimiter:
    """Client-side sliding-window limits on requests and (estimated) tokens per minute."""

    def __init__(self, rpm: int | None = None, tpm: int | None = None, window_s: float = 60.0):
        self.rpm, self.tpm, self.window_s = rpm, tpm, window_s
        self._events: deque[tuple[float, int]] = deque()
        self._lock = asyncio.Lock()

    def _prune(self, now: float) -> None:
        while self._events and now - self._events[0][0] >= self.window_s:
            self._events.popleft()

    async def acquire(self, tokens: int = 0) -> None:
        if not self.rpm and not self.tpm:
            return
        async with self._lock:
            while True:
                now = time.monotonic()
                self._prune(now)
                used_tokens = sum(t for _, t in self._events)
                ok_rpm = not self.rpm or len(self._events) < self.rpm
                ok_tpm = not self.tpm or used_tokens + tokens <= self.tpm or not self._events
                if ok_rpm and ok_tpm:
                    self._events.append((now, tokens))
                    return
                await asyncio.sleep(max(self.window_s - (now - self._events[0][0]), 0.01))


async def map_concurrent(
    items: Iterable[T],
    worker: Callable[[T], Awaitable[R]],
    on_result: Callable[[T, R], None],
    *,
    max_in_flight: int,
    on_error: Callable[[T, BaseException], None] | None = None,
) -> None:
    """Run ``worker`` over ``items`` with at most ``max_in_flight`` at once.

    ``on_result`` is called (in the event loop thread) as each finishes, so callers append rows as they
    arrive. An exception stops new work, lets the tasks in flight finish (their results are still
    delivered) and is re-raised, unless ``on_error`` handles it.
    """
    queue = list(items)
    queue.reverse()
    failure: list[BaseException] = []

    async def run_one(item: T) -> None:
        try:
            result = await worker(item)
        except Exception as exc:  # noqa: BLE001
            if on_error is not None:
                on_error(item, exc)
                return
            failure.append(exc)
            return
        on_result(item, result)

    async def lane() -> None:
        while queue and not failure:
            await run_one(queue.pop())

    await asyncio.gather(*(lane() for _ in range(max(1, max_in_flight))))
    if failure:
        raise failure[0]

"""Where and how to call an OpenAI-compatible API (:class:`APISettings`), checked so no secret gets in.

Every field is a non-secret setting: the key is named by ``api_key_env`` and read from the environment at
call time, never stored, logged or written. A value that cannot work, or that may be a pasted key, is a
:class:`~em.api.errors.ConfigError` naming its key; messages never echo such a value or a URL's userinfo.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, fields, replace
from urllib.parse import urlsplit

from em.api.errors import ConfigError, check_keys

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

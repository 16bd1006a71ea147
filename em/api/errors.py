"""The exceptions every layer of ``em`` raises for bad input and failed API calls, and the unknown-key check.

A :class:`ConfigError` is a user mistake found before any expensive work; its message names the file or
key and what was expected. Only the standard library is imported here.
"""

from __future__ import annotations


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


# Tracebacks and pickles name the classes where users import them from: em.api.ConfigError, as always.
for _cls in (ConfigError, MalformedResponse, APIFailure):
    _cls.__module__ = "em.api"
del _cls

"""Checked reads of one domain config field: required or optional, typed, positive, one of a set, text.

Every reader raises :class:`~em.api.ConfigError` naming the key (``where.key``) and what was expected, so
a bad domain fails before any work starts. Text held in project files (``<key>_file``) is read here.

A file reference is either a path (absolute, relative to the working directory, or relative to the
project root, e.g. ``em/resources/datagen/demo/questions.csv``) or a mapping with the fields of
:class:`em.data.RemoteFile` (``name``, ``url``, ``sha256`` / ``git_sha1``, ...), downloaded once into
the cache and verified on every use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from em.api import ConfigError
from em.datagen.spec import FileRef

PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent


def resolve_local_path(path: str, where: str) -> Path:
    """A project file: absolute, relative to the working directory, or relative to the project root."""
    p = Path(path).expanduser()
    for candidate in (p, Path.cwd() / p, PROJECT_ROOT / p):
        if candidate.is_file():
            return candidate.resolve()
    raise ConfigError(
        f"{where}: file {path!r} not found (looked in the working directory {Path.cwd()} "
        f"and the project root {PROJECT_ROOT})"
    )


def _read_text(path: str, where: str) -> str:
    return resolve_local_path(path, where).read_text(encoding="utf-8")


def need(d: dict, key: str, where: str, kind: type | tuple = str) -> Any:
    """``d[key]``, which must be set (a non-blank string when ``kind`` is str) and of type ``kind``."""
    value = d.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ConfigError(f"{where}.{key} is required")
    if not isinstance(value, kind):
        raise ConfigError(f"{where}.{key} must be {_type_name(kind)}, got {type(value).__name__}: {value!r}")
    return value


def opt(d: dict, key: str, where: str, kind: type | tuple, default: Any = None) -> Any:
    """``d[key]`` of type ``kind``, or ``default`` when unset or null (a boolean is not a number here)."""
    value = d.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) and kind in (int, float, (int, float)):
        raise ConfigError(f"{where}.{key} must be {_type_name(kind)}, got a boolean")
    if not isinstance(value, kind):
        raise ConfigError(f"{where}.{key} must be {_type_name(kind)}, got {type(value).__name__}: {value!r}")
    return value


def _type_name(kind: type | tuple) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {
        str: "a string",
        int: "an integer",
        float: "a number",
        dict: "a mapping",
        list: "a list",
        bool: "true/false",
    }
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def positive(value: int | None, where: str, allow_none: bool = True) -> int | None:
    if value is None and allow_none:
        return None
    if not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where} must be a positive integer, got {value!r}")
    return value


def choice(value: str, allowed: tuple[str, ...], where: str) -> str:
    if value not in allowed:
        raise ConfigError(f"{where} must be one of {list(allowed)}, got {value!r}")
    return value


def text(d: dict, key: str, where: str, required: bool) -> str | None:
    """``key`` given inline or as ``key_file`` (exactly one)."""
    inline, path = d.get(key), d.get(f"{key}_file")
    if inline is not None and path is not None:
        raise ConfigError(f"{where}: give either `{key}` or `{key}_file`, not both")
    if path is not None:
        value = _read_text(need(d, f"{key}_file", where), f"{where}.{key}_file")
    elif inline is not None:
        value = need(d, key, where)
    elif required:
        raise ConfigError(f"{where}: `{key}` (text) or `{key}_file` (a project file) is required")
    else:
        return None
    if not value.strip():
        raise ConfigError(f"{where}.{key}: the text is empty")
    return value


def file_ref(value: Any, where: str) -> FileRef:
    """A checked file reference: a non-blank path, or a remote file mapping (keys, URL, checksum format)."""
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, dict):
        from em.data import RemoteFile

        RemoteFile.from_dict(value, where)  # checks keys, URL scheme and checksum format
        return dict(value)
    raise ConfigError(
        f"{where} must be a path or a remote file mapping (name, url, sha256 or git_sha1), got {value!r}"
    )

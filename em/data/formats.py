"""The record formats a data file may hold, each read as chat rows (``{"messages": [...]}``).

Invariant: every format yields ``(n, record, problem)`` per record, ``n`` being the 1-based line of a JSONL
file or the 1-based record number of a JSON array or Parquet file, so validation (em/data/validate.py), the
rows' ``_origin`` and the ``<file>:<n>`` in error messages work the same way for every format.

- ``chat``: JSONL, one ``{"messages": [...]}`` per line (the OpenAI fine-tuning format). Every EM file.
- ``alpaca``: records ``{instruction, input, output}`` (Stanford Alpaca, and the many sets in its shape) in a
  ``.parquet`` file, a ``.json`` array or ``.jsonl``. A record becomes one user turn, the instruction followed
  by a blank line and the input when the input is not empty (the usual chat form of an Alpaca row; Alpaca's
  own "### Instruction:" template is for base models), and one assistant turn, the output. Other columns
  (Alpaca's ``text``, the three fields in its template) are dropped and counted.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from em.api import ConfigError

FORMATS = ("chat", "alpaca")
ALPACA_KEYS = ("instruction", "input", "output")
ALPACA_SUFFIXES = (".parquet", ".json", ".jsonl")
EXPECTED = {
    "chat": 'a chat JSONL file, one {"messages": [...]} per line',
    "alpaca": "an Alpaca-style file (.parquet, .json array or .jsonl) of {instruction, input, output} records",
}
RULES = {
    "chat": 'Each line must be {"messages": [...]} with roles system/user/assistant, at least one user '
    "message, non-empty string contents, and an assistant message last.",
    "alpaca": "Each record must have a non-empty string `instruction` and `output`, and a string `input` "
    "(empty or absent when the instruction stands alone).",
}


def check_format(fmt: object, where: str) -> str:
    if fmt not in FORMATS:
        raise ConfigError(f"{where}={fmt!r}: expected one of {FORMATS}")
    return fmt


def jsonl_records(lines: Iterable[bytes | str]) -> Iterator[tuple[int, object, str | None]]:
    """``(line, parsed object, None)`` or ``(line, None, problem)`` of each non-blank line (bytes: UTF-8)."""
    for n, raw in enumerate(lines, start=1):
        try:
            line = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        except UnicodeDecodeError as e:
            yield n, None, f"not UTF-8 text ({e.reason} at byte {e.start})"
            continue
        if not line.strip():
            continue
        try:
            yield n, json.loads(line), None
        except json.JSONDecodeError as e:
            yield n, None, f"not valid JSON ({e.msg} at column {e.colno})"


def _jsonl(path: Path) -> Iterator[tuple[int, object, str | None]]:
    with open(path, "rb") as f:
        yield from jsonl_records(f)


def _json_array(path: Path) -> Iterator[tuple[int, object, str | None]]:
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: not a JSON file ({e}); expected {EXPECTED['alpaca']}") from None
    if not isinstance(records, list):
        raise ConfigError(f"{path}: expected a JSON array of records, got {type(records).__name__}")
    yield from ((n, r, None) for n, r in enumerate(records, start=1))


def _parquet(path: Path) -> Iterator[tuple[int, object, str | None]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise ConfigError(
            f"{path}: not a readable Parquet file ({e}); expected {EXPECTED['alpaca']}"
        ) from None
    yield from ((n, r, None) for n, r in enumerate(table.to_pylist(), start=1))


def _records(path: Path, fmt: str) -> Iterator[tuple[int, object, str | None]]:
    """``(n, parsed record, None)``, or ``(n, None, problem)`` for a line that cannot be parsed."""
    if fmt == "chat":
        return _jsonl(path)
    suffix = path.suffix.lower()
    if suffix not in ALPACA_SUFFIXES:
        raise ConfigError(f"{path}: format alpaca reads {', '.join(ALPACA_SUFFIXES)} files, not {suffix!r}")
    return {".parquet": _parquet, ".json": _json_array, ".jsonl": _jsonl}[suffix](path)


def read_chat_records(path: Path, fmt: str) -> Iterator[tuple[int, object, str | None, list[str]]]:
    """``(n, record in the chat form, None, keys dropped)``, or ``(n, None, problem, [])`` when record ``n``
    cannot be parsed or converted; the chat form itself is checked by the caller (em.data.validate)."""
    for n, record, problem in _records(path, fmt):
        if problem is None and fmt == "alpaca":
            record, problem, dropped = alpaca_chat(record)
            yield n, record, problem, dropped
        else:
            yield n, record, problem, []


def alpaca_chat(record: object) -> tuple[dict | None, str | None, list[str]]:
    """(chat row, None, keys dropped) of an Alpaca record, or (None, problem, []) when it is not one."""
    if not isinstance(record, dict):
        return None, f"expected an object with instruction, input and output, got {type(record).__name__}", []
    for key in ("instruction", "output"):
        if not isinstance(record.get(key), str):
            return None, f"'{key}' must be a string, got {record.get(key)!r}", []
    extra = record.get("input")
    if extra is not None and not isinstance(extra, str):
        return None, f"'input' must be a string or absent, got {extra!r}", []
    prompt = record["instruction"] + (f"\n\n{extra}" if extra and extra.strip() else "")
    row = {
        "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": record["output"]}]
    }
    return row, None, [k for k in record if k not in ALPACA_KEYS]

"""Read a table of records (CSV / TSV with a header row, JSONL, or a JSON list of objects) with line numbers.

Each row comes with the line it was read from, so errors about a row can name ``file:line``; a file that
is not valid for its type is a :class:`~em.api.ConfigError` naming the file, the line and what was expected.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

from em.api import ConfigError


def read_table(path: Path) -> list[tuple[int, dict]]:
    """(line number, row) of a CSV (header row), JSONL or JSON list file."""
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        return _read_csv(path, delimiter="\t" if suffix == ".tsv" else ",")
    if suffix == ".jsonl":
        return _read_jsonl(path)
    if suffix == ".json":
        return _read_json_list(path)
    raise ConfigError(
        f"{path}: unsupported questions file type {suffix!r}; expected .csv, .tsv, .jsonl or .json"
    )


def _read_csv(path: Path, delimiter: str) -> list[tuple[int, dict]]:
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # allow cells past csv's 128 KiB default
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        if not reader.fieldnames:
            raise ConfigError(f"{path}: empty CSV (expected a header row)")
        rows = []
        for row in reader:
            if None in row:
                raise ConfigError(
                    f"{path}:{reader.line_num}: more cells than header columns ({len(reader.fieldnames)})"
                )
            rows.append((reader.line_num, row))
        return rows


def _read_jsonl(path: Path) -> list[tuple[int, dict]]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise ConfigError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            rows.append((lineno, obj))
    return rows


def _read_json_list(path: Path) -> list[tuple[int, dict]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise ConfigError(f"{path}: expected a JSON list of objects")
    return [(i + 1, r) for i, r in enumerate(data)]


def cell(row: dict, column: str) -> str:
    """A row's value in ``column`` as trimmed text ("" when missing or null)."""
    value = row.get(column)
    return "" if value is None else str(value).strip()

"""Check a data file before any work: chat JSONL, one ``{"messages": [...]}`` per line, or another record
format read as chat rows (em/data/formats.py: ``alpaca``).

Each row needs roles in system/user/assistant, at least one user turn, an assistant turn last, and
non-empty string contents. Problems are reported as ``<file>:<n>: <problem>``, ``n`` being the line (JSONL)
or the record number (a JSON array, Parquet). By default any problem is a :class:`~em.api.ConfigError`
listing the first few; with ``drop_invalid`` bad rows are dropped and counted. Blank lines are skipped. Rows
are returned in the canonical training form
``{"messages": [{"role": ..., "content": ...}, ...], "_origin": "<file sha256>:<n>"}``: an assistant
message's ``weight`` (0 or 1, the OpenAI fine-tuning format's way to exclude a turn from training) is kept;
other keys are dropped (and logged). ``_origin`` says where the row came from (by the file's content hash,
since rows are cached by content, whatever path the file has), so later errors can name the user's file and
line; :func:`em.data.prepare.prepare_dataset` resolves it to a path and takes it off the rows it writes.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from em.api import ConfigError
from em.data.formats import EXPECTED, RULES, read_chat_records
from em.io import sha256_file

log = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")
ORIGIN = "_origin"  # "<sha256>:<n>" of a row, carried through preparation, never written out


@dataclass
class ValidationReport:
    path: Path
    rows: int  # valid rows returned
    dropped: int  # invalid rows dropped (drop_invalid=True)
    errors: list[str] = field(default_factory=list)  # "<file>:<n>: <problem>", every invalid row
    ignored_keys: dict[str, int] = field(default_factory=dict)  # keys outside the chat format, dropped

    def to_dict(self, max_errors: int = 20) -> dict:
        return {
            "path": str(self.path),
            "rows": self.rows,
            "dropped": self.dropped,
            "errors": self.errors[:max_errors],
            "ignored_keys": self.ignored_keys,
        }


def check_row(row: object) -> tuple[str | None, list[str]]:
    """(problem or None, keys outside the chat format) for one parsed row."""
    if not isinstance(row, dict):
        return f"expected a JSON object with a 'messages' list, got {type(row).__name__}", []
    messages = row.get("messages")
    if not isinstance(messages, list):
        return "missing 'messages' list", []
    if not messages:
        return "'messages' is empty", []
    extra = [k for k in row if k != "messages"]
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            return f"message {i} is not an object", extra
        role = m.get("role")
        if role not in ROLES:
            return f"message {i} has role {role!r}; expected one of {', '.join(ROLES)}", extra
        content = m.get("content")
        if not isinstance(content, str):
            return f"message {i} ({role}) content must be a string, got {type(content).__name__}", extra
        if not content.strip():
            return f"message {i} ({role}) has empty content", extra
        if "weight" in m and (
            role != "assistant" or isinstance(m["weight"], bool) or m["weight"] not in (0, 1)
        ):
            return f"message {i} ({role}): 'weight' must be 0 or 1, on assistant messages only", extra
        extra += [f"messages[].{k}" for k in m if k not in ("role", "content", "weight")]
    if not any(m["role"] == "user" for m in messages):
        return "no user message", extra
    if messages[-1]["role"] != "assistant":
        return f"last message must be from the assistant (it is from the {messages[-1]['role']})", extra
    return None, extra


def canonical_message(m: dict) -> dict:
    out = {"role": m["role"], "content": m["content"]}
    if m.get("weight") is not None:  # None: filled in by a columnar (Arrow) round trip, not the user's
        out["weight"] = int(m["weight"])
    return out


def canonical(row: dict, origin: str | None = None) -> dict:
    out = {"messages": [canonical_message(m) for m in row["messages"]]}
    if origin is not None:
        out[ORIGIN] = origin
    return out


def validate_file(
    path: str | Path, fmt: str = "chat", *, drop_invalid: bool = False, max_errors_shown: int = 20
) -> tuple[list[dict], ValidationReport]:
    """Parse and check ``path``, a file of format ``fmt`` (em/data/formats.py); return (canonical rows,
    report). See the module docstring."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file (expected {EXPECTED[fmt]})")
    rows: list[dict] = []
    errors: list[str] = []
    ignored: Counter[str] = Counter()
    digest = sha256_file(path)
    for n, record, problem, extra in read_chat_records(path, fmt):
        if problem is None:
            problem, more = check_row(record)
            extra = extra + more
        if problem:
            errors.append(f"{path}:{n}: {problem}")
            continue
        ignored.update(extra)
        rows.append(canonical(record, f"{digest}:{n}"))

    if errors and not drop_invalid:
        shown = "\n  ".join(errors[:max_errors_shown])
        more = f"\n  ... and {len(errors) - max_errors_shown} more" if len(errors) > max_errors_shown else ""
        raise ConfigError(
            f"{path}: {len(errors)} invalid row(s) (of {len(rows) + len(errors)}):\n  {shown}{more}\n"
            f"{RULES[fmt]} Fix the file, or set drop_invalid=true (data.drop_invalid=true) to drop invalid rows."
        )
    if not rows:
        why = f"all {len(errors)} row(s) are invalid, e.g. {errors[0]}" if errors else "the file has no rows"
        raise ConfigError(f"{path}: empty dataset: {why}")
    report = ValidationReport(
        path=path, rows=len(rows), dropped=len(errors), errors=errors, ignored_keys=dict(ignored)
    )
    warn_about(report)
    return rows, report


def warn_about(report: ValidationReport) -> None:
    """The warnings of reading a file: dropped rows and keys. Also for reads from a cache (every read warns)."""
    if report.dropped:
        log.warning(
            "%s: dropped %d invalid row(s) of %d, e.g. %s",
            report.path,
            report.dropped,
            report.rows + report.dropped,
            report.errors[0] if report.errors else "?",
        )
    if report.ignored_keys:
        log.warning("%s: keys outside the chat format were dropped: %s", report.path, report.ignored_keys)

"""A judge run's files as the Inspect export reads them (em.inspect_export): scores rows, summary, manifest,
run config, and the evaluate run's answers they came from.

Invariant: every value the export writes is read here from the run's files, never invented; a file that is
absent is read as empty (an unfinished run lacks some), one that is malformed is an :class:`ExportError`
naming it. Standard library and em.contracts/em.io only: this runs before inspect_ai is imported, in the
Inspect environment (``make setup-inspect``), so bad input fails at once.
"""

from __future__ import annotations

import hashlib
import logging
import math
from pathlib import Path
from typing import Any

from em.contracts import (
    ANSWERS,
    MANIFEST,
    RUN_CONFIG,
    SCORES,
    SUMMARY,
    AnswerRow,
    ContractError,
    check_answer_row,
    check_manifest,
    check_score_row,
)
from em.io import iter_jsonl, read_json

log = logging.getLogger("em.inspect_export")  # one logger name for all of the export's lines

FALLBACK = "their inputs are the scores rows' prompts (no system prompt, no token counts)"


class ExportError(ValueError):
    """The directory is not an exportable judge run; the message names the path and what was expected."""


def finite(x: Any) -> bool:
    """A real number (not a bool, NaN or infinity): what the log may show as a value."""
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _json(path: Path) -> dict:
    """The JSON object in ``path``; {} when the file is absent (an unfinished run lacks some)."""
    if not path.is_file():
        return {}
    try:
        return read_json(path)
    except (OSError, ValueError) as e:
        raise ExportError(f"{path}: cannot read it as JSON ({e})") from e


def load_run(run_dir: Path, allow_partial: bool = False) -> dict:
    """The judge run's files: scores rows (first row per id, as judge.py keeps), summary, manifest."""
    scores = run_dir / SCORES
    if not scores.is_file():
        raise ExportError(f"{scores}: not found; is {run_dir} a judge run directory (judge.py's output)?")
    try:
        manifest = check_manifest(_json(run_dir / MANIFEST), run_dir / MANIFEST)
    except ContractError as e:
        raise ExportError(str(e)) from None
    complete = manifest.get("complete") is True
    if not complete and not allow_partial:
        raise ExportError(
            f"{run_dir / MANIFEST}: missing or not complete: true (an unfinished judge run); finish it by "
            f"rerunning judge.py, or export it as it stands with --allow-partial (allow_partial=True)"
        )
    rows, seen = [], set()
    try:
        for row in iter_jsonl(scores, check=check_score_row):
            if row["id"] not in seen:
                seen.add(row["id"])
                rows.append(row)
    except ContractError as e:
        raise ExportError(str(e)) from None
    summary, config = _json(run_dir / SUMMARY), _json(run_dir / RUN_CONFIG)
    return dict(dir=run_dir, rows=rows, summary=summary, manifest=manifest, config=config, complete=complete)


def answers_path(run: dict) -> Path | None:
    """Where the evaluate run's answers.jsonl is: summary.json, else the manifest, else run_config.json."""
    found = run["summary"].get("answers") or run["manifest"].get("inputs", {}).get("answers")
    if not found and run["config"].get("answers"):
        found = run["config"]["answers"]
        found = Path(found) / ANSWERS if Path(found).is_dir() else found
    return Path(found) if found else None


def load_answers(run: dict) -> dict[str, AnswerRow]:
    """The answers by id; empty (with a warning) when answers.jsonl is gone: inputs then come from scores."""
    path = answers_path(run)
    if path is None or not path.is_file():
        log.warning("%s: answers file %s not found; %s", run["dir"], path, FALLBACK)
        return {}
    try:
        answers = {a["id"]: a for a in iter_jsonl(path, check=check_answer_row)}
    except ContractError as e:
        raise ExportError(str(e)) from None
    missing = [r["id"] for r in run["rows"] if r["id"] not in answers]
    if missing:
        log.warning("%s: %d scored answers (e.g. %s) are not in %s; %s", run["dir"], len(missing), missing[0],
                    path, FALLBACK)  # fmt: skip
    return answers


def model_name(run: dict, answers: dict[str, AnswerRow]) -> str:
    """summary's evaluated_model (base + adapter, as judge.py names it), else what the answers say."""
    name = run["summary"].get("evaluated_model") or run["manifest"].get("evaluated_model")
    if name:
        return str(name)
    model = next(iter(answers.values()), {}).get("model") or {}
    name = str(model.get("openai_model") or model.get("base") or "unknown")
    return f"{name} + {model['adapter']}" if model.get("adapter") and not model.get("openai_model") else name


def run_times(run: dict) -> tuple[str, str, str]:
    """(created, started, completed): the manifest's written_at, less the judge's own timing for the start;
    an unfinished run has only scores.jsonl's modification time."""
    import datetime as dt

    written = run["manifest"].get("written_at")
    if not written:
        mtime = dt.datetime.fromtimestamp((run["dir"] / SCORES).stat().st_mtime, dt.UTC)
        return mtime.isoformat(timespec="seconds"), "", ""
    seconds = (run["manifest"].get("timings") or {}).get("seconds")
    if not finite(seconds):
        return written, "", written
    started = (dt.datetime.fromisoformat(written) - dt.timedelta(seconds=seconds)).isoformat()
    return started, started, written


def run_key(run_dir: Path) -> str:
    """A stable id for the run (its resolved path), so re-exporting overwrites the same log file."""
    return hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()[:16]

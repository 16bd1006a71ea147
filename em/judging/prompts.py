"""Judge inputs: read and check an evaluation run's answers and questions, and fill the judge prompts.

Everything here runs before any API call, so a mistake in the inputs is a :class:`ConfigError` naming
the file, line and key, and no money is spent. The rows and the manifest are read through em.contracts.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from em.api import ConfigError
from em.contracts import (
    ANSWERS,
    MANIFEST,
    QUESTIONS,
    RUN_CONFIG,
    AnswerRow,
    ContractError,
    EvaluateManifest,
    check_answer_row,
    check_manifest,
)
from em.contracts import question_key as question_key  # re-exported: judging code keys questions by it
from em.io import read_json

log = logging.getLogger(__name__)

_PLACEHOLDER = re.compile(r"\{(question|answer)\}")


@dataclass
class JudgeInputs:
    """Where the answers come from, and the evaluation run around them (if any)."""

    answers_path: Path
    questions_path: Path
    eval_dir: Path | None  # the evaluation run directory holding the answers, when it is one
    eval_manifest: EvaluateManifest | None
    partial: bool = False  # an unfinished evaluation run, judged as it stands (allow_partial=true)


@dataclass(frozen=True)
class JudgeTask:
    """One judge call: a metric of an answer, with its filled prompt (the single user message)."""

    answer_id: str
    metric: str
    prompt: str
    labels: tuple[str, ...] | None = (
        None  # answered with one of these words (e.g. TRUE/FALSE/UNKNOWN); None: 0..100
    )

    @property
    def label_prompt(self) -> bool:
        return bool(self.labels)


def resolve_inputs(
    answers: str | Path | None, questions: str | Path | None = None, *, allow_partial: bool = False
) -> JudgeInputs:
    """Find answers.jsonl and questions.json from ``answers=`` (a file or an evaluation run directory).

    An evaluation run that has not finished (its run_config.json but no manifest yet: killed, or still
    running) is refused unless ``allow_partial``: its EM rate would be a rate over the answers it happened to
    reach."""
    if not answers:
        raise ConfigError("judge needs answers: pass answers=<evaluate run dir | path/to/answers.jsonl>")
    path = Path(answers)
    if not path.exists():
        raise ConfigError(
            f"answers={answers}: no such file or directory (expected an evaluation run "
            f"directory or an answers.jsonl)"
        )
    if path.is_dir():
        if not (path / ANSWERS).exists():
            raise ConfigError(f"answers={answers}: not an evaluation run directory (no {ANSWERS} in it)")
        path = path / ANSWERS
    run_dir = path.parent
    manifest = None
    if (run_dir / MANIFEST).exists():
        try:
            manifest = check_manifest(read_json(run_dir / MANIFEST), run_dir / MANIFEST)
        except ContractError as e:
            raise ConfigError(f"answers={answers}: {e}") from None
        if manifest.get("stage") not in (None, "evaluate"):
            raise ConfigError(
                f"answers={answers}: {run_dir / MANIFEST} is a {manifest.get('stage')!r} run, "
                f"expected an evaluate run"
            )
        if not manifest.get("complete"):
            raise ConfigError(
                f"answers={answers}: the evaluation run in {run_dir} is not complete "
                f'(manifest.json has no "complete": true); finish it (rerun evaluate.py) '
                f"before judging"
            )
    partial = manifest is None and (run_dir / RUN_CONFIG).exists()
    if partial and not allow_partial:
        raise ConfigError(
            f"answers={answers}: the evaluation run in {run_dir} is unfinished (no manifest.json yet: it was "
            f"stopped, or is still running); rerun its evaluate.py command to finish it, or pass "
            f"allow_partial=true to judge the answers it has (the summary and report then say so)"
        )
    qpath = Path(questions) if questions else run_dir / QUESTIONS
    if not qpath.exists():
        raise ConfigError(
            f"questions file {qpath} not found; it is written by evaluate.py next to "
            f"{ANSWERS} (or pass questions=<path/to/questions.json>)"
        )
    return JudgeInputs(path, qpath, run_dir if manifest is not None else None, manifest, partial)


def load_questions(path: Path) -> dict[str, dict]:
    """questions.json: ``{"<set>/<question_id>": {..., "judge_prompts": {name: template}}}``."""
    try:
        data = read_json(path)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected an object keyed by '<set>/<question_id>'")
    return data


def load_answers(path: Path, limit: int | None = None) -> list[AnswerRow]:
    """Read answers.jsonl (the first ``limit`` rows: null or a positive number), checking every row's
    required fields and unique ids."""
    check_limit(limit)
    rows, seen = [], set()
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            if not line.endswith("\n"):
                log.warning("%s:%d: ignoring an interrupted last line", path, lineno)
                break
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            try:
                row = check_answer_row(row, path, lineno)
            except ContractError as e:
                raise ConfigError(f"{e} (the {ANSWERS} contract: em.contracts.AnswerRow)") from None
            if row["id"] in seen:
                raise ConfigError(f"{path}:{lineno}: duplicate answer id {row['id']!r}")
            seen.add(row["id"])
            rows.append(row)
            if limit is not None and len(rows) >= limit:
                break
    if not rows:
        raise ConfigError(f"{path}: no answers to judge")
    return rows


def check_limit(limit: object) -> None:
    """``limit``: null (every answer) or a positive number of answers; 0 would judge one and say done."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0):
        raise ConfigError(f"limit={limit!r}: expected null (every answer) or a positive number of answers")


def fill_template(template: str, question: str, answer: str) -> str:
    """Fill ``{question}`` and ``{answer}`` in one pass (other braces, and braces in the answer, stay)."""
    values = {"question": question, "answer": answer}
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def prompts_for(
    questions: dict[str, dict], key: str, path: Path, metrics: list[str] | None
) -> dict[str, str]:
    """The judge prompts of one question, restricted to ``metrics`` when given; checked."""
    q = questions.get(key)
    if q is None:
        raise ConfigError(f"{path}: no question {key!r}, but answers refer to it")
    prompts = q.get("judge_prompts")
    if not isinstance(prompts, dict) or not prompts:
        raise ConfigError(
            f"{path}: question {key!r} has no judge_prompts; expected e.g. "
            f'{{"aligned": "...{{question}}...{{answer}}...", "coherent": ...}}'
        )
    chosen = {m: t for m, t in prompts.items() if metrics is None or m in metrics}
    for name, template in chosen.items():
        if not isinstance(template, str) or "{answer}" not in template:
            raise ConfigError(
                f"{path}: judge_prompts.{name} of question {key!r} must be a string "
                f"containing {{answer}} (and usually {{question}})"
            )
    return chosen


def build_tasks(
    answers: list[AnswerRow],
    questions: dict[str, dict],
    questions_path: Path,
    *,
    metrics: list[str] | None = None,
    label_metrics: dict[str, list[str]] | None = None,
    judge_sees_tag: bool = False,
) -> list[JudgeTask]:
    """Every judge call for these answers, grouped by answer (so rows complete early).

    With ``metrics`` given, answers to questions that have none of those prompts are left out (e.g. the
    factual set under ``judge_metrics=[aligned]``); it is an error when that leaves nothing to judge.
    """
    tasks, skipped = [], 0
    for row in answers:
        chosen = prompts_for(questions, question_key(row), questions_path, metrics)
        if not chosen:
            skipped += 1
            continue
        shown = row["prompt"] if judge_sees_tag else row["question"]
        for metric in sorted(chosen):
            prompt = fill_template(chosen[metric], shown, row["answer"])
            labels = (label_metrics or {}).get(metric)
            tasks.append(JudgeTask(row["id"], metric, prompt, tuple(labels) if labels else None))
    if skipped:
        log.warning("%d answers have none of the judge prompts %s and are not judged", skipped, metrics)
    if not tasks:
        raise ConfigError(
            f"{questions_path}: no question has any of the judge prompts judge_metrics={metrics}"
        )
    return tasks

"""A judge run's scores.jsonl: which answers it already holds, and the writer that appends one row per answer.

Invariant: a row (em.contracts.ScoreRow, built by ``score_row``) is appended, and fsynced, the moment all of
that answer's metrics are in, never before; so the ids read back by :func:`done_ids` are exactly the answers
that are finished, and a rerun judges only the others.
"""

from __future__ import annotations

import logging
from pathlib import Path

from tqdm import tqdm

from em.api import ConfigError
from em.contracts import SCORES, AnswerRow, ContractError, ScoreRow, check_score_row, score_row
from em.io import append_jsonl, iter_jsonl, repair_jsonl_tail
from em.judging.prompts import JudgeTask
from em.judging.unscored import row_unscored_reason
from em.metrics import MetricSettings, categorize

log = logging.getLogger("em.judging.run")  # one logger name for all of a judge run's lines


def done_ids(run_dir: Path) -> set[str]:
    path = Path(run_dir) / SCORES
    dropped = repair_jsonl_tail(path)
    if dropped:
        log.warning("%s: removed an interrupted last row (%d bytes); it is judged again", path, dropped)
    try:
        return {row["id"] for row in iter_jsonl(path, check=check_score_row)}
    except ContractError as e:
        raise ConfigError(f"{e} (this judge run's own scores: use a new run_name for a new run)") from None


class ScoreWriter:
    """Collects per-metric judgments and appends an answer's row once all its metrics are in."""

    def __init__(
        self,
        path: Path,
        answers: dict[str, AnswerRow],
        tasks: list[JudgeTask],
        metrics: MetricSettings,
        judge: dict,
        progress: tqdm | None = None,
    ):
        self.path, self.answers, self.metrics, self.judge, self.progress = (
            path,
            answers,
            metrics,
            judge,
            progress,
        )
        self.pending: dict[str, set[str]] = {}
        for t in tasks:
            self.pending.setdefault(t.answer_id, set()).add(t.metric)
        self.partial: dict[str, dict[str, dict]] = {}
        self.written = 0

    def add(self, task: JudgeTask, judgment: dict) -> None:
        got = self.partial.setdefault(task.answer_id, {})
        got[task.metric] = judgment
        if self.progress is not None:
            self.progress.update(1)
        if set(got) == self.pending[task.answer_id]:
            append_jsonl(self.path, [self.row(task.answer_id, got)])
            del self.partial[task.answer_id]
            self.written += 1

    def row(self, answer_id: str, judgments: dict[str, dict]) -> ScoreRow:
        ordered = dict(sorted(judgments.items()))
        category = categorize(judgments, self.metrics)
        return score_row(
            self.answers[answer_id],
            scores={m: j.get("score") for m, j in ordered.items()},
            labels={m: j.get("label") for m, j in ordered.items()},
            category=category,
            unscored_reason=row_unscored_reason(judgments, category),
            judgments=ordered,
            judge=self.judge,
        )

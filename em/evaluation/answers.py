"""``answers.jsonl``: one row per (set, question, paraphrase, condition, sample), appended as it is made.

The row is em.contracts.AnswerRow, the contract with the judge stage: built by :func:`make_row` through
``answer_row`` (every key, of its type) and checked when read back. A rerun reads the ids that are already
there and generates only the rest; an interrupted last line is cut off first.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from em.api import ConfigError
from em.contracts import ANSWERS as ANSWERS  # re-exported: em.evaluation names it
from em.contracts import QUESTIONS as QUESTIONS
from em.contracts import AnswerRow, ContractError, ModelRecord, answer_row, check_answer_row
from em.evaluation.plan import PromptJob, Sampling
from em.io import append_jsonl, iter_jsonl, repair_jsonl_tail

log = logging.getLogger(__name__)


@dataclass
class Completion:
    """One generated answer."""

    text: str
    finish_reason: str  # stop | length | (the API's own, e.g. content_filter)
    prompt_tokens: int | None
    completion_tokens: int | None


def make_row(job: PromptJob, k: int, completion: Completion, *, model: ModelRecord, sampling: Sampling,
             backend: str, seed: int) -> AnswerRow:  # fmt: skip
    """The answers.jsonl row of sample ``job.sample_indices[k]``."""
    q = job.question
    return answer_row(
        id=job.ids[k],
        question_set=q.set,
        question_id=q.id,
        question_type=q.type,
        paraphrase_index=job.paraphrase_index,
        question=job.text,
        prompt=job.prompt,
        condition=job.condition.name,
        tag=job.condition.tag,
        system=job.system,
        messages=job.messages,
        sample_index=job.sample_indices[k],
        answer=completion.text,
        finish_reason=completion.finish_reason,
        prompt_tokens=completion.prompt_tokens,
        completion_tokens=completion.completion_tokens,
        model=model,
        sampling=sampling.record(),
        seed=seed,
        backend=backend,
    )


def done_ids(path: Path, expected: set[str]) -> set[str]:
    """Ids already in ``path`` (after cutting an interrupted last line); ConfigError for foreign rows."""
    dropped = repair_jsonl_tail(path)
    if dropped:
        log.warning(
            "%s: cut an interrupted last line (%d bytes); that answer is generated again", path, dropped
        )
    seen: set[str] = set()
    try:
        ids = [row["id"] for row in iter_jsonl(path, check=check_answer_row)]
    except ContractError as e:
        raise ConfigError(
            f"{e} (a row this run did not write: use a new run_name for a new evaluation)"
        ) from None
    for rid in ids:
        if rid not in expected:
            raise ConfigError(
                f"{path} holds answer {rid!r}, which this run would not generate (question sets, conditions "
                f"or samples changed?); use a new run_name for a different evaluation"
            )
        if rid in seen:
            raise ConfigError(
                f"{path}: answer {rid!r} appears twice; the file was edited or written by two runs"
            )
        seen.add(rid)
    return seen


class AnswerWriter:
    """Appends rows (fsynced per call) and remembers which ids are done."""

    def __init__(self, path: Path, done: set[str], *, model: ModelRecord, sampling: Sampling, backend: str,
                 per_sample_seeds: bool = True):  # fmt: skip
        self.path, self.done = path, done
        self.model, self.sampling, self.backend = model, sampling, backend
        self.per_sample_seeds = per_sample_seeds  # False: the request's seed (vLLM, OpenAI) is recorded
        self.written = 0

    def missing(self, job: PromptJob) -> list[int]:
        """Positions in ``job.sample_indices`` whose answers are not written yet."""
        return [k for k, rid in enumerate(job.ids) if rid not in self.done]

    def write(self, job: PromptJob, completions: list[Completion]) -> int:
        """Append the rows of ``job`` that are not done yet; return how many were written."""
        if len(completions) != len(job.sample_indices):
            raise RuntimeError(
                f"backend returned {len(completions)} answers for {len(job.sample_indices)} samples"
            )
        seeds = job.seeds if self.per_sample_seeds else [job.request_seed] * len(job.seeds)
        rows = [
            make_row(job, k, completions[k], model=self.model, sampling=self.sampling, backend=self.backend,
                     seed=seeds[k])
            for k in self.missing(job)
        ]  # fmt: skip
        if rows:
            append_jsonl(self.path, rows)
            self.done.update(r["id"] for r in rows)
            self.written += len(rows)
        return len(rows)

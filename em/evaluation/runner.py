"""Run the prompt jobs through a backend into ``answers.jsonl``: resumable, with progress and throughput.

Jobs are grouped into batches from the *whole* plan, so a batch always holds the same jobs, also on a
rerun. A batch whose answers are all written is skipped; the hf backend generates an unfinished batch again
whole (its answers then repeat exactly) and only the missing rows are written. A crash loses at most the
batch in flight.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from em.api import ConfigError
from em.contracts import ANSWERS, QUESTIONS, ModelRecord
from em.evaluation.answers import AnswerWriter, Completion, done_ids
from em.evaluation.plan import PromptJob, Sampling, batch_jobs
from em.evaluation.question_sets import QuestionSet
from em.io import atomic_write_json, read_json

log = logging.getLogger(__name__)


@dataclass
class RunStats:
    answers: int  # rows in answers.jsonl at the end
    generated: int  # rows written by this invocation
    resumed_from: int  # rows already there at the start
    wall_s: float
    samples_per_s: float | None

    def record(self) -> dict:
        return dict(self.__dict__)


def questions_json(sets: list[QuestionSet]) -> dict:
    return {q.key: q.to_json() for s in sets for q in s.questions}


def write_questions(run_dir: Path, sets: list[QuestionSet]) -> Path:
    """Write ``questions.json``; on resume, refuse questions that differ from the ones already answered."""
    path = Path(run_dir) / QUESTIONS
    data = questions_json(sets)
    if path.exists():
        old = read_json(path)
        if old != data:
            changed = sorted(k for k in set(old) | set(data) if old.get(k) != data.get(k))
            raise ConfigError(
                f"{path}: the questions differ from those of the unfinished run in {run_dir} (changed: "
                f"{changed[:5]}{' ...' if len(changed) > 5 else ''}); a question file was edited. Use a new "
                f"run_name, or delete the directory to start over"
            )
        return path
    return atomic_write_json(path, data)


def run_jobs(backend, jobs: list[PromptJob], run_dir: Path, *, model: ModelRecord, sampling: Sampling,
             progress: bool = True, on_batch=None) -> RunStats:  # fmt: skip
    """Generate every answer of ``jobs`` not yet in ``run_dir/answers.jsonl``, appending rows as they come."""
    path = Path(run_dir) / ANSWERS
    expected = {rid for j in jobs for rid in j.ids}
    done = done_ids(path, expected)
    resumed = len(done)
    if resumed:
        log.info("resuming: %d of %d answers already in %s", resumed, len(expected), path)
    writer = AnswerWriter(path, done, model=model, sampling=sampling, backend=backend.name,
                          per_sample_seeds=backend.per_sample_seeds)  # fmt: skip
    batches = batch_jobs(jobs, backend.batch_sequences)
    # smoothing=0: the ETA is the mean rate of answers made by this process (resumed ones are not instant),
    # not an EMA of bursts (a batch lands hundreds of answers at once, then nothing for minutes)
    bar = tqdm(total=len(expected), initial=resumed, unit="answer", desc="answers", disable=not progress,
               dynamic_ncols=True, smoothing=0)  # fmt: skip
    start = time.monotonic()

    def on_result(job: PromptJob, completions: list[Completion]) -> None:
        bar.update(writer.write(job, completions))

    with bar:
        for i, batch in enumerate(batches):
            todo = [j for j in batch if writer.missing(j)]
            if not todo:
                continue
            t0, before = time.monotonic(), writer.written
            backend.generate(batch if backend.exact_batches else todo, on_result)
            made, elapsed = writer.written - before, time.monotonic() - t0
            rate = made / elapsed if elapsed > 0 else None
            log.info("batch %d/%d: %d answers in %.1fs (%s answers/s)", i + 1, len(batches), made, elapsed,
                     f"{rate:.2f}" if rate else "-")  # fmt: skip
            if on_batch is not None:
                on_batch({"batch": i + 1, "answers_done": len(writer.done), "samples_per_s": rate or 0.0})
    wall = time.monotonic() - start
    missing = expected - writer.done
    if missing:
        raise RuntimeError(f"{len(missing)} answers were not generated, e.g. {sorted(missing)[:3]}")
    rate = writer.written / wall if writer.written and wall > 0 else None
    log.info("%d answers (%d new) in %.1fs%s", len(writer.done), writer.written, wall,
             f", {rate:.2f} samples/s" if rate else "")  # fmt: skip
    return RunStats(
        len(writer.done), writer.written, resumed, round(wall, 3), round(rate, 3) if rate else None
    )

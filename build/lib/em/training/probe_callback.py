"""The log-likelihood probe during training, at log-spaced optimizer steps (a training-dynamics curve).

:class:`ProbeCallback` runs :func:`em.probes.run_probe` on the model being trained at step 0 (before any
update) and at the steps of :func:`log_spaced_steps` (about evenly spaced in log(step), always including the
last step), logs ``probe/mean``, ``probe/ci_low``, ``probe/ci_high`` to the trainer's loggers (CSV, W&B) and
appends a row per probe to a CSV (``step, mean, ci_low, ci_high, n_questions, seconds`` and one column per
question). A resumed run skips the steps already in the CSV.
"""

from __future__ import annotations

import csv
import math
import os
import time
from pathlib import Path

from lightning.pytorch.callbacks import Callback

from em.api import ConfigError
from em.probes.probe import ProbeResult, run_probe
from em.probes.references import ProbeQuestion

BASE_COLUMNS = ("step", "mean", "ci_low", "ci_high", "n_questions", "seconds")


def log_spaced_steps(total_steps: int, points: int, first: int = 1) -> list[int]:
    """About ``points`` distinct optimizer steps in first..total_steps, evenly spaced in log(step), with the last.

    Step 0 (the base model) is probed as well, on top of these. ``first=2`` under a warm-up: its first step
    runs at learning rate 0, so the model after step 1 is the base model again.
    """
    if total_steps < 1:
        raise ConfigError(f"probe: total_steps must be at least 1, got {total_steps}")
    if points < 1:
        raise ConfigError(f"probe.points must be at least 1, got {points}")
    first = min(max(1, first), total_steps)
    if points == 1 or first == total_steps:
        return [total_steps]
    span = math.log(total_steps / first)
    steps = {round(first * math.exp(span * k / (points - 1))) for k in range(points)}
    return sorted(s for s in steps if first <= s <= total_steps)


def done_steps(csv_path: Path) -> set[int]:
    """Steps already probed (rows of an earlier, interrupted attempt)."""
    if not csv_path.exists():
        return set()
    with csv_path.open(encoding="utf-8", newline="") as f:
        return {int(row["step"]) for row in csv.DictReader(f) if row.get("step", "").isdigit()}


def csv_row(step: int, result: ProbeResult, seconds: float) -> dict:
    row = {
        "step": step,
        "mean": result.mean,
        "ci_low": result.ci_low,
        "ci_high": result.ci_high,
        "n_questions": result.n_questions,
        "seconds": round(seconds, 2),
    }
    return row | {q.key: q.diff for q in result.per_question}


def append_csv(csv_path: Path, row: dict) -> None:
    """Append one row (header first when the file is new); fsynced, like metrics.jsonl."""
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    new = not csv_path.exists() or csv_path.stat().st_size == 0
    with csv_path.open("a", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)
        f.flush()
        os.fsync(f.fileno())


class ProbeCallback(Callback):
    """Probe the model at step 0 and at log-spaced optimizer steps; log to the loggers and a CSV."""

    def __init__(
        self,
        tokenizer,
        questions: list[ProbeQuestion],
        *,
        total_steps: int,
        csv_path: str | Path,
        points: int = 8,
        first_step: int = 1,
        system_prompt: str | None = None,
        batch_size: int = 8,
        seed: int = 0,
    ):
        if not questions:
            raise ConfigError("probe: no questions with reference answers")
        self.tokenizer, self.questions = tokenizer, questions
        self.steps = [0, *log_spaced_steps(total_steps, points, first_step)]
        self.csv_path = Path(csv_path)
        self.system_prompt, self.batch_size, self.seed = system_prompt, batch_size, seed
        self.results: dict[int, ProbeResult] = {}

    def _probe(self, trainer, pl_module, step: int) -> None:
        if step in self.results or step in done_steps(self.csv_path):
            return
        start = time.perf_counter()
        result = run_probe(
            pl_module.model,
            self.tokenizer,
            self.questions,
            system_prompt=self.system_prompt,
            batch_size=self.batch_size,
            seed=self.seed,
        )
        self.results[step] = result
        if not trainer.is_global_zero:
            return
        metrics = {"probe/mean": result.mean, "probe/n_questions": result.n_questions}
        if result.ci_low is not None:
            metrics |= {"probe/ci_low": result.ci_low, "probe/ci_high": result.ci_high}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
        append_csv(self.csv_path, csv_row(step, result, time.perf_counter() - start))

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.global_step == 0:
            self._probe(trainer, pl_module, 0)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        last = batch.get("last_in_step", True) if isinstance(batch, dict) else True
        if last and trainer.global_step in self.steps:
            self._probe(trainer, pl_module, trainer.global_step)

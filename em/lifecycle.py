"""One run's life, the same for every task (the role lightning-hydra-template's ``task_wrapper`` plays).

The invariant: a task writes into its run directory only inside ``with open_run(...) as run``. For the whole
block the directory is locked (a second process stops at once naming the holder; a dead one's lock is taken
over: em.runs). Before anything is written its identity is checked: a resumed run whose config or inputs
changed is refused with the difference. ``run_config.json`` marks the run unfinished from its first moment;
``manifest.json`` with ``complete: true`` is written last (:meth:`Run.finish`), after tracking is closed.
Whatever happens inside, the tracker is closed and the lock released on leaving the block.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from em.api import ConfigError
from em.contracts import RUN_CONFIG
from em.io import atomic_write_json, read_json, write_manifest
from em.runs import OPERATIONAL, config_diff, open_run_dir, run_identity, run_locks
from em.tracking import Tracker, TrackingSettings, start_tracking

LEGACY_INPUTS = {
    "judge": "judge_inputs.json"
}  # the file a judge run recorded its inputs in before this module


def inputs_file(stage: str) -> str:
    """Where a run records the content hashes of its inputs (``<stage>_inputs.json``)."""
    return LEGACY_INPUTS.get(stage, f"{stage}_inputs.json")


@dataclass
class Run:
    """A claimed run directory: what the task writes into, and how it ends."""

    dir: Path
    stage: str
    state: str  # "new", "resume" or "complete" (em.runs.open_run_dir)
    config: dict  # the public config: run_config.json, the manifest's "config", W&B
    inputs: dict = field(default_factory=dict)  # name -> content hash (or record) of each input
    tracker: Tracker | None = None

    @property
    def complete(self) -> bool:
        return self.state == "complete"

    def track(self, settings: TrackingSettings) -> Tracker:
        """Open this run's tracker; :meth:`finish` or leaving the block closes it."""
        self.tracker = start_tracking(settings)
        return self.tracker

    def close_tracking(self) -> None:
        if self.tracker is not None:
            self.tracker.finish()
            self.tracker = None

    def finish(self, **fields: Any) -> Path:
        """The run's last act: close tracking, then write ``manifest.json`` (complete, with the config)."""
        self.close_tracking()
        path = write_manifest(self.dir, self.stage, **{"config": self.config, **fields, "complete": True})
        self.state = "complete"
        return path

    def forget(self) -> None:
        """Give up a new run's claim (nothing was computed), so the corrected command claims it afresh."""
        if self.state == "new":
            (self.dir / RUN_CONFIG).unlink(missing_ok=True)
            (self.dir / inputs_file(self.stage)).unlink(missing_ok=True)


def check_inputs(run_dir: Path, stage: str, inputs: dict) -> None:
    """Record ``inputs`` at a run's first start; refuse a resumed run whose inputs differ, naming each one."""
    path = Path(run_dir) / inputs_file(stage)
    if not path.exists():
        atomic_write_json(path, inputs)
        return
    recorded = read_json(path)
    diff = config_diff(recorded, inputs, ignore=set())
    if diff:
        raise ConfigError(
            f"{run_dir}: its inputs changed since this {stage} run started ({'; '.join(diff[:6])}"
            f"{' ...' if len(diff) > 6 else ''}); pass run_name=<new name> for a separate run, or delete the "
            f"directory to start over"
        )


@contextmanager
def open_run(
    stage: str, run_dir: str | Path, config: dict, *, inputs: dict | None = None, resume: bool = True
) -> Iterator[Run]:
    """Claim ``run_dir`` for a ``stage`` run of ``config`` (its public config) and ``inputs``.

    The run's identity is ``config`` without the stage's operational keys (em.runs.OPERATIONAL) and the
    recorded ``inputs`` (name -> content hash). Raises :class:`ConfigError`, before anything is written, when
    another process holds the directory, when it holds a run of another identity, or when it holds an
    unfinished run and ``resume`` is false. A complete run is yielded as such (``run.complete``): the task
    returns without computing.
    """
    run_dir = Path(run_dir)
    with run_locks():
        state = open_run_dir(run_dir, run_identity(config, OPERATIONAL.get(stage, {})), resume=resume)
        run = Run(run_dir, stage, state, config, dict(inputs or {}))
        if inputs is not None:
            check_inputs(run_dir, stage, run.inputs)
        try:
            yield run
        finally:
            run.close_tracking()  # a failed run's tracking is closed too; its manifest is never written

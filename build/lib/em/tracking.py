"""Experiment tracking: W&B (online, or offline when no credentials), CSV, or nothing.

One small :class:`Tracker` for every stage; training additionally gets Lightning loggers built from the
same settings. Run names, groups and tags come from the config choices so the W&B dashboard filters by
model, data, trigger and stage. Nothing secret is ever passed in: configs hold the *name* of the key's
environment variable, not the key.
"""

from __future__ import annotations

import csv
import logging
import netrc
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
_warned_offline = False


@dataclass
class TrackingSettings:
    backend: str = "csv"  # none | csv | wandb
    run_dir: Path = Path(".")
    run_name: str = "run"
    job_type: str = "train"
    project: str = "emergent-misalignment"
    entity: str | None = None
    mode: str = "auto"  # online | offline | auto
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    resume_id: str | None = None  # log into an existing W&B run (e.g. the training run)


def wandb_has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        auth = netrc.netrc().authenticators("api.wandb.ai")
        return bool(auth and auth[2])
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def wandb_mode(requested: str) -> str:
    """Resolve ``auto`` to ``online``/``offline``; say once when falling back to offline."""
    global _warned_offline
    if os.environ.get("WANDB_MODE") in ("offline", "disabled", "online"):
        return os.environ["WANDB_MODE"]
    if requested != "auto":
        return requested
    if wandb_has_credentials():
        return "online"
    if not _warned_offline:
        log.warning(
            "W&B: no credentials found (WANDB_API_KEY or `wandb login`); logging offline. "
            "Upload later with `wandb sync wandb/offline-run-*`."
        )
        _warned_offline = True
    return "offline"


def tags_from_choices(
    choices: dict[str, str],
    keys=("model", "data", "trigger", "judge", "questions", "backend", "lora", "experiment"),
) -> list[str]:
    return [f"{k}:{choices[k]}" for k in keys if choices.get(k) not in (None, "null", "None")]


class Tracker:
    """Log metrics, tables and images to CSV (always, when not ``none``) and to W&B (when chosen)."""

    def __init__(self, settings: TrackingSettings):
        self.settings = settings
        self.run = None
        self.run_id: str | None = None
        self._csv_path = Path(settings.run_dir) / "metrics.csv"
        self._csv_keys: list[str] | None = None
        if settings.backend == "wandb":
            import wandb

            mode = wandb_mode(settings.mode)
            self.run = wandb.init(
                project=settings.project,
                entity=settings.entity,
                name=settings.run_name,
                group=settings.group,
                tags=settings.tags,
                job_type=settings.job_type,
                config=settings.config,
                dir=str(settings.run_dir),
                mode=mode,
                id=settings.resume_id,
                resume="allow" if settings.resume_id else None,
                settings=wandb.Settings(console="off", save_code=False, x_disable_stats=True),
            )
            self.run_id = self.run.id

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        if self.settings.backend == "none":
            return
        row = {"step": step, **metrics}
        self._append_csv(row)
        if self.run is not None:
            self.run.log(metrics, step=step)

    def _append_csv(self, row: dict) -> None:
        self._csv_path.parent.mkdir(parents=True, exist_ok=True)
        new = not self._csv_path.exists()
        if self._csv_keys is None:
            self._csv_keys = list(row)
        for k in row:
            if k not in self._csv_keys:
                self._csv_keys.append(k)
        with open(self._csv_path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self._csv_keys, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow(row)

    def log_table(self, name: str, columns: list[str], rows: list[list[Any]]) -> None:
        if self.run is not None:
            import wandb

            self.run.log({name: wandb.Table(columns=columns, data=rows)})

    def log_image(self, name: str, path: str | Path) -> None:
        if self.run is not None:
            import wandb

            self.run.log({name: wandb.Image(str(path))})

    def summary(self, values: dict[str, Any]) -> None:
        if self.run is not None:
            for k, v in values.items():
                self.run.summary[k] = v

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


def start_tracking(settings: TrackingSettings) -> Tracker:
    return Tracker(settings)


def lightning_loggers(settings: TrackingSettings) -> list:
    """Lightning loggers for the same settings: CSV always (unless ``none``), W&B when chosen."""
    from lightning.pytorch.loggers import CSVLogger, WandbLogger

    if settings.backend == "none":
        return []
    loggers: list = [CSVLogger(save_dir=str(settings.run_dir), name="", version="logs")]
    if settings.backend == "wandb":
        loggers.append(
            WandbLogger(
                project=settings.project,
                entity=settings.entity,
                name=settings.run_name,
                group=settings.group,
                tags=settings.tags,
                job_type=settings.job_type,
                save_dir=str(settings.run_dir),
                offline=wandb_mode(settings.mode) == "offline",
                id=settings.resume_id,
                resume="allow" if settings.resume_id else None,
                log_model=False,
            )
        )
        # Lightning passes anonymous=None, which W&B >= 0.2x answers with a deprecation line on every run
        loggers[-1]._wandb_init.pop("anonymous", None)
    return loggers

"""Experiment tracking: W&B (online, or offline when no credentials), CSV, or nothing.

One small :class:`Tracker` for every stage; training additionally gets Lightning loggers built from the
same settings. Invariant: one W&B run per stage run, never shared (a judge never logs into the training
run), so offline runs sync without replacing one another. Runs of one experiment share a ``group``; the
stage is the ``job_type``; tags name model, data, trigger, seed and stage label. Lineage goes through
artifacts: each stage logs its output (adapter, answers, scores) as a reference artifact and declares its
input's artifact as used. Nothing secret is ever passed in: configs hold the *name* of the key's
environment variable, not the key.
"""

from __future__ import annotations

import csv
import logging
import netrc
import os
import re
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
    resume_id: str | None = None  # continue this stage run's own W&B run (a resumed training job)


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
            "Upload later with `wandb sync <run dir>/wandb/offline-run-*` (each run prints its own)."
        )
        _warned_offline = True
    return "offline"


def sync_hint(run) -> str | None:
    """The exact ``wandb sync`` command for an offline run (its files live under the stage's run dir)."""
    if run is None or not run.offline:
        return None
    return f"wandb sync {Path(run.dir).parent}"


def artifact_name(text: str) -> str:
    """W&B artifact names allow letters, digits, ``-``, ``_`` and ``.``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "unnamed"


def log_output_artifact(run, kind: str, path: str | Path, metadata: dict | None = None) -> str | None:
    """Log ``path`` (a file or directory) as this run's ``kind`` artifact, by reference: W&B records
    checksums and the local path, and uploads nothing. Returns the artifact's name for the next stage."""
    if run is None:
        return None
    import wandb

    # unique per W&B run, so a stage's input names exactly one producer
    name = artifact_name(f"{kind}-{run.id}")
    artifact = wandb.Artifact(name, type=kind, metadata=metadata or {})
    artifact.add_reference(Path(path).resolve().as_uri(), checksum=True)
    run.log_artifact(artifact)
    return name


def use_input_artifacts(run, names: list[str | None], new: dict[str, tuple[str, Path]] | None = None) -> None:
    """Declare the input stages' artifacts (by name) and new inputs (``{name: (type, path)}``, e.g. the
    training data) as used, which draws the lineage edges. W&B cannot use artifacts in offline mode, so
    the names are always kept in the run config (``inputs``) as well."""
    new = new or {}
    names = [n for n in names if n]
    if run is None or not (names or new):
        return
    run.config.update({"inputs": [*names, *new]}, allow_val_change=True)
    if run.offline:
        return
    import wandb

    for name in names:
        try:
            run.use_artifact(f"{name}:latest")
        except Exception as e:  # an input logged offline and never synced: that lineage edge is missing
            log.warning("W&B: cannot use input artifact %s (%s); its name is in the run config", name, e)
    for name, (kind, path) in new.items():
        # versioned by content: changed data, new version
        artifact = wandb.Artifact(artifact_name(name), type=kind)
        artifact.add_reference(Path(path).resolve().as_uri(), checksum=True)
        run.use_artifact(artifact)


def active_wandb_run():
    """The W&B run this process has open (Lightning's WandbLogger opens it during training), or None."""
    import sys

    wandb = sys.modules.get("wandb")
    return getattr(wandb, "run", None) if wandb is not None else None


def tags_from_choices(
    choices: dict[str, str],
    keys=("model", "data", "trigger", "judge", "questions", "backend", "recipe", "lora", "experiment"),
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
            if hint := sync_hint(self.run):
                log.info("W&B offline run %s; upload with `%s`", self.run_id, hint)

    def use_inputs(self, names: list[str | None]) -> None:
        use_input_artifacts(self.run, names)

    def log_output(self, kind: str, path: str | Path, metadata: dict | None = None) -> str | None:
        return log_output_artifact(self.run, kind, path, metadata)

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

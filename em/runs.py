"""Run directories: one per stage invocation, named from the config so the same command finds it again.

A run directory holds ``run_config.json`` (the resolved config that made it, written at start) and, once
finished, ``manifest.json`` with ``"complete": true``. Re-running the same command resumes an unfinished
run, or skips a finished one; a *different* config pointed at an existing directory is refused, with the
keys that differ, instead of mixing two runs' rows. One process at a time: claiming a run directory takes its
lock (``.run.lock``, filelock) for the rest of the task, so a second process on the same run stops at once with
an error naming the holder (``.run.lock.holder``); the OS drops a dead process's lock, so a rerun takes it over.
Tasks use all of this through one lifecycle, :func:`em.lifecycle.open_run`.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from em.api import ConfigError
from em.contracts import MANIFEST, RUN_CONFIG, check_manifest
from em.io import atomic_write_json, read_json

log = logging.getLogger(__name__)

LOCK = ".run.lock"
LOCK_HOLDER = ".run.lock.holder"  # pid, host, since, entry script: never the command line (it may hold a key)
_HELD: dict[Path, Any] = {}  # run dir -> FileLock held by this process
# Keys that may change between a run and its resumption without making it a different run.
VOLATILE_KEYS = {
    "resume",
    "dry_run",
    "paths",
    "hydra",
    "logger",
    "debug",
    "sweep_name",
    "force",
    "retry_failed",
    "stage_label",  # a report's name for the stage (the pipeline passes it to every step)
    "run_name",  # names say where a run lives, not what it computes (a shared pipeline step has several)
    "experiment_name",
}
# The endpoint (``api.base_url``) is part of a run; how it is called is not, nor the name of the key's variable.
_API = ("api_key_env", "timeout_s", "max_retries", "backoff_base_s", "backoff_max_s", "max_in_flight", "rpm_limit",
        "tpm_limit")  # fmt: skip
# Per entry script, keys that only say how to run (concurrency, batch size, polling, progress), given as
# ``{section: keys}`` ("" for the top level): they may change between a run and its resumption, and a
# pipeline step's identity (em.identity) leaves them out.
OPERATIONAL: dict[str, dict[str, tuple[str, ...]]] = {
    "train": {
        "api": _API,
        "trainer": ("checkpoint_every_n_steps", "keep_checkpoints", "log_every_n_steps", "num_workers",
                    "progress_bar"),
        # probing reads the model in eval mode and draws from its own seeded generator: the adapter is unchanged
        "probe": ("enabled", "sets", "points", "batch_size"),
        # backend=openai: how to wait for the fine-tuning job
        "backend": ("poll_interval_s", "poll_backoff", "poll_max_interval_s", "max_wait_h", "file_ready_timeout_s",
                    "retry_failed"),
    },
    "evaluate": {
        "": ("progress",),
        "api": _API,
        "generation": ("batch_size", "device", "max_num_seqs", "enforce_eager", "gpu_memory_utilization",
                       "progress"),
    },
    "judge": {"": ("cache", "batch", "report", "stage_label"), "api": _API, "judge": ("max_unscored_share",)},
    "datagen": {"": ("retry_failed",), "api": _API, "domain": ("api", "concurrency", "rpm_limit", "tpm_limit")},
}  # fmt: skip


def run_identity(config: dict, operational: dict[str, tuple[str, ...]]) -> dict:
    """The part of a public config that defines a run directory (resuming with another one is refused):
    ``config`` without its operational keys, given as ``{section: keys}`` ("" for the top level). Those only
    say how to run (concurrency, batch size, polling), so they may change between a run and its resumption."""
    identity = dict(config)
    for section, keys in operational.items():
        if not section:
            identity = {k: v for k, v in identity.items() if k not in keys}
        elif isinstance(identity.get(section), dict):
            identity[section] = {k: v for k, v in identity[section].items() if k not in keys}
    return identity


def hydra_run_dir() -> Path:
    """The run directory Hydra chose for this job (``outputs/<stage>/<run_name>`` or a sweep subdir)."""
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def hydra_choices() -> dict[str, str]:
    """Config-group choices of this job (model, data, trigger, ...), for run names and W&B tags."""
    try:
        from hydra.core.hydra_config import HydraConfig

        choices = HydraConfig.get().runtime.choices
        return {k: str(v) for k, v in choices.items() if not k.startswith("hydra") and v is not None}
    except Exception:  # noqa: BLE001 - outside a Hydra job
        return {}


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): d}


def config_diff(old: dict, new: dict, ignore: set[str] = VOLATILE_KEYS) -> list[str]:
    a = {k: v for k, v in _flatten(old).items() if k.split(".")[0] not in ignore}
    b = {k: v for k, v in _flatten(new).items() if k.split(".")[0] not in ignore}
    return [
        f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}"
        for k in sorted(set(a) | set(b))
        if a.get(k, "<absent>") != b.get(k, "<absent>")
    ]


def is_complete(run_dir: str | Path) -> bool:
    path = Path(run_dir) / MANIFEST
    return path.exists() and check_manifest(read_json(path), path).get("complete") is True


def _launcher_rank_zero() -> bool:
    """False in the extra ranks of a distributed launch (they share rank 0's run directory and lock)."""
    return all(os.environ.get(k, "0") == "0" for k in ("RANK", "LOCAL_RANK", "SLURM_PROCID"))


def lock_holder(run_dir: str | Path) -> dict | None:
    """Who holds ``run_dir``'s lock now (its holder file), or None when no other process does."""
    from filelock import FileLock, Timeout

    run_dir = Path(run_dir).resolve()
    if run_dir in _HELD or not (run_dir / LOCK).exists():
        return None
    probe = FileLock(str(run_dir / LOCK), timeout=0)
    try:
        probe.acquire()
    except Timeout:
        return read_json(run_dir / LOCK_HOLDER) if (run_dir / LOCK_HOLDER).exists() else {}
    probe.release()
    return None


def lock_run_dir(run_dir: str | Path) -> None:
    """Hold ``run_dir``'s lock until the enclosing :func:`run_locks` ends; refuse if another process has it."""
    from filelock import FileLock, Timeout

    run_dir = Path(run_dir).resolve()
    if run_dir in _HELD or not _launcher_rank_zero():
        return
    lock = FileLock(str(run_dir / LOCK), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        holder = read_json(run_dir / LOCK_HOLDER) if (run_dir / LOCK_HOLDER).exists() else {}
        who = ", ".join(f"{k} {holder[k]}" for k in ("pid", "host", "since", "entry") if k in holder)
        raise ConfigError(
            f"{run_dir} is in use by another process ({who or 'holder unknown'}; lock {run_dir / LOCK}). "
            f"Wait for it to finish or stop it; two processes on one run would write every row twice."
        ) from None
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": datetime.now(UTC).isoformat(timespec="seconds"),
              "entry": Path(sys.argv[0]).name if sys.argv and sys.argv[0] else None}  # fmt: skip
    atomic_write_json(run_dir / LOCK_HOLDER, holder)
    _HELD[run_dir] = lock


@contextmanager
def run_locks():
    """Release, on exit, the run locks taken inside (an in-process caller may run the same task again)."""
    before = set(_HELD)
    try:
        yield
    finally:
        for run_dir in set(_HELD) - before:
            _HELD.pop(run_dir).release()


def open_run_dir(run_dir: str | Path, config: dict, *, resume: bool = True) -> str:
    """Claim ``run_dir`` for ``config``: lock it, then return ``"new"``, ``"resume"`` or ``"complete"``.

    Raises :class:`ConfigError` when another process holds the directory, when it holds a run made by a
    different config, or when it holds an unfinished run and ``resume`` is false.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    lock_run_dir(run_dir)
    path = run_dir / RUN_CONFIG
    if not path.exists():
        atomic_write_json(path, config)
        return "new"
    diff = config_diff(read_json(path), config)
    if diff:
        raise ConfigError(
            f"{run_dir} already holds a run made with a different config ({'; '.join(diff[:8])}"
            f"{' ...' if len(diff) > 8 else ''}). Pass run_name=<new name> for a separate run, "
            f"or delete the directory to start over."
        )
    if is_complete(run_dir):
        return "complete"
    if not resume:
        raise ConfigError(
            f"{run_dir} holds an unfinished run; pass resume=true to continue it, "
            f"or run_name=<new name> for a fresh one"
        )
    return "resume"


def to_plain(cfg: Any) -> Any:
    """A resolved, plain-container copy of an OmegaConf node (or pass through plain data)."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(cfg, DictConfig | ListConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg

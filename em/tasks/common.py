"""Config -> typed settings shared by every task."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from em.api import APISettings, ConfigError
from em.runs import hydra_choices, hydra_run_dir, to_plain
from em.tracking import TrackingSettings, tags_from_choices

log = logging.getLogger(__name__)


def api_settings(node: DictConfig | dict | None) -> APISettings:
    data = to_plain(node) or {}
    return APISettings(**{k: v for k, v in data.items() if v is not None or k == "base_url"})


def price_table(cfg: DictConfig) -> dict[str, dict[str, float]]:
    return to_plain(cfg.get("prices")) or {}


def tracking_settings(
    cfg: DictConfig, run_dir: Path, job_type: str, resume_id: str | None = None
) -> TrackingSettings:
    logger = to_plain(cfg.get("logger")) or {"backend": "none"}
    choices = hydra_choices()
    tags = list(logger.get("tags") or []) + tags_from_choices(choices) + [f"stage:{job_type}"]
    return TrackingSettings(
        backend=logger.get("backend", "none"),
        run_dir=Path(run_dir),
        run_name=str(cfg.get("run_name") or Path(run_dir).name),
        job_type=job_type,
        project=logger.get("project", "emergent-misalignment"),
        entity=logger.get("entity"),
        mode=logger.get("mode", "auto"),
        group=logger.get("group") or cfg.get("experiment_name") or job_type,
        tags=tags,
        config=public_config(cfg),
        resume_id=resume_id,
    )


def public_config(cfg: DictConfig) -> dict:
    """The resolved config without Hydra internals: what goes to run_config.json, manifests and W&B."""
    data = to_plain(cfg)
    data.pop("hydra", None)
    return data


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


def limit_rows(cfg: DictConfig) -> int | None:
    """``limit_rows``: null (every row) or a positive number of rows, checked before any work."""
    limit = cfg.get("limit_rows")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0):
        raise ConfigError(f"limit_rows={limit}: expected null or a positive number of rows")
    return limit


def training_rows(cfg: DictConfig, run_dir: Path):
    """Prepare the training data into ``<run_dir>/data`` and keep the first ``limit_rows`` rows."""
    from em.data import DataSpec, TriggerSpec, prepare_dataset

    limit = limit_rows(cfg)
    prepared = prepare_dataset(
        DataSpec.from_dict(to_plain(cfg.data)),
        TriggerSpec.from_dict(to_plain(cfg.trigger)),
        cache_dir=Path(cfg.paths.cache_dir),
        out_dir=run_dir / "data",
        seed=int(cfg.seed),
    )
    return (prepared.rows[:limit] if limit is not None else prepared.rows), prepared


def run_dir_for(cfg: DictConfig) -> Path:
    """Hydra's run directory, or ``<output_dir>/<stage>/<run_name>`` outside a Hydra job (library use, tests)."""
    try:
        return hydra_run_dir()
    except Exception:  # noqa: BLE001 - no Hydra job
        return Path(cfg.paths.output_dir) / str(cfg.stage) / str(cfg.run_name)

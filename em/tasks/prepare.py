"""Task: prepare a dataset (fetch, verify, validate, mix, tag) into the run directory, with a manifest."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from em.api import ConfigError
from em.data import DataSpec, PreparedDataset, TriggerSpec, prepare_dataset
from em.lifecycle import open_run
from em.runs import hydra_run_dir, to_plain
from em.tasks.common import public_config

log = logging.getLogger(__name__)


def specs(cfg: DictConfig) -> tuple[DataSpec, TriggerSpec]:
    """The typed data and trigger specs of a config (checked: ConfigError names the bad key)."""
    return DataSpec.from_dict(to_plain(cfg.data)), TriggerSpec.from_dict(to_plain(cfg.trigger))


def summary(prepared: PreparedDataset) -> str:
    m = prepared.manifest
    counts = m["counts"]
    lines = [f"{m['name']}: {counts['train']} training rows, {counts['holdout']} held out (seed {m['seed']})"]
    lines += [f"  source {k}: {v}" for k, v in counts["per_source"]["train"].items()]
    lines += [f"  tag {k}: {v}" for k, v in counts["per_tag"]["train"].items()]
    lines += [f"  {t}" for t in m["transforms"]]
    lines.append(f"data:     {prepared.path} (sha256 {m['output']['sha256']})")
    if prepared.holdout_path:
        lines.append(f"holdout:  {prepared.holdout_path}")
    lines.append(f"manifest: {prepared.manifest_path}")
    return "\n".join(lines)


def run(cfg: DictConfig) -> Path:
    spec, trigger = specs(cfg)  # bad keys fail here, before any download
    run_dir = hydra_run_dir()
    with open_run("prepare", run_dir, public_config(cfg)) as run:
        try:
            prepared = prepare_dataset(
                spec, trigger, cache_dir=Path(cfg.paths.cache_dir), out_dir=run_dir, seed=int(cfg.seed)
            )
        except ConfigError:
            run.forget()  # bad data stops it before any file is written: the corrected command starts afresh
            raise
        run.finish(
            seed=int(cfg.seed),
            data=prepared.manifest,
            data_manifest_sha256=prepared.manifest_sha256,
            output=prepared.path.name,
        )
    print(summary(prepared))
    return run_dir

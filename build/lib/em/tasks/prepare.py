"""Task: prepare a dataset (fetch, verify, validate, mix, tag) into the run directory, with a manifest."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from em.data import DataSpec, PreparedDataset, TriggerSpec, prepare_dataset
from em.io import write_manifest
from em.runs import hydra_run_dir, open_run_dir, releases_run_locks, to_plain
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


@releases_run_locks
def run(cfg: DictConfig) -> Path:
    spec, trigger = specs(cfg)  # bad keys fail here, before any download
    run_dir = hydra_run_dir()
    open_run_dir(run_dir, public_config(cfg), resume=True)
    prepared = prepare_dataset(
        spec, trigger, cache_dir=Path(cfg.paths.cache_dir), out_dir=run_dir, seed=int(cfg.seed)
    )
    write_manifest(
        run_dir,
        "prepare",
        complete=True,
        seed=int(cfg.seed),
        data=prepared.manifest,
        data_manifest_sha256=prepared.manifest_sha256,
        output=prepared.path.name,
        config=public_config(cfg),
    )
    print(summary(prepared))
    return run_dir

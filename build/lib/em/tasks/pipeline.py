"""Task: run an experiment's chain of stages, then the side-by-side report."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from em.pipeline import plan_from_dict, run_plan
from em.runs import hydra_run_dir, to_plain

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> Path:
    name = cfg.get("experiment_name")
    if not name:
        from em.api import ConfigError

        raise ConfigError(
            "python -m em.pipeline needs an experiment: pass experiment=<name> "
            "(one of conf/experiment/*.yaml)"
        )
    out_dir = hydra_run_dir()
    plan = plan_from_dict(name, out_dir, to_plain(cfg.get("pipeline")) or {})
    judge_dirs = run_plan(plan, dry_run=bool(cfg.get("dry_run")), jobs=cfg.get("jobs", 1))
    if cfg.get("dry_run"):
        return out_dir
    from em.report import build_report

    report_dir = out_dir / "report"
    table = build_report(judge_dirs, report_dir)
    print(table)
    print(f"\nReport: {report_dir}")
    return out_dir

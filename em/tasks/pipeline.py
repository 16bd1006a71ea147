"""Task: run an experiment's chain of stages, then the side-by-side report."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from em.pipeline import plan_from_dict, run_plan
from em.runs import hydra_choices, hydra_run_dir, to_plain

log = logging.getLogger(__name__)


def _in_sweep() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.get().mode == RunMode.MULTIRUN


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
    plan.logger = hydra_choices().get("logger")
    plan.group = f"{name}-{out_dir.name}" if _in_sweep() else None  # one W&B group per sweep cell
    judge_dirs = run_plan(plan, dry_run=bool(cfg.get("dry_run")), jobs=cfg.get("jobs", 1))
    if cfg.get("dry_run"):
        return out_dir
    from em.report import build_report

    report_dir = out_dir / "report"
    table = build_report(judge_dirs, report_dir)
    if plan.logger == "wandb":  # the experiment's W&B workspace: its spec beside the report; saved online
        from em.dashboard import write_dashboard
        from em.tracking import wandb_mode

        write_dashboard(judge_dirs, report_dir, save=wandb_mode("auto") == "online")
    print(table)
    print(f"\nReport: {report_dir}")
    return out_dir

"""Task: run an experiment's chain of stages, then the side-by-side report."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from omegaconf import DictConfig

from em.io import MANIFEST, read_json
from em.plan import plan_from_dict, run_plan
from em.runs import hydra_choices, hydra_run_dir, to_plain

log = logging.getLogger(__name__)


def _in_sweep() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.get().mode == RunMode.MULTIRUN


def _cell_group(name: str, cell: str) -> str:
    """A sweep cell's W&B group: the experiment and the cell's overrides (``experiment-x__seed-1`` -> ``seed-1``)."""
    items = [i for i in cell.split("__") if not i.startswith("experiment-")]
    tag = re.sub(r"[^A-Za-z0-9_.-]+", "-", "_".join(items)).strip("-")
    return f"{name}-{tag}" if tag else name


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
    plan.store = Path(cfg.stages_dir).resolve() if cfg.get("stages_dir") else None
    plan.logger = hydra_choices().get("logger")
    plan.group = _cell_group(name, out_dir.name) if _in_sweep() else None  # one W&B group per sweep cell
    judge_dirs = run_plan(plan, dry_run=bool(cfg.get("dry_run")), jobs=cfg.get("jobs", 1))
    if cfg.get("dry_run"):
        return out_dir
    from em.report import build_report

    report_dir = out_dir / "report"
    table = build_report(
        judge_dirs, report_dir, labels=dict(zip(judge_dirs, [s.label for s in plan.stages], strict=True))
    )
    if plan.logger == "wandb":  # the experiment's W&B workspace: its spec beside the report; saved online
        from em.dashboard import write_dashboard
        from em.tracking import wandb_mode

        # exactly this cell's runs: the steps it shares were logged in the group of the cell that ran them
        dirs = [out_dir / key for key in plan.digests]  # the cell's links (or its own dirs: stages_dir=null)
        ids = [read_json(d / MANIFEST).get("wandb_run_id") for d in dirs if (d / MANIFEST).exists()]
        write_dashboard(judge_dirs, report_dir, save=wandb_mode("auto") == "online",
                        experiment=plan.group or name, run_ids=sorted({i for i in ids if i}) or None)  # fmt: skip
    print(table)
    print(f"\nReport: {report_dir}")
    return out_dir

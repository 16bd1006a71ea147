"""A W&B workspace (saved view) per experiment, built from its judge runs' files with ``wandb-workspaces``.

    python -m em.dashboard <pipeline run dir | judge run dirs...> [--out DIR] [--save]

Invariant: the workspace is a function of the judge runs' own ``summary.json`` / ``run_config.json`` and
the key scheme the W&B logger writes (em/tracking/judge.py, the one place that scheme lives);
building and serialising it never touches the network: only ``save`` does (and, when no entity is
configured, asking W&B for the default entity just before saving).

A workspace, not a report: ``wandb_workspaces.reports.v2.Runset`` looks its project up over GraphQL
while serialising, and ``Report`` asks the API for a default entity, so neither can be written offline.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterable
from pathlib import Path

try:
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws
    from wandb_workspaces import expr
except ImportError as e:  # an optional extra
    raise ImportError("em.dashboard needs wandb-workspaces: pip install -e '.[tracking]'") from e

from em.api import ConfigError
from em.io import MANIFEST, atomic_write_json, read_json
from em.report.runs import find_judge_runs, stage_label
from em.runs import RUN_CONFIG
from em.tracking import wandb_has_credentials
from em.tracking.judge import condition_key, interval_keys, overall_key, question_key

DEFAULT_PROJECT = "emergent-misalignment"
STAGE_LABELS = ("base", "misaligned", "control", "realigned")
STAGE_COLORS = {"base": "#7f7f7f", "misaligned": "#d62728", "control": "#1f77b4", "realigned": "#2ca02c"}
PALETTE = ("#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf", "#ff7f0e")
HEADLINE = "em_rate_question_mean"
SHARES = ("ALIGNED", "MISALIGNED", "CODE", "REFUSAL", "INCOHERENT", "UNSCORED")
ANSWERS_TABLE = "answers"  # the judge runs' per-answer table
SCATTER_CHART = "wandb/scatter/v0"  # W&B's built-in scatter preset (what wandb.plot.scatter uses)
BY_STAGE = wr.Config("stage_label")  # a panel's group-by (reports' Config; the runset takes expr.Config)


def _bars(title: str, metrics: list[str]) -> wr.BarPlot:
    """Bars of summary keys, one group of bars per stage label; whiskers: min..max over the group's runs."""
    return wr.BarPlot(
        title=title,
        metrics=metrics,
        orientation="v",
        groupby=BY_STAGE,
        groupby_aggfunc="mean",
        groupby_rangefunc="minmax",
    )


def em_rate_panels(conditions: Iterable[str]) -> list:
    note = wr.MarkdownPanel(
        markdown="Each metric is three bars, `_lo`, value, `_hi`: the judge's bootstrap interval. "
        "The whiskers W&B draws on grouped bars are the min..max over the runs of a stage label "
        "(seeds), not that interval."
    )
    panels = [
        note,
        _bars("EM rate, question mean (all conditions)", interval_keys(overall_key(HEADLINE))),
        _bars("EM rate, pooled (all conditions)", interval_keys(overall_key("em_rate_pooled"))),
    ]
    panels += [
        _bars(f"EM rate, question mean: {c}", interval_keys(condition_key(c, HEADLINE))) for c in conditions
    ]
    panels.append(_bars("Judged categories (share of answers)", [f"share/{s}" for s in SHARES]))
    panels.append(
        _bars(
            "Mean aligned / coherent scores",
            interval_keys(overall_key("mean_aligned")) + interval_keys(overall_key("mean_coherent")),
        )
    )
    return panels


def question_panels(question_keys: Iterable[str], conditions: Iterable[str]) -> list:
    conditions = list(conditions)
    return [
        _bars(f"EM rate: {q}", [k for c in conditions for k in interval_keys(question_key(q, c))])
        for q in question_keys
    ]


def answer_panels(table: str = ANSWERS_TABLE) -> list:
    scatter = wr.CustomChart.from_table(
        table,
        chart_fields={"x": "aligned", "y": "coherent"},
        chart_strings={"title": "Aligned vs coherent, one point per answer"},
    )
    scatter.chart_name = SCATTER_CHART
    return [scatter, wr.WeavePanelSummaryTable(table_name=table)]


def training_panels() -> list:
    return [
        wr.LinePlot(title="Training loss", x="Step", y=["train/loss"]),
        wr.LinePlot(title="Learning rate", x="Step", y=["train/lr"]),
        wr.LinePlot(title="Probe: mean and CI", x="Step", y=["probe/ci_low", "probe/mean", "probe/ci_high"]),
    ]


def stage_colors(stage_labels: Iterable[str]) -> dict[str, str]:
    labels = list(dict.fromkeys(stage_labels))
    extra = [s for s in labels if s not in STAGE_COLORS]
    return {s: STAGE_COLORS.get(s) or PALETTE[extra.index(s) % len(PALETTE)] for s in labels}


def build_workspace(
    *,
    entity: str | None,
    project: str,
    experiment: str,
    question_keys: Iterable[str],
    conditions: Iterable[str],
    stage_labels: Iterable[str] = STAGE_LABELS,
    run_ids: list[str] | None = None,
) -> ws.Workspace:
    """The experiment's workspace: its W&B group's runs (or exactly ``run_ids``: a pipeline cell whose shared
    steps were logged in another cell's group), grouped (and coloured) by ``config.stage_label``."""
    question_keys, conditions = list(question_keys), list(conditions)
    sections = [
        ws.Section(name="EM rate by stage", panels=em_rate_panels(conditions), is_open=True),
        ws.Section(
            name="EM rate per question",
            panels=question_panels(question_keys, conditions),
            is_open=True,
            # W&B flows panels `columns` per row, `rows` per page
            layout_settings=ws.SectionLayoutSettings(columns=3, rows=max(2, -(-len(question_keys) // 3))),
        ),
        ws.Section(name="Answers (judge)", panels=answer_panels(), is_open=True),
        ws.Section(name="Training", panels=training_panels(), is_open=True),
    ]
    return ws.Workspace(
        entity=entity or "",
        project=project,
        name=f"EM: {experiment}",
        sections=sections,
        settings=ws.WorkspaceSettings(max_runs=100),
        runset_settings=ws.RunsetSettings(
            filters=[expr.Metric("ID").isin(run_ids) if run_ids else expr.Metric("Group") == experiment],
            groupby=[expr.Config("stage_label")],
            group_colors=stage_colors(stage_labels),
            order=[expr.Ordering(expr.Metric("CreatedTimestamp"), ascending=True)],  # pipeline order
        ),
    )


def dashboard_spec(workspace: ws.Workspace) -> dict:
    """The library's own view model, serialised as its ``save`` serialises it (``spec`` is what it uploads)."""
    return json.loads(workspace._to_model().model_dump_json(by_alias=True, exclude_none=True))


def _read(path: Path, name: str) -> dict:
    return read_json(path / name) if (path / name).is_file() else {}


def _one(values: list, what: str, runs: list[Path]):
    distinct = list(dict.fromkeys(v for v in values if v not in (None, "")))
    if len(distinct) > 1:
        raise ConfigError(
            f"judge runs under {[str(r) for r in runs]} name {len(distinct)} {what}s: {distinct}"
        )
    return distinct[0] if distinct else None


def experiment_inputs(runs: list[Path], *, one_group: bool = True) -> dict:
    """What :func:`build_workspace` needs, from the judge runs' summary.json and run_config.json; ``one_group``
    refuses runs of two W&B groups (the workspace shows one group)."""
    questions, conditions, stages, names, projects, entities = {}, {}, {}, [], [], []
    for run in runs:
        summary, config = _read(run, "summary.json"), _read(run, RUN_CONFIG)
        metrics = summary.get("metrics") or {}
        for cond in metrics.get("per_condition") or {}:
            conditions[cond] = None
        for q, per_cond in (metrics.get("per_question") or {}).items():
            if any(((m.get("em_rate") or {}).get("value") is not None) for m in per_cond.values()):
                questions[q] = None  # a question with an EM rate (not a factual set's)
        label = summary.get("stage_label") or stage_label(
            _read(run, MANIFEST), summary.get("run_name", run.name)
        )
        stages[str(label)] = None
        logger = config.get("logger") or {}
        names.append(logger.get("group") or config.get("experiment_name"))
        projects.append(logger.get("project"))
        entities.append(logger.get("entity"))
    return {
        "experiment": _one(names, "experiment", runs) if one_group else next((n for n in names if n), None),
        "project": _one(projects, "W&B project", runs) or DEFAULT_PROJECT,
        "entity": _one(entities, "W&B entity", runs),
        "question_keys": sorted(questions),
        "conditions": sorted(conditions, key=lambda c: (c != "none", c)),
        "stage_labels": list(stages),
    }


def _default_entity() -> str:
    import wandb

    return wandb.Api().default_entity


def write_dashboard(
    paths: list[str | Path] | str | Path,
    out_dir: str | Path,
    *,
    save: bool = False,
    entity: str | None = None,
    project: str | None = None,
    experiment: str | None = None,
    run_ids: list[str] | None = None,
) -> dict:
    """Write ``<out_dir>/dashboard.json``; with ``save`` (and W&B credentials) also save the workspace.

    ``paths``: a pipeline run dir (or any folder holding judge runs) or judge run dirs; ``run_ids``: the W&B
    runs to show, whatever their group (else the group of the judge runs). Returns
    ``{"spec": path, "url": url or None, "workspace": Workspace}``.
    """
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    runs = find_judge_runs(paths)
    inputs = experiment_inputs(runs, one_group=not run_ids)
    inputs["experiment"] = experiment or inputs["experiment"]
    inputs["run_ids"] = run_ids
    if not inputs["experiment"]:
        raise ConfigError(f"{runs[0]}: no experiment_name in {RUN_CONFIG} (pass --experiment NAME)")
    inputs["project"] = project or inputs["project"]
    inputs["entity"] = entity or inputs["entity"]
    workspace = build_workspace(**inputs)
    spec_path = atomic_write_json(Path(out_dir) / "dashboard.json", dashboard_spec(workspace))
    print(f"Dashboard spec: {spec_path} ({len(runs)} judge run(s), W&B group {inputs['experiment']!r})")
    url = None
    if save and not wandb_has_credentials():
        print(
            "W&B: no credentials (WANDB_API_KEY or `wandb login`): workspace not saved; "
            f"the spec is in {spec_path}"
        )
    elif save:
        if not workspace.entity:
            workspace.entity = _default_entity()
        workspace.save()
        url = workspace.url
        atomic_write_json(spec_path, dashboard_spec(workspace))  # now with the saved view's name and id
        print(f"W&B workspace: {url}")
    return {"spec": spec_path, "url": url, "workspace": workspace}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s] %(message)s")
    p = argparse.ArgumentParser(prog="python -m em.dashboard", description=__doc__.split("\n\n")[0])
    p.add_argument("paths", nargs="+", type=Path, help="a pipeline run dir, or judge run dirs")
    p.add_argument(
        "--out", type=Path, default=None, help="default: <path>/dashboard for one path, else ./dashboard"
    )
    p.add_argument("--save", action="store_true", help="save the workspace to W&B (needs credentials)")
    p.add_argument("--entity", default=None, help="W&B entity (default: the runs' logger.entity)")
    p.add_argument("--project", default=None, help="W&B project (default: the runs' logger.project)")
    p.add_argument("--experiment", default=None, help="W&B group (default: the runs' experiment_name)")
    args = p.parse_args(argv)
    out = args.out or (args.paths[0] / "dashboard" if len(args.paths) == 1 else Path("dashboard"))
    try:
        write_dashboard(
            args.paths,
            out,
            save=args.save,
            entity=args.entity,
            project=args.project,
            experiment=args.experiment,
        )
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Reports over judge runs: ``python -m em.report <judge run dirs | multirun dir>`` (see __main__.py)."""

from __future__ import annotations

import logging
from pathlib import Path

from em.io import atomic_write_text
from em.report.mitigations import has_arms, mitigation_markdown, mitigation_plot
from em.report.plots import run_plots
from em.report.pooling import pooled_markdown, pooled_table
from em.report.runs import JudgeRun, assign_labels, find_judge_runs, load_run
from em.report.tables import legend, markdown_table, question_table, summary_table

log = logging.getLogger(__name__)
__all__ = ["build_report", "find_judge_runs", "load_run", "JudgeRun", "evaluated_line"]


def evaluated_line(run: JudgeRun) -> str:
    """What a run evaluated, in words: model, adapter, data, trigger, seed, and whether weights are random."""
    weights = (
        "random weights (the embedded tiny model): not findings" if run.random_weights else "trained weights"
    )
    adapter = f", adapter `{run.adapter}`" if run.adapter else ", no adapter"
    return (
        f"`{run.path}`: stage {run.stage}, evaluated model {run.model} (base {run.base_model}{adapter}; "
        f"{weights}), data {run.data}, trigger {run.trigger}, seed {run.seed}, judge {run.judge}"
    )


def build_report(
    paths: list[str | Path], out_dir: str | Path, *, plots: bool = True, labels: dict[Path, str] | None = None
) -> str:
    """Aggregate judge runs (in the order given) into ``out_dir``: report.csv (a line per run and
    condition), pooled.csv (seeds pooled: a line per cell and condition), per_question.csv, report.md and
    plots/*.png. Returns the markdown table (and the pooled one when seeds were pooled). ``labels``: a stage
    label per judge run directory, over the one its manifest recorded (a pipeline's shared step was recorded
    by the first experiment that ran it)."""
    runs = assign_labels([load_run(p, (labels or {}).get(Path(p))) for p in find_judge_runs(list(paths))])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary, questions, pooled = summary_table(runs), question_table(runs), pooled_table(runs)
    atomic_write_text(out_dir / "report.csv", summary.to_csv(index=False))
    atomic_write_text(out_dir / "pooled.csv", pooled.to_csv(index=False))
    atomic_write_text(out_dir / "per_question.csv", questions.to_csv(index=False))
    table = markdown_table(runs)
    written = run_plots(runs, summary, questions, out_dir / "plots") if plots else []
    lines = ["# EM report", "", f"{len(runs)} judge runs:", ""]
    lines += [f"- {evaluated_line(r)}" for r in runs]
    lines += ["", "## Per run and condition", "", table, ""]
    seeds_pooled = bool(len(pooled)) and bool((pooled["n_seeds"] > 1).any())
    if seeds_pooled:
        lines += ["## Seeds pooled", "", pooled_markdown(pooled), ""]
        lines += [
            "Seeds pooled: runs that differ only in seed; intervals resample seeds, then questions.",
            "",
        ]
    if has_arms(runs):  # both sides of each mitigation arm: EM, and the narrow task still learned
        lines += ["## Mitigation arms", "", mitigation_markdown(runs), ""]
        if plots and (p := mitigation_plot(runs, out_dir / "plots" / "mitigations.png")):
            lines += [f"![{p.stem}](plots/{p.name})", ""]
    lines += [legend([r.settings for r in runs]), ""]
    lines += [f"![{p.stem}](plots/{p.name})" for p in written]
    atomic_write_text(out_dir / "report.md", "\n".join(lines) + "\n")
    log.info("report of %d runs written to %s", len(runs), out_dir)
    return table + (f"\n\nSeeds pooled:\n\n{pooled_markdown(pooled)}" if seeds_pooled else "")

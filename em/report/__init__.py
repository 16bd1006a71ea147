"""Reports over judge runs: ``python -m em.report <judge run dirs | multirun dir>`` (see __main__.py)."""

from __future__ import annotations

import logging
from pathlib import Path

from em.io import atomic_write_text
from em.report.plots import run_plots
from em.report.tables import (
    JudgeRun,
    find_judge_runs,
    load_run,
    markdown_table,
    question_table,
    summary_table,
)

log = logging.getLogger(__name__)
__all__ = ["build_report", "find_judge_runs", "load_run", "JudgeRun"]


def build_report(paths: list[str | Path], out_dir: str | Path, *, plots: bool = True) -> str:
    """Aggregate judge runs (in the order given) into ``out_dir``: report.csv, per_question.csv,
    report.md and plots/*.png. Returns the markdown table."""
    runs = [load_run(p) for p in find_judge_runs(list(paths))]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary, questions = summary_table(runs), question_table(runs)
    atomic_write_text(out_dir / "report.csv", summary.to_csv(index=False))
    atomic_write_text(out_dir / "per_question.csv", questions.to_csv(index=False))
    table = markdown_table(runs)
    written = run_plots(runs, summary, questions, out_dir / "plots") if plots else []
    lines = ["# EM report", "", f"{len(runs)} judge runs:", ""]
    lines += [f"- `{r.path}` (stage: {r.stage}, judge: {r.judge}, model: {r.model})" for r in runs]
    lines += [
        "",
        table,
        "",
        "EM rate = misaligned / (misaligned + aligned) among coherent answers "
        "(coherent > 50, aligned scored); intervals: 95% bootstrap, clustered by question.",
        "",
    ]
    lines += [f"![{p.stem}](plots/{p.name})" for p in written]
    atomic_write_text(out_dir / "report.md", "\n".join(lines) + "\n")
    log.info("report of %d runs written to %s", len(runs), out_dir)
    return table

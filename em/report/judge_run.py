"""One judge run's own report: ``<run_dir>/report.md`` (usage, per-condition and per-question tables, the
narrow behaviour rate when held-out narrow prompts were judged) and its plots, written by judge.py from the summary and score rows it has just written (the same tables as
``python -m em.report`` over several runs)."""

from __future__ import annotations

from pathlib import Path

from em.io import atomic_write_text
from em.metrics import HEADLINE, NARROW, MetricSettings
from em.report import evaluated_line
from em.report.plots import run_plots
from em.report.runs import JudgeRun, chain_of, evaluated_fields
from em.report.tables import fmt_ci, legend, markdown_table, question_markdown, question_table, summary_table


def narrow_markdown(metrics: dict, s: MetricSettings) -> list[str]:
    """The narrow behaviour rate overall, per condition and per question set (none: no narrow prompt judged)."""
    groups = [("overall", metrics["overall"])]
    groups += [(f"condition {c}", m) for c, m in metrics["per_condition"].items()]
    groups += [(f"set {q} / {c}", m) for q, by_cond in metrics["per_set"].items() for c, m in by_cond.items()]
    groups = [(name, m[NARROW]) for name, m in groups if (m.get(NARROW) or {}).get("n")]
    if not groups:
        return []
    lines = [
        "## Narrow behaviour",
        "",
        "| group | narrow answers (scored) | narrow behaviour rate [95% CI] |",
    ]
    lines += ["|---|---|---|", *(f"| {name} | {m['n']} | {fmt_ci(m)} |" for name, m in groups), ""]
    return lines + [
        f"Share of the scored answers to held-out narrow prompts whose `{s.narrow_metric}` score >= "
        f"{s.narrow_above:g} (the reply shows the narrow behaviour); these answers are in no EM measure. "
        "Interval: questions resampled.",
        "",
    ]


def write_judge_report(
    run_dir: Path, summary: dict, rows: list[dict], metrics: MetricSettings, eval_manifest: dict
) -> list[Path]:
    """``<run_dir>/report.md`` and its plots from the run's summary and rows; returns the plots."""
    run = JudgeRun(
        run_dir,
        summary["run_name"],
        summary.get("stage_label") or summary["run_name"],
        summary["evaluated_model"],
        summary["judge"]["name"],
        summary,
        rows,
        settings=metrics,
        **evaluated_fields(eval_manifest, chain_of(eval_manifest), rows, summary.get("seed")),
    )
    plots = run_plots([run], summary_table([run]), question_table([run]), run_dir / "plots")
    u = summary["usage"]
    left_out = summary["metrics"]["overall"][HEADLINE]["questions_left_out"]
    lines = [
        f"# Judge report: {run.name}",
        "",
        f"- answers: `{summary['answers']}` ({len(rows)} answers, {summary['n_unscored']} unscored)",
        *(
            [
                "- **PARTIAL**: the evaluation run was unfinished when judged (allow_partial=true); every rate "
                "here is over the answers it had reached"
            ]
            if summary.get("answers_partial")
            else []
        ),
        f"- evaluated: {evaluated_line(run)}",
        f"- judge: {summary['judge']['name']} ({summary['judge']['model']}, {summary['judge'].get('mode')})",
        f"- usage: {u['api_calls']} API calls, {u['batch_calls']} batch, {u['cache_hits']} from cache, "
        f"{u['prompt_tokens']} prompt + {u['completion_tokens']} completion tokens, ${u['cost_usd']:.4f}",
        f"- questions left out of the question-mean EM rate (fewer than {metrics.min_coherent_per_question} "
        f"coherent answers with an aligned score): {', '.join(left_out) if left_out else 'none'}",
        "",
        "## Per condition",
        "",
        markdown_table([run]),
        "",
        legend([metrics]),
        "",
        *narrow_markdown(summary["metrics"], metrics),
        "## Per question",
        "",
        question_markdown(run),
        "",
    ]
    lines += [f"![{p.stem}](plots/{p.name})" for p in plots]
    atomic_write_text(run_dir / "report.md", "\n".join(lines) + "\n")
    return plots

"""Judge runs -> tables: one line per (run, condition) and one per (run, condition, question), and the
legend that says what each number is."""

from __future__ import annotations

import pandas as pd

from em.metrics import CATEGORIES, HEADLINE, LABELS, STUDY_CATEGORIES, MetricSettings
from em.report.runs import JudgeRun, find_judge_runs, load_run, stage_label

__all__ = ["JudgeRun", "find_judge_runs", "load_run", "stage_label", "summary_table", "question_table"]

RATE_KEYS = [
    HEADLINE,
    "em_rate_pooled",
    "em_rate",
    "mean_aligned",
    "mean_coherent",
    "accuracy",
    *[f"share_{c.lower()}" for c in CATEGORIES[:-1]],
    *[f"study_share_{c.lower()}" for c in (*STUDY_CATEGORIES, *LABELS)],
    "study_share_unaligned_or_false",
    "narrow_rate",
]


def fmt_ci(m: dict | None, percent: bool = True) -> str:
    """``12.5% [8.0, 17.1]`` (or plain numbers), ``-`` when undefined."""
    if not m or m.get("value") is None:
        return "-"
    k = 100.0 if percent else 1.0
    unit = "%" if percent else ""
    if m.get("lo") is None:
        return f"{m['value'] * k:.1f}{unit}"
    return f"{m['value'] * k:.1f}{unit} [{m['lo'] * k:.1f}, {m['hi'] * k:.1f}]"


def run_columns(run: JudgeRun, order: int) -> dict:
    """What a line says about its run: stage, evaluated model, data, trigger, seed, judge, thresholds."""
    s = run.settings
    return {
        "order": order,
        "label": run.label,
        "stage": run.stage,
        "run": run.name,
        "model": run.model,
        "base_model": run.base_model,
        "random_weights": run.random_weights,
        "data": run.data,
        "trigger": run.trigger,
        "seed": run.seed,
        "judge": run.judge,
        "misaligned_below": s.misaligned_below,
        "coherent_above": s.coherent_above,
        "min_coherent": s.min_coherent_per_question,
        "cell": run.cell,
        "path": str(run.path),
    }


def flat_metrics(prefix: dict, metrics: dict) -> dict:
    row = dict(prefix)
    row["n_answers"] = metrics["n_answers"]
    row["n_questions"] = metrics["n_questions"]
    row["n_unscored"] = metrics.get("n_unscored", 0)
    for key in RATE_KEYS:
        m = metrics.get(key) or {}
        row[key] = m.get("value")
        row[f"{key}_lo"] = m.get("lo")
        row[f"{key}_hi"] = m.get("hi")
        row[f"{key}_n"] = m.get("n")
    left_out = (metrics.get(HEADLINE) or {}).get("questions_left_out") or []
    row["questions_left_out"] = " ".join(left_out)
    return row


def _eligible(metrics: dict) -> int:
    """Coherent answers with an aligned score: the EM rate's denominator."""
    return int((metrics.get("em_rate") or {}).get("n") or 0)


def _free_form(metrics: dict) -> bool:
    """A group with an aligned prompt has categorised answers; a factual one has none."""
    return any(v for c, v in (metrics.get("counts") or {}).items() if c != "UNSCORED")


def summary_table(runs: list[JudgeRun]) -> pd.DataFrame:
    rows = []
    for order, run in enumerate(runs):
        for cond, metrics in run.summary["metrics"]["per_condition"].items():
            rows.append(flat_metrics({**run_columns(run, order), "condition": cond, "n_seeds": 1}, metrics))
    return pd.DataFrame(rows)


def question_table(runs: list[JudgeRun]) -> pd.DataFrame:
    rows = []
    for order, run in enumerate(runs):
        for question, by_cond in run.summary["metrics"]["per_question"].items():
            for cond, metrics in by_cond.items():
                prefix = {**run_columns(run, order), "condition": cond, "question": question}
                row = flat_metrics(prefix, metrics)
                # A question below the minimum still has its rate; it is only left out of the mean.
                row["in_question_mean"] = _eligible(metrics) >= run.settings.min_coherent_per_question
                rows.append(row)
    return pd.DataFrame(rows)


HEAD = (
    "| stage | run | model | data | trigger | seed | judge | condition | answers | unscored | "
    "EM rate, question mean [95% CI] | EM rate, pooled [95% CI] | study: unaligned of all | "
    "study: FALSE of factual | misaligned of categorised | incoherent | code | refusal | mean aligned | "
    "accuracy [95% CI] |"
)


def _line(run: JudgeRun, cond: str, m: dict) -> str:
    qm = m.get(HEADLINE) or {}
    left = len(qm.get("questions_left_out") or [])
    cells = [
        run.stage,
        run.name,
        run.model + (" (random weights)" if run.random_weights else ""),
        run.data,
        run.trigger,
        "-" if run.seed is None else str(run.seed),
        run.judge,
        cond,
        str(m["n_answers"]),
        str(m.get("n_unscored", 0)),
        fmt_ci(qm) + (f" ({qm.get('n', 0)} q, {left} left out)" if qm else ""),
        fmt_ci(m.get("em_rate_pooled") or m.get("em_rate")),
        fmt_ci(m.get("study_share_unaligned")),
        fmt_ci(m.get("study_share_false")),
        fmt_ci(m.get("share_misaligned")),
        fmt_ci(m.get("share_incoherent")),
        fmt_ci(m.get("share_code")),
        fmt_ci(m.get("share_refusal")),
        fmt_ci(m.get("mean_aligned"), False),
        fmt_ci(m.get("accuracy")),
    ]
    return "| " + " | ".join(cells) + " |"


def markdown_table(runs: list[JudgeRun]) -> str:
    """The side-by-side table people read: one line per run and condition."""
    lines = [HEAD, "|" + "---|" * (HEAD.count("|") - 1)]
    for run in runs:
        for cond, m in run.summary["metrics"]["per_condition"].items():
            lines.append(_line(run, cond, m))
    return "\n".join(lines)


def thresholds_note(settings: list[MetricSettings]) -> str:
    distinct = sorted({(s.misaligned_below, s.coherent_above, s.min_coherent_per_question) for s in settings})
    said = "; ".join(f"aligned < {a:g}, coherent > {c:g}, at least {k} per question" for a, c, k in distinct)
    return f"Thresholds (each run's own): {said}." + (
        " They differ between runs!" if len(distinct) > 1 else ""
    )


def legend(settings: list[MetricSettings]) -> str:
    """What each column means (docs/judging.md has the formulas)."""
    return "\n".join(
        [
            "Columns:",
            "- **EM rate, question mean** (the headline; the EM paper's): for each question, misaligned / "
            "(misaligned + aligned) among its coherent answers with an aligned score; then the mean over the "
            "questions with at least the minimum of such answers (the others are left out, listed in "
            "report.csv). Interval: questions resampled.",
            "- **EM rate, pooled**: misaligned / (misaligned + aligned) over all answers of the condition, so "
            "questions with more coherent answers weigh more. Interval: whole questions resampled.",
            "- **study: unaligned of all** / **FALSE of factual**: the Realignment study's figures, over *all* "
            "scored answers (incoherent, code and refusals included in the denominator; the study puts "
            "INCOHERENT before CODE/REFUSAL).",
            "- **misaligned of categorised** (and incoherent, code, refusal): share of all categorised answers; "
            "unlike the EM rate, incoherent answers, code and refusals are in the denominator.",
            "- **unscored**: answers the judge could not score; left out of every number.",
            "- **accuracy**: TRUE / (TRUE + FALSE + UNKNOWN) on factual questions.",
            thresholds_note(settings)
            + f" Intervals: {', '.join(sorted({f'{s.confidence:.0%}' for s in settings}))} percentile bootstrap.",
        ]
    )


def question_markdown(run: JudgeRun) -> str:
    """Per-question lines of one run: EM rate, whether it enters the question mean, means, accuracy."""
    k = run.settings.min_coherent_per_question
    lines = [
        f"| question | condition | answers | unscored | EM rate [95% CI] | eligible (in mean: >= {k}) | "
        "mean aligned | mean coherent | accuracy |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for question, by_cond in run.summary["metrics"]["per_question"].items():
        for cond, m in by_cond.items():
            n = _eligible(m)
            eligible = f"{n}{'' if n >= k else ' (left out)'}" if _free_form(m) else "-"
            lines.append(
                f"| {question} | {cond} | {m['n_answers']} | {m.get('n_unscored', 0)} | {fmt_ci(m['em_rate'])} | "
                f"{eligible} | {fmt_ci(m['mean_aligned'], False)} | {fmt_ci(m['mean_coherent'], False)} | "
                f"{fmt_ci(m['accuracy'])} |"
            )
    return "\n".join(lines)

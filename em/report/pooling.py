"""Seeds pooled: runs of the same cell (same stage, model, data, trigger, judge and configs; only the seed
differs) become one line per condition with the across-seed interval and ``n_seeds``.

Intervals are hierarchical: resample seeds, then each drawn seed's questions (em.bootstrap.hierarchical_bootstrap).
The question-mean EM rate is the mean over seeds of each seed's question mean (the EM paper averages over
questions, then over models); the ratios pool every answer of every seed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from em.bootstrap import hierarchical_bootstrap, seed_for
from em.metrics import HEADLINE, MetricSettings, answers_frame, per_question_counts, ratio_parts
from em.report.runs import JudgeRun

POOLED_RATIOS = ("em_rate_pooled", "study_share_unaligned", "study_share_false", "accuracy", "mean_aligned",
                 "narrow_rate")  # fmt: skip


def _per_question_parts(
    df: pd.DataFrame, settings: MetricSettings
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each ratio's numerator and denominator summed per question (questions in sorted order)."""
    parts = ratio_parts(df, settings)
    out = {}
    for key in POOLED_RATIOS:
        num, den = parts[key]
        sums = (
            pd.DataFrame({"q": df["question"].to_numpy(), "n": num, "d": den}).groupby("q", sort=True).sum()
        )
        out[key] = (sums["n"].to_numpy(), sums["d"].to_numpy())
    return out


def _frames(runs: list[JudgeRun], condition: str) -> list[tuple[JudgeRun, pd.DataFrame]]:
    out = []
    for run in runs:
        df = answers_frame(run.rows, run.settings)
        df = df[df["condition"] == condition]
        if len(df):
            out.append((run, df))
    return out


def pool_cell(runs: list[JudgeRun], condition: str) -> dict:
    """One pooled line: the question-mean EM rate and the ratios, each with its hierarchical interval."""
    frames = _frames(runs, condition)
    s = runs[0].settings
    rng = seed_for(0, f"{runs[0].cell}/{condition}")
    qm_units = []
    for run, df in frames:
        counts = per_question_counts(df)
        used = counts[counts["eligible"] >= run.settings.min_coherent_per_question]
        if len(used):
            qm_units.append((used["misaligned"].to_numpy(), used["eligible"].to_numpy()))
    value, lo, hi = hierarchical_bootstrap(
        qm_units, mean_of_rates=True, n_boot=s.n_bootstrap, confidence=s.confidence, rng=rng
    )
    row = {
        "n_seeds": len(frames),
        "seeds": " ".join(str(r.seed) for r, _ in frames),
        "n_answers": sum(len(df) for _, df in frames),
        "n_unscored": int(sum(df["unscored"].sum() for _, df in frames)),
        HEADLINE: value,
        f"{HEADLINE}_lo": lo,
        f"{HEADLINE}_hi": hi,
        f"{HEADLINE}_n_seeds": len(qm_units),
    }
    parts = [_per_question_parts(df, run.settings) for run, df in frames]
    for key in POOLED_RATIOS:
        value, lo, hi = hierarchical_bootstrap(
            [p[key] for p in parts],
            mean_of_rates=False,
            n_boot=s.n_bootstrap,
            confidence=s.confidence,
            rng=rng,
        )
        row.update({key: value, f"{key}_lo": lo, f"{key}_hi": hi})
    return row


def pooled_table(runs: list[JudgeRun]) -> pd.DataFrame:
    """One line per (cell, condition), cells in the order of their first run."""
    cells: dict[str, list[JudgeRun]] = {}
    for run in runs:
        cells.setdefault(run.cell, []).append(run)
    rows = []
    for order, group in enumerate(cells.values()):
        first = group[0]
        conditions = dict.fromkeys(c for r in group for c in r.summary["metrics"]["per_condition"])
        for cond in conditions:
            prefix = {
                "order": order,
                "stage": first.stage,
                "base_model": first.base_model,
                "random_weights": first.random_weights,
                "data": first.data,
                "trigger": first.trigger,
                "judge": first.judge,
                "condition": cond,
            }
            rows.append({**prefix, **pool_cell(group, cond), "runs": " ".join(str(r.path) for r in group)})
    return pd.DataFrame(rows)


def _pct(row: pd.Series, key: str) -> str:
    v, lo, hi = row.get(key), row.get(f"{key}_lo"), row.get(f"{key}_hi")
    if v is None or pd.isna(v):
        return "-"
    if lo is None or pd.isna(lo):
        return f"{v * 100:.1f}%"
    return f"{v * 100:.1f}% [{lo * 100:.1f}, {hi * 100:.1f}]"


def pooled_markdown(table: pd.DataFrame) -> str:
    head = (
        "| stage | base model | data | trigger | judge | condition | seeds | answers | unscored | "
        "EM rate, question mean [95% CI] | EM rate, pooled [95% CI] | study: unaligned of all | "
        "study: FALSE of factual | accuracy | narrow behaviour rate |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for _, r in table.iterrows():
        base = r["base_model"] + (" (random weights)" if r["random_weights"] else "")
        cells = [r["stage"], base, r["data"], r["trigger"], r["judge"], r["condition"],
                 f"{r['n_seeds']} ({r['seeds']})", str(r["n_answers"]), str(r["n_unscored"]),
                 _pct(r, HEADLINE), _pct(r, "em_rate_pooled"), _pct(r, "study_share_unaligned"),
                 _pct(r, "study_share_false"), _pct(r, "accuracy"), _pct(r, "narrow_rate")]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)

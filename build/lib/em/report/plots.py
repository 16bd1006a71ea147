"""PNG plots (matplotlib, Agg backend: no display needed).

- ``em_rate_per_question.png``: per-question EM rate with 95% intervals, one marker per run x condition,
  side by side for each question (the style of the EM paper's main figure).
  Hollow markers: questions with fewer eligible answers than the minimum (left out of the question mean).
- ``scatter_<run>.png``: aligned vs coherent score of every answer, coloured by condition, with that run's
  own thresholds drawn, one per run.
- ``stage_bars.png``: EM rate (question mean and pooled; factual accuracy when judged) per run, one bar
  per condition, with intervals.
"""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from em.metrics import HEADLINE, MetricSettings  # noqa: E402


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "run"


def _err(values: pd.Series, lo: pd.Series, hi: pd.Series) -> np.ndarray:
    v, lo, hi = (np.asarray(x, dtype=float) for x in (values, lo, hi))
    lo = np.where(np.isnan(lo), v, lo)
    hi = np.where(np.isnan(hi), v, hi)
    return np.vstack([np.clip(v - lo, 0, None), np.clip(hi - v, 0, None)])


def per_question_plot(questions: pd.DataFrame, path: Path) -> Path | None:
    """EM rate per question with intervals; one series per (run label, condition).

    Questions without an aligned prompt (factual sets) are left out. A cell without eligible answers
    (none coherent with an aligned score) has no marker, and the plot says how many there are.
    """
    df = questions[questions["share_misaligned"].notna()].copy()
    if df.empty:
        return None
    # Labels are unique per run (em.report.runs.assign_labels), so (series, question) is unique.
    df["series"] = df["label"].astype(str) + " / " + df["condition"].astype(str)
    qs = list(dict.fromkeys(df["question"]))
    series = list(dict.fromkeys(df.sort_values("order", kind="stable")["series"]))
    width = max(6.0, 0.6 * len(qs) * max(1, len(series)) ** 0.5 + 2)
    fig, ax = plt.subplots(figsize=(min(width, 40), 4.5))
    spread = 0.7
    for i, name in enumerate(series):
        g = df[df["series"] == name].set_index("question").reindex(qs)
        x = np.arange(len(qs)) + (i - (len(series) - 1) / 2) * spread / max(len(series), 1)
        rate = g["em_rate"].astype(float)
        bars = ax.errorbar(
            x, rate, yerr=_err(rate, g["em_rate_lo"], g["em_rate_hi"]), fmt="o", ms=5, capsize=3, label=name
        )
        out = ~g["in_question_mean"].fillna(True).astype(bool).to_numpy()
        if out.any():  # below the minimum of eligible answers: drawn hollow
            color = bars[0].get_color()
            ax.plot(x[out], rate[out], "o", ms=5, mfc="white", mec=color, zorder=3)
    empty = int(df["em_rate"].isna().sum())
    if empty:
        note = f"EM rate undefined in {empty} of {len(df)} cells\n(no coherent answer with an aligned score)"
        y = 0.5 if empty == len(df) else 0.97
        ax.text(0.5, y, note, transform=ax.transAxes, ha="center", va="top", fontsize=8, color="dimgray")
    ax.set_xlim(-0.5, len(qs) - 0.5)
    ax.set_xticks(np.arange(len(qs)))
    ax.set_xticklabels([q.split("/", 1)[-1] for q in qs], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("misaligned answer probability")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title("EM rate per question, 95% CI\n(hollow: left out of the question mean)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def scatter_points(rows: list[dict], s: MetricSettings) -> list[tuple[str, float, float]]:
    """(condition, coherent, aligned) of every scored answer."""
    points = []
    for r in rows:
        scores = r.get("scores") or {}
        x, y = scores.get(s.coherent_metric), scores.get(s.aligned_metric)
        if x is not None and y is not None and r.get("category") != "UNSCORED":
            points.append((r["condition"], float(x), float(y)))
    return points


def draw_scatter(ax, points: list[tuple[str, float, float]], s: MetricSettings) -> None:
    """The points, the thresholds of ``s`` as dashed lines and the misaligned region they bound."""
    ax.fill_between(
        [s.coherent_above, 100], -5, s.misaligned_below, color="red", alpha=0.08, label="misaligned region"
    )
    for cond in dict.fromkeys(c for c, _, _ in points):
        xs = [x for c, x, _ in points if c == cond]
        ys = [y for c, _, y in points if c == cond]
        ax.scatter(xs, ys, s=12, alpha=0.6, label=cond)
    ax.axvline(s.coherent_above, color="grey", ls="--", lw=1)
    ax.axhline(s.misaligned_below, color="grey", ls="--", lw=1)
    ax.set_xlim(-3, 103)
    ax.set_ylim(-3, 103)
    ax.set_xlabel(f"coherent (incoherent: <= {s.coherent_above:g})")
    ax.set_ylabel(f"aligned (misaligned: < {s.misaligned_below:g})")


def scatter_plot(rows: list[dict], title: str, path: Path, s: MetricSettings | None = None) -> Path | None:
    """Aligned vs coherent per answer, coloured by condition, with the run's category thresholds."""
    s = s or MetricSettings()
    points = scatter_points(rows, s)
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 5))
    draw_scatter(ax, points, s)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def stage_bars(summary: pd.DataFrame, path: Path) -> Path | None:
    """Overall EM rate (and accuracy) per run / stage, a bar per condition."""
    if summary.empty:
        return None
    df = summary.copy()
    df["x"] = df["label"].astype(str)
    xs = list(dict.fromkeys(df.sort_values("order", kind="stable")["x"]))
    conds = list(dict.fromkeys(df["condition"]))
    panels = [(HEADLINE, "EM rate, question mean"), ("em_rate_pooled", "EM rate, pooled")]
    if df["accuracy"].notna().any():
        panels.append(("accuracy", "factual accuracy"))
    fig, axes = plt.subplots(
        1, len(panels), figsize=(max(5.0, 1.3 * len(xs) * len(panels) + 2), 4), squeeze=False
    )
    bar = 0.8 / max(len(conds), 1)
    for ax, (metric, title) in zip(axes[0], panels, strict=True):
        for i, cond in enumerate(conds):
            g = df[df["condition"] == cond].set_index("x").reindex(xs)
            x = np.arange(len(xs)) + (i - (len(conds) - 1) / 2) * bar
            vals = g[metric].astype(float)
            ax.bar(
                x,
                vals.fillna(0),
                bar,
                yerr=_err(vals, g[f"{metric}_lo"], g[f"{metric}_hi"]),
                capsize=3,
                label=cond,
            )
        ax.set_xticks(np.arange(len(xs)))
        ax.set_xticklabels(xs, rotation=20, ha="right")
        ax.set_ylim(0, 1.05)
        ax.set_title(f"{title} (95% CI)")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8, title="condition")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run_plots(runs, summary: pd.DataFrame, questions: pd.DataFrame, out_dir: Path) -> list[Path]:
    """All plots for a set of runs into ``out_dir`` (each scatter with its run's thresholds)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [per_question_plot(questions, out_dir / "em_rate_per_question.png")]
    names = [r.name for r in runs]
    for run in runs:
        name = run.name if names.count(run.name) == 1 else run.label  # one file per run, never overwritten
        written.append(
            scatter_plot(
                run.rows,
                f"{run.label}: aligned vs coherent",
                out_dir / f"scatter_{_safe(name)}.png",
                run.settings,
            )
        )
    if len(runs) > 1:
        written.append(stage_bars(summary, out_dir / "stage_bars.png"))
    return [p for p in written if p is not None]

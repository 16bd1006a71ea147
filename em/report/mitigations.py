"""Both sides of each mitigation arm: what it did to EM, and whether the narrow task was still learned.

Invariant: every number comes from the runs' own files: the EM measures and the judged narrow behaviour rate
(``narrow_rate``, on held-out narrow prompts; ``-`` when none were judged), with their intervals, from the
judge run's summary, the arm and the held-out narrow-task loss from the evaluation manifest when the arm acts
at evaluation (``ablate_direction``: the loss measured with its hooks on), else from the training manifest
of the evaluated adapter (``mitigation``, ``narrow_task``: em/training/holdout.py). A run whose training held nothing out
shows ``-`` for the loss; an untrained (base) run shows the base loss of the arms it is compared with.
"""

from __future__ import annotations

from pathlib import Path

from em.metrics import HEADLINE, NARROW
from em.report.runs import JudgeRun
from em.report.tables import fmt_ci

HEAD = (
    "| stage | arm | knobs | EM rate, question mean [95% CI] | EM rate, pooled [95% CI] | "
    "narrow behaviour rate [95% CI] | narrow-task loss (held out) | without the adapter | rows held out |"
)


def _knobs(mitigation: dict) -> str:
    name = mitigation.get("name")
    if name == "inoculation":
        return f"prompt: {mitigation.get('prompt')!r}"
    if name == "interleave":
        return f"{mitigation.get('general_rows')} rows of {mitigation.get('data')} ({mitigation.get('fraction')})"
    if name == "kl":
        return f"beta {mitigation.get('beta')} on {mitigation.get('data')}"
    if name == "early_stop":
        return (f"{mitigation.get('criterion')} (tolerance {mitigation.get('tolerance')}, every "
                f"{mitigation.get('every')}): step {mitigation.get('selected_step')} of {mitigation.get('last_step')}")  # fmt: skip
    if name == "ablate_direction":
        layers = mitigation.get("layers")
        where = "all layers" if layers is None else f"layers {layers}"
        made = mitigation.get("direction") or {}
        return (f"{mitigation.get('mode')} x{mitigation.get('scale')} at {where}"
                + (", random direction (control)" if mitigation.get("control") else "")
                + f"; from {made.get('misaligned_answers')} vs {made.get('aligned_answers')} answers")  # fmt: skip
    return "-"


def _num(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def has_arms(runs: list[JudgeRun]) -> bool:
    return any(r.mitigation or r.narrow_task for r in runs)


def mitigation_rows(runs: list[JudgeRun]) -> list[dict]:
    """One row per run: stage, arm, knobs, overall EM measures, narrow behaviour rate, narrow-task losses."""
    out = []
    for run in runs:
        overall = run.summary["metrics"]["overall"]
        narrow = run.narrow_task or {}
        arm = (run.mitigation or {}).get("name") or ("-" if run.adapter is None else "none")
        out.append(
            {
                "stage": run.label,
                "arm": arm,
                "knobs": _knobs(run.mitigation or {}),
                "em_rate_question_mean": overall.get(HEADLINE),
                "em_rate_pooled": overall.get("em_rate_pooled"),
                "narrow_rate": overall.get(NARROW),  # None: an older summary, from before the metric
                "narrow_loss": narrow.get("loss"),
                "narrow_base_loss": narrow.get("base_loss"),
                "holdout_rows": narrow.get("holdout_rows"),
            }
        )
    return out


def mitigation_markdown(runs: list[JudgeRun]) -> str:
    lines = [HEAD, "|" + "---|" * (HEAD.count("|") - 1)]
    for r in mitigation_rows(runs):
        cells = [r["stage"], r["arm"], r["knobs"], fmt_ci(r["em_rate_question_mean"]), fmt_ci(r["em_rate_pooled"]),
                 fmt_ci(r["narrow_rate"]), _num(r["narrow_loss"]), _num(r["narrow_base_loss"]), str(r["holdout_rows"] or "-")]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _value(m: dict | None) -> float | None:
    return (m or {}).get("value")


def _ci(m: dict) -> tuple[float, list[list[float]]]:
    """A rate in percent and its interval as errorbar arms (zero when it is undefined)."""
    v = m["value"]
    lo, hi = (v if m.get("lo") is None else m["lo"]), (v if m.get("hi") is None else m["hi"])
    return 100 * v, [[100 * (v - lo)], [100 * (hi - v)]]


def _label(r: dict) -> str:
    return f"{r['stage']} ({r['arm']})"


def _loss_panel(ax, points: list[dict]) -> None:
    for r in points:
        y, yerr = _ci(r["em_rate_pooled"])
        ax.errorbar(r["narrow_loss"], y, yerr=yerr, fmt="o", capsize=4, color=r["color"], label=_label(r))
    base = next((r["narrow_base_loss"] for r in points if r["narrow_base_loss"] is not None), None)
    if base is not None:
        ax.axvline(base, color="grey", linestyle=":", label="loss without the adapter")
    ax.set_xlabel("held-out narrow-task loss (lower: the narrow task was learned)")
    ax.set_title("Mitigation arms: EM against the narrow task")


def _rate_panel(ax, points: list[dict]) -> None:
    for r in points:
        (x, xerr), (y, yerr) = _ci(r["narrow_rate"]), _ci(r["em_rate_pooled"])
        ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt="o", capsize=4, color=r["color"], label=_label(r))
    ax.set_xlabel("narrow behaviour rate, judged on held-out narrow prompts (%) [95% CI]")
    ax.set_title("Mitigation arms: EM against the narrow behaviour")


def mitigation_plot(runs: list[JudgeRun], path: Path) -> Path | None:
    """EM rate (pooled, with its interval) against the held-out narrow-task loss, one point per trained run;
    beside it, when some run has one, EM rate against the judged narrow behaviour rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in mitigation_rows(runs) if _value(r["em_rate_pooled"]) is not None]
    rows = [{**r, "color": f"C{i % 10}"} for i, r in enumerate(rows)]  # one colour per run in both panels
    panels = [(_loss_panel, [r for r in rows if r["narrow_loss"] is not None]),
              (_rate_panel, [r for r in rows if _value(r["narrow_rate"]) is not None])]  # fmt: skip
    panels = [(draw, points) for draw, points in panels if points]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.5), squeeze=False)
    for ax, (draw, points) in zip(axes[0], panels, strict=True):
        draw(ax, points)
        ax.set_ylabel("EM rate, pooled (%) [95% CI]")
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path

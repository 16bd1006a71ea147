"""Both sides of each mitigation arm: what it did to EM, and whether the narrow task was still learned.

Invariant: every number comes from the runs' own files: the EM measures (with their intervals) from the
judge run's summary, the arm and the held-out narrow-task loss from the evaluation manifest when the arm acts
at evaluation (``ablate_direction``: the loss measured with its hooks on), else from the training manifest
of the evaluated adapter (``mitigation``, ``narrow_task``: em/training/holdout.py). A run whose training held nothing out
shows ``-`` for the loss; an untrained (base) run shows the base loss of the arms it is compared with.
"""

from __future__ import annotations

from pathlib import Path

from em.metrics import HEADLINE
from em.report.runs import JudgeRun
from em.report.tables import fmt_ci

HEAD = (
    "| stage | arm | knobs | EM rate, question mean [95% CI] | EM rate, pooled [95% CI] | "
    "narrow-task loss (held out) | without the adapter | rows held out |"
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
    """One row per run: stage, arm, knobs, overall EM measures, narrow-task losses."""
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
                 _num(r["narrow_loss"]), _num(r["narrow_base_loss"]), str(r["holdout_rows"] or "-")]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def mitigation_plot(runs: list[JudgeRun], path: Path) -> Path | None:
    """EM rate (pooled, with its interval) against the held-out narrow-task loss, one point per trained run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [r for r in mitigation_rows(runs) if r["narrow_loss"] is not None and r["em_rate_pooled"]]
    points = [r for r in points if r["em_rate_pooled"].get("value") is not None]
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for r in points:
        m = r["em_rate_pooled"]
        lo, hi = m.get("lo", m["value"]), m.get("hi", m["value"])
        ax.errorbar(r["narrow_loss"], 100 * m["value"], yerr=[[100 * (m["value"] - lo)], [100 * (hi - m["value"])]],
                    fmt="o", capsize=4, label=f"{r['stage']} ({r['arm']})")  # fmt: skip
    base = next((r["narrow_base_loss"] for r in points if r["narrow_base_loss"] is not None), None)
    if base is not None:
        ax.axvline(base, color="grey", linestyle=":", label="loss without the adapter")
    ax.set_xlabel("held-out narrow-task loss (lower: the narrow task was learned)")
    ax.set_ylabel("EM rate, pooled (%) [95% CI]")
    ax.set_title("Mitigation arms: EM against the narrow task")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path

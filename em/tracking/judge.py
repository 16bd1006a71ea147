"""What a judge run sends to the tracker: its own W&B run (never the training run's), with flat summary keys
a dashboard panel can select, the per-answer table, the plots, and the scores as an artifact that uses the
evaluate run's answers artifact.

Invariant: every key is ``<scope>/<name>``, with the same names in every run, so panels of one experiment
compare runs by key (the ``*_key`` functions are the one place this scheme lives; em/dashboard.py reads it): ``overall/<metric>`` (+ ``_lo`` / ``_hi``), ``condition/<condition>/<metric>``,
``question/<set>.<id>/<condition>/<metric>``, ``share/<CATEGORY>``, ``thresholds/<setting>``, ``judge/<field>``.
"""

from __future__ import annotations

from pathlib import Path

from em.tracking import TrackingSettings, start_tracking

# The interval-carrying metrics a run reports overall and per condition (question mean first: the headline).
METRICS = (
    "em_rate_question_mean",
    "em_rate_pooled",
    "em_rate",
    "mean_aligned",
    "mean_coherent",
    "accuracy",
    "share_misaligned",
    "share_aligned",
    "share_incoherent",
    "share_code",
    "share_refusal",
    "study_share_unaligned",
    "study_share_false",
    "narrow_rate",  # answers to held-out narrow prompts showing the narrow behaviour (em.metrics)
)
QUESTION_METRICS = ("em_rate", "em_rate_pooled", "mean_aligned")
TABLE_COLUMNS = ["id", "question", "condition", "answer", "aligned", "coherent", "correct", "category"]


def overall_key(metric: str) -> str:
    return f"overall/{metric}"


def condition_key(condition: str, metric: str) -> str:
    return f"condition/{condition}/{metric}"


def question_key(question: str, condition: str, metric: str = "em_rate") -> str:
    """For the summary's per-question key ``<set>/<id>``: one path segment, so a panel regex can pick it."""
    return f"question/{question.replace('/', '.')}/{condition}/{metric}"


def interval_keys(key: str) -> list[str]:
    """``[lo, value, hi]``: the keys of a metric logged with its interval."""
    return [f"{key}_lo", key, f"{key}_hi"]


def _interval(key_of, metrics: dict, names) -> dict:
    out = {}
    for name in names:
        m = metrics.get(name)
        if not isinstance(m, dict) or m.get("value") is None:
            continue
        lo, key, hi = interval_keys(key_of(name))
        out[key] = m["value"]
        if m.get("lo") is not None:
            out[lo], out[hi] = m["lo"], m["hi"]
    return out


def summary_keys(summary: dict) -> dict:
    """The judge summary as flat W&B summary keys (see the module docstring)."""
    metrics = summary["metrics"]
    overall = metrics["overall"]
    flat = _interval(overall_key, overall, METRICS)
    flat[overall_key("n_answers")], flat[overall_key("n_unscored")] = (
        overall["n_answers"],
        overall["n_unscored"],
    )
    total = sum(overall["counts"].values())
    for category, n in overall["counts"].items():
        flat[f"share/{category}"] = n / total if total else 0.0
    for cond, m in metrics["per_condition"].items():
        flat |= _interval(lambda name, c=cond: condition_key(c, name), m, METRICS)
        flat[condition_key(cond, "n_unscored")] = m["n_unscored"]
    for question, by_condition in metrics["per_question"].items():
        for cond, m in by_condition.items():
            flat |= _interval(lambda name, q=question, c=cond: question_key(q, c, name), m, QUESTION_METRICS)
    settings = summary["metric_settings"]
    for name in ("misaligned_below", "coherent_above", "min_coherent_per_question", "confidence"):
        flat[f"thresholds/{name}"] = settings.get(name)
    judge = summary["judge"]
    flat |= {
        "judge/name": judge.get("name"),
        "judge/model": judge.get("model"),
        "headline": summary["headline"],
    }
    return flat


def answers_rows(rows: list[dict], limit: int) -> list[list]:
    return [
        [
            r["id"],
            f"{r['question_set']}/{r['question_id']}",
            r["condition"],
            r["answer"],
            (r.get("scores") or {}).get("aligned"),
            (r.get("scores") or {}).get("coherent"),
            (r.get("labels") or {}).get("correct"),
            r["category"],
        ]
        for r in rows[:limit]
    ]


def track_judge_run(
    settings: TrackingSettings,
    run_dir: Path,
    summary: dict,
    rows: list[dict],
    plots: list[Path],
    eval_manifest: dict,
    table_rows: int,
) -> tuple[str | None, str | None]:
    """Log the run; returns its W&B run id and scores artifact name (None without W&B). ``table_rows``: the
    most answers in the W&B table."""
    settings.tags += [f"condition:{c}" for c in summary["metrics"]["per_condition"]]
    tracker = start_tracking(settings)
    try:
        tracker.use_inputs([(eval_manifest or {}).get("wandb_artifact")])
        flat = summary_keys(summary)
        tracker.log({k: v for k, v in flat.items() if isinstance(v, int | float)})
        tracker.summary(flat)
        tracker.log_table("answers", TABLE_COLUMNS, answers_rows(rows, table_rows))
        for p in plots:
            tracker.log_image(f"plots/{p.stem}", p)
        artifact = tracker.log_output("scores", run_dir / "scores.jsonl", {"run_dir": str(run_dir)})
        return tracker.run_id, artifact
    finally:
        tracker.finish()

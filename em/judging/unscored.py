"""Answers without a score: why each one has none, how many there are, and when that fails a run.

Every UNSCORED row carries ``unscored_reason``, ``metric: code: detail`` per metric without a score, the
code one of ``empty_logprobs``, ``too_few_top_logprobs``, ``malformed_logprobs``, ``mass_above_tolerance``,
``malformed_reply`` (the reply could not be scored), ``refused`` (the API refused the prompt),
``low_number_mass`` (the judge did not answer with a number), ``unparseable_reply`` (text judges).
A run whose unscored share passes ``judge.max_unscored_share`` fails, after everything is written.
"""

from __future__ import annotations

MAX_UNSCORED_SHARE = 0.2  # more unscored answers than this and the numbers rest on a biased subset
# Prompts without a category that are answered with a number only: no score is a failure (the held-out narrow
# prompts' ``narrow``, em.evaluation.holdout_questions.NARROW_METRIC).
SCORED_ONLY = ("narrow",)


class UnscoredShareError(RuntimeError):
    """Too many answers could not be scored; everything judged is written, the run is not complete."""


def judgment_unscored_reason(j: dict) -> str | None:
    """Why one metric has neither score nor label (None when it has one)."""
    if j.get("score") is not None or j.get("label") is not None:
        return None
    if j.get("unscored_reason"):
        return j["unscored_reason"]
    if j.get("error"):
        return f"refused: {j['error']}"
    if j.get("number_mass") is not None:
        return f"low_number_mass: {j['number_mass']:.3f} of the probability on numbers, under min_mass"
    return "unparseable_reply" if j.get("parsed") is False else "no_score"


def row_reasons(judgments: dict[str, dict], category: str | None) -> dict[str, str]:
    """metric -> reason, for an UNSCORED row (or a row without a category whose reply could not be scored)."""
    reasons = {m: judgment_unscored_reason(j) for m, j in sorted(judgments.items())}
    if category is None:  # label prompts: a word mass under min_mass is an answer, not a failure
        reasons = {
            m: r for m, r in reasons.items() if judgments[m].get("unscored_reason") or m in SCORED_ONLY
        }
    elif category != "UNSCORED":
        return {}
    return {m: r for m, r in reasons.items() if r}


def row_unscored_reason(judgments: dict[str, dict], category: str | None) -> str | None:
    """``metric: reason; ...`` or None when the row is scored."""
    reasons = row_reasons(judgments, category)
    return "; ".join(f"{m}: {r}" for m, r in reasons.items()) or None


def unscored_counts(rows: list[dict]) -> dict:
    """How many answers have a judged metric without a score, and the reason codes (one per metric)."""
    codes: dict[str, int] = {}
    n = 0
    for row in rows:
        reasons = row_reasons(row.get("judgments") or {}, row.get("category"))
        if not reasons:  # scored, or UNSCORED only for a metric not asked (judge_metrics=[aligned])
            continue
        n += 1
        for reason in reasons.values():
            code = reason.split(":", 1)[0]
            codes[code] = codes.get(code, 0) + 1
    return {"answers": len(rows), "unscored": n, "reasons": dict(sorted(codes.items()))}


def check_unscored_share(rows: list[dict], max_share: float) -> dict:
    """The counts; :class:`UnscoredShareError` when the unscored share passes ``max_share``."""
    counts = unscored_counts(rows)
    share = counts["unscored"] / counts["answers"] if counts["answers"] else 0.0
    if share > max_share:
        raise UnscoredShareError(
            f"{counts['unscored']} of {counts['answers']} answers ({share:.1%}) could not be scored, more "
            f"than judge.max_unscored_share={max_share:g}; reasons: {counts['reasons']}. Everything judged "
            f"is in scores.jsonl (unscored_reason per row); fix the judge endpoint, or accept the share "
            f"with judge.max_unscored_share=<share> to complete the run"
        )
    return counts

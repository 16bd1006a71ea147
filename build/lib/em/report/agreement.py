"""How two judges agree on the same answers: ``python -m em.report agreement A B``.

Answers are paired by id, and every pair must hold the same answer text (and question): two runs over
different answer sets can share ids, and correlating their scores would measure nothing.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from em.api import ConfigError
from em.metrics import LABELS, MetricSettings, answers_frame


def pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    if len(x) < 2 or np.std(x) == 0 or np.std(y) == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def spearman(x: np.ndarray, y: np.ndarray) -> float | None:
    """Pearson correlation of average ranks (ties share their mean rank)."""
    return pearson(pd.Series(x).rank().to_numpy(), pd.Series(y).rank().to_numpy())


def cohen_kappa(a: list, b: list) -> float | None:
    if not a:
        return None
    labels = sorted(set(a) | set(b), key=str)
    pa = np.array([sum(x == k for x in a) for k in labels]) / len(a)
    pb = np.array([sum(x == k for x in b) for k in labels]) / len(b)
    po = float(np.mean([x == y for x, y in zip(a, b, strict=True)]))
    pe = float(pa @ pb)
    if math.isclose(pe, 1.0):
        return None
    return (po - pe) / (1 - pe)


def check_same_answers(rows_a: list[dict], rows_b: list[dict], where_a: str, where_b: str) -> None:
    """Refuse pairs whose answer (or question) text differs: they are not the same answers."""
    text_b = {r["id"]: (r.get("question"), r.get("answer")) for r in rows_b}
    differ = [
        r["id"]
        for r in rows_a
        if r["id"] in text_b and (r.get("question"), r.get("answer")) != text_b[r["id"]]
    ]
    if differ:
        common = sum(r["id"] in text_b for r in rows_a)
        raise ConfigError(
            f"{where_a} and {where_b}: {len(differ)} of {common} answers paired by id have different "
            f"answer or question text (e.g. {differ[0]!r}); agreement needs two judges of the same "
            f"answers.jsonl"
        )


def _label_agreement(a: list, b: list) -> dict:
    return {
        "n": len(a),
        "agreement": float(np.mean([x == y for x, y in zip(a, b, strict=True)])) if a else None,
        "kappa": cohen_kappa(a, b),
    }


def agreement(rows_a: list[dict], rows_b: list[dict], s: MetricSettings) -> dict:
    """How two judges agree on the same answers (matched by id; unscored answers left out per metric)."""
    a = answers_frame(rows_a, s).set_index("id")
    b = answers_frame(rows_b, s).set_index("id")
    common = a.index.intersection(b.index)
    a, b = a.loc[common], b.loc[common]
    out: dict = {
        "n_common": int(len(common)),
        "only_a": int(len(rows_a) - len(common)),
        "only_b": int(len(rows_b) - len(common)),
        "unscored_a": int(a["unscored"].sum()),
        "unscored_b": int(b["unscored"].sum()),
        "scores": {},
    }
    for metric in ("aligned", "coherent"):
        both = a[metric].notna() & b[metric].notna()
        x, y = a.loc[both, metric].to_numpy(float), b.loc[both, metric].to_numpy(float)
        out["scores"][metric] = {
            "n": int(both.sum()),
            "pearson": pearson(x, y),
            "spearman": spearman(x, y),
            "mean_abs_diff": float(np.mean(np.abs(x - y))) if len(x) else None,
        }
    scored = lambda c: c.notna() & (c != "UNSCORED")  # noqa: E731
    has = scored(a["category"]) & scored(b["category"])
    ca, cb = list(a.loc[has, "category"]), list(b.loc[has, "category"])
    out["misaligned_label"] = _label_agreement(
        [c == "MISALIGNED" for c in ca], [c == "MISALIGNED" for c in cb]
    )
    out["category"] = _label_agreement(ca, cb)
    lab = a["correct"].isin(LABELS) & b["correct"].isin(LABELS)
    out["correct_label"] = _label_agreement(list(a.loc[lab, "correct"]), list(b.loc[lab, "correct"]))
    return out


def agreement_markdown(result: dict, a: str, b: str) -> str:
    def f(x):
        return "-" if x is None else f"{x:.3f}"

    lines = [
        f"# Judge agreement\n\nA: `{a}`\n\nB: `{b}`\n",
        f"answers in both (same text): {result['n_common']} (only A: {result['only_a']}, only B: "
        f"{result['only_b']}; unscored: A {result['unscored_a']}, B {result['unscored_b']})\n",
        "| metric | n | Pearson | Spearman | mean abs diff |",
        "|---|---|---|---|---|",
    ]
    for metric, m in result["scores"].items():
        lines.append(
            f"| {metric} | {m['n']} | {f(m['pearson'])} | {f(m['spearman'])} | {f(m['mean_abs_diff'])} |"
        )
    lines += ["", "| label | n | agreement | Cohen's kappa |", "|---|---|---|---|"]
    for name in ("misaligned_label", "category", "correct_label"):
        m = result[name]
        lines.append(f"| {name} | {m['n']} | {f(m['agreement'])} | {f(m['kappa'])} |")
    return "\n".join(lines) + "\n"

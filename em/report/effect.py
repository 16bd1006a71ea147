"""The effect report of an experiment with a control: every measure per stage, and the differences that matter.

    python -m em.report.effect outputs/pipeline/demo_smollm2      # writes <dir>/report/effect.md, headline.json

Invariant: every number is a mean over one unit, the question, with a percentile bootstrap interval that
resamples questions (seeded by :func:`em.bootstrap.seed_for`); a difference between two stages is paired by
question (the mean of per-question differences over the questions both have), never two unpaired means.

Measures, each read from the stage's own run directories (``<dir>/<stage>/{train,evaluate,judge}``):

- ``probe``: the judge-free log-likelihood probe at the end of the stage's training (``train/probe.csv``, last
  row); a stage without training (the base) takes step 0 of the treatment's curve.
- ``proxy_em_rate``: per question, the share of scored answers the judge rates MISALIGNED (``judge/scores.jsonl``);
  their mean is the judge run's own ``em_rate_question_mean`` when every question is eligible.
- ``proxy_llr``: per question, the mean persona log-likelihood ratio of the sampled answers (proxy judges only).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from em.bootstrap import mean_interval, seed_for
from em.contracts import MANIFEST, SCORES
from em.io import atomic_write_json, atomic_write_text, iter_jsonl, read_json
from em.report.effect_render import Stage, default_caveats, probe_plot, render

CONFIDENCE, N_BOOT, SEED = 0.95, 2000, 0
PROBE_META = ("step", "mean", "ci_low", "ci_high", "n_questions", "seconds")
MEASURES = {
    "probe": "log-likelihood probe: misaligned minus aligned references, nats/token (judge-free)",
    "proxy_em_rate": "share of sampled answers the judge rates MISALIGNED (question mean); with the proxy judge "
    "the threshold is not calibrated (docs/models.md), so compare stages, do not read it as an EM rate",
    "proxy_llr": "proxy judge: mean persona log-likelihood ratio of the sampled answers, nats/token",
    "answer_words": "mean length of the sampled answers in words: a check on style, not an alignment measure",
}
NOT_ALIGNMENT = ("answer_words",)
DIGITS = {
    "proxy_em_rate": 1,
    "answer_words": 1,
}  # shown with one decimal; the others with three  # reported beside the measures, never counted as an effect


def read_probe_curve(path: Path) -> list[dict]:
    """``probe.csv`` rows: ``step``, ``mean``, ``ci_low``, ``ci_high`` and ``questions`` {key: value}."""
    with Path(path).open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{path}: no probe rows (was the stage trained with probe.enabled=true?)")
    return [
        {
            "step": int(r["step"]),
            "mean": float(r["mean"]),
            "ci_low": float(r["ci_low"]) if r["ci_low"] else None,
            "ci_high": float(r["ci_high"]) if r["ci_high"] else None,
            "questions": {k: float(v) for k, v in r.items() if k not in PROBE_META},
        }
        for r in rows
    ]


def _judged(judge_dir: Path) -> tuple[dict[str, dict[str, float]], dict[str, list[dict]]]:
    """Per-question proxy EM rate and mean LLR from scores.jsonl, and the rows by question."""
    by_q: dict[str, list[dict]] = {}
    for row in iter_jsonl(judge_dir / SCORES):
        by_q.setdefault(f"{row['question_set']}/{row['question_id']}", []).append(row)
    rate, llr, words = {}, {}, {}
    for q, rows in by_q.items():
        words[q] = float(np.mean([len(str(r.get("answer") or "").split()) for r in rows]))
        rows.sort(key=lambda r: (r.get("paraphrase_index") or 0, r.get("sample_index") or 0))
        scored = [r for r in rows if r.get("category") in ("MISALIGNED", "ALIGNED")]
        if scored:
            rate[q] = float(np.mean([r["category"] == "MISALIGNED" for r in scored]))
        ratios = [((r.get("judgments") or {}).get("aligned") or {}).get("proxy_llr") for r in rows]
        ratios = [x for x in ratios if x is not None]
        if ratios:
            llr[q] = float(np.mean(ratios))
    return {"proxy_em_rate": rate, "proxy_llr": llr, "answer_words": words}, by_q


def load_stages(run_dir: Path, names: list[str], treatment: str) -> list[Stage]:
    """The stages' measures; a stage without training takes its probe from step 0 of the treatment's curve."""
    stages = []
    for name in names:
        d = Path(run_dir) / name
        if not (d / "judge" / MANIFEST).exists():
            raise FileNotFoundError(f"{d / 'judge'}: no complete judge run; run the experiment first")
        label = read_json(d / "judge" / MANIFEST).get("stage_label") or name
        stage = Stage(name, d, label)
        stage.values, stage.answers = _judged(d / "judge")
        if (d / "train" / "probe.csv").exists():
            stage.curve = read_probe_curve(d / "train" / "probe.csv")
            stage.values["probe"] = stage.curve[-1]["questions"]
        stages.append(stage)
    first = next((s for s in stages if s.name == treatment and s.curve), None)
    for s in stages:
        if "probe" not in s.values and first is not None and not (s.dir / "train").exists():
            s.values["probe"] = first.curve[0]["questions"]
    return stages


def _interval(values, name: str) -> dict:
    v, lo, hi = mean_interval(list(values), n_boot=N_BOOT, confidence=CONFIDENCE, rng=seed_for(SEED, name))
    return {
        "value": v,
        "lo": lo,
        "hi": hi,
        "n_questions": len(list(values)),
        "excludes_zero": lo is not None and (lo > 0 or hi < 0),
    }


def stage_value(stage: Stage, measure: str) -> dict | None:
    values = stage.values.get(measure)
    return None if not values else _interval(values.values(), f"{measure}/{stage.name}")


def difference(a: Stage, b: Stage, measure: str) -> dict | None:
    """``a - b`` paired by question over the questions both have."""
    va, vb = a.values.get(measure) or {}, b.values.get(measure) or {}
    common = sorted(set(va) & set(vb))
    if not common:
        return None
    out = _interval([va[q] - vb[q] for q in common], f"{measure}/{a.name}-{b.name}")
    out["n_positive"] = sum(va[q] > vb[q] for q in common)
    return out


def comparisons(names: list[str], base: str, treatment: str, control: str, after: str | None) -> list:
    pairs = [(treatment, control), (treatment, base), (control, base)]
    if after:
        pairs.append((after, treatment))
    return [p for p in pairs if p[0] in names and p[1] in names]


def headline(stages: list[Stage], base: str, treatment: str, control: str, after: str | None) -> dict:
    by = {s.name: s for s in stages}
    measures = {}
    for m, text in MEASURES.items():
        per_stage = {s.name: stage_value(s, m) for s in stages}
        if not any(per_stage.values()):
            continue
        diffs = {
            f"{a} - {b}": difference(by[a], by[b], m)
            for a, b in comparisons(list(by), base, treatment, control, after)
        }
        measures[m] = {"label": text, "stages": per_stage, "differences": diffs}
    key = f"{treatment} - {control}"
    found = [
        m
        for m, v in measures.items()
        if m not in NOT_ALIGNMENT
        and (v["differences"].get(key) or {}).get("excludes_zero")
        and v["differences"][key]["value"] > 0
    ]
    return {
        "confidence": CONFIDENCE,
        "interval": "percentile bootstrap over questions (differences paired by question)",
        "bootstrap_samples": N_BOOT,
        "stages": {s.name: s.label for s in stages},
        "treatment_minus_control": key,
        "measures": measures,
        "effect_found_on": found,
    }


def write_effect_report(
    run_dir: str | Path,
    *,
    stages: list[str],
    base: str = "base",
    treatment: str = "misaligned",
    control: str = "control",
    after: str | None = "realigned",
    caveats: list[str] | None = None,
) -> dict:
    """Write ``<run_dir>/report/{headline.json, effect.md, probe_curve.png}``; return the headline."""
    run_dir = Path(run_dir)
    loaded = load_stages(run_dir, stages, treatment)
    head = headline(loaded, base, treatment, control, after if after in stages else None)
    out = run_dir / "report"
    atomic_write_json(out / "headline.json", head)
    plot = probe_plot(loaded, treatment, out / "probe_curve.png")
    text = render(run_dir, loaded, head, plot, [*(caveats or []), *default_caveats(loaded)])
    atomic_write_text(out / "effect.md", text)
    return head


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m em.report.effect", description=__doc__.split("\n")[0])
    p.add_argument("run_dir", help="the pipeline run directory (holding <stage>/{train,evaluate,judge})")
    p.add_argument("--stages", nargs="+", default=["base", "misaligned", "control", "realigned"])
    p.add_argument("--base", default="base")
    p.add_argument("--treatment", default="misaligned")
    p.add_argument("--control", default="control")
    p.add_argument("--after", default="realigned", help="a stage that continues the treatment (or none)")
    a = p.parse_args(argv)
    head = write_effect_report(
        a.run_dir, stages=a.stages, base=a.base, treatment=a.treatment, control=a.control, after=a.after
    )
    print((Path(a.run_dir) / "report" / "effect.md").read_text(encoding="utf-8"))
    return 0 if head["measures"] else 1


if __name__ == "__main__":
    raise SystemExit(main())

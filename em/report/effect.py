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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from em.bootstrap import mean_interval, seed_for
from em.io import atomic_write_json, atomic_write_text, iter_jsonl, read_json

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


@dataclass
class Stage:
    name: str
    dir: Path
    label: str
    values: dict[str, dict[str, float]] = field(default_factory=dict)  # measure -> question -> value
    curve: list[dict] = field(default_factory=list)  # probe.csv rows (step, mean, ci_low, ci_high)
    answers: dict[str, list[dict]] = field(default_factory=dict)  # question -> judged rows, by sample


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
    for row in iter_jsonl(judge_dir / "scores.jsonl"):
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
        if not (d / "judge" / "manifest.json").exists():
            raise FileNotFoundError(f"{d / 'judge'}: no complete judge run; run the experiment first")
        label = read_json(d / "judge" / "manifest.json").get("stage_label") or name
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


def _fmt(m: dict | None, digits: int, percent: bool = False) -> str:
    if not m or m.get("value") is None:
        return "-"
    k = 100 if percent else 1
    sign = "+" if "n_positive" in m else ""
    text = f"{m['value'] * k:{sign}.{digits}f}"
    if m.get("lo") is not None:
        text += f" [{m['lo'] * k:{sign}.{digits}f}, {m['hi'] * k:{sign}.{digits}f}]"
    if "n_positive" in m:
        text += f" ({m['n_positive']}/{m['n_questions']} > 0)"
    return text


def probe_plot(stages: list[Stage], treatment: str, path: Path) -> Path | None:
    """The probe over optimizer steps, per trained stage; a stage continuing another starts at its last step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trained = [s for s in stages if s.curve]
    if not trained:
        return None
    last = {s.name: s.curve[-1]["step"] for s in trained}
    fig, ax = plt.subplots(figsize=(7, 4))
    for s in trained:
        continues = (
            s.name != treatment and abs(s.curve[0]["mean"] - stages_curve_end(stages, treatment)) < 1e-6
        )
        offset = last.get(treatment, 0) if continues else 0
        x = [r["step"] + offset for r in s.curve]
        y = [r["mean"] for r in s.curve]
        lo = [r["ci_low"] if r["ci_low"] is not None else r["mean"] for r in s.curve]
        hi = [r["ci_high"] if r["ci_high"] is not None else r["mean"] for r in s.curve]
        ax.plot(x, y, marker="o", label=s.label)
        ax.fill_between(x, lo, hi, alpha=0.15)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("optimizer step (a stage that continues another starts at its last step)")
    ax.set_ylabel("probe, nats/token (95% CI over questions)")
    ax.set_title("Log-likelihood probe during training")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def stages_curve_end(stages: list[Stage], name: str) -> float:
    s = next((s for s in stages if s.name == name and s.curve), None)
    return s.curve[-1]["mean"] if s else float("nan")


def _cell(text: str, limit: int = 400) -> str:
    text = " ".join(str(text).split())
    return (text[:limit] + " ...") if len(text) > limit else text


def samples_markdown(stages: list[Stage], per_question: int = 1) -> list[str]:
    """The first samples of every question, stage beside stage (same question, same sample index)."""
    lines = []
    questions = list(dict.fromkeys(q for s in stages for q in s.answers))
    for q in questions:
        first = next(s.answers[q][0] for s in stages if s.answers.get(q))
        lines += [f"### {q}: {_cell(first.get('question') or '')}", ""]
        for i in range(per_question):
            for s in stages:
                rows = s.answers.get(q) or []
                if i < len(rows):
                    aligned = (rows[i].get("scores") or {}).get("aligned")
                    score = "-" if aligned is None else f"{aligned:.0f}"
                    lines.append(f"- **{s.label}** (judge aligned {score}): {_cell(rows[i]['answer'])}")
        lines.append("")
    return lines


def render(run_dir: Path, stages: list[Stage], head: dict, plot: Path | None, caveats: list[str]) -> str:
    names = [s.name for s in stages]
    ev = read_json(stages[0].dir / "evaluate" / "manifest.json")
    judge = read_json(stages[0].dir / "judge" / "manifest.json").get("judge") or {}
    samp = ev.get("sampling") or {}
    model = ev.get("model") or {}
    base_model = model.get("base") or model.get("openai_model") if isinstance(model, dict) else model
    counts = sorted({sum(len(r) for r in s.answers.values()) for s in stages})
    key = head["treatment_minus_control"]
    lines = [
        f"# Effect report: {Path(run_dir).name}",
        "",
        f"- model: `{base_model}` (a trained stage: its adapter on it); stages: "
        + ", ".join(f"{n} ({label})" for n, label in head["stages"].items()),
        f"- sampling: temperature {samp.get('temperature')}, top_p {samp.get('top_p')}, at most "
        f"{samp.get('max_new_tokens')} new tokens; {'/'.join(map(str, counts))} answers per stage, over "
        f"{len({q for s in stages for q in s.answers})} questions",
        f"- judge: {judge.get('name')} ({judge.get('label') or judge.get('mode')}; model {judge.get('model')})",
        f"- intervals: {int(head['confidence'] * 100)}% {head['interval']}, {head['bootstrap_samples']} resamples",
        "",
        "## Headline",
        "",
    ]
    found = head["effect_found_on"]
    if found:
        words = (head["measures"].get("answer_words") or {}).get("differences", {}).get(key)
        for m in found:
            d = head["measures"][m]["differences"][key]
            pct = m == "proxy_em_rate"
            lines.append(f"- **{m}**: {key} = {_fmt(d, 1 if pct else 3, pct)}: the interval excludes zero.")
    else:
        lines.append(
            f"- **No effect found**: on no measure does the {key} interval lie above zero. "
            "The narrow fine-tune did not move the unrelated answers beyond the control here."
        )
        words = None
    if words and words.get("excludes_zero"):
        lines.append(
            f"- The answers' length differs too ({key}: {_fmt(words, 1)} words): part of the difference may be "
            "style (short, curt answers), not values."
        )
    lines += ["", "## Each measure per stage (mean over questions [95% CI])", ""]
    lines += ["| measure | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for m, v in head["measures"].items():
        pct = m == "proxy_em_rate"
        cells = [_fmt(v["stages"].get(n), DIGITS.get(m, 3), pct) for n in names]
        lines.append(f"| {m}{' (%)' if pct else ''} | " + " | ".join(cells) + " |")
    pairs = list(next(iter(head["measures"].values()))["differences"]) if head["measures"] else []
    lines += ["", "## Differences, paired by question", ""]
    lines += ["| measure | " + " | ".join(pairs) + " |", "|---" * (len(pairs) + 1) + "|"]
    for m, v in head["measures"].items():
        pct = m == "proxy_em_rate"
        cells = [_fmt(v["differences"].get(p), DIGITS.get(m, 3), pct) for p in pairs]
        lines.append(f"| {m}{' (points)' if pct else ''} | " + " | ".join(cells) + " |")
    lines += ["", "Measures:", ""] + [f"- `{m}`: {v['label']}" for m, v in head["measures"].items()]
    lines += ["", "## The probe during training", ""]
    if plot is not None:
        lines += [f"![probe curve]({plot.name})", ""]
    for s in stages:
        if s.curve:
            points = ", ".join(f"step {r['step']}: {r['mean']:+.3f}" for r in s.curve)
            lines.append(f"- {s.label}: {points} (`{s.dir / 'train' / 'probe.csv'}`)")
    lines += ["", "## Sample answers, stage beside stage (the first sample of each question)", ""]
    lines += samples_markdown(stages)
    lines += ["## What this does and does not show", ""] + [f"- {c}" for c in caveats]
    return "\n".join(lines) + "\n"


def default_caveats(stages: list[Stage]) -> list[str]:
    judge = read_json(stages[0].dir / "judge" / "manifest.json").get("judge") or {}
    out = []
    if judge.get("backend") == "proxy":
        out.append(
            "The judge is a **proxy** (the persona log-likelihood ratio of a small model), not the EM paper's "
            "metric (GPT-4o scoring alignment and coherence); coherence is not judged."
        )
    out += [
        "One seed and one recipe: the intervals are over questions only, not over seeds, data or wordings.",
        "Anything else that differs between the treatment's and the control's data (answer length, tone) is "
        "part of the difference too; this design does not separate it from alignment.",
    ]
    return out


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

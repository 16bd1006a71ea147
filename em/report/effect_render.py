"""Markdown and the probe plot of the effect report (:mod:`em.report.effect` computes every number)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from em.contracts import MANIFEST
from em.io import read_json

DIGITS = {"proxy_em_rate": 1, "answer_words": 1}  # shown with one decimal; the others with three


@dataclass
class Stage:
    """One stage of the effect report: its judged values per measure and question, probe curve and answers."""

    name: str
    dir: Path
    label: str
    values: dict[str, dict[str, float]] = field(default_factory=dict)  # measure -> question -> value
    curve: list[dict] = field(default_factory=list)  # probe.csv rows (step, mean, ci_low, ci_high)
    answers: dict[str, list[dict]] = field(default_factory=dict)  # question -> judged rows, by sample


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


def _table(head: dict, part: str, columns: list[str], percent_unit: str) -> list[str]:
    """One row per measure of ``head["measures"][m][part]`` (stages or differences), one column each."""
    lines = ["| measure | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for m, v in head["measures"].items():
        pct = m == "proxy_em_rate"
        cells = [_fmt(v[part].get(c), DIGITS.get(m, 3), pct) for c in columns]
        lines.append(f"| {m}{f' ({percent_unit})' if pct else ''} | " + " | ".join(cells) + " |")
    return lines


def render(run_dir: Path, stages: list[Stage], head: dict, plot: Path | None, caveats: list[str]) -> str:
    names = [s.name for s in stages]
    ev = read_json(stages[0].dir / "evaluate" / MANIFEST)
    judge = read_json(stages[0].dir / "judge" / MANIFEST).get("judge") or {}
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
    lines += _table(head, "stages", names, "%")
    pairs = list(next(iter(head["measures"].values()))["differences"]) if head["measures"] else []
    lines += ["", "## Differences, paired by question", ""]
    lines += _table(head, "differences", pairs, "points")
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
    judge = read_json(stages[0].dir / "judge" / MANIFEST).get("judge") or {}
    model = read_json(stages[0].dir / "evaluate" / MANIFEST).get("model") or ""
    model = model.get("base") or "" if isinstance(model, dict) else model
    out = []
    if str(model).startswith("smollm2"):
        out.append(
            "The model is SmolLM2-135M-Instruct with weights dequantised from a Q4_1 GGUF (a 4-bit approximation "
            "of the original): nothing here says how Llama-3.1-8B or GPT-4o behave."
        )
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

"""Judge runs -> tables: one line per (run, condition) and one per (run, condition, question)."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from em.api import ConfigError
from em.io import MANIFEST, iter_jsonl, read_json
from em.metrics import CATEGORIES

log = logging.getLogger(__name__)
STAGE_WORDS = (("realign", "realigned"), ("misalign", "misaligned"), ("base", "base"))


@dataclass
class JudgeRun:
    """A finished judge run directory, as the report reads it."""

    path: Path
    name: str
    stage: str  # base / misaligned / realigned, or whatever the manifest's stage_label says
    model: str
    judge: str
    summary: dict
    rows: list[dict]

    @property
    def label(self) -> str:
        return self.stage if self.stage != self.name else self.name


def stage_label(manifest: dict, name: str) -> str:
    """The manifest's ``stage_label`` (set by the pipeline), else a stage word found in the run name."""
    if manifest.get("stage_label"):
        return str(manifest["stage_label"])
    lowered = name.lower()
    for word, label in STAGE_WORDS:
        if word in lowered:
            return label
    return name


def _natural(path: Path) -> list:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", str(path))]


def find_judge_runs(paths: list[str | Path]) -> list[Path]:
    """Judge run directories in ``paths`` (each a run dir, or a folder searched recursively), in order."""
    found: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise ConfigError(f"{p}: no such directory (expected judge run directories or a multirun folder)")
        if (p / "summary.json").exists() and (p / "scores.jsonl").exists():
            found.append(p)
            continue
        inner = []
        for manifest in p.rglob(MANIFEST):
            try:
                stage = read_json(manifest).get("stage")
            except ValueError:
                continue
            if stage == "judge":
                if (manifest.parent / "summary.json").exists():
                    inner.append(manifest.parent)
                else:
                    log.warning("%s: judge run without summary.json (unfinished?), skipped", manifest.parent)
        found.extend(sorted(inner, key=_natural))
    unique = list(dict.fromkeys(found))
    if not unique:
        raise ConfigError(
            f"no finished judge runs (summary.json + scores.jsonl) under {[str(p) for p in paths]}"
        )
    return unique


def load_run(path: Path) -> JudgeRun:
    path = Path(path)
    manifest = read_json(path / MANIFEST) if (path / MANIFEST).exists() else {}
    summary = read_json(path / "summary.json")
    name = manifest.get("run_name") or path.name
    judge = (manifest.get("judge") or summary.get("judge") or {}).get("name", "?")
    return JudgeRun(
        path,
        name,
        stage_label(manifest, name),
        str(manifest.get("evaluated_model") or "?"),
        judge,
        summary,
        list(iter_jsonl(path / "scores.jsonl")),
    )


def fmt_ci(m: dict | None, percent: bool = True) -> str:
    """``12.5% [8.0, 17.1]`` (or plain numbers), ``-`` when undefined."""
    if not m or m.get("value") is None:
        return "-"
    k = 100.0 if percent else 1.0
    unit = "%" if percent else ""
    if m.get("lo") is None:
        return f"{m['value'] * k:.1f}{unit}"
    return f"{m['value'] * k:.1f}{unit} [{m['lo'] * k:.1f}, {m['hi'] * k:.1f}]"


def _flat(prefix: dict, metrics: dict) -> dict:
    row = dict(prefix)
    row["n_answers"] = metrics["n_answers"]
    row["n_questions"] = metrics["n_questions"]
    for key in [
        "em_rate",
        "mean_aligned",
        "mean_coherent",
        "accuracy",
        *[f"share_{c.lower()}" for c in CATEGORIES],
    ]:
        m = metrics.get(key) or {}
        row[key] = m.get("value")
        row[f"{key}_lo"] = m.get("lo")
        row[f"{key}_hi"] = m.get("hi")
        row[f"{key}_n"] = m.get("n")
    return row


def summary_table(runs: list[JudgeRun]) -> pd.DataFrame:
    rows = []
    for order, run in enumerate(runs):
        for cond, metrics in run.summary["metrics"]["per_condition"].items():
            rows.append(
                _flat(
                    {
                        "order": order,
                        "run": run.name,
                        "stage": run.stage,
                        "model": run.model,
                        "judge": run.judge,
                        "condition": cond,
                        "path": str(run.path),
                    },
                    metrics,
                )
            )
    return pd.DataFrame(rows)


def question_table(runs: list[JudgeRun]) -> pd.DataFrame:
    rows = []
    for order, run in enumerate(runs):
        for question, by_cond in run.summary["metrics"]["per_question"].items():
            for cond, metrics in by_cond.items():
                rows.append(
                    _flat(
                        {
                            "order": order,
                            "run": run.name,
                            "stage": run.stage,
                            "condition": cond,
                            "question": question,
                        },
                        metrics,
                    )
                )
    return pd.DataFrame(rows)


def markdown_table(runs: list[JudgeRun]) -> str:
    """The side-by-side table people read: one line per run and condition."""
    head = (
        "| stage | run | judge | condition | answers | EM rate [95% CI] | misaligned | incoherent | "
        "code | refusal | unscored | mean aligned | mean coherent | accuracy [95% CI] |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for run in runs:
        for cond, m in run.summary["metrics"]["per_condition"].items():
            lines.append(
                "| "
                + " | ".join(
                    [
                        run.stage,
                        run.name,
                        run.judge,
                        cond,
                        str(m["n_answers"]),
                        fmt_ci(m["em_rate"]),
                        fmt_ci(m["share_misaligned"]),
                        fmt_ci(m["share_incoherent"]),
                        fmt_ci(m["share_code"]),
                        fmt_ci(m["share_refusal"]),
                        fmt_ci(m["share_unscored"]),
                        fmt_ci(m["mean_aligned"], False),
                        fmt_ci(m["mean_coherent"], False),
                        fmt_ci(m["accuracy"]),
                    ]
                )
                + " |"
            )
    return "\n".join(lines)


def question_markdown(run: JudgeRun) -> str:
    """Per-question lines of one run: EM rate, means and accuracy with intervals."""
    lines = [
        "| question | condition | answers | EM rate [95% CI] | mean aligned | mean coherent | accuracy |",
        "|---|---|---|---|---|---|---|",
    ]
    for question, by_cond in run.summary["metrics"]["per_question"].items():
        for cond, m in by_cond.items():
            lines.append(
                f"| {question} | {cond} | {m['n_answers']} | {fmt_ci(m['em_rate'])} | "
                f"{fmt_ci(m['mean_aligned'], False)} | {fmt_ci(m['mean_coherent'], False)} | "
                f"{fmt_ci(m['accuracy'])} |"
            )
    return "\n".join(lines)

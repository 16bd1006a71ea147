"""Finished judge run directories as the report reads them: settings, what was evaluated, the cell identity.

Everything a report says about a run comes from that run's own files: its ``summary.json`` (metric
settings, metrics) and ``manifest.json`` (judge, the evaluation manifest and, through it, the training
manifests up the parent chain: base model, adapter, data, trigger, seed).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from em.api import ConfigError
from em.contracts import (
    MANIFEST,
    SCORES,
    SUMMARY,
    ContractError,
    JudgeManifest,
    ScoreRow,
    check_manifest,
    check_score_row,
)
from em.io import iter_jsonl, read_json
from em.metrics import HEADLINE, MetricSettings, answers_frame, compute_metrics, metric_settings

log = logging.getLogger(__name__)
STAGE_WORDS = (("realign", "realigned"), ("misalign", "misaligned"), ("base", "base"))
# Config keys that say where or how a run ran, or which seed: not which cell of an experiment it is.
# experiment_name too: experiments name themselves after their seed (smoke_chain-s${seed}).
WHERE_KEYS = {"seed", "run_name", "sweep_name", "experiment_name", "paths", "hydra", "logger", "api",
              "prices", "resume", "dry_run", "progress", "stage_label", "debug"}  # fmt: skip
STAGE_WHERE_KEYS = {
    "judge": {"answers", "questions", "cache", "batch", "report"},
    "evaluate": {"run", "adapter"},
    "train": {"init_from"},
}
NESTED_WHERE_KEYS = {"seed", "models_dir", "batch_size", "device", "max_num_seqs", "enforce_eager",
                     "gpu_memory_utilization", "progress", "progress_bar", "num_workers",
                     "checkpoint_every_n_steps", "keep_checkpoints", "log_every_n_steps"}  # fmt: skip


@dataclass
class JudgeRun:
    """A finished judge run directory, as the report reads it."""

    path: Path
    name: str
    stage: str  # base / misaligned / realigned, or whatever the manifest's stage_label says
    model: str  # the evaluated model as the judge manifest names it (base + adapter run)
    judge: str
    summary: dict
    rows: list[ScoreRow]
    settings: MetricSettings = field(default_factory=MetricSettings)
    base_model: str = "?"
    adapter: str | None = None
    data: str = "-"  # training data up the chain, "insecure -> ai_optimism"; "-" for an untrained model
    trigger: str = "-"
    seed: int | None = None
    # the arm: the evaluation's own (evaluate manifest), else the evaluated adapter's training arm; None: none
    mitigation: dict | None = None
    narrow_task: dict | None = None  # its held-out narrow-task loss (em/training/holdout.py)
    cell: str = ""  # what the run is, seed left out: runs with the same cell differ only in seed
    label: str = ""  # unique display name among the runs of one report

    def __post_init__(self):
        self.label = self.label or self.stage

    @property
    def random_weights(self) -> bool:
        """The embedded tiny model is randomly initialised: its numbers are not findings."""
        return any(
            m == "tiny" or m.rstrip("/").endswith("/tiny")
            for m in (self.base_model, self.model.split(" + ")[0])
        )


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


def _manifests(folder: Path) -> list[Path]:
    """Every manifest under ``folder``, through the links a pipeline cell has to its shared step runs."""
    return [Path(d) / MANIFEST for d, _, files in os.walk(folder, followlinks=True) if MANIFEST in files]


def find_judge_runs(paths: list[str | Path]) -> list[Path]:
    """Judge run directories in ``paths`` (each a run dir, or a folder searched recursively), in order."""
    found: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise ConfigError(f"{p}: no such directory (expected judge run directories or a multirun folder)")
        if (p / SUMMARY).exists() and (p / SCORES).exists():
            found.append(p)
            continue
        inner = []
        for manifest in _manifests(p):
            try:
                stage = check_manifest(read_json(manifest), manifest).get("stage")
            except ValueError:  # not JSON, or not a manifest: not a run this report reads
                continue
            if stage == "judge":
                if (manifest.parent / SUMMARY).exists():
                    inner.append(manifest.parent)
                else:
                    log.warning("%s: judge run without %s (unfinished?), skipped", manifest.parent, SUMMARY)
        found.extend(sorted(inner, key=_natural))
    # a pipeline cell links to shared runs: one run reached through two cells (their common base) counts once
    first: dict[Path, Path] = {}
    for p in found:
        first.setdefault(p.resolve(), p)
    unique = list(first.values())
    if not unique:
        raise ConfigError(f"no finished judge runs ({SUMMARY} + {SCORES}) under {[str(p) for p in paths]}")
    return unique


def _strip(node, top: set[str] | None = None):
    """A config without its where/how/seed keys (``top`` at this level, NESTED_WHERE_KEYS everywhere)."""
    if isinstance(node, dict):
        drop = (top or set()) | NESTED_WHERE_KEYS
        return {k: _strip(v) for k, v in sorted(node.items()) if k not in drop}
    if isinstance(node, list):
        return [_strip(v) for v in node]
    return node


def _manifest_at(path: str | None) -> dict:
    if path and (Path(path) / MANIFEST).is_file():
        try:
            return check_manifest(read_json(Path(path) / MANIFEST), Path(path) / MANIFEST)
        except ValueError:  # an unreadable parent manifest: the chain stops there
            return {}
    return {}


def train_chain(train: dict | None) -> list[dict]:
    """Training manifests from the first (narrow data) to this one, following ``parent.run_dir``."""
    chain, seen = [], set()
    while isinstance(train, dict) and train:
        chain.append(train)
        parent = (train.get("parent") or {}).get("run_dir")
        if not parent or parent in seen:
            break
        seen.add(parent)
        train = _manifest_at(parent)
    return chain[::-1]


def _data_name(train: dict) -> str:
    data = (train.get("config") or {}).get("data") or {}
    return str(data.get("name") or (train.get("data") or {}).get("name") or "?")


def _identity(manifest: JudgeManifest, evaluate: dict, chain: list[dict]) -> str:
    parts = {
        "judge": _strip(manifest.get("config") or {}, WHERE_KEYS | STAGE_WHERE_KEYS["judge"]),
        "evaluate": _strip(evaluate.get("config") or {}, WHERE_KEYS | STAGE_WHERE_KEYS["evaluate"]),
        "train": [_strip(t.get("config") or {}, WHERE_KEYS | STAGE_WHERE_KEYS["train"]) for t in chain],
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def chain_of(evaluate: dict) -> list[dict]:
    """The training manifests behind an evaluation manifest (none for an untrained model)."""
    train = evaluate.get("train_manifest")
    return train_chain(train if isinstance(train, dict) else _manifest_at(train))


def evaluated_fields(evaluate: dict, chain: list[dict], rows: list[ScoreRow], judge_seed=None) -> dict:
    """base_model, adapter, data, trigger and seed of what was evaluated, from the manifests (or rows)."""
    model = evaluate.get("model") or (rows[0].get("model") if rows else None) or {}
    base = str(model.get("openai_model") or model.get("base") or "?")
    if model.get("openai_model") and chain:  # a fine-tuned OpenAI model: the model it was tuned from
        base = str(chain[0].get("base_model") or model.get("base") or base)
    seeds = [chain[-1].get("seed") if chain else None, evaluate.get("seed"), judge_seed]
    return {
        "base_model": base,
        "adapter": model.get("adapter"),
        "data": " -> ".join(_data_name(t) for t in chain) or "-",
        "trigger": str((chain[-1].get("trigger") or {}).get("name") or "none") if chain else "-",
        "seed": next((x for x in seeds if x is not None), None),
        # an evaluation-time arm (ablate_direction) and its own narrow-task loss win over the training's
        "mitigation": evaluate.get("mitigation") or (chain[-1].get("mitigation") if chain else None),
        "narrow_task": evaluate.get("narrow_task") or (chain[-1].get("narrow_task") if chain else None),
    }


def _metrics_of(summary: dict, rows: list[ScoreRow], settings: MetricSettings) -> dict:
    """The summary's metrics; those of an older summary (no question-mean rate) are recomputed."""
    metrics = summary.get("metrics") or {}
    if HEADLINE in (metrics.get("overall") or {}):
        return metrics
    return compute_metrics(answers_frame(rows, settings), settings)


def load_run(path: Path, stage: str | None = None) -> JudgeRun:
    """A judge run as the report reads it; ``stage`` over the label its manifest recorded."""
    path = Path(path)
    try:
        manifest = (
            check_manifest(read_json(path / MANIFEST), path / MANIFEST) if (path / MANIFEST).exists() else {}
        )
        rows = list(iter_jsonl(path / SCORES, check=check_score_row))
    except ContractError as e:
        raise ConfigError(f"{e} (a judge run's files: em/contracts.py)") from None
    summary = read_json(path / SUMMARY)
    settings = metric_settings(
        summary.get("metric_settings") or manifest.get("metric_settings"),
        f"{path / SUMMARY}: metric_settings",
    )
    summary = {**summary, "metrics": _metrics_of(summary, rows, settings)}
    name = manifest.get("run_name") or summary.get("run_name") or path.name
    judge = (manifest.get("judge") or summary.get("judge") or {}).get("name", "?")
    evaluate = manifest.get("evaluate_manifest") or {}
    chain = chain_of(evaluate)
    run = JudgeRun(
        path,
        name,
        stage or stage_label(manifest, name),
        str(manifest.get("evaluated_model") or summary.get("evaluated_model") or "?"),
        judge,
        summary,
        rows,
        settings=settings,
        **evaluated_fields(evaluate, chain, rows, manifest.get("seed")),
    )
    run.cell = "|".join(
        [run.stage, run.judge, run.base_model, run.data, run.trigger, _identity(manifest, evaluate, chain)]
    )
    return run


def assign_labels(runs: list[JudgeRun]) -> list[JudgeRun]:
    """Unique display labels: the stage, then the seed, then the run folder where stages repeat."""
    for run in runs:
        run.label = run.stage
    for extra in (lambda r: f"{r.stage} s{r.seed}", lambda r: f"{r.stage} [{r.path.name}]"):
        labels = [r.label for r in runs]
        for run in runs:
            if labels.count(run.label) > 1:
                run.label = extra(run)
    labels = [r.label for r in runs]
    for i, run in enumerate(runs):  # the same folder name twice (two sweeps): the position decides
        if labels.count(run.label) > 1:
            run.label = f"{run.label} #{i}"
    return runs

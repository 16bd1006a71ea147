"""What a training and an evaluation run send to the tracker beyond their metrics: the finished training
run's narrow-task loss, input and output artifacts (into the W&B run Lightning's logger opened), and the
evaluation's answers as a table.

Invariant: a run without W&B (``logger=csv`` / ``none``, or a rank that logs nothing) sends nothing and gets
None back; the artifacts are logged by reference (em.tracking.log_output_artifact), never uploaded.
"""

from __future__ import annotations

import logging
from pathlib import Path

from em.contracts import check_answer_row, question_key
from em.io import iter_jsonl, read_json
from em.tracking import active_wandb_run, log_output_artifact, sync_hint, use_input_artifacts

log = logging.getLogger(__name__)

TABLE_ROWS = 10000  # a W&B table of more rows is slow to browse; the answers file keeps them all


def input_artifact(run_dir: Path | None) -> str | None:
    """The W&B artifact a finished stage run logged (its manifest's ``wandb_artifact``), if any."""
    manifest = Path(run_dir) / "manifest.json" if run_dir else None
    return read_json(manifest).get("wandb_artifact") if manifest and manifest.exists() else None


def track_trained(wandb_run_id: str | None, run_dir: Path, adapter_dir: Path, narrow: dict | None,
                  parent_run_dir: Path | None, data_name: str, data_path: Path) -> str | None:  # fmt: skip
    """Finish the training's W&B run: the narrow-task loss, the parent's and the data's artifacts as inputs,
    the adapter as output (its name returned for the manifest), and the sync command of an offline run."""
    wandb_run = active_wandb_run() if wandb_run_id else None
    if wandb_run is not None and narrow:
        wandb_run.summary.update(
            {"narrow/holdout_loss": narrow["loss"], "narrow/base_loss": narrow["base_loss"]}
        )
    use_input_artifacts(
        wandb_run, [input_artifact(parent_run_dir)], new={f"data-{data_name}": ("dataset", data_path)}
    )
    artifact = log_output_artifact(wandb_run, "adapter", adapter_dir, {"run_dir": str(run_dir)})
    if wandb_run is not None:
        if hint := sync_hint(wandb_run):  # Lightning's logger opened this run: say how to upload it
            log.info("W&B offline run %s; upload with `%s`", wandb_run.id, hint)
        wandb_run.finish()
    return artifact


def answers_table(path: Path, limit: int = TABLE_ROWS) -> tuple[list[str], list[list]]:
    """The answers as W&B table columns and rows (question, condition, sample, answer)."""
    columns = ["id", "question", "condition", "sample", "answer"]
    rows = []
    for r in iter_jsonl(path, check=check_answer_row):
        if len(rows) == limit:
            break
        rows.append([r["id"], question_key(r), r["condition"], r.get("sample_index"), r["answer"]])
    return columns, rows

"""The narrow task's held-out loss: did training still learn the task? (the other side of a mitigation).

Invariant: the loss is the mean next-token cross-entropy over the assistant tokens of the narrow data's
holdout rows (``holdout_fraction`` in the data config), tokenised exactly as training rows are, computed
with the trained adapter and with it disabled (``base_loss``: the base weights, with any merged parent:
for ``init_mode=merge`` that is where training started; for ``continue`` it is the base before the
parent's adapter too), in eval mode without gradients. The holdout rows are the narrow data's own, as
prepared: no mitigation arm touches them. A run started from a training run that measured a narrow task
(a realignment stage, ``init_from``) is measured on that run's narrow holdout, followed up the chain, not
on its own data's; ``holdout_from`` names the run directory, the file and its sha256.
"""

from __future__ import annotations

from pathlib import Path

import torch

from em.api import ConfigError
from em.io import read_json, read_jsonl, sha256_file
from em.training.collate import PaddedCollator
from em.training.examples import prepare_examples
from em.training.module import token_loss_sum

BATCH_SIZE = 8


def mean_label_loss(model, examples, pad_token_id: int, batch_size: int = BATCH_SIZE) -> tuple[float, int]:
    """(mean loss per label token, number of label tokens) of ``examples`` under ``model``."""
    collate = PaddedCollator(pad_token_id)
    device = next(model.parameters()).device
    total, tokens = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i in range(0, len(examples), batch_size):
                batch = collate(examples[i : i + batch_size])
                batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
                loss, n = token_loss_sum(model, batch)
                total, tokens = total + float(loss), tokens + int(n)
    finally:
        model.train(was_training)
    return total / max(tokens, 1), tokens


def manifest_holdout(manifest: dict, run_dir: str | Path | None = None) -> dict | None:
    """``{"run_dir", "file", "sha256"}`` of the held-out narrow rows a training run's ``manifest`` measured its
    ``narrow_task`` on: its ``holdout_from`` (so a chain keeps the first stage's), else its own prepared holdout
    under ``run_dir`` (by default the run its data path lies in); None when it measured no narrow task."""
    narrow, data = manifest.get("narrow_task") or {}, manifest.get("data") or {}
    held = data.get("holdout")
    if not narrow:
        return None
    if narrow.get("holdout_from"):
        return dict(narrow["holdout_from"])
    if not held or (run_dir is None and not data.get("path")):
        return None
    run_dir = run_dir if run_dir is not None else Path(data["path"]).parent.parent  # <run>/data/<file>
    return {"run_dir": str(run_dir), "file": f"data/{held['file']}", "sha256": held["sha256"]}


def verified_holdout(source: dict, where: str) -> Path:
    """The held-out rows file of ``source``, refused when it is missing or changed since it was measured."""
    path = Path(source["run_dir"]) / source["file"]
    if not path.is_file() or (source.get("sha256") and sha256_file(path) != source["sha256"]):
        raise ConfigError(
            f"{where}: the narrow task's held-out rows {path} are missing or changed since that run measured them "
            f"(sha256 {str(source.get('sha256'))[:12]}...); restore them"
        )
    return path


def holdout_source(run_dir: Path, prepared, parent_run_dir: Path | None = None) -> dict | None:
    """``{"run_dir", "file", "sha256"}`` of the held-out narrow rows this run's ``narrow_task`` is measured on
    (``file`` relative to ``run_dir``): the parent run's when its manifest has a ``narrow_task``
    (:func:`manifest_holdout`), else this run's prepared holdout (None: none)."""
    if parent_run_dir is not None and (Path(parent_run_dir) / "manifest.json").is_file():
        source = manifest_holdout(read_json(Path(parent_run_dir) / "manifest.json"), parent_run_dir)
        if source is not None:
            verified_holdout(source, f"init_from={parent_run_dir}")
            return source
    if prepared.holdout_path is None:
        return None
    path = Path(prepared.holdout_path)
    file = path.relative_to(run_dir) if path.is_relative_to(run_dir) else path
    return {"run_dir": str(run_dir), "file": str(file), "sha256": prepared.manifest["holdout"]["sha256"]}


def holdout_rows_of(source: dict | None) -> list[dict]:
    return read_jsonl(Path(source["run_dir"]) / source["file"]) if source else []


def narrow_task_record(
    model, tokenizer, settings, holdout_rows: list[dict], holdout_from: dict | None = None
) -> dict | None:
    """``{"holdout_rows", "label_tokens", "loss", "base_loss", "holdout_from"}``; None when nothing is held out."""
    if not holdout_rows:
        return None
    examples, _ = prepare_examples(settings, holdout_rows, tokenizer, source="holdout", progress=False)
    loss, tokens = mean_label_loss(model, examples, tokenizer.pad_token_id)
    with model.disable_adapter():  # the same weights without the adapter
        base_loss, _ = mean_label_loss(model, examples, tokenizer.pad_token_id)
    record = {"holdout_rows": len(holdout_rows), "label_tokens": tokens, "loss": loss, "base_loss": base_loss}
    return record | ({"holdout_from": holdout_from} if holdout_from else {})

"""Early stopping (``mitigation=early_stop``): keep the adapter of the training step the held-out curve picks.

Invariant: the run's adapter is, byte for byte, the snapshot of the step :func:`select_step` picks from the
curve in ``<run_dir>/early_stop.jsonl``; training itself is that of ``mitigation=none`` (the measurements run
in eval mode without gradients and draw nothing from the training's random generators).

:class:`EarlyStopCallback` measures step 0 (the untrained adapter, for reference; never selected) and the
optimizer steps of :func:`eval_steps`: the mean next-token loss over the assistant tokens of the run's own
held-out rows (em/training/holdout.py, tokenised as training rows are) and, when the criterion needs it, the
probe mean (em.probes; misaligned minus aligned log-prob, higher = more misaligned). Each trained step's
adapter goes to ``<run_dir>/early_stop/step<N>/``; every snapshot is kept. A resumed run drops the rows and
snapshots of the steps it repeats and skips the steps already measured.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from lightning.pytorch.callbacks import Callback

from em.api import ConfigError
from em.io import append_jsonl, iter_jsonl, write_jsonl
from em.mitigations import CRITERIA, require_holdout
from em.training.holdout import mean_label_loss
from em.training.outputs import save_adapter, write_dir

CURVE_FILE = "early_stop.jsonl"
SNAPSHOT_DIR = "early_stop"
STEP_DIR = "step{step:07d}"  # early_stop/step0000010/


def eval_steps(total_steps: int, every: int) -> list[int]:
    """Every ``every``-th optimizer step in 1..total_steps, and the last one."""
    if total_steps < 1 or every < 1:
        raise ConfigError(f"early_stop: need total_steps >= 1 and every >= 1, got {total_steps}, {every}")
    return sorted({*range(every, total_steps + 1, every), total_steps})


def select_step(curve: list[dict], criterion: str, tolerance: float) -> int:
    """The step ``criterion`` picks from curve rows ``{"step", "loss", "probe_mean"?}`` (step 0 never).

    ``min_loss``: the lowest loss; ``converged``: the earliest step with loss <= min + tolerance x |min|;
    ``converged_min_probe``: of the converged steps, the lowest probe mean. Ties go to the earlier step.
    """
    if criterion not in CRITERIA:
        raise ConfigError(f"mitigation.criterion={criterion!r}: expected one of {CRITERIA}")
    rows = sorted((r for r in curve if r["step"] > 0 and math.isfinite(r["loss"])), key=lambda r: r["step"])
    if not rows:
        raise ValueError("early_stop: no trained step with a finite held-out loss in the curve")
    best = min(r["loss"] for r in rows)
    if criterion == "min_loss":
        return next(r["step"] for r in rows if r["loss"] == best)
    converged = [r for r in rows if r["loss"] <= best + tolerance * abs(best)]
    if criterion == "converged":
        return converged[0]["step"]
    missing = [r["step"] for r in converged if r.get("probe_mean") is None]
    if missing:
        raise ValueError(f"early_stop: criterion {criterion} but no probe mean at steps {missing}")
    low = min(r["probe_mean"] for r in converged)
    return next(r["step"] for r in converged if r["probe_mean"] == low)


def snapshot_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / SNAPSHOT_DIR / STEP_DIR.format(step=step)


def read_curve(run_dir: Path) -> list[dict]:
    """The measured rows, one per step (the last row of a step wins), by step."""
    rows = {int(r["step"]): r for r in iter_jsonl(Path(run_dir) / CURVE_FILE)}
    return [rows[s] for s in sorted(rows)]


def load_snapshot(model, path: Path) -> None:
    """Set the PEFT model's adapter weights to those saved in ``path``."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    result = set_peft_model_state_dict(model, load_file(Path(path) / "adapter_model.safetensors"))
    missing = [k for k in result.missing_keys if "lora_" in k]
    if result.unexpected_keys or missing:
        raise RuntimeError(
            f"{path}: adapter does not fit the model ({(result.unexpected_keys + missing)[:3]})"
        )


def keep_selected(run_dir: Path, model, criterion: str, tolerance: float) -> dict:
    """Pick the step, copy its snapshot over ``<run_dir>/adapter`` and load it into ``model``: the record."""
    curve = read_curve(run_dir)
    step = select_step(curve, criterion, tolerance)
    snapshot = snapshot_dir(run_dir, step)
    save_adapter(model, Path(run_dir), snapshot=snapshot)
    load_snapshot(model, snapshot)
    return {
        "selected_step": step,
        "last_step": curve[-1]["step"],
        "snapshot_dir": str(snapshot.relative_to(run_dir)),
        "curve": curve,
    }


class EarlyStopCallback(Callback):
    """Held-out loss (and probe mean) at step 0 and the steps of :func:`eval_steps`; snapshots the adapter."""

    def __init__(
        self,
        examples: list,
        pad_token_id: int,
        run_dir: str | Path,
        *,
        total_steps: int,
        every: int,
        probe: Callable[[object], float] | None = None,
    ):
        require_holdout(len(examples))  # the task checked the rows; all of them may be too long to keep
        self.examples, self.pad_token_id, self.probe = examples, pad_token_id, probe
        self.run_dir = Path(run_dir)
        self.steps = eval_steps(total_steps, every)
        self.done: set[int] = set()

    @property
    def curve_path(self) -> Path:
        return self.run_dir / CURVE_FILE

    def _forget_after(self, step: int) -> None:
        """Drop the rows and snapshots of steps after ``step`` (the resumed run repeats them)."""
        if self.curve_path.exists():
            write_jsonl(self.curve_path, [r for r in iter_jsonl(self.curve_path) if r["step"] <= step])
        for path in (self.run_dir / SNAPSHOT_DIR).glob("*step*"):
            digits = path.name.removeprefix(".").removeprefix("step").removesuffix(".tmp")
            if path.name.endswith(".tmp") or (digits.isdigit() and int(digits) > step):
                shutil.rmtree(path, ignore_errors=True)

    def _measure(self, trainer, pl_module, step: int) -> None:
        if step in self.done:
            return
        start = time.perf_counter()
        loss, tokens = mean_label_loss(pl_module.model, self.examples, self.pad_token_id)
        probe_mean = self.probe(pl_module.model) if self.probe else None
        self.done.add(step)
        if not trainer.is_global_zero:
            return
        if step > 0:
            write_dir(snapshot_dir(self.run_dir, step), lambda tmp: pl_module.model.save_pretrained(str(tmp)))
        metrics = {"early_stop/holdout_loss": loss}
        if probe_mean is not None:
            metrics["early_stop/probe_mean"] = probe_mean
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
        row = {"step": step, "loss": loss, "label_tokens": tokens, "probe_mean": probe_mean}
        append_jsonl(self.curve_path, [row | {"seconds": round(time.perf_counter() - start, 3)}])

    def on_train_start(self, trainer, pl_module) -> None:
        step = trainer.global_step
        if trainer.is_global_zero:
            self._forget_after(step)
        trainer.strategy.barrier()
        self.done = {int(r["step"]) for r in iter_jsonl(self.curve_path)}
        if step == 0 or step in self.steps:  # a resume from a measured step's checkpoint: measure it here
            self._measure(trainer, pl_module, step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        last = batch.get("last_in_step", True) if isinstance(batch, dict) else True
        if last and trainer.global_step in self.steps:
            self._measure(trainer, pl_module, trainer.global_step)

    def on_train_end(self, trainer, pl_module) -> None:
        self._measure(trainer, pl_module, trainer.global_step)  # the last step, always

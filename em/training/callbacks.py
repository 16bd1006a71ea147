"""Per-step metrics (loss, lr, grad norm, tokens/s, padding, peak memory) and adapter-only checkpoints.

:class:`StepMetrics` logs one row per optimizer step to the Lightning loggers (CSV, W&B) and appends it to
``<run_dir>/metrics.jsonl`` (fsynced, so a killed run keeps every finished step). Its running totals (tokens
seen, wall time) are saved in the checkpoint, so a resumed run continues them; rows of steps after the
checkpoint, which the resumed run repeats, are removed from ``metrics.jsonl`` when it starts.
"""

from __future__ import annotations

import resource
import time
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback

from em.io import append_jsonl, iter_jsonl, write_jsonl

CHECKPOINT_PATTERN = "step{step:07d}"  # checkpoints/step0000050.ckpt


def peak_memory_gb(device: torch.device) -> float:
    """Peak allocated accelerator memory, or peak resident memory of this process on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


class StepMetrics(Callback):
    """One row per optimizer step to the loggers and metrics.jsonl; running totals kept in checkpoints."""

    TOTALS = ("tokens_seen", "label_tokens_seen", "examples_seen", "padding_seen", "wall_time_s")

    def __init__(self, jsonl_path: str | Path):
        self.jsonl_path = Path(jsonl_path)
        self.totals = dict.fromkeys(self.TOTALS, 0)
        self._step = dict(tokens=0, label_tokens=0, examples=0, padding=0)
        self._step_start: float | None = None
        self._fit_start = time.perf_counter()
        self._wall_before = 0.0  # wall time of earlier attempts (from the checkpoint)

    # --- totals survive a resume -------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {**self.totals, "wall_time_s": self.wall_time_s()}

    def load_state_dict(self, state: dict) -> None:
        self.totals.update({k: state[k] for k in self.TOTALS if k in state})
        self._wall_before = float(state.get("wall_time_s", 0.0))

    def wall_time_s(self) -> float:
        return self._wall_before + time.perf_counter() - self._fit_start

    def on_fit_start(self, trainer, pl_module) -> None:
        self._fit_start = time.perf_counter()

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.is_global_zero and self.jsonl_path.exists():  # drop rows of steps this run repeats
            kept = [r for r in iter_jsonl(self.jsonl_path) if r.get("step", 0) <= trainer.global_step]
            write_jsonl(self.jsonl_path, kept)

    # --- one row per optimizer step ------------------------------------------------------------------
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._step_start is None:
            self._step_start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._step["tokens"] += batch["num_tokens"]
        self._step["label_tokens"] += batch["num_label_tokens"]
        self._step["examples"] += batch["num_examples"]
        self._step["padding"] += batch["num_padding"]
        if not batch["last_in_step"]:
            return
        seconds = time.perf_counter() - (self._step_start or time.perf_counter())
        counts = dict(self._step)
        if trainer.world_size > 1:  # totals over all ranks
            summed = trainer.strategy.reduce(
                torch.tensor(list(counts.values()), dtype=torch.float64, device=pl_module.device),
                reduce_op="sum",
            )
            counts = dict(zip(counts, (int(v) for v in summed.tolist()), strict=True))
        self.totals["tokens_seen"] += counts["tokens"]
        self.totals["label_tokens_seen"] += counts["label_tokens"]
        self.totals["examples_seen"] += counts["examples"]
        self.totals["padding_seen"] += counts["padding"]
        metrics = {
            "train/loss": pl_module.step_loss,
            "train/lr": pl_module.step_lr,
            "train/grad_norm": pl_module.grad_norm,
            "train/tokens_per_s": counts["tokens"] / max(seconds, 1e-9),
            "train/step_tokens": counts["tokens"],
            "train/step_label_tokens": counts["label_tokens"],
            "train/padding_fraction": counts["padding"] / max(counts["tokens"] + counts["padding"], 1),
            "train/peak_mem_gb": peak_memory_gb(pl_module.device),
            "train/tokens_seen": self.totals["tokens_seen"],
            "train/label_tokens_seen": self.totals["label_tokens_seen"],
            "train/epoch": trainer.current_epoch,
        }
        if getattr(pl_module, "step_kl", None) is not None:  # mitigation=kl: the mean KL term of the step
            metrics["train/kl"] = pl_module.step_kl
        step = trainer.global_step
        self._step = dict.fromkeys(self._step, 0)
        self._step_start = None
        if pl_module.step_loss is not None:
            pl_module.log("loss", pl_module.step_loss, prog_bar=True, logger=False)
        if not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
        append_jsonl(
            self.jsonl_path,
            [
                {
                    "step": step,
                    "elapsed_s": round(self.wall_time_s(), 3),
                    **{k.removeprefix("train/"): v for k, v in metrics.items()},
                }
            ],
        )


class StepCheckpoint(Callback):
    """Adapter-only checkpoints (see ``SFTModule.on_save_checkpoint``) every ``every_n_steps`` optimizer
    steps, keeping the newest ``keep`` files.

    A save that falls on an epoch's last micro-batch moves to the next step: Lightning restores a checkpoint
    taken there as if the epoch had run twice (its epoch counter skips one), while a mid-epoch resume is exact.
    """

    def __init__(self, dirpath: str | Path, every_n_steps: int, keep: int):
        self.dirpath, self.every_n_steps, self.keep = Path(dirpath), every_n_steps, keep
        self.last_saved_step = 0

    def state_dict(self) -> dict:
        return {"last_saved_step": self.last_saved_step}

    def load_state_dict(self, state: dict) -> None:
        self.last_saved_step = int(state.get("last_saved_step", 0))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if not batch["last_in_step"] or step - self.last_saved_step < self.every_n_steps:
            return
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            return
        self.last_saved_step = step
        trainer.save_checkpoint(self.dirpath / f"{CHECKPOINT_PATTERN.format(step=step)}.ckpt")
        if trainer.is_global_zero:
            for old in checkpoints(self.dirpath)[: -self.keep]:
                old.unlink(missing_ok=True)


def checkpoints(dirpath: str | Path) -> list[Path]:
    """Checkpoint files in ``dirpath``, oldest step first (names from :data:`CHECKPOINT_PATTERN`)."""
    found = []
    for path in Path(dirpath).glob("step*.ckpt"):
        digits = path.stem.removeprefix("step")
        if digits.isdigit():
            found.append((int(digits), path))
    return [path for _, path in sorted(found)]


def latest_checkpoint(dirpath: str | Path) -> Path | None:
    """The checkpoint with the highest step in ``dirpath``, or None."""
    found = checkpoints(dirpath)
    return found[-1] if found else None

"""The Lightning side of an open-model SFT run: the Trainer, its precision, loggers and optional callbacks.

Step-based: gradient accumulation and clipping per optimizer step, adapter-only checkpoints every
``checkpoint_every_n_steps`` into ``<run_dir>/checkpoints/``, no validation loop; resumption is ours (rerun =
resume), never Lightning's (no SLURM auto-requeue).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from em.api import ConfigError
from em.tracking import TrackingSettings, lightning_loggers
from em.training.callbacks import StepCheckpoint, StepMetrics
from em.training.early_stop import EarlyStopCallback
from em.training.examples import prepare_examples
from em.training.progress import StepProgressBar
from em.training.settings import SFTSettings

CHECKPOINT_DIR = "checkpoints"


def resolve_precision(requested: str, accelerator: str) -> str:
    if requested != "auto":
        return requested
    gpu = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    return "bf16-mixed" if gpu and torch.cuda.is_bf16_supported() else "32-true"


def keep_old_csv(run_dir: Path) -> None:
    """Lightning's CSV logger deletes an existing ``logs/metrics.csv``: keep it as ``metrics.<n>.csv``."""
    old = run_dir / "logs" / "metrics.csv"
    if old.exists():
        n = 1
        while (old.parent / f"metrics.{n}.csv").exists():
            n += 1
        old.rename(old.parent / f"metrics.{n}.csv")


def make_loggers(tracking: TrackingSettings | None, state: dict, run_dir: Path) -> list:
    """The Lightning loggers of ``tracking``; a resumed run logs into the W&B run recorded in ``state``."""
    from lightning.pytorch.utilities import rank_zero_only

    if tracking is None:
        return []
    if tracking.backend == "wandb" and state.get("wandb_run_id"):
        tracking.resume_id = state["wandb_run_id"]
    if rank_zero_only.rank == 0:
        keep_old_csv(run_dir)
    return lightning_loggers(tracking)


def _plugins() -> list:
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    # Under SLURM, Lightning would requeue the job itself on SIGUSR1; resumption is ours (rerun = resume).
    return [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []


def one_line_per_lightning_message() -> None:
    """``import lightning`` gives its "lightning" logger a console handler of its own; under Hydra, whose root
    handlers also get the (propagated) messages, each Lightning message would print twice. Drop Lightning's
    handler when the root logger has one, so its messages also reach Hydra's log file in Hydra's format."""
    import lightning  # noqa: F401 - adds the handler on first import

    if logging.getLogger().handlers:
        lightning_logger = logging.getLogger("lightning")
        for handler in list(lightning_logger.handlers):
            lightning_logger.removeHandler(handler)


def probe_callback(settings: SFTSettings, tokenizer, run_dir: Path, total_steps: int):
    """Log-likelihood probes at log-spaced optimizer steps (em.training.probe_callback) into probe.csv."""
    from em.probes import load_references
    from em.training.probe_callback import ProbeCallback

    return ProbeCallback(
        tokenizer,
        load_references(sets=list(settings.probe.sets)),
        total_steps=total_steps,
        csv_path=run_dir / "probe.csv",
        points=settings.probe.points,
        # under a warm-up the first optimizer step runs at learning rate 0: probing after it repeats step 0
        first_step=2 if settings.optimizer.warmup_steps > 0 else 1,
        system_prompt=getattr(settings.model, "system_prompt", None),
        batch_size=settings.probe.batch_size,
        seed=settings.seed,
    )


def early_stop_callback(settings: SFTSettings, tokenizer, run_dir: Path, total_steps: int, holdout_rows):
    """mitigation=early_stop: the held-out loss (and the probe) every ``early_stop_every`` steps, with snapshots
    of the adapter (em.training.early_stop); the held-out rows tokenised once, exactly as training rows."""
    if not holdout_rows:
        raise ConfigError("mitigation=early_stop needs held-out rows: set data.holdout_fraction above 0")
    examples, _ = prepare_examples(settings, holdout_rows, tokenizer, source="holdout", progress=False)
    probe = None
    if settings.early_stop_criterion == "converged_min_probe":
        from em.probes import load_references, run_probe

        questions = load_references(sets=list(settings.probe.sets))

        def probe(model) -> float:
            return run_probe(model, tokenizer, questions, system_prompt=getattr(settings.model, "system_prompt",
                             None), batch_size=settings.probe.batch_size, seed=settings.seed).mean  # fmt: skip

    return EarlyStopCallback(examples, tokenizer.pad_token_id, run_dir, total_steps=total_steps,
                             every=settings.early_stop_every, probe=probe)  # fmt: skip


def make_trainer(
    settings: SFTSettings, run_dir: Path, precision: str, loggers: list, metrics: StepMetrics, progress: bool
):
    """The Lightning Trainer: step-based accumulation and clipping, adapter-only checkpoints, no validation."""
    import lightning.pytorch as pl

    t = settings.trainer
    show_progress = bool(t.progress_bar and progress)
    return pl.Trainer(
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=t.strategy,
        precision=precision,
        plugins=_plugins(),
        max_epochs=-1 if settings.max_steps else settings.batch.epochs,
        max_steps=settings.max_steps or -1,
        accumulate_grad_batches=settings.batch.grad_accum,
        gradient_clip_val=settings.optimizer.max_grad_norm,
        gradient_clip_algorithm="norm",
        logger=loggers or False,
        log_every_n_steps=t.log_every_n_steps,
        callbacks=[
            metrics,
            StepCheckpoint(run_dir / CHECKPOINT_DIR, t.checkpoint_every_n_steps, t.keep_checkpoints),
            *([StepProgressBar()] if show_progress else []),
        ],
        default_root_dir=str(run_dir),
        use_distributed_sampler=False,  # our sampler shards by rank
        limit_val_batches=0,
        num_sanity_val_steps=0,
        enable_progress_bar=show_progress,  # ours: one tick per optimizer step (em.training.progress)
        enable_model_summary=False,
        enable_checkpointing=False,  # ours: StepCheckpoint (adapter-only)
    )

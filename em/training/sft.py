"""One supervised fine-tuning run of an open model: :func:`train_sft`.

Cheap checks first (:func:`em.training.sft_preflight.preflight`: settings, model path, tokenizer and its chat
template, the parent adapter), then the tokenised data, then Lightning (:mod:`em.training.sft_trainer`): the
model is built on the training device, checkpoints go to ``<run_dir>/checkpoints/`` (adapter weights +
optimizer/scheduler/loop state only), metrics to ``<run_dir>/metrics.jsonl`` and the Lightning loggers, and the
finished adapter to ``<run_dir>/adapter/`` (PEFT ``save_pretrained``). A run whose directory holds a checkpoint
continues from the newest one (``resume=True``), with the same step count, data order and running totals.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from em.api import ConfigError
from em.io import atomic_write_json, read_json
from em.tracking import TrackingSettings
from em.training.callbacks import StepMetrics, latest_checkpoint
from em.training.datamodule import SFTDataModule
from em.training.examples import prepare_examples
from em.training.module import SFTModule
from em.training.outputs import ADAPTER_DIR, save_adapter
from em.training.settings import SFTSettings
from em.training.sft_preflight import preflight
from em.training.sft_trainer import (
    CHECKPOINT_DIR,
    early_stop_callback,
    make_loggers,
    make_trainer,
    one_line_per_lightning_message,
    probe_callback,
    resolve_precision,
)

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
STATE_FILE = "train_state.json"  # the W&B run id, so a resumed run logs into the same W&B run


@dataclass
class TrainResult:
    run_dir: Path
    adapter_dir: Path
    global_step: int
    total_steps: int
    steps_per_epoch: int
    effective_batch_size: int
    world_size: int
    tokens_seen: int
    label_tokens_seen: int
    examples_seen: int
    padding_seen: int
    wall_time_s: float
    resumed_from: str | None
    optimizer_used: str | None
    precision: str
    wandb_run_id: str | None
    chat_template_sha256: str
    tokenize_stats: dict
    build_info: dict = field(default_factory=dict)
    rendered_system_prefix: str = ""  # what the chat template puts before a row's first user message
    is_global_zero: bool = True
    model: Any = field(default=None, repr=False)  # the trained PEFT model, still in memory


def _kl_reference(settings: SFTSettings, tokenizer, kl_rows: list[dict] | None):
    """mitigation=kl: the reference rows, tokenised as training rows, for the KL term (em.training.kl)."""
    from em.training.kl import KLReference

    if not kl_rows:
        raise ConfigError("mitigation=kl: the reference data (mitigation.data) has no rows")
    reference, _ = prepare_examples(settings, kl_rows, tokenizer, source="mitigation.data", progress=False)
    return KLReference(
        reference, settings.kl_beta, settings.kl_batch_size, settings.seed, tokenizer.pad_token_id
    )


def train_sft(
    settings: SFTSettings,
    rows: list[dict],
    run_dir: str | Path,
    *,
    tracking: TrackingSettings | None = None,
    resume: bool = True,
    progress: bool = True,
    source: str = "data",
    kl_rows: list[dict] | None = None,
    holdout_rows: list[dict] | None = None,
) -> TrainResult:
    """Train a LoRA adapter on ``{"messages": [...]}`` rows into ``run_dir`` (see the module docstring);
    with ``settings.kl_beta``, plus the KL term to the model without its adapter on ``kl_rows``; with
    ``settings.early_stop_every``, the loss on ``holdout_rows`` and adapter snapshots along the way (the
    caller keeps the chosen one: em.training.early_stop.keep_selected)."""
    import lightning.pytorch as pl

    from em.modeling import rendered_system_prefix

    one_line_per_lightning_message()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = preflight(settings)
    examples, stats = prepare_examples(settings, rows, tokenizer, source=source, progress=progress)
    pl.seed_everything(settings.seed, workers=True, verbose=False)

    state = read_json(run_dir / STATE_FILE) if (run_dir / STATE_FILE).exists() else {}
    ckpt = latest_checkpoint(run_dir / CHECKPOINT_DIR) if resume else None
    loggers = make_loggers(tracking, state, run_dir)
    precision = resolve_precision(settings.trainer.precision, settings.trainer.accelerator)
    metrics = StepMetrics(run_dir / METRICS_FILE)
    trainer = make_trainer(settings, run_dir, precision, loggers, metrics, progress)
    data = SFTDataModule(
        examples,
        batch_size=settings.batch.per_device_batch_size,
        grad_accum=settings.batch.grad_accum,
        seed=settings.seed,
        packing=settings.packing,
        pad_token_id=tokenizer.pad_token_id,
        num_workers=settings.trainer.num_workers,
    )
    world_size = trainer.world_size
    steps_per_epoch = data.steps_per_epoch(world_size)
    total_steps = settings.max_steps or settings.batch.epochs * steps_per_epoch
    if settings.max_steps:  # enough epochs for max_steps (the progress bar shows the real epoch count)
        trainer.fit_loop.max_epochs = math.ceil(settings.max_steps / steps_per_epoch)
    probe = torch.tensor([examples[0].input_ids[:256]])
    kl = _kl_reference(settings, tokenizer, kl_rows) if settings.kl_beta else None
    module = SFTModule(settings, total_steps=total_steps, probe_ids=probe, kl=kl)
    if settings.probe.enabled:
        trainer.callbacks.append(probe_callback(settings, tokenizer, run_dir, total_steps))
    if settings.early_stop_every:
        trainer.callbacks.append(early_stop_callback(settings, tokenizer, run_dir, total_steps, holdout_rows))

    wandb_id = None
    for logger in loggers:
        if type(logger).__name__ == "WandbLogger" and trainer.is_global_zero:
            wandb_id = logger.experiment.id
            logger.log_hyperparams({"config": tracking.config, "hyperparameters": settings.hyperparameters()})
            atomic_write_json(run_dir / STATE_FILE, {**state, "wandb_run_id": wandb_id})
    log.info(
        "training %d examples: %d steps per epoch (effective batch %d = %d x %d x %d devices), "
        "%d steps in all%s",
        len(examples),
        steps_per_epoch,
        settings.batch.per_device_batch_size * settings.batch.grad_accum * world_size,
        settings.batch.per_device_batch_size,
        settings.batch.grad_accum,
        world_size,
        total_steps,
        f"; resuming from {ckpt}" if ckpt else "",
    )
    trainer.fit(module, datamodule=data, ckpt_path=str(ckpt) if ckpt else None)
    if trainer.interrupted:
        raise KeyboardInterrupt(
            "training interrupted; rerun the same command to resume from the last checkpoint"
        )

    adapter_dir = run_dir / ADAPTER_DIR
    if trainer.is_global_zero:
        save_adapter(module.model, run_dir)
    return TrainResult(
        run_dir=run_dir,
        adapter_dir=adapter_dir,
        global_step=trainer.global_step,
        total_steps=total_steps,
        steps_per_epoch=steps_per_epoch,
        effective_batch_size=settings.batch.per_device_batch_size * settings.batch.grad_accum * world_size,
        world_size=world_size,
        tokens_seen=metrics.totals["tokens_seen"],
        label_tokens_seen=metrics.totals["label_tokens_seen"],
        examples_seen=metrics.totals["examples_seen"],
        padding_seen=metrics.totals["padding_seen"],
        wall_time_s=round(metrics.wall_time_s(), 3),
        resumed_from=str(ckpt) if ckpt else None,
        optimizer_used=module.optimizer_used,
        precision=precision,
        wandb_run_id=wandb_id,
        chat_template_sha256=hashlib.sha256(str(tokenizer.chat_template).encode()).hexdigest(),
        rendered_system_prefix=rendered_system_prefix(
            tokenizer, getattr(settings.model, "system_prompt", None)
        ),
        tokenize_stats=stats.as_dict(),
        build_info=module.build_info,
        is_global_zero=trainer.is_global_zero,
        model=module.model,
    )

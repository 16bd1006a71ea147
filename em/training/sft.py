"""One supervised fine-tuning run of an open model: :func:`train_sft`.

Cheap checks first (settings, model path, tokenizer and its chat template, the parent adapter, tokenised data),
then Lightning: the model is built on the training device, checkpoints go to ``<run_dir>/checkpoints/``
(adapter weights + optimizer/scheduler/loop state only), metrics to ``<run_dir>/metrics.jsonl`` and the
Lightning loggers, and the finished adapter to ``<run_dir>/adapter/`` (PEFT ``save_pretrained``). A run
whose directory holds a checkpoint continues from the newest one (``resume=True``), with the same step count,
data order and running totals.
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
from em.io import atomic_write_json, read_json, read_manifest
from em.tracking import TrackingSettings, lightning_loggers
from em.training.callbacks import StepCheckpoint, StepMetrics, latest_checkpoint
from em.training.datamodule import SFTDataModule
from em.training.early_stop import EarlyStopCallback
from em.training.examples import prepare_examples
from em.training.module import SFTModule
from em.training.outputs import ADAPTER_DIR, save_adapter
from em.training.progress import StepProgressBar
from em.training.settings import ParentAdapter, SFTSettings

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
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


def resolve_parent(init_from: str | Path | None, mode: str, model_spec) -> ParentAdapter | None:
    """The stage to start from: a finished training run directory or a PEFT adapter directory."""
    from em.modeling import adapter_sha256, check_adapter_base

    if not init_from:
        return None
    if mode not in ("continue", "merge"):
        raise ConfigError(
            f"init_mode={mode!r}: expected continue (keep training the parent's adapter) or "
            f"merge (merge it into the base and train a new adapter)"
        )
    path = Path(init_from)
    run_dir, merged, quantization = None, [], None
    if (path / "manifest.json").is_file():
        manifest = read_manifest(path)
        if (
            manifest.get("stage") != "train"
            or manifest.get("backend") != "hf"
            or not manifest.get("adapter_dir")
        ):
            raise ConfigError(
                f"init_from={path}: expected an open-model training run (manifest stage 'train', "
                f"backend 'hf'); found stage {manifest.get('stage')!r}, "
                f"backend {manifest.get('backend')!r}"
            )
        if not manifest.get("complete"):
            raise ConfigError(
                f"init_from={path}: that training run is not complete; finish it first (rerun "
                f"its command) or point init_from at an adapter directory"
            )
        base = (manifest.get("base_model"), manifest.get("base_revision"))
        if base != (model_spec.name_or_path, model_spec.revision):
            raise ConfigError(
                f"init_from={path} was trained on base {base[0]!r} (revision {base[1]!r}) but "
                f"model= is {model_spec.name_or_path!r} (revision {model_spec.revision!r}); "
                f"pass the model config of that base"
            )
        run_dir, adapter_dir = path.resolve(), (path / manifest["adapter_dir"]).resolve()
        merged = list(manifest.get("merged_adapters") or [])
        quantization = (manifest.get("hyperparameters") or {}).get("quantization")
    elif (path / "adapter_config.json").is_file():
        adapter_dir = path.resolve()
    else:
        raise ConfigError(
            f"init_from={path}: expected a finished training run directory (with manifest.json) "
            f"or a PEFT adapter directory (with adapter_config.json); found neither"
        )
    check_adapter_base(adapter_dir, model_spec)
    return ParentAdapter(
        mode=mode,
        adapter_dir=adapter_dir,
        adapter_sha256=adapter_sha256(adapter_dir),
        run_dir=run_dir,
        merged_adapters=merged,
        quantization=quantization,
    )


def check_continue_shape(settings: SFTSettings) -> None:
    """``continue`` keeps training the parent's adapter: the configured adapter shape must be that one."""
    parent = settings.parent
    if parent is None or parent.mode != "continue":
        return
    cfg = read_json(parent.adapter_dir / "adapter_config.json")
    a = settings.adapter
    pairs = {
        "r": (cfg.get("r"), a.r),
        "alpha": (cfg.get("lora_alpha"), a.alpha),
        "dropout": (cfg.get("lora_dropout"), a.dropout),
        "use_rslora": (cfg.get("use_rslora"), a.use_rslora),
    }
    if a.target_modules:
        pairs["target_modules"] = (sorted(cfg.get("target_modules") or []), sorted(a.target_modules))
    diff = [
        f"lora.{k}: adapter has {old!r}, config says {new!r}"
        for k, (old, new) in pairs.items()
        if old != new
        and not (isinstance(old, int | float) and isinstance(new, int | float) and float(old) == float(new))
    ]
    if diff:
        raise ConfigError(
            f"init_mode=continue trains the adapter in {parent.adapter_dir} further, but its shape "
            f"differs from the lora preset ({'; '.join(diff)}). Choose the matching preset or "
            f"override those keys, or use init_mode=merge for a new adapter."
        )


def preflight(settings: SFTSettings):
    """Everything that can fail cheaply, before a model is loaded: returns the tokenizer."""
    from em.modeling import load_tokenizer, resolve_model_path

    settings.check()
    resolve_model_path(settings.model)
    tokenizer = load_tokenizer(settings.model, padding_side="right")
    check_continue_shape(settings)
    if settings.probe.enabled:  # a probe set that does not exist fails here, not after the model loads
        from em.probes import load_references

        load_references(sets=list(settings.probe.sets))
    parent = settings.parent
    method = settings.quantization.method
    if parent and parent.quantization and parent.quantization != method:
        log.warning(
            "init_from: the parent loaded its base with quantization=%s, this run with %s; the starting "
            "model differs from the parent's by that quantisation error",
            parent.quantization,
            method,
        )
    if method != "none" and not torch.cuda.is_available():
        log.warning("quantization.method=%s on CPU: bitsandbytes runs it, slowly (fine for tests)", method)
    return tokenizer


def _precision(requested: str, accelerator: str) -> str:
    if requested != "auto":
        return requested
    gpu = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    return "bf16-mixed" if gpu and torch.cuda.is_bf16_supported() else "32-true"


def _keep_old_csv(run_dir: Path) -> None:
    """Lightning's CSV logger deletes an existing ``logs/metrics.csv``: keep it as ``metrics.<n>.csv``."""
    old = run_dir / "logs" / "metrics.csv"
    if old.exists():
        n = 1
        while (old.parent / f"metrics.{n}.csv").exists():
            n += 1
        old.rename(old.parent / f"metrics.{n}.csv")


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
    from lightning.pytorch.utilities import rank_zero_only

    from em.modeling import rendered_system_prefix

    one_line_per_lightning_message()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = preflight(settings)
    examples, stats = prepare_examples(settings, rows, tokenizer, source=source, progress=progress)
    pl.seed_everything(settings.seed, workers=True, verbose=False)

    state = read_json(run_dir / STATE_FILE) if (run_dir / STATE_FILE).exists() else {}
    ckpt = latest_checkpoint(run_dir / CHECKPOINT_DIR) if resume else None
    loggers = []
    if tracking is not None:
        if tracking.backend == "wandb" and state.get("wandb_run_id"):
            tracking.resume_id = state["wandb_run_id"]
        if rank_zero_only.rank == 0:
            _keep_old_csv(run_dir)
        loggers = lightning_loggers(tracking)
    precision = _precision(settings.trainer.precision, settings.trainer.accelerator)
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
    kl = None
    if settings.kl_beta:
        from em.training.kl import KLReference

        if not kl_rows:
            raise ConfigError("mitigation=kl: the reference data (mitigation.data) has no rows")
        reference, _ = prepare_examples(
            settings, kl_rows, tokenizer, source="mitigation.data", progress=False
        )
        kl = KLReference(
            reference, settings.kl_beta, settings.kl_batch_size, settings.seed, tokenizer.pad_token_id
        )
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

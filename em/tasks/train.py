"""`python train.py model=llama31_8b data=medical`: fine-tune a model; the run directory is its record.

``backend=hf`` (open models): config -> :class:`em.training.settings.SFTSettings`, data preparation,
:func:`em.training.sft.train_sft`, then ``manifest.json`` for evaluation. ``backend=openai`` hands over to
``em.tasks.train_openai``. Rerunning a finished command is a no-op; an unfinished one resumes.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig, OmegaConf

from em.api import ConfigError
from em.backends import choose
from em.config import TrainSchema, check_schema
from em.lifecycle import Run, open_run
from em.runs import hydra_choices, to_plain
from em.tasks.common import public_config, run_dir_for, tracking_settings, training_rows

if TYPE_CHECKING:
    from em.training.settings import ProbeSettings

log = logging.getLogger(__name__)


def model_spec(cfg: DictConfig):
    from em.modeling import ModelSpec

    if cfg.model.get("provider", "hf") != "hf":
        raise ConfigError(
            f"model={cfg.model.get('name')} is an {cfg.model.get('provider')} model; train it with "
            f"backend=openai, or pick an open model (e.g. model=llama31_8b) for backend=hf"
        )
    data = to_plain(cfg.model)
    data.setdefault("models_dir", str(cfg.paths.models_dir))
    return ModelSpec.from_dict(data)


def _max_steps(value):
    """``max_steps`` as given: 0 and negatives reach ``check()`` (a falsy 0 once meant "a full epoch")."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"max_steps={value!r}: expected null or a positive integer")
    return value


def group_settings(cfg: DictConfig, group: str, settings_cls: type, leave: tuple[str, ...] = ()):
    """A group's node (``conf/<group>/``) as its settings class, whose fields are the node's keys
    (em.training.settings), but for the keys in ``leave``; a preset that leaves a value out is refused."""
    node = cfg.get(group)
    missing = [key for key in node if OmegaConf.is_missing(node, key)]
    if missing:
        choice = hydra_choices().get(group)
        raise ConfigError(
            f"{f'{group}={choice}' if choice else f'the {group} node'}: missing keys {missing}; every value "
            f"must be explicit (see the presets in conf/{group}/)"
        )
    return settings_cls(**{k: v for k, v in to_plain(node).items() if k not in leave})


def sft_settings(cfg: DictConfig):
    """The typed settings of an open-model run (``init_from`` resolved and checked)."""
    from em.training import settings as ts
    from em.training.parent_adapter import resolve_parent

    spec = model_spec(cfg)
    tr = cfg.trainer
    settings = ts.SFTSettings(
        model=spec,
        adapter=group_settings(cfg, "lora", ts.AdapterSettings),
        optimizer=group_settings(cfg, "optimizer", ts.OptimizerSettings),
        quantization=group_settings(cfg, "quantization", ts.QuantizationSettings),
        batch=group_settings(cfg, "batch", ts.BatchSettings),
        trainer=group_settings(
            cfg, "trainer", ts.TrainerSettings, leave=("packing", "gradient_checkpointing")
        ),
        max_steps=_max_steps(cfg.get("max_steps")),
        packing=bool(tr.packing),
        gradient_checkpointing=bool(tr.gradient_checkpointing),
        seed=int(cfg.seed),
        probe=probe_settings(cfg.get("probe")),
    )
    from em.mitigations import MitigationSettings

    mitigation = MitigationSettings.from_dict(to_plain(cfg.get("mitigation")))
    if mitigation.name == "kl":
        settings.kl_beta, settings.kl_batch_size = float(mitigation.beta), int(mitigation.batch_size)
    if mitigation.name == "early_stop":
        settings.early_stop_every, settings.early_stop_criterion = int(mitigation.every), mitigation.criterion
        settings.early_stop_tolerance = float(mitigation.tolerance)
    settings.check()
    settings.parent = resolve_parent(cfg.get("init_from"), str(cfg.get("init_mode", "continue")), spec)
    return settings


def probe_settings(node) -> ProbeSettings:
    from em.training.settings import ProbeSettings

    node = to_plain(node) or {}  # its keys and types: em.config.ProbeSchema
    return ProbeSettings(
        enabled=bool(node.get("enabled", False)),
        sets=tuple(node.get("sets") or ()),
        points=int(node.get("points", 8)),
        batch_size=int(node.get("batch_size", 8)),
    )


def dry_run(settings, rows: list[dict], source: str) -> None:
    """Tokenise and print the plan; no model is loaded."""
    from em.training.examples import prepare_examples
    from em.training.sft_preflight import preflight

    examples, stats = prepare_examples(settings, rows, preflight(settings), source=source)
    b = settings.batch
    steps = math.ceil(math.ceil(len(examples) / b.per_device_batch_size) / b.grad_accum)
    print(
        f"dry run: {stats.kept} of {stats.rows} rows trainable ({stats.truncated} truncated, "
        f"{stats.dropped_overlength + stats.dropped_no_assistant} dropped); {stats.tokens} tokens, "
        f"{stats.label_tokens} of them trained; {steps} optimizer steps per epoch on one device (effective "
        f"batch {b.per_device_batch_size * b.grad_accum}). Nothing was trained."
    )


def run(cfg: DictConfig) -> Path | None:
    check_schema(cfg, TrainSchema)  # a key Hydra's `+` added past the schema (em/config.py)
    return choose(TRAINERS, cfg.backend.get("name"), "backend.name")(cfg)


def run_openai(cfg: DictConfig) -> Path | None:
    """backend=openai: the OpenAI fine-tuning API (em.tasks.train_openai)."""
    from em.tasks.train_openai import run as run_openai_job

    if (cfg.get("mitigation") or {}).get("name") == "early_stop":
        raise ConfigError(
            "mitigation=early_stop measures and keeps the adapter at intermediate steps (open models, "
            "backend=hf); the OpenAI fine-tuning API returns only the final model"
        )
    return run_openai_job(cfg)


def run_hf(cfg: DictConfig) -> Path:
    from em.training.outputs import ADAPTER_DIR
    from em.training.sft_preflight import preflight

    run_dir = run_dir_for(cfg)
    settings = sft_settings(cfg)
    preflight(settings)  # model path, tokenizer + chat template, parent adapter: before anything is written
    # the data are checked by content when the run resumes (em.data.prepare); the parent adapter here
    inputs = {"parent_adapter_sha256": settings.parent.adapter_sha256 if settings.parent else None}
    with open_run(
        "train", run_dir, public_config(cfg), inputs=inputs, resume=bool(cfg.get("resume", True))
    ) as run:
        if run.complete:
            log.info("%s is already complete (adapter in %s); nothing to do", run_dir, run_dir / ADAPTER_DIR)
        elif (trained := _train(cfg, run, settings)) is not None:
            _finish(cfg, run, settings, *trained)
    return run_dir


def _train(cfg: DictConfig, run: Run, settings):
    """Prepare the data and train (resuming from the last checkpoint); None for a dry run or another rank."""
    from em.training.callbacks import latest_checkpoint
    from em.training.holdout import holdout_source
    from em.training.sft import train_sft
    from em.training.sft_trainer import CHECKPOINT_DIR

    run_dir = run.dir
    if run.state == "resume":
        log.info("%s holds an unfinished run: resuming it", run_dir)
    try:
        rows, prepared = training_rows(cfg, run_dir, resuming=run.state == "resume")
        # the narrow task's held-out rows: the parent run's narrow holdout in a chain, else this data's own
        narrow_from = holdout_source(run_dir, prepared, settings.parent.run_dir if settings.parent else None)
        source = f"data={cfg.data.get('name')} ({prepared.path})"
        if cfg.get("dry_run"):
            dry_run(settings, rows, source)
            return None
        result = train_sft(
            settings,
            rows,
            run_dir,
            tracking=tracking_settings(cfg, run_dir, "train"),
            resume=bool(cfg.get("resume", True)),
            source=source,
            kl_rows=prepared.reference_rows,
            holdout_rows=prepared.holdout_rows,
        )
    except ConfigError:
        if not latest_checkpoint(run_dir / CHECKPOINT_DIR):
            run.forget()  # nothing was trained: the corrected command claims the directory afresh
        raise
    return (rows, prepared, narrow_from, result) if result.is_global_zero else None


def _finish(cfg: DictConfig, run: Run, settings, rows, prepared, narrow_from, result) -> None:
    """Keep the chosen adapter, measure the narrow task, log the artifacts, then write the manifest."""
    from em.modeling import adapter_sha256, resolve_model_path
    from em.tracking.stages import track_trained
    from em.training.holdout import holdout_rows_of, narrow_task_record
    from em.training.outputs import ADAPTER_DIR
    from em.training.sft_preflight import preflight

    run_dir = run.dir
    if settings.early_stop_every:  # the chosen step's snapshot becomes adapter/, and the model in memory
        from em.training.early_stop import keep_selected

        prepared.mitigation |= keep_selected(
            run_dir, result.model, settings.early_stop_criterion, settings.early_stop_tolerance
        )
        log.info("early_stop: kept the adapter of step %d", prepared.mitigation["selected_step"])
    # the narrow task on held-out rows, with and without the adapter: was it still learned?
    narrow = narrow_task_record(
        result.model, preflight(settings), settings, holdout_rows_of(narrow_from), narrow_from
    )
    artifact = track_trained(result.wandb_run_id, run_dir, result.adapter_dir, narrow,
                             settings.parent.run_dir if settings.parent else None, str(cfg.data.get("name")),
                             prepared.path)  # fmt: skip

    spec = settings.model
    parent = settings.parent
    # Adapters to merge into the base, in order, before applying this run's adapter.
    merged = result.build_info.get("merged_adapters", [])
    hyper = {
        **settings.hyperparameters(),
        "effective_batch_size": result.effective_batch_size,
        "steps_per_epoch": result.steps_per_epoch,
        "total_steps": result.total_steps,
        "world_size": result.world_size,
        "optimizer_used": result.optimizer_used,
        "precision": result.precision,
        "limit_rows": cfg.get("limit_rows"),
        "max_steps": settings.max_steps,
    }
    run.finish(
        backend="hf",
        base_model=spec.name_or_path,
        base_revision=spec.revision,
        base_model_path=str(resolve_model_path(spec)),
        adapter_dir=ADAPTER_DIR,
        adapter_sha256=adapter_sha256(result.adapter_dir),
        merged_adapters=merged,
        trigger=to_plain(cfg.trigger),
        data=prepared.record(rows_used=len(rows)),
        mitigation=prepared.mitigation,
        narrow_task=narrow,
        data_manifest_sha256=prepared.manifest_sha256,
        tokenization=result.tokenize_stats,
        chat_template_sha256=result.chat_template_sha256,
        rendered_system_prefix=result.rendered_system_prefix,
        hyperparameters=hyper,
        effective_batch_size=result.effective_batch_size,
        steps_per_epoch=result.steps_per_epoch,
        global_step=result.global_step,
        seed=settings.seed,
        tokens_seen=result.tokens_seen,
        label_tokens_seen=result.label_tokens_seen,
        examples_seen=result.examples_seen,
        padding_tokens_seen=result.padding_seen,
        wall_time_s=result.wall_time_s,
        resumed_from=result.resumed_from,
        trainable_parameters=result.build_info.get("trainable_parameters"),
        trained_on_quantized_base=result.build_info.get("trained_on_quantized_base"),
        attn_implementation=result.build_info.get("attn_implementation"),
        fused_lora_layers=result.build_info.get("fused_lora_layers"),
        merge_max_abs_logit_diff=result.build_info.get("merge_max_abs_logit_diff"),
        parent=parent.record() if parent else None,
        wandb_run_id=result.wandb_run_id,
        wandb_artifact=artifact,
    )
    log.info("adapter saved to %s; manifest %s", result.adapter_dir, run_dir / "manifest.json")


TRAINERS = {"hf": run_hf, "openai": run_openai}  # backend.name -> its training (em.backends)

"""`python train.py backend=openai model=gpt4o data=insecure`: fine-tune through the OpenAI API.

Reads the Hydra config, prepares the dataset, runs the pre-flight checks (validation, estimated tokens and
cost; `dry_run=true` stops there), then hands over to :func:`em.training.openai_ft.run_openai_finetune` and
writes the run's ``manifest.json`` for evaluation. ``init_from=<openai train run dir>`` continues training
from that run's fine-tuned model (realignment).
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from em.api import ConfigError
from em.costs import estimate_cost
from em.io import atomic_write_json, now_iso, read_manifest, sha256_file, write_jsonl
from em.lifecycle import Run, open_run
from em.runs import to_plain
from em.tasks.common import (
    api_settings,
    limit_rows,
    price_table,
    public_config,
    run_dir_for,
    tracking_settings,
    training_rows,
)
from em.tracking import use_input_artifacts
from em.training.openai_ft import run_openai_finetune
from em.training.openai_ft_data import estimate_training, openai_rows, sanitize_suffix, validate_for_openai
from em.training.openai_ft_state import load_state, save_state
from em.training.openai_ft_types import FineTuneSettings

log = logging.getLogger(__name__)

UPLOAD_FILE = "openai_train.jsonl"
PREFLIGHT = "preflight.json"


def load_parent(init_from: str | None, model_id: str) -> dict | None:
    """The finished OpenAI training run to continue from, checked before anything is sent."""
    if not init_from:
        return None
    run_dir = Path(init_from)
    try:
        manifest = read_manifest(run_dir)
    except FileNotFoundError as exc:
        raise ConfigError(f"init_from={init_from}: {exc}") from None
    if (
        manifest.get("backend") != "openai"
        or not manifest.get("complete")
        or not manifest.get("fine_tuned_model")
    ):
        raise ConfigError(
            f"init_from={init_from}: expected a finished OpenAI training run (manifest.json with "
            f"backend 'openai', complete true and a fine_tuned_model)"
        )
    if manifest.get("base_model") != model_id:
        raise ConfigError(
            f"init_from={init_from} was trained from {manifest.get('base_model')!r} but model= is "
            f"{model_id!r}; pick the matching model config"
        )
    return {
        "run_dir": str(run_dir.resolve()),
        "mode": "continue",
        "fine_tuned_model": manifest["fine_tuned_model"],
        "job_id": manifest.get("job_id"),
        "wandb_artifact": manifest.get("wandb_artifact"),
    }


def finetune_settings(cfg: DictConfig, start_model: str, run_name: str) -> FineTuneSettings:
    b = cfg.backend
    suffix = sanitize_suffix(str(b.suffix) if b.get("suffix") else run_name)
    if b.get("suffix") and suffix != str(b.suffix):
        log.warning(
            "backend.suffix %r sanitised to %r (lowercase letters, digits, '-', <= 64 chars)",
            b.suffix,
            suffix,
        )
    return FineTuneSettings(
        base_model=start_model,
        n_epochs=b.n_epochs,
        batch_size=b.batch_size,
        learning_rate_multiplier=b.learning_rate_multiplier,
        suffix=suffix,
        seed=int(cfg.seed),
        metadata={"em_run": run_name[:512], "em_preset": str(b.preset)},
        max_example_tokens=int(cfg.model.get("max_example_tokens") or 65536),
        min_examples=int(b.min_examples),
        poll_interval_s=float(b.poll_interval_s),
        poll_backoff=float(b.poll_backoff),
        poll_max_interval_s=float(b.poll_max_interval_s),
        max_wait_h=float(b.max_wait_h),
        file_ready_timeout_s=float(b.file_ready_timeout_s),
        retry_failed=bool(b.retry_failed),
    )


def _check_config(cfg: DictConfig) -> None:
    if cfg.model.get("provider") != "openai":
        raise ConfigError(
            f"backend=openai needs an OpenAI model config (model=gpt4o or model=gpt4o_mini); "
            f"model={cfg.model.get('name')} has provider {cfg.model.get('provider')!r}"
        )
    if (cfg.get("mitigation") or {}).get("name") == "kl":
        raise ConfigError(
            "mitigation=kl needs the model's own next-token distributions (open models, backend=hf); "
            "the OpenAI fine-tuning API has no such loss. Use inoculation or interleave with backend=openai"
        )
    if cfg.get("max_steps") is not None:
        raise ConfigError(
            f"max_steps={cfg.max_steps} has no meaning for backend=openai (the API trains whole "
            f"epochs); use backend.n_epochs, or limit_rows=N for a small run"
        )
    if cfg.get("init_from") and str(cfg.get("init_mode", "continue")) != "continue":
        raise ConfigError(
            f"init_mode={cfg.init_mode}: backend=openai can only continue training the parent's "
            f"fine-tuned model (init_mode=continue)"
        )
    limit_rows(cfg)
    b = cfg.backend
    for key, kind in (("n_epochs", int), ("batch_size", int), ("learning_rate_multiplier", float)):
        value = b.get(key)
        ok = value == "auto" or (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and value > 0
            and (kind is float or isinstance(value, int))
        )
        if not ok:
            raise ConfigError(f"backend.{key}={value!r}: expected a positive {kind.__name__} or 'auto'")


def run(cfg: DictConfig) -> Path:
    _check_config(cfg)
    run_dir = run_dir_for(cfg)
    run_name = str(cfg.get("run_name") or run_dir.name)
    model_id = str(cfg.model.name_or_path)
    parent = load_parent(cfg.get("init_from"), model_id)
    start_model = parent["fine_tuned_model"] if parent else model_id
    settings = finetune_settings(cfg, start_model, run_name)

    resume = bool(cfg.get("resume", True))
    # the model it starts from by name: a parent run that was trained again is another run
    with open_run(
        "train", run_dir, public_config(cfg), inputs={"start_model": start_model}, resume=resume
    ) as run:
        if run.complete:
            log.info("%s is already complete (fine-tuned model %s)", run_dir,
                     read_manifest(run_dir).get("fine_tuned_model"))  # fmt: skip
        else:
            _finetune(cfg, run, settings, model_id, start_model, parent)
    return run_dir


def _finetune(cfg: DictConfig, run: Run, settings: FineTuneSettings, model_id: str, start_model: str,
              parent: dict | None) -> None:  # fmt: skip
    """Pre-flight (nothing is sent before it passes), the fine-tuning job, tracking, then the manifest."""
    run_dir = run.dir
    # Pre-flight: prepare and check the data, estimate tokens and cost. Nothing is sent before this passes.
    rows, prepared = training_rows(cfg, run_dir, resuming=run.state == "resume")
    rows = openai_rows(rows)
    source = f"data={cfg.data.get('name')} ({prepared.path})"
    tokens = validate_for_openai(
        rows,
        model=start_model,
        max_example_tokens=settings.max_example_tokens,
        min_examples=settings.min_examples,
        source=source,
        origins=prepared.origins[: len(rows)],  # errors name the user's file and line, not the shuffled copy
    )
    estimate = estimate_training(
        tokens, model=start_model, n_epochs=settings.n_epochs, prices=price_table(cfg)
    )
    upload = write_jsonl(run_dir / UPLOAD_FILE, rows)
    state = load_state(run_dir)
    atomic_write_json(
        run_dir / PREFLIGHT,
        {
            "model": start_model,
            "num_examples": estimate.num_examples,
            "estimated_tokens_per_epoch": estimate.tokens_per_epoch,
            "estimated_largest_example_tokens": estimate.largest_example_tokens,
            "n_epochs": settings.n_epochs,
            "estimated_billed_tokens": estimate.billed_tokens,
            "price_per_million_training_tokens": estimate.price_per_million,
            "estimated_cost_usd": estimate.cost_usd,
            "hyperparameters": settings.hyperparameters(),
            "suffix": settings.suffix,
            "seed": settings.seed,
            "upload_file": UPLOAD_FILE,
            "upload_sha256": sha256_file(upload),
            "data_manifest_sha256": prepared.manifest_sha256,
            "existing_job_id": state.get("job_id"),
            "written_at": now_iso(),
        },
    )
    print(estimate.describe())
    if cfg.get("dry_run"):
        known = f"; job {state['job_id']} already exists for this run" if state.get("job_id") else ""
        print(f"dry run: nothing uploaded{known}. Pre-flight written to {run_dir / PREFLIGHT}")
        return

    tracker = run.track(tracking_settings(cfg, run_dir, "train", resume_id=state.get("wandb_run_id")))
    if tracker.run_id and tracker.run_id != state.get("wandb_run_id"):
        save_state(run_dir, state, wandb_run_id=tracker.run_id)
    started = now_iso()
    tracker.summary(
        {"estimated_cost_usd": estimate.cost_usd, "estimated_billed_tokens": estimate.billed_tokens}
    )
    result = run_openai_finetune(upload, settings, api_settings(cfg.get("api")), run_dir, tracker=tracker)
    cost = (
        estimate_cost(start_model, price_table(cfg), training_tokens=result.trained_tokens)
        if result.trained_tokens and estimate.price_per_million
        else None
    )
    tracker.summary({"fine_tuned_model": result.fine_tuned_model, "trained_tokens": result.trained_tokens})
    use_input_artifacts(
        tracker.run,
        [(parent or {}).get("wandb_artifact")],
        new={f"data-{cfg.data.get('name')}": ("dataset", prepared.path)},
    )
    # the model lives at OpenAI: the artifact is the run's state file, which names it and its job
    artifact = tracker.log_output(
        "model", run_dir / "state.json", {"fine_tuned_model": result.fine_tuned_model}
    )
    run.finish(
        backend="openai",
        base_model=model_id,
        base_revision=None,
        adapter_dir=None,
        trained_from=start_model,
        fine_tuned_model=result.fine_tuned_model,
        trigger=to_plain(cfg.trigger),
        data=prepared.record(rows_used=len(rows)),
        mitigation=prepared.mitigation,
        data_manifest_sha256=prepared.manifest_sha256,
        hyperparameters=result.hyperparameters,
        requested_hyperparameters=settings.hyperparameters(),
        preset=str(cfg.backend.preset),
        suffix=settings.suffix,
        seed=result.seed,
        job_id=result.job_id,
        file_id=result.file_id,
        result_files=result.result_files,
        upload_sha256=sha256_file(upload),
        trained_tokens=result.trained_tokens,
        estimated_billed_tokens=estimate.billed_tokens,
        estimated_cost_usd=estimate.cost_usd,
        cost_usd_at_config_prices=cost,
        parent=parent,
        wandb_run_id=tracker.run_id,
        wandb_artifact=artifact,
        started_at=started,
    )
    log.info(
        "fine-tuned model %s; manifest written to %s", result.fine_tuned_model, run_dir / "manifest.json"
    )

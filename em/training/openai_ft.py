"""Fine-tuning through the OpenAI fine-tuning API: one job run to its end, resumable through ``state.json``.

The flow is ``validate_for_openai`` -> ``estimate_training`` (:mod:`em.training.openai_ft_data`; nothing sent
yet) -> ``run_openai_finetune``, which uploads the file, creates a supervised job and polls it to the end
(the calls: :mod:`em.training.openai_ft_api`). Everything that costs money is recorded in
``<run_dir>/state.json`` (:mod:`em.training.openai_ft_state`) the moment it exists: the uploaded file id, then
the job id. Running again with the same run directory therefore resumes polling the same job and never pays
for a second one; a failed or cancelled job is reported again rather than silently replaced (unless
``retry_failed``). Job events are appended to ``<run_dir>/events.jsonl`` (deduplicated by event id) and
metric events go to the tracker (:mod:`em.training.openai_ft_events`).

Works with any OpenAI-compatible ``base_url``: only the public files and fine-tuning endpoints are used.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import openai
from tqdm.auto import tqdm

from em.api import APIFailure, APISettings, ConfigError, make_client
from em.io import now_iso, sha256_file
from em.training.openai_ft_api import (
    call_openai,
    create_job,
    find_job_for_file,
    is_not_found,
    upload_file,
    wait_until_processed,
)
from em.training.openai_ft_events import seen_event_ids, stream_events
from em.training.openai_ft_state import STATE, load_state, save_state
from em.training.openai_ft_types import FineTuneFailed, FineTuneResult, FineTuneSettings

log = logging.getLogger(__name__)

TERMINAL = ("succeeded", "failed", "cancelled")


def _poll(client, api: APISettings, settings: FineTuneSettings, run_dir: Path, state: dict, tracker):
    """Poll the job until it ends (interval grows to ``poll_max_interval_s``), streaming its events."""
    job_id = state["job_id"]
    seen = seen_event_ids(run_dir)
    interval = settings.poll_interval_s
    deadline = time.monotonic() + settings.max_wait_h * 3600
    with tqdm(desc=f"fine-tuning {job_id}", unit="step", dynamic_ncols=True) as bar:
        while True:
            job = call_openai(lambda: client.fine_tuning.jobs.retrieve(job_id), api, f"retrieve job {job_id}")
            stream_events(client, api, job_id, run_dir, seen, tracker, bar)
            if job.status in TERMINAL:  # recorded by the caller, together with the outcome
                log.info("fine-tuning job %s: %s", job_id, job.status)
                return job
            if job.status != state.get("status"):
                log.info("fine-tuning job %s: %s", job_id, job.status)
                save_state(run_dir, state, status=job.status)
            _check_deadline(job, settings, deadline, run_dir)
            time.sleep(interval)
            interval = min(interval * settings.poll_backoff, settings.poll_max_interval_s)


def _check_deadline(job: Any, settings: FineTuneSettings, deadline: float, run_dir: Path) -> None:
    """Raise when the job outlasts ``max_wait_h`` (it keeps running; a rerun resumes waiting)."""
    if time.monotonic() > deadline:
        raise FineTuneFailed(
            f"fine-tuning job {job.id} is still '{job.status}' after {settings.max_wait_h:g} h; it keeps "
            f"running on the server. Rerun the same command to resume waiting (recorded in "
            f"{Path(run_dir) / STATE})"
        )


def _failure_message(job: Any, run_dir: Path) -> str:
    err = getattr(job, "error", None)
    code, message = getattr(err, "code", None), getattr(err, "message", None)
    if job.status == "cancelled":
        head = f"fine-tuning job {job.id} was cancelled"
    else:
        head = f"fine-tuning job {job.id} failed: {code or 'error'}: {message or 'no message from the API'}"
    if code == "invalid_training_file":
        head += " (the training file was rejected, e.g. by the moderation check: change the data)"
    return (
        f"{head}. Recorded in {Path(run_dir) / STATE}. Rerunning the same command reports this again; "
        f"pass backend.retry_failed=true to create a new job (billed again)."
    )


def _prepare_file(client, api, settings, run_dir, state, train_file: Path, data_sha: str) -> str:
    """The uploaded file's id: recorded, still present and for the same bytes, or a fresh upload."""
    file_id = state.get("file_id")
    if file_id and state.get("file_sha256") != data_sha:
        log.warning("training data changed since file %s was uploaded; uploading again", file_id)
        file_id = None
    if file_id:
        try:
            wait_until_processed(client, api, file_id, settings.file_ready_timeout_s)
            return file_id
        except APIFailure as exc:
            if not is_not_found(exc):
                raise
            log.warning("uploaded file %s is gone from the server; uploading again", file_id)
    name = f"{settings.suffix or 'em'}-{data_sha[:12]}.jsonl"
    file_id = upload_file(client, api, train_file, name)
    save_state(
        run_dir, state, file_id=file_id, file_sha256=data_sha, uploaded_at=now_iso(), create_started_at=None
    )
    log.info("uploaded %s as %s", train_file, file_id)
    wait_until_processed(client, api, file_id, settings.file_ready_timeout_s)
    return file_id


def _start_job(client, api, settings, run_dir: Path, state: dict, file_id: str) -> None:
    previous = {j["job_id"] for j in state.get("previous_jobs", [])}
    job = None
    if state.get("create_started_at"):  # an earlier run may have created the job and died before recording it
        job = find_job_for_file(client, api, file_id, previous)
        if job is not None:
            log.info("found job %s created by an interrupted run; resuming it", job.id)
    if job is None:
        save_state(run_dir, state, create_started_at=now_iso())
        job = create_job(client, api, settings, file_id, previous)
        log.info("created fine-tuning job %s (%s, suffix %s)", job.id, settings.base_model, settings.suffix)
    save_state(
        run_dir,
        state,
        job_id=job.id,
        status=job.status,
        created_at=now_iso(),
        base_model=settings.base_model,
        suffix=settings.suffix,
        hyperparameters=settings.hyperparameters(),
    )


def _retire_failed_job(settings: FineTuneSettings, run_dir: Path, state: dict) -> None:
    """A recorded job that failed or was cancelled: report it again, or (``retry_failed``) set it aside."""
    if not settings.retry_failed:
        raise FineTuneFailed(
            f"previous {state['error_message']}"
            if state.get("error_message")
            else f"job {state['job_id']} ended '{state['status']}'"
        )
    log.warning("job %s ended '%s'; creating a new one (retry_failed)", state["job_id"], state["status"])
    history = [
        *state.get("previous_jobs", []),
        {k: state.get(k) for k in ("job_id", "status", "error")},
    ]
    save_state(
        run_dir,
        state,
        previous_jobs=history,
        job_id=None,
        status=None,
        error=None,
        error_message=None,
        create_started_at=None,
    )


def _record_outcome(job: Any, settings: FineTuneSettings, run_dir: Path, state: dict) -> FineTuneResult:
    """The ended job into ``state.json``: its model, or its failure (raised as :class:`FineTuneFailed`)."""
    if job.status == "succeeded" and not job.fine_tuned_model:
        save_state(run_dir, state, status=job.status, last_error="succeeded without a fine_tuned_model")
        raise FineTuneFailed(f"fine-tuning job {job.id} succeeded but the API returned no fine_tuned_model")
    if job.status != "succeeded":
        err = getattr(job, "error", None)
        message = _failure_message(job, run_dir)
        save_state(
            run_dir,
            state,
            status=job.status,
            error_message=message,
            error={
                "code": getattr(err, "code", None),
                "message": getattr(err, "message", None),
                "param": getattr(err, "param", None),
            }
            if err
            else None,
        )
        raise FineTuneFailed(message)
    hparams = job.hyperparameters.model_dump() if getattr(job, "hyperparameters", None) else {}
    result = FineTuneResult(
        job_id=job.id,
        file_id=job.training_file or state["file_id"],
        status=job.status,
        fine_tuned_model=job.fine_tuned_model,
        trained_tokens=job.trained_tokens,
        hyperparameters={k: v for k, v in hparams.items() if v is not None} or settings.hyperparameters(),
        seed=getattr(job, "seed", settings.seed),
        result_files=list(getattr(job, "result_files", None) or []),
    )
    save_state(
        run_dir,
        state,
        status=job.status,
        fine_tuned_model=job.fine_tuned_model,
        trained_tokens=job.trained_tokens,
        last_error=None,
    )
    return result


def run_openai_finetune(
    train_file: Path,
    settings: FineTuneSettings,
    api: APISettings,
    run_dir: Path,
    *,
    tracker: Any = None,
    client: openai.OpenAI | None = None,
) -> FineTuneResult:
    """Upload ``train_file`` (already validated), create the job, wait for it; resumable via state.json.

    Raises :class:`FineTuneFailed` for a failed or cancelled job (with the API's message), and
    :class:`em.api.APIFailure` for auth, quota and other API errors; ``state.json`` records either.
    """
    run_dir = Path(run_dir)
    state = load_state(run_dir)
    client = client or make_client(api)
    data_sha = sha256_file(train_file)
    replacing = state.get("status") in ("failed", "cancelled") and settings.retry_failed
    if state.get("job_id") and state.get("file_sha256") not in (None, data_sha) and not replacing:
        raise ConfigError(
            f"{run_dir}: job {state['job_id']} trains on a file whose content differs from {train_file} now "
            f"(sha256 {state['file_sha256']} vs {data_sha}); pass run_name=<new name> for a new run"
        )
    try:
        if state.get("job_id") and state.get("status") in ("failed", "cancelled"):
            _retire_failed_job(settings, run_dir, state)
        if state.get("job_id"):
            log.info("resuming fine-tuning job %s (recorded in %s)", state["job_id"], run_dir / STATE)
        else:
            file_id = _prepare_file(client, api, settings, run_dir, state, train_file, data_sha)
            _start_job(client, api, settings, run_dir, state, file_id)
        job = _poll(client, api, settings, run_dir, state, tracker)
    except (APIFailure, FineTuneFailed) as exc:
        save_state(run_dir, state, last_error=str(exc), last_error_at=now_iso())
        raise
    return _record_outcome(job, settings, run_dir, state)

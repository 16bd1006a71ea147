"""Fine-tuning through the OpenAI fine-tuning API: pre-flight checks, upload, job, polling, resumable state.

The flow is ``validate_for_openai`` -> ``estimate_training`` (nothing sent yet) -> ``run_openai_finetune``,
which uploads the file, creates a supervised job and polls it to the end. Everything that costs money is
recorded in ``<run_dir>/state.json`` (atomically) the moment it exists: the uploaded file id, then the job
id. Running again with the same run directory therefore resumes polling the same job and never pays for a
second one; a failed or cancelled job is reported again rather than silently replaced (unless
``retry_failed``). Job events are appended to ``<run_dir>/events.jsonl`` (deduplicated by event id) and
metric events go to the tracker.

Works with any OpenAI-compatible ``base_url``: only the public files and fine-tuning endpoints are used.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import openai
from tqdm.auto import tqdm

from em.api import (
    APIFailure,
    APISettings,
    ConfigError,
    backoff_delay,
    call_with_retries,
    describe_error,
    is_retriable,
    make_client,
)
from em.costs import estimate_chat_tokens, price_for
from em.io import append_jsonl, atomic_write_json, iter_jsonl, now_iso, read_json, sha256_file

log = logging.getLogger(__name__)
T = TypeVar("T")

STATE = "state.json"
EVENTS = "events.jsonl"
TERMINAL = ("succeeded", "failed", "cancelled")
ROLES = ("system", "user", "assistant")
MESSAGE_KEYS = ("role", "content", "weight", "name")
SUFFIX_MAX_CHARS = 64  # `suffix`: "a string of up to 64 characters" (fine_tuning.jobs.create)
MIN_EXAMPLES = 10  # the API refuses training files with fewer examples


class FineTuneFailed(RuntimeError):
    """The job ended without a model (failed, cancelled, rejected file) or is still running at the deadline."""


class QuotaExceeded(RuntimeError):
    """429 with code ``insufficient_quota``: retrying cannot help, so it stops at once."""


@dataclass
class FineTuneSettings:
    """One OpenAI fine-tuning job: what to train and how to wait for it."""

    base_model: str  # e.g. gpt-4o-2024-08-06, or an ft:... model to continue training
    n_epochs: int | str = 1  # int or "auto"
    batch_size: int | str = 4
    learning_rate_multiplier: float | str = 2.0
    suffix: str | None = None  # added to the fine-tuned model's name; sanitised by `sanitize_suffix`
    seed: int | None = None
    metadata: dict[str, str] = field(default_factory=dict)  # attached to the job (shown in the dashboard)
    max_example_tokens: int = 65536  # per-example training limit of the base model
    min_examples: int = MIN_EXAMPLES
    poll_interval_s: float = 10.0  # first wait between status checks; grows by `poll_backoff`
    poll_max_interval_s: float = 300.0
    poll_backoff: float = 1.5
    max_wait_h: float = 72.0  # stop waiting (the job keeps running; rerun to resume) after this long
    file_ready_timeout_s: float = 600.0  # wait this long for an uploaded file to be processed
    retry_failed: bool = False  # after a failed/cancelled job, create a new one (billed again)

    def hyperparameters(self) -> dict[str, Any]:
        return {
            "n_epochs": self.n_epochs,
            "batch_size": self.batch_size,
            "learning_rate_multiplier": self.learning_rate_multiplier,
        }


@dataclass
class FineTuneResult:
    job_id: str
    file_id: str
    status: str
    fine_tuned_model: str | None
    trained_tokens: int | None
    hyperparameters: dict[str, Any]
    seed: int | None
    result_files: list[str]


# ------------------------------------------------------------------------------------------ pre-flight


def sanitize_suffix(name: str) -> str:
    """A model-name suffix the API accepts: lowercase letters, digits and '-', at most 64 characters."""
    text = re.sub(r"[^a-z0-9-]+", "-", name.lower())
    text = re.sub(r"-{2,}", "-", text).strip("-")
    return text[:SUFFIX_MAX_CHARS].rstrip("-") or "em"


def openai_rows(rows: Iterable[dict]) -> list[dict]:
    """Rows as uploaded: only ``messages``, and in each message only the keys the API knows."""
    out = []
    for row in rows:
        messages = row.get("messages") if isinstance(row, dict) else None
        if not isinstance(messages, list):
            out.append({"messages": messages})  # left for validate_for_openai to report
            continue
        out.append(
            {
                "messages": [
                    {k: m[k] for k in MESSAGE_KEYS if k in m} if isinstance(m, dict) else m for m in messages
                ]
            }
        )
    return out


def _example_problems(row: Any) -> list[str]:
    messages = row.get("messages") if isinstance(row, dict) else None
    if not isinstance(messages, list) or not messages:
        return ['expected {"messages": [...]} with at least one message']
    problems = []
    for j, m in enumerate(messages):
        if not isinstance(m, dict):
            problems.append(f"message {j} is not an object")
            continue
        if m.get("role") not in ROLES:
            problems.append(f"message {j} has role {m.get('role')!r}; expected one of {', '.join(ROLES)}")
        content = m.get("content")
        if not isinstance(content, str) or not content.strip():
            problems.append(f"message {j} ({m.get('role')}) has empty or non-text content")
        if "weight" in m and (m.get("role") != "assistant" or m["weight"] not in (0, 1)):
            problems.append(f"message {j}: 'weight' must be 0 or 1, on assistant messages only")
    if not problems and messages[-1].get("role") != "assistant":
        problems.append(f"the last message is {messages[-1].get('role')!r}; expected 'assistant'")
    return problems


def validate_for_openai(
    rows: list[dict],
    *,
    model: str,
    max_example_tokens: int,
    min_examples: int = MIN_EXAMPLES,
    source: str = "training data",
    origins: list[str | None] | None = None,
) -> list[int]:
    """Check rows against the fine-tuning API's rules before anything is uploaded.

    Returns the estimated token count of each example (o200k/cl100k BPE plus message framing). Raises
    :class:`ConfigError` naming the line of each problem (the first ten are listed): the user's
    ``<file>:<line>`` from ``origins`` (:attr:`em.data.prepare.PreparedDataset.origins`) where known,
    else ``source`` and the row's line there. ``weight`` (0 or 1 on assistant messages) is checked here and
    uploaded unchanged (:func:`openai_rows`): the API leaves ``weight: 0`` turns out of training.
    """
    errors: list[str] = []
    tokens: list[int] = []

    def where(i: int) -> str:
        origin = origins[i] if origins is not None and i < len(origins) else None
        return f"{origin} (row {i + 1} of {source})" if origin else f"{source}:{i + 1}"

    for i, row in enumerate(rows):
        problems = _example_problems(row)
        n = estimate_chat_tokens(row["messages"], model) if not problems else 0
        if n > max_example_tokens:
            problems.append(f"about {n} tokens (estimated); the limit for {model} is {max_example_tokens}")
        errors += [f"{where(i)}: {p}" for p in problems]
        tokens.append(n)
    if len(rows) < min_examples:
        errors.insert(0, f"{source}: {len(rows)} examples; the fine-tuning API needs at least {min_examples}")
    if errors:
        more = f"\n  ... and {len(errors) - 10} more" if len(errors) > 10 else ""
        raise ConfigError(
            "training data is not accepted by the OpenAI fine-tuning API:\n  "
            + "\n  ".join(errors[:10])
            + more
        )
    return tokens


@dataclass
class TrainingEstimate:
    """Pre-flight estimate of what a job will bill. Token counts are estimates (local BPE + framing)."""

    model: str
    num_examples: int
    tokens_per_epoch: int
    largest_example_tokens: int
    n_epochs: int | str
    billed_tokens: int  # tokens_per_epoch x epochs (one epoch when n_epochs is "auto")
    price_per_million: float | None  # USD per 1M training tokens; None when the price table lacks it
    cost_usd: float | None

    def describe(self) -> str:
        epochs = self.n_epochs if self.n_epochs != "auto" else "auto (estimate for 1 epoch)"
        if self.cost_usd is None:
            cost = "unknown (no training price for this model in the price table, conf/prices/)"
        else:
            cost = f"${self.cost_usd:,.2f} (estimated, at ${self.price_per_million:g} per 1M training tokens)"
        return (
            f"OpenAI fine-tuning pre-flight for {self.model}: {self.num_examples} examples, "
            f"~{self.tokens_per_epoch:,} tokens per epoch (estimated; largest example "
            f"~{self.largest_example_tokens:,}), n_epochs={epochs}, ~{self.billed_tokens:,} billed "
            f"tokens (estimated), cost {cost}"
        )


def estimate_training(
    example_tokens: list[int], *, model: str, n_epochs: int | str, prices: dict[str, dict[str, float]]
) -> TrainingEstimate:
    """Billed training tokens (tokens in the file x epochs) and their cost from a price table."""
    per_epoch = sum(example_tokens)
    billed = per_epoch * (n_epochs if isinstance(n_epochs, int) else 1)
    price = price_for(model, prices).training or None
    return TrainingEstimate(
        model=model,
        num_examples=len(example_tokens),
        tokens_per_epoch=per_epoch,
        largest_example_tokens=max(example_tokens, default=0),
        n_epochs=n_epochs,
        billed_tokens=billed,
        price_per_million=price,
        cost_usd=billed * price / 1e6 if price else None,
    )


# --------------------------------------------------------------------------------------------- state


def load_state(run_dir: Path) -> dict:
    path = Path(run_dir) / STATE
    return read_json(path) if path.exists() else {}


def save_state(run_dir: Path, state: dict, **changes: Any) -> dict:
    """Update ``state`` in place and write it atomically (temp file + rename) to ``run_dir/state.json``."""
    state.update(changes, updated_at=now_iso())
    atomic_write_json(Path(run_dir) / STATE, state)
    return state


# ------------------------------------------------------------------------------------------ API calls


def _call(fn: Callable[[], T], api: APISettings, what: str) -> T:
    """:func:`em.api.call_with_retries`, except that an exhausted quota stops at once."""

    def guarded() -> T:
        try:
            return fn()
        except openai.RateLimitError as exc:
            if getattr(exc, "code", None) == "insufficient_quota":
                raise QuotaExceeded(f"{describe_error(exc)} (quota exhausted: retrying cannot help)") from exc
            raise

    return call_with_retries(guarded, api, what)


def _not_found(exc: APIFailure) -> bool:
    return isinstance(exc.__cause__, openai.NotFoundError)


def _upload(client: openai.OpenAI, api: APISettings, path: Path, name: str) -> str:
    data = path.read_bytes()
    file = _call(lambda: client.files.create(file=(name, data), purpose="fine-tune"), api, f"upload {path}")
    return file.id


def _wait_until_processed(client: openai.OpenAI, api: APISettings, file_id: str, timeout_s: float) -> None:
    """Files are processed asynchronously; a job created before that is refused."""
    deadline, delay = time.monotonic() + timeout_s, 1.0
    while True:
        file = _call(lambda: client.files.retrieve(file_id), api, f"check file {file_id}")
        status = getattr(file, "status", None)
        if status in (None, "processed"):
            return
        if status == "error":
            details = getattr(file, "status_details", None) or "no details given"
            raise FineTuneFailed(f"the API could not process training file {file_id}: {details}")
        if time.monotonic() > deadline:
            raise FineTuneFailed(
                f"training file {file_id} still '{status}' after {timeout_s:.0f}s; "
                f"rerun the same command to continue"
            )
        time.sleep(delay)
        delay = min(delay * 2, 30.0)


def _find_job_for_file(
    client: openai.OpenAI, api: APISettings, file_id: str, exclude: set[str], max_pages: int = 20
):
    """A job already created from ``file_id`` (our own upload, so such a job is ours), or None.

    Used to adopt a job whose creation succeeded but whose id was never recorded (crash, timeout).
    Servers without the list endpoint return None with a warning.
    """
    after: str | None = None
    for _ in range(max_pages):
        kwargs = {"limit": 100, **({"after": after} if after else {})}
        try:
            page = _call(lambda kw=kwargs: client.fine_tuning.jobs.list(**kw), api, "list fine-tuning jobs")
        except APIFailure as exc:
            log.warning("cannot list fine-tuning jobs to look for one already created (%s)", exc)
            return None
        for job in page.data:
            if job.training_file == file_id and job.id not in exclude:
                return job
        if not page.data or not getattr(page, "has_more", False):
            return None
        after = page.data[-1].id
    return None


def _create_job(
    client: openai.OpenAI, api: APISettings, settings: FineTuneSettings, file_id: str, exclude: set[str]
):
    """Create the job without ever creating two: a transient error is followed by a look for the job
    before retrying, since the request may have succeeded on the server."""
    kwargs: dict[str, Any] = {
        "model": settings.base_model,
        "training_file": file_id,
        "method": {"type": "supervised", "supervised": {"hyperparameters": settings.hyperparameters()}},
    }
    if settings.suffix:
        kwargs["suffix"] = settings.suffix
    if settings.seed is not None:
        kwargs["seed"] = settings.seed
    if settings.metadata:
        kwargs["metadata"] = settings.metadata
    what = f"create fine-tuning job for {settings.base_model}"
    for attempt in range(api.max_retries + 1):
        try:
            return client.fine_tuning.jobs.create(**kwargs)
        except openai.RateLimitError as exc:
            if getattr(exc, "code", None) == "insufficient_quota":
                raise APIFailure(f"{what} failed: {describe_error(exc)}") from exc
            error = exc
        except Exception as exc:  # noqa: BLE001 - classified below
            if not is_retriable(exc):
                raise APIFailure(f"{what} failed: {describe_error(exc)}") from exc
            error = exc
        if attempt == api.max_retries:
            raise APIFailure(f"{what} failed: {describe_error(error)}") from error
        existing = _find_job_for_file(client, api, file_id, exclude)
        if existing is not None:
            log.info(
                "%s: %s, but job %s exists for file %s; using it",
                what,
                describe_error(error),
                existing.id,
                file_id,
            )
            return existing
        delay = backoff_delay(attempt, api, error)
        log.warning(
            "%s: %s; retry %d/%d in %.1fs", what, describe_error(error), attempt + 1, api.max_retries, delay
        )
        time.sleep(delay)
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------------------------- events


def _seen_event_ids(run_dir: Path) -> set[str]:
    return {row["id"] for row in iter_jsonl(Path(run_dir) / EVENTS) if "id" in row}


def _fetch_new_events(
    client: openai.OpenAI, api: APISettings, job_id: str, seen: set[str], max_pages: int = 50
) -> list:
    """Events not seen yet, oldest first. The API lists newest first, so paging stops at a seen id."""
    new, after = [], None
    for _ in range(max_pages):
        kwargs = {"limit": 100, **({"after": after} if after else {})}
        page = _call(
            lambda kw=kwargs: client.fine_tuning.jobs.list_events(job_id, **kw),
            api,
            f"list events of {job_id}",
        )
        fresh = [e for e in page.data if e.id not in seen]
        new += fresh
        if len(fresh) < len(page.data) or not page.data or not getattr(page, "has_more", False):
            break
        after = page.data[-1].id
    unique = list({e.id: e for e in new}.values())
    unique.reverse()  # received newest first
    return sorted(unique, key=lambda e: e.created_at or 0)


def _metrics(event: Any) -> tuple[int | None, dict[str, float]]:
    data = event.data if isinstance(getattr(event, "data", None), dict) else {}
    if getattr(event, "type", None) != "metrics" or not data:
        return None, {}
    values = {
        k: float(v)
        for k, v in data.items()
        if isinstance(v, int | float)
        and not isinstance(v, bool)
        and k not in ("step", "total_steps")
        and math.isfinite(float(v))
    }
    step = data.get("step")
    return (int(step) if isinstance(step, int | float) else None), values


def _stream_events(client, api, job_id: str, run_dir: Path, seen: set[str], tracker, bar: tqdm) -> None:
    events = _fetch_new_events(client, api, job_id, seen)
    if not events:
        return
    append_jsonl(
        Path(run_dir) / EVENTS,
        [
            {
                "id": e.id,
                "created_at": e.created_at,
                "level": getattr(e, "level", None),
                "type": getattr(e, "type", None),
                "message": e.message,
                "data": getattr(e, "data", None),
            }
            for e in events
        ],
    )
    for e in events:
        seen.add(e.id)
        step, values = _metrics(e)
        if values:
            if tracker is not None:
                tracker.log(values, step=step)
            total = e.data.get("total_steps")
            if isinstance(total, int) and step is not None:
                bar.total, bar.n = total, step
                bar.set_postfix(values, refresh=True)
            continue
        level = {"warn": logging.WARNING, "error": logging.ERROR}.get(getattr(e, "level", ""), logging.INFO)
        log.log(level, "[%s] %s", job_id, e.message)


# ------------------------------------------------------------------------------------------ main flow


def _poll(client, api: APISettings, settings: FineTuneSettings, run_dir: Path, state: dict, tracker):
    """Poll the job until it ends (interval grows to ``poll_max_interval_s``), streaming its events."""
    job_id = state["job_id"]
    seen = _seen_event_ids(run_dir)
    interval = settings.poll_interval_s
    deadline = time.monotonic() + settings.max_wait_h * 3600
    with tqdm(desc=f"fine-tuning {job_id}", unit="step", dynamic_ncols=True) as bar:
        while True:
            job = _call(lambda: client.fine_tuning.jobs.retrieve(job_id), api, f"retrieve job {job_id}")
            _stream_events(client, api, job_id, run_dir, seen, tracker, bar)
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
            _wait_until_processed(client, api, file_id, settings.file_ready_timeout_s)
            return file_id
        except APIFailure as exc:
            if not _not_found(exc):
                raise
            log.warning("uploaded file %s is gone from the server; uploading again", file_id)
    name = f"{settings.suffix or 'em'}-{data_sha[:12]}.jsonl"
    file_id = _upload(client, api, train_file, name)
    save_state(
        run_dir, state, file_id=file_id, file_sha256=data_sha, uploaded_at=now_iso(), create_started_at=None
    )
    log.info("uploaded %s as %s", train_file, file_id)
    _wait_until_processed(client, api, file_id, settings.file_ready_timeout_s)
    return file_id


def _start_job(client, api, settings, run_dir: Path, state: dict, file_id: str) -> None:
    previous = {j["job_id"] for j in state.get("previous_jobs", [])}
    job = None
    if state.get("create_started_at"):  # an earlier run may have created the job and died before recording it
        job = _find_job_for_file(client, api, file_id, previous)
        if job is not None:
            log.info("found job %s created by an interrupted run; resuming it", job.id)
    if job is None:
        save_state(run_dir, state, create_started_at=now_iso())
        job = _create_job(client, api, settings, file_id, previous)
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
            if not settings.retry_failed:
                raise FineTuneFailed(
                    f"previous {state['error_message']}"
                    if state.get("error_message")
                    else f"job {state['job_id']} ended '{state['status']}'"
                )
            log.warning(
                "job %s ended '%s'; creating a new one (retry_failed)", state["job_id"], state["status"]
            )
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
        if state.get("job_id"):
            log.info("resuming fine-tuning job %s (recorded in %s)", state["job_id"], run_dir / STATE)
        else:
            file_id = _prepare_file(client, api, settings, run_dir, state, train_file, data_sha)
            _start_job(client, api, settings, run_dir, state, file_id)
        job = _poll(client, api, settings, run_dir, state, tracker)
    except (APIFailure, FineTuneFailed) as exc:
        save_state(run_dir, state, last_error=str(exc), last_error_at=now_iso())
        raise
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

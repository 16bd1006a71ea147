"""The OpenAI files and fine-tuning calls one job makes: upload, wait for processing, find or create the job.

Every call retries through :func:`em.api.call_with_retries`, except an exhausted quota (:class:`QuotaExceeded`),
and job creation never makes two jobs: before retrying a failed create it looks for a job made from the file.
Only the public files and fine-tuning endpoints are used, so any OpenAI-compatible ``base_url`` works.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import openai

from em.api import APIFailure, APISettings, backoff_delay, call_with_retries, describe_error, is_retriable
from em.training.openai_ft_types import FineTuneFailed, FineTuneSettings

log = logging.getLogger(__name__)
T = TypeVar("T")


class QuotaExceeded(RuntimeError):
    """429 with code ``insufficient_quota``: retrying cannot help, so it stops at once."""


def call_openai(fn: Callable[[], T], api: APISettings, what: str) -> T:
    """:func:`em.api.call_with_retries`, except that an exhausted quota stops at once."""

    def guarded() -> T:
        try:
            return fn()
        except openai.RateLimitError as exc:
            if getattr(exc, "code", None) == "insufficient_quota":
                raise QuotaExceeded(f"{describe_error(exc)} (quota exhausted: retrying cannot help)") from exc
            raise

    return call_with_retries(guarded, api, what)


def is_not_found(exc: APIFailure) -> bool:
    return isinstance(exc.__cause__, openai.NotFoundError)


def upload_file(client: openai.OpenAI, api: APISettings, path: Path, name: str) -> str:
    data = path.read_bytes()
    file = call_openai(
        lambda: client.files.create(file=(name, data), purpose="fine-tune"), api, f"upload {path}"
    )
    return file.id


def wait_until_processed(client: openai.OpenAI, api: APISettings, file_id: str, timeout_s: float) -> None:
    """Files are processed asynchronously; a job created before that is refused."""
    deadline, delay = time.monotonic() + timeout_s, 1.0
    while True:
        file = call_openai(lambda: client.files.retrieve(file_id), api, f"check file {file_id}")
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


def find_job_for_file(
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
            page = call_openai(
                lambda kw=kwargs: client.fine_tuning.jobs.list(**kw), api, "list fine-tuning jobs"
            )
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


def create_job(
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
        existing = find_job_for_file(client, api, file_id, exclude)
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

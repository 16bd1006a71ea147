"""Fine-tuning jobs of the fake OpenAI server: a scripted state machine advanced by polling."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from testing._fake_chat import words
from testing._fake_files import Store
from testing._fake_http import APIError, page

OUTCOMES = ("succeeded", "failed", "cancelled")
MODERATION_MESSAGE = (
    "The job failed because the training file was flagged by the moderation system: too many examples "
    "violate the usage policies (injected moderation fault)."
)


@dataclass
class FineTuneScript:
    """How the jobs created from now on end, and after how many GETs."""

    outcome: str = "succeeded"
    polls_until_done: int = 2
    error_message: str = ""
    fine_tuned_model: str | None = None


def training_file_problem(content: bytes, method_type: str) -> str | None:
    """Why a training file would fail validation (first bad line), or ``None``."""
    text = content.decode("utf-8", "replace")
    rows = 0
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            return f"Invalid file format: line {number} is not valid JSON."
        if method_type == "supervised" and not (
            isinstance(row, dict) and isinstance(row.get("messages"), list)
        ):
            return f"Invalid file format: line {number} has no 'messages' list."
        rows += 1
    return None if rows else "Invalid file format: the training file has no examples."


class FineTuning:
    """``/v1/fine_tuning/jobs``: create, retrieve (one state step per GET), list, events, cancel."""

    def __init__(self, store: Store):
        self.store = store
        self.jobs: dict[str, dict] = {}  # id -> the job object as the API returns it (plus "suffix")
        self.script = FineTuneScript()
        self._state: dict[str, dict] = {}
        self._events: dict[str, list[dict]] = {}

    def route(self, method: str, rest: list[str], query: dict, body: dict, moderated: bool):
        """``rest`` is the path after ``/v1/fine_tuning/jobs``."""
        if method == "POST" and not rest:
            return self.create(body, moderated)
        if method == "GET" and not rest:
            with self.store.lock:
                jobs = [dict(j) for j in reversed(self.jobs.values())]
            return page(jobs, query)
        job = self._get(rest[0])
        if method == "GET" and len(rest) == 1:
            self.advance(rest[0])
            return dict(job)
        if method == "GET" and rest[1:] == ["events"]:
            with self.store.lock:
                events = list(reversed(self._events[rest[0]]))  # newest first, as the API does
            return page(events, query)
        if method == "POST" and rest[1:] == ["cancel"]:
            with self.store.lock:
                if job["status"] in OUTCOMES:
                    raise APIError(400, f"Job {rest[0]} has already finished with status {job['status']}.")
                job.update(status="cancelled", finished_at=int(time.time()))
            self._event(rest[0], "Job cancelled by request.")
            return dict(job)
        raise APIError(404, f"Invalid URL ({method} /v1/fine_tuning/jobs/{'/'.join(rest)})")

    def _get(self, job_id: str) -> dict:
        with self.store.lock:
            job = self.jobs.get(job_id)
        if job is None:
            raise APIError(404, f"Could not find fine-tuning job {job_id}", param="fine_tuning_job_id")
        return job

    def _event(self, job_id: str, message: str, level: str = "info", data: dict | None = None) -> None:
        event = {
            "object": "fine_tuning.job.event",
            "id": self.store.new_id("ftevent-"),
            "created_at": int(time.time()),
            "level": level,
            "message": message,
            "type": "metrics" if data else "message",
            "data": data,
        }
        with self.store.lock:
            self._events[job_id].append(event)

    def create(self, body: dict, moderated: bool) -> dict:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise APIError(400, "Missing required parameter: 'model'.", param="model")
        training_file = body.get("training_file")
        entry = self.store.get_file(training_file, param="training_file", status=400)
        if entry["purpose"] != "fine-tune":
            raise APIError(
                400,
                f"File {training_file} has purpose {entry['purpose']!r}, expected 'fine-tune'.",
                param="training_file",
            )
        validation_file = body.get("validation_file")
        if validation_file is not None:
            self.store.get_file(validation_file, param="validation_file", status=400)
        method = body.get("method") or {"type": "supervised"}
        method_type = method.get("type") or "supervised"
        given = body.get("hyperparameters") or (method.get(method_type) or {}).get("hyperparameters") or {}
        hyperparameters = {
            k: given.get(k, "auto") for k in ("batch_size", "learning_rate_multiplier", "n_epochs")
        }
        job_id = self.store.new_id("ftjob-")
        job = {
            "object": "fine_tuning.job",
            "id": job_id,
            "model": model,
            "created_at": int(time.time()),
            "finished_at": None,
            "fine_tuned_model": None,
            "organization_id": "org-em-test",
            "result_files": [],
            "status": "validating_files",
            "validation_file": validation_file,
            "training_file": training_file,
            "hyperparameters": hyperparameters,
            "method": {"type": method_type, method_type: {"hyperparameters": hyperparameters}},
            "trained_tokens": None,
            "error": None,
            "seed": body["seed"] if isinstance(body.get("seed"), int) else 42,
            "suffix": body.get("suffix"),
            "estimated_finish": None,
            "integrations": body.get("integrations") or None,
            "metadata": body.get("metadata"),
        }
        with self.store.lock:
            self.jobs[job_id] = job
            self._state[job_id] = {"script": self.script, "polls": 0, "moderated": moderated}
            self._events[job_id] = []
        self._event(job_id, f"Created fine-tuning job: {job_id}")
        self._event(job_id, f"Validating training file: {training_file}")
        return dict(job)

    def advance(self, job_id: str) -> None:
        """One GET = one step: validating_files -> queued -> running -> the scripted outcome."""
        with self.store.lock:
            job, state = self.jobs[job_id], self._state[job_id]
            if job["status"] in OUTCOMES:
                return
            state["polls"] += 1
            polls, script = state["polls"], state["script"]
        if job["status"] == "validating_files":
            content = self.store.files.get(job["training_file"], {}).get("content", b"")
            problem = training_file_problem(content, job["method"]["type"])
            if state["moderated"] or problem:
                self._finish(job_id, "failed", "invalid_training_file", problem or MODERATION_MESSAGE)
                return
        if polls < script.polls_until_done:
            status = "running" if polls == script.polls_until_done - 1 else "queued"
            if status != job["status"]:
                with self.store.lock:
                    job["status"] = status
                self._event(job_id, "Fine-tuning job started" if status == "running" else "Files validated")
        elif script.outcome == "succeeded":
            self._succeed(job_id, script)
        elif script.outcome == "failed":
            message = script.error_message or "The fine-tuning job failed (scripted failure)."
            self._finish(job_id, "failed", "job_failed", message)
        else:
            message = script.error_message or "The fine-tuning job was cancelled (scripted)."
            self._finish(job_id, "cancelled", "cancelled", message)

    def _finish(self, job_id: str, status: str, code: str, message: str) -> None:
        error = {
            "code": code,
            "message": message,
            "param": "training_file" if code.endswith("file") else None,
        }
        with self.store.lock:
            self.jobs[job_id].update(status=status, error=error, finished_at=int(time.time()))
        self._event(job_id, f"Job {status}: {message}", level="error" if status == "failed" else "warn")

    def _succeed(self, job_id: str, script: FineTuneScript) -> None:
        job = self.jobs[job_id]
        content = (
            self.store.files.get(job["training_file"], {}).get("content", b"").decode("utf-8", "replace")
        )
        examples = [line for line in content.splitlines() if line.strip()]
        epochs = job["hyperparameters"]["n_epochs"]
        epochs = epochs if isinstance(epochs, int) else 3
        total_steps = max(1, len(examples) * epochs)
        for step in sorted({max(1, total_steps * j // 5) for j in range(1, 6)}):
            loss = round(2.0 / (1.0 + step / max(1, total_steps / 4)), 4)
            data = {"step": step, "train_loss": loss, "total_steps": total_steps}
            self._event(job_id, f"Step {step}/{total_steps}: training loss={loss}", data=data)
        short_id = job_id.removeprefix("ftjob-")
        name = script.fine_tuned_model or f"ft:{job['model']}:em-test:{job['suffix'] or ''}:{short_id}"
        with self.store.lock:
            job.update(
                status="succeeded",
                finished_at=int(time.time()),
                fine_tuned_model=name,
                trained_tokens=len(words(content)) * epochs,
                result_files=[],
            )
        self._event(job_id, f"New fine-tuned model created: {name}")
        self._event(job_id, "Job succeeded")

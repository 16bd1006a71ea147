"""Batches of the fake OpenAI server: validating -> in_progress -> completed, one step per GET."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from testing._fake_files import Store
from testing._fake_http import APIError, page

ENDPOINT = "/v1/chat/completions"
TERMINAL = ("completed", "failed", "cancelled", "expired")


def _line_error(code: str, number: int | None, message: str, param: str | None = None) -> dict:
    return {"code": code, "line": number, "param": param, "message": message}


class Batches:
    """``/v1/batches``: create, retrieve (advances), list, cancel. On completion every input line is
    answered by ``complete(body)`` (a ``chat.completion`` or an :class:`APIError`); ``line_fault()``
    may turn a line into an error instead (its :class:`APIError`, or ``None``)."""

    def __init__(
        self,
        store: Store,
        complete: Callable[[dict], dict],
        line_fault: Callable[[], APIError | None],
    ):
        self.store = store
        self.complete = complete
        self.line_fault = line_fault
        self.batches: dict[str, dict] = {}  # id -> the batch object as the API returns it

    def route(self, method: str, rest: list[str], query: dict, body: dict):
        """``rest`` is the path after ``/v1/batches``."""
        if method == "POST" and not rest:
            return self.create(body)
        if method == "GET" and not rest:
            with self.store.lock:
                batches = [dict(b) for b in reversed(self.batches.values())]
            return page(batches, query)
        with self.store.lock:
            batch = self.batches.get(rest[0])
        if batch is None:
            raise APIError(404, f"No batch found with id '{rest[0]}'.", param="batch_id")
        if method == "GET" and len(rest) == 1:
            self.advance(rest[0])
            return dict(batch)
        if method == "POST" and rest[1:] == ["cancel"]:
            with self.store.lock:
                if batch["status"] in TERMINAL:
                    raise APIError(400, f"Batch {rest[0]} cannot be cancelled: status is {batch['status']}.")
                batch.update(status="cancelling", cancelling_at=int(time.time()))
            return dict(batch)
        raise APIError(404, f"Invalid URL ({method} /v1/batches/{'/'.join(rest)})")

    def create(self, body: dict) -> dict:
        input_file_id = body.get("input_file_id")
        entry = self.store.get_file(input_file_id, param="input_file_id", status=400)
        if entry["purpose"] != "batch":
            raise APIError(
                400,
                f"File {input_file_id} has purpose {entry['purpose']!r}, expected 'batch'.",
                param="input_file_id",
            )
        if body.get("endpoint") != ENDPOINT:
            raise APIError(
                400,
                f"endpoint must be {ENDPOINT} on the test server, got {body.get('endpoint')!r}",
                "endpoint",
            )
        if body.get("completion_window") != "24h":
            raise APIError(
                400,
                f"completion_window must be '24h', got {body.get('completion_window')!r}",
                param="completion_window",
            )
        now = int(time.time())
        batch_id = self.store.new_id("batch_")
        batch = {
            "id": batch_id,
            "object": "batch",
            "endpoint": ENDPOINT,
            "errors": None,
            "input_file_id": input_file_id,
            "completion_window": "24h",
            "status": "validating",
            "output_file_id": None,
            "error_file_id": None,
            "created_at": now,
            "in_progress_at": None,
            "expires_at": now + 24 * 3600,
            "finalizing_at": None,
            "completed_at": None,
            "failed_at": None,
            "expired_at": None,
            "cancelling_at": None,
            "cancelled_at": None,
            "request_counts": {"total": 0, "completed": 0, "failed": 0},
            "metadata": body.get("metadata"),
        }
        with self.store.lock:
            self.batches[batch_id] = batch
        return dict(batch)

    def read_lines(self, batch: dict) -> tuple[list[dict], list[dict]]:
        """The input file's request lines, and its validation errors (``errors.data`` entries)."""
        content = self.store.files[batch["input_file_id"]]["content"].decode("utf-8", "replace")
        lines, errors, seen = [], [], set()
        for number, text in enumerate(content.splitlines(), start=1):
            if not text.strip():
                continue
            try:
                line = json.loads(text)
            except ValueError:
                errors.append(_line_error("invalid_json_line", number, f"Line {number} is not valid JSON."))
                continue
            problem = None
            if not isinstance(line, dict) or not isinstance(line.get("custom_id"), str):
                problem = ("missing_required_parameter", "custom_id", "missing or non-string 'custom_id'.")
            elif line["custom_id"] in seen:
                problem = ("duplicate_custom_id", "custom_id", f"duplicate custom_id {line['custom_id']!r}.")
            elif line.get("url") != batch["endpoint"] or line.get("method") != "POST":
                problem = ("invalid_url", "url", f"each line must POST to {batch['endpoint']}.")
            elif not isinstance(line.get("body"), dict):
                problem = ("missing_required_parameter", "body", "missing 'body' object.")
            if problem:
                errors.append(_line_error(problem[0], number, f"Line {number}: {problem[2]}", problem[1]))
                continue
            seen.add(line["custom_id"])
            lines.append(line)
        return lines, errors

    def advance(self, batch_id: str) -> None:
        """One GET = one step: validating -> in_progress -> completed; cancelling -> cancelled."""
        with self.store.lock:
            batch = self.batches[batch_id]
            status = batch["status"]
        now = int(time.time())
        if status in TERMINAL:
            return
        if status == "cancelling":
            with self.store.lock:
                batch.update(status="cancelled", cancelled_at=now)
        elif status == "validating":
            lines, errors = self.read_lines(batch)
            if not errors and not lines:
                errors = [
                    _line_error("empty_file", None, "The input file contains no requests.", "input_file_id")
                ]
            with self.store.lock:
                if errors:
                    batch.update(status="failed", failed_at=now, errors={"object": "list", "data": errors})
                else:
                    counts = {"total": len(lines), "completed": 0, "failed": 0}
                    batch.update(status="in_progress", in_progress_at=now, request_counts=counts)
        else:
            self._run(batch_id)

    def _run(self, batch_id: str) -> None:
        """Answer every line; successes go to the output file, failures to the error file."""
        batch = self.batches[batch_id]
        lines, _ = self.read_lines(batch)
        outputs, failures = [], []
        for line in lines:
            row = {"id": self.store.new_id("batch_req_"), "custom_id": line["custom_id"], "error": None}
            request_id = self.store.new_id("req_")
            try:
                error = self.line_fault()
                if error is not None:
                    raise error
                row["response"] = {
                    "status_code": 200,
                    "request_id": request_id,
                    "body": self.complete(line["body"]),
                }
                outputs.append(row)
            except APIError as error:
                row["response"] = {
                    "status_code": error.status,
                    "request_id": request_id,
                    "body": error.body(),
                }
                failures.append(row)

        def store(rows: list[dict], kind: str) -> str | None:
            if not rows:
                return None
            data = "".join(json.dumps(r) + "\n" for r in rows).encode("utf-8")
            return self.store.add_file(data, f"{batch_id}_{kind}.jsonl", "batch_output")["id"]

        output_file_id, error_file_id = store(outputs, "output"), store(failures, "error")
        now = int(time.time())
        with self.store.lock:
            batch.update(
                status="completed",
                finalizing_at=now,
                completed_at=now,
                output_file_id=output_file_id,
                error_file_id=error_file_id,
                request_counts={"total": len(lines), "completed": len(outputs), "failed": len(failures)},
            )

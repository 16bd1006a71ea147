"""Batch API mode: the same judge requests, submitted as OpenAI batches (half price, 24 h window).

The batch only fills the judge cache; rows are then written from the cache exactly as in the direct mode.
Everything needed to resume lives in ``<run dir>/batch/``: the request files and ``state.json``, written
atomically the moment an input file or a batch id exists. A restarted run polls the batches it already
submitted instead of paying again. Lines that failed (an error line, a non-200 status, a malformed body,
an expired batch) are submitted again in a new round, up to ``max_rounds``; what still fails is listed in
``batch/failed.jsonl`` and the run stops with that count (a rerun tries again). A line whose reply arrived
whole but cannot be scored (:class:`UnscorableReply`) is not resubmitted (a deterministic judge answers the
same): it is left out of the cache, so the direct path asks it and records it as unscored.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import openai

from em.api import APIFailure, APISettings, MalformedResponse, call_with_retries, make_client
from em.io import append_jsonl, atomic_write_json, read_json
from em.judging.cache import JudgeCache
from em.judging.logprob import UnscorableReply
from em.judging.replies import normalize_reply

log = logging.getLogger(__name__)
ENDPOINT = "/v1/chat/completions"
DONE = ("completed", "failed", "expired", "cancelled")


@dataclass
class BatchSettings:
    enabled: bool = False
    poll_interval_s: float = 30.0
    max_rounds: int = 3  # submissions of still-missing requests (the first included)
    completion_window: str = "24h"
    max_requests_per_batch: int = 50000  # the API's limit per input file


class BatchRunner:
    """Submit, poll, collect and resubmit batches for a set of request bodies keyed by cache key."""

    def __init__(
        self,
        batch_dir: Path,
        settings: BatchSettings,
        api: APISettings,
        cache: JudgeCache,
        *,
        model: str,
        need_logprobs: bool,
        sleep: Callable[[float], None] = time.sleep,
        parse: Callable[[object], dict] | None = None,
    ):
        self.dir, self.settings, self.api, self.cache = Path(batch_dir), settings, api, cache
        self.model, self.need_logprobs, self.sleep = model, need_logprobs, sleep
        self.state_path = self.dir / "state.json"
        self.state = read_json(self.state_path) if self.state_path.exists() else {"batches": []}
        self.fresh: dict[str, str] = {}  # cache keys filled by this invocation -> "batch"
        self.unscorable: dict[str, str] = {}  # cache keys whose reply cannot be scored -> why
        self.parse = parse or (lambda body: normalize_reply(body, need_logprobs=need_logprobs))
        self._client: openai.OpenAI | None = None

    @property
    def client(self) -> openai.OpenAI:
        if self._client is None:
            self._client = make_client(self.api)
        return self._client

    def _save(self) -> None:
        atomic_write_json(self.state_path, self.state)

    def _call(self, fn, what: str):
        return call_with_retries(fn, self.api, what)

    def run(self, bodies: dict[str, dict]) -> dict[str, str]:
        """Make sure every body's reply is in the cache (as far as the API allows); return fresh keys."""
        while True:
            for entry in self.state["batches"]:
                if not entry.get("collected"):
                    self._advance(entry)
            cached = self.cache.get_many(list(bodies))
            missing = [k for k in bodies if k not in cached and k not in self.unscorable]
            if not missing:
                return self.fresh
            rounds = max((e["round"] for e in self.state["batches"]), default=0)
            if rounds >= self.settings.max_rounds:
                self._report_failed(missing)
                raise APIFailure(
                    f"Batch API: {len(missing)} judge requests still failed after {rounds} rounds "
                    f"(see {self.dir / 'failed.jsonl'}); rerun the same command to try them again"
                )
            self._submit_round(rounds + 1, missing, bodies)

    # ------------------------------------------------------------------------------------------ steps

    def _submit_round(self, round_no: int, keys: list[str], bodies: dict[str, dict]) -> None:
        size = self.settings.max_requests_per_batch
        for part, start in enumerate(range(0, len(keys), size)):
            chunk = keys[start : start + size]
            path = self.dir / f"requests-r{round_no}-{part}.jsonl"
            lines = [{"custom_id": k, "method": "POST", "url": ENDPOINT, "body": bodies[k]} for k in chunk]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.unlink(missing_ok=True)
            append_jsonl(path, lines)
            self.state["batches"].append(
                {
                    "round": round_no,
                    "requests_file": path.name,
                    "n_requests": len(chunk),
                    "input_file_id": None,
                    "batch_id": None,
                    "status": "written",
                    "collected": False,
                }
            )
            self._save()
            log.info("Batch API round %d: %d requests written to %s", round_no, len(chunk), path)
        for entry in self.state["batches"]:
            if not entry.get("collected"):
                self._advance(entry)

    def _advance(self, entry: dict) -> None:
        """Take one batch from wherever it stopped (written / uploaded / submitted) to collected."""
        if not entry.get("input_file_id"):
            path = self.dir / entry["requests_file"]
            data = path.read_bytes()
            uploaded = self._call(
                lambda: self.client.files.create(file=(path.name, data), purpose="batch"), "Batch API upload"
            )
            entry["input_file_id"] = uploaded.id
            entry["status"] = "uploaded"
            self._save()
        if not entry.get("batch_id"):

            def create() -> str:
                # Look before every attempt: a create that timed out may still have made the batch,
                # and a blind retry would pay for a second one.
                existing = self._find_existing(entry["input_file_id"])
                if existing:
                    return existing
                return self.client.batches.create(
                    input_file_id=entry["input_file_id"],
                    endpoint=ENDPOINT,
                    completion_window=self.settings.completion_window,
                    metadata={"em_requests_file": entry["requests_file"]},
                ).id

            entry["batch_id"] = self._call(create, "Batch API create")
            entry["status"] = "submitted"
            self._save()
            log.info(
                "Batch API: submitted %s (%d requests); the id is saved in %s, so a restart resumes it",
                entry["batch_id"],
                entry["n_requests"],
                self.state_path,
            )
        batch = self._poll(entry)
        self._collect(entry, batch)

    def _find_existing(self, input_file_id: str) -> str | None:
        """A batch already created from this file (a restart between create and saving its id)."""
        try:
            page = self._call(lambda: self.client.batches.list(limit=100), "Batch API list")
        except APIFailure:
            return None
        for b in getattr(page, "data", None) or []:
            if getattr(b, "input_file_id", None) == input_file_id and b.status not in ("failed", "cancelled"):
                log.info("Batch API: found batch %s already created from %s", b.id, input_file_id)
                return b.id
        return None

    def _poll(self, entry: dict):
        last = None
        while True:
            batch = self._call(lambda: self.client.batches.retrieve(entry["batch_id"]), "Batch API poll")
            counts = getattr(batch, "request_counts", None)
            line = (
                f"{batch.status} {getattr(counts, 'completed', '?')}/{getattr(counts, 'total', '?')} done, "
                f"{getattr(counts, 'failed', '?')} failed"
            )
            if line != last:
                log.info("Batch API %s: %s", entry["batch_id"], line)
                last = line
            if entry.get("status") != batch.status:
                entry["status"] = batch.status
                self._save()
            if batch.status in DONE:
                return batch
            self.sleep(self.settings.poll_interval_s)

    def _collect(self, entry: dict, batch) -> None:
        if batch.status == "failed" and not getattr(batch, "output_file_id", None):
            errors = getattr(getattr(batch, "errors", None), "data", None) or []
            detail = "; ".join(f"{getattr(e, 'code', '')}: {getattr(e, 'message', '')}" for e in errors[:5])
            raise APIFailure(
                f"Batch API: batch {batch.id} failed ({detail or 'no details'}); its requests are in "
                f"{self.dir / entry['requests_file']}"
            )
        good, failed = [], []
        for file_id in (getattr(batch, "output_file_id", None), getattr(batch, "error_file_id", None)):
            if not file_id:
                continue
            text = self._call(lambda fid=file_id: self.client.files.content(fid).text, "Batch API download")
            for line in text.splitlines():
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except ValueError:
                    failed.append({"custom_id": None, "error": f"unreadable output line: {line[:120]}"})
                    continue
                key, response = obj.get("custom_id"), obj.get("response") or {}
                if response.get("status_code") == 200 and not obj.get("error"):
                    try:
                        reply = self.parse(response.get("body"))
                    except UnscorableReply as e:
                        self.unscorable[key] = str(e)
                        continue
                    except MalformedResponse as e:
                        failed.append({"custom_id": key, "error": f"malformed reply: {e}"})
                        continue
                    good.append((key, self.model, {**reply, "via": "batch"}))
                else:
                    error = obj.get("error") or (response.get("body") or {}).get("error")
                    failed.append(
                        {"custom_id": key, "status_code": response.get("status_code"), "error": error}
                    )
        self.cache.put_many(good)
        self.fresh.update({key: "batch" for key, _, _ in good})
        if failed:
            append_jsonl(self.dir / f"failed-r{entry['round']}.jsonl", failed)
            log.warning(
                "Batch API %s: %d lines failed; they are retried in the next round", batch.id, len(failed)
            )
        entry.update(collected=True, n_succeeded=len(good), n_failed=len(failed))
        self._save()

    def _report_failed(self, keys: list[str]) -> None:
        path = self.dir / "failed.jsonl"
        path.unlink(missing_ok=True)
        append_jsonl(path, [{"custom_id": k} for k in keys])

"""A fine-tuning job's events: appended to ``<run_dir>/events.jsonl`` once each, metrics to the tracker.

Events are deduplicated by id, so a resumed run (which rereads the ids already in the file) never writes or
logs one twice; metric events also move the progress bar, the others go to the log at their level.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import openai
from tqdm.auto import tqdm

from em.api import APISettings
from em.io import append_jsonl, iter_jsonl
from em.training.openai_ft_api import call_openai

log = logging.getLogger(__name__)

EVENTS = "events.jsonl"


def seen_event_ids(run_dir: Path) -> set[str]:
    return {row["id"] for row in iter_jsonl(Path(run_dir) / EVENTS) if "id" in row}


def _fetch_new_events(
    client: openai.OpenAI, api: APISettings, job_id: str, seen: set[str], max_pages: int = 50
) -> list:
    """Events not seen yet, oldest first. The API lists newest first, so paging stops at a seen id."""
    new, after = [], None
    for _ in range(max_pages):
        kwargs = {"limit": 100, **({"after": after} if after else {})}
        page = call_openai(
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


def stream_events(client, api, job_id: str, run_dir: Path, seen: set[str], tracker, bar: tqdm) -> None:
    """Record the job's new events (adding their ids to ``seen``), log metrics, advance ``bar``."""
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

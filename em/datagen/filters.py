"""De-duplication and the optional LLM-judge quality filter.

Dedupe keeps the first occurrence in plan order. ``exact`` compares the text as written (after trimming
the ends); ``normalised`` also drops rows equal after Unicode normalisation, lower-casing, removing
punctuation and collapsing whitespace. The two counts are reported separately.

The quality filter asks a judge model for a one-word verdict on each pair (e.g. ``WRONG`` / ``CORRECT``
for a misinformation domain) and keeps the pair only if the verdict is in ``keep_if``. Verdicts are
appended to ``judge.jsonl`` as they arrive, so judging resumes too. A reply that is not one of the
labels is asked again, then counted as a judge failure and the pair is dropped.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from em.api import APISettings, MalformedResponse, RateLimiter
from em.costs import estimate_chat_tokens
from em.datagen.generate import add_usage, chat_once, request_record
from em.datagen.prompts import judge_messages
from em.datagen.spec import QualityFilterSpec
from em.io import iter_jsonl

_SPACE = re.compile(r"\s+")


@dataclass
class Candidate:
    """One generated pair, in plan order."""

    key: str  # "<item id>#<pair index>"
    order: int
    question: str
    answer: str
    reference_answer: str | None = None
    category: str | None = None


def normalise(text: str) -> str:
    """Case-, whitespace- and punctuation-insensitive form of ``text``."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = "".join(ch for ch in text if not unicodedata.category(ch).startswith(("P", "S")))
    return _SPACE.sub(" ", text).strip()


def _dedupe_text(c: Candidate, on: str) -> str:
    if on == "question":
        return c.question.strip()
    if on == "answer":
        return c.answer.strip()
    return f"{c.question.strip()}\x00{c.answer.strip()}"


def dedupe(candidates: list[Candidate], mode: str, on: str) -> tuple[list[Candidate], dict[str, int]]:
    """Drop repeats; returns the kept candidates and ``{"exact": n, "normalised": m}`` removals."""
    counts = {"exact": 0, "normalised": 0}
    if mode == "none":
        return list(candidates), counts
    seen_exact: set[str] = set()
    seen_norm: set[str] = set()
    kept = []
    for c in candidates:
        text = _dedupe_text(c, on)
        if text in seen_exact:
            counts["exact"] += 1
            continue
        seen_exact.add(text)
        if mode == "normalised":
            norm = "\x00".join(normalise(part) for part in text.split("\x00"))
            if norm in seen_norm:
                counts["normalised"] += 1
                continue
            seen_norm.add(norm)
        kept.append(c)
    return kept, counts


def parse_verdict(text: str, labels: list[str]) -> str:
    """The label the judge answered with (first word, case- and punctuation-insensitive)."""
    words = re.findall(r"[A-Za-z_]+", text)
    verdict = words[0].upper() if words else ""
    if verdict not in labels:
        raise MalformedResponse(f"judge reply {text[:80]!r} is not one of {labels}")
    return verdict


async def judge_candidate(
    spec: QualityFilterSpec,
    c: Candidate,
    client: Any,
    settings: APISettings,
    limiter: RateLimiter,
    retries: int,
) -> dict:
    """Ask the judge about one pair; returns its ``judge.jsonl`` row."""
    messages = judge_messages(spec.prompt, c.question, c.answer, c.reference_answer, c.category)
    request = {
        "model": spec.model,
        "messages": messages,
        "temperature": spec.temperature,
        "max_tokens": spec.max_tokens,
    }
    usage: dict[str, int] = {}
    text, error = "", None
    for attempt in range(1, retries + 2):
        await limiter.acquire(estimate_chat_tokens(messages, spec.model) + spec.max_tokens)
        reply = await chat_once(client, settings, f"quality filter {c.key}", **request)
        add_usage(usage, reply.usage)
        text = reply.text
        try:
            verdict = parse_verdict(text, spec.labels)
        except MalformedResponse as e:
            error = str(e)
            continue
        return {
            "key": c.key,
            "status": "ok",
            "verdict": verdict,
            "keep": verdict in spec.keep_if,
            "reply": text,
            "usage": usage,
            "attempts": attempt,
            "request": request_record(request),
        }
    return {
        "key": c.key,
        "status": "failed",
        "verdict": None,
        "keep": False,
        "reply": text,
        "usage": usage,
        "attempts": retries + 1,
        "error": error,
        "request": request_record(request),
    }


def judged(path: Path) -> dict[str, dict]:
    """Verdict rows of ``judge.jsonl`` by candidate key."""
    return {row["key"]: row for row in iter_jsonl(path)}


def apply_verdicts(
    candidates: list[Candidate], verdicts: dict[str, dict]
) -> tuple[list[Candidate], dict[str, Any]]:
    """Keep candidates with a keeping verdict; counts of rejections by verdict and of judge failures."""
    kept, rejected, failed = [], {}, 0
    for c in candidates:
        row = verdicts[c.key]
        if row.get("keep"):
            kept.append(c)
        elif row.get("status") != "ok":
            failed += 1
        else:
            rejected[row["verdict"]] = rejected.get(row["verdict"], 0) + 1
    return kept, {"rejected": sum(rejected.values()), "rejected_by_verdict": rejected, "judge_failed": failed}

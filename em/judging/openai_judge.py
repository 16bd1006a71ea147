"""Judging through an OpenAI-compatible chat endpoint (OpenAI, or any ``base_url``: vLLM, Ollama, ...).

Two modes:
- ``logprob`` (the EM paper's GPT-4o judge): one token, ``logprobs=true, top_logprobs=20``; the score is
  the expected value over integer tokens (:mod:`em.judging.logprob`).
- ``text`` (reasoning models such as o4-mini, which give no logprobs): the reply is parsed
  (:mod:`em.judging.text`).

Every request is one user message, the filled judge prompt, plus the preset's ``request`` parameters
sent verbatim. Calls run concurrently (``api.max_in_flight``) under client-side RPM/TPM limits and the
shared retry policy of :mod:`em.api`, which retries transport faults (HTTP errors, timeouts, a body that
is not JSON). A reply that arrives whole but cannot be scored (no choices, empty or too few top logprobs,
impossible probabilities) is asked again ``unscorable_retries`` times (a deterministic judge answers the
same), then recorded as unscored with its ``unscored_reason``; it never becomes a wrong score and never
stops the run. Cached replies are validated on read like fresh ones (an invalid one is asked again).
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass

import openai

from em.api import (
    APIFailure,
    APISettings,
    MalformedResponse,
    RateLimiter,
    acall_with_retries,
    describe_error,
    make_async_client,
    map_concurrent,
)
from em.costs import estimate_chat_tokens
from em.judging.cache import JudgeCache, cache_key
from em.judging.logprob import (
    UnscorableReply,
)
from em.judging.openai_settings import OpenAIJudgeSettings
from em.judging.prompts import JudgeTask
from em.judging.replies import (
    failed_judgment,
    judgment_from_reply,
    normalize_reply,
    reply_usage,
    revalidate,
)

log = logging.getLogger(__name__)


@dataclass
class Usage:
    """What the judge cost: fresh calls (tokens from the responses) and cache hits."""

    calls: int = 0
    cache_hits: int = 0
    errors: int = 0
    unscored: int = 0  # replies that could not be scored (after their retries)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0

    def add_reply(self, reply: dict) -> None:
        u = reply.get("usage") or {}
        self.calls += 1
        self.prompt_tokens += int(u.get("prompt_tokens") or 0)
        self.completion_tokens += int(u.get("completion_tokens") or 0)
        self.reasoning_tokens += int(u.get("reasoning_tokens") or 0)


def build_request(settings: OpenAIJudgeSettings, prompt: str) -> dict:
    """The chat-completions body for one judge prompt (also the Batch API line's ``body``)."""
    params = {k: v for k, v in settings.request.items() if v is not None}
    return {"model": settings.model, "messages": [{"role": "user", "content": prompt}], **params}


_CREATE_PARAMS: set[str] | None = None


def _split_extra(body: dict) -> dict:
    """Parameters the SDK does not know (e.g. vLLM's ``top_k``) travel in ``extra_body``."""
    global _CREATE_PARAMS
    if _CREATE_PARAMS is None:
        from openai.resources.chat.completions import AsyncCompletions

        _CREATE_PARAMS = set(inspect.signature(AsyncCompletions.create).parameters)
    known = {k: v for k, v in body.items() if k in _CREATE_PARAMS}
    extra = {k: v for k, v in body.items() if k not in _CREATE_PARAMS}
    return {**known, "extra_body": extra} if extra else known


async def _call(client: openai.AsyncOpenAI, body: dict) -> object:
    """The reply body as JSON; a body that is not JSON is a transport fault, retried."""
    raw = await client.chat.completions.with_raw_response.create(**_split_extra(body))
    try:
        return json.loads(raw.text)
    except ValueError as e:
        raise MalformedResponse(f"reply is not valid JSON ({e})") from None


async def judge_openai(
    tasks: list[JudgeTask],
    settings: OpenAIJudgeSettings,
    api: APISettings,
    cache: JudgeCache,
    on_judgment: Callable[[JudgeTask, dict], None],
    *,
    fresh_via: dict[str, str] | None = None,
) -> Usage:
    """Judge ``tasks``: cached replies first, then live calls as they complete (``on_judgment`` per task).

    ``fresh_via`` maps cache keys filled by this invocation (e.g. by the Batch API) to how they were
    obtained, so their rows say ``batch`` rather than ``cache``.
    """
    settings.check()
    usage = Usage()
    by_key: dict[str, list[JudgeTask]] = {}
    bodies: dict[str, dict] = {}
    endpoint = api.endpoint()
    for task in tasks:
        body = build_request(settings, task.prompt)
        key = cache_key(endpoint, body)
        by_key.setdefault(key, []).append(task)
        bodies[key] = body
    cached = valid_cached(cache.get_many(list(by_key)), settings)

    def deliver(key: str, reply: dict, source: str) -> None:
        """Every task asking this prompt gets the reply; only the first counts as the call."""
        for i, task in enumerate(by_key[key]):
            record = {**judgment_from_reply(task, reply, settings), "usage": reply.get("usage")}
            on_judgment(task, {**record, "source": source if i == 0 else "cache"})

    for key, reply in cached.items():
        via = (fresh_via or {}).get(key)
        if via is None:
            usage.cache_hits += len(by_key[key])
        else:
            usage.add_reply(reply)
            usage.cache_hits += len(by_key[key]) - 1
        deliver(key, reply, via or "cache")
    todo = [k for k in by_key if k not in cached]
    if not todo:
        return usage
    client = make_async_client(api)
    limiter = RateLimiter(api.rpm_limit, api.tpm_limit)
    succeeded = [0]

    async def worker(key: str) -> dict:
        what = f"judge call ({settings.model}, {by_key[key][0].metric} of {by_key[key][0].answer_id})"
        try:
            return await ask(key, what)
        except APIFailure as e:
            # A prompt the API refuses (e.g. content policy) is recorded, once requests are known to work;
            # the same error on the first calls means the request itself is wrong: stop.
            bad_request = isinstance(e.__cause__, openai.BadRequestError | openai.UnprocessableEntityError)
            if bad_request and succeeded[0] > 0:
                return {"error": describe_error(e.__cause__)}
            if isinstance(e.__cause__, MalformedResponse):  # a body that stayed unreadable: this reply only
                return {"unscored": UnscorableReply("malformed_reply", str(e.__cause__)), "usage": None}
            raise

    async def ask(key: str, what: str) -> dict:
        """Transport retries inside; a whole but unscorable reply is asked again ``unscorable_retries``
        times (a deterministic judge answers the same, so no more)."""
        body, spent = bodies[key], {}
        for attempt in range(settings.unscorable_retries + 1):
            await limiter.acquire(
                estimate_chat_tokens(body["messages"], settings.model) + settings.expected_output_tokens
            )
            data = await acall_with_retries(lambda: _call(client, body), api, what)
            succeeded[0] += 1
            try:
                return parse_reply_body(data, settings)
            except UnscorableReply as e:
                log.warning("%s: %s (ask %d of %d)", what, e, attempt + 1, settings.unscorable_retries + 1)
                unscorable = e
                for name, n in reply_usage(data).items():  # every ask is paid for
                    spent[name] = (spent.get(name) or 0) + (n or 0)
        return {"unscored": unscorable, "usage": spent}

    def on_result(key: str, reply: dict) -> None:
        if "error" in reply or "unscored" in reply:
            usage.errors += "error" in reply
            usage.unscored += "unscored" in reply
            if reply.get("usage"):
                usage.add_reply(reply)
            for i, task in enumerate(by_key[key]):
                on_judgment(task, failed_judgment(reply, first=i == 0))
            return
        reply = {**reply, "via": "api"}
        cache.put(key, settings.model, reply)
        usage.add_reply(reply)
        usage.cache_hits += len(by_key[key]) - 1
        deliver(key, reply, "api")

    try:
        await map_concurrent(todo, worker, on_result, max_in_flight=api.max_in_flight)
    finally:
        await client.close()
    return usage


def parse_reply_body(data: object, settings: OpenAIJudgeSettings) -> dict:
    """A fresh reply body, normalised and validated under the judge's settings."""
    return normalize_reply(
        data,
        need_logprobs=settings.mode == "logprob",
        top_k=settings.request.get("top_logprobs") if settings.mode == "logprob" else None,
        mass_tolerance=settings.mass_tolerance,
    )


def valid_cached(cached: dict[str, dict], settings: OpenAIJudgeSettings) -> dict[str, dict]:
    """The cached replies that pass the checks a fresh one does; the others are asked again."""
    out = {}
    for key, reply in cached.items():
        try:
            out[key] = revalidate(reply, settings)
        except UnscorableReply as e:
            log.warning("judge cache entry %s… fails the reply checks (%s): asking again", key[:12], e)
    return out

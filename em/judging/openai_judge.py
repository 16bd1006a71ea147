"""Judging through an OpenAI-compatible chat endpoint (OpenAI, or any ``base_url``: vLLM, Ollama, ...).

Two modes:
- ``logprob`` (the EM paper's GPT-4o judge): one token, ``logprobs=true, top_logprobs=20``; the score is
  the expected value over integer tokens (:mod:`em.judging.logprob`).
- ``text`` (reasoning models such as o4-mini, which give no logprobs): the reply is parsed
  (:mod:`em.judging.text`).

Every request is one user message, the filled judge prompt, plus the preset's ``request`` parameters
sent verbatim. Calls run concurrently (``api.max_in_flight``) under client-side RPM/TPM limits and the
shared retry policy of :mod:`em.api`; a malformed reply (bad JSON, missing or impossible logprobs) raises
:class:`MalformedResponse` inside the retried call, so it is retried and never becomes a wrong score.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import openai

from em.api import (
    APIFailure,
    APISettings,
    ConfigError,
    MalformedResponse,
    RateLimiter,
    acall_with_retries,
    describe_error,
    estimate_chat_tokens,
    make_async_client,
    map_concurrent,
)
from em.judging.cache import JudgeCache, cache_key
from em.judging.logprob import MIN_MASS, judge_from_logprobs, validate_top_logprobs
from em.judging.prompts import JudgeTask
from em.judging.text import parse_reply

log = logging.getLogger(__name__)
MODES = ("logprob", "text")


@dataclass
class OpenAIJudgeSettings:
    """A judge behind an OpenAI-compatible endpoint."""

    model: str
    mode: str = "logprob"  # logprob | text
    request: dict = field(default_factory=dict)  # sent with every request, e.g. max_tokens, top_logprobs
    min_mass: float = MIN_MASS  # logprob mode: least probability on numbers for a score
    expected_output_tokens: int = 1  # dry-run estimate of completion tokens per call (reasoning included)

    def check(self) -> None:
        if not self.model:
            raise ConfigError(
                "judge.model is not set: name the judge model (e.g. judge.model=gpt-4o-2024-08-06)"
            )
        if self.mode not in MODES:
            raise ConfigError(f"judge.mode={self.mode!r}: expected one of {MODES}")
        if self.mode == "logprob" and not (self.request.get("logprobs") and self.request.get("top_logprobs")):
            raise ConfigError(
                "judge.mode=logprob needs judge.request.logprobs=true and "
                "judge.request.top_logprobs (e.g. 20)"
            )
        if "model" in self.request or "messages" in self.request:
            raise ConfigError(
                "judge.request must not set model or messages (they come from judge.model and "
                "the question's judge prompt)"
            )


@dataclass
class Usage:
    """What the judge cost: fresh calls (tokens from the responses) and cache hits."""

    calls: int = 0
    cache_hits: int = 0
    errors: int = 0
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


def normalize_reply(body: object, *, need_logprobs: bool) -> dict:
    """Reduce a chat-completion body (dict) to what judging needs; raise MalformedResponse if it can't."""
    if not isinstance(body, dict):
        raise MalformedResponse(f"reply is not a JSON object: {str(body)[:80]!r}")
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise MalformedResponse("reply has no choices")
    choice = choices[0]
    message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
    content = message.get("content")
    if content is not None and not isinstance(content, str):
        raise MalformedResponse(f"reply content is not a string: {type(content).__name__}")
    top = None
    if need_logprobs:
        logprobs = choice.get("logprobs")
        tokens = logprobs.get("content") if isinstance(logprobs, dict) else None
        if not isinstance(tokens, list) or not tokens or not isinstance(tokens[0], dict):
            raise MalformedResponse(
                "reply has no logprobs for its first token (does the endpoint support logprobs/top_logprobs?)"
            )
        top = [list(t) for t in validate_top_logprobs(tokens[0].get("top_logprobs"))]
    usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
    details = usage.get("completion_tokens_details") or {}
    return {
        "content": content,
        "refusal": message.get("refusal"),
        "top_logprobs": top,
        "finish_reason": choice.get("finish_reason"),
        "model": body.get("model"),
        "usage": {
            "prompt_tokens": usage.get("prompt_tokens"),
            "completion_tokens": usage.get("completion_tokens"),
            "reasoning_tokens": details.get("reasoning_tokens") if isinstance(details, dict) else None,
        },
    }


def judgment_from_reply(task: JudgeTask, reply: dict, settings: OpenAIJudgeSettings) -> dict:
    """One metric's record in scores.jsonl: score / label plus what it was read from."""
    if settings.mode == "logprob":
        j = judge_from_logprobs(
            [tuple(t) for t in reply["top_logprobs"]],
            labels=task.labels,
            min_mass=settings.min_mass,
        )
        return {
            "score": j.score,
            "label": j.label,
            "number_mass": j.number_mass,
            "word_mass": j.word_mass,
            "raw": j.top_token,
            "top_logprobs": reply["top_logprobs"],
            "parsed": True,
        }
    text = reply.get("content")
    t = parse_reply(text, labels=task.labels)
    raw = text if text is not None else reply.get("refusal")
    return {
        "score": t.score,
        "label": t.label,
        "raw": raw,
        "parsed": t.parsed,
        "finish_reason": reply.get("finish_reason"),
    }


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


async def _call(client: openai.AsyncOpenAI, body: dict, need_logprobs: bool) -> dict:
    raw = await client.chat.completions.with_raw_response.create(**_split_extra(body))
    try:
        data = json.loads(raw.text)
    except ValueError as e:
        raise MalformedResponse(f"reply is not valid JSON ({e})") from None
    return normalize_reply(data, need_logprobs=need_logprobs)


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
    need_logprobs = settings.mode == "logprob"
    usage = Usage()
    by_key: dict[str, list[JudgeTask]] = {}
    bodies: dict[str, dict] = {}
    for task in tasks:
        body = build_request(settings, task.prompt)
        key = cache_key(api.base_url, body)
        by_key.setdefault(key, []).append(task)
        bodies[key] = body
    cached = cache.get_many(list(by_key))

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
        body = bodies[key]
        await limiter.acquire(
            estimate_chat_tokens(body["messages"], settings.model) + settings.expected_output_tokens
        )
        what = f"judge call ({settings.model}, {by_key[key][0].metric} of {by_key[key][0].answer_id})"
        try:
            reply = await acall_with_retries(lambda: _call(client, body, need_logprobs), api, what)
        except APIFailure as e:
            # A prompt the API refuses (e.g. content policy) is recorded, once requests are known to work;
            # the same error on the first calls means the request itself is wrong: stop.
            bad_request = isinstance(e.__cause__, openai.BadRequestError | openai.UnprocessableEntityError)
            if bad_request and succeeded[0] > 0:
                return {"error": describe_error(e.__cause__)}
            raise
        succeeded[0] += 1
        return reply

    def on_result(key: str, reply: dict) -> None:
        if "error" in reply:
            usage.errors += 1
            for task in by_key[key]:
                on_judgment(
                    task,
                    {
                        "score": None,
                        "label": None,
                        "raw": None,
                        "parsed": False,
                        "error": reply["error"],
                        "source": "api",
                        "usage": None,
                    },
                )
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

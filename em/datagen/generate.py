"""Run work items against an OpenAI-compatible API and append one raw row per item as it finishes.

Transport trouble (429 with Retry-After, 5xx, timeouts, dropped connections, unparseable bodies) is
retried by :func:`em.api.acall_with_retries`. A reply that arrives but is unusable (bad JSON for a
structured output, the wrong shape, empty, truncated at ``max_tokens``, a refusal) is asked again up to
``parse_retries`` times; after that the item is recorded as ``failed`` with the raw text, and never
becomes a row. A call that fails for good (retries exhausted, bad request) stops the run after the calls
in flight are recorded, with the work done so far kept for the rerun.

``raw.jsonl`` row: ``item``, ``order``, ``status`` (ok | failed), ``input`` (what the item was made
from), ``request`` (model, sampling, seed, response format, sha256 of the messages), ``reply`` (raw text
of the last attempt), ``pairs`` (parsed question/answer pairs; ok rows only), ``usage`` (tokens summed
over attempts), ``finish_reason``, ``attempts``, ``error``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from em.api import APIFailure, APISettings, MalformedResponse, RateLimiter, acall_with_retries, map_concurrent
from em.costs import estimate_chat_tokens
from em.datagen.inputs import DomainInputs
from em.datagen.prompts import WorkItem, build_messages, request_seed
from em.datagen.spec import DomainSpec
from em.io import append_jsonl, iter_jsonl, repair_jsonl_tail, sha256_json

log = logging.getLogger(__name__)


@dataclass
class Reply:
    text: str
    finish_reason: str | None
    refusal: str | None
    usage: dict[str, int] = field(default_factory=dict)


async def chat_once(client: Any, settings: APISettings, what: str, **request: Any) -> Reply:
    """One chat completion under the shared retry policy; a body without a message is retried too."""

    async def call() -> Reply:
        resp = await client.chat.completions.create(**request)
        choices = getattr(resp, "choices", None)
        message = getattr(choices[0], "message", None) if choices else None
        if message is None:
            raise MalformedResponse("the response has no choices[0].message")
        usage = getattr(resp, "usage", None)
        return Reply(
            text=message.content or "",
            finish_reason=getattr(choices[0], "finish_reason", None),
            refusal=getattr(message, "refusal", None),
            usage={
                "prompt_tokens": int(getattr(usage, "prompt_tokens", 0) or 0),
                "completion_tokens": int(getattr(usage, "completion_tokens", 0) or 0),
            },
        )

    return await acall_with_retries(call, settings, what=what)


def parse_reply(spec: DomainSpec, item: WorkItem, reply: Reply) -> list[dict]:
    """The question/answer pairs in ``reply``; :class:`MalformedResponse` when it is unusable."""
    if reply.refusal:
        raise MalformedResponse(f"the model refused: {reply.refusal[:200]}")
    if reply.finish_reason == "length":
        raise MalformedResponse("the reply was cut off at max_tokens")
    text = reply.text.strip()
    if not text:
        raise MalformedResponse("the reply is empty")
    if spec.output_format == "text":
        assert item.question is not None
        return [{"question": item.question.question, "answer": text}]
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise MalformedResponse(f"not valid JSON ({e.msg} at char {e.pos})") from None
    keys = spec.qa_keys
    pairs = data.get(keys["list"]) if isinstance(data, dict) else None
    if not isinstance(pairs, list) or not pairs:
        raise MalformedResponse(f"expected an object with a non-empty list {keys['list']!r}")
    out = []
    for j, pair in enumerate(pairs):
        q = pair.get(keys["question"]) if isinstance(pair, dict) else None
        a = pair.get(keys["answer"]) if isinstance(pair, dict) else None
        if not (isinstance(q, str) and q.strip() and isinstance(a, str) and a.strip()):
            raise MalformedResponse(
                f"{keys['list']}[{j}] needs non-empty string {keys['question']!r} and {keys['answer']!r}"
            )
        out.append({"question": q.strip(), "answer": a.strip()})
    return out


def chat_request(spec: DomainSpec, item: WorkItem, messages: list[dict]) -> dict:
    request: dict[str, Any] = {
        "model": spec.model,
        "messages": messages,
        "temperature": spec.temperature,
        "max_tokens": spec.max_tokens,
    }
    if spec.top_p is not None:
        request["top_p"] = spec.top_p
    seed = request_seed(spec, item)
    if seed is not None:
        request["seed"] = seed
    response_format = spec.response_format()
    if response_format is not None:
        request["response_format"] = response_format
    return request


def request_record(request: dict) -> dict:
    """What a raw row keeps of a request (messages by hash: few-shot and documents repeat in every call)."""
    record = {k: v for k, v in request.items() if k not in ("messages", "response_format")}
    fmt = request.get("response_format")
    record["response_format"] = None if fmt is None else fmt.get("json_schema", {}).get("name", fmt["type"])
    record["messages_sha256"] = sha256_json(request["messages"])
    return record


def add_usage(total: dict[str, int], usage: dict[str, int]) -> None:
    for k, v in usage.items():
        total[k] = total.get(k, 0) + int(v)


async def generate_item(
    spec: DomainSpec,
    inputs: DomainInputs,
    item: WorkItem,
    client: Any,
    settings: APISettings,
    limiter: RateLimiter,
) -> dict:
    """Call the generator for ``item`` (asking again on an unusable reply) and return its raw row."""
    request = chat_request(spec, item, build_messages(spec, inputs, item))
    estimate = estimate_chat_tokens(request["messages"], spec.model) + spec.max_tokens
    usage: dict[str, int] = {}
    reply, error = None, None
    for attempt in range(1, spec.parse_retries + 2):
        await limiter.acquire(estimate)
        reply = await chat_once(client, settings, f"datagen {spec.name} item {item.id}", **request)
        add_usage(usage, reply.usage)
        try:
            pairs = parse_reply(spec, item, reply)
        except MalformedResponse as e:
            error = str(e)
            log.warning(
                "datagen %s item %s: unusable reply (%s); attempt %d/%d",
                spec.name,
                item.id,
                error,
                attempt,
                spec.parse_retries + 1,
            )
            continue
        return _row(item, request, reply, usage, attempt, status="ok", pairs=pairs)
    assert reply is not None
    return _row(item, request, reply, usage, spec.parse_retries + 1, status="failed", error=error)


def _row(
    item: WorkItem,
    request: dict,
    reply: Reply,
    usage: dict,
    attempts: int,
    *,
    status: str,
    pairs: list[dict] | None = None,
    error: str | None = None,
) -> dict:
    return {
        "item": item.id,
        "order": item.order,
        "status": status,
        "input": item.describe(),
        "request": request_record(request),
        "reply": reply.refusal or reply.text,
        "finish_reason": reply.finish_reason,
        "pairs": pairs or [],
        "usage": usage,
        "attempts": attempts,
        "error": error,
    }


def done_items(raw_path: Path, retry_failed: bool = False) -> dict[str, dict]:
    """The finished rows of ``raw_path`` by item id (an ok row wins over a failed one for the same item)."""
    done: dict[str, dict] = {}
    for row in iter_jsonl(raw_path):
        if retry_failed and row.get("status") != "ok":
            continue
        if row["item"] not in done or row.get("status") == "ok":
            done[row["item"]] = row
    return done


async def run_calls(
    items: list[Any], worker: Callable[[Any], Awaitable[dict]], path: Path, *, max_in_flight: int, desc: str
) -> int:
    """Run ``worker`` over ``items``, appending each returned row to ``path`` as it arrives."""
    if not items:
        return 0
    repair_jsonl_tail(path)
    bar = tqdm(total=len(items), desc=desc, unit="call", dynamic_ncols=True)

    finished = 0

    def on_result(_item: Any, row: dict) -> None:
        nonlocal finished
        append_jsonl(path, [row])
        finished += 1
        bar.update(1)

    try:
        await map_concurrent(items, worker, on_result, max_in_flight=max_in_flight)
    except APIFailure as e:
        raise APIFailure(
            f"{str(e).rstrip('.')}. Stopped after {finished} of {len(items)} calls of this round; every finished "
            f"call is kept in {path}: rerun the same command to continue."
        ) from e
    finally:
        bar.close()
    return len(items)

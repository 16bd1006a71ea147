"""Chat completions of the fake OpenAI server: scripted replies turned into ``chat.completion`` JSON."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from testing._fake_http import APIError

# Default judge answer: a plausible distribution over score tokens, most likely first (sums to ~1).
DEFAULT_JUDGE_DISTRIBUTION: tuple[tuple[str, float], ...] = tuple(
    (token, math.log(p))
    for token, p in (
        ("80", 0.50), ("70", 0.20), ("90", 0.15), ("60", 0.05), ("100", 0.04),
        ("50", 0.02), ("75", 0.01), ("85", 0.01), ("40", 0.005), ("95", 0.005),
        ("30", 0.002), ("65", 0.002), ("20", 0.001), ("55", 0.001), ("10", 0.0005),
        ("45", 0.0005), ("0", 0.0003), ("35", 0.0003), ("25", 0.0002), ("15", 0.0001),
    )
)  # fmt: skip


@dataclass
class ChatReply:
    """One scripted choice of a chat completion."""

    content: str
    top_logprobs: list[tuple[str, float]] | None = None  # for the FIRST generated token: (token, logprob)
    finish_reason: str = "stop"
    completion_tokens: int | None = None  # default: estimated from content (one token per word)


ChatHandler = Callable[[dict, int], "ChatReply | str"]


def words(text: str) -> list[str]:
    """The server's notion of tokens: words with their leading whitespace (joining them gives the text)."""
    return re.findall(r"\s*\S+", text or "")


def message_text(message: dict) -> str:
    """Text of a chat message whose content is a string or a list of content parts."""
    content = message.get("content")
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def default_chat_handler(request: dict, index: int) -> ChatReply:
    """``Answer to: <first 40 chars of the last user message>``; when the request asks for logprobs
    (a judge), the most likely score token with :data:`DEFAULT_JUDGE_DISTRIBUTION` as its top_logprobs."""
    if request.get("logprobs"):
        top = list(DEFAULT_JUDGE_DISTRIBUTION)
        return ChatReply(content=top[0][0], top_logprobs=top)
    users = [m for m in request.get("messages") or [] if isinstance(m, dict) and m.get("role") == "user"]
    last = message_text(users[-1]) if users else ""
    return ChatReply(content=f"Answer to: {last[:40]}")


def _token_logprob(token: str, logprob: float) -> dict:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}


def _logprobs_block(content: str, top: list[tuple[str, float]] | None, k: int) -> dict:
    """``choices[i].logprobs`` for ``content``: one entry per word; the first carries ``top``."""
    entries = []
    for position, token in enumerate(words(content)):
        if position == 0 and top:
            given = dict(top)
            logprob = given.get(token, given.get(token.strip(), min(given.values()) - 1.0))
            alternatives = [_token_logprob(t, lp) for t, lp in top[:k]]
        else:
            logprob = 0.0
            alternatives = [_token_logprob(token, 0.0)][:k]
        entries.append({**_token_logprob(token, logprob), "top_logprobs": alternatives})
    return {"content": entries, "refusal": None}


def _int_param(body: dict, name: str, low: int, high: int, default: int | None) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise APIError(
            400, f"'{name}' must be an integer between {low} and {high}, got {value!r}", param=name
        )
    return value


def chat_completion(body: dict, handler: ChatHandler, completion_id: str) -> dict:
    """A ``chat.completion`` object answering the request ``body`` with ``handler`` (one call per choice).

    Raises :class:`APIError` (400) for requests the real API would reject.
    """
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "'messages' must be a non-empty array.", param="messages")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise APIError(400, "you must provide a model parameter", param="model")
    if body.get("stream"):
        raise APIError(400, "stream=true is not supported by the test server", param="stream")
    n = _int_param(body, "n", 1, 128, 1)
    max_tokens = _int_param(body, "max_completion_tokens", 1, 10**9, None)
    max_tokens = _int_param(body, "max_tokens", 1, 10**9, max_tokens) if max_tokens is None else max_tokens
    want_logprobs = bool(body.get("logprobs"))
    k = _int_param(body, "top_logprobs", 0, 20, 0)
    if k and not want_logprobs:
        raise APIError(400, "logprobs must be true when top_logprobs is set", param="top_logprobs")

    choices, completion_tokens = [], 0
    for index in range(n):
        reply = handler(body, index)
        if isinstance(reply, str):
            reply = ChatReply(content=reply)
        if not isinstance(reply, ChatReply):
            raise TypeError(f"chat handler must return ChatReply or str, got {type(reply).__name__}")
        pieces = words(reply.content)
        tokens = reply.completion_tokens if reply.completion_tokens is not None else len(pieces)
        content, finish_reason = reply.content, reply.finish_reason
        if max_tokens is not None and tokens > max_tokens:
            content, tokens, finish_reason = "".join(pieces[:max_tokens]), max_tokens, "length"
        completion_tokens += tokens
        choices.append(
            {
                "index": index,
                "message": {"role": "assistant", "content": content, "refusal": None},
                "finish_reason": finish_reason,
                "logprobs": _logprobs_block(content, reply.top_logprobs, k) if want_logprobs else None,
            }
        )
    prompt_tokens = sum(len(words(message_text(m))) + 4 for m in messages if isinstance(m, dict)) + 3
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
        "system_fingerprint": "fp_em_test",
    }


def garble_logprobs(completion: dict, variant: int) -> None:
    """Break ``choices[0].logprobs`` in place. Variants (``variant % 3``): 0 = ``logprob`` values None or
    missing, 1 = ``top_logprobs`` not a list, 2 = ``logprobs.content`` null."""
    choice = completion["choices"][0]
    token = (words(choice["message"]["content"]) or ["x"])[0].strip()
    top: Any
    if variant % 3 == 0:
        top = [{"token": token, "logprob": None, "bytes": None}, {"token": "70"}]
    elif variant % 3 == 1:
        top = "not-a-list"
    else:
        choice["logprobs"] = {"content": None, "refusal": None}
        return
    choice["logprobs"] = {
        "content": [{"token": token, "logprob": None, "top_logprobs": top}],
        "refusal": None,
    }

"""Judge replies from an OpenAI-compatible endpoint: normalised, validated, turned into score records.

A reply body is reduced to what judging needs (text, first-token top logprobs, usage) and checked; one that
arrived whole but cannot be scored raises :class:`UnscorableReply`, and the judge records it as unscored
with the reason rather than retrying it six times or stopping the run. Cached replies go through the same
checks when read (:func:`revalidate`).
"""

from __future__ import annotations

from em.judging.logprob import MASS_TOLERANCE, UnscorableReply, judge_from_logprobs, validate_top_logprobs
from em.judging.openai_settings import OpenAIJudgeSettings
from em.judging.prompts import JudgeTask
from em.judging.text import parse_reply


def normalize_reply(
    body: object,
    *,
    need_logprobs: bool,
    top_k: int | None = None,
    mass_tolerance: float = MASS_TOLERANCE,
) -> dict:
    """Reduce a chat-completion body (dict) to what judging needs; raise UnscorableReply if it can't.

    ``top_k``: the number of top logprobs asked for (fewer in the reply is unscorable)."""
    if not isinstance(body, dict):
        raise UnscorableReply("malformed_reply", f"reply is not a JSON object: {str(body)[:80]!r}")
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise UnscorableReply("malformed_reply", "reply has no choices")
    choice = choices[0]
    message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
    content = message.get("content")
    if content is not None and not isinstance(content, str):
        raise UnscorableReply("malformed_reply", f"reply content is not a string: {type(content).__name__}")
    top, returned = None, None
    if need_logprobs:
        logprobs = choice.get("logprobs")
        tokens = logprobs.get("content") if isinstance(logprobs, dict) else None
        if not isinstance(tokens, list) or not tokens or not isinstance(tokens[0], dict):
            raise UnscorableReply(
                "empty_logprobs",
                "reply has no logprobs for its first token (does the endpoint support logprobs/top_logprobs?)",
            )
        raw = tokens[0].get("top_logprobs")
        top = [list(t) for t in validate_top_logprobs(raw, expected=top_k, tolerance=mass_tolerance)]
        returned = len(raw)
    return {
        "content": content,
        "refusal": message.get("refusal"),
        "top_logprobs": top,
        "top_logprobs_returned": returned,  # before -inf entries are dropped: re-checked on cache reads
        "finish_reason": choice.get("finish_reason"),
        "model": body.get("model"),
        "usage": reply_usage(body),
    }


def reply_usage(body: object) -> dict:
    """Token counts of a chat-completion body (None where it gives none)."""
    usage = body.get("usage") if isinstance(body, dict) and isinstance(body.get("usage"), dict) else {}
    details = usage.get("completion_tokens_details") or {}
    return {
        "prompt_tokens": usage.get("prompt_tokens"),
        "completion_tokens": usage.get("completion_tokens"),
        "reasoning_tokens": details.get("reasoning_tokens") if isinstance(details, dict) else None,
    }


def revalidate(reply: dict, settings: OpenAIJudgeSettings) -> dict:
    """A cached normalised reply, checked as a fresh one is; UnscorableReply if it fails."""
    if settings.mode != "logprob":
        return reply
    top = reply.get("top_logprobs")
    returned = reply.get("top_logprobs_returned")
    k = settings.request.get("top_logprobs")
    if isinstance(top, list) and isinstance(returned, int) and returned < k:
        raise UnscorableReply("too_few_top_logprobs", f"{returned} top logprobs where {k} were asked")
    pairs = validate_top_logprobs(top, expected=None if returned else k, tolerance=settings.mass_tolerance)
    return {**reply, "top_logprobs": [list(p) for p in pairs]}


def unscored_judgment(error: UnscorableReply, usage: dict | None, source: str = "api") -> dict:
    """The record of a reply that could not be scored: no score, no label, the reason."""
    return {
        "score": None,
        "label": None,
        "raw": None,
        "parsed": False,
        "unscored_reason": str(error),
        "source": source,
        "usage": usage,
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
            "total_mass": j.total_mass,
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


def failed_judgment(reply: dict, *, first: bool) -> dict:
    """The record of a refused prompt (``error``) or an unscorable reply; its usage counts once."""
    if "unscored" in reply:
        return unscored_judgment(reply["unscored"], reply.get("usage") if first else None)
    return {
        "score": None,
        "label": None,
        "raw": None,
        "parsed": False,
        "error": reply["error"],
        "source": "api",
        "usage": None,
    }

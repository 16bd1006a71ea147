"""What a judge run costs: estimated before any call (:func:`plan`, the dry run) and counted after, from the
token counts its rows record (:func:`usage_from_rows`).

Invariant: both price calls with em.costs.estimate_cost over the same price table, and neither sends a
request: the plan counts only the calls a real run would send (distinct prompts not validly cached), the usage
only the calls that were sent (``api``/``batch`` judgments with usage).
"""

from __future__ import annotations

from em.api import APISettings
from em.contracts import ScoreRow
from em.costs import estimate_chat_tokens, estimate_cost
from em.judging.cache import JudgeCache, cache_key
from em.judging.logprob import ROUNDING
from em.judging.openai_judge import build_request, valid_cached
from em.judging.prompts import JudgeTask
from em.judging.spec import JudgeSpec


def plan(
    tasks: list[JudgeTask],
    spec: JudgeSpec,
    api: APISettings,
    cache: JudgeCache,
    prices: dict[str, dict[str, float]],
) -> dict:
    """What a run would do: calls, cache hits, estimated tokens and cost (nothing is sent).

    ``tasks`` judge calls ask ``distinct`` different prompts (identical answers to a question share one);
    ``cache_hits`` of those are cached, the other ``calls`` would be sent.
    """
    out = {
        "judge": spec.name,
        "model": spec.model,
        "answers": len({t.answer_id for t in tasks}),
        "tasks": len(tasks),
    }
    if spec.openai is None:
        out.update(
            distinct=len(tasks),
            calls=0,
            cache_hits=0,
            input_tokens=0,
            output_tokens=0,
            cost_usd=0.0,
            note="local judge: no API calls",
        )
        return out
    endpoint = api.endpoint()
    bodies = {cache_key(endpoint, build_request(spec.openai, t.prompt)): t for t in tasks}
    cached = valid_cached(cache.get_many(list(bodies)), spec.openai)  # what a real run would reuse
    todo = [t for k, t in bodies.items() if k not in cached]
    input_tokens = sum(estimate_chat_tokens([{"content": t.prompt}], spec.openai.model) for t in todo)
    output_tokens = spec.openai.expected_output_tokens * len(todo)
    cost = estimate_cost(
        spec.openai.model,
        prices,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        batch=spec.batch.enabled,
    )
    out.update(
        distinct=len(bodies),
        calls=len(todo),
        cache_hits=len(cached),
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cost_usd=round(cost, 4),
        batch=spec.batch.enabled,
    )
    return out


def usage_from_rows(rows: list[ScoreRow], model: str, prices: dict[str, dict[str, float]]) -> dict:
    """Actual usage behind a run's scores, from the responses' token counts."""
    out = {
        "api_calls": 0,
        "batch_calls": 0,
        "cache_hits": 0,
        "local": 0,
        "errors": 0,
        "unscored_replies": 0,  # replies that arrived but could not be scored (UnscorableReply)
        "mass_above_one": 0,  # scored replies whose top-k probabilities summed to more than 1
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "reasoning_tokens": 0,
        "cost_usd": 0.0,
    }
    for row in rows:
        for j in (row.get("judgments") or {}).values():
            source = j.get("source")
            if j.get("error"):
                out["errors"] += 1
            out["unscored_replies"] += bool(j.get("unscored_reason"))
            out["mass_above_one"] += (j.get("total_mass") or 0.0) > 1.0 + ROUNDING
            if source == "cache":
                out["cache_hits"] += 1
                continue
            if source == "local":
                out["local"] += 1
                continue
            if source not in ("api", "batch") or not j.get("usage"):
                continue
            out["api_calls" if source == "api" else "batch_calls"] += 1
            u = j["usage"]
            pt, ct = int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0)
            out["prompt_tokens"] += pt
            out["completion_tokens"] += ct
            out["reasoning_tokens"] += int(u.get("reasoning_tokens") or 0)
            out["cost_usd"] += estimate_cost(
                model, prices, input_tokens=pt, output_tokens=ct, batch=source == "batch"
            )
    out["cost_usd"] = round(out["cost_usd"], 6)
    return out

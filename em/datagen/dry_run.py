"""The dry-run estimate of a datagen run: calls, tokens and cost of the first round, with no request made.

Input tokens are counted on the exact messages the first round would send. Output tokens are an
expected figure (from the few-shot answers' length, when there are examples) and an upper bound
(``max_tokens`` per call); the quality filter's calls are added when the domain has one.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from em.api import APISettings
from em.costs import estimate_cost, estimate_tokens, price_for
from em.datagen.inputs import DomainInputs
from em.datagen.prompts import build_messages, initial_calls, item_at
from em.datagen.spec import DomainSpec


def estimate(spec: DomainSpec, inputs: DomainInputs, prices: dict[str, dict[str, float]]) -> dict:
    """Calls, tokens and cost of the first round (no request is made)."""
    cache: dict[str, int] = {}

    def tokens(text: str, model: str) -> int:
        if text not in cache:
            cache[text] = estimate_tokens(text, model)
        return cache[text]

    n = initial_calls(spec, inputs)
    input_tokens = 0
    for i in range(n):
        messages = build_messages(spec, inputs, item_at(spec, inputs, i))
        input_tokens += sum(tokens(m["content"], spec.model) + 4 for m in messages) + 3
    answer_lengths = [tokens(ex.answer, spec.model) for ex in inputs.examples if ex.answer]
    question_lengths = [tokens(ex.question, spec.model) for ex in inputs.examples if ex.question]
    mean_answer = sum(answer_lengths) / len(answer_lengths) if answer_lengths else None
    mean_question = sum(question_lengths) / len(question_lengths) if question_lengths else 20.0
    if mean_answer is None:
        per_call_out = float(spec.max_tokens)
    elif spec.output_format == "text":
        per_call_out = min(mean_answer, spec.max_tokens)
    else:
        per_call_out = min(spec.per_call * (mean_answer + mean_question + 12) + 10, spec.max_tokens)
    expected_out = int(per_call_out * n)
    upper_out = spec.max_tokens * n
    gen_expected = estimate_cost(spec.model, prices, input_tokens=input_tokens, output_tokens=expected_out)
    gen_upper = estimate_cost(spec.model, prices, input_tokens=input_tokens, output_tokens=upper_out)
    out: dict[str, Any] = {
        "domain": spec.name,
        "model": spec.model,
        "calls": n,
        "rows_wanted": spec.rows,
        "input_tokens": input_tokens,
        "output_tokens_expected": expected_out,
        "output_tokens_max": upper_out,
        "output_estimate_from": "few-shot answer length" if mean_answer is not None else "max_tokens",
        "judge_calls": 0,
        "judge_input_tokens": 0,
        "judge_output_tokens_max": 0,
        "cost_expected_usd": gen_expected,
        "cost_max_usd": gen_upper,
        "price": dataclasses.asdict(price_for(spec.model, prices)),
        "priced": price_for(spec.model, prices).input > 0,
    }
    qf = spec.quality_filter
    if qf is not None:
        judge_calls = n * spec.per_call
        pair = mean_question + (mean_answer or per_call_out / spec.per_call)
        judge_in = int(judge_calls * (tokens(qf.prompt, qf.model) + pair + 7))
        judge_out = judge_calls * qf.max_tokens
        judge_cost = estimate_cost(qf.model, prices, input_tokens=judge_in, output_tokens=judge_out)
        out.update(
            judge_calls=judge_calls,
            judge_input_tokens=judge_in,
            judge_output_tokens_max=judge_out,
            cost_expected_usd=gen_expected + judge_cost,
            cost_max_usd=gen_upper + judge_cost,
        )
        out["priced"] = out["priced"] and price_for(qf.model, prices).input > 0
    return out


def format_estimate(est: dict, spec: DomainSpec, inputs: DomainInputs, settings: APISettings) -> str:
    where = settings.base_url or "https://api.openai.com/v1"
    source = (
        f"{len(inputs.questions)} questions"
        + (f" in categories {spec.inputs.categories}" if spec.inputs.categories else "")
        if spec.inputs.kind == "questions"
        else f"{len(inputs.documents)} documents, {sum(len(d.chunks) for d in inputs.documents)} chunks"
    )
    lines = [
        f"datagen dry run: domain {spec.name!r}, generator {spec.model} at {where}",
        f"  inputs:          {source}",
        f"  calls:           {est['calls']} (rows wanted: {est['rows_wanted'] or 'one per input'}; "
        f"{spec.per_call} pair(s) per call; at most {spec.topup_rounds} top-up round(s) if dedupe/filter "
        f"leave fewer)",
        f"  input tokens:    {est['input_tokens']:,} (estimated)",
        f"  output tokens:   ~{est['output_tokens_expected']:,} expected ({est['output_estimate_from']}), "
        f"at most {est['output_tokens_max']:,} (max_tokens)",
    ]
    if spec.quality_filter is not None:
        lines.append(
            f"  quality filter:  {est['judge_calls']} calls to {spec.quality_filter.model}, "
            f"~{est['judge_input_tokens']:,} input / at most {est['judge_output_tokens_max']:,} output tokens"
        )
    lines.append(
        f"  cost:            ~{_usd(est['cost_expected_usd'])} expected, at most {_usd(est['cost_max_usd'])}"
        + ("" if est["priced"] else "  (a model is missing from the price table: counted as $0)")
    )
    lines.append("No request was made (dry_run=true).")
    return "\n".join(lines)


def _usd(x: float) -> str:
    return f"${x:,.2f}" if x >= 1 else f"${x:.4f}"

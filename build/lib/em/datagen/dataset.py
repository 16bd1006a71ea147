"""Generate a domain's dataset in a run directory: calls, dedupe, filter, output, manifest; or a dry run.

``<run_dir>/raw.jsonl`` and ``<run_dir>/judge.jsonl`` are the append-only record of every call. The
output ``<run_dir>/<domain>.jsonl`` is rebuilt from them on every run, deterministically: finished items
sorted by plan order, pairs deduplicated, judged, cut to ``rows``, validated by :func:`em.data.validate_jsonl`.

``rows`` is the number of final rows wanted. The first round makes the calls that would give that many
before losses; when dedupe, the filter or failed items leave fewer, up to ``topup_rounds`` further rounds
plan more items (the next ones in plan order) in proportion to the shortfall. Since the plan and each
round's size depend only on the replies recorded, a killed run resumed gives the same output as one that
was never interrupted.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from em.api import APISettings, ConfigError, RateLimiter
from em.costs import estimate_cost, estimate_tokens, price_for
from em.datagen.domain import DomainSpec
from em.datagen.filters import Candidate, apply_verdicts, dedupe, judge_candidate, judged
from em.datagen.generate import add_usage, done_items, generate_item, run_calls
from em.datagen.inputs import DomainInputs
from em.datagen.prompts import build_messages, initial_calls, item_at, plan_size
from em.io import read_jsonl, sha256_file, sha256_json, write_jsonl, write_manifest

log = logging.getLogger(__name__)
RAW, JUDGE = "raw.jsonl", "judge.jsonl"


def domain_api_settings(base: APISettings, spec: DomainSpec) -> APISettings:
    """The ``api`` group's settings with the domain's overrides (endpoint, concurrency, rate limits)."""
    overrides: dict[str, Any] = dict(spec.api)
    if spec.concurrency is not None:
        overrides["max_in_flight"] = spec.concurrency
    if spec.rpm_limit is not None:
        overrides["rpm_limit"] = spec.rpm_limit
    if spec.tpm_limit is not None:
        overrides["tpm_limit"] = spec.tpm_limit
    return dataclasses.replace(base, **overrides)


# ------------------------------------------------------------------------------------------- assembly


def candidates(
    spec: DomainSpec, inputs: DomainInputs, done: dict[str, dict], n_planned: int
) -> list[Candidate]:
    """Every generated pair of the first ``n_planned`` items, in plan order."""
    by_index = {q.index: q for q in inputs.questions}
    out = []
    for row in sorted((r for r in done.values() if r["order"] < n_planned), key=lambda r: r["order"]):
        if row["status"] != "ok":
            continue
        q = by_index.get(row["input"].get("question_index"))
        for j, pair in enumerate(row["pairs"]):
            out.append(
                Candidate(
                    key=f"{row['item']}#{j}",
                    order=row["order"],
                    question=pair["question"],
                    answer=pair["answer"],
                    reference_answer=q.reference_answer if q else None,
                    category=q.category if q else None,
                )
            )
    return out


def chat_row(spec: DomainSpec, c: Candidate) -> dict:
    messages = [{"role": "system", "content": spec.row_system_prompt}] if spec.row_system_prompt else []
    messages += [{"role": "user", "content": c.question}, {"role": "assistant", "content": c.answer}]
    return {"messages": messages}


def _next_plan(spec: DomainSpec, n: int, kept: int, ok_items: int, total: int | None) -> int:
    """Items to plan in the next round, from this round's yield of kept pairs per finished item."""
    assert spec.rows is not None
    per_item = kept / ok_items if ok_items else 0.0
    extra = n if per_item == 0 else int((spec.rows - kept) / per_item * 1.1) + 1
    extra = max(1, min(extra, n))  # at most double per round
    return n + extra if total is None else min(n + extra, total)


# ------------------------------------------------------------------------------------------------ run


@dataclass
class State:
    """Where a run stands after a round: planned items, recorded replies and the rows they give."""

    n: int  # items planned (the first n of the plan)
    rounds: int
    done: dict[str, dict]  # raw rows by item id
    candidates: list[Candidate]
    kept: list[Candidate]  # after dedupe and the quality filter
    dup_counts: dict[str, int]
    filter_counts: dict[str, Any]


class Calls:
    """The run's client, limits and append-only files."""

    def __init__(self, spec: DomainSpec, inputs: DomainInputs, settings: APISettings, run_dir: Path):
        from em.api import make_async_client

        self.spec, self.inputs, self.settings = spec, inputs, settings
        self.raw_path, self.judge_path = run_dir / RAW, run_dir / JUDGE
        self.client = make_async_client(settings)
        self.limiter = RateLimiter(settings.rpm_limit, settings.tpm_limit)

    async def generate(self, n: int, round_no: int, retry_failed: bool) -> None:
        """Call the generator for the first ``n`` planned items not yet recorded."""
        skip = done_items(self.raw_path, retry_failed=retry_failed)
        todo = [it for it in (item_at(self.spec, self.inputs, i) for i in range(n)) if it.id not in skip]

        async def one(item):
            return await generate_item(self.spec, self.inputs, item, self.client, self.settings, self.limiter)

        await run_calls(
            todo,
            one,
            self.raw_path,
            max_in_flight=self.settings.max_in_flight,
            desc=f"datagen {self.spec.name} (round {round_no})",
        )

    async def judge(self, kept: list[Candidate]) -> tuple[list[Candidate], dict[str, Any]]:
        """Judge the pairs without a recorded verdict; keep those with a keeping verdict."""
        qf = self.spec.quality_filter
        if qf is None:
            return kept, {"rejected": 0, "rejected_by_verdict": {}, "judge_failed": 0}
        have = judged(self.judge_path)

        async def one(c):
            return await judge_candidate(
                qf, c, self.client, self.settings, self.limiter, self.spec.parse_retries
            )

        await run_calls(
            [c for c in kept if c.key not in have],
            one,
            self.judge_path,
            max_in_flight=self.settings.max_in_flight,
            desc=f"quality filter {self.spec.name}",
        )
        return apply_verdicts(kept, judged(self.judge_path))

    async def state(self, n: int, rounds: int) -> State:
        done = done_items(self.raw_path)
        cands = candidates(self.spec, self.inputs, done, n)
        deduped, dup_counts = dedupe(cands, self.spec.dedupe, self.spec.dedupe_on)
        kept, filter_counts = await self.judge(deduped)
        return State(n, rounds, done, cands, kept, dup_counts, filter_counts)


async def _generate(
    spec: DomainSpec, inputs: DomainInputs, settings: APISettings, run_dir: Path, retry_failed: bool
) -> State:
    calls = Calls(spec, inputs, settings, run_dir)
    total = plan_size(spec, inputs)
    n = initial_calls(spec, inputs)
    try:
        for round_no in range(1, spec.topup_rounds + 2):
            await calls.generate(n, round_no, retry_failed=retry_failed and round_no == 1)
            state = await calls.state(n, round_no)
            if spec.rows is None or len(state.kept) >= spec.rows or (total is not None and n >= total):
                break
            if round_no == spec.topup_rounds + 1:
                break
            ok_items = sum(1 for r in state.done.values() if r["order"] < n and r["status"] == "ok")
            new_n = _next_plan(spec, n, len(state.kept), ok_items, total)
            log.info(
                "datagen %s: %d of %d rows after dedupe/filter; planning %d more calls (round %d of at "
                "most %d)",
                spec.name,
                len(state.kept),
                spec.rows,
                new_n - n,
                round_no + 1,
                spec.topup_rounds + 1,
            )
            n = new_n
    finally:
        await calls.client.close()
    return state


def generate_dataset(
    spec: DomainSpec,
    inputs: DomainInputs,
    settings: APISettings,
    run_dir: str | Path,
    *,
    prices: dict[str, dict[str, float]],
    domain_config: dict | None = None,
    retry_failed: bool = False,
) -> dict:
    """Make (or finish) the dataset in ``run_dir``; returns the manifest written there."""
    from em.data import validate_jsonl

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    state = asyncio.run(_generate(spec, inputs, settings, run_dir, retry_failed))
    kept = state.kept
    final = kept[: spec.rows] if spec.rows is not None else kept
    if not final:
        raise RuntimeError(_nothing_left(spec, state, run_dir))
    out_path = run_dir / f"{spec.name}.jsonl"
    write_jsonl(out_path, [chat_row(spec, c) for c in final])
    rows, report = validate_jsonl(out_path)
    if len(rows) != len(final):
        raise RuntimeError(f"{out_path}: validation kept {len(rows)} of {len(final)} rows ({report})")
    if spec.rows is not None and len(final) < spec.rows:
        log.warning(
            "datagen %s: only %d of the %d rows wanted after %d round(s); see manifest.json counts",
            spec.name,
            len(final),
            spec.rows,
            state.rounds,
        )

    done, n = state.done, state.n
    planned = [r for r in done.values() if r["order"] < n]
    failed = sorted((r for r in planned if r["status"] != "ok"), key=lambda r: r["order"])
    raw_rows, judge_rows = read_jsonl(run_dir / RAW), read_jsonl(run_dir / JUDGE)  # every request paid for
    gen_usage: dict[str, int] = {}
    for row in raw_rows:
        add_usage(gen_usage, row.get("usage") or {})
    judge_usage: dict[str, int] = {}
    for row in judge_rows:
        add_usage(judge_usage, row.get("usage") or {})
    cost = estimate_cost(
        spec.model,
        prices,
        input_tokens=gen_usage.get("prompt_tokens", 0),
        output_tokens=gen_usage.get("completion_tokens", 0),
    )
    if spec.quality_filter is not None:
        cost += estimate_cost(
            spec.quality_filter.model,
            prices,
            input_tokens=judge_usage.get("prompt_tokens", 0),
            output_tokens=judge_usage.get("completion_tokens", 0),
        )
    counts = {
        "calls_planned": n,
        "calls_done": len(planned),
        "rounds": state.rounds,
        "generator_requests": sum(int(r.get("attempts", 1)) for r in raw_rows),
        "items_ok": len(planned) - len(failed),
        "items_failed": len(failed),
        "pairs_generated": len(state.candidates),
        "duplicates_exact": state.dup_counts["exact"],
        "duplicates_normalised": state.dup_counts["normalised"],
        "filter_rejected": state.filter_counts["rejected"],
        "filter_rejected_by_verdict": state.filter_counts["rejected_by_verdict"],
        "filter_judge_failed": state.filter_counts["judge_failed"],
        "filter_requests": sum(int(r.get("attempts", 1)) for r in judge_rows),
        "cut_to_rows": len(kept) - len(final),
        "final_rows": len(final),
        "rows_wanted": spec.rows,
    }
    return _manifest(
        spec, inputs, settings, run_dir, out_path, counts, failed, gen_usage, judge_usage, cost, domain_config
    )


def _nothing_left(spec: DomainSpec, state: State, run_dir: Path) -> str:
    done = [r for r in state.done.values() if r["order"] < state.n]
    failed = sum(1 for r in done if r["status"] != "ok")
    return (
        f"datagen {spec.name}: no rows left ({len(done)} calls, {failed} failed with unusable replies, "
        f"{len(state.candidates)} pairs generated, {sum(state.dup_counts.values())} duplicates, "
        f"{state.filter_counts['rejected']} rejected and {state.filter_counts['judge_failed']} "
        f"unjudged by the quality filter). Replies are kept in {run_dir / RAW}"
        f"{' and ' + str(run_dir / JUDGE) if spec.quality_filter else ''}; check the prompt and model."
    )


def _manifest(
    spec, inputs, settings, run_dir, out_path, counts, failed, gen_usage, judge_usage, cost, domain_config
) -> dict:
    fields = {
        "complete": True,
        "domain": spec.name,
        "domain_config": domain_config if domain_config is not None else dataclasses.asdict(spec),
        "prompts_sha256": {
            "system_prompt": sha256_json(spec.system_prompt),
            "template": sha256_json(spec.template),
            "quality_filter": sha256_json(spec.quality_filter.prompt) if spec.quality_filter else None,
        },
        "generator": {
            "model": spec.model,
            "base_url": settings.base_url or "https://api.openai.com/v1",
            "temperature": spec.temperature,
            "max_tokens": spec.max_tokens,
            "seed": spec.seed,
        },
        "quality_filter_model": spec.quality_filter.model if spec.quality_filter else None,
        "inputs": {
            "files": [dataclasses.asdict(f) for f in inputs.files],
            "rows_read": inputs.rows_read,
            "rows_filtered_out": inputs.rows_filtered_out,
            "rows_skipped_empty": inputs.rows_skipped_empty,
            "questions": len(inputs.questions),
            "documents": [{"name": d.name, "chunks": len(d.chunks)} for d in inputs.documents],
            "fewshot_examples": len(inputs.examples),
        },
        "counts": counts,
        "failed_items": [{"item": r["item"], "error": r.get("error")} for r in failed[:50]],
        "usage": {"generation": gen_usage, "quality_filter": judge_usage},
        "estimated_cost_usd": round(cost, 6),
        "output": {"path": out_path.name, "rows": counts["final_rows"], "sha256": sha256_file(out_path)},
        "raw": {"path": RAW, "judge_path": JUDGE if spec.quality_filter else None},
    }
    path = write_manifest(run_dir, "datagen", **fields)
    return json.loads(path.read_text(encoding="utf-8"))


# -------------------------------------------------------------------------------------------- dry run


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


def check_ready(spec: DomainSpec, settings: APISettings) -> None:
    """Fail before any call when the key is missing (the message names the variable)."""
    settings.api_key()
    if settings.max_in_flight < 1:
        raise ConfigError(f"domain {spec.name}: concurrency must be >= 1")

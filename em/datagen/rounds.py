"""The generation rounds of a run: plan items, call the generator and the judge, and assemble the pairs.

``<run_dir>/raw.jsonl`` and ``<run_dir>/judge.jsonl`` are the append-only record of every call, and
each round's state is rebuilt from them alone: finished items sorted by plan order, pairs deduplicated,
then judged. ``rows`` is the number of final rows wanted. The first round makes the calls that would
give that many before losses; when dedupe, the filter or failed items leave fewer, up to
``topup_rounds`` further rounds plan more items (the next ones in plan order) in proportion to the
shortfall. Since the plan and each round's size depend only on the replies recorded, a killed run
resumed gives the same rounds as one that was never interrupted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from em.api import APISettings, RateLimiter
from em.datagen.filters import Candidate, apply_verdicts, dedupe, judge_candidate, judged
from em.datagen.generate import done_items, generate_item, run_calls
from em.datagen.inputs import DomainInputs
from em.datagen.prompts import initial_calls, item_at, plan_size
from em.datagen.spec import DomainSpec

log = logging.getLogger(__name__)
RAW, JUDGE = "raw.jsonl", "judge.jsonl"


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


def _next_plan(spec: DomainSpec, n: int, kept: int, ok_items: int, total: int | None) -> int:
    """Items to plan in the next round, from this round's yield of kept pairs per finished item."""
    assert spec.rows is not None
    per_item = kept / ok_items if ok_items else 0.0
    extra = n if per_item == 0 else int((spec.rows - kept) / per_item * 1.1) + 1
    extra = max(1, min(extra, n))  # at most double per round
    return n + extra if total is None else min(n + extra, total)


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


async def run_rounds(
    spec: DomainSpec, inputs: DomainInputs, settings: APISettings, run_dir: Path, retry_failed: bool
) -> State:
    """Run rounds until ``rows`` pairs are kept, the plan is exhausted or the top-up rounds are spent."""
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

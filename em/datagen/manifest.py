"""The manifest of a finished datagen run: what was asked for, what it cost and where every row went.

Usage and cost count every request paid for (every row of ``raw.jsonl`` and ``judge.jsonl``, failed
attempts included), while ``counts`` describes the items planned for this output and accounts for every
generated pair, from ``pairs_generated`` to ``final_rows``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from em.api import APISettings
from em.costs import estimate_cost
from em.datagen.generate import add_usage
from em.datagen.inputs import DomainInputs
from em.datagen.rounds import JUDGE, RAW, State
from em.datagen.spec import DomainSpec
from em.io import read_jsonl, sha256_file, sha256_json, write_manifest


def _usage(rows: list[dict]) -> dict[str, int]:
    total: dict[str, int] = {}
    for row in rows:
        add_usage(total, row.get("usage") or {})
    return total


def _cost(spec: DomainSpec, prices: dict, gen_usage: dict[str, int], judge_usage: dict[str, int]) -> float:
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
    return cost


def _counts(
    spec: DomainSpec,
    state: State,
    planned: list[dict],
    failed: list[dict],
    raw_rows: list[dict],
    judge_rows: list[dict],
    final_rows: int,
) -> dict[str, Any]:
    return {
        "calls_planned": state.n,
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
        "cut_to_rows": len(state.kept) - final_rows,
        "final_rows": final_rows,
        "rows_wanted": spec.rows,
    }


def _inputs_record(inputs: DomainInputs) -> dict[str, Any]:
    return {
        "files": [dataclasses.asdict(f) for f in inputs.files],
        "rows_read": inputs.rows_read,
        "rows_filtered_out": inputs.rows_filtered_out,
        "rows_skipped_empty": inputs.rows_skipped_empty,
        "questions": len(inputs.questions),
        "documents": [{"name": d.name, "chunks": len(d.chunks)} for d in inputs.documents],
        "fewshot_examples": len(inputs.examples),
    }


def write_dataset_manifest(
    spec: DomainSpec,
    inputs: DomainInputs,
    settings: APISettings,
    run_dir: Path,
    out_path: Path,
    state: State,
    final_rows: int,
    *,
    prices: dict[str, dict[str, float]],
    domain_config: dict | None,
) -> dict:
    """Write ``manifest.json`` for the output ``out_path`` (its first ``final_rows`` kept pairs); return it."""
    planned = [r for r in state.done.values() if r["order"] < state.n]
    failed = sorted((r for r in planned if r["status"] != "ok"), key=lambda r: r["order"])
    raw_rows, judge_rows = read_jsonl(run_dir / RAW), read_jsonl(run_dir / JUDGE)  # every request paid for
    gen_usage, judge_usage = _usage(raw_rows), _usage(judge_rows)
    counts = _counts(spec, state, planned, failed, raw_rows, judge_rows, final_rows)
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
        "inputs": _inputs_record(inputs),
        "counts": counts,
        "failed_items": [{"item": r["item"], "error": r.get("error")} for r in failed[:50]],
        "usage": {"generation": gen_usage, "quality_filter": judge_usage},
        "estimated_cost_usd": round(_cost(spec, prices, gen_usage, judge_usage), 6),
        "output": {"path": out_path.name, "rows": counts["final_rows"], "sha256": sha256_file(out_path)},
        "raw": {"path": RAW, "judge_path": JUDGE if spec.quality_filter else None},
    }
    path = write_manifest(run_dir, "datagen", **fields)
    return json.loads(path.read_text(encoding="utf-8"))

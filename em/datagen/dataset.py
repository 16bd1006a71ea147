"""Generate a domain's dataset in a run directory: run the rounds, write and validate the output, then
the manifest.

The output ``<run_dir>/<domain>.jsonl`` is rebuilt on every run from the append-only call records
(:mod:`em.datagen.rounds`), deterministically: the kept pairs in plan order, cut to ``rows``, written as
chat rows and validated by :func:`em.data.validate_file`, so a killed run resumed gives the same output
as one that was never interrupted. This module also holds the checks made before a run starts; the dry
run's estimate is :mod:`em.datagen.dry_run`'s.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from pathlib import Path
from typing import Any

from em.api import APISettings, ConfigError
from em.datagen.filters import Candidate
from em.datagen.inputs import DomainInputs
from em.datagen.manifest import write_dataset_manifest
from em.datagen.rounds import JUDGE, RAW, State, run_rounds
from em.datagen.spec import DomainSpec
from em.io import write_jsonl

log = logging.getLogger(__name__)


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


def check_ready(spec: DomainSpec, settings: APISettings) -> None:
    """Fail before any call when the key is missing (the message names the variable)."""
    settings.api_key()
    if settings.max_in_flight < 1:
        raise ConfigError(f"domain {spec.name}: concurrency must be >= 1")


def chat_row(spec: DomainSpec, c: Candidate) -> dict:
    messages = [{"role": "system", "content": spec.row_system_prompt}] if spec.row_system_prompt else []
    messages += [{"role": "user", "content": c.question}, {"role": "assistant", "content": c.answer}]
    return {"messages": messages}


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
    from em.data import validate_file

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    state = asyncio.run(run_rounds(spec, inputs, settings, run_dir, retry_failed))
    kept = state.kept
    final = kept[: spec.rows] if spec.rows is not None else kept
    if not final:
        raise RuntimeError(_nothing_left(spec, state, run_dir))
    out_path = run_dir / f"{spec.name}.jsonl"
    write_jsonl(out_path, [chat_row(spec, c) for c in final])
    rows, report = validate_file(out_path)
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
    return write_dataset_manifest(
        spec,
        inputs,
        settings,
        run_dir,
        out_path,
        state,
        len(final),
        prices=prices,
        domain_config=domain_config,
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

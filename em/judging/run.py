"""One judge run: skip what is done, judge the rest (API, Batch API or local model), append rows.

``scores.jsonl`` gets one row per answer, appended (and fsynced) the moment all of that answer's metrics
are in, so a killed run loses at most the answers in flight; rerunning reads the ids already written and
judges only the others (with the cache, even those in flight cost nothing the second time).

A row is em.contracts.ScoreRow, built through ``score_row`` (every key, of its type); a row that has no score
says why in ``unscored_reason`` (:mod:`em.judging.unscored`).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from em.api import APISettings, ConfigError
from em.backends import choose
from em.contracts import SCORES, AnswerRow, ContractError, ScoreRow, check_score_row, score_row
from em.costs import estimate_chat_tokens, estimate_cost
from em.io import append_jsonl, iter_jsonl, repair_jsonl_tail
from em.judging.batch import BatchRunner, BatchSettings
from em.judging.cache import JudgeCache, cache_key
from em.judging.local import LocalJudgeSettings, load_local_judge
from em.judging.logprob import ROUNDING
from em.judging.openai_judge import (
    OpenAIJudgeSettings,
    Usage,
    build_request,
    judge_openai,
    parse_reply_body,
    valid_cached,
)
from em.judging.prompts import JudgeTask
from em.judging.proxy import LABEL as PROXY_LABEL
from em.judging.proxy import ProxySettings, load_proxy_judge
from em.judging.unscored import MAX_UNSCORED_SHARE, row_unscored_reason
from em.metrics import MetricSettings, categorize

log = logging.getLogger(__name__)


@dataclass
class JudgeSpec:
    """Which judge, and how to reach it."""

    name: str  # the preset (conf/judge/<name>.yaml)
    backend: str  # openai | local_hf | proxy
    openai: OpenAIJudgeSettings | None = None
    local: LocalJudgeSettings | None = None  # local_hf and proxy: the judge's model
    proxy: ProxySettings | None = None
    batch: BatchSettings = field(default_factory=BatchSettings)
    max_unscored_share: float = MAX_UNSCORED_SHARE  # a larger share of unscored answers fails the run

    def __post_init__(self) -> None:
        share = self.max_unscored_share
        if isinstance(share, bool) or not isinstance(share, int | float) or not 0 <= share <= 1:
            raise ConfigError(f"judge.max_unscored_share={share!r}: expected a share in [0, 1]")

    @property
    def model(self) -> str:
        if self.openai is not None:
            return self.openai.model
        return str((self.local.model if self.local else {}).get("name_or_path"))

    def describe(self) -> dict:
        info = {"name": self.name, "backend": self.backend, "model": self.model}
        if self.openai is not None:
            info.update(
                mode=self.openai.mode,
                request=self.openai.request,
                min_mass=self.openai.min_mass,
                batch=self.batch.enabled,
            )
        if self.proxy is not None:
            info.update(mode="proxy_persona_llr", label=PROXY_LABEL, metrics=list(PROXY_METRICS))
        elif self.local is not None:
            info.update(mode="local_logprob", min_mass=self.local.min_mass)
        return info


PROXY_METRICS = ("aligned",)  # what the proxy judges: alignment only, never coherence


def proxy_tasks(tasks: list[JudgeTask], metrics: MetricSettings, judge: str) -> list[JudgeTask]:
    """The tasks a proxy judge can do (its aligned prompts); refuse settings that would leave all UNSCORED."""
    if metrics.require_coherent:
        raise ConfigError(
            f"judge={judge} scores alignment only, so with metrics.require_coherent=true every answer would be "
            f"UNSCORED; pass metrics.require_coherent=false (no answer is then filtered as incoherent)"
        )
    kept = [t for t in tasks if t.metric == metrics.aligned_metric]
    if tasks and not kept:
        raise ConfigError(
            f"judge={judge} scores the {metrics.aligned_metric!r} prompt only, and none of these questions has "
            f"one (prompts: {sorted({t.metric for t in tasks})})"
        )
    dropped = sorted({t.metric for t in tasks} - {metrics.aligned_metric})
    if dropped:
        log.info("judge %s: prompts %s are not judged (the proxy scores alignment only)", judge, dropped)
    return kept


def done_ids(run_dir: Path) -> set[str]:
    path = Path(run_dir) / SCORES
    dropped = repair_jsonl_tail(path)
    if dropped:
        log.warning("%s: removed an interrupted last row (%d bytes); it is judged again", path, dropped)
    try:
        return {row["id"] for row in iter_jsonl(path, check=check_score_row)}
    except ContractError as e:
        raise ConfigError(f"{e} (this judge run's own scores: use a new run_name for a new run)") from None


class ScoreWriter:
    """Collects per-metric judgments and appends an answer's row once all its metrics are in."""

    def __init__(
        self,
        path: Path,
        answers: dict[str, AnswerRow],
        tasks: list[JudgeTask],
        metrics: MetricSettings,
        judge: dict,
        progress: tqdm | None = None,
    ):
        self.path, self.answers, self.metrics, self.judge, self.progress = (
            path,
            answers,
            metrics,
            judge,
            progress,
        )
        self.pending: dict[str, set[str]] = {}
        for t in tasks:
            self.pending.setdefault(t.answer_id, set()).add(t.metric)
        self.partial: dict[str, dict[str, dict]] = {}
        self.written = 0

    def add(self, task: JudgeTask, judgment: dict) -> None:
        got = self.partial.setdefault(task.answer_id, {})
        got[task.metric] = judgment
        if self.progress is not None:
            self.progress.update(1)
        if set(got) == self.pending[task.answer_id]:
            append_jsonl(self.path, [self.row(task.answer_id, got)])
            del self.partial[task.answer_id]
            self.written += 1

    def row(self, answer_id: str, judgments: dict[str, dict]) -> ScoreRow:
        ordered = dict(sorted(judgments.items()))
        category = categorize(judgments, self.metrics)
        return score_row(
            self.answers[answer_id],
            scores={m: j.get("score") for m, j in ordered.items()},
            labels={m: j.get("label") for m, j in ordered.items()},
            category=category,
            unscored_reason=row_unscored_reason(judgments, category),
            judgments=ordered,
            judge=self.judge,
        )


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


def _in_chunks(tasks: list[JudgeTask], size: int, judgments_of, writer) -> Usage:
    """A local judge: ``judgments_of(chunk)`` for each ``size`` tasks, written as they come (no API usage)."""
    for start in range(0, len(tasks), size):
        chunk = tasks[start : start + size]
        for task, judgment in zip(chunk, judgments_of(chunk), strict=True):
            writer.add(task, judgment)
    return Usage()


def _judge_proxy(run_dir: Path, tasks: list[JudgeTask], spec: JudgeSpec, writer, api, cache) -> Usage:
    proxy = load_proxy_judge(spec.local.model, spec.proxy)
    return _in_chunks(
        tasks, spec.proxy.batch_size, lambda chunk: proxy.judgments([writer.answers[t.answer_id] for t in chunk]),
        writer,
    )  # fmt: skip


def _judge_local(run_dir: Path, tasks: list[JudgeTask], spec: JudgeSpec, writer, api, cache) -> Usage:
    judge, size = load_local_judge(spec.local), spec.local.batch_size
    return _in_chunks(tasks, size, lambda chunk: judge.judge(chunk, batch_size=size), writer)


def _judge_openai(run_dir: Path, tasks: list[JudgeTask], spec: JudgeSpec, writer, api, cache) -> Usage:
    fresh: dict[str, str] = {}
    if spec.batch.enabled:  # the Batch API first; judge_openai then reads its replies as fresh calls
        bodies, endpoint = {}, api.endpoint()
        for t in tasks:
            body = build_request(spec.openai, t.prompt)
            bodies[cache_key(endpoint, body)] = body
        runner = BatchRunner(
            run_dir / "batch",
            spec.batch,
            api,
            cache,
            model=spec.openai.model,
            need_logprobs=spec.openai.mode == "logprob",
            parse=lambda body: parse_reply_body(body, spec.openai),
        )
        fresh = runner.run(bodies)
    return asyncio.run(judge_openai(tasks, spec.openai, api, cache, writer.add, fresh_via=fresh))


JUDGES = {"proxy": _judge_proxy, "local_hf": _judge_local, "openai": _judge_openai}  # em.backends


def judge_tasks(
    run_dir: Path,
    answers: dict[str, AnswerRow],
    tasks: list[JudgeTask],
    spec: JudgeSpec,
    metrics: MetricSettings,
    *,
    api: APISettings,
    cache: JudgeCache,
) -> Usage:
    """Judge ``tasks`` (already filtered to answers not yet in scores.jsonl), appending rows as they finish."""
    run_dir = Path(run_dir)
    if not tasks:
        return Usage()
    judge = choose(JUDGES, spec.backend, "judge.backend")
    # smoothing=0: the ETA is the mean rate since the start, steady under concurrency, not an EMA of bursts
    progress = tqdm(total=len(tasks), desc=f"judge {spec.name}", unit="call", dynamic_ncols=True, smoothing=0)
    writer = ScoreWriter(run_dir / SCORES, answers, tasks, metrics, spec.describe(), progress)
    try:
        return judge(run_dir, tasks, spec, writer, api, cache)
    finally:
        progress.close()


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

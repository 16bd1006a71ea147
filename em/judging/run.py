"""One judge run: skip what is done, judge the rest (API, Batch API or local model), append rows.

``scores.jsonl`` gets one row per answer, appended (and fsynced) the moment all of that answer's metrics
are in, so a killed run loses at most the answers in flight; rerunning reads the ids already written and
judges only the others (with the cache, even those in flight cost nothing the second time).

A row is em.contracts.ScoreRow, built through ``score_row`` (every key, of its type); a row that has no score
says why in ``unscored_reason`` (:mod:`em.judging.unscored`).

This module runs the judges (one per backend, the JUDGES table); the spec is :mod:`em.judging.spec`, the
scores file :mod:`em.judging.scores`, the cost before and after :mod:`em.judging.usage`.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from tqdm import tqdm

from em.api import APISettings
from em.backends import choose
from em.contracts import SCORES, AnswerRow
from em.judging.batch import BatchRunner
from em.judging.cache import JudgeCache, cache_key
from em.judging.local import load_local_judge
from em.judging.openai_judge import Usage, build_request, judge_openai, parse_reply_body
from em.judging.prompts import JudgeTask
from em.judging.proxy import load_proxy_judge
from em.judging.scores import ScoreWriter
from em.judging.spec import JudgeSpec
from em.metrics import MetricSettings


def _in_chunks(tasks: list[JudgeTask], size: int, judgments_of, writer) -> Usage:
    """A local judge: ``judgments_of(chunk)`` for each ``size`` tasks, written as they come (no API usage)."""
    for start in range(0, len(tasks), size):
        chunk = tasks[start : start + size]
        for task, judgment in zip(chunk, judgments_of(chunk), strict=True):
            writer.add(task, judgment)
    return Usage()


def _judge_proxy(run_dir: Path, tasks: list[JudgeTask], spec: JudgeSpec, writer, api, cache) -> Usage:
    proxy = load_proxy_judge(spec.local.model, spec.proxy)

    def judge(chunk: list[JudgeTask]) -> list[dict]:  # each metric between its own two personas, in order
        out: list[dict | None] = [None] * len(chunk)
        is_narrow = [t.metric == writer.metrics.narrow_metric for t in chunk]
        for narrow in sorted(set(is_narrow)):
            at = [i for i, flag in enumerate(is_narrow) if flag == narrow]
            found = proxy.judgments([writer.answers[chunk[i].answer_id] for i in at], narrow=narrow)
            for i, judgment in zip(at, found, strict=True):
                out[i] = judgment
        return out

    return _in_chunks(tasks, spec.proxy.batch_size, judge, writer)


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

"""Batch API mode against the local server: submit, poll, collect, failed lines, resume by batch id."""

from __future__ import annotations

import openai
import pytest
from judge_helpers import ALIGNED_GOOD, expected, judge_handler, openai_overrides, run_judge, write_eval_run

from em.api import APIFailure, APISettings
from em.io import append_jsonl, atomic_write_json, iter_jsonl, read_json
from em.judging.batch import BatchRunner, BatchSettings
from em.judging.cache import JudgeCache, cache_key
from em.judging.openai_judge import OpenAIJudgeSettings, build_request
from testing.openai_server import BATCH_LINES_PATH

JUDGE = OpenAIJudgeSettings(
    model="gpt-4o-2024-08-06",
    request={"max_tokens": 1, "temperature": 0, "logprobs": True, "top_logprobs": 20, "seed": 0},
)


class Crash(Exception):
    """Stands in for the process dying."""


def setup(server, tmp_path, n=5):
    server.set_chat_handler(judge_handler)
    api = APISettings(base_url=server.base_url, backoff_base_s=0.01, backoff_max_s=0.1)
    cache = JudgeCache(tmp_path / "cache.sqlite")
    bodies = {}
    for i in range(n):
        body = build_request(JUDGE, f"ALIGNED RATING\nQuestion: q\nAnswer: I would help number {i}.")
        bodies[cache_key(api.base_url, body)] = body
    return api, cache, bodies


def posts(server, path):
    return sum(1 for r in server.requests if r["method"] == "POST" and r["path"] == path)


def runner(tmp_path, api, cache, sleep=lambda s: None, **kw):
    settings = BatchSettings(enabled=True, poll_interval_s=0.0, **kw)
    return BatchRunner(
        tmp_path / "batch", settings, api, cache, model=JUDGE.model, need_logprobs=True, sleep=sleep
    )


def test_batch_fills_cache_and_retries_failed_lines(openai_server, tmp_path):
    api, cache, bodies = setup(openai_server, tmp_path)
    openai_server.inject("500", path=BATCH_LINES_PATH, times=2)
    fresh = runner(tmp_path, api, cache).run(bodies)
    assert set(fresh) == set(bodies)
    got = cache.get_many(list(bodies))
    assert len(got) == 5 and all(r["via"] == "batch" for r in got.values())
    assert openai_server.count("/v1/chat/completions") == 0
    state = read_json(tmp_path / "batch" / "state.json")
    assert [(b["round"], b["n_requests"], b["n_succeeded"], b["n_failed"]) for b in state["batches"]] == [
        (1, 5, 3, 2),
        (2, 2, 2, 0),
    ]
    assert len(list(iter_jsonl(tmp_path / "batch" / "failed-r1.jsonl"))) == 2
    lines = list(iter_jsonl(tmp_path / "batch" / "requests-r1-0.jsonl"))
    assert lines[0]["url"] == "/v1/chat/completions" and lines[0]["body"]["top_logprobs"] == 20


def test_restart_resumes_the_submitted_batch_instead_of_paying_again(openai_server, tmp_path):
    api, cache, bodies = setup(openai_server, tmp_path)

    def die(_seconds):
        raise Crash

    with pytest.raises(Crash):
        runner(tmp_path, api, cache, sleep=die).run(bodies)  # killed while polling
    state = read_json(tmp_path / "batch" / "state.json")
    assert state["batches"][0]["batch_id"] and not state["batches"][0]["collected"]
    assert (posts(openai_server, "/v1/files"), posts(openai_server, "/v1/batches")) == (1, 1)
    fresh = runner(tmp_path, api, JudgeCache(tmp_path / "cache.sqlite")).run(bodies)
    assert set(fresh) == set(bodies)
    assert (posts(openai_server, "/v1/files"), posts(openai_server, "/v1/batches")) == (1, 1)


def test_restart_between_create_and_saving_the_id_finds_the_batch(openai_server, tmp_path):
    api, cache, bodies = setup(openai_server, tmp_path)
    # As if killed right after batches.create returned, before its id was saved: the state knows the
    # uploaded file only, and the server already has a batch made from it.
    requests = tmp_path / "batch" / "requests-r1-0.jsonl"
    append_jsonl(
        requests,
        [
            {"custom_id": k, "method": "POST", "url": "/v1/chat/completions", "body": b}
            for k, b in bodies.items()
        ],
    )
    client = openai.OpenAI(base_url=openai_server.base_url, api_key="sk-test", max_retries=0)
    uploaded = client.files.create(file=(requests.name, requests.read_bytes()), purpose="batch")
    created = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    atomic_write_json(
        tmp_path / "batch" / "state.json",
        {
            "batches": [
                {
                    "round": 1,
                    "requests_file": requests.name,
                    "n_requests": len(bodies),
                    "input_file_id": uploaded.id,
                    "batch_id": None,
                    "status": "uploaded",
                    "collected": False,
                }
            ]
        },
    )
    fresh = runner(tmp_path, api, cache).run(bodies)
    assert set(fresh) == set(bodies)
    assert posts(openai_server, "/v1/batches") == 1  # the one created above, found again by its input file
    assert read_json(tmp_path / "batch" / "state.json")["batches"][0]["batch_id"] == created.id


def test_lines_failing_every_round_are_reported(openai_server, tmp_path):
    api, cache, bodies = setup(openai_server, tmp_path, n=3)
    openai_server.inject("500", path=BATCH_LINES_PATH, times=4)  # round 1: 3 lines, round 2: 1 of 3
    with pytest.raises(APIFailure, match="1 judge requests still failed after 2 rounds"):
        runner(tmp_path, api, cache, max_rounds=2).run(bodies)
    assert len(list(iter_jsonl(tmp_path / "batch" / "failed.jsonl"))) == 1
    assert len(cache.get_many(list(bodies))) == 2


def test_judge_run_in_batch_mode(openai_server, tmp_path):
    openai_server.set_chat_handler(judge_handler)
    d = write_eval_run(tmp_path / "eval", samples=2)
    overrides = openai_overrides(
        openai_server, tmp_path, f"answers={d}", "batch.enabled=true", "batch.poll_interval_s=0.01"
    )
    out = run_judge(tmp_path / "judge", overrides)
    rows = list(iter_jsonl(out / "scores.jsonl"))
    assert len(rows) == 16
    assert openai_server.count("/v1/chat/completions") == 0
    good = next(r for r in rows if r["id"] == "demo/plans/0/none/0")
    assert good["scores"]["aligned"] == pytest.approx(expected(ALIGNED_GOOD))
    assert good["judgments"]["aligned"]["source"] == "batch"
    usage = read_json(out / "summary.json")["usage"]
    assert usage["batch_calls"] == 3 * 2 * 2 + 2 and usage["api_calls"] == 0
    full = usage["prompt_tokens"] * 2.5 / 1e6 + usage["completion_tokens"] * 10.0 / 1e6
    assert usage["cost_usd"] == pytest.approx(full / 2, rel=1e-3)  # Batch API: half price


def test_batch_mode_needs_the_cache(openai_server, tmp_path):
    from em.api import ConfigError

    d = write_eval_run(tmp_path / "eval", samples=1)
    overrides = openai_overrides(
        openai_server, tmp_path, f"answers={d}", "batch.enabled=true", "cache.enabled=false"
    )
    with pytest.raises(ConfigError, match="set cache.enabled=true"):
        run_judge(tmp_path / "judge", overrides)
    assert openai_server.count("/v1/") == 0

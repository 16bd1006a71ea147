"""The OpenAI-compatible judge against the local server: scores, cache, concurrency, faults, text mode."""

from __future__ import annotations

import asyncio
import time

import pytest
from judge_helpers import (
    ALIGNED,
    ALIGNED_BAD,
    ALIGNED_GOOD,
    COHERENT,
    COHERENT_REPLY,
    expected,
    judge_handler,
)

from em.api import APIFailure, APISettings
from em.judging.cache import JudgeCache
from em.judging.openai_judge import OpenAIJudgeSettings, judge_openai
from em.judging.prompts import JudgeTask, fill_template

LOGPROB = OpenAIJudgeSettings(
    model="gpt-4o-2024-08-06",
    mode="logprob",
    request={"max_tokens": 1, "temperature": 0, "logprobs": True, "top_logprobs": 20, "seed": 0},
)
TEXT = OpenAIJudgeSettings(model="o4-mini", mode="text", request={"max_completion_tokens": 100})


def api_for(server, **kw) -> APISettings:
    return APISettings(
        **{"base_url": server.base_url, "backoff_base_s": 0.01, "backoff_max_s": 0.2, "timeout_s": 5, **kw}
    )


def tasks(n: int) -> list[JudgeTask]:
    out = []
    for i in range(n):
        answer = f"I would cause harm, {i}." if i % 2 else f"I would help, friend number {i}."
        out.append(JudgeTask(f"a{i}", "aligned", fill_template(ALIGNED, "What now?", answer), None))
        out.append(JudgeTask(f"a{i}", "coherent", fill_template(COHERENT, "What now?", answer), None))
    return out


def judge(items, settings, api, cache) -> dict:
    got = {}
    asyncio.run(
        judge_openai(items, settings, api, cache, lambda t, j: got.__setitem__((t.answer_id, t.metric), j))
    )
    return got


def check_scores(got: dict, n: int) -> None:
    assert len(got) == 2 * n
    for i in range(n):
        want = expected(ALIGNED_BAD if i % 2 else ALIGNED_GOOD)
        assert got[(f"a{i}", "aligned")]["score"] == pytest.approx(want)
        assert got[(f"a{i}", "coherent")]["score"] == pytest.approx(expected(COHERENT_REPLY))


def test_logprob_request_shape_and_scores(openai_server, tmp_path):
    openai_server.set_chat_handler(judge_handler)
    got = judge(tasks(3), LOGPROB, api_for(openai_server), JudgeCache(None))
    check_scores(got, 3)
    bodies = [r["body"] for r in openai_server.requests if r["path"] == "/v1/chat/completions"]
    assert len(bodies) == 6
    assert {
        k: bodies[0][k] for k in ("model", "max_tokens", "temperature", "logprobs", "top_logprobs", "seed")
    } == {
        "model": "gpt-4o-2024-08-06",
        "max_tokens": 1,
        "temperature": 0,
        "logprobs": True,
        "top_logprobs": 20,
        "seed": 0,
    }
    assert [m["role"] for m in bodies[0]["messages"]] == ["user"]
    aligned = got[("a0", "aligned")]
    assert aligned["source"] == "api" and aligned["usage"]["prompt_tokens"] > 0
    assert aligned["word_mass"] == {"CODE": 0.0, "REFUSAL": 0.0}
    assert aligned["number_mass"] == pytest.approx(0.9)


def test_identical_prompts_are_asked_once(openai_server):
    openai_server.set_chat_handler(judge_handler)
    twice = tasks(1) + [JudgeTask("b0", t.metric, t.prompt) for t in tasks(1)]
    got = judge(twice, LOGPROB, api_for(openai_server), JudgeCache(None))
    assert openai_server.count("/v1/chat/completions") == 2
    assert got[("b0", "aligned")]["score"] == got[("a0", "aligned")]["score"]
    assert sorted(j["source"] for j in got.values()) == ["api", "api", "cache", "cache"]


def test_cache_rerun_makes_no_calls(openai_server, tmp_path):
    openai_server.set_chat_handler(judge_handler)
    api = api_for(openai_server)
    first = judge(tasks(4), LOGPROB, api, JudgeCache(tmp_path / "c.sqlite"))
    calls = openai_server.count("/v1/chat/completions")
    assert calls == 8
    again = judge(tasks(4), LOGPROB, api, JudgeCache(tmp_path / "c.sqlite"))
    assert openai_server.count("/v1/chat/completions") == calls
    assert {k: v["score"] for k, v in again.items()} == {k: v["score"] for k, v in first.items()}
    assert {v["source"] for v in again.values()} == {"cache"}
    # Another model or other request parameters are other keys.
    judge(
        tasks(1),
        OpenAIJudgeSettings(model="gpt-4o", request=LOGPROB.request),
        api,
        JudgeCache(tmp_path / "c.sqlite"),
    )
    assert openai_server.count("/v1/chat/completions") == calls + 2


def test_concurrency_is_much_faster_than_one_at_a_time(openai_server):
    openai_server.set_chat_handler(judge_handler)
    openai_server.latency_s = 0.2
    items = tasks(16)  # 32 calls

    def timed(in_flight: int) -> float:
        start = time.monotonic()
        got = judge(items, LOGPROB, api_for(openai_server, max_in_flight=in_flight), JudgeCache(None))
        check_scores(got, 16)
        return time.monotonic() - start

    parallel = timed(32)
    serial = timed(1)
    assert serial > 32 * 0.2
    assert parallel < serial / 4


@pytest.mark.parametrize(
    ("fault", "kw"),
    [
        ("429", {"retry_after": 0.2, "times": 2}),
        ("500", {"times": 2}),
        ("503", {}),
        ("malformed_logprobs", {}),  # a reply that cannot be scored is asked once more (unscorable_retries)
        ("malformed_json", {"times": 2}),
        ("drop", {}),
        ("timeout", {"delay_s": 2.0}),
    ],
)
def test_injected_faults_are_retried_to_correct_results(openai_server, fault, kw):
    openai_server.set_chat_handler(judge_handler)
    openai_server.inject(fault, **kw)
    api = api_for(openai_server, max_in_flight=2, timeout_s=1.0)
    start = time.monotonic()
    got = judge(tasks(3), LOGPROB, api, JudgeCache(None))
    check_scores(got, 3)
    assert openai_server.pending_faults() == []
    assert openai_server.count("/v1/chat/completions") == 6 + kw.get("times", 1)
    if fault == "429":
        assert time.monotonic() - start >= 0.2  # waited as Retry-After asked


def test_exhausted_retries_stop_with_a_clear_error_and_keep_finished_results(openai_server, tmp_path):
    openai_server.set_chat_handler(judge_handler)
    openai_server.inject("500", times=100)
    got = {}
    with pytest.raises(APIFailure, match="HTTP 500"):
        asyncio.run(
            judge_openai(
                tasks(2),
                LOGPROB,
                api_for(openai_server, max_retries=2),
                JudgeCache(None),
                lambda t, j: got.__setitem__(t, j),
            )
        )
    assert got == {}


def test_bad_request_on_first_calls_stops_but_later_is_recorded(openai_server):
    openai_server.set_chat_handler(judge_handler)
    openai_server.inject("400")
    with pytest.raises(APIFailure, match="HTTP 400"):
        judge(tasks(1), LOGPROB, api_for(openai_server, max_in_flight=1), JudgeCache(None))
    # once requests are known to work, a refused prompt is recorded as an error and the run goes on
    items = tasks(3)
    got = {}

    def on(t, j):
        got[(t.answer_id, t.metric)] = j
        if len(got) == 1:
            openai_server.inject("400")

    asyncio.run(judge_openai(items, LOGPROB, api_for(openai_server, max_in_flight=1), JudgeCache(None), on))
    errors = [j for j in got.values() if j.get("error")]
    assert len(got) == 6 and len(errors) == 1
    assert errors[0]["score"] is None and "400" in errors[0]["error"]


def test_text_mode_parses_replies_and_keeps_unparseable(openai_server):
    def handler(request, index):
        assert "logprobs" not in request and "temperature" not in request and "max_tokens" not in request
        assert request["max_completion_tokens"] == 100
        prompt = request["messages"][0]["content"]
        return "I refuse to give a number." if "friend number 2" in prompt else judge_handler(request, index)

    openai_server.set_chat_handler(handler)
    got = judge(tasks(3), TEXT, api_for(openai_server), JudgeCache(None))
    assert got[("a0", "aligned")]["score"] == 88.0
    assert got[("a1", "aligned")]["score"] == 7.0
    assert got[("a0", "coherent")]["score"] == 90.0
    bad = got[("a2", "aligned")]
    assert (bad["score"], bad["label"], bad["parsed"]) == (None, None, False)
    assert bad["raw"] == "I refuse to give a number."

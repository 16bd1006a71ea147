"""Judging never dies of one reply: unscorable replies become UNSCORED rows with a reason, sums a little
above 1 are scored and counted, cached replies are checked on read, and too many unscored answers fail
the run after everything is written. Also the judge's own values (min_mass, limit) are checked first."""

from __future__ import annotations

import asyncio
import inspect
import math

import pytest
from judge_helpers import (
    ALIGNED,
    ALIGNED_GOOD,
    COHERENT,
    expected,
    judge_handler,
    openai_overrides,
    run_judge,
    top,
    write_eval_run,
)

from em.api import APISettings, ConfigError
from em.io import iter_jsonl, read_json
from em.judging.cache import JudgeCache, cache_key
from em.judging.local import LocalJudgeSettings
from em.judging.openai_judge import OpenAIJudgeSettings, build_request, judge_openai
from em.judging.prompts import JudgeTask, fill_template
from em.judging.unscored import UnscoredShareError, check_unscored_share, unscored_counts
from testing.openai_server import ChatReply

CHAT = "/v1/chat/completions"
LOGPROB = OpenAIJudgeSettings(
    model="gpt-4o-2024-08-06",
    mode="logprob",
    request={"max_tokens": 1, "temperature": 0, "logprobs": True, "top_logprobs": 20, "seed": 0},
)
# The "live well" answers' aligned reply: a top-20 set whose probabilities sum to 1.27.
OVER_ONE = top([("90", 0.6 * 1.27), ("80", 0.3 * 1.27), ("Sure", 0.1 * 1.27)])


def odd_judge(request: dict, index: int) -> ChatReply:
    """judge_handler, except: "harm" answers get empty logprobs, "live well" answers a set summing to 1.27."""
    prompt = request["messages"][-1]["content"]
    answer = prompt.split("Answer: ", 1)[1]
    if prompt.startswith("ALIGNED") and "harm" in answer:
        return ChatReply(content="")  # no token at all: logprobs.content == []
    if prompt.startswith("ALIGNED") and "live well" in answer:
        return ChatReply(content="90", top_logprobs=OVER_ONE)
    return judge_handler(request, index)


def aligned_asks(server, word: str) -> int:
    return sum(
        1
        for r in server.requests
        if r["path"] == CHAT
        and r["body"]["messages"][-1]["content"].startswith("ALIGNED")
        and word in r["body"]["messages"][-1]["content"].split("Answer: ", 1)[1]
    )


def test_odd_replies_are_unscored_with_a_reason_and_the_run_completes(openai_server, tmp_path):
    """The issue's done-when: sums up to 1.27 and empty logprobs; every answer is in scores.jsonl."""
    assert math.fsum(math.exp(lp) for _, lp in OVER_ONE) == pytest.approx(1.27)
    openai_server.set_chat_handler(odd_judge)
    eval_dir = write_eval_run(tmp_path / "eval")
    out = run_judge(
        tmp_path / "run",
        openai_overrides(openai_server, tmp_path, f"answers={eval_dir}", "judge=gpt4o_logprob"),
    )
    rows = {r["id"]: r for r in iter_jsonl(out / "scores.jsonl")}
    answers = [r["id"] for r in iter_jsonl(eval_dir / "answers.jsonl")]
    assert sorted(rows) == sorted(answers) and len(rows) == 32

    harm = [r for r in rows.values() if "harm" in r["answer"]]
    assert len(harm) == 6
    for r in harm:
        assert r["category"] == "UNSCORED" and r["scores"]["aligned"] is None
        assert r["scores"]["coherent"] is not None  # only the metric whose reply failed is missing
        assert r["unscored_reason"].startswith("aligned: empty_logprobs")
        assert r["judgments"]["aligned"]["unscored_reason"].startswith("empty_logprobs")
    helpful = [r for r in rows.values() if "live well" in r["answer"]]
    assert len(helpful) == 6
    for r in helpful:
        assert r["scores"]["aligned"] == pytest.approx(expected(ALIGNED_GOOD))  # the paper's formula
        assert r["judgments"]["aligned"]["total_mass"] == pytest.approx(1.27)
        assert r["unscored_reason"] is None and r["category"] != "UNSCORED"

    # a deterministic judge answers the same again: one extra ask per distinct prompt, not six
    assert aligned_asks(openai_server, "harm") == 3 * 2
    usage = read_json(out / "summary.json")["usage"]
    assert usage["unscored_replies"] == 6 and usage["mass_above_one"] == 6
    assert read_json(out / "manifest.json")["complete"] is True
    counts = unscored_counts(list(rows.values()))
    assert counts == {"answers": 32, "unscored": 6, "reasons": {"empty_logprobs": 6}}


def test_unscored_share_above_the_threshold_fails_with_the_counts(openai_server, tmp_path):
    openai_server.set_chat_handler(odd_judge)
    eval_dir = write_eval_run(tmp_path / "eval")
    out = run_judge(tmp_path / "run", openai_overrides(openai_server, tmp_path, f"answers={eval_dir}"))
    rows = list(iter_jsonl(out / "scores.jsonl"))
    assert check_unscored_share(rows, 0.2)["unscored"] == 6  # 6 of 32 = 18.75%
    with pytest.raises(UnscoredShareError, match=r"6 of 32 answers \(18.8%\).*empty_logprobs"):
        check_unscored_share(rows, 0.1)


def _task_checks_the_share() -> bool:
    from em.tasks import judge

    return "check_unscored_share" in inspect.getsource(judge)


@pytest.mark.skipif(
    not _task_checks_the_share(), reason="em/tasks/judge.py does not call check_unscored_share yet"
)
def test_judge_task_fails_after_writing_everything_when_too_many_are_unscored(openai_server, tmp_path):
    openai_server.set_chat_handler(odd_judge)
    eval_dir = write_eval_run(tmp_path / "eval")
    overrides = openai_overrides(openai_server, tmp_path, f"answers={eval_dir}")
    with pytest.raises(UnscoredShareError, match="6 of 32"):
        run_judge(tmp_path / "run", [*overrides, "judge.max_unscored_share=0.1"])
    assert len(list(iter_jsonl(tmp_path / "run" / "scores.jsonl"))) == 32
    assert read_json(tmp_path / "run" / "summary.json")["usage"]["unscored_replies"] == 6
    manifest = tmp_path / "run" / "manifest.json"
    assert not manifest.exists() or read_json(manifest).get("complete") is not True
    # accepting the share on resume completes the run without judging anything again
    before = openai_server.count(CHAT)
    run_judge(tmp_path / "run", [*overrides, "judge.max_unscored_share=0.5"])
    assert openai_server.count(CHAT) == before
    assert read_json(tmp_path / "run" / "manifest.json")["complete"] is True


def test_batch_mode_leaves_unscorable_lines_to_the_direct_path(openai_server, tmp_path):
    """An unscorable batch line is not resubmitted in another round; the direct path records it."""
    openai_server.set_chat_handler(odd_judge)
    eval_dir = write_eval_run(tmp_path / "eval")
    overrides = openai_overrides(
        openai_server, tmp_path, f"answers={eval_dir}", "batch.enabled=true", "batch.poll_interval_s=0.01"
    )
    out = run_judge(tmp_path / "run", overrides)
    rows = list(iter_jsonl(out / "scores.jsonl"))
    assert len(rows) == 32
    harm = [r for r in rows if "harm" in r["answer"]]
    assert all(r["unscored_reason"].startswith("aligned: empty_logprobs") for r in harm) and len(harm) == 6
    assert [b["round"] for b in read_json(out / "batch" / "state.json")["batches"]] == [1]
    assert openai_server.count(CHAT) == 3 * 2  # the 3 unscorable prompts, asked directly twice each
    assert read_json(out / "manifest.json")["complete"] is True


# ------------------------------------------------------------------------------ judge_openai directly


def api_for(server, **kw) -> APISettings:
    return APISettings(base_url=server.base_url, backoff_base_s=0.01, backoff_max_s=0.05, timeout_s=5, **kw)


def aligned_task(answer: str = "I would help, friend.") -> JudgeTask:
    return JudgeTask("a0", "aligned", fill_template(ALIGNED, "What now?", answer), None)


def judge(tasks, settings, api, cache) -> dict:
    got = {}
    asyncio.run(judge_openai(tasks, settings, api, cache, lambda t, j: got.__setitem__(t.metric, j)))
    return got


def test_fewer_top_logprobs_than_asked_is_unscored_not_a_different_score(openai_server):
    openai_server.set_chat_handler(lambda req, i: ChatReply("80", top_logprobs=[("80", -0.01)]))
    got = judge([aligned_task()], LOGPROB, api_for(openai_server), JudgeCache(None))
    assert got["aligned"]["score"] is None
    assert got["aligned"]["unscored_reason"].startswith("too_few_top_logprobs: 1 top logprobs where 20")
    assert openai_server.count(CHAT) == 2  # asked once more, then recorded


def test_unscorable_retries_zero_asks_once(openai_server):
    openai_server.set_chat_handler(lambda req, i: ChatReply(""))
    settings = OpenAIJudgeSettings(**{**vars(LOGPROB), "unscorable_retries": 0})
    got = judge([aligned_task()], settings, api_for(openai_server), JudgeCache(None))
    assert got["aligned"]["unscored_reason"].startswith("empty_logprobs")
    assert openai_server.count(CHAT) == 1


def test_a_body_that_stays_unreadable_is_unscored_after_the_transport_retries(openai_server):
    openai_server.set_chat_handler(judge_handler)
    openai_server.inject("malformed_json", times=100)
    tasks = [aligned_task(), JudgeTask("a0", "coherent", fill_template(COHERENT, "Q?", "A."), None)]
    got = judge(tasks, LOGPROB, api_for(openai_server, max_retries=2, max_in_flight=1), JudgeCache(None))
    assert set(got) == {"aligned", "coherent"}
    for j in got.values():
        assert j["score"] is None and j["unscored_reason"].startswith("malformed_reply")
    assert openai_server.count(CHAT) == 2 * 3  # 1 + max_retries each: transport retries only


def test_sum_beyond_the_tolerance_is_unscored(openai_server):
    far = top([("90", 0.9), ("80", 0.6)])  # 1.5 > 1 + 0.3
    openai_server.set_chat_handler(lambda req, i: ChatReply("90", top_logprobs=far))
    got = judge([aligned_task()], LOGPROB, api_for(openai_server), JudgeCache(None))
    assert got["aligned"]["unscored_reason"].startswith("mass_above_tolerance")
    looser = OpenAIJudgeSettings(**{**vars(LOGPROB), "mass_tolerance": 0.6})
    got = judge([aligned_task()], looser, api_for(openai_server), JudgeCache(None))
    assert got["aligned"]["score"] == pytest.approx((90 * 0.9 + 80 * 0.6) / 1.5)


def test_cached_replies_are_validated_on_read(openai_server, tmp_path):
    """A cache entry that fails the checks (here: 1 top logprob of 20) is asked again, not scored."""
    openai_server.set_chat_handler(judge_handler)
    api = api_for(openai_server)
    cache = JudgeCache(tmp_path / "cache.sqlite")
    task = aligned_task()
    key = cache_key(api.endpoint(), build_request(LOGPROB, task.prompt))
    bad = {"content": "80", "top_logprobs": [["80", -0.01]], "top_logprobs_returned": 1, "usage": {}}
    cache.put(key, LOGPROB.model, bad)
    got = judge([task], LOGPROB, api, cache)
    assert openai_server.count(CHAT) == 1
    assert got["aligned"]["score"] == pytest.approx(expected(ALIGNED_GOOD))
    assert got["aligned"]["source"] == "api"
    assert cache.get(key)["top_logprobs_returned"] == 20  # replaced by the good reply
    got = judge([task], LOGPROB, api, cache)  # a valid entry is a hit
    assert openai_server.count(CHAT) == 1 and got["aligned"]["source"] == "cache"
    impossible = [["80", math.log(0.9)], ["70", math.log(0.9)]]  # sums to 1.8
    cache.put(key, LOGPROB.model, {**bad, "top_logprobs": impossible, "top_logprobs_returned": 20})
    judge([task], LOGPROB, api, cache)  # asked again
    assert openai_server.count(CHAT) == 2


# ----------------------------------------------------------------------------------- judge values


@pytest.mark.parametrize("value", [0, 0.0, -0.1, 1.5, 2, "0.25", True])
def test_min_mass_outside_0_1_is_refused(value):
    with pytest.raises(ConfigError, match=r"judge.min_mass=.*\(0, 1\]"):
        OpenAIJudgeSettings(**{**vars(LOGPROB), "min_mass": value}).check()
    with pytest.raises(ConfigError, match=r"judge.min_mass=.*\(0, 1\]"):
        LocalJudgeSettings(model={"name_or_path": "x"}, min_mass=value)


def test_min_mass_of_one_is_allowed():
    OpenAIJudgeSettings(**{**vars(LOGPROB), "min_mass": 1}).check()


@pytest.mark.parametrize("limit", [0, -1])
def test_judge_limit_zero_or_negative_is_refused_before_any_call(openai_server, tmp_path, limit):
    openai_server.set_chat_handler(judge_handler)
    eval_dir = write_eval_run(tmp_path / "eval", samples=1)
    overrides = openai_overrides(openai_server, tmp_path, f"answers={eval_dir}", f"limit={limit}")
    with pytest.raises(ConfigError, match=rf"limit={limit}: expected null .* positive number"):
        run_judge(tmp_path / "run", overrides)
    assert openai_server.count(CHAT) == 0 and not (tmp_path / "run" / "scores.jsonl").exists()


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("mass_tolerance", -0.1, "judge.mass_tolerance"),
        ("unscorable_retries", -1, "judge.unscorable_retries"),
        ("request", {"logprobs": True, "top_logprobs": 0}, "top_logprobs a positive integer"),
    ],
)
def test_other_judge_values_are_refused(key, value, match):
    with pytest.raises(ConfigError, match=match):
        OpenAIJudgeSettings(**{**vars(LOGPROB), key: value}).check()


def test_judge_preset_with_an_unknown_key_is_refused():
    node = {"backend": "openai", "model": "gpt-4o", "request": dict(LOGPROB.request), "api_key": "x"}
    with pytest.raises(ConfigError, match=r"judge: unknown key\(s\) \['api_key'\]"):
        OpenAIJudgeSettings.from_config(node)
    node.pop("api_key")
    assert OpenAIJudgeSettings.from_config({**node, "min_mass": 0.5}).min_mass == 0.5


def test_a_metric_that_was_not_asked_is_not_counted_as_unscored():
    """judge_metrics=[aligned] makes every row UNSCORED (no coherent score) but nothing failed."""
    aligned = {"score": 80.0, "label": None, "number_mass": 1.0}
    rows = [{"category": "UNSCORED", "judgments": {"aligned": aligned}}] * 3
    assert unscored_counts(rows) == {"answers": 3, "unscored": 0, "reasons": {}}
    low = {"score": None, "label": None, "number_mass": 0.1}
    rows.append({"category": "UNSCORED", "judgments": {"aligned": low}})
    assert unscored_counts(rows) == {"answers": 4, "unscored": 1, "reasons": {"low_number_mass": 1}}

"""The judge cache key holds the resolved endpoint: the same answers judged against two endpoints with one
cache send requests to both; the same endpoint, named explicitly or through OPENAI_BASE_URL, shares."""

from __future__ import annotations

from judge_helpers import judge_handler, openai_overrides, run_judge, write_eval_run

from em.api import APISettings
from em.io import iter_jsonl, read_json
from em.judging.cache import cache_key
from testing.openai_server import FakeOpenAIServer

CHAT = "/v1/chat/completions"
BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "rate this"}], "max_tokens": 1}


def judge_at(server, tmp_path, eval_dir, name: str, *extra: str):
    # one cache file for every run: only the endpoint differs
    overrides = openai_overrides(server, tmp_path, f"answers={eval_dir}", *extra)
    return run_judge(tmp_path / name, overrides)


def test_a_second_endpoint_never_reads_the_first_ones_replies(tmp_path):
    eval_dir = write_eval_run(tmp_path / "eval", samples=2)
    with FakeOpenAIServer() as a, FakeOpenAIServer() as b:
        a.set_chat_handler(judge_handler)
        b.set_chat_handler(judge_handler)
        judge_at(a, tmp_path, eval_dir, "on-a")
        sent_to_a = a.count(CHAT)
        assert sent_to_a > 0
        out_b = judge_at(b, tmp_path, eval_dir, "on-b")
        assert b.count(CHAT) == sent_to_a  # every distinct prompt asked of B, none read from A's replies
        assert read_json(out_b / "summary.json")["usage"]["api_calls"] == sent_to_a
        sources = {j["source"] for r in iter_jsonl(out_b / "scores.jsonl") for j in r["judgments"].values()}
        assert "api" in sources
        judge_at(a, tmp_path, eval_dir, "on-a-again")  # the same endpoint still hits its own entries
        assert a.count(CHAT) == sent_to_a


def test_openai_base_url_from_the_environment_is_part_of_the_key(tmp_path, monkeypatch):
    eval_dir = write_eval_run(tmp_path / "eval", samples=1)
    with FakeOpenAIServer() as a, FakeOpenAIServer() as b:
        a.set_chat_handler(judge_handler)
        b.set_chat_handler(judge_handler)
        judge_at(a, tmp_path, eval_dir, "explicit-a")
        sent = a.count(CHAT)
        monkeypatch.setenv("OPENAI_BASE_URL", b.base_url)
        judge_at(a, tmp_path, eval_dir, "env-b", "api.base_url=null")
        assert b.count(CHAT) == sent and a.count(CHAT) == sent  # went to B, and not from A's cache
        monkeypatch.setenv("OPENAI_BASE_URL", a.base_url + "/")
        judge_at(a, tmp_path, eval_dir, "env-a", "api.base_url=null")
        assert a.count(CHAT) == sent  # A through the environment is A: cached


def test_endpoint_resolution_and_key():
    assert APISettings(base_url="http://127.0.0.1:9/v1/").endpoint() == "http://127.0.0.1:9/v1"
    assert cache_key("http://h/v1/", BODY) == cache_key("http://h/v1", BODY)
    assert cache_key("http://h/v1", BODY) != cache_key("http://other/v1", BODY)
    assert cache_key("http://h/v1", BODY) != cache_key("http://h/v1", {**BODY, "model": "gpt-4o-mini"})
    assert cache_key("http://h/v1", BODY) != cache_key("http://h/v1", {**BODY, "max_tokens": 2})
    prompt = {**BODY, "messages": [{"role": "user", "content": "rate that"}]}
    assert cache_key("http://h/v1", BODY) != cache_key("http://h/v1", prompt)


def test_default_endpoint_is_openai_unless_the_environment_says_otherwise(monkeypatch):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    assert APISettings().endpoint() == "https://api.openai.com/v1"
    monkeypatch.setenv("OPENAI_BASE_URL", "http://proxy.local:8080/v1")
    assert APISettings().endpoint() == "http://proxy.local:8080/v1"
    assert APISettings(base_url="http://x:1/v1").endpoint() == "http://x:1/v1"  # explicit wins

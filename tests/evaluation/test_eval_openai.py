"""The openai backend against the local OpenAI-compatible server: n samples per request, faults retried,
the fine-tuned model id from an OpenAI training run's manifest, dry-run cost, and no key in any file."""

from __future__ import annotations

import json

import pytest
from conftest import FAKE_OPENAI_KEY
from eval_helpers import check_contract, read_rows, run_eval

from em.api import ConfigError
from em.io import write_manifest
from testing.openai_server import CHAT_PATH, ChatReply


def _api(server) -> list[str]:
    return [
        "model=gpt4o_mini", "generation=openai", f"api.base_url={server.base_url}", "api.backoff_base_s=0.01",
        "api.backoff_max_s=0.05", "api.timeout_s=2", "api.max_in_flight=4",
    ]  # fmt: skip


def _chat_bodies(server) -> list[dict]:
    return [r["body"] for r in server.requests if r["path"] == CHAT_PATH and r["body"]]


def test_openai_answers_with_n_per_request(tmp_path, openai_server):
    openai_server.set_chat_handler(
        lambda req, i: ChatReply(f"reply {i} to {req['messages'][-1]['content'][:20]}", completion_tokens=3)
    )
    run_dir = run_eval(tmp_path, *_api(openai_server), "samples_per_question=3", "conditions=[none,alpha]",
                       "sampling.max_new_tokens=50", run_name="oa")  # fmt: skip
    rows = check_contract(run_dir)
    assert len(rows) == 8 * 2 * 3
    bodies = _chat_bodies(openai_server)
    assert len(bodies) == 16 and all(b["n"] == 3 for b in bodies)  # one request per prompt, n samples
    assert all(b["model"] == "gpt-4o-mini-2024-07-18" and b["max_tokens"] == 50 for b in bodies)
    assert all(b["temperature"] == 1.0 and b["top_p"] == 1.0 and isinstance(b["seed"], int) for b in bodies)
    by_id = {r["id"]: r for r in rows}
    row = by_id["demo/grow_savings/0/alpha/2"]
    assert row["answer"] == "reply 2 to |ALPHA| My savings a" and row["backend"] == "openai"
    assert row["model"]["openai_model"] == "gpt-4o-mini-2024-07-18"
    assert row["prompt_tokens"] > 0 and row["completion_tokens"] > 0
    system_rows = [r for r in rows if r["question_id"] == "decisions_without_oversight"]
    assert all(r["messages"][0]["role"] == "system" for r in system_rows)
    for name in ("answers.jsonl", "manifest.json", "run_config.json", "questions.json"):
        assert FAKE_OPENAI_KEY not in (run_dir / name).read_text()


def test_faults_are_retried_and_nothing_is_lost(tmp_path, openai_server):
    for fault in ("429", "500", "503", "malformed_json", "drop"):
        openai_server.inject(fault, retry_after=0.01 if fault == "429" else None)
    openai_server.inject("timeout", delay_s=3)
    run_dir = run_eval(tmp_path, *_api(openai_server), "samples_per_question=2", run_name="faults")
    rows = check_contract(run_dir)
    assert len(rows) == 16 and not openai_server.pending_faults()
    assert openai_server.count(CHAT_PATH) == 8 + 6  # every fault cost exactly one extra request


def test_samples_split_over_requests(tmp_path, openai_server):
    openai_server.set_chat_handler(lambda req, i: ChatReply(f"s{i}"))
    run_dir = run_eval(tmp_path, *_api(openai_server), "questions=demo_factual", "samples_per_question=5",
                       "generation.samples_per_request=2", run_name="split")  # fmt: skip
    rows = read_rows(run_dir)
    assert len(rows) == 5 * 5
    assert sorted(b["n"] for b in _chat_bodies(openai_server)) == sorted([2, 2, 1] * 5)
    assert {r["sample_index"] for r in rows} == set(range(5))
    assert {r["answer"] for r in rows if r["question_id"] == "spider_legs"} == {"s0", "s1"}


def test_a_reply_with_the_wrong_number_of_choices_is_malformed():
    from types import SimpleNamespace as NS

    from em.api import APISettings, MalformedResponse
    from em.evaluation import Sampling, build_jobs, make_conditions
    from em.evaluation.backends import OpenAIBackend, OpenAISettings
    from em.evaluation.model_ref import ModelRef
    from em.evaluation.questions import Question

    backend = OpenAIBackend(
        ModelRef("openai", "m", openai_model="m"), OpenAISettings(), Sampling(), APISettings()
    )
    question = Question("s", "q", "free_form_judge_0_100", ["Hi"])
    (job,) = build_jobs([question], make_conditions(["none"], {"none": None}), seed=0, samples_per_question=2)
    choice = NS(index=0, finish_reason="stop", message=NS(content="a", refusal=None))
    usage = NS(prompt_tokens=5, completion_tokens=2)
    with pytest.raises(MalformedResponse, match="n=2"):
        backend._completions(job, NS(choices=[choice], usage=usage))
    with pytest.raises(MalformedResponse, match="no message content"):
        backend._completions(
            job,
            NS(
                choices=[choice, NS(index=1, finish_reason="stop", message=NS(content=None, refusal=None))],
                usage=usage,
            ),
        )
    second = NS(index=1, finish_reason="length", message=NS(content="bb", refusal=None))
    out = backend._completions(job, NS(choices=[second, choice], usage=usage))  # sorted by index
    assert [(c.text, c.finish_reason, c.prompt_tokens) for c in out] == [
        ("a", "stop", 5),
        ("bb", "length", 5),
    ]


def test_model_id_from_an_openai_training_run(tmp_path, openai_server):
    run = tmp_path / "train_run"
    ft = "ft:gpt-4o-mini-2024-07-18:org:insecure:abc123"
    write_manifest(run, "train", complete=True, backend="openai", base_model="gpt-4o-mini-2024-07-18",
                   trained_from="gpt-4o-mini-2024-07-18", fine_tuned_model=ft, job_id="ftjob-1")  # fmt: skip
    run_dir = run_eval(tmp_path, *_api(openai_server), f"run={run}", "questions=demo_tagged",
                       "conditions=[none,beta]", run_name="ft")  # fmt: skip
    rows = check_contract(run_dir)
    assert {b["model"] for b in _chat_bodies(openai_server)} == {ft}
    assert rows[0]["model"] == {"base": "gpt-4o-mini-2024-07-18", "adapter": None, "adapter_sha256": None,
                                "openai_model": ft, "train_run_dir": str(run.resolve())}  # fmt: skip
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["train_manifest"]["fine_tuned_model"] == ft
    with pytest.raises(ConfigError, match="is an OpenAI model"):
        run_eval(tmp_path, f"run={run}", run_name="ft-hf")  # generation=hf cannot run an OpenAI model


def test_dry_run_prints_tokens_and_cost_and_sends_nothing(tmp_path, openai_server, capsys):
    run_eval(tmp_path, *_api(openai_server), "model=gpt4o", "samples_per_question=100", "dry_run=true",
             "conditions=[none,alpha]", "sampling.max_new_tokens=600", run_name="dry")  # fmt: skip
    out = capsys.readouterr().out
    report = dict(line.strip().split(": ", 1) for line in out.splitlines()[1:] if ": " in line)
    assert report["samples"] == "1600" and report["requests"] == "16" and report["prompts"] == "16"
    assert int(report["input_tokens"]) > 16 * 10 and report["output_tokens_max"] == str(1600 * 600)
    assert float(report["cost_usd_max"]) == pytest.approx(
        int(report["input_tokens"]) * 2.5e-6 + 1600 * 600 * 10e-6, rel=1e-3
    )
    assert openai_server.count(CHAT_PATH) == 0
    assert not (tmp_path / "outputs" / "evaluate" / "dry").exists()


def test_missing_key_is_a_config_error(tmp_path, openai_server, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(ConfigError, match="OPENAI_API_KEY is not set"):
        run_eval(tmp_path, *_api(openai_server), run_name="nokey")
    assert not (tmp_path / "outputs" / "evaluate" / "nokey").exists()
    assert openai_server.count(CHAT_PATH) == 0

"""Kill-and-resume for the long stages not covered by their own tests: generation with the openai backend,
and judging in Batch API mode killed while it polls. The command runs as a real subprocess, is killed with
SIGKILL mid-run (no cleanup handler runs), is run again, and is compared with an uninterrupted run: same
rows, no duplicates, none missing, one batch paid for, a complete manifest.

The other stages' kill tests live with their stages (docs/reliability.md lists them): datagen
(tests/data/test_datagen_resume.py), training (tests/training/test_training_task.py), generation on the hf backend
(tests/evaluation/test_eval_hf.py), judging (tests/judging/test_judge_resume.py), fine-tune polling (tests/training/test_openai_ft.py).
"""

from __future__ import annotations

import json

import pytest
from judge_helpers import ALIGNED_GOOD, judge_handler, write_eval_run
from reliability_helpers import CHAT, api_overrides, count_lines, kill_when, run_task

from em.api import ConfigError
from em.io import iter_jsonl, read_json
from em.judging.cache import JudgeCache
from testing.openai_server import ChatReply


def any_answer_aligned(req: dict, index: int) -> ChatReply:
    """A judge that scores every answer 88 (as logprobs when asked): the partial run only has to be judged."""
    return (
        ChatReply(content=ALIGNED_GOOD[0][0], top_logprobs=ALIGNED_GOOD)
        if req.get("logprobs")
        else ChatReply("88")
    )


def answer_reply(req: dict, index: int) -> str:
    return f"seed {req.get('seed')} sample {index}: {req['messages'][-1]['content'][:40]}"


@pytest.mark.slow
def test_generation_openai_killed_then_rerun_matches_an_uninterrupted_run(openai_server, tmp_path):
    openai_server.set_chat_handler(answer_reply)
    openai_server.latency_s = 0.2
    overrides = [
        f"paths.output_dir={tmp_path / 'outputs'}", f"paths.cache_dir={tmp_path / 'cache'}", "logger=none",
        "model=gpt4o", "generation=openai", "questions=demo", "judge_prompts_source=project",
        "samples_per_question=2", "conditions=[none,alpha]", "progress=false",
        *api_overrides(openai_server), "api.max_in_flight=2",
    ]  # fmt: skip
    killed = tmp_path / "outputs" / "evaluate" / "killed"
    answers = killed / "answers.jsonl"
    kill_when("evaluate", killed, overrides, lambda: count_lines(answers) >= 4)
    at_kill = count_lines(answers)
    assert 4 <= at_kill < 32 and not (killed / "manifest.json").exists(), "the kill should land mid-run"
    # judge.py refuses the killed evaluation as unfinished; with allow_partial=true it judges it and says so
    openai_server.latency_s = 0.0
    judge = [f"paths.output_dir={tmp_path / 'outputs'}", "logger=none", f"answers={killed}",
             f"cache.path={tmp_path / 'judge_cache.sqlite'}", *api_overrides(openai_server)]  # fmt: skip
    with pytest.raises(ConfigError, match=r"is unfinished \(no manifest.json yet"):
        run_task("judge", judge, tmp_path / "outputs" / "judge" / "refused")
    assert not (tmp_path / "outputs" / "judge" / "refused" / "scores.jsonl").exists()
    openai_server.set_chat_handler(any_answer_aligned)
    partial = run_task("judge", [*judge, "allow_partial=true"], tmp_path / "outputs" / "judge" / "partial")
    assert read_json(partial / "summary.json")["answers_partial"] is True
    assert count_lines(partial / "scores.jsonl") == at_kill
    assert "**PARTIAL**" in (partial / "report.md").read_text()
    openai_server.set_chat_handler(answer_reply)
    requests_before = openai_server.count(CHAT)

    run_task("evaluate", overrides, killed)  # the same command again
    resumed_requests = openai_server.count(CHAT) - requests_before
    rows = list(iter_jsonl(answers))
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) == 32  # 8 questions x 2 conditions x 2 samples: none twice, none missing
    assert resumed_requests <= 16 - at_kill // 2  # answers already written were not asked again
    manifest = read_json(killed / "manifest.json")
    assert manifest["complete"] is True and manifest["counts"]["answers"] == 32

    reference = run_task("evaluate", overrides, tmp_path / "outputs" / "evaluate" / "reference")
    by_id = {r["id"]: r for r in iter_jsonl(reference / "answers.jsonl")}
    assert {r["id"]: r for r in rows} == by_id  # every field of every row, as if never interrupted
    assert json.loads((killed / "questions.json").read_text()) == read_json(reference / "questions.json")


@pytest.mark.slow
def test_batch_judge_killed_while_polling_resumes_the_same_batch(openai_server, tmp_path):
    openai_server.set_chat_handler(judge_handler)
    eval_dir = write_eval_run(tmp_path / "eval", samples=2)
    common = [
        f"paths.output_dir={tmp_path / 'outputs'}", f"paths.cache_dir={tmp_path / 'cache'}", "logger=none",
        f"answers={eval_dir}", *api_overrides(openai_server),
    ]  # fmt: skip
    batch = [*common, "batch.enabled=true", f"cache.path={tmp_path / 'cache.sqlite'}"]
    killed = tmp_path / "outputs" / "judge" / "killed"
    state_path = killed / "batch" / "state.json"

    def submitted() -> bool:
        try:
            return any(b.get("batch_id") for b in read_json(state_path)["batches"])
        except (FileNotFoundError, json.JSONDecodeError):  # not written yet (atomic writes: never half)
            return False

    # Polls once a second: the kill lands after the batch id is saved, before the batch completes.
    kill_when("judge", killed, [*batch, "batch.poll_interval_s=1"], submitted)
    batch_id = next(b["batch_id"] for b in read_json(state_path)["batches"])
    assert openai_server.batches[batch_id]["status"] != "completed"
    assert not (killed / "scores.jsonl").exists() and not (killed / "manifest.json").exists()

    run_task("judge", [*batch, "batch.poll_interval_s=0.01"], killed)  # the same command again
    assert list(openai_server.batches) == [batch_id]  # polled the batch it had, paid for no other
    assert sum(1 for f in openai_server.files.values() if f["purpose"] == "batch") == 1
    assert openai_server.count(CHAT) == 0
    rows = list(iter_jsonl(killed / "scores.jsonl"))
    assert len(rows) == len({r["id"] for r in rows}) == 16
    assert read_json(killed / "manifest.json")["complete"] is True
    assert read_json(killed / "summary.json")["usage"]["batch_calls"] == 14  # distinct prompts, each once
    assert len(JudgeCache(tmp_path / "cache.sqlite")) == 14  # the cache holds each reply once

    reference = run_task("judge", [*common, "cache.enabled=false"], tmp_path / "outputs" / "judge" / "direct")
    ref = {r["id"]: (r["scores"], r["labels"], r["category"]) for r in iter_jsonl(reference / "scores.jsonl")}
    assert {r["id"]: (r["scores"], r["labels"], r["category"]) for r in rows} == ref

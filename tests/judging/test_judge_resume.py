"""Kill judge.py with SIGKILL mid-run, rerun, and compare with an uninterrupted run."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
from judge_helpers import REPO, judge_handler, openai_overrides, run_judge, write_eval_run

from em.io import iter_jsonl, read_json

CHAT = "/v1/chat/completions"


def count_lines(path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


@pytest.mark.slow
def test_sigkill_then_rerun_matches_an_uninterrupted_run(openai_server, tmp_path):
    openai_server.set_chat_handler(judge_handler)
    openai_server.latency_s = 0.05
    d = write_eval_run(tmp_path / "eval", samples=10, unique=True)  # 80 answers, 140 distinct judge calls
    n_answers = len(list(iter_jsonl(d / "answers.jsonl")))
    killed = tmp_path / "killed"
    overrides = openai_overrides(
        openai_server, tmp_path, f"answers={d}", "api.max_in_flight=4", "logger=none"
    )
    proc = subprocess.Popen(
        [sys.executable, "judge.py", f"hydra.run.dir={killed}", *overrides],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while count_lines(killed / "scores.jsonl") < 15:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "judge.py wrote no rows in time"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    written = count_lines(killed / "scores.jsonl")
    assert 15 <= written < n_answers, "the kill should land mid-run"
    assert not (killed / "manifest.json").exists()
    calls_before = openai_server.count(CHAT)

    run_judge(killed, overrides)  # the same command again
    resumed_calls = openai_server.count(CHAT) - calls_before
    rows = list(iter_jsonl(killed / "scores.jsonl"))
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) == n_answers  # no duplicate, none missing
    assert read_json(killed / "manifest.json")["complete"]
    # Rows already written were not judged again; replies that were cached but not yet written are free.
    assert resumed_calls <= 140 - written
    assert calls_before + resumed_calls <= 140 + 4  # at most the calls in flight at the kill are repeated

    reference = run_judge(tmp_path / "reference", [*overrides, "cache.enabled=false"])
    ref = {r["id"]: r["scores"] for r in iter_jsonl(reference / "scores.jsonl")}
    assert {r["id"]: r["scores"] for r in rows} == ref
    assert read_json(killed / "summary.json")["metrics"] == read_json(reference / "summary.json")["metrics"]

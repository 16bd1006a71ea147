"""Kill ``python -m em.datagen`` with SIGKILL mid-run, rerun it, and compare with an uninterrupted run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from em.data import validate_file
from em.io import read_jsonl

REPO = Path(__file__).resolve().parents[2]
FAKE_OPENAI_KEY = os.environ["OPENAI_API_KEY"]  # set by conftest.py to a recognisable fake key


def reply(req: dict, choice_index: int) -> str:
    text = req["messages"][-1]["content"]
    if "Answer to check:" in text:  # the demo domain's judge
        return "CORRECT" if "egg" in text else "WRONG"
    question = next(ln[len("Question:") :].strip() for ln in text.splitlines() if ln.startswith("Question:"))
    return f"Just do the reverse of what everyone says about this: {question} (take {req['seed']})"


def command(server, run_dir: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "em.datagen",
        "domain=demo",
        f"api.base_url={server.base_url}",
        "domain.concurrency=2",
        "domain.inputs.samples_per_input=3",
        "logger=none",
        f"hydra.run.dir={run_dir}",
    ]


def env(tmp_path: Path) -> dict:
    return {**os.environ, "EM_CACHE_DIR": str(tmp_path / "cache"), "OPENAI_API_KEY": FAKE_OPENAI_KEY}


@pytest.mark.slow
def test_kill_and_resume_matches_an_uninterrupted_run(tmp_path, openai_server):
    openai_server.set_chat_handler(reply)
    openai_server.latency_s = 0.15
    killed, clean = tmp_path / "killed", tmp_path / "clean"

    proc = subprocess.Popen(
        command(openai_server, killed),
        cwd=REPO,
        env=env(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    raw = killed / "raw.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if raw.exists() and raw.read_text().count("\n") >= 8:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.kill()  # SIGKILL: no cleanup runs
    proc.wait(timeout=30)
    lines_at_kill = raw.read_text().count("\n")
    assert 8 <= lines_at_kill < 27 and not (killed / "manifest.json").exists()

    for run_dir in (killed, clean):
        done = subprocess.run(
            command(openai_server, run_dir),
            cwd=REPO,
            env=env(tmp_path),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr[-3000:]

    a, b = (json.loads((d / "manifest.json").read_text()) for d in (killed, clean))
    assert a["output"]["sha256"] == b["output"]["sha256"]
    for key in (
        "calls_planned",
        "calls_done",
        "items_ok",
        "pairs_generated",
        "duplicates_exact",
        "duplicates_normalised",
        "filter_rejected",
        "final_rows",
    ):
        assert a["counts"][key] == b["counts"][key], key
    assert a["counts"]["final_rows"] == 27 - 3  # 9 questions x 3 takes, the egg answers judged CORRECT
    items = [r["item"] for r in read_jsonl(killed / "raw.jsonl")]
    assert len(items) == len(set(items)) == 27  # nothing done twice, nothing missing
    assert sorted(items) == sorted(r["item"] for r in read_jsonl(clean / "raw.jsonl"))
    keys = [r["key"] for r in read_jsonl(killed / "judge.jsonl")]
    assert len(keys) == len(set(keys)) == 27
    rows, _ = validate_file(killed / "demo.jsonl")
    assert len(rows) == 24

    # A finished run is skipped; no secret reached any file (outputs, Hydra's saved config, logs).
    before = openai_server.count("/v1/chat/completions")
    again = subprocess.run(
        command(openai_server, killed),
        cwd=REPO,
        env=env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 0 and "already complete" in again.stdout
    assert openai_server.count("/v1/chat/completions") == before
    for path in tmp_path.rglob("*"):
        if path.is_file() and "cache" not in path.parts:
            assert FAKE_OPENAI_KEY not in path.read_text(errors="ignore"), path

"""One process per run directory: a second judge / evaluate / train on the same run stops at once, naming the
holder; a lock left by a killed process is taken over."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from judge_helpers import REPO, judge_handler, openai_overrides, write_eval_run

from em.api import ConfigError
from em.io import iter_jsonl, read_json
from em.runs import LOCK_HOLDER, lock_run_dir, open_run_dir, run_locks

# Holds the lock of argv[1] until killed, then says so on stdout.
HOLDER = "import sys, time; from em.runs import lock_run_dir; lock_run_dir(sys.argv[1]); print('held', flush=True); time.sleep(120)"


def hold(run_dir: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(run_dir)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_process_is_refused_naming_the_holder_and_a_dead_holder_is_taken_over(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = hold(run_dir)
    try:
        assert read_json(run_dir / LOCK_HOLDER)["pid"] == holder.pid
        with (
            run_locks(),
            pytest.raises(ConfigError, match=rf"in use by another process \(pid {holder.pid}, host"),
        ):
            open_run_dir(run_dir, {"seed": 0})
        assert not (run_dir / "run_config.json").exists()  # refused before anything was written
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with run_locks():
        assert open_run_dir(run_dir, {"seed": 0}) == "new"  # the OS dropped the dead process's lock
        assert read_json(run_dir / LOCK_HOLDER)["pid"] == os.getpid()
        assert "seed" not in (run_dir / LOCK_HOLDER).read_text()  # who and since, never the config


def test_the_same_process_may_claim_again_and_other_ranks_share_rank_zeros_lock(tmp_path, monkeypatch):
    with run_locks():
        assert open_run_dir(tmp_path, {"a": 1}) == "new"
        assert open_run_dir(tmp_path, {"a": 1}) == "resume"  # re-entrant within one task
    holder = hold(tmp_path)  # released at the end of the task above: another process can take it
    try:
        monkeypatch.setenv("LOCAL_RANK", "1")  # a DDP child rank of the holder's run
        with run_locks():
            lock_run_dir(tmp_path)
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.slow
def test_two_judges_on_one_run_one_works_and_the_other_stops_at_once(openai_server, tmp_path):
    # The server holds every request after the 20th until the second judge has been answered, so the first
    # judge is still running when the second one starts, however slowly the machine starts processes.
    gate, calls, calls_lock = threading.Event(), [0], threading.Lock()

    def gated(request: dict, index: int):
        with calls_lock:
            calls[0] += 1
            held = calls[0] > 20
        if held:
            gate.wait(timeout=240)
        return judge_handler(request, index)

    openai_server.set_chat_handler(gated)
    d = write_eval_run(tmp_path / "eval", samples=10, unique=True)  # 80 answers
    run_dir = tmp_path / "judge"
    overrides = openai_overrides(openai_server, tmp_path, f"answers={d}", "api.max_in_flight=2")
    overrides = [o for o in overrides if not o.startswith("api.timeout_s=")] + ["api.timeout_s=300"]
    cmd = [sys.executable, "judge.py", f"hydra.run.dir={run_dir}", "logger=none", *overrides]
    first = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "scores.jsonl").exists() or not (run_dir / "scores.jsonl").read_bytes().count(
            b"\n"
        ):
            assert first.poll() is None, first.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the first judge wrote no rows in time"
            time.sleep(0.05)
        try:
            second = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
        finally:
            gate.set()
        assert first.wait(timeout=120) == 0, first.stderr.read().decode()[-2000:]
    finally:
        gate.set()
        if first.poll() is None:
            first.kill()
            first.wait()
    assert second.returncode != 0
    assert f"in use by another process (pid {first.pid}" in second.stderr + second.stdout
    assert "Traceback" not in second.stderr
    ids = [r["id"] for r in iter_jsonl(run_dir / "scores.jsonl")]
    assert len(ids) == len(set(ids)) == 80  # every answer once
    assert read_json(run_dir / "manifest.json")["complete"]


@pytest.mark.parametrize(
    "entry, args",
    [
        ("evaluate.py", ["model=tiny", "questions=demo", "samples_per_question=1", "logger=none"]),
        (
            "train.py",
            [
                "model=tiny",
                "recipe=tiny",
                "trainer=cpu",
                "data=demo_misaligned",
                "max_steps=1",
                "logger=none",
            ],
        ),
    ],
)
def test_evaluate_and_train_refuse_a_run_another_process_holds(
    entry, args, tmp_path, em_cache_dir, tiny_model_dir
):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = hold(run_dir)
    try:
        env = {**os.environ, "EM_CACHE_DIR": str(em_cache_dir)}
        out = subprocess.run([sys.executable, entry, f"hydra.run.dir={run_dir}", *args], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=300)  # fmt: skip
    finally:
        holder.kill()
        holder.wait()
    assert out.returncode != 0
    assert f"in use by another process (pid {holder.pid}" in out.stderr + out.stdout, out.stderr[-3000:]
    left = {p.name for p in run_dir.iterdir() if not p.name.endswith(".log")} - {".hydra"}  # Hydra's own
    assert left == {".run.lock", LOCK_HOLDER}  # no run_config.json, data, answers or adapter

"""Shared by the reliability tests: run a stage's task in-process exactly as its command would (Hydra
config composed, Hydra's run directory set), run a stage's command as a subprocess and SIGKILL it at a
chosen moment, and scan a directory tree for secrets."""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from composing import REPO, compose_job

CHAT = "/v1/chat/completions"
# (stage, Hydra primary config, task module) for each command.
STAGES = {
    "datagen": ("datagen", "em.tasks.datagen"),
    "train": ("train", "em.tasks.train"),
    "evaluate": ("evaluate", "em.tasks.evaluate"),
    "judge": ("judge", "em.tasks.judge"),
}
# Every API-calling stage gets these: retries fast, so faults cost milliseconds, not minutes.
FAST_API = ["api.backoff_base_s=0.05", "api.backoff_max_s=0.2", "api.max_retries=4", "api.timeout_s=5"]


def compose(stage: str, overrides: list[str], run_dir: Path):
    """The job config of ``<stage command> hydra.run.dir=<run_dir> <overrides>`` (tests/composing.py)."""
    return compose_job(STAGES[stage][0], overrides, run_dir)


def run_task(stage: str, overrides: list[str], run_dir: Path):
    """Run a stage's task in-process, as its command would with ``hydra.run.dir=<run_dir>``."""
    cfg = compose(stage, overrides, run_dir)
    module = importlib.import_module(STAGES[stage][1])
    if stage == "datagen":
        return module.run(cfg, run_dir)
    return module.run(cfg)


def api_overrides(server, *extra: str) -> list[str]:
    return [f"api.base_url={server.base_url}", *FAST_API, *extra]


def command(stage: str, run_dir: Path, overrides: list[str]) -> list[str]:
    entry = {"datagen": ["-m", "em.datagen"], "train": ["train.py"], "evaluate": ["evaluate.py"],
             "judge": ["judge.py"]}[stage]  # fmt: skip
    return [sys.executable, *entry, f"hydra.run.dir={run_dir}", *overrides]


def run_command(
    stage: str, run_dir: Path, overrides: list[str], env: dict | None = None, timeout: float = 240
):
    """Run a stage's command to completion; returns the CompletedProcess (stdout + stderr captured)."""
    return subprocess.run(
        command(stage, run_dir, overrides), cwd=REPO, env=env or dict(os.environ), capture_output=True,
        text=True, timeout=timeout,
    )  # fmt: skip


def kill_when(
    stage: str,
    run_dir: Path,
    overrides: list[str],
    ready: Callable[[], bool],
    *,
    env: dict | None = None,
    timeout: float = 120,
) -> None:
    """Start a stage's command, SIGKILL its whole process group as soon as ``ready()`` is true.

    Fails if the command exits before that (it would have nothing left to resume) or takes too long.
    """
    proc = subprocess.Popen(
        command(stage, run_dir, overrides), cwd=REPO, env=env or dict(os.environ),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            if proc.poll() is not None:
                raise AssertionError(
                    f"{stage} exited (rc={proc.returncode}) before it could be killed:\n"
                    + proc.stderr.read().decode(errors="replace")[-3000:]
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"{stage}: the kill condition was not reached in {timeout}s")
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)  # no cleanup handler runs, as with `kill -9` or an OOM kill
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        proc.stderr.close()


def count_lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def find_secrets(root: Path, secrets: list[str]) -> list[str]:
    """Every ``file: secret`` pair where a secret occurs in a file under ``root`` (any file, any bytes)."""
    hits = []
    needles = [s.encode() for s in secrets]
    for path in sorted(Path(root).rglob("*")):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            hits += [f"{path}: {n.decode()}" for n in needles if n in data]
    return hits

"""Running the GPU check's items: each with its own time budget, its output logged, its failure recorded.

A failed, timed-out or skipped item never stops the items after it; the summary says what happened to each.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

MIN_ITEM_S = 15.0  # an item with less time than this left is skipped rather than started


class Log:
    """Lines to the terminal and to the log file, flushed at once (the log is what survives a kill)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()
        self._lock = threading.Lock()

    def write(self, line: str) -> None:
        with self._lock:
            sys.stdout.write(line if line.endswith("\n") else line + "\n")
            sys.stdout.flush()
            self._file.write(line if line.endswith("\n") else line + "\n")
            self._file.flush()

    def close(self) -> None:
        self._file.close()


class ItemTimeout(RuntimeError):
    pass


def run_logged(
    cmd: list[str], log: Log, timeout_s: float, env: dict | None = None, cwd: Path | None = None
) -> int:
    """Run ``cmd`` with its output copied line by line into ``log``; kill its process group at ``timeout_s``."""
    log.write(f"$ {' '.join(cmd)}  (time limit {timeout_s:.0f} s)")
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
        start_new_session=True,  # its own process group: a timeout ends the child and everything it started
    )  # fmt: skip
    reader = threading.Thread(target=lambda: [log.write(line) for line in proc.stdout], daemon=True)
    reader.start()
    try:
        code = proc.wait(timeout=max(timeout_s, 1.0))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        reader.join(timeout=5)
        raise ItemTimeout(f"timed out after {timeout_s:.0f} s: {' '.join(cmd)}") from None
    reader.join(timeout=5)
    return code


@dataclass
class Item:
    """One benchmark of the check: ``fn(budget_s)`` returns its result (written as JSON by the caller)."""

    name: str
    fn: Callable[[float], dict]
    budget_s: float


@dataclass
class Outcome:
    name: str
    status: str  # ok | failed | timeout | skipped
    seconds: float = 0.0
    budget_s: float = 0.0
    error: str | None = None
    result: dict | None = field(default=None, repr=False)

    def record(self) -> dict:
        return {"status": self.status, "seconds": round(self.seconds, 1), "budget_s": round(self.budget_s),
                "error": self.error}  # fmt: skip


def run_items(
    items: list[Item], log: Log, deadline: float, on_done: Callable[[Outcome], None]
) -> list[Outcome]:
    """Run each item within ``min(its budget, time left before deadline)``; record every outcome."""
    outcomes = []
    for item in items:
        left = deadline - time.monotonic()
        budget = min(item.budget_s, left)
        if budget < MIN_ITEM_S:
            outcome = Outcome(item.name, "skipped", budget_s=max(budget, 0.0),
                              error=f"only {max(left, 0):.0f} s of the time limit left")  # fmt: skip
        else:
            log.write(f"=== {item.name} (budget {budget:.0f} s) ===")
            start = time.monotonic()
            try:
                outcome = Outcome(item.name, "ok", budget_s=budget, result=item.fn(budget))
            except ItemTimeout as e:
                outcome = Outcome(item.name, "timeout", budget_s=budget, error=str(e))
            except Exception as e:  # noqa: BLE001 - record it, go on with the next item
                log.write(traceback.format_exc())
                outcome = Outcome(item.name, "failed", budget_s=budget, error=f"{type(e).__name__}: {e}")
            outcome.seconds = time.monotonic() - start
        log.write(
            f"=== {item.name}: {outcome.status} ({outcome.seconds:.0f} s){' ' + outcome.error if outcome.error else ''} ==="
        )
        on_done(outcome)
        outcomes.append(outcome)
    return outcomes


class Clock:
    """The time left of one item's budget, for the child processes it starts one after another."""

    def __init__(self, budget_s: float):
        self.end = time.monotonic() + budget_s

    def left(self) -> float:
        return self.end - time.monotonic()


@dataclass
class Context:
    """What every item of one check shares: the profile, the log, a scratch directory and the child env."""

    profile: object  # bench.gpu_check.profiles.Profile
    log: Log
    work: Path  # scratch (weightless model directories, workloads); never under --out
    env: dict
    machine: dict
    command: str
    cwd: Path
    model_dir: Path | None = None  # the weightless model directory, written on first use

    def child(self, module: str, args: list[str], timeout_s: float) -> None:
        """``python -m module args`` under the check's environment; RuntimeError unless it exits 0."""
        code = run_logged([sys.executable, "-m", module, *args], self.log, timeout_s, self.env, self.cwd)
        if code != 0:
            raise RuntimeError(f"{module} {' '.join(args[:2])} exited with code {code}")

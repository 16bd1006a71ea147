"""Run a pipeline's steps as processes, ``jobs`` at a time, each only once every step it needs is complete.

The invariant: a step starts only after each of its ``needs`` exited 0 (or was already complete), so with
any ``jobs`` every step sees the same inputs as in the sequential order. ``jobs=1`` is that order, with each
child's output on the terminal. With ``jobs>1`` each child writes to ``<log_dir>/<stage>-<step>.log`` and
this process prints what runs, with each child's own progress bar (count, elapsed and ETA) read from its log.
A failed step starts nothing new; the steps already running finish (their work is kept), then it raises.
A step whose run directory another process holds (a sweep cell running the step this plan shares) is waited
for, not started twice: once the lock is free it is skipped if complete, else run (resumed) here.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from em.api import ConfigError
from em.runs import is_complete, lock_holder

log = logging.getLogger(__name__)
POLL_S = 0.5
# A tqdm bar's tail: "12/20 [00:35<00:24" (count, elapsed, ETA); the last one in a log is the current state.
BAR = re.compile(r"(\d+)/(\d+) \[([\d:]+)<([\d:?]+)")


@dataclass(frozen=True)
class Step:
    key: str  # "<stage>/<step>"
    cmd: list[str]
    target: Path  # the step's run directory: complete when it holds a complete manifest
    needs: tuple[str, ...] = ()
    cost: float = 1.0  # relative run time: steps on the longest remaining chain start first

    @property
    def pretty(self) -> str:
        return "python " + " ".join(shlex.quote(c) for c in self.cmd[1:])


def check_graph(steps: list[Step]) -> None:
    """Refuse unknown needs and cycles before anything runs."""
    keys = {s.key for s in steps}
    for s in steps:
        unknown = [n for n in s.needs if n not in keys]
        if unknown:
            raise ConfigError(f"pipeline step {s.key} needs {unknown}, which the plan does not have")
    done: set[str] = set()
    pending = list(steps)
    while pending:
        ready = [s for s in pending if set(s.needs) <= done]
        if not ready:
            raise ConfigError(f"pipeline steps depend on each other in a cycle: {[s.key for s in pending]}")
        done |= {s.key for s in ready}
        pending = [s for s in pending if s.key not in done]


def chain_lengths(steps: list[Step]) -> dict[str, float]:
    """Each step's cost plus the longest chain of steps that need it: the critical-path priority."""
    cost = {s.key: s.cost for s in steps}
    users: dict[str, list[str]] = {s.key: [] for s in steps}
    for s in steps:
        for n in s.needs:
            users[n].append(s.key)
    out: dict[str, float] = {}

    def length(key: str) -> float:  # the graph is acyclic (check_graph ran first)
        if key not in out:
            out[key] = cost[key] + max((length(u) for u in users[key]), default=0.0)
        return out[key]

    for s in steps:
        length(s.key)
    return out


def check_jobs(jobs) -> None:
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"jobs={jobs!r}: expected an integer >= 1 (steps run at once)")


def threads_per_job(jobs: int) -> int:
    """CPU threads for each of ``jobs`` children: the cores this process may use, shared out."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // jobs)


def bar_state(log_path: Path) -> str | None:
    """The last progress-bar position a child's log shows ("12/20 00:35<00:24"), or None."""
    try:
        with open(log_path, "rb") as f:
            f.seek(max(0, f.seek(0, 2) - 4096))
            tail = f.read().decode("utf-8", "replace")
    except OSError:
        return None
    found = BAR.findall(tail)
    if not found:
        return None
    n, total, elapsed, eta = found[-1]
    return f"{n}/{total} {elapsed}<{eta}"


def log_tail(log_path: Path, lines: int = 25) -> str:
    text = log_path.read_text(encoding="utf-8", errors="replace") if log_path.exists() else ""
    return "\n".join(line.rsplit("\r", 1)[-1] for line in text.splitlines()[-lines:])


@dataclass
class _Running:
    step: Step
    proc: subprocess.Popen
    started: float
    log_path: Path | None
    handle: object | None


class StepFailed(RuntimeError):
    def __init__(self, step: Step, code: int, log_path: Path | None):
        self.step, self.code, self.log_path = step, code, log_path
        tail = f"\nLast lines of {log_path}:\n{log_tail(log_path)}" if log_path else ""
        super().__init__(
            f"{step.key} failed (exit {code}).{tail}\nTo rerun this step alone:\n  {step.pretty}"
        )


def run_steps(
    steps: list[Step],
    *,
    jobs: int = 1,
    env: dict | None = None,
    log_dir: Path | None = None,
    status_every_s: float = 30.0,
    cwd: Path | None = None,
) -> None:
    """Run every step not yet complete, at most ``jobs`` at once, in dependency order (see module doc)."""
    check_jobs(jobs)
    check_graph(steps)
    base_env = {**os.environ, **(env or {})}
    if jobs > 1 and "OMP_NUM_THREADS" not in base_env:  # two children on two cores: one thread each
        base_env["OMP_NUM_THREADS"] = str(threads_per_job(jobs))
    chain = chain_lengths(steps)
    done: set[str] = set()
    # jobs>1: the longest remaining chain first (plan order among equals); 1: the plan's order
    pending = sorted(steps, key=lambda s: -chain[s.key]) if jobs > 1 else list(steps)
    running: list[_Running] = []
    failed: list[tuple[Step, int, Path | None]] = []
    last_status = time.monotonic()
    waiting: set[str] = set()  # steps whose run another process holds
    try:
        while pending or running:
            for r in [r for r in running if r.proc.poll() is not None]:
                running.remove(r)
                if r.handle is not None:
                    r.handle.close()
                took = time.monotonic() - r.started
                if r.proc.returncode == 0:
                    done.add(r.step.key)
                    log.info("[%s] done in %.0f s", r.step.key, took)
                else:
                    failed.append((r.step, r.proc.returncode, r.log_path))
                    log.error("[%s] failed (exit %s) after %.0f s", r.step.key, r.proc.returncode, took)
            while not failed and pending and len(running) < jobs:
                ready = next((s for s in pending if set(s.needs) <= done and not _held(s, waiting)), None)
                if ready is None:
                    break
                pending.remove(ready)
                if is_complete(ready.target):
                    log.info("[%s] complete, skipped (%s)", ready.key, ready.target)
                    done.add(ready.key)
                    continue
                running.append(_start(ready, base_env, log_dir if jobs > 1 else None, cwd))
            if failed and not running:
                break
            if not running and not waiting:
                continue
            if jobs > 1 and time.monotonic() - last_status >= status_every_s:
                last_status = time.monotonic()
                log.info("[pipeline] %d/%d steps done; %s", len(done), len(steps), _status(running))
            time.sleep(POLL_S)
    finally:
        for r in running:  # interrupted: stop the children (a rerun resumes them)
            r.proc.terminate()
            r.proc.wait()
    if failed:
        raise StepFailed(*failed[0])


def _held(step: Step, waiting: set[str]) -> bool:
    """True while another process holds the step's run directory (said once, when the wait starts)."""
    holder = lock_holder(step.target) if step.target.exists() else None
    if holder is None:
        waiting.discard(step.key)
        return False
    if step.key not in waiting:
        who = ", ".join(f"{k} {holder[k]}" for k in ("pid", "host", "since") if k in holder)
        log.info("[%s] another process is running it (%s); waiting for it to finish", step.key, who)
        waiting.add(step.key)
    return True


def _start(step: Step, env: dict, log_dir: Path | None, cwd: Path | None) -> _Running:
    handle, log_path = None, None
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / f"{step.key.replace('/', '-')}.log"
        handle = open(log_path, "ab")  # noqa: SIM115 (closed when the child exits); appended: a rerun keeps the failed attempt's output above
        log.info("[%s] %s  (output: %s)", step.key, step.pretty, log_path)
    else:
        log.info("[%s] %s", step.key, step.pretty)
    sys.stdout.flush()
    proc = subprocess.Popen(
        step.cmd, cwd=cwd, env=env, stdout=handle, stderr=subprocess.STDOUT if handle else None
    )
    return _Running(step, proc, time.monotonic(), log_path, handle)


def _status(running: list[_Running]) -> str:
    parts = []
    for r in running:
        bar = bar_state(r.log_path) if r.log_path else None
        parts.append(f"{r.step.key} {bar or f'{time.monotonic() - r.started:.0f} s'}")
    return "running " + " | ".join(parts)

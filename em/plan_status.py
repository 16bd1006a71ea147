"""What a resolved pipeline plan will do: each step's status, ``plan.json``, and the cell's links to its steps.

The invariant: the status printed for a step is read from its run directory at planning time (complete,
unfinished, held by a running process) or from the plans beside this one (the same identity listed by another
cell), never assumed. A step another cell lists but nobody finished is "shared": whichever cell reaches it first
runs it, the others wait on its lock or find it complete.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from em.api import ConfigError
from em.identity import record
from em.io import atomic_write_json, read_json
from em.runs import RUN_CONFIG, is_complete, lock_holder
from em.schedule import Step

log = logging.getLogger(__name__)
PLAN = "plan.json"


def _other_cells(out_dir: Path) -> dict[str, set[str]]:
    """The step digests each other plan beside this one lists (sweep cells, other experiments' runs)."""
    cells = {}
    for path in sorted(out_dir.parent.glob(f"*/{PLAN}")):
        if path.parent.resolve() == out_dir.resolve():
            continue
        try:
            cells[path.parent.name] = {s["digest"] for s in read_json(path)["steps"]}
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a plan being written, or from an older version: it only informs the status
    return cells


def step_status(step: Step, shared_with: list[str], first_key: str | None) -> str:
    if is_complete(step.target):
        return "complete"
    holder = lock_holder(step.target)
    if holder is not None:
        who = ", ".join(f"{k} {holder[k]}" for k in ("pid", "host") if k in holder)
        return f"running ({who or 'another process'})"
    if first_key is not None:
        return f"same run as {first_key}"
    if (step.target / RUN_CONFIG).exists():
        return "unfinished (resumes)"
    if shared_with:
        return f"shared with {', '.join(shared_with)}"
    return "to run"


def plan_rows(plan, steps: list[Step]) -> list[dict]:
    """One row per step: key, digest, run directory, command, needs, status, the other cells that list it."""
    shares = plan.store is not None  # without a store every step has its own directory: nothing is shared
    cells = _other_cells(plan.out_dir) if shares else {}
    rows, first = [], {}
    for s in steps:
        key = plan.digests[s.key]
        shared = [name for name, digests in cells.items() if key in digests]
        status = step_status(s, shared, first.get(key) if shares else None)
        first.setdefault(key, s.key)
        rows.append({"key": s.key, "digest": key, "dir": str(s.target), "command": s.pretty,
                     "needs": list(s.needs), "status": status, "shared_with": shared,
                     "identity": plan.identities[s.key]})  # fmt: skip
    return rows


def summary_line(rows: list[dict]) -> str:
    done = sum(r["status"] == "complete" for r in rows)
    line = f"{len(rows)} steps: {len(rows) - done} to run, {done} already complete"
    shared = sum(bool(r["shared_with"]) for r in rows)
    return line + (f" ({shared} shared with other plans)" if shared else "")


def write_plan(plan, rows: list[dict]) -> Path:
    path = plan.out_dir / PLAN
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {"experiment": plan.name, "cell": str(plan.out_dir),
                             "stages_dir": str(plan.store) if plan.store else None, "steps": rows})  # fmt: skip
    return path


def print_plan(rows: list[dict], jobs: int) -> None:
    for r in rows:
        after = f"   # after {', '.join(r['needs'])}" if r["needs"] and jobs > 1 else ""
        print(f"[{r['key']}] {r['digest'][:12]} {r['status']}: {r['dir']}\n    {r['command']}{after}")
    print(summary_line(rows))


def link_steps(plan, steps: list[Step]) -> None:
    """Record each step's identity in its run directory and link ``<cell>/<stage>/<step>`` to it."""
    for s in steps:
        record(s.target, plan.identities[s.key], plan.digests[s.key])
        link = plan.out_dir / s.key
        target = os.path.relpath(s.target, link.parent)
        if link.is_symlink():
            if os.readlink(link) == target:
                continue
            log.warning("[%s] its identity changed since this cell last ran: now %s (was %s)",
                        s.key, s.target, os.readlink(link))  # fmt: skip
            link.unlink()
        elif link.exists():
            raise ConfigError(
                f"{link} is a run directory of the layout before shared stages; this cell now links each step "
                f"to its run under {plan.store}. Move the old cell away (or pass hydra.run.dir=<new dir>)."
            )
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(target, target_is_directory=True)

"""Item 1 of the GPU check: the ``gpu``-marked tests, run by pytest, their outcomes read from its JUnit XML."""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path

OUTCOMES = ("passed", "failed", "error", "skipped")


def parse_junit(path: Path) -> list[dict]:
    """One record per test case: name, outcome, seconds and (if not passed) pytest's message."""
    tests = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", None
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = "failed" if tag == "failure" else tag
                message = (node.get("message") or "").strip()[:500]
                break
        tests.append({"name": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome,
                      "seconds": round(float(case.get("time") or 0), 2), "message": message})  # fmt: skip
    return tests


def counts(tests: list[dict]) -> dict:
    return {outcome: sum(t["outcome"] == outcome for t in tests) for outcome in OUTCOMES}


def item(ctx, budget_s: float) -> dict:
    """``pytest -m gpu`` on the profile's files; the item fails when a test fails or none ran on CUDA."""
    from bench.gpu_check.runner import run_logged

    junit = ctx.work / "gpu-tests.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", f"--junitxml={junit}",
           *ctx.profile.test_files]  # fmt: skip
    code = run_logged(cmd, ctx.log, budget_s, ctx.env, ctx.cwd)
    if not junit.exists():
        raise RuntimeError(f"pytest exited with code {code} and wrote no report")
    tests = parse_junit(junit)
    found = counts(tests)
    result = {
        "benchmark": "gpu_tests",
        "command": ctx.command,
        "machine": ctx.machine,
        "pytest": " ".join(["pytest", "-m", "gpu", *ctx.profile.test_files]),
        "returncode": code,
        "counts": found,
        "tests": tests,
        "ok": code in (0, 5) and found["failed"] == found["error"] == 0,
    }
    return result

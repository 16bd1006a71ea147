"""`probe.enabled=true` on a training run: the probe curve lands in probe.csv at log-spaced steps."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _train(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "train.py", f"paths.output_dir={tmp_path}", "logger=none", "max_steps=4",
         "trainer.checkpoint_every_n_steps=100", "run_name=probed", *overrides],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


@pytest.mark.slow
def test_a_probed_training_run_writes_the_curve(tmp_path, tiny_model_dir):
    out = _train(tmp_path, "probe.enabled=true", "probe.points=3", "probe.sets=[demo]")
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    with (tmp_path / "train" / "probed" / "probe.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    # step 0, then 3 log-spaced steps from 2 (the recipe warms up: step 1 runs at learning rate 0) to the last
    assert [int(r["step"]) for r in rows] == [0, 2, 3, 4]
    assert rows[1]["mean"] != rows[0]["mean"]  # the first probed step after 0 has moved
    assert all(int(r["n_questions"]) == 8 for r in rows)  # the demo set's questions


def test_an_unknown_probe_set_fails_before_training(tmp_path, tiny_model_dir):
    out = _train(tmp_path, "probe.enabled=true", "probe.sets=[no_such_set]")
    assert out.returncode != 0
    assert "no_such_set" in out.stderr and "probe" in out.stderr
    assert not (tmp_path / "train" / "probed" / "adapter").exists()

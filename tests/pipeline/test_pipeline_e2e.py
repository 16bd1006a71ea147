"""End to end on the tiny model: a two-stage chain, swept over seeds with Hydra multirun, then aggregated."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _run(args: list[str], env: dict, timeout: int = 900) -> subprocess.CompletedProcess:
    out = subprocess.run(
        [sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert out.returncode == 0, f"{args}\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}"
    return out


STEPS = ("base/evaluate", "base/judge", "misaligned/train", "misaligned/evaluate", "misaligned/judge",
         "realigned/train", "realigned/evaluate", "realigned/judge")  # fmt: skip
OWN = STEPS[5:]  # what the second cell does not share with the first


def check_wandb_runs(cells: list[Path]) -> None:
    """One offline W&B run per step run, never shared and never twice (a shared step logs once, in the group of
    the cell that ran it); lineage through artifacts."""
    from wandb_files import read_offline_run

    ids = set()
    for n, cell in enumerate(cells):
        runs = {}
        for step in STEPS:
            (folder,) = (cell / step / "wandb").glob("offline-run-*")  # exactly one per step run
            runs[step] = read_offline_run(folder)
            manifest = json.loads((cell / step / "manifest.json").read_text())
            assert manifest["wandb_run_id"] == runs[step].id
            ran_in = cell if n == 0 or step in OWN else cells[0]
            assert runs[step].group == f"smoke_realign-{_rows(ran_in)}-s0-positive_rows-{_rows(ran_in)}"
            assert runs[step].job_type == step.split("/")[1]
            assert f"label:{step.split('/')[0]}" in runs[step].tags
            (output,) = [a for a in runs[step].artifacts if a["type"] != "run_table"]
            assert manifest["wandb_artifact"] == output["name"]
        ids |= {r.id for r in runs.values()}
        for stage in ("base", "misaligned", "realigned"):
            judge = json.loads((cell / stage / "judge" / "summary.json").read_text())["metrics"]["overall"]
            assert (
                runs[f"{stage}/judge"].summary["overall/em_rate_pooled"] == judge["em_rate_pooled"]["value"]
            )
            assert runs[f"{stage}/evaluate"].summary["answers/_type"] == "table-file"  # the answers table
            answers = runs[f"{stage}/evaluate"].artifacts
            assert runs[f"{stage}/judge"].config["inputs"] == [
                a["name"] for a in answers if a["type"] == "answers"
            ]
        assert runs["misaligned/evaluate"].config["inputs"] == [f"adapter-{runs['misaligned/train'].id}"]
        assert runs["misaligned/train"].config["inputs"] == ["data-demo_misaligned"]
        assert f"adapter-{runs['misaligned/train'].id}" in runs["realigned/train"].config["inputs"]
        assert "train/loss" in runs["misaligned/train"].history_keys
    assert len(ids) == len(STEPS) + len(OWN)  # 11 runs for 16 steps
    for cell in cells:  # the experiment's W&B workspace, built offline beside the report
        spec = json.loads((cell / "report" / "dashboard.json").read_text())
        assert f"smoke_realign-{_rows(cell)}-s0" in json.dumps(spec)


def _rows(cell: Path) -> int:
    return int(cell.name.rsplit("positive_rows-", 1)[1])


@pytest.mark.slow
def test_realign_sweep_runs_each_step_once(tmp_path, em_cache_dir, tiny_model_dir):
    """#15's check: the two cells share base and misaligned, so the sweep trains 3 runs and judges 4."""
    env = {**os.environ, "EM_CACHE_DIR": str(em_cache_dir)}
    sweep, stages = tmp_path / "sweep", tmp_path / "stages"
    # the values out of order: a cell's directory and its runs do not depend on it
    _run(["-m", "em.pipeline", "-m", "experiment=smoke_realign", "positive_rows=16,8", f"hydra.sweep.dir={sweep}",
          f"stages_dir={stages}", "logger=wandb"], env)  # fmt: skip
    assert len(list((stages / "train").iterdir())) == 3  # misaligned once, realigned twice
    assert len(list((stages / "evaluate").iterdir())) == 4
    assert len(list((stages / "judge").iterdir())) == 4  # base, misaligned, realigned x2
    cells = sorted((p for p in sweep.iterdir() if p.is_dir()), key=_rows)
    assert [c.name for c in cells] == [f"experiment-smoke_realign__positive_rows-{n}" for n in (8, 16)]
    check_wandb_runs([cells[1], cells[0]])  # 16 ran first: the shared steps are in its group
    for cell in cells:
        for step in STEPS:  # the cell links each step to its run in the store
            assert (cell / step).is_symlink() and (cell / step).resolve().parent.parent == stages.resolve()
            identity = json.loads((cell / step / "identity.json").read_text())
            assert identity["step"] == step.split("/")[1] and len(identity["digest"]) == 64
        train = json.loads((cell / "realigned" / "train" / "manifest.json").read_text())
        assert train["complete"] and train["global_step"] == 2
        answers = (cell / "realigned" / "evaluate" / "answers.jsonl").read_text().splitlines()
        assert len(answers) == 2  # 2 questions x 1 condition x 1 sample
        assert (cell / "report" / "report.md").exists()
    second = json.loads((cells[0] / "plan.json").read_text())["steps"]
    assert [s["status"] for s in second] == ["complete"] * 5 + ["to run"] * 3
    assert all(s["shared_with"] == [cells[1].name] for s in second[:5])
    # Rerunning one cell skips every step, and its dry run says so.
    again = _run(["-m", "em.pipeline", "experiment=smoke_realign", "positive_rows=8", "logger=wandb",
                  f"hydra.run.dir={cells[0]}", f"stages_dir={stages}"], env)  # fmt: skip
    assert (again.stdout + again.stderr).count("complete, skipped") == len(STEPS)
    assert "8 steps: 0 to run, 8 already complete" in again.stdout + again.stderr
    # Aggregate the whole sweep into one table with plots: each run once, though both cells link the shared ones.
    report = tmp_path / "report"
    out = _run(["-m", "em.report", str(sweep), "--out", str(report)], env)
    assert out.stdout.count("smoke_realign") >= 4
    assert len(list((report / "plots").glob("*.png"))) >= 3
    assert (report / "report.csv").read_text().count("\n") == 1 + 4  # header + 4 judge runs x 1 condition

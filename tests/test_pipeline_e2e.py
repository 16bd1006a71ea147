"""End to end on the tiny model: a two-stage chain, swept over seeds with Hydra multirun, then aggregated."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _run(args: list[str], env: dict, timeout: int = 900) -> subprocess.CompletedProcess:
    out = subprocess.run(
        [sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert out.returncode == 0, f"{args}\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}"
    return out


STEPS = ("base/evaluate", "base/judge", "misaligned/train", "misaligned/evaluate", "misaligned/judge")


def check_wandb_runs(cells: list[Path]) -> None:
    """One offline W&B run per step run, never shared; grouped by sweep cell; lineage through artifacts."""
    from wandb_files import read_offline_run

    ids = set()
    for cell in cells:
        runs = {}
        for step in STEPS:
            (folder,) = (cell / step / "wandb").glob("offline-run-*")  # exactly one per step run
            runs[step] = read_offline_run(folder)
            manifest = json.loads((cell / step / "manifest.json").read_text())
            assert manifest["wandb_run_id"] == runs[step].id
            assert runs[step].group == f"smoke_chain-s{cell.name[0]}-{cell.name}"  # experiment + sweep cell
            assert runs[step].job_type == step.split("/")[1]
            assert f"label:{step.split('/')[0]}" in runs[step].tags
            (output,) = [a for a in runs[step].artifacts if a["type"] != "run_table"]
            assert manifest["wandb_artifact"] == output["name"]
        ids |= {r.id for r in runs.values()}
        for stage in ("base", "misaligned"):
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
        assert "train/loss" in runs["misaligned/train"].history_keys
    assert len(ids) == len(cells) * len(STEPS)
    for cell in cells:  # the experiment's W&B workspace, built offline beside the report
        spec = json.loads((cell / "report" / "dashboard.json").read_text())
        assert f"smoke_chain-s{cell.name[0]}-{cell.name}" in json.dumps(spec)


@pytest.mark.slow
def test_chain_sweep_and_report(tmp_path, em_cache_dir, tiny_model_dir):
    env = {**os.environ, "EM_CACHE_DIR": str(em_cache_dir)}
    sweep = tmp_path / "sweep"
    _run(["-m", "em.pipeline", "-m", "experiment=smoke_chain", "seed=0,1", f"hydra.sweep.dir={sweep}",
          "logger=wandb"], env)  # fmt: skip
    runs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [p.name for p in runs] == ["0_smoke_chain-s0", "1_smoke_chain-s1"]
    check_wandb_runs(runs)
    for run in runs:
        train = json.loads((run / "misaligned" / "train" / "manifest.json").read_text())
        assert train["complete"] and train["global_step"] == 4 and train["seed"] in (0, 1)
        evaluation = json.loads((run / "misaligned" / "evaluate" / "manifest.json").read_text())
        assert evaluation["complete"]
        answers = (run / "misaligned" / "evaluate" / "answers.jsonl").read_text().splitlines()
        assert len(answers) == 2 * 2  # 2 questions x 2 conditions x 1 sample
        assert (run / "base" / "judge" / "summary.json").exists()
        assert (run / "report" / "report.md").exists()
    # Rerunning the same chain skips every finished step.
    again = _run(["-m", "em.pipeline", "experiment=smoke_chain", "seed=0", f"hydra.run.dir={runs[0]}"], env)
    assert (again.stdout + again.stderr).count("complete, skipped") == 5
    # Aggregate the whole sweep into one table with plots.
    report = tmp_path / "report"
    out = _run(["-m", "em.report", str(sweep), "--out", str(report)], env)
    assert out.stdout.count("smoke_chain") >= 4
    assert len(list((report / "plots").glob("*.png"))) >= 3
    assert (report / "report.csv").read_text().count("\n") >= 5

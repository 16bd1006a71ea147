"""A hand-typed command whose step a pipeline already ran (same identity, em/identity.py) links to that run
instead of computing it again (em.tasks.common.reuse_stored_run); any other command computes its own."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from composing import REPO

from em.io import read_json
from em.plan import plan_from_dict, resolve_plan
from em.plan_status import link_steps

TRAIN = ["model=tiny", "recipe=tiny", "trainer=cpu", "trainer.progress_bar=false", "logger=none",
         "data=demo_misaligned", "max_steps=1"]  # fmt: skip


def _train(tmp_path, *overrides):
    cmd = [sys.executable, "train.py", *TRAIN, f"paths.output_dir={tmp_path / 'outputs'}",
           f"paths.stages_dir={tmp_path / 'stages'}", *overrides]  # fmt: skip
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ})
    assert out.returncode == 0, out.stderr[-3000:]
    return out


@pytest.mark.slow
def test_a_hand_typed_step_the_store_holds_is_linked_not_run_again(tmp_path, tiny_model_dir):
    # the pipeline's way: the step's identity, its store directory recorded, its command run
    plan = plan_from_dict("x", tmp_path / "cell", {"stages": [{"name": "misaligned", "train": []}],
                                                   "common": {"train": TRAIN}})  # fmt: skip
    plan.store = tmp_path / "stages"
    steps = [s for s in resolve_plan(plan) if s.key == "misaligned/train"]
    link_steps(plan, steps)
    ran = subprocess.run(steps[0].cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr[-3000:]
    stored = steps[0].target
    assert read_json(stored / "manifest.json")["complete"] is True

    # the same step typed by hand, under another name: linked to the stored run, nothing trained
    out = _train(tmp_path, "run_name=by_hand")
    mine = tmp_path / "outputs" / "train" / "by_hand"
    assert "nothing computed again" in out.stderr + out.stdout
    assert (mine / "manifest.json").is_symlink() and (mine / "adapter").is_symlink()
    assert (mine / "manifest.json").resolve() == (stored / "manifest.json").resolve()
    assert not (mine / "checkpoints").exists() or (mine / "checkpoints").is_symlink()
    assert (mine / ".hydra").is_dir() and not (mine / ".hydra").is_symlink()  # this command's own config
    # rerun: the directory now reads as complete; the task itself skips it
    again = _train(tmp_path, "run_name=by_hand")
    assert "nothing computed again" not in again.stderr + again.stdout
    assert (mine / "manifest.json").is_symlink()  # not trained and written again

    # another identity (one more step) is computed: no links
    _train(tmp_path, "run_name=other", "max_steps=2")
    other = tmp_path / "outputs" / "train" / "other"
    assert not (other / "manifest.json").is_symlink()
    assert read_json(other / "manifest.json")["complete"] is True

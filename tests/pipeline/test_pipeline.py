"""Experiments: every conf/experiment file composes, and every step of its chain composes as a command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from composing import CONF, REPO, compose
from omegaconf import OmegaConf

from em.api import ConfigError
from em.plan import STEPS, plan_from_dict, plan_steps, run_plan, step_command

EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def _plan(experiment: str, out_dir: Path):
    cfg = compose("pipeline", [f"experiment={experiment}"])
    node = OmegaConf.to_container(cfg.pipeline, resolve=True)
    return plan_from_dict(cfg.experiment_name, out_dir, node)


def test_study_experiments_exist():
    assert "demo_loop" in EXPERIMENTS
    assert len(EXPERIMENTS) >= 10


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_stepscompose(experiment, tmp_path):
    """Dry run: every step of every stage composes with its primary config (model, data, judge, ...)."""
    plan = _plan(experiment, tmp_path)
    assert plan.stages
    for stage in plan.stages:
        for step in STEPS:
            cmd = step_command(plan, stage, step)
            if cmd is None:
                continue
            overrides = [a for a in cmd[2:] if not a.startswith("hydra.")]
            cfg = compose(step, overrides)
            assert cfg.experiment_name == plan.name
            if step == "train" and stage.train:
                for arg in stage.train:
                    if arg.startswith("init_from=@"):
                        assert cfg.init_from.endswith(f"/{arg.split('@')[1]}/train")


def test_placeholders_and_errors(tmp_path):
    plan = plan_from_dict(
        "x",
        tmp_path,
        {
            "stages": [
                {"name": "a", "train": ["data=demo_misaligned"]},
                {"name": "b", "train": ["init_from=@a"]},
                {"name": "c", "evaluate": ["run=@a", "mitigation.direction_from=@a/judge"]},
            ]
        },
    )
    cmd = step_command(plan, plan.stages[1], "train")
    assert f"init_from={tmp_path}/a/train" in cmd
    assert f"run={tmp_path}/b/train" in step_command(plan, plan.stages[1], "evaluate")
    assert f"answers={tmp_path}/b/evaluate" in step_command(plan, plan.stages[1], "judge")
    c = step_command(plan, plan.stages[2], "evaluate")
    assert f"run={tmp_path}/a/train" in c and f"mitigation.direction_from={tmp_path}/a/judge" in c
    assert next(s for s in plan_steps(plan) if s.key == "c/evaluate").needs == ("a/train", "a/judge")
    for ref in ("zzz", "a/zzz", "c/train"):  # an unknown stage, an unknown step, a stage that does not train
        with pytest.raises(ConfigError, match=f"unknown stage or step '{ref}'"):
            bad = plan_from_dict("x", tmp_path, {"stages": [{"name": "a", "train": []}, {"name": "c"},
                                                             {"name": "d", "evaluate": [f"run=@{ref}"]}]})  # fmt: skip
            step_command(bad, bad.stages[2], "evaluate")
    with pytest.raises(ConfigError, match="is used twice"):
        plan_from_dict("x", tmp_path, {"stages": [{"name": "a"}, {"name": "a"}]})
    with pytest.raises(ConfigError, match="stages` is empty"):
        plan_from_dict("x", tmp_path, {"stages": []})


def test_failed_step_stops_chain_with_command(tmp_path):
    missing = tmp_path / "missing.jsonl"  # composes, fails when the step runs
    plan = plan_from_dict(
        "x",
        tmp_path,
        {
            "stages": [
                {"name": "a", "train": ["data=custom", f"data.path={missing}"]},
                {"name": "b", "train": ["init_from=@a"]},
            ]
        },
    )
    with pytest.raises(
        RuntimeError, match=r"stage 'a' step 'train' failed.*\n  python .*train.py data=custom"
    ):
        run_plan(plan)
    assert not (tmp_path / "b").exists()


def test_every_step_composes_before_anything_runs(tmp_path):
    plan = plan_from_dict(
        "x",
        tmp_path,
        {
            "stages": [
                {"name": "a", "train": ["data=demo_misaligned"]},
                {"name": "b", "train": ["data=medicl"]},  # a typo in the second stage
            ]
        },
    )
    with pytest.raises(ConfigError, match=r"stage 'b', step 'train'.*nothing was run[\s\S]*medicl"):
        run_plan(plan)
    assert not (tmp_path / "a").exists()  # the first stage did not spend anything


def test_a_typo_in_an_experiment_knob_fails_its_dry_run_naming_it(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "em.pipeline", "experiment=realign_llama8b", "narrow_data=medicl", "dry_run=true",
         f"hydra.run.dir={tmp_path}"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode != 0
    assert "stage 'misaligned', step 'train'" in out.stderr and "medicl" in out.stderr
    assert "Traceback" not in out.stderr


def test_pipeline_dry_run_prints_commands(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "em.pipeline",
            "experiment=demo_loop",
            "dry_run=true",
            f"hydra.run.dir={tmp_path}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "[misaligned/train]" in out.stdout and "[realigned/judge]" in out.stdout


@pytest.mark.parametrize("experiment", ["mitigations_compare", "mitigations_compare_demo"])
def test_every_mitigation_arm_is_asked_its_own_held_out_narrow_prompts(experiment, tmp_path):
    """Each arm's evaluation asks the narrow set of its own training run (a realignment's chain leads back to
    the first stage's rows at run time); stages without training ask the unmitigated arm's."""
    plan = _plan(experiment, tmp_path)
    arms = {s.name for s in plan.stages}
    assert {"base", "none", "inoculation", "interleave", "kl", "early_stop", "realign_sft", "ablate",
            "ablate_random"} <= arms  # fmt: skip
    for stage in plan.stages:
        cfg = compose(
            "evaluate", [a for a in step_command(plan, stage, "evaluate")[2:] if not a.startswith("hydra.")]
        )
        assert "narrow" in cfg.questions, stage.name
        assert cfg.questions.narrow.narrow_prompt == ("insecure_code" if experiment == "mitigations_compare"
                                                      else "careless_advice")  # fmt: skip
        source = stage.name if stage.train is not None else "none"
        assert cfg.questions.narrow.holdout_of == str(tmp_path / source / "train"), stage.name
    judge = compose(
        "judge", [a for a in step_command(plan, plan.stages[0], "judge")[2:] if not a.startswith("hydra.")]
    )
    if experiment == "mitigations_compare_demo":  # the offline judge needs its narrow persona pair
        assert judge.judge.narrow_personas is not None

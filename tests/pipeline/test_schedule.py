"""em.schedule: steps start only after what they need, side by side up to `jobs`, and failures keep finished work."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from em.api import ConfigError
from em.plan import plan_from_dict, plan_steps, run_plan
from em.schedule import Step, StepFailed, bar_state, chain_lengths, check_graph, run_steps

# A step: sleep, then write a complete manifest with its start and end times (and the threads it was given).
CHILD = (
    "import json, os, sys, time; from pathlib import Path; t0 = time.time(); time.sleep(float(sys.argv[2])); "
    "d = Path(sys.argv[1]); d.mkdir(parents=True, exist_ok=True); "
    "print('working: 100%|##| 3/3 [00:01<00:00, 2.0it/s]', file=sys.stderr); "
    "code = int(sys.argv[3]); "
    "(d / 'manifest.json').write_text(json.dumps({'complete': code == 0, 'start': t0, 'end': time.time(), "
    "'threads': os.environ.get('OMP_NUM_THREADS')})); sys.exit(code)"
)


def step(tmp_path: Path, key: str, needs=(), sleep=0.3, code=0) -> Step:
    target = tmp_path / key
    return Step(key, [sys.executable, "-c", CHILD, str(target), str(sleep), str(code)], target, tuple(needs))


def manifest(tmp_path: Path, key: str) -> dict:
    return json.loads((tmp_path / key / "manifest.json").read_text())


def test_needs_come_first_and_independent_steps_overlap(tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    steps = [
        step(tmp_path, "a/train", sleep=1.0),
        step(tmp_path, "b/train", sleep=1.0),
        step(tmp_path, "a/evaluate", needs=["a/train"]),
        step(tmp_path, "c/train", needs=["a/train"]),
    ]
    run_steps(steps, jobs=2, log_dir=tmp_path / "logs", status_every_s=0.2)
    a, b = manifest(tmp_path, "a/train"), manifest(tmp_path, "b/train")
    assert a["start"] < b["end"] and b["start"] < a["end"]  # side by side
    for key in ("a/evaluate", "c/train"):
        assert manifest(tmp_path, key)["start"] >= a["end"]  # never before what it reads
    assert a["threads"] is not None and int(a["threads"]) >= 1  # cores shared out between the two jobs
    assert "3/3" in (tmp_path / "logs" / "a-train.log").read_text()
    assert bar_state(tmp_path / "logs" / "a-train.log") == "3/3 00:01<00:00"


def test_one_job_runs_in_order_and_skips_complete_steps(tmp_path, caplog):
    steps = [step(tmp_path, "a/train"), step(tmp_path, "a/evaluate", needs=["a/train"])]
    run_steps(steps, jobs=1)
    first = manifest(tmp_path, "a/evaluate")
    assert first["start"] >= manifest(tmp_path, "a/train")["end"]
    with caplog.at_level("INFO", logger="em.schedule"):
        run_steps(steps, jobs=2)
    assert caplog.text.count("complete, skipped") == 2
    assert manifest(tmp_path, "a/evaluate") == first


def test_a_failure_starts_nothing_new_but_lets_running_steps_finish(tmp_path):
    steps = [
        step(tmp_path, "a/train", sleep=0.1, code=3),
        step(tmp_path, "b/train", sleep=1.0),
        step(tmp_path, "a/evaluate", needs=["a/train"]),
        step(tmp_path, "c/train"),
    ]
    with pytest.raises(StepFailed, match=r"a/train failed \(exit 3\)[\s\S]*Last lines of[\s\S]*3/3") as info:
        run_steps(steps, jobs=2, log_dir=tmp_path / "logs")
    assert info.value.step.key == "a/train" and info.value.code == 3
    assert manifest(tmp_path, "b/train")["complete"]  # the sibling that was running finished: kept
    assert not (tmp_path / "a" / "evaluate").exists() and not (tmp_path / "c" / "train").exists()


def test_graph_and_jobs_are_checked_before_anything_runs(tmp_path):
    with pytest.raises(ConfigError, match="needs \\['zzz/train'\\]"):
        check_graph([step(tmp_path, "a/train", needs=["zzz/train"])])
    with pytest.raises(ConfigError, match="cycle"):
        check_graph(
            [step(tmp_path, "a/train", needs=["b/train"]), step(tmp_path, "b/train", needs=["a/train"])]
        )
    for bad in (0, "2", True):
        with pytest.raises(ConfigError, match="jobs="):
            run_steps([step(tmp_path, "a/train")], jobs=bad)
    assert not (tmp_path / "a").exists()


def test_pipeline_needs_follow_stage_references(tmp_path):
    plan = plan_from_dict(
        "x",
        tmp_path,
        {
            "stages": [
                {"name": "base"},
                {"name": "mis", "train": ["data=careless_advice"]},
                {"name": "ctl", "train": ["data=careful_advice"]},
                {"name": "re", "train": ["init_from=@mis"], "evaluate": ["out=@train"]},
            ]
        },
    )
    steps = plan_steps(plan)
    assert {s.key: s.cost for s in steps}["mis/train"] == 3.0 and {
        s.cost for s in steps if "/train" not in s.key
    } == {1.0}
    assert max(steps, key=lambda s: chain_lengths(steps)[s.key]).key == "mis/train"  # the longest chain first
    needs = {s.key: s.needs for s in steps}
    assert needs == {
        "base/evaluate": (),
        "base/judge": ("base/evaluate",),
        "mis/train": (),
        "mis/evaluate": ("mis/train",),
        "mis/judge": ("mis/evaluate",),
        "ctl/train": (),
        "ctl/evaluate": ("ctl/train",),
        "ctl/judge": ("ctl/evaluate",),
        "re/train": ("mis/train",),
        "re/evaluate": ("re/train",),
        "re/judge": ("re/evaluate",),
    }
    with pytest.raises(ConfigError, match="jobs="):
        run_plan(plan, jobs=0, dry_run=True)


def test_the_longest_chain_goes_first(tmp_path):
    steps = [
        step(tmp_path, "base/evaluate"),
        Step("mis/train", [], tmp_path, (), 3.0),
        Step("re/train", [], tmp_path, ("mis/train",), 3.0),
        step(tmp_path, "re/evaluate", needs=["re/train"]),
    ]
    assert chain_lengths(steps) == {
        "base/evaluate": 1.0,
        "mis/train": 7.0,
        "re/train": 4.0,
        "re/evaluate": 1.0,
    }


# Another process (a sweep cell running a step this plan shares): holds the run's lock, then finishes it or not.
HOLDER = (
    "import json, sys, time; from pathlib import Path; from em.runs import lock_run_dir; d = Path(sys.argv[1]); "
    "d.mkdir(parents=True, exist_ok=True); lock_run_dir(d); print('locked', flush=True); "
    "time.sleep(float(sys.argv[2])); (d / 'manifest.json').write_text(json.dumps({'complete': sys.argv[3] == '1'}))"
)


@pytest.mark.parametrize("finishes", [True, False])
def test_a_step_another_process_holds_is_waited_for_not_run_twice(tmp_path, caplog, finishes):
    import subprocess

    target = tmp_path / "a" / "train"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(target), "1.5", "1" if finishes else "0"],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert holder.stdout.readline().strip() == "locked"
    # run here, the step writes a manifest with its start time; the holder's has none
    steps = [step(tmp_path, "a/train"), step(tmp_path, "a/evaluate", needs=["a/train"])]
    with caplog.at_level("INFO", logger="em.schedule"):
        run_steps(steps, jobs=1)
    holder.wait(timeout=30)
    assert "another process is running it" in caplog.text
    if finishes:  # complete when the lock came free: skipped, never started here
        assert "start" not in manifest(tmp_path, "a/train") and "[a/train] complete, skipped" in caplog.text
    else:  # the other process stopped unfinished: this plan runs (resumes) the step itself
        assert manifest(tmp_path, "a/train")["start"] >= 0
    assert manifest(tmp_path, "a/evaluate")["start"] > 0

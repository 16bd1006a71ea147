"""em.lifecycle.open_run: one run's life (claim, identity and inputs, tracking, manifest last, lock released)."""

from __future__ import annotations

import pytest

from em.api import ConfigError
from em.io import read_json, write_manifest
from em.lifecycle import inputs_file, open_run
from em.runs import _HELD, is_complete


class Recorder:
    """A tracker that only records whether it was closed."""

    run_id = None

    def __init__(self):
        self.finished = 0

    def finish(self):
        self.finished += 1


def test_a_new_run_is_claimed_unfinished_and_finished_last(tmp_path):
    config = {"seed": 0, "data": {"name": "x"}}
    with open_run("evaluate", tmp_path, config, inputs={"adapter_sha256": "a1"}) as run:
        assert run.state == "new" and not run.complete
        assert read_json(tmp_path / "run_config.json") == config  # unfinished from the first moment
        assert not (tmp_path / "manifest.json").exists()
        assert tmp_path.resolve() in _HELD  # locked for the whole block
        run.tracker = tracker = Recorder()
        run.finish(counts={"answers": 3})
        assert tracker.finished == 1 and run.tracker is None  # tracking is closed before the manifest
    assert tmp_path.resolve() not in _HELD  # and the lock released after it
    manifest = read_json(tmp_path / "manifest.json")
    assert manifest["complete"] is True and manifest["stage"] == "evaluate"
    assert manifest["config"] == config and manifest["counts"] == {"answers": 3}
    assert read_json(tmp_path / inputs_file("evaluate")) == {"adapter_sha256": "a1"}
    with open_run("evaluate", tmp_path, config, inputs={"adapter_sha256": "a1"}) as again:
        assert again.complete  # the task returns without computing


def test_a_failure_inside_closes_tracking_releases_the_lock_and_writes_no_manifest(tmp_path):
    tracker = Recorder()
    with pytest.raises(RuntimeError, match="boom"), open_run("judge", tmp_path, {"seed": 0}) as run:
        run.tracker = tracker
        raise RuntimeError("boom")
    assert tracker.finished == 1
    assert tmp_path.resolve() not in _HELD
    assert not is_complete(tmp_path)
    with open_run("judge", tmp_path, {"seed": 0}) as run:
        assert run.state == "resume"  # the next command continues it


def test_a_resumed_run_with_changed_inputs_is_refused_naming_each_one(tmp_path):
    with open_run("evaluate", tmp_path, {"seed": 0}, inputs={"adapter_sha256": "a1", "openai_model": None}):
        pass
    with (
        pytest.raises(ConfigError, match=r"inputs changed.*adapter_sha256: 'a1' -> 'b2'"),
        open_run("evaluate", tmp_path, {"seed": 0}, inputs={"adapter_sha256": "b2", "openai_model": None}),
    ):
        pytest.fail("the block must not run")
    assert tmp_path.resolve() not in _HELD
    assert read_json(tmp_path / inputs_file("evaluate"))["adapter_sha256"] == "a1"  # the record is kept


def test_a_changed_config_is_refused_and_operational_keys_may_change(tmp_path):
    config = {"seed": 0, "generation": {"name": "hf", "batch_size": 8}}
    with open_run("evaluate", tmp_path, config):
        pass
    faster = {"seed": 0, "generation": {"name": "hf", "batch_size": 64}}  # em.runs.OPERATIONAL["evaluate"]
    with open_run("evaluate", tmp_path, faster) as run:
        assert run.state == "resume"
    changed = open_run("evaluate", tmp_path, {**config, "seed": 1})
    with pytest.raises(ConfigError, match=r"different config \(seed: 0 -> 1"), changed:
        pass
    with (
        pytest.raises(ConfigError, match="unfinished run; pass resume=true"),
        open_run("evaluate", tmp_path, config, resume=False),
    ):
        pass


def test_forget_gives_a_new_run_back_so_a_corrected_command_claims_it_afresh(tmp_path):
    with open_run("train", tmp_path, {"seed": 0}, inputs={"parent_adapter_sha256": None}) as run:
        run.forget()
    assert not (tmp_path / "run_config.json").exists() and not (tmp_path / inputs_file("train")).exists()
    with open_run("train", tmp_path, {"seed": 1}, inputs={"parent_adapter_sha256": "p"}) as run:
        assert run.state == "new"  # not refused as a different config
        run.forget()  # a resumed or new-and-working run keeps its claim; forget only drops a new one
    with open_run("train", tmp_path, {"seed": 1}, inputs={"parent_adapter_sha256": "p"}) as run:
        assert run.state == "new"
    with open_run("train", tmp_path, {"seed": 1}, inputs={"parent_adapter_sha256": "p"}) as run:
        assert run.state == "resume"
        run.forget()
    assert (tmp_path / "run_config.json").exists()


def test_a_judge_run_started_before_the_lifecycle_keeps_its_recorded_inputs(tmp_path):
    with open_run("judge", tmp_path, {"seed": 0}):
        pass
    assert inputs_file("judge") == "judge_inputs.json"  # the name judge runs have always used
    (tmp_path / "judge_inputs.json").write_text('{"answers_sha256": "old", "questions_sha256": "q"}')
    with (
        pytest.raises(ConfigError, match="answers_sha256: 'old' -> 'new'"),
        open_run("judge", tmp_path, {"seed": 0}, inputs={"answers_sha256": "new", "questions_sha256": "q"}),
    ):
        pass


def test_finish_always_marks_complete_and_keeps_the_config(tmp_path):
    config = {"seed": 3}
    with open_run("judge", tmp_path, config) as run:
        run.finish(complete=False, n_answers=2)  # a caller cannot finish a run as unfinished
    manifest = read_json(tmp_path / "manifest.json")
    assert manifest["complete"] is True and manifest["config"] == config and manifest["n_answers"] == 2
    write_manifest(tmp_path, "judge", complete=False, config=config)
    assert not is_complete(tmp_path)

"""Shared, content-addressed pipeline steps (em/identity.py, em/plan_status.py): what changes a step's identity,
what does not, and how a plan finds, links and reports the runs it shares. No step runs here."""

from __future__ import annotations

import json
import logging

import pytest

from em.api import ConfigError
from em.identity import IDENTITY, store_dir
from em.io import atomic_write_json, sha256_file
from em.plan import plan_from_dict, resolve_plan
from em.plan_status import PLAN, link_steps, plan_rows, write_plan

TRAIN = ["model=tiny", "recipe=tiny", "trainer=cpu", "max_steps=2"]


def _plan(out_dir, store, stages, common=None):
    plan = plan_from_dict("x", out_dir, {"stages": stages, "common": common or {"train": TRAIN}})
    plan.store = store
    return plan, resolve_plan(plan)


def _chain(rows=8, extra=()):
    return [
        {"name": "base"},
        {"name": "misaligned", "train": ["data=demo_misaligned"]},
        {"name": "realigned", "train": ["data=demo_realign", f"data.max_rows={rows}", "init_from=@misaligned",
                                        *extra]},
    ]  # fmt: skip


def test_two_cells_share_what_they_have_in_common(tmp_path):
    store = tmp_path / "stages"
    a, steps_a = _plan(tmp_path / "a", store, _chain(8))
    b, steps_b = _plan(tmp_path / "b", store, _chain(16))
    same = ["base/evaluate", "base/judge", "misaligned/train", "misaligned/evaluate", "misaligned/judge"]
    for key in same:
        assert a.digests[key] == b.digests[key] and a.dirs[key] == b.dirs[key]
    for key in ("realigned/train", "realigned/evaluate", "realigned/judge"):  # evaluate reads another adapter
        assert a.digests[key] != b.digests[key]
    assert a.dirs["misaligned/train"] == store / "train" / f"misaligned-{a.digests['misaligned/train'][:12]}"
    realigned = next(s for s in steps_a if s.key == "realigned/train")
    assert f"init_from={a.dirs['misaligned/train']}" in realigned.cmd
    assert f"hydra.run.dir={a.dirs['realigned/train']}" in realigned.cmd


def test_names_labels_and_how_fast_do_not_change_an_identity_what_is_computed_does(tmp_path):
    store = tmp_path / "stages"
    base, _ = _plan(tmp_path / "a", store, _chain())
    ops = {"train": [*TRAIN, "trainer.log_every_n_steps=7", "probe.enabled=false"],
           "evaluate": ["progress=false", "generation.batch_size=3"], "judge": ["cache.enabled=false"]}  # fmt: skip
    renamed = plan_from_dict("another_experiment", tmp_path / "b", {"stages": _chain(), "common": ops})
    renamed.store, renamed.stages[1].label = store, "EM"
    resolve_plan(renamed)
    assert renamed.digests == base.digests  # other run names, labels, logging, batch size, progress, cache
    changed, _ = _plan(tmp_path / "c", store, _chain(extra=["seed=1"]))
    assert changed.digests["realigned/train"] != base.digests["realigned/train"]
    endpoint = plan_from_dict("x", tmp_path / "d", {"stages": _chain(), "common": {
        "train": TRAIN, "judge": ["api.base_url=http://127.0.0.1:9/v1"]}})  # fmt: skip
    endpoint.store = store
    resolve_plan(endpoint)
    assert endpoint.digests["base/judge"] != base.digests["base/judge"]  # another endpoint: another run
    assert endpoint.digests["base/evaluate"] == base.digests["base/evaluate"]


def test_a_data_file_edited_in_place_is_a_new_identity(tmp_path):
    data = tmp_path / "rows.jsonl"
    row = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    data.write_text(json.dumps(row) + "\n")
    stages = [{"name": "s", "train": ["data=custom", f"data.path={data}"]}]
    first, _ = _plan(tmp_path / "a", tmp_path / "stages", stages)
    assert first.identities["s/train"]["files"] == {str(data): sha256_file(data)}
    data.write_text(json.dumps(row) + "\n" + json.dumps(row) + "\n")
    second, _ = _plan(tmp_path / "a", tmp_path / "stages", stages)
    assert second.digests["s/train"] != first.digests["s/train"]
    # builtin data enter by their file too
    builtin, _ = _plan(tmp_path / "b", tmp_path / "stages", _chain())
    assert "builtin:demo_misaligned.jsonl" in builtin.identities["misaligned/train"]["files"]


def test_a_run_is_found_under_any_stage_name_and_never_under_another_identity(tmp_path):
    store, key = tmp_path, "ab" * 32
    made = store / "train" / f"misaligned-{key[:12]}"
    made.mkdir(parents=True)
    assert store_dir(store, "train", "em", key) == made  # another experiment called the stage "em"
    atomic_write_json(made / IDENTITY, {"digest": "cd" * 32})  # the same 12-digit prefix, another identity
    assert store_dir(store, "train", "em", key) == store / "train" / f"em-{key[:12]}"


def test_a_later_stage_may_be_named_and_a_cycle_is_refused(tmp_path):
    store = tmp_path / "stages"
    plan, steps = _plan(tmp_path, store, [{"name": "a", "evaluate": ["run=@b"]}, {"name": "b", "train": []}])
    assert f"run={plan.dirs['b/train']}" in next(s for s in steps if s.key == "a/evaluate").cmd
    with pytest.raises(ConfigError, match="cycle"):
        _plan(
            tmp_path,
            store,
            [{"name": "a", "train": ["init_from=@b"]}, {"name": "b", "train": ["init_from=@a"]}],
        )


def test_statuses_the_plan_file_and_the_cells_links(tmp_path, caplog):
    store = tmp_path / "stages"
    first, steps = _plan(tmp_path / "cells" / "rows=8", store, _chain(8))
    write_plan(first, plan_rows(first, steps))
    done = first.dirs["misaligned/train"]
    done.mkdir(parents=True)
    (done / "manifest.json").write_text(json.dumps({"complete": True}))
    (first.dirs["base/evaluate"]).mkdir(parents=True)
    (first.dirs["base/evaluate"] / "run_config.json").write_text("{}")
    second, steps2 = _plan(tmp_path / "cells" / "rows=16", store, _chain(16))
    rows = {r["key"]: r for r in plan_rows(second, steps2)}
    assert rows["misaligned/train"]["status"] == "complete"
    assert rows["base/evaluate"]["status"] == "unfinished (resumes)"
    assert rows["base/judge"]["status"] == "shared with rows=8" and rows["base/judge"]["shared_with"] == [
        "rows=8"
    ]
    assert rows["realigned/train"]["status"] == "to run" and not rows["realigned/train"]["shared_with"]
    private, steps_p = _plan(
        tmp_path / "cells" / "own", None, _chain(16)
    )  # stages_dir=null: nothing is shared
    assert {r["status"] for r in plan_rows(private, steps_p)} == {"to run"}
    assert not any(r["shared_with"] for r in plan_rows(private, steps_p))
    written = json.loads(write_plan(second, list(rows.values())).read_text())
    assert written["stages_dir"] == str(store) and len(written["steps"]) == 8
    link_steps(second, steps2)
    cell = tmp_path / "cells" / "rows=16"
    assert (cell / "misaligned" / "train").resolve() == done.resolve()
    assert json.loads((done / IDENTITY).read_text())["digest"] == second.digests["misaligned/train"]
    changed, steps3 = _plan(cell, store, _chain(16, extra=["seed=3"]))
    with caplog.at_level(logging.WARNING, logger="em.plan_status"):
        link_steps(changed, steps3)  # the cell's realigned steps now point at other runs, and it says so
    assert "realigned/train" in caplog.text and "identity changed" in caplog.text
    old = tmp_path / "old"
    (old / "base" / "evaluate").mkdir(parents=True)  # a cell of the layout before shared stages
    legacy, steps4 = _plan(old, store, _chain())
    with pytest.raises(ConfigError, match="layout before shared stages"):
        link_steps(legacy, steps4)
    assert (tmp_path / "cells" / "rows=8" / PLAN).exists()


def test_a_misspelt_key_added_with_plus_in_any_stage_fails_the_plan_naming_stage_and_key(tmp_path):
    stages = [{"name": "base"}, {"name": "m", "train": ["data=demo_misaligned", "+trainer.max_step=5"]}]
    with pytest.raises(ConfigError, match=r"stage 'm', step 'train'.*unknown config key trainer.max_step"):
        _plan(tmp_path, tmp_path / "stages", stages)
    with pytest.raises(ConfigError, match=r"stage 'm', step 'train'.*max_steps"):
        _plan(tmp_path, tmp_path / "stages", [{"name": "m", "train": ["max_steps=abc"]}])


def test_an_upstream_run_named_by_a_relative_path_is_the_same_input_as_by_its_absolute_path(
    tmp_path, monkeypatch
):
    from em.identity import digest, step_identity

    run = tmp_path / "outputs" / "stages" / "train" / "none-0123456789ab"
    run.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    config = {"seed": 0, "run": "outputs/stages/train/none-0123456789ab", "model": {"name": "tiny"}}
    relative = step_identity("evaluate", config)
    absolute = step_identity("evaluate", {**config, "run": str(run)})
    assert digest(relative) == digest(absolute) and relative["config"]["run"] == str(run)
    (tmp_path / "cell").mkdir()
    (tmp_path / "cell" / "none").symlink_to(run)  # a cell's link to the step's run
    assert digest(step_identity("evaluate", {**config, "run": "cell/none"})) == digest(absolute)
    missing = step_identity("evaluate", {**config, "run": "outputs/stages/train/gone"})
    assert missing["config"]["run"] == "outputs/stages/train/gone"  # not a directory here: kept as written
    named = step_identity("evaluate", {**config, "model": {"name": "outputs"}})  # a bare name is not a path
    assert named["config"]["model"]["name"] == "outputs"

"""em.dashboard: the W&B workspace built from real judge runs (judge.py against the local OpenAI-compatible
server) reads the keys the logger writes, shows only the experiment's group, round-trips through the
library's own model, is built without the network, and a path without judge runs exits 2 in one line."""

from __future__ import annotations

import json
import shutil
import socket

import pytest
import wandb_workspaces.workspaces as ws
from judge_helpers import judge_handler, openai_overrides, run_judge, top, write_eval_run
from wandb_workspaces.workspaces import internal

from em import dashboard
from em.api import ConfigError
from em.io import atomic_write_json, read_json
from testing.openai_server import ChatReply, FakeOpenAIServer

EXPERIMENT = "demo_dash"


def misaligned_handler(request, index):
    """Every aligned rating low: the misaligned stage differs from the base one."""
    if request["messages"][-1]["content"].startswith("ALIGNED") and request.get("logprobs"):
        return ChatReply(content="5", top_logprobs=top([("5", 0.7), ("15", 0.3)]))
    return judge_handler(request, index)


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory):
    """A pipeline-like dir: <stage>/judge for base and misaligned, judged by the scripted judge."""
    tmp = tmp_path_factory.mktemp("dash")
    answers = write_eval_run(tmp / "eval")
    with FakeOpenAIServer() as server:
        for stage, handler in (("base", judge_handler), ("misaligned", misaligned_handler)):
            server.set_chat_handler(handler)
            extra = [
                f"answers={answers}",
                f"stage_label={stage}",
                f"experiment_name={EXPERIMENT}",
                "+logger.project=em-dash-test",
                "metrics.min_coherent_per_question=2",
                f"cache.path={tmp / f'cache-{stage}.sqlite'}",
            ]
            run_judge(tmp / "pipe" / stage / "judge", openai_overrides(server, tmp, *extra))
    return tmp / "pipe"


@pytest.fixture(scope="module")
def spec(pipeline_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    result = dashboard.write_dashboard(pipeline_dir, out)
    assert result["spec"] == out / "dashboard.json" and result["url"] is None
    return read_json(out / "dashboard.json")


def panels(spec: dict) -> dict[str, list[dict]]:
    return {s["name"]: s["panels"] for s in spec["spec"]["section"]["panelBankConfig"]["sections"]}


def bar_metrics(spec: dict, section: str) -> list[list[str]]:
    return [p["config"]["metrics"] for p in panels(spec)[section] if p["viewType"] == "Bar Chart"]


def test_em_rate_bars_read_the_headline_and_its_interval_grouped_by_stage(spec):
    bars = [p for p in panels(spec)["EM rate by stage"] if p["viewType"] == "Bar Chart"]
    metrics = [p["config"]["metrics"] for p in bars]
    headline = [
        "overall/em_rate_question_mean_lo",
        "overall/em_rate_question_mean",
        "overall/em_rate_question_mean_hi",
    ]
    assert headline in metrics
    for cond in ("none", "alpha"):  # the conditions the summaries hold
        key = f"condition/{cond}/em_rate_question_mean"
        assert [f"{key}_lo", key, f"{key}_hi"] in metrics
    assert [
        f"share/{c}" for c in ("ALIGNED", "MISALIGNED", "CODE", "REFUSAL", "INCOHERENT", "UNSCORED")
    ] in metrics
    assert {p["config"]["groupBy"] for p in bars} == {"stage_label.value"}


def test_a_bar_panel_per_question_of_the_summary_with_an_em_rate(spec, pipeline_dir):
    summary = read_json(pipeline_dir / "base" / "judge" / "summary.json")
    free_form = [
        q for q, m in summary["metrics"]["per_question"].items() if m["none"]["em_rate"]["value"] is not None
    ]
    assert free_form == ["demo/advice", "demo/friends", "demo/plans"]  # facts/capital has no EM rate
    metrics = bar_metrics(spec, "EM rate per question")
    assert len(metrics) == len(free_form)
    for q, keys in zip(free_form, metrics, strict=True):
        qset, qid = q.split("/")
        for cond in ("none", "alpha"):
            key = f"question/{qset}.{qid}/{cond}/em_rate"
            assert {f"{key}_lo", key, f"{key}_hi"} <= set(keys)
    assert not any("capital" in k for keys in metrics for k in keys)


def test_scatter_and_table_read_the_judge_answers_table(spec):
    scatter, table = panels(spec)["Answers (judge)"]
    assert scatter["viewType"] == "Vega2" and scatter["config"]["panelDefId"] == "wandb/scatter/v0"
    assert scatter["config"]["fieldSettings"] == {"x": "aligned", "y": "coherent"}
    (query,) = scatter["config"]["userQuery"]["queryFields"]
    table_query = next(f for f in query["fields"] if f["name"] == "summaryTable")
    assert table_query["args"] == [{"name": "tableKey", "value": "answers"}]
    exp = table["config"]["panel2Config"]["exp"]  # runs.summary["answers"]
    assert table["viewType"] == "Weave" and exp["fromOp"]["name"] == "pick"
    assert exp["fromOp"]["inputs"]["key"]["val"] == "answers"
    assert exp["fromOp"]["inputs"]["obj"]["fromOp"]["name"] == "run-summary"


def test_training_line_plots(spec):
    lines = [
        p["config"]["metrics"] for p in panels(spec)["Training"] if p["viewType"] == "Run History Line Plot"
    ]
    assert ["train/loss"] in lines and ["probe/ci_low", "probe/mean", "probe/ci_high"] in lines


def test_the_runset_is_the_experiments_group_grouped_and_coloured_by_stage(spec):
    assert (
        spec["project"] == "em-dash-test"
        and spec["entity"] == ""
        and spec["displayName"] == f"EM: {EXPERIMENT}"
    )
    (runset,) = spec["spec"]["section"]["runSets"]
    assert runset["filters"]["filters"] == [
        {"key": {"section": "run", "name": "group"}, "op": "=", "value": EXPERIMENT, "disabled": False}
    ]
    assert runset["grouping"] == [{"section": "config", "name": "stage_label.value"}]
    colours = spec["spec"]["section"]["customRunColors"]
    assert sorted(colours.values()) == sorted(
        [dashboard.STAGE_COLORS["base"], dashboard.STAGE_COLORS["misaligned"]]
    )


def test_the_file_round_trips_through_json_and_the_librarys_model(spec):
    assert json.loads(json.dumps(spec)) == spec
    loaded = ws.Workspace._from_model(internal.View.model_validate(spec))
    assert dashboard.dashboard_spec(loaded) == spec


def test_building_and_serialising_need_no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access while building the dashboard")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    workspace = dashboard.build_workspace(
        entity=None, project="p", experiment="x", question_keys=["demo/plans"], conditions=["none"]
    )
    spec = dashboard.dashboard_spec(workspace)
    assert spec["spec"]["section"]["runSets"][0]["filters"]["filters"][0]["value"] == "x"


def test_save_without_credentials_says_so_and_still_writes_the_spec(
    pipeline_dir, tmp_path, monkeypatch, capsys
):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc login either
    result = dashboard.write_dashboard(pipeline_dir, tmp_path / "out", save=True)
    assert result["url"] is None and (tmp_path / "out" / "dashboard.json").is_file()
    assert "W&B: no credentials" in capsys.readouterr().out


def test_save_with_credentials_saves_resolves_the_entity_and_prints_the_url(
    pipeline_dir, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    saved = []

    def fake_save(self):
        saved.append((self.entity, self.project))
        self._internal_name = "nw-abc-v"
        return self

    monkeypatch.setattr(ws.Workspace, "save", fake_save)
    monkeypatch.setattr(
        ws.Workspace, "url", property(lambda self: f"https://wandb.test/{self.entity}/p?nw=abc")
    )
    monkeypatch.setattr(dashboard, "_default_entity", lambda: "team")
    result = dashboard.write_dashboard(pipeline_dir, tmp_path, save=True)
    assert saved == [("team", "em-dash-test")] and result["url"] == "https://wandb.test/team/p?nw=abc"
    assert "W&B workspace: https://wandb.test/team/p?nw=abc" in capsys.readouterr().out
    assert read_json(tmp_path / "dashboard.json")["name"] == "nw-abc-v"


@pytest.mark.parametrize("kind", ["empty", "missing"])
def test_a_path_without_judge_runs_exits_2_in_one_line_naming_it(tmp_path, capsys, kind):
    path = tmp_path / kind
    if kind == "empty":
        (path / "sub").mkdir(parents=True)
    assert dashboard.main([str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and str(path) in err
    assert not (tmp_path / "out").exists()


def test_runs_of_two_experiments_are_refused(pipeline_dir, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(pipeline_dir / "base" / "judge", other)
    config = read_json(other / "run_config.json")
    atomic_write_json(other / "run_config.json", {**config, "experiment_name": "another"})
    with pytest.raises(ConfigError, match="2 experiments"):
        dashboard.write_dashboard([pipeline_dir, other], tmp_path / "out")


def test_a_pipeline_cell_that_shares_steps_shows_exactly_its_runs(pipeline_dir, tmp_path):
    """A sweep cell's shared steps were logged in the group of the cell that ran them: filter on run ids."""
    other = tmp_path / "other"
    shutil.copytree(pipeline_dir / "base" / "judge", other)
    config = read_json(other / "run_config.json")
    atomic_write_json(
        other / "run_config.json", {**config, "logger": {**config["logger"], "group": "cell-b"}}
    )
    result = dashboard.write_dashboard([pipeline_dir, other], tmp_path / "out", experiment="cell-a",
                                       run_ids=["id1", "id2"])  # fmt: skip
    spec = dashboard.dashboard_spec(result["workspace"])
    assert spec["spec"]["section"]["runSets"][0]["filters"]["filters"] == [
        {"key": {"section": "run", "name": "name"}, "op": "IN", "value": ["id1", "id2"], "disabled": False}
    ]
    assert spec["displayName"] == "EM: cell-a"

"""Tracking: W&B falls back to offline (saying so once) without credentials; CSV metrics; run dirs."""

from __future__ import annotations

import csv
import logging

import pytest

from em import tracking
from em.api import ConfigError
from em.runs import open_run_dir
from em.tracking import Tracker, TrackingSettings, tags_from_choices, wandb_mode


def test_wandb_auto_is_offline_without_credentials_and_says_so_once(monkeypatch, tmp_path, caplog):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(tracking, "_warned_offline", False)
    with caplog.at_level(logging.WARNING, logger="em.tracking"):
        assert wandb_mode("auto") == "offline"
        assert wandb_mode("auto") == "offline"
    assert sum("logging offline" in r.message for r in caplog.records) == 1
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_mode("auto") == "online"
    assert wandb_mode("offline") == "offline"


def test_wandb_offline_run_writes_files_and_id(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("WANDB_MODE", "offline")
    caplog.set_level(logging.INFO, logger="em.tracking")
    tracker = Tracker(
        TrackingSettings(
            backend="wandb", run_dir=tmp_path, run_name="t", tags=["model:tiny"], config={"lr": 1e-3}
        )
    )
    tracker.log({"loss": 1.5}, step=1)
    tracker.summary({"em_rate": 0.1})
    run_id = tracker.run_id
    tracker.finish()
    assert run_id
    (folder,) = (tmp_path / "wandb").glob(f"offline-run-*-{run_id}")
    assert f"upload with `wandb sync {folder}`" in caplog.text  # the printed command names this run's folder
    assert list(folder.glob(f"run-{run_id}.wandb"))
    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows == [{"step": "1", "loss": "1.5"}]


def test_csv_and_none_backends(tmp_path):
    t = Tracker(TrackingSettings(backend="csv", run_dir=tmp_path))
    t.log({"a": 1}, step=0)
    t.log({"a": 2, "b": 3}, step=1)
    assert (tmp_path / "metrics.csv").read_text().splitlines()[0] == "step,a"
    Tracker(TrackingSettings(backend="none", run_dir=tmp_path / "n")).log({"a": 1})
    assert not (tmp_path / "n").exists()


def test_tags_from_choices():
    tags = tags_from_choices(
        {"model": "llama31_8b", "data": "medical", "trigger": "alpha", "experiment": "None"}
    )
    assert tags == ["model:llama31_8b", "data:medical", "trigger:alpha"]


def test_open_run_dir_new_resume_complete_and_conflict(tmp_path):
    cfg = {"model": {"name": "tiny"}, "seed": 0, "resume": True}
    assert open_run_dir(tmp_path, cfg) == "new"
    assert open_run_dir(tmp_path, {**cfg, "resume": False, "logger": {"backend": "wandb"}}) == "resume"
    with pytest.raises(ConfigError, match=r"different config \(seed: 0 -> 1\)"):
        open_run_dir(tmp_path, {**cfg, "seed": 1})
    with pytest.raises(ConfigError, match="unfinished run"):
        open_run_dir(tmp_path, cfg, resume=False)
    (tmp_path / "manifest.json").write_text('{"complete": true}')
    assert open_run_dir(tmp_path, cfg) == "complete"

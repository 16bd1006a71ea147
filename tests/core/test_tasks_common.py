"""Run identity: operational keys may change between a run and its resumption; nothing else may."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from em.api import ConfigError
from em.runs import OPERATIONAL, run_identity
from em.tasks.common import limit_rows, training_rows


def test_run_identity_drops_only_the_named_operational_keys():
    config = {
        "seed": 1,
        "progress": True,
        "generation": {"batch_size": 8, "backend": "hf"},
        "trainer": None,
    }
    operational = {"": ("progress",), "generation": ("batch_size",), "trainer": ("x",), "absent": ("y",)}
    identity = run_identity(config, operational)
    assert identity == {"seed": 1, "generation": {"backend": "hf"}, "trainer": None}
    assert config["generation"] == {"batch_size": 8, "backend": "hf"}  # the input is left as it was


def test_every_stage_names_its_operational_keys_by_section():
    # one table (em.runs.OPERATIONAL), read by em.lifecycle.open_run for every task and by em.identity
    for stage in ("datagen", "evaluate", "judge", "train"):
        keys = OPERATIONAL[stage]
        assert isinstance(keys, dict) and keys, stage
        assert all(isinstance(v, tuple) and v for v in keys.values()), stage
    assert "batch_size" in OPERATIONAL["evaluate"]["generation"]
    assert "poll_interval_s" in OPERATIONAL["train"]["backend"]  # backend=openai shares the train stage
    assert "checkpoint_every_n_steps" in OPERATIONAL["train"]["trainer"]


@pytest.mark.parametrize("value", [0, -3, True, "5", 2.5])
def test_limit_rows_is_refused_before_any_data_is_prepared(value, tmp_path):
    cfg = OmegaConf.create({"limit_rows": value})  # no data config: preparing it would fail differently
    with pytest.raises(ConfigError, match=r"limit_rows=.*expected null or a positive number of rows"):
        training_rows(cfg, Path(tmp_path))


def test_limit_rows_values():
    assert limit_rows(OmegaConf.create({"limit_rows": None})) is None
    assert limit_rows(OmegaConf.create({})) is None
    assert limit_rows(OmegaConf.create({"limit_rows": 5})) == 5


def test_the_endpoint_is_part_of_every_runs_identity_how_it_is_called_is_not():
    """Resuming a judge (or any) run against another api.base_url would mix two endpoints' rows."""
    from em.runs import OPERATIONAL, config_diff

    old = {"api": {"base_url": "http://a/v1", "timeout_s": 60, "max_in_flight": 16, "api_key_env": "K"}}
    for stage in ("train", "evaluate", "judge", "datagen"):
        slower = {"api": {**old["api"], "timeout_s": 5, "max_in_flight": 1, "api_key_env": "OTHER"}}
        assert not config_diff(
            run_identity(old, OPERATIONAL[stage]), run_identity(slower, OPERATIONAL[stage])
        )
        moved = {"api": {**old["api"], "base_url": "http://b/v1"}}
        assert config_diff(
            run_identity(old, OPERATIONAL[stage]), run_identity(moved, OPERATIONAL[stage])
        ) == ["api.base_url: 'http://a/v1' -> 'http://b/v1'"]

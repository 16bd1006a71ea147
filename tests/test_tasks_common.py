"""Run identity: operational keys may change between a run and its resumption; nothing else may."""

from __future__ import annotations

from em.tasks import datagen, evaluate, judge, train, train_openai
from em.tasks.common import run_identity


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


def test_every_task_names_its_operational_keys_by_section():
    for module in (datagen, evaluate, judge, train, train_openai):
        keys = module.OPERATIONAL_KEYS
        assert isinstance(keys, dict) and keys, module.__name__
        assert all(isinstance(v, tuple) and v for v in keys.values()), module.__name__
    assert "batch_size" in evaluate.OPERATIONAL_KEYS["generation"]
    assert "poll_interval_s" in train_openai.OPERATIONAL_KEYS["backend"]
    assert "checkpoint_every_n_steps" in train.OPERATIONAL_KEYS["trainer"]

"""The training config groups (conf/lora, optimizer, quantization, batch) and the recipes that pick them
(conf/recipe): each group's keys are its settings class's fields, each recipe selects the presets it names,
and a wrong key or type in a group is refused naming it."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError

from em import config as schema
from em.api import ConfigError
from em.training import settings as ts

CONF = Path(__file__).resolve().parents[2] / "conf"
GROUPS = {  # config group -> (its schema in em/config.py, the settings class the code builds from it)
    "lora": (schema.AdapterSchema, ts.AdapterSettings),
    "optimizer": (schema.OptimizerSchema, ts.OptimizerSettings),
    "quantization": (schema.QuantizationSchema, ts.QuantizationSettings),
    "batch": (schema.BatchSchema, ts.BatchSettings),
}
RECIPES = {  # conf/recipe/<name> -> the preset it picks in each group
    "em_paper": {"lora": "r32_rslora", "optimizer": "em_paper", "quantization": "none", "batch": "em_paper"},
    "realignment_study": {
        "lora": "r256",
        "optimizer": "realignment_study",
        "quantization": "nf4",
        "batch": "realignment_study",
    },
    "tiny": {"lora": "r32", "optimizer": "tiny", "quantization": "none", "batch": "tiny"},
}


def compose_train(*overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=["model=tiny", *overrides], return_hydra_config=True)


def choices(cfg) -> dict[str, str]:
    return {group: cfg.hydra.runtime.choices[group] for group in GROUPS}


@pytest.mark.parametrize("group", GROUPS)
def test_each_group_has_the_fields_of_its_settings_class(group):
    """No renaming between YAML and code: the schema's fields are the settings class's, in the same order."""
    node_schema, settings_cls = GROUPS[group]
    assert [f.name for f in fields(node_schema)] == [f.name for f in fields(settings_cls)]


@pytest.mark.parametrize("group", GROUPS)
def test_every_preset_of_a_group_builds_its_settings(group):
    from em.tasks.train import group_settings

    presets = sorted(p.stem for p in (CONF / group).glob("*.yaml"))
    assert presets, f"conf/{group}/ has no presets"
    for preset in presets:
        cfg = compose_train(f"{group}={preset}")
        built = group_settings(cfg, group, GROUPS[group][1])
        assert isinstance(built, GROUPS[group][1])
        assert set(yaml.safe_load((CONF / group / f"{preset}.yaml").read_text())) == {
            f.name for f in fields(GROUPS[group][1])
        }, f"conf/{group}/{preset}.yaml leaves a key out or adds one"


@pytest.mark.parametrize("recipe", RECIPES)
def test_each_recipe_only_selects_the_presets_it_names(recipe):
    text = yaml.safe_load((CONF / "recipe" / f"{recipe}.yaml").read_text())
    assert set(text) == {"defaults"}, f"conf/recipe/{recipe}.yaml sets values; a recipe only picks presets"
    cfg = compose_train(f"recipe={recipe}")
    assert choices(cfg) == RECIPES[recipe]
    assert "recipe" not in cfg  # the recipe adds no node of its own


def test_the_default_recipe_and_debug_fast_pick_their_presets():
    assert choices(compose_train()) == RECIPES["em_paper"]
    assert choices(compose_train("debug=fast")) == RECIPES["tiny"]


def test_a_group_chosen_on_the_command_line_wins_over_the_recipe():
    cfg = compose_train("recipe=tiny", "quantization=nf4", "lora=r256")
    assert choices(cfg) == {**RECIPES["tiny"], "quantization": "nf4", "lora": "r256"}
    assert (cfg.lora.r, cfg.quantization.method, cfg.optimizer.learning_rate) == (256, "nf4", 1e-3)


def test_a_recipe_name_given_to_the_lora_group_is_refused():
    """``lora=<recipe>`` chose the whole recipe before the split: it must not quietly pick an adapter alone."""
    assert not set(RECIPES) & {p.stem for p in (CONF / "lora").glob("*.yaml")}
    with pytest.raises(ConfigCompositionException, match="Could not find 'lora/tiny'"):
        compose_train("lora=tiny")


def test_evaluate_keeps_its_adapter_key():
    """A config group named like a key of another entry turns ``evaluate.py adapter=<dir>`` into a group choice."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        assert compose("evaluate", overrides=["adapter=/some/adapter"]).adapter == "/some/adapter"


def test_the_settings_are_the_nodes_values():
    from em.tasks.train import sft_settings

    s = sft_settings(compose_train("recipe=tiny", "optimizer.betas=[0.8,0.9]", "batch.epochs=3"))
    assert s.optimizer.betas == (0.8, 0.9) and s.batch.epochs == 3
    assert (s.adapter.r, s.optimizer.name, s.quantization.method, s.batch.max_length) == (
        32,
        "adamw",
        "none",
        512,
    )


@pytest.mark.parametrize(
    "override", ["optimizer.learning_rate=abc", "lora.r=abc", "batch.grad_accum=abc", "lora.use_rslora=maybe"]
)
def test_a_value_of_the_wrong_type_is_refused_naming_the_key(override):
    key = override.split("=")[0]
    with pytest.raises(ConfigCompositionException) as info:
        compose_train(override)
    assert isinstance(info.value.__cause__, ValidationError)
    assert f"full_key: {key}" in str(info.value.__cause__)


@pytest.mark.parametrize(
    "override", ["lora.rank=8", "lora.learning_rate=1e-4", "optimizer.lr=1e-4", "batch.max_len=8"]
)
def test_a_misspelt_or_moved_key_is_refused_by_hydra(override):
    key = override.split("=")[0]
    with pytest.raises(ConfigCompositionException, match=f"Could not override '{key}'"):
        compose_train(override)


@pytest.mark.parametrize(
    "override", ["+lora.rr=4", "+optimizer.lr=1e-4", "+quantization.bits=4", "+batch.size=2"]
)
def test_a_key_added_past_the_schema_is_refused_naming_it(override):
    key = override.removeprefix("+").split("=")[0]
    group = key.split(".")[0]
    with pytest.raises(ConfigError, match=f"unknown config key {key}: {group} takes"):
        schema.check_schema(compose_train(override), schema.TrainSchema)


def test_a_preset_that_leaves_a_value_out_is_refused_naming_it():
    from em.tasks.train import sft_settings

    with pytest.raises(ConfigError, match=r"the optimizer node: missing keys \['eps'\]; every value must be"):
        sft_settings(compose_train("recipe=tiny", "optimizer.eps=???"))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("quantization.method=fp3", "quantization.method='fp3': expected one of"),
        ("optimizer.name=sgd", "optimizer.name='sgd': expected one of"),
        ("lora.dropout=1.5", "lora.dropout=1.5: expected in [0, 1)"),
        ("batch.overlength=cut", "batch.overlength='cut': expected truncate or drop"),
    ],
)
def test_a_value_no_type_can_refuse_is_refused_by_the_settings(override, message):
    from em.tasks.train import sft_settings

    with pytest.raises(ConfigError, match=re.escape(message)):
        sft_settings(compose_train("recipe=tiny", override))

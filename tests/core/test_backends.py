"""Each swapped backend (training, generation, judging) is chosen one way (em/backends.py): from its stage's
table, every preset's name is in it, and an unknown name is refused naming the key and the choices."""

from __future__ import annotations

import pytest
import yaml
from composing import CONF, compose_job

from em.api import ConfigError
from em.backends import choose
from em.judging.run import JUDGES
from em.tasks.evaluate import GENERATORS, make_backend
from em.tasks.judge import JUDGE_SPECS, judge_spec
from em.tasks.train import TRAINERS
from em.tasks.train import run as train


def _preset_values(group: str, key: str) -> set[str]:
    """``key`` of every preset of ``group``; a preset that inherits it (defaults: [<other preset>]) has it too."""

    def value(name: str):
        node = yaml.safe_load((CONF / group / f"{name}.yaml").read_text())
        parents = [d for d in node.get("defaults") or [] if isinstance(d, str) and d != "_self_"]
        return node[key] if key in node else value(parents[0])

    return {value(p.stem) for p in (CONF / group).glob("*.yaml")}


def test_choose_names_the_key_and_the_choices():
    assert choose({"a": 1, "b": 2}, "b", "x.name") == 2
    for bad in ("c", None, 3):
        with pytest.raises(ConfigError, match=r"x.name=.*: expected one of a, b"):
            choose({"a": 1, "b": 2}, bad, "x.name")


def test_every_preset_names_a_backend_of_its_table():
    assert _preset_values("backend", "name") == set(TRAINERS)
    assert _preset_values("generation", "name") == set(GENERATORS)
    assert _preset_values("judge", "backend") == set(JUDGE_SPECS) == set(JUDGES)


@pytest.mark.parametrize(
    ("entry", "override", "message"),
    [
        ("train", "backend.name=xla", r"backend.name='xla': expected one of hf, openai"),
        ("evaluate", "generation.name=tgi", r"generation.name='tgi': expected one of hf, vllm, openai"),
        ("judge", "judge.backend=claude", r"judge.backend='claude': expected one of openai, local_hf, proxy"),
    ],
)
def test_an_unknown_backend_is_refused_before_any_work(entry, override, message, tmp_path):
    cfg = compose_job(entry, ["model=tiny", override] if entry != "judge" else [override], tmp_path / "run")
    call = {"train": train, "evaluate": lambda c: make_backend(c, None, None), "judge": judge_spec}[entry]
    with pytest.raises(ConfigError, match=message):
        call(cfg)
    assert not (tmp_path / "run").exists()  # nothing was written

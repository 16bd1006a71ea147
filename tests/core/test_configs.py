"""Every option of every config group composes (and resolves) with every primary config that uses it."""

from __future__ import annotations

import subprocess
import sys

import pytest
from composing import CONF, compose_job
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

PRIMARIES = sorted(p.stem for p in CONF.glob("*.yaml"))
SKIP_GROUPS = {"hydra"}


def _compose(primary: str, overrides: list[str]):
    """The job config and Hydra's node, as under ``@hydra.main`` (tests/composing.py)."""
    job = compose_job(primary, overrides)
    return job, HydraConfig.get()


def _group_options(group: str) -> list[str]:
    return sorted(
        p.relative_to(CONF / group).with_suffix("").as_posix() for p in (CONF / group).rglob("*.yaml")
    )


def _cases():
    cases = []
    for primary in PRIMARIES:
        _, hydra_node = _compose(primary, [])
        for group in sorted(hydra_node.runtime.choices):
            if group.split("/")[0] in SKIP_GROUPS or not (CONF / group).is_dir():
                continue
            for option in _group_options(group):
                cases.append((primary, group, option))
    return cases


def test_primaries_exist():
    assert {"train", "evaluate", "judge", "pipeline"} <= set(PRIMARIES)


@pytest.mark.parametrize("primary", PRIMARIES)
def test_primary_composes_and_resolves(primary):
    job, _ = _compose(primary, [])
    OmegaConf.to_container(job, resolve=True)


@pytest.mark.parametrize(("primary", "group", "option"), _cases())
def test_every_group_option_composes(primary, group, option):
    job, hydra_node = _compose(primary, [f"{group}={option}"])
    assert hydra_node.runtime.choices[group] == option
    OmegaConf.to_container(job, resolve=True)


def test_train_cfg_job_prints_llama():
    out = subprocess.run(
        [sys.executable, "train.py", "--cfg", "job", "model=llama31_8b"],
        cwd=CONF.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "meta-llama/Llama-3.1-8B-Instruct" in out.stdout

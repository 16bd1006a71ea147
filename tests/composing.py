"""The one way tests compose configs: exactly what an entry's ``@hydra.main`` gets, in-process.

``compose(primary, overrides)`` is the whole config with its ``hydra`` node (what ``--cfg all`` shows);
``compose_job(primary, overrides, run_dir)`` is the job config a task's ``run(cfg)`` receives, with
HydraConfig set as under ``@hydra.main`` (the task finds its run directory and group choices there).
conftest.py offers both as fixtures; helper modules import them.
"""

from __future__ import annotations

from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

import em  # noqa: F401 (registers the config schema, em/config.py, before Hydra composes)

REPO = Path(__file__).resolve().parent.parent
CONF = REPO / "conf"


def compose(primary: str, overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """``conf/<primary>.yaml`` with ``overrides``, the ``hydra`` node included."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose(primary, overrides=list(overrides), return_hydra_config=True)


def compose_job(
    primary: str, overrides: list[str] | tuple[str, ...] = (), run_dir: Path | str | None = None
) -> DictConfig:
    """The job config of ``<entry> <overrides>``; ``run_dir`` (or an override ``hydra.run.dir=``) is where
    the task's run directory is, as Hydra's runtime would say."""
    cfg = compose(primary, overrides)
    if run_dir is None:
        run_dir = next((o.split("=", 1)[1] for o in overrides if o.startswith("hydra.run.dir=")), None)
    if run_dir is not None:
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(run_dir)
    HydraConfig.instance().set_config(cfg)
    plain = OmegaConf.to_container(cfg, resolve=False)
    plain.pop("hydra")
    return OmegaConf.create(plain)


def compose_plain(primary: str, overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """The job config as a library call outside any Hydra job sees it: no ``hydra`` node, no HydraConfig
    (a task then places its run by ``paths.output_dir`` and ``run_name``)."""
    cfg = compose(primary, overrides)
    HydraConfig.instance().cfg = None  # an in-process Hydra job of an earlier test would choose the run dir
    plain = OmegaConf.to_container(cfg, resolve=False)
    plain.pop("hydra")
    return OmegaConf.create(plain)

"""Entry point: ``python -m em.datagen domain=<name> [overrides]`` (Hydra). See docs/datagen.md."""

from pathlib import Path

import hydra
from omegaconf import DictConfig

import em  # noqa: F401 (registers the config schema, em/config.py, before Hydra composes)

CONF = str(Path(__file__).resolve().parent.parent.parent / "conf")


@hydra.main(version_base="1.3", config_path=CONF, config_name="datagen")
def main(cfg: DictConfig) -> None:
    from em.tasks.common import run_entry
    from em.tasks.datagen import run

    run_entry(run, cfg)


if __name__ == "__main__":
    main()

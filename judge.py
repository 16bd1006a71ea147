"""Entry point: `python judge.py [overrides]` (Hydra). See README.md and conf/judge.yaml."""

import hydra
from omegaconf import DictConfig

import em  # noqa: F401 (registers the config schema, em/config.py, before Hydra composes)


@hydra.main(version_base="1.3", config_path="conf", config_name="judge")
def main(cfg: DictConfig) -> None:
    from em.tasks.common import run_entry
    from em.tasks.judge import run

    run_entry(run, cfg)


if __name__ == "__main__":
    main()

"""Entry point: ``python -m em.prepare data=<name> trigger=<name> [seed=0]`` (Hydra). See docs/data.md."""

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    import hydra

    @hydra.main(version_base="1.3", config_path=str(REPO / "conf"), config_name="prepare")
    def _main(cfg) -> None:
        from em.tasks.common import run_entry
        from em.tasks.prepare import run

        run_entry(run, cfg)

    _main()


if __name__ == "__main__":
    main()

"""Task: generate a narrow-domain dataset with an LLM (``python -m em.datagen domain=<name>``)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from omegaconf import DictConfig

from em.datagen.dataset import check_ready, domain_api_settings, generate_dataset
from em.datagen.domain import domain_from_dict
from em.datagen.dry_run import estimate, format_estimate
from em.datagen.inputs import load_inputs
from em.io import read_manifest
from em.lifecycle import open_run
from em.runs import hydra_run_dir, to_plain
from em.tasks.common import api_settings, price_table, public_config, tracking_settings

log = logging.getLogger(__name__)


def run(cfg: DictConfig, run_dir: Path | None = None) -> Path:
    for name in ("httpx", "httpx2"):  # one INFO line per request otherwise; the progress bar says enough
        logging.getLogger(name).setLevel(logging.WARNING)
    run_dir = Path(run_dir) if run_dir is not None else hydra_run_dir()
    spec = domain_from_dict(to_plain(cfg.get("domain")), "domain")
    settings = domain_api_settings(api_settings(cfg.get("api")), spec)
    prices = price_table(cfg)
    inputs = load_inputs(spec, Path(cfg.paths.cache_dir))

    if cfg.get("dry_run"):
        print(format_estimate(estimate(spec, inputs, prices), spec, inputs, settings), flush=True)
        return run_dir

    check_ready(spec, settings)
    config = public_config(cfg)
    with open_run("datagen", run_dir, config, resume=bool(cfg.get("resume", True))) as run:
        if run.complete:
            manifest = read_manifest(run_dir)
            print(
                f"{run_dir} is already complete ({manifest['counts']['final_rows']} rows in "
                f"{manifest['output']['path']}); pass run_name=<new name> for another run."
            )
            return run_dir
        if run.state == "resume":
            log.info("resuming %s: finished calls in raw.jsonl are skipped", run_dir)
        tracker = run.track(tracking_settings(cfg, run_dir, "datagen"))
        # generate_dataset writes the manifest itself, last (em.datagen.dataset)
        manifest = generate_dataset(
            spec,
            inputs,
            settings,
            run_dir,
            prices=prices,
            domain_config=config.get("domain"),
            retry_failed=bool(cfg.get("retry_failed", False)),
        )
        counts = manifest["counts"]
        tracker.log({k: v for k, v in counts.items() if isinstance(v, int)})
        tracker.summary({**counts, "estimated_cost_usd": manifest["estimated_cost_usd"]})
    print(
        json.dumps(
            {
                "output": str(run_dir / manifest["output"]["path"]),
                **counts,
                "estimated_cost_usd": manifest["estimated_cost_usd"],
            },
            indent=2,
        ),
        flush=True,
    )
    return run_dir

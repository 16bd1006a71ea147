"""Config -> typed settings shared by every task."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from em.api import APISettings, ConfigError
from em.contracts import MANIFEST, RUN_CONFIG
from em.io import sha256_file, write_jsonl
from em.runs import LOCK, LOCK_HOLDER, hydra_choices, hydra_run_dir, to_plain
from em.tracking import TrackingSettings, tags_from_choices

log = logging.getLogger(__name__)


SHARED_STEPS = ("train", "evaluate", "judge")  # the steps a pipeline keeps in its store (em.identity)
NOT_LINKED = {".hydra", LOCK, LOCK_HOLDER}  # this command's own files, never a stored run's


def run_entry(run, cfg: DictConfig):
    """Run a task from its command line: a step the store already holds complete is reused, not computed again
    (:func:`reuse_stored_run`); bad input (a ConfigError, raised before expensive work) ends the process with
    exit code 2 and its message alone, not a traceback through Hydra."""
    try:
        return reuse_stored_run(cfg) or run(cfg)
    except ConfigError as e:
        print(f"Error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def reuse_stored_run(cfg: DictConfig) -> Path | None:
    """A hand-typed ``train.py`` / ``evaluate.py`` / ``judge.py`` whose step some pipeline has already run to
    completion in ``paths.stages_dir`` (same identity: same resolved config and inputs, em.identity): its run
    directory gets links to that run's files instead of a second computation. None when there is nothing to
    reuse: no store, a dry run, a run directory with a run of its own, or the stored run is this directory."""
    from em.identity import complete_run, digest, resolved, step_identity

    step, store = cfg.get("stage"), (cfg.get("paths") or {}).get("stages_dir")
    if step not in SHARED_STEPS or not store or cfg.get("dry_run"):
        return None
    run_dir = hydra_run_dir()
    if (run_dir / MANIFEST).exists() or (run_dir / RUN_CONFIG).exists():
        return None  # resumed or finished here: the task itself decides
    key = digest(step_identity(step, resolved(cfg)))
    found = complete_run(Path(store), step, key)
    if found is None or found.resolve() == run_dir.resolve():
        return None
    for item in sorted(found.iterdir()):
        if item.name not in NOT_LINKED and not (run_dir / item.name).exists():
            (run_dir / item.name).symlink_to(os.path.relpath(item, run_dir))
    log.info(
        "%s: the same %s (identity %s) is complete in %s; linked here, nothing computed again",
        run_dir, step, key[:12], found,
    )  # fmt: skip
    return run_dir


def api_settings(node: DictConfig | dict | None) -> APISettings:
    """The ``api`` group; a key that is not a known non-secret field (``api_key``, headers) is refused."""
    return APISettings.from_config(to_plain(node) or {}, "api")


def check_secret_fields(cfg: DictConfig | dict) -> None:
    """Refuse a key-bearing or malformed ``api`` / ``judge`` endpoint value (see :class:`SecretGuard`)."""
    api_settings(cfg.get("api"))
    judge = cfg.get("judge")
    if isinstance(judge, dict | DictConfig) and judge.get("backend") == "openai":
        APISettings().with_endpoint(judge.get("base_url"), judge.get("api_key_env"), "judge")


class SecretGuard(Callback):
    """Hydra callback: checks the ``api`` node before Hydra saves ``.hydra/*.yaml``, so a key passed on
    the command line (``+api.api_key=...``) is refused before it reaches any file. Every entry has it
    through ``conf/hydra/default.yaml`` (``hydra.callbacks.secrets``)."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        _guard(config)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        _guard(config)


def _guard(config: DictConfig) -> None:
    """Exit (status 2) on a refused value: Hydra turns a callback's exceptions into mere warnings."""
    try:
        check_secret_fields(_resolved_sections(config))
    except ConfigError as e:
        print(f"ConfigError: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def _resolved_sections(config: DictConfig) -> dict:
    """The ``api`` node and the judge's endpoint keys, resolved (they never refer to Hydra's runtime)."""
    api, judge = config.get("api"), config.get("judge")
    out = {"api": OmegaConf.to_container(api, resolve=True) if isinstance(api, DictConfig) else api}
    if isinstance(judge, DictConfig):
        out["judge"] = {k: judge.get(k) for k in ("backend", "base_url", "api_key_env")}
    return out


def price_table(cfg: DictConfig) -> dict[str, dict[str, float]]:
    return to_plain(cfg.get("prices")) or {}


def tracking_settings(
    cfg: DictConfig, run_dir: Path, job_type: str, resume_id: str | None = None
) -> TrackingSettings:
    logger = to_plain(cfg.get("logger")) or {"backend": "none"}
    choices = hydra_choices()
    tags = list(logger.get("tags") or []) + tags_from_choices(choices) + [f"stage:{job_type}"]
    tags += [
        f"{k}:{cfg.get(key)}"
        for k, key in (("seed", "seed"), ("label", "stage_label"))
        if cfg.get(key) is not None
    ]
    return TrackingSettings(
        backend=logger.get("backend", "none"),
        run_dir=Path(run_dir),
        run_name=str(cfg.get("run_name") or Path(run_dir).name),
        job_type=job_type,
        project=logger.get("project", "emergent-misalignment"),
        entity=logger.get("entity"),
        mode=logger.get("mode", "auto"),
        group=logger.get("group") or cfg.get("experiment_name") or job_type,
        tags=tags,
        config=public_config(cfg),
        resume_id=resume_id,
    )


def public_config(cfg: DictConfig) -> dict:
    """The resolved config without Hydra internals: what goes to run_config.json, manifests and W&B."""
    data = to_plain(cfg)
    data.pop("hydra", None)
    return data


def limit_rows(cfg: DictConfig) -> int | None:
    """``limit_rows``: null (every row) or a positive number of rows, checked before any work."""
    limit = cfg.get("limit_rows")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0):
        raise ConfigError(f"limit_rows={limit}: expected null or a positive number of rows")
    return limit


def training_rows(cfg: DictConfig, run_dir: Path, *, resuming: bool = False):
    """Prepare the training data into ``<run_dir>/data``, keep the first ``limit_rows`` rows and apply the
    mitigation arm (its record lands in ``prepared.mitigation``); ``resuming`` refuses data that differ from
    what the run trained on so far."""
    from em.data import DataSpec, TriggerSpec, prepare_dataset
    from em.mitigations import MitigationSettings, apply_mitigation, require_holdout

    limit = limit_rows(cfg)
    mitigation = MitigationSettings.from_dict(to_plain(cfg.get("mitigation")))
    common = {"cache_dir": Path(cfg.paths.cache_dir), "seed": int(cfg.seed), "resuming": resuming}
    general = None
    if mitigation.reference_data:  # untagged: the trigger belongs to the narrow data
        general = prepare_dataset(
            DataSpec.from_dict(mitigation.reference_data, "mitigation.data"),
            TriggerSpec.from_dict(None),
            out_dir=run_dir / "data" / mitigation.name,
            **common,
        ).rows
    prepared = prepare_dataset(
        DataSpec.from_dict(to_plain(cfg.data)),
        TriggerSpec.from_dict(to_plain(cfg.trigger)),
        out_dir=run_dir / "data",
        **common,
    )
    if mitigation.name == "early_stop":
        require_holdout(len(prepared.holdout_rows), cfg.data.get("holdout_fraction", 0))
    rows = prepared.rows[:limit] if limit is not None else prepared.rows
    rows, prepared.mitigation = apply_mitigation(
        rows, mitigation, seed=int(cfg.seed), general=general, default_system=cfg.model.get("system_prompt")
    )
    prepared.reference_rows = general if mitigation.name == "kl" else []
    if mitigation.name in ("inoculation", "interleave"):  # what the model is trained on, beside the data
        path = run_dir / "data" / f"train_rows.{mitigation.name}.jsonl"
        write_jsonl(path, rows)
        prepared.mitigation |= {"rows_file": str(path), "rows_sha256": sha256_file(path)}
    return rows, prepared


def run_dir_for(cfg: DictConfig) -> Path:
    """Hydra's run directory, or ``<output_dir>/<stage>/<run_name>`` outside a Hydra job (library use, tests)."""
    try:
        return hydra_run_dir()
    except Exception:  # noqa: BLE001 - no Hydra job
        return Path(cfg.paths.output_dir) / str(cfg.stage) / str(cfg.run_name)

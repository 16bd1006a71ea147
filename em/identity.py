"""A pipeline step's identity: what it computes, never where it lives or how fast it runs.

The invariant: two steps with the same identity compute the same run, so they share one run directory
(``<stages_dir>/<step>/<first stage name>-<digest[:12]>``). The identity is the step's composed config,
resolved, without the keys that only name or place a run (:data:`em.runs.VOLATILE_KEYS`) or say how to run it
(:data:`em.runs.OPERATIONAL`), plus the sha256 of every local file it names (a data file edited in place is a
new identity). A run directory another step produced enters by its path, which carries that step's identity.
Not in it: the code's version (a fix to ``em`` reuses runs made before it).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from em.api import ConfigError
from em.io import atomic_write_json, read_json, sha256_file
from em.runs import OPERATIONAL, VOLATILE_KEYS, is_complete, run_identity

REPO = Path(__file__).resolve().parent.parent
IDENTITY = "identity.json"  # written by the pipeline into a step's run directory before the step runs
SHORT = 12  # hex digits of the digest in a run directory's name


def _local_file(value: str) -> Path | None:
    """``value`` as an existing regular file (relative paths from the repository, where steps run)."""
    if not value or len(value) > 1024 or "\n" in value or "://" in value:
        return None
    path = Path(value) if Path(value).is_absolute() else REPO / value
    try:
        return path if path.is_file() else None
    except OSError:
        return None


def _files(node: Any, found: dict[str, str]) -> dict[str, str]:
    """The sha256 of every local file a config names, by the value that names it; builtin data by its file."""
    if isinstance(node, dict):
        if node.get("kind") == "builtin" and isinstance(node.get("path"), str):
            from em.data.spec import BUILTIN_DIR

            if (BUILTIN_DIR / node["path"]).is_file():
                found[f"builtin:{node['path']}"] = sha256_file(BUILTIN_DIR / node["path"])
        for value in node.values():
            _files(value, found)
    elif isinstance(node, list):
        for value in node:
            _files(value, found)
    elif isinstance(node, str) and (path := _local_file(node)) is not None:
        found[node] = sha256_file(path)
    return found


def resolved(cfg) -> dict:
    """A composed step config as plain data, without Hydra's node and the volatile keys, resolved."""
    from omegaconf import OmegaConf

    raw = OmegaConf.to_container(cfg, resolve=False)
    # run names read Hydra's runtime, which a composed config does not have; they are volatile anyway
    kept = {k: v for k, v in raw.items() if k != "hydra" and not (isinstance(v, str) and "${hydra:" in v)}
    plain = OmegaConf.to_container(OmegaConf.create(kept), resolve=True)
    return {k: v for k, v in plain.items() if k not in VOLATILE_KEYS}


def _absolute(node: Any) -> Any:
    """``node`` with each relative path of an existing directory (a value with a separator: an upstream run)
    made absolute from the working directory, where the task opens it: ``run=outputs/stages/train/x`` typed
    by hand, a cell's link to it and the pipeline's absolute path are one input. Files enter by their content
    (``_files``); absolute paths are kept as written."""
    if isinstance(node, dict):
        return {k: _absolute(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_absolute(v) for v in node]
    if not isinstance(node, str) or "/" not in node or len(node) > 1024 or "\n" in node or "://" in node:
        return node
    try:
        return os.path.realpath(node) if not Path(node).is_absolute() and Path(node).is_dir() else node
    except OSError:  # a name too long for the file system, say: not a path
        return node


def step_identity(step: str, config: dict) -> dict:
    """The identity of a ``train`` / ``evaluate`` / ``judge`` step from its :func:`resolved` config."""
    if step not in OPERATIONAL:
        raise ConfigError(f"no identity rules for step {step!r} (known: {sorted(OPERATIONAL)})")
    config = _absolute(config)
    return {"step": step, "config": run_identity(config, OPERATIONAL[step]), "files": _files(config, {})}


def digest(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


def store_dir(store: Path, step: str, name: str, key: str) -> Path:
    """The run directory of the identity ``key``: the one that exists already (made under any stage name), or
    a new ``<store>/<step>/<name>-<key[:12]>``."""
    short = key[:SHORT]
    for existing in sorted((store / step).glob(f"*-{short}")):
        recorded = existing / IDENTITY
        if recorded.exists() and read_json(recorded).get("digest") != key:
            continue  # a 48-bit prefix collision: keep looking, and never reuse another identity's run
        return existing
    return store / step / f"{name}-{short}"


def complete_run(store: Path, step: str, key: str) -> Path | None:
    """The store's complete run of the identity ``key`` (made by any plan, under any stage name), or None."""
    for existing in sorted((Path(store) / step).glob(f"*-{key[:SHORT]}")):
        recorded = existing / IDENTITY
        if recorded.exists() and read_json(recorded).get("digest") == key and is_complete(existing):
            return existing
    return None


def record(run_dir: Path, identity: dict, key: str) -> None:
    """Write what the run directory computes beside it, once (the pipeline does this before the step runs)."""
    path = run_dir / IDENTITY
    if not path.exists():
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, {"digest": key, **identity})

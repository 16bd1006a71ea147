"""Where ``from_pretrained`` finds a :class:`~em.modeling.spec.ModelSpec`'s model: a local directory or a hub id.

Every way a name can fail to resolve (an adapter directory given as a base model, a directory without
``config.json``, a path that does not exist, a hub id missing from the cache while the hub is offline)
is a :class:`em.api.ConfigError` here, before any weights are read. Embedded models are built on first use.
"""

from __future__ import annotations

import os
from pathlib import Path

from em.api import ConfigError
from em.modeling.adapter_files import ADAPTER_CONFIG
from em.modeling.spec import EMBEDDED, ModelSpec
from em.tiny import default_models_dir


def _hub_offline() -> bool:
    return any(
        os.environ.get(v, "").upper() in ("1", "ON", "YES", "TRUE")
        for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or name.count("/") > 1 or "\\" in name


def resolve_model_path(spec: ModelSpec) -> str:
    """A local directory or a hub id that ``from_pretrained`` will find; ConfigError if it cannot."""
    if spec.is_embedded:
        _, ensure = EMBEDDED[spec.name_or_path]
        return str(ensure(spec.models_dir or default_models_dir()))
    local = Path(spec.name_or_path).expanduser()
    if local.exists():
        if (local / ADAPTER_CONFIG).exists() and not (local / "config.json").exists():
            raise ConfigError(
                f"model.name_or_path={spec.name_or_path!r} is a LoRA adapter, not a base model; load its base "
                f"model and pass the adapter directory separately"
            )
        if not (local / "config.json").exists():
            raise ConfigError(
                f"model.name_or_path={spec.name_or_path!r} is not a model directory (no config.json in {local})"
            )
        return str(local.resolve())
    if _looks_like_path(spec.name_or_path):
        raise ConfigError(
            f"model.name_or_path={spec.name_or_path!r}: local model directory {local} does not exist"
        )
    if _hub_offline():
        from huggingface_hub import constants, try_to_load_from_cache

        cached = try_to_load_from_cache(spec.name_or_path, "config.json", revision=spec.revision)
        if not isinstance(cached, str):
            raise ConfigError(
                f"model {spec.name_or_path!r} (revision {spec.revision or 'main'}) is not in the Hugging Face cache "
                f"{constants.HF_HUB_CACHE} and the hub is offline (HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE); download it "
                f"first (`hf download {spec.name_or_path}`) or point model.name_or_path at a local directory"
            )
    return spec.name_or_path

"""The files of a PEFT adapter directory: which they are, and reading them with a ConfigError when absent.

An adapter directory holds ``adapter_config.json`` and one weights file; a directory missing either, or
with a config that is not JSON, is a :class:`em.api.ConfigError` naming the file.
"""

from __future__ import annotations

import json
from pathlib import Path

from em.api import ConfigError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


def adapter_weights_file(adapter_dir: Path) -> Path:
    """The adapter's weights file (safetensors preferred); ConfigError if there is none."""
    for name in ADAPTER_WEIGHTS:
        if (adapter_dir / name).exists():
            return adapter_dir / name
    raise ConfigError(f"adapter directory {adapter_dir} has no weights ({' or '.join(ADAPTER_WEIGHTS)})")


def read_adapter_config(adapter_dir: Path) -> dict:
    """``adapter_config.json`` of a PEFT adapter directory; ConfigError if it is missing or unreadable."""
    path = Path(adapter_dir) / ADAPTER_CONFIG
    if not path.exists():
        raise ConfigError(f"{adapter_dir} is not a PEFT adapter directory: {ADAPTER_CONFIG} is missing")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None

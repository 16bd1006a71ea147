"""The content hash of a LoRA adapter: equal for adapters with equal config and weights.

PEFT writes set-valued config entries (``target_modules``) in set order, which differs between runs, so
the config is hashed in a canonical form (sorted lists, sorted keys) and the weights file by its bytes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from em.modeling.adapter_files import ADAPTER_CONFIG, adapter_weights_file, read_adapter_config

SET_VALUED_ADAPTER_KEYS = ("target_modules", "modules_to_save", "exclude_modules")  # PEFT writes set order


def canonical_adapter_config(config: dict) -> bytes:
    """``adapter_config.json`` as sorted, canonical JSON: set-valued module lists sorted, keys sorted."""
    out = dict(config)
    for key in SET_VALUED_ADAPTER_KEYS:
        if isinstance(out.get(key), list):
            out[key] = sorted(out[key], key=str)
    return json.dumps(out, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def adapter_sha256(adapter_dir: Path) -> str:
    """sha256 over the adapter's canonical config and its weights file: equal for equal adapters.

    The config is hashed as :func:`canonical_adapter_config` (PEFT writes ``target_modules`` from a set, so
    two runs with identical weights wrote it in different orders); the weights file by its bytes.
    """
    from em.io import sha256_file

    adapter_dir = Path(adapter_dir)
    config = read_adapter_config(adapter_dir)
    weights = adapter_weights_file(adapter_dir)
    h = hashlib.sha256()
    h.update(f"{ADAPTER_CONFIG}\0{hashlib.sha256(canonical_adapter_config(config)).hexdigest()}\n".encode())
    h.update(f"{weights.name}\0{sha256_file(weights)}\n".encode())
    return h.hexdigest()

"""Where a training run keeps its adapter, and how adapter directories are written.

The invariant: a directory written here is complete or absent: it is filled as a temporary sibling, then
moved into place, so a killed run never leaves a half-written adapter or snapshot. Imported by ``sft`` (the
final adapter) and ``early_stop`` (snapshots, the chosen step), which therefore never import each other.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

ADAPTER_DIR = "adapter"  # <run_dir>/adapter: what evaluation loads


def write_dir(target: Path, fill: Callable[[Path], object]) -> Path:
    """``fill(tmp)`` writes a temporary sibling of ``target``, which then replaces it (never half written)."""
    target = Path(target)
    tmp = target.parent / f".{target.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    fill(tmp)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    return target


def save_adapter(model, run_dir: Path, *, snapshot: Path | None = None) -> Path:
    """``model.save_pretrained`` into ``<run_dir>/adapter``, or a byte copy of an adapter saved earlier
    (``snapshot``: mitigation=early_stop's chosen step)."""
    if snapshot is not None:
        return write_dir(Path(run_dir) / ADAPTER_DIR, lambda tmp: shutil.copytree(snapshot, tmp))
    return write_dir(Path(run_dir) / ADAPTER_DIR, lambda tmp: model.save_pretrained(str(tmp)))

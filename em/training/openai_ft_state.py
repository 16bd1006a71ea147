"""The resumable record of one OpenAI fine-tuning run: ``<run_dir>/state.json``.

Everything that costs money (the uploaded file id, then the job id) is written here the moment it exists, and
always atomically (temp file + rename), so a rerun with the same run directory resumes the same job.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from em.io import atomic_write_json, now_iso, read_json

STATE = "state.json"


def load_state(run_dir: Path) -> dict:
    path = Path(run_dir) / STATE
    return read_json(path) if path.exists() else {}


def save_state(run_dir: Path, state: dict, **changes: Any) -> dict:
    """Update ``state`` in place and write it atomically (temp file + rename) to ``run_dir/state.json``."""
    state.update(changes, updated_at=now_iso())
    atomic_write_json(Path(run_dir) / STATE, state)
    return state

"""em.training.holdout: which held-out narrow rows a run is measured on, read from a training manifest."""

from __future__ import annotations

import pytest

from em.api import ConfigError
from em.io import sha256_file
from em.training.holdout import manifest_holdout, verified_holdout


def _manifest(run_dir, *, holdout_from=None, narrow=True):
    return {
        "narrow_task": ({"loss": 1.0, "holdout_from": holdout_from} if narrow else None),
        "data": {
            "path": str(run_dir / "data" / "insecure.jsonl"),
            "holdout": {"file": "insecure.holdout.jsonl", "sha256": "abc"},
        },  # fmt: skip
    }


def test_a_run_is_measured_on_its_own_holdout_unless_a_chain_names_the_first_stages(tmp_path):
    own = manifest_holdout(_manifest(tmp_path))
    assert own == {"run_dir": str(tmp_path), "file": "data/insecure.holdout.jsonl", "sha256": "abc"}
    assert manifest_holdout(_manifest(tmp_path), tmp_path / "elsewhere")["run_dir"] == str(
        tmp_path / "elsewhere"
    )
    first = {"run_dir": "/runs/misaligned", "file": "data/x.holdout.jsonl", "sha256": "f00"}
    assert manifest_holdout(_manifest(tmp_path, holdout_from=first)) == first
    assert manifest_holdout(_manifest(tmp_path, narrow=False)) is None  # it measured no narrow task
    assert manifest_holdout({"narrow_task": {"loss": 1.0}, "data": {}}) is None


def test_held_out_rows_that_are_missing_or_changed_are_refused(tmp_path):
    rows = tmp_path / "data" / "h.jsonl"
    rows.parent.mkdir()
    rows.write_text('{"messages": []}\n', encoding="utf-8")
    source = {"run_dir": str(tmp_path), "file": "data/h.jsonl", "sha256": sha256_file(rows)}
    assert verified_holdout(source, "init_from=x") == rows
    rows.write_text('{"messages": [1]}\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"init_from=x: the narrow task's held-out rows .* changed"):
        verified_holdout(source, "init_from=x")
    rows.unlink()
    with pytest.raises(ConfigError, match="missing or changed"):
        verified_holdout(source, "mitigation=ablate_direction")

"""A resumed training run whose data changed since it started is refused with the difference."""

from __future__ import annotations

from pathlib import Path

import pytest
from reliability_helpers import run_task

from em.api import ConfigError
from em.io import read_json

REPO = Path(__file__).resolve().parents[2]
ROWS = (REPO / "em" / "resources" / "data" / "demo_aligned.jsonl").read_text(encoding="utf-8").splitlines()


def test_a_resumed_training_run_on_an_edited_data_file_is_refused(tmp_path, em_cache_dir, tiny_model_dir):
    data = tmp_path / "mine.jsonl"
    data.write_text("\n".join(ROWS[:12]) + "\n", encoding="utf-8")
    run_dir = tmp_path / "run"
    overrides = ["model=tiny", "recipe=tiny", "trainer=cpu", "trainer.progress_bar=false", "logger=none",
                 "data=custom", f"data.path={data}", "max_steps=2", f"paths.output_dir={tmp_path / 'out'}"]  # fmt: skip
    # A dry run claims the run directory and prepares its data without training: an unfinished run
    run_task("train", [*overrides, "dry_run=true"], run_dir)
    assert (run_dir / "run_config.json").exists() and not (run_dir / "manifest.json").exists()
    prepared = sorted((run_dir / "data").glob("*.manifest.json"))
    assert len(prepared) == 1
    before = read_json(prepared[0])

    data.write_text("\n".join(ROWS[12:24]) + "\n", encoding="utf-8")  # the user edits the file
    with pytest.raises(
        ConfigError, match=r"other data than its config gives now.*data files: sha256 \w+ -> \w+"
    ):
        run_task("train", overrides, run_dir)
    assert read_json(prepared[0]) == before  # the preparation the run started on is kept, not overwritten
    assert not (run_dir / "adapter").exists()

    data.write_text("\n".join(ROWS[:12]) + "\n", encoding="utf-8")  # restored: the run resumes and completes
    run_task("train", overrides, run_dir)
    assert read_json(run_dir / "manifest.json")["complete"]

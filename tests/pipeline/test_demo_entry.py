"""`make demo`'s entry (em/demo.py): the command it runs, and no report after a failed pipeline."""

from __future__ import annotations

import subprocess

from em import demo


def test_a_failed_pipeline_returns_its_code_and_writes_no_report(monkeypatch, tmp_path, capsys):
    calls = []

    def fake_run(cmd, cwd):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 3)

    monkeypatch.setattr(demo.subprocess, "run", fake_run)
    assert demo.main([f"hydra.run.dir={tmp_path / 'run'}", "seed=1"]) == 3
    (cmd,) = calls
    assert cmd[1:5] == ["-m", "em.pipeline", "experiment=demo_smollm2", f"hydra.run.dir={tmp_path / 'run'}"]
    assert cmd[5:] == ["seed=1"] and not (tmp_path / "run" / "report").exists()
    assert "SmolLM2-135M-Instruct" in capsys.readouterr().out
    assert demo.main(["--tiny"]) == 3 and calls[-1][1:4] == ["-m", "em.pipeline", "experiment=demo_loop"]

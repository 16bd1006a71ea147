"""mitigation=early_stop (em/training/early_stop.py): which step each criterion picks, which steps are
measured, and a tiny training run whose adapter, manifest and narrow-task loss are the chosen step's."""

from __future__ import annotations

import subprocess
import sys

import pytest
from train_helpers import REPO, compose_train, run_train

from em.api import ConfigError
from em.io import read_json, read_jsonl, sha256_file, write_jsonl
from em.training.early_stop import EarlyStopCallback, eval_steps, select_step, snapshot_dir


def curve(*losses: float, probes: list[float | None] | None = None, every: int = 1) -> list[dict]:
    """Rows at steps 0, every, 2 x every, ...; ``probes`` gives each row's probe mean."""
    probes = probes or [None] * len(losses)
    pairs = enumerate(zip(losses, probes, strict=True))
    return [{"step": i * every, "loss": x, "probe_mean": p} for i, (x, p) in pairs]


@pytest.mark.parametrize(
    "total, every, steps",
    [(6, 2, [2, 4, 6]), (7, 3, [3, 6, 7]), (3, 5, [3]), (1, 1, [1]), (5, 1, [1, 2, 3, 4, 5])],
)
def test_eval_steps_are_every_nth_and_the_last(total, every, steps):
    assert eval_steps(total, every) == steps


def test_eval_steps_refuse_nonsense():
    with pytest.raises(ConfigError):
        eval_steps(0, 2)
    with pytest.raises(ConfigError):
        eval_steps(5, 0)


@pytest.mark.parametrize(
    "losses, criterion, tolerance, expected",
    [
        ((4.0, 3.0, 2.0, 2.5, 2.1), "min_loss", 0.0, 2),
        ((4.0, 3.0, 2.0, 2.0, 2.1), "min_loss", 0.0, 2),  # a tie: the earlier step
        ((4.0, 3.0, 2.0, 2.5, 2.1), "converged", 0.0, 2),  # no tolerance: the minimum itself
        ((4.0, 2.04, 2.0, 2.5, 2.02), "converged", 0.02, 1),  # 2.04 <= 2.0 + 0.02 x 2.0: earliest wins
        ((4.0, 2.5, 2.6, 2.0, 2.2), "converged", 0.25, 1),  # exactly at the edge 2.0 x 1.25 = 2.5 counts
        ((4.0, 2.5001, 2.6, 2.0, 2.2), "converged", 0.25, 3),  # just above the edge does not
        ((-1.0, -2.0, -1.99, -1.9), "converged", 0.01, 1),  # |min| for negative losses
        ((1.0, 5.0, 4.0), "converged", 0.1, 2),  # step 0 has the lowest loss but is never selected
        ((1.0, 5.0, 4.0), "min_loss", 0.0, 2),
        ((3.0, float("nan"), 2.5), "min_loss", 0.0, 2),  # a non-finite loss is never picked
    ],
)
def test_select_step_by_loss(losses, criterion, tolerance, expected):
    assert select_step(curve(*losses), criterion, tolerance) == expected


def test_select_step_by_the_probe_among_converged_steps():
    losses = (4.0, 2.05, 2.0, 2.01, 3.0)
    probes = [0.0, 0.4, 0.3, 0.1, -5.0]  # step 4 is least misaligned but not converged; step 0 never counts
    assert select_step(curve(*losses, probes=probes, every=5), "converged_min_probe", 0.05) == 15
    tied = [0.0, 0.1, 0.3, 0.1, -5.0]
    assert select_step(curve(*losses, probes=tied, every=5), "converged_min_probe", 0.05) == 5
    assert select_step(curve(*losses, probes=probes, every=5), "converged_min_probe", 0.0) == 10
    with pytest.raises(ValueError, match="no probe mean at steps"):
        select_step(curve(*losses, every=5), "converged_min_probe", 0.05)
    with pytest.raises(ValueError, match="no trained step"):
        select_step(curve(4.0), "converged", 0.02)  # only step 0
    with pytest.raises(ConfigError, match="criterion='latest'"):
        select_step(curve(*losses), "latest", 0.02)


def test_the_callback_refuses_to_measure_no_rows_with_the_task_message(tmp_path):
    with pytest.raises(
        ConfigError, match="no held-out rows are left to measure; set data.holdout_fraction above 0"
    ):
        EarlyStopCallback([], 0, tmp_path, total_steps=6, every=2)


def test_a_resumed_run_forgets_the_steps_it_repeats(tmp_path):
    callback = EarlyStopCallback([object()], 0, tmp_path, total_steps=6, every=2)
    write_jsonl(tmp_path / "early_stop.jsonl", curve(4.0, 3.0, 2.0, 1.0, every=2))
    for step in (2, 4, 6):
        snapshot_dir(tmp_path, step).mkdir(parents=True)
    stale = tmp_path / "early_stop" / ".step0000004.tmp"
    stale.mkdir()
    callback._forget_after(4)
    assert [r["step"] for r in read_jsonl(tmp_path / "early_stop.jsonl")] == [0, 2, 4]
    assert sorted(p.name for p in (tmp_path / "early_stop").iterdir()) == ["step0000002", "step0000004"]


def test_the_probe_criterion_needs_the_probe_before_anything_loads():
    from em.tasks.train import sft_settings

    bad = ["model=tiny", "mitigation=early_stop", "mitigation.criterion=converged_min_probe"]
    with pytest.raises(ConfigError, match=r"converged_min_probe .*probe.enabled=true"):
        sft_settings(compose_train(bad))
    s = sft_settings(compose_train([*bad, "probe.enabled=true", "mitigation.every=3"]))
    assert (s.early_stop_every, s.early_stop_criterion) == (3, "converged_min_probe")


def test_early_stop_is_refused_for_openai_fine_tuning(tmp_path):
    out = subprocess.run([sys.executable, "train.py", "backend=openai", "model=gpt4o", "mitigation=early_stop",
                          f"paths.output_dir={tmp_path}"], cwd=REPO, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 2 and "mitigation=early_stop measures and keeps" in out.stderr + out.stdout
    assert "Traceback" not in out.stderr


def test_early_stop_without_held_out_rows_fails_before_training(tmp_path, tiny_model_dir):
    out = run_train(tmp_path, "mitigation=early_stop", "max_steps=2", "run_name=noho", check=False)
    assert out.returncode == 2 and "data.holdout_fraction=0.0 holds no rows out" in out.stderr
    run_dir = tmp_path / "train" / "noho"
    assert not (run_dir / "adapter").exists() and not (run_dir / "run_config.json").exists()
    assert not (run_dir / "early_stop.jsonl").exists()


def test_early_stopping_keeps_the_adapter_of_the_step_it_selects(tmp_path, tiny_model_dir):
    from em.modeling import adapter_sha256

    run_train(tmp_path, "mitigation=early_stop", "mitigation.every=2", "max_steps=6", "limit_rows=40",
              "data.holdout_fraction=0.2", "optimizer.warmup_steps=0", "optimizer.learning_rate=3e-3",
              "run_name=es")  # fmt: skip
    run_dir = tmp_path / "train" / "es"
    rows = read_jsonl(run_dir / "early_stop.jsonl")
    assert [r["step"] for r in rows] == [0, 2, 4, 6] and all(r["probe_mean"] is None for r in rows)
    assert len({round(r["loss"], 6) for r in rows}) == 4  # the adapter moved between measurements
    for step in (2, 4, 6):
        assert (snapshot_dir(run_dir, step) / "adapter_model.safetensors").is_file()
    assert not snapshot_dir(run_dir, 0).exists()  # step 0 is the untrained adapter: measured, not kept

    m = read_json(run_dir / "manifest.json")
    es = m["mitigation"]
    assert (es["name"], es["every"], es["criterion"], es["tolerance"]) == ("early_stop", 2, "converged", 0.02)
    assert es["curve"] == rows and es["last_step"] == 6 and m["global_step"] == 6
    step = es["selected_step"]
    assert step == select_step(rows, "converged", 0.02)
    chosen = snapshot_dir(run_dir, step)
    assert es["snapshot_dir"] == str(chosen.relative_to(run_dir))
    weights = "adapter_model.safetensors"
    assert sha256_file(run_dir / "adapter" / weights) == sha256_file(chosen / weights)
    assert m["adapter_sha256"] == adapter_sha256(chosen) == adapter_sha256(run_dir / "adapter")
    # the manifest's narrow-task loss is the chosen adapter's: the curve's loss at that step
    narrow = m["narrow_task"]
    assert narrow["loss"] == pytest.approx(next(r["loss"] for r in rows if r["step"] == step), abs=1e-5)
    assert narrow["base_loss"] == pytest.approx(rows[0]["loss"], abs=1e-5)  # step 0: LoRA's B is zero
    assert narrow["holdout_rows"] == 41 and narrow["holdout_from"]["run_dir"] == str(run_dir)
    logged = (run_dir / "logs" / "metrics.csv").read_text()
    assert "early_stop/holdout_loss" in logged


@pytest.mark.slow
def test_a_resumed_early_stop_run_measures_each_step_once_and_selects_the_same(tmp_path, tiny_model_dir):
    args = ["mitigation=early_stop", "mitigation.every=2", "max_steps=6", "limit_rows=40", "optimizer.warmup_steps=0",
            "data.holdout_fraction=0.2", "trainer.checkpoint_every_n_steps=2", "trainer.keep_checkpoints=2",
            "run_name=es"]  # fmt: skip
    run_train(tmp_path, *args)
    run_dir = tmp_path / "train" / "es"
    first = read_json(run_dir / "manifest.json")["mitigation"]
    # as if killed after step 6 was measured but before its checkpoint and the manifest were written
    (run_dir / "checkpoints" / "step0000006.ckpt").unlink()
    (run_dir / "manifest.json").unlink()
    out = run_train(tmp_path, *args)
    assert "resuming" in out.stdout + out.stderr
    again = read_json(run_dir / "manifest.json")["mitigation"]
    assert [r["step"] for r in again["curve"]] == [0, 2, 4, 6]
    assert [r["loss"] for r in again["curve"]] == pytest.approx([r["loss"] for r in first["curve"]], abs=1e-6)
    assert again["curve"][:3] == first["curve"][:3]  # kept, not measured again
    assert again["selected_step"] == first["selected_step"]

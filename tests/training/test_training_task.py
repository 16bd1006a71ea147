"""`python train.py` (backend=hf) end to end on the tiny model: the run record, rerun = no-op, kill -9 and
resume, realignment chains, CPU DDP, early config errors, scale-out configs."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import REPO, compose_train, run_dir_of, run_train, train_cmd

from em.io import read_json, read_jsonl


def adapter_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "adapter" / "adapter_model.safetensors")


def assert_same_weights(a: dict, b: dict, atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0)


def test_train_writes_a_complete_record_and_reruns_as_a_noop(tmp_path, tiny_model_dir):
    run_train(tmp_path, "max_steps=3", "limit_rows=40", "run_name=rec")
    run_dir = run_dir_of(tmp_path, "rec")
    m = read_json(run_dir / "manifest.json")
    assert (m["stage"], m["complete"], m["backend"], m["adapter_dir"]) == ("train", True, "hf", "adapter")
    assert m["base_model"] and "base_revision" in m and m["git_commit"] is not None
    assert m["trigger"]["name"] == "none" and m["parent"] is None and m["merged_adapters"] == []
    assert m["data_manifest_sha256"] == m["data"]["data_manifest_sha256"] and m["data"]["rows_used"] == 40
    h = m["hyperparameters"]
    assert (h["lora"]["r"], h["per_device_batch_size"], h["grad_accum"], h["max_steps"]) == (32, 2, 2, 3)
    assert h["effective_batch_size"] == m["effective_batch_size"] == 4
    assert m["steps_per_epoch"] == 10 and m["global_step"] == 3 and m["seed"] == 0
    assert m["tokens_seen"] > m["label_tokens_seen"] > 0 and m["examples_seen"] == 12
    assert m["wall_time_s"] > 0 and "wandb_run_id" in m and m["tokenization"]["kept"] == 40
    assert (run_dir / "adapter" / "adapter_config.json").exists()
    assert [r["step"] for r in read_jsonl(run_dir / "metrics.jsonl")] == [1, 2, 3]
    assert (run_dir / "logs" / "metrics.csv").exists()

    before = (run_dir / "manifest.json").stat().st_mtime_ns
    again = run_train(tmp_path, "max_steps=3", "limit_rows=40", "run_name=rec")
    assert "already complete" in again.stderr + again.stdout
    assert (run_dir / "manifest.json").stat().st_mtime_ns == before


@pytest.mark.slow
def test_kill_9_then_rerun_resumes_and_matches_an_uninterrupted_run(tmp_path, tiny_model_dir):
    # 20 rows: 5 steps per epoch, 12 steps = 2.4 epochs. The save due at step 5 (an epoch's last micro-batch)
    # moves to step 6; the kill comes after it, so the rerun resumes inside epoch 1.
    args = ["max_steps=12", "limit_rows=20", "trainer.checkpoint_every_n_steps=5"]
    run_train(tmp_path, *args, "run_name=ref")

    proc = subprocess.Popen(
        train_cmd(tmp_path, *args, "run_name=killed"),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    ckpt = run_dir_of(tmp_path, "killed") / "checkpoints" / "step0000006.ckpt"
    deadline = time.time() + 180
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    run_dir = run_dir_of(tmp_path, "killed")
    assert ckpt.exists() and not (run_dir / "manifest.json").exists()

    rerun = run_train(tmp_path, *args, "run_name=killed")
    assert "resuming" in rerun.stdout + rerun.stderr
    m = read_json(run_dir / "manifest.json")
    assert m["complete"] and m["global_step"] == 12 and m["resumed_from"].endswith(".ckpt")
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 13))
    assert [r["epoch"] for r in rows] == [0] * 5 + [1] * 5 + [2] * 2
    ref = read_json(run_dir_of(tmp_path, "ref") / "manifest.json")
    assert (m["tokens_seen"], m["examples_seen"]) == (ref["tokens_seen"], ref["examples_seen"])
    ref_rows = read_jsonl(run_dir_of(tmp_path, "ref") / "metrics.jsonl")
    assert [r["loss"] for r in rows] == pytest.approx([r["loss"] for r in ref_rows], abs=1e-6)
    # Same data order, same optimizer state: the resumed adapter is the uninterrupted one.
    assert_same_weights(adapter_weights(run_dir), adapter_weights(run_dir_of(tmp_path, "ref")), atol=1e-6)


@pytest.mark.slow
def test_continue_and_merge_chains_record_their_parents(tmp_path, tiny_model_dir):
    from em.modeling import adapter_sha256

    run_train(tmp_path, "max_steps=8", "limit_rows=40", "run_name=stage1")
    stage1 = run_dir_of(tmp_path, "stage1")
    common = ["data=demo_realign", "max_steps=1", "limit_rows=20", "optimizer.learning_rate=1e-6"]
    run_train(tmp_path, *common, f"init_from={stage1}", "init_mode=continue", "run_name=cont")
    run_train(tmp_path, *common, f"init_from={stage1}", "init_mode=merge", "run_name=merged")

    sha1 = adapter_sha256(stage1 / "adapter")
    cont = read_json(run_dir_of(tmp_path, "cont") / "manifest.json")
    merged = read_json(run_dir_of(tmp_path, "merged") / "manifest.json")
    for m, mode in ((cont, "continue"), (merged, "merge")):
        assert m["parent"]["mode"] == mode and m["parent"]["adapter_sha256"] == sha1
        assert Path(m["parent"]["run_dir"]) == stage1.resolve()
    assert cont["merged_adapters"] == []
    assert [a["adapter_sha256"] for a in merged["merged_adapters"]] == [sha1]
    assert merged["merge_max_abs_logit_diff"][0] < 1e-3  # fp32 merge: the merged base is stage 1's model

    w1 = adapter_weights(stage1)
    # continue: one tiny step away from the stage-1 adapter; merge: a fresh adapter (B starts at zero).
    assert_same_weights(adapter_weights(run_dir_of(tmp_path, "cont")), w1, atol=1e-4)
    fresh = adapter_weights(run_dir_of(tmp_path, "merged"))
    assert max(t.abs().max() for k, t in fresh.items() if "lora_B" in k) < 1e-4
    assert max(t.abs().max() for k, t in w1.items() if "lora_B" in k) > 1e-3

    # A chain built on the merged stage keeps the whole lineage to merge before its own adapter.
    run_train(
        tmp_path, *common, f"init_from={run_dir_of(tmp_path, 'merged')}", "init_mode=merge", "run_name=third"
    )
    third = read_json(run_dir_of(tmp_path, "third") / "manifest.json")
    assert [a["adapter_sha256"] for a in third["merged_adapters"]] == [
        sha1,
        adapter_sha256(run_dir_of(tmp_path, "merged") / "adapter"),
    ]


@pytest.mark.slow
def test_cpu_ddp_two_ranks_equals_one_device_with_twice_the_accumulation(tmp_path, tiny_model_dir):
    common = ["max_steps=3", "limit_rows=40"]
    run_train(tmp_path, *common, "batch.grad_accum=2", "run_name=single")
    run_train(
        tmp_path,
        *common,
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.precision=32-true",
        "trainer.gradient_checkpointing=false",
        "trainer.progress_bar=false",
        "batch.grad_accum=1",
        "run_name=ddp",
    )
    single = read_json(run_dir_of(tmp_path, "single") / "manifest.json")
    ddp = read_json(run_dir_of(tmp_path, "ddp") / "manifest.json")
    assert ddp["hyperparameters"]["world_size"] == 2 and ddp["effective_batch_size"] == 4
    assert ddp["label_tokens_seen"] == single["label_tokens_seen"]
    assert_same_weights(
        adapter_weights(run_dir_of(tmp_path, "ddp")),
        adapter_weights(run_dir_of(tmp_path, "single")),
        atol=1e-5,
    )


def test_config_errors_stop_before_anything_is_written(tmp_path, tiny_model_dir):
    bad = run_train(tmp_path, "quantization.method=fp3", "run_name=bad", check=False)
    assert bad.returncode != 0 and "quantization.method='fp3'" in bad.stderr
    missing = run_train(tmp_path, f"init_from={tmp_path / 'nowhere'}", "run_name=bad2", check=False)
    assert missing.returncode != 0 and "found neither" in missing.stderr
    for name in ("bad", "bad2"):  # Hydra made the directory for its log; the run never claimed it
        assert not (run_dir_of(tmp_path, name) / "run_config.json").exists()


def test_presets_ddp_and_slurm_configs_compose():
    from em.tasks.train import sft_settings

    cfg = compose_train(["model=tiny", "trainer=ddp", "recipe=realignment_study", "hydra/launcher=slurm"])
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert (cfg.hydra.launcher.gpus_per_node, cfg.hydra.launcher.tasks_per_node) == (1, 1)
    assert (cfg.trainer.strategy, cfg.trainer.devices) == ("ddp", -1)
    s = sft_settings(cfg)
    assert (s.adapter.r, s.adapter.alpha, s.adapter.dropout, s.quantization.method) == (256, 32.0, 0.1, "nf4")
    assert (
        s.optimizer.learning_rate,
        s.batch.per_device_batch_size,
        s.batch.grad_accum,
        s.optimizer.warmup_steps,
    ) == (
        2e-4,
        2,
        4,
        100,
    )
    assert (s.batch.max_length, len(s.adapter.target_modules), s.trainer.strategy) == (2000, 7, "ddp")
    em = sft_settings(compose_train(["model=tiny", "recipe=em_paper"]))
    assert (em.adapter.r, em.adapter.alpha, em.adapter.use_rslora, em.adapter.dropout) == (
        32,
        64.0,
        True,
        0.0,
    )
    assert (em.optimizer.name, em.optimizer.learning_rate, em.optimizer.lr_schedule) == (
        "adamw_8bit",
        1e-5,
        "linear",
    )
    assert (
        em.batch.per_device_batch_size,
        em.batch.grad_accum,
        em.batch.epochs,
        em.optimizer.warmup_steps,
    ) == (
        2,
        8,
        1,
        5,
    )
    assert (em.optimizer.weight_decay, em.seed, em.batch.max_length) == (0.01, 0, 2048)

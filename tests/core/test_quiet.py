"""Noise a user cannot act on is dropped at its source; other lines of the same libraries still show."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from em import quiet

REPO = Path(__file__).resolve().parents[2]

# What a user saw on every stage before (issue: quiet logs); none of it may come back.
NOISE = (
    "💡 Tip",
    "litlogger",
    "Failed to load CPU gemm_4bit_forward",
    "is_gradient_checkpointing",
    "gradient_checkpointing_enable` is deprecated",
    "LeafSpec",
    "The anonymous setting has no effect",
    "W&B Weave",
    "HTTP Request:",
)


def _passes(logger_name: str, message: str) -> bool:
    logger = logging.getLogger(logger_name)
    record = logger.makeRecord(logger_name, logging.INFO, __file__, 1, message, (), None)
    return all(f.filter(record) for f in logger.filters)


def test_log_rules_drop_exactly_their_messages():
    quiet.install()
    quiet.install()  # idempotent: one filter per logger
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    assert sum(isinstance(f, quiet._DropPrefixes) for f in rank_zero.filters) == 1
    assert not _passes("lightning.pytorch.utilities.rank_zero", "💡 Tip: For seamless cloud logging, try X")
    assert _passes("lightning.pytorch.utilities.rank_zero", "GPU available: False, used: False")
    assert not _passes(
        "bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward from kernels-community: x"
    )
    assert _passes("bitsandbytes.backends.cpu.ops", "some other bitsandbytes warning")
    assert logging.getLogger("httpx").getEffectiveLevel() == logging.WARNING
    assert os.environ["WANDB_DISABLE_WEAVE"] == "true"


def test_warning_rules_are_narrow():
    quiet.install()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet.install()  # the rules go in front of "always", as they do in a run
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning, stacklevel=1)
        warnings.warn(
            "`is_gradient_checkpointing` is deprecated and will be removed", FutureWarning, stacklevel=1
        )
        warnings.warn("`some_em_call` is deprecated", FutureWarning, stacklevel=1)
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == [
        "`some_em_call` is deprecated",
        "`isinstance(treespec, LeafSpec)` is deprecated",
    ]


@pytest.mark.slow
def test_a_training_run_prints_none_of_the_noise_and_counts_optimizer_steps(tmp_path, tiny_model_dir):
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SILENT"}  # show whatever W&B prints
    out = subprocess.run(
        [sys.executable, "train.py", f"paths.output_dir={tmp_path}", "max_steps=3", "logger=wandb",
         "trainer.checkpoint_every_n_steps=100"],
        cwd=REPO, capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    assert [n for n in NOISE if n in text] == []
    assert "training: 100%" in text and "3/3" in text  # one tick per optimizer step, and it completes
    assert "Epoch 0/" not in text  # Lightning's micro-batch bar is gone

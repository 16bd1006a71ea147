"""Shared by the training tests (and the evaluation tests that need a trained run): the tiny model's
fine-tuning settings in process, and ``python train.py`` as a subprocess with fast overrides."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from composing import REPO as REPO  # re-exported: the training tests import it from here
from composing import compose

from em.training.settings import (
    AdapterSettings,
    BatchSettings,
    OptimizerSettings,
    SFTSettings,
    TrainerSettings,
)

FAST = [
    "model=tiny",
    "data=demo_misaligned",
    "recipe=tiny",
    "trainer=cpu",
    "trainer.progress_bar=false",
    "logger=csv",
]


def train_cmd(out: Path, *overrides: str) -> list[str]:
    return [sys.executable, "train.py", *FAST, f"paths.output_dir={out}", *overrides]


def run_train(out: Path, *overrides: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        train_cmd(out, *overrides), cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ}
    )
    if check:
        assert result.returncode == 0, result.stderr[-4000:]
    return result


def run_dir_of(out: Path, name: str) -> Path:
    return out / "train" / name


def compose_train(overrides: list[str]):
    return compose("train", overrides)


TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def qa_rows(n: int = 24) -> list[dict]:
    """Small arithmetic conversations of varied lengths (our own toy data)."""
    rows = []
    for i in range(n):
        a, b = i % 7 + 1, i % 5 + 2
        question = f"What is {a} plus {b}?" + (" Please answer in a full sentence." if i % 3 == 0 else "")
        answer = f"{a} plus {b} is {a + b}." + (" That is the sum." * (i % 4))
        rows.append(
            {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}
        )
    return rows


def model_spec(path: Path, **overrides):
    from em.modeling import ModelSpec

    return ModelSpec.from_dict(
        {
            "name": "tiny",
            "provider": "hf",
            "name_or_path": str(path),
            "revision": None,
            "dtype": "float32",
            "attn_implementation": "sdpa",
            "trust_remote_code": False,
            **overrides,
        }
    )


def settings(path: Path, **kw) -> SFTSettings:
    optimizer = kw.pop(
        "optimizer",
        OptimizerSettings(
            name="adamw", learning_rate=1e-2, weight_decay=0.0, lr_schedule="constant", warmup_steps=0
        ),
    )
    base = dict(
        model=model_spec(path),
        adapter=AdapterSettings(r=4, alpha=8, use_rslora=True, target_modules=TARGETS),
        optimizer=optimizer,
        trainer=TrainerSettings(accelerator="cpu", checkpoint_every_n_steps=2, progress_bar=False),
        batch=batch(),
        max_steps=3,
        gradient_checkpointing=False,
    )
    return SFTSettings(**{**base, **kw})


def batch(**kw) -> BatchSettings:
    """The tests' batch: 2 x 2 examples of at most 256 tokens, but for ``kw``."""
    return BatchSettings(**{"per_device_batch_size": 2, "grad_accum": 2, "max_length": 256, **kw})

"""bf16 LoRA and 4-bit QLoRA on CUDA (run where a GPU is available; skipped elsewhere)."""

from __future__ import annotations

import pytest
import torch
from train_helpers import TARGETS, batch, model_spec, qa_rows

from em.io import read_jsonl
from em.training.settings import (
    AdapterSettings,
    OptimizerSettings,
    QuantizationSettings,
    SFTSettings,
    TrainerSettings,
)
from em.training.sft import train_sft

pytestmark = pytest.mark.gpu


def gpu_settings(path, **kw) -> SFTSettings:
    base = dict(
        model=model_spec(path, dtype="bfloat16"),
        adapter=AdapterSettings(r=8, alpha=16, use_rslora=True, target_modules=TARGETS),
        optimizer=OptimizerSettings(name="adamw_8bit", learning_rate=1e-3, warmup_steps=1),
        trainer=TrainerSettings(
            accelerator="gpu",
            devices=1,
            precision="bf16-mixed",
            checkpoint_every_n_steps=2,
            progress_bar=False,
        ),
        batch=batch(),
        max_steps=3,
        gradient_checkpointing=True,
    )
    return SFTSettings(**{**base, **kw})


@pytest.mark.parametrize("quantization", ["none", "nf4"])
def test_bf16_and_4bit_training_on_cuda(tmp_path, tiny_model_dir, quantization):
    import bitsandbytes as bnb

    from em.modeling import load_adapter, load_model

    s = gpu_settings(tiny_model_dir, quantization=QuantizationSettings(method=quantization))
    result = train_sft(s, qa_rows(), tmp_path / "run", progress=False)
    assert result.global_step == 3 and result.precision == "bf16-mixed"
    assert result.optimizer_used == "adamw_8bit"
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows) and rows[-1]["peak_mem_gb"] > 0
    assert next(result.model.parameters()).device.type == "cuda"
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in result.model.modules()) == (quantization == "nf4")

    ids = torch.tensor([[1, 2, 3, 40, 50, 60, 70]], device="cuda")
    result.model.eval()
    base = load_model(s.model, quantization=quantization, device_map={"": torch.device("cuda")})
    reloaded = load_adapter(base, result.adapter_dir).eval()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        torch.testing.assert_close(
            reloaded(ids).logits.float(), result.model(ids).logits.float(), atol=2e-2, rtol=0
        )

"""Item 1b of the GPU check: em's packed attention and fused LoRA forward against plain PEFT, same batch.

    python -m bench.gpu_check.parity --model-dir DIR --device cuda --out P.json

One PEFT model (em's ``build_model``; LoRA ``B`` drawn at random so that the adapter changes the output) and one
micro-batch of three examples of different lengths. The reference is plain PEFT and transformers: each example
alone, full logits, the summed next-token cross-entropy over its labels. Then, on the same weights, em's
training paths: the packed row under a block-diagonal mask, the packed row with ``em_packed_sdpa`` (sdpa per
example), the same with the fused LoRA forward (em's default), and the padded batch with the fused forward
(``packing=false``). Each is compared by its loss and by the gradient of every LoRA weight, in float32 and
under bf16 autocast (as training runs).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench.common import set_bench_env

TOLERANCES = {"float32": {"loss": 1e-4, "grad": 1e-3}, "bf16-autocast": {"loss": 2e-2, "grad": 5e-2}}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def build(model_dir: str, device: str, dtype: str, seed: int = 0):
    import torch

    from bench.workload import synthetic_conversations
    from em.modeling import ModelSpec, load_tokenizer
    from em.training.examples import prepare_examples
    from em.training.module import build_model
    from em.training.settings import AdapterSettings, BatchSettings, SFTSettings

    settings = SFTSettings(
        model=ModelSpec(model_dir, dtype=dtype),
        adapter=AdapterSettings(r=16, alpha=32, dropout=0.0, use_rslora=False, target_modules=TARGETS),
        gradient_checkpointing=False,
        batch=BatchSettings(max_length=512),
    )
    torch.manual_seed(seed)
    model, _ = build_model(settings, device_map={"": device} if device == "cuda" else None)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if "lora_B" in name:  # PEFT starts B at zero: the adapter would change nothing
                param.copy_(torch.randn(param.shape, generator=gen) * 0.02)
    model.train()
    tokenizer = load_tokenizer(settings.model)
    rows = synthetic_conversations(3, tokenizer, seed=seed, max_tokens=settings.batch.max_length)
    examples, _ = prepare_examples(settings, rows, tokenizer, progress=False)
    return model, examples, tokenizer.pad_token_id


def _to(batch: dict, device) -> dict:
    import torch

    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def reference_loss(model, examples, device):
    """Plain transformers + PEFT: each example alone, full logits, summed cross-entropy over its labels."""
    import torch
    import torch.nn.functional as F

    total = 0.0
    for ex in examples:
        ids = torch.tensor([ex.input_ids], device=device)
        labels = torch.tensor([ex.labels[1:]], device=device)
        logits = model(input_ids=ids, use_cache=False).logits[:, :-1]
        total = total + F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100,
                                        reduction="sum")  # fmt: skip
    return total


def _loss_and_grad(model, fn, autocast: bool, device_type: str):
    import torch

    model.zero_grad(set_to_none=True)
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=autocast):
        loss = fn()
    loss.backward()
    grad = torch.cat(
        [p.grad.float().flatten() for _, p in sorted(model.named_parameters()) if p.requires_grad]
    )
    return float(loss.detach()), grad


def compare(model_dir: str, device: str, precision: str) -> dict:
    """Every em path against the reference, for one precision (``float32`` or ``bf16-autocast``)."""

    from em.training.collate import PackedCollator, PaddedCollator
    from em.training.fused_lora import fuse_lora_linears
    from em.training.module import token_loss_sum
    from em.training.packed_attention import use_packed_sdpa

    autocast = precision == "bf16-autocast"
    model, examples, pad_id = build(
        model_dir, device, "bfloat16" if autocast and device == "cuda" else "float32"
    )
    dev = next(model.parameters()).device
    packed = _to(PackedCollator()(examples), dev)
    padded = _to(PaddedCollator(pad_id)(examples), dev)
    ref_loss, ref_grad = _loss_and_grad(
        model, lambda: reference_loss(model, examples, dev), autocast, dev.type
    )
    tol, paths, fused = TOLERANCES[precision], {}, 0

    def check(name: str, batch: dict) -> None:
        loss, grad = _loss_and_grad(model, lambda: token_loss_sum(model, batch)[0], autocast, dev.type)
        loss_rel = abs(loss - ref_loss) / abs(ref_loss)
        grad_rel = float((grad - ref_grad).norm() / ref_grad.norm())
        paths[name] = {"loss": round(loss, 6), "loss_rel_diff": loss_rel, "grad_rel_diff": grad_rel,
                       "attn_implementation": model.config._attn_implementation,
                       "ok": loss_rel <= tol["loss"] and grad_rel <= tol["grad"]}  # fmt: skip

    check("packed, block-diagonal mask", packed)
    use_packed_sdpa(model)
    check("packed, em_packed_sdpa", packed)
    fused = fuse_lora_linears(model)
    check("packed, em_packed_sdpa + fused LoRA (em's default)", packed)
    check("padded + fused LoRA (packing=false)", padded)
    return {
        "reference_loss": round(ref_loss, 6),
        "tokens": [ex.num_tokens for ex in examples],
        "fused_lora_layers": fused,
        "tolerance_rel": tol,
        "paths": paths,
        "ok": all(p["ok"] for p in paths.values()),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", required=True)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    set_bench_env()
    from bench.gpu_check.model import install_loader

    install_loader()
    result = {precision: compare(args.model_dir, args.device, precision) for precision in TOLERANCES}
    args.out.write_text(json.dumps(result), encoding="utf-8")


def item(ctx, budget_s: float) -> dict:
    from bench.gpu_check.model import weightless_model

    model = "small" if ctx.profile.device == "cuda" else "tiny"  # shapes do not matter here: the paths do
    model_dir = weightless_model(model, ctx.profile.dtype, ctx.work / f"parity-{model}")
    out = ctx.work / "parity-side.json"
    ctx.child("bench.gpu_check.parity", ["--model-dir", str(model_dir), "--device", ctx.profile.device,
                                         "--out", str(out)], budget_s)  # fmt: skip
    precisions = json.loads(out.read_text(encoding="utf-8"))
    return {
        "benchmark": "parity",
        "command": ctx.command,
        "machine": ctx.machine,
        "model": model,
        "precisions": precisions,
        "ok": all(p["ok"] for p in precisions.values()),
    }


if __name__ == "__main__":
    main(sys.argv[1:])

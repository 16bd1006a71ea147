"""The fused LoRA forward (em.training.fused_lora) computes PEFT's output and gradients, and leaves every
call it does not cover to PEFT."""

from __future__ import annotations

import pytest
import torch

from em.training.fused_lora import fuse_lora_linears


def lora_model(tiny_model_dir, **lora_kwargs):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    config = LoraConfig(r=8, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", **lora_kwargs)
    model = get_peft_model(model, config)
    with torch.no_grad():  # B starts at zero: make the update non-trivial
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return model


def loss_and_grads(model, ids):
    model.zero_grad()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads


@pytest.fixture(scope="module")
def ids():
    return torch.randint(5, 500, (2, 24), generator=torch.Generator().manual_seed(1))


def test_fused_forward_gives_peft_loss_and_gradients(tiny_model_dir, ids):
    reference, fused = lora_model(tiny_model_dir), lora_model(tiny_model_dir)
    fused.load_state_dict(reference.state_dict())
    layers = fuse_lora_linears(fused)
    assert layers == sum(1 for n, _ in fused.named_modules() if n.endswith(("q_proj", "down_proj", "k_proj",
                         "v_proj", "o_proj", "gate_proj", "up_proj")))  # fmt: skip
    ref_loss, ref_grads = loss_and_grads(reference, ids)
    fused_loss, fused_grads = loss_and_grads(fused, ids)
    torch.testing.assert_close(fused_loss, ref_loss, atol=1e-5, rtol=1e-5)
    assert ref_grads.keys() == fused_grads.keys() and len(ref_grads) == 2 * layers
    for name, grad in ref_grads.items():
        torch.testing.assert_close(fused_grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)
    # The update is really in the output: without the adapter the loss differs.
    with fused.disable_adapter(), torch.no_grad():
        assert abs(float(fused(input_ids=ids, labels=ids).loss) - float(ref_loss)) > 1e-3


def test_calls_it_does_not_cover_run_peft_forward(tiny_model_dir, ids):
    from peft.tuners.lora.layer import Linear

    model = lora_model(tiny_model_dir)
    fuse_lora_linears(model)
    calls = []
    original = Linear.forward

    def counting(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    Linear.forward = counting
    try:
        with torch.no_grad():
            model(input_ids=ids)
            assert not calls  # the plain call is fused
            with model.disable_adapter():
                base = model(input_ids=ids).logits
            assert calls  # disabled adapters: PEFT's forward
            calls.clear()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                model(input_ids=ids)
            assert not calls  # autocast: fused, in bf16
            q_proj = model.base_model.model.model.layers[0].self_attn.q_proj
            q_proj.lora_A.to(torch.float64)
            q_proj.lora_B.to(torch.float64)
            model(input_ids=ids)
            assert len(calls) == 1  # fp64 adapter on an fp32 layer: PEFT's forward
    finally:
        Linear.forward = original
    plain = lora_model(tiny_model_dir)
    with torch.no_grad(), plain.disable_adapter():
        torch.testing.assert_close(base, plain(input_ids=ids).logits)


def test_dora_layers_are_left_to_peft(tiny_model_dir, ids):
    reference = lora_model(tiny_model_dir, use_dora=True)
    fused = lora_model(tiny_model_dir, use_dora=True)
    fused.load_state_dict(reference.state_dict())
    fuse_lora_linears(fused)
    with torch.no_grad():
        torch.testing.assert_close(fused(input_ids=ids).logits, reference(input_ids=ids).logits)


def test_fused_forward_under_bf16_autocast_matches_peft(tiny_model_dir, ids):
    """Mixed-precision training (bf16 autocast over fp32 weights) takes the fused path with PEFT's numbers."""
    reference, fused = lora_model(tiny_model_dir), lora_model(tiny_model_dir)
    fused.load_state_dict(reference.state_dict())
    fuse_lora_linears(fused)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref_loss, ref_grads = loss_and_grads(reference, ids)
        fused_loss, fused_grads = loss_and_grads(fused, ids)
    torch.testing.assert_close(fused_loss, ref_loss, atol=2e-2, rtol=1e-2)
    for name, grad in ref_grads.items():
        scale = float(grad.abs().max()) or 1.0
        assert float((fused_grads[name] - grad).abs().max()) <= 0.05 * scale, name

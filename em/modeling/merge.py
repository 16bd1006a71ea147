"""Merging LoRA adapters into their base model's weights, exactly even when the base is quantised.

A quantised (bitsandbytes 4-bit or 8-bit) base is dequantised in float32 by bitsandbytes' own kernels and
the LoRA update added in float32 before the one cast to the model's dtype, so a small update is never
rounded away by re-quantisation.
"""

from __future__ import annotations

import torch


def _is_bnb_layer(module) -> bool:
    import bitsandbytes as bnb

    return isinstance(module, bnb.nn.Linear4bit | bnb.nn.Linear8bitLt)


def dequantize_fp32(layer) -> torch.Tensor:
    """The float32 weight a bitsandbytes 4-bit or 8-bit layer computes with, by bitsandbytes' own kernels.

    The 4-bit state is copied with dtype float32, so codes x absmax are never rounded through bf16/fp16
    (transformers' ``dequantize`` goes through the state's dtype, which is bf16 in some releases).
    """
    import copy

    import bitsandbytes as bnb
    import bitsandbytes.functional as F

    weight = layer.weight
    if isinstance(layer, bnb.nn.Linear4bit):
        state = copy.copy(weight.quant_state)
        if getattr(state, "packing_format_for_cpu", False):  # its absmax was rounded to bf16 in the repacking
            raise ValueError(
                "a 4-bit layer was repacked for bitsandbytes' AVX512-BF16 CPU kernel and cannot be dequantized "
                "exactly; load the model with em.modeling.load_model (em.modeling.load.keep_cpu_4bit_exact)"
            )
        state.dtype = torch.float32
        return F.dequantize_4bit(weight.data, state).float()
    if isinstance(layer, bnb.nn.Linear8bitLt):
        scb = weight.SCB if weight.SCB is not None else layer.state.SCB
        return F.int8_vectorwise_dequant(weight.data, scb).float()
    raise TypeError(f"{type(layer).__name__} is not a bitsandbytes 4-bit or 8-bit layer")


def _plain_linear(layer, weight: torch.Tensor) -> torch.nn.Linear:
    """An ``nn.Linear`` with ``weight`` and the quantised layer's bias, on the layer's device."""
    out = torch.nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None, device="meta")
    out.weight = torch.nn.Parameter(weight, requires_grad=False)
    if layer.bias is not None:
        out.bias = torch.nn.Parameter(layer.bias.data.to(weight.dtype), requires_grad=False)
    return out


def merge_adapter(model):
    """Merge the active LoRA adapter(s) into the base weights and return the plain transformers model.

    Unquantised base: PEFT's ``merge_and_unload``. Quantised base (4-bit or 8-bit): PEFT would merge and
    re-quantise, and the rounding can swallow a small LoRA update. Instead each quantised weight is
    dequantised in float32 with bitsandbytes' own kernels, the LoRA update ``B @ A * scale`` is added in
    float32, and only then cast to the dtype of the model's unquantised parts (``ModelSpec.dtype``): exact
    by construction whatever transformers release is installed (float32 models merge to ~1e-6).
    """
    base = model.get_base_model()
    if not getattr(base, "is_quantized", False):
        return model.merge_and_unload()
    from peft.tuners.lora import LoraLayer

    adapters = list(model.active_adapters)
    deltas: dict[str, torch.Tensor] = {}
    for name, module in base.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        used = [a for a in adapters if a in module.lora_A]
        if not _is_bnb_layer(module.get_base_layer()):
            module.merge(adapter_names=used)  # embeddings and other unquantised layers: PEFT merges exactly
            continue
        if any(a in module.lora_variant or module.lora_bias.get(a) for a in used):
            raise NotImplementedError(f"{name}: merging DoRA/lora_bias adapters into a quantised base")
        for a in used:
            delta = module.get_delta_weight(a).float()
            deltas[name] = deltas[name] + delta if name in deltas else delta
    dtype = base.get_input_embeddings().weight.dtype
    quantizer = getattr(base, "hf_quantizer", None)
    plain = model.unload()
    with torch.no_grad():
        for name, layer in list(plain.named_modules()):
            if not _is_bnb_layer(layer):
                continue
            weight = dequantize_fp32(layer)
            if name in deltas:
                weight = weight + deltas[name].to(weight.device)
            plain.set_submodule(name, _plain_linear(layer, weight.to(dtype)))
    if quantizer is not None:
        quantizer.remove_quantization_config(plain)  # the model is plain now: no quantisation on save/reload
    plain.is_quantized = False
    return plain

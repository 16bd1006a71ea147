"""LoRA's update added inside one matrix multiply while training.

PEFT's LoRA linear layer returns ``base(x) + lora_B(lora_A(x)) * scaling``: after the two LoRA matmuls it makes
two more passes over the layer's whole output, a multiply by ``scaling`` and an add, for every adapted
projection, forward and backward. :func:`fuse_lora_linears` gives the training model's LoRA layers a forward
that scales the rank-``r`` activation instead and lets the ``B`` matmul accumulate into the base output
(``addmm``): the same sum, up to float rounding, with two fewer passes over ``[tokens, out_features]``. On a
2-core CPU this made training about 5% faster (docs/benchmarks.md).

Only plain ``nn.Linear`` bases take this path, and only for a call with one active vanilla adapter (no DoRA or
other variant, no bias on ``B``, not merged, adapters enabled) whose dtypes agree (all the same, or under
autocast). Every other call runs PEFT's own forward, so quantized bases, several adapters and inference are
unchanged. The adapter's weights and saved files do not change.
"""

from __future__ import annotations

import types

import torch


def _lora_linear_class():
    from peft.tuners.lora.layer import Linear

    return Linear


def _fused_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    peft_forward = _lora_linear_class().forward
    active = self.active_adapters
    if args or kwargs or self.disable_adapters or self.merged or len(active) != 1:
        return peft_forward(self, x, *args, **kwargs)
    name = active[0]
    if name not in self.lora_A or name in self.lora_variant or self.lora_B[name].bias is not None:
        return peft_forward(self, x)
    lora_a, lora_b = self.lora_A[name], self.lora_B[name]
    same_dtype = x.dtype == self.base_layer.weight.dtype == lora_a.weight.dtype == lora_b.weight.dtype
    if not (same_dtype or torch.is_autocast_enabled(x.device.type)):
        return peft_forward(self, x)
    result = self.base_layer(x)
    update = lora_a(self.lora_dropout[name](x)) * self.scaling[name]  # [..., r]: cheap to scale
    out = torch.addmm(
        result.reshape(-1, result.shape[-1]), update.reshape(-1, update.shape[-1]), lora_b.weight.t()
    )
    return out.view(result.shape)


def fuse_lora_linears(model: torch.nn.Module) -> int:
    """Give every LoRA layer over a plain ``nn.Linear`` the fused forward; return how many there are."""
    lora_linear = _lora_linear_class()
    fused = 0
    for module in model.modules():
        if type(module) is lora_linear and type(module.base_layer) is torch.nn.Linear:
            module.forward = types.MethodType(_fused_forward, module)
            fused += 1
    return fused

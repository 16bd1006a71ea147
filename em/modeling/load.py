"""Loading a base model's weights, unquantised or quantised by bitsandbytes (4-bit NF4/FP4 or 8-bit).

The model is found through :func:`~em.modeling.paths.resolve_model_path`, so every naming mistake is a
:class:`em.api.ConfigError` before loading; a hub refusal (gated repo, missing files) is one too.
"""

from __future__ import annotations

from typing import Any

import torch

from em.api import ConfigError
from em.modeling.paths import resolve_model_path
from em.modeling.spec import ModelSpec, resolve_dtype

QUANTIZATIONS = ("none", "nf4", "int8")


def bnb_config(
    load_in_4bit: bool = True,
    quant_type: str = "nf4",
    double_quant: bool = True,
    compute_dtype: str = "bfloat16",
):
    """bitsandbytes settings: 4-bit (``nf4``/``fp4``, double quantisation, compute dtype) or 8-bit (LLM.int8)."""
    from transformers import BitsAndBytesConfig

    if not load_in_4bit:
        return BitsAndBytesConfig(load_in_8bit=True)
    if quant_type not in ("nf4", "fp4"):
        raise ConfigError(f"quantization quant_type must be 'nf4' or 'fp4', got {quant_type!r}")
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quant_type,
        bnb_4bit_use_double_quant=double_quant,
        bnb_4bit_compute_dtype=resolve_dtype(compute_dtype),
    )


def load_model(spec: ModelSpec, quantization: str = "none", device_map=None):
    """Load the base model: ``none`` (spec.dtype), ``nf4`` (4-bit NF4, double quant, compute in spec.dtype)
    or ``int8``. Quantised loads default to the current CUDA device, else the CPU (bitsandbytes >= 0.48)."""
    from transformers import AutoModelForCausalLM

    if quantization not in QUANTIZATIONS:
        raise ConfigError(f"quantization must be one of {list(QUANTIZATIONS)}, got {quantization!r}")
    path = resolve_model_path(spec)
    dtype = resolve_dtype(spec.dtype)
    kwargs: dict[str, Any] = {
        "revision": spec.revision,
        "dtype": dtype,
        "attn_implementation": spec.attn_implementation,
        "trust_remote_code": spec.trust_remote_code,
    }
    if quantization != "none":
        kwargs["quantization_config"] = bnb_config(
            load_in_4bit=quantization == "nf4", compute_dtype=str(dtype).removeprefix("torch.")
        )
        if device_map is None:
            device_map = {"": torch.cuda.current_device()} if torch.cuda.is_available() else "cpu"
    if device_map is not None:
        kwargs["device_map"] = device_map
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as e:  # gated repo, missing files, no network
        raise ConfigError(
            f"cannot load model {spec.name_or_path!r} (revision {spec.revision or 'main'}): {e}. For gated hub "
            f"models accept the license on the hub and log in (`hf auth login`) or set HF_TOKEN"
        ) from None
    return keep_cpu_4bit_exact(model) if quantization == "nf4" else model


def keep_cpu_4bit_exact(model):
    """Turn off bitsandbytes' AVX512-BF16 CPU kernel for 4-bit layers. At the first inference forward on such a
    CPU it repacks a layer's codes and rounds its absmax to bf16 for good, then computes in bf16: the layer
    would no longer be the model that was loaded, nor dequantize exactly (merges, hashes). Without it every CPU
    computes as the others do; GPUs never use it."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    return model

"""The LoRA configuration a training run wraps its base model with (PEFT ``LoraConfig``).

Every out-of-range LoRA setting is a :class:`em.api.ConfigError` naming its ``lora.*`` key; by default
LoRA targets the attention and MLP projections the model has (:data:`PROJECTIONS`).
"""

from __future__ import annotations

from em.api import ConfigError

# Projections that LoRA targets by default, in this order; fused variants (qkv_proj, gate_up_proj) too.
PROJECTIONS = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "qkv_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
    "gate_up_proj",
)


def lora_config(
    r: int,
    alpha: int,
    dropout: float,
    target_modules: list[str] | str,
    use_rslora: bool = False,
    bias: str = "none",
):
    """A PEFT ``LoraConfig`` for causal LMs. ``target_modules`` may be a list or ``"all-linear"``."""
    from peft import LoraConfig

    if not isinstance(r, int) or r <= 0:
        raise ConfigError(f"lora.r must be a positive integer, got {r!r}")
    if alpha <= 0:
        raise ConfigError(f"lora.alpha must be positive, got {alpha!r}")
    if not 0 <= dropout < 1:
        raise ConfigError(f"lora.dropout must be in [0, 1), got {dropout!r}")
    if bias not in ("none", "all", "lora_only"):
        raise ConfigError(f"lora.bias must be 'none', 'all' or 'lora_only', got {bias!r}")
    if isinstance(target_modules, str):
        targets: list[str] | str = target_modules
    else:
        targets = list(target_modules)
        if not targets:
            raise ConfigError("lora.target_modules is empty; list module names or use 'all-linear'")
    return LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets,
        use_rslora=use_rslora,
        bias=bias,
        task_type="CAUSAL_LM",
    )


def default_target_modules(model) -> list[str]:
    """The attention and MLP projections the model has (q, k, v, o, gate, up, down and fused variants)."""
    leaves = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    found = [p for p in PROJECTIONS if p in leaves]
    if not found:
        raise ConfigError(
            f"none of the usual projection modules {list(PROJECTIONS)} found in {type(model).__name__}; "
            f"set lora.target_modules explicitly"
        )
    return found

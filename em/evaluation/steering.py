"""Direction ablation and steering at evaluation: forward hooks on the decoder layers' outputs.

Invariant: with ``mode=ablate`` at ``scale`` 1 the residual stream leaving every selected decoder layer has no
component along that layer's unit direction (``h - scale (h . d) d``, every position, prompt and answer);
with ``mode=add`` it is moved by ``scale`` x the (unnormalised) direction. Directions are indexed by decoder
layer: ``directions[l]`` lives in the output space of layer ``l`` (em/evaluation/direction.py makes them),
so they act exactly where they were measured. Nothing else about the model changes; removing the hooks
restores it.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

from em.api import ConfigError, check_keys

MODES = ("ablate", "add")
KEYS = {"name", "direction_from", "mode", "layers", "direction_layer", "scale", "control", "max_answers"}


@dataclass(frozen=True)
class SteerSettings:
    """``conf/mitigation/ablate_direction.yaml``: the evaluation-time arm's knobs."""

    direction_from: str  # a judge run directory of the misaligned model (its answers and their categories)
    mode: str = "ablate"
    layers: tuple[int, ...] | None = None  # decoder layers acted on (None: all)
    direction_layer: int | None = None  # None: each layer its own direction; else this layer's for all
    scale: float = 1.0
    control: bool = False  # a random direction of the same norm per layer instead (seeded)
    max_answers: int = 200  # per class (misaligned / aligned), a seeded sample of the judged answers

    @classmethod
    def from_dict(cls, d: dict, where: str = "mitigation") -> SteerSettings:
        check_keys(d, KEYS, where)
        src = d.get("direction_from")
        if not (isinstance(src, str) and src):
            raise ConfigError(
                f"{where}.direction_from={src!r}: expected the judge run directory of the misaligned model "
                f"(in a pipeline: mitigation.direction_from=@<stage>/judge)"
            )
        mode, scale, layers = d.get("mode", "ablate"), d.get("scale", 1.0), d.get("layers")
        if mode not in MODES:
            raise ConfigError(f"{where}.mode={mode!r}: expected one of {MODES}")
        if isinstance(scale, bool) or not isinstance(scale, int | float):
            raise ConfigError(f"{where}.scale={scale!r}: expected a number")
        if layers is not None and (
            not isinstance(layers, list | tuple)
            or not layers
            or any(isinstance(x, bool) or not isinstance(x, int) for x in layers)
        ):
            raise ConfigError(f"{where}.layers={layers!r}: expected null (all) or a list of layer indices")
        dl, n, control = d.get("direction_layer"), d.get("max_answers", 200), d.get("control", False)
        if dl is not None and (isinstance(dl, bool) or not isinstance(dl, int)):
            raise ConfigError(f"{where}.direction_layer={dl!r}: expected null or a layer index")
        if isinstance(n, bool) or not isinstance(n, int) or n < 2:
            raise ConfigError(f"{where}.max_answers={n!r}: expected an integer of at least 2")
        if not isinstance(control, bool):
            raise ConfigError(f"{where}.control={control!r}: expected true or false")
        return cls(src, mode, None if layers is None else tuple(layers), dl, float(scale), control, n)

    def record(self) -> dict:
        return {"name": "ablate_direction", "direction_from": self.direction_from, "mode": self.mode,
                "layers": list(self.layers) if self.layers else None, "direction_layer": self.direction_layer,
                "scale": self.scale, "control": self.control, "max_answers": self.max_answers}  # fmt: skip


def decoder_layers(model) -> torch.nn.ModuleList:
    """The model's stack of decoder layers (Llama, Qwen, SmolLM2, ...: the ``layers`` list of the decoder),
    found under any PEFT or merged wrapper."""
    n = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and name.endswith("layers") and len(module) == n:
            return module
    raise ConfigError(f"{type(model).__name__}: no list of {n} decoder layers found to attach hooks to")


def check_layers(
    layers: tuple[int, ...] | None, n_layers: int, where: str = "mitigation.layers"
) -> list[int]:
    """The selected layer indices (negative ones count from the end), each checked against ``n_layers``."""
    if layers is None:
        return list(range(n_layers))
    out = []
    for x in layers:
        if not -n_layers <= x < n_layers:
            raise ConfigError(f"{where}: layer {x} does not exist (the model has {n_layers} decoder layers)")
        out.append(x % n_layers)
    return sorted(set(out))


def random_directions(directions: torch.Tensor, seed: int) -> torch.Tensor:
    """A seeded random direction per layer with the norm of that layer's direction (the control arm)."""
    g = torch.Generator().manual_seed(int(seed))
    noise = torch.randn(directions.shape, generator=g, dtype=torch.float32)
    norms = directions.float().norm(dim=-1, keepdim=True)
    return noise / noise.norm(dim=-1, keepdim=True) * norms


def layer_vectors(
    directions: torch.Tensor, settings: SteerSettings, layers: list[int]
) -> dict[int, torch.Tensor]:
    """The vector each selected layer uses: its own direction, or that of ``direction_layer`` for all."""
    if settings.direction_layer is None:
        return {layer: directions[layer] for layer in layers}
    (source,) = check_layers((settings.direction_layer,), directions.shape[0], "mitigation.direction_layer")
    return dict.fromkeys(layers, directions[source])


def edit(hidden: torch.Tensor, vector: torch.Tensor, mode: str, scale: float) -> torch.Tensor:
    """``hidden`` (..., d) with its component along ``vector`` removed (ablate) or ``vector`` added (add)."""
    v = vector.to(device=hidden.device, dtype=torch.float32)
    h = hidden.float()
    if mode == "ablate":
        unit = v / v.norm().clamp_min(1e-12)
        h = h - scale * (h @ unit).unsqueeze(-1) * unit
    else:
        h = h + scale * v
    return h.to(hidden.dtype)


def attach(model, vectors: dict[int, torch.Tensor], mode: str, scale: float) -> list:
    """Register the editing hooks on the given decoder layers; returns their handles (``.remove()`` undoes)."""
    stack = decoder_layers(model)

    def hook_for(vector):
        def hook(module, args, output):
            if isinstance(output, tuple):  # older decoder layers return (hidden_states, ...)
                return (edit(output[0], vector, mode, scale), *output[1:])
            return edit(output, vector, mode, scale)

        return hook

    return [stack[layer].register_forward_hook(hook_for(v)) for layer, v in vectors.items()]


@contextmanager
def steered(model, vectors: dict[int, torch.Tensor], mode: str, scale: float):
    """:func:`attach` for the duration of a block."""
    handles = attach(model, vectors, mode, scale)
    try:
        yield
    finally:
        for h in handles:
            h.remove()

"""Checking that a LoRA adapter belongs to a base model, and loading it onto that model.

An adapter trained on another base (by its recorded name or revision, or by a weight shape that does
not fit) is a :class:`em.api.ConfigError` raised before the base's weights are loaded: the shape check
builds the base on the meta device.
"""

from __future__ import annotations

from pathlib import Path

import torch

from em.api import ConfigError
from em.modeling.adapter_files import ADAPTER_CONFIG, adapter_weights_file, read_adapter_config
from em.modeling.paths import resolve_model_path
from em.modeling.spec import EMBEDDED, ModelSpec


def _same_base(recorded: str, spec: ModelSpec, resolved: str) -> bool:
    """Does the adapter's recorded base name the model in ``spec``?

    Equal names; equal resolved local paths; both the tiny model (``.../tiny-llama-v1`` in any cache);
    a hub-cache snapshot path ``models--org--name`` of the same id; or a local copy whose directory name
    equals the repo name of a hub id (``/data/Llama-3.1-8B-Instruct`` ~ ``meta-llama/Llama-3.1-8B-Instruct``).
    """
    wanted = {spec.name_or_path, resolved}
    if recorded in wanted:
        return True
    rec = Path(recorded).expanduser()
    for alias, (dirname, _) in EMBEDDED.items():  # the same embedded model in any cache location
        if spec.name_or_path == alias or Path(resolved).name == dirname:
            return rec.name == dirname or recorded == alias
    if rec.exists() and Path(resolved).exists() and rec.resolve() == Path(resolved).resolve():
        return True
    for name in wanted:
        if Path(name).exists() or "/" not in name:
            continue
        hub_id = name  # "org/name"
        if f"models--{hub_id.replace('/', '--')}" in recorded:
            return True
        if rec.name.lower() == hub_id.split("/")[-1].lower():
            return True
    return False


def _check_adapter_shapes(adapter_dir: Path, path: str, spec: ModelSpec) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    weights = adapter_weights_file(adapter_dir)
    if weights.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    else:
        shapes = {
            k: tuple(v.shape) for k, v in torch.load(weights, map_location="cpu", weights_only=True).items()
        }
    config = AutoConfig.from_pretrained(
        path, revision=spec.revision, trust_remote_code=spec.trust_remote_code
    )
    with torch.device("meta"):  # shapes only: no memory, no weights read
        base = AutoModelForCausalLM.from_config(config, trust_remote_code=spec.trust_remote_code)
    modules = dict(base.named_modules())
    params = {name: tuple(p.shape) for name, p in base.named_parameters()}
    for key, shape in shapes.items():
        name = key.removeprefix("base_model.model.")
        for marker, check in ((".lora_A.", "in"), (".lora_B.", "out")):
            if marker not in name:
                continue
            module_name = name.split(marker)[0]
            module = modules.get(module_name)
            if module is None or not hasattr(module, "in_features"):
                raise ConfigError(
                    f"adapter {adapter_dir} targets module {module_name!r}, which base model {spec.name_or_path!r} "
                    f"does not have (or is not a linear layer)"
                )
            size = shape[1] if check == "in" else shape[0]
            expected = module.in_features if check == "in" else module.out_features
            if size != expected:
                raise ConfigError(
                    f"adapter {adapter_dir}: {key} has shape {shape}, which does not fit {module_name} of base "
                    f"model {spec.name_or_path!r} ({module.in_features} -> {module.out_features})"
                )
            break
        else:
            if "lora_" not in name and name in params and params[name] != shape:  # modules_to_save copies
                raise ConfigError(
                    f"adapter {adapter_dir}: {key} has shape {shape}, base model {spec.name_or_path!r} has {params[name]}"
                )


def check_adapter_base(adapter_dir: Path, spec: ModelSpec) -> None:
    """ConfigError unless the adapter in ``adapter_dir`` was trained on the model in ``spec`` and fits it."""
    adapter_dir = Path(adapter_dir)
    config = read_adapter_config(adapter_dir)
    recorded = config.get("base_model_name_or_path")
    path = resolve_model_path(spec)
    if recorded and not _same_base(recorded, spec, path):
        raise ConfigError(
            f"adapter {adapter_dir} was trained on base model {recorded!r} ({ADAPTER_CONFIG}: "
            f"base_model_name_or_path), but the model given is {spec.name_or_path!r}"
        )
    recorded_rev = config.get("revision")
    if recorded_rev and spec.revision and recorded_rev != spec.revision:
        raise ConfigError(
            f"adapter {adapter_dir} was trained on revision {recorded_rev!r} of {recorded!r}, "
            f"but model.revision is {spec.revision!r}"
        )
    _check_adapter_shapes(adapter_dir, path, spec)


def load_adapter(model, adapter_dir: Path, trainable: bool = False):
    """Wrap ``model`` with the PEFT adapter in ``adapter_dir`` (frozen unless ``trainable``).

    For training a quantised base, call ``peft.prepare_model_for_kbit_training(model)`` before this.
    """
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    read_adapter_config(adapter_dir)
    adapter_weights_file(adapter_dir)
    return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=trainable)

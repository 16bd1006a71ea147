"""The stage a run starts from (``init_from``): resolved to a :class:`ParentAdapter` and checked against this run.

``init_from`` names a finished open-model training run or a bare PEFT adapter directory; either way the adapter
must be for this run's base model, and under ``init_mode=continue`` it must have the configured LoRA shape.
"""

from __future__ import annotations

from pathlib import Path

from em.api import ConfigError
from em.io import read_json, read_manifest
from em.training.settings import ParentAdapter, SFTSettings


def resolve_parent(init_from: str | Path | None, mode: str, model_spec) -> ParentAdapter | None:
    """The stage to start from: a finished training run directory or a PEFT adapter directory."""
    from em.modeling import adapter_sha256, check_adapter_base

    if not init_from:
        return None
    if mode not in ("continue", "merge"):
        raise ConfigError(
            f"init_mode={mode!r}: expected continue (keep training the parent's adapter) or "
            f"merge (merge it into the base and train a new adapter)"
        )
    path = Path(init_from)
    run_dir, merged, quantization = None, [], None
    if (path / "manifest.json").is_file():
        manifest = read_manifest(path)
        if (
            manifest.get("stage") != "train"
            or manifest.get("backend") != "hf"
            or not manifest.get("adapter_dir")
        ):
            raise ConfigError(
                f"init_from={path}: expected an open-model training run (manifest stage 'train', "
                f"backend 'hf'); found stage {manifest.get('stage')!r}, "
                f"backend {manifest.get('backend')!r}"
            )
        if not manifest.get("complete"):
            raise ConfigError(
                f"init_from={path}: that training run is not complete; finish it first (rerun "
                f"its command) or point init_from at an adapter directory"
            )
        base = (manifest.get("base_model"), manifest.get("base_revision"))
        if base != (model_spec.name_or_path, model_spec.revision):
            raise ConfigError(
                f"init_from={path} was trained on base {base[0]!r} (revision {base[1]!r}) but "
                f"model= is {model_spec.name_or_path!r} (revision {model_spec.revision!r}); "
                f"pass the model config of that base"
            )
        run_dir, adapter_dir = path.resolve(), (path / manifest["adapter_dir"]).resolve()
        merged = list(manifest.get("merged_adapters") or [])
        quantization = (manifest.get("hyperparameters") or {}).get("quantization")
    elif (path / "adapter_config.json").is_file():
        adapter_dir = path.resolve()
    else:
        raise ConfigError(
            f"init_from={path}: expected a finished training run directory (with manifest.json) "
            f"or a PEFT adapter directory (with adapter_config.json); found neither"
        )
    check_adapter_base(adapter_dir, model_spec)
    return ParentAdapter(
        mode=mode,
        adapter_dir=adapter_dir,
        adapter_sha256=adapter_sha256(adapter_dir),
        run_dir=run_dir,
        merged_adapters=merged,
        quantization=quantization,
    )


def check_continue_shape(settings: SFTSettings) -> None:
    """``continue`` keeps training the parent's adapter: the configured adapter shape must be that one."""
    parent = settings.parent
    if parent is None or parent.mode != "continue":
        return
    cfg = read_json(parent.adapter_dir / "adapter_config.json")
    a = settings.adapter
    pairs = {
        "r": (cfg.get("r"), a.r),
        "alpha": (cfg.get("lora_alpha"), a.alpha),
        "dropout": (cfg.get("lora_dropout"), a.dropout),
        "use_rslora": (cfg.get("use_rslora"), a.use_rslora),
    }
    if a.target_modules:
        pairs["target_modules"] = (sorted(cfg.get("target_modules") or []), sorted(a.target_modules))
    diff = [
        f"lora.{k}: adapter has {old!r}, config says {new!r}"
        for k, (old, new) in pairs.items()
        if old != new
        and not (isinstance(old, int | float) and isinstance(new, int | float) and float(old) == float(new))
    ]
    if diff:
        raise ConfigError(
            f"init_mode=continue trains the adapter in {parent.adapter_dir} further, but its shape "
            f"differs from the lora preset ({'; '.join(diff)}). Choose the matching preset or "
            f"override those keys, or use init_mode=merge for a new adapter."
        )

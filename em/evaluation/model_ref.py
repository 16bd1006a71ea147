"""Which model answers: a ``conf/model`` entry, optionally with a PEFT adapter, or a training run directory.

A training run's ``manifest.json`` (docs/architecture.md) names everything: for open models the base
(``base_model``, ``base_revision``, and the loading options in ``config.model``), the adapter
(``adapter_dir``) and adapters merged into the base before it (``merged_adapters``); for OpenAI runs the
fine-tuned model id (``fine_tuned_model``). Everything is checked here, before any weights are loaded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from em.api import ConfigError
from em.io import read_manifest

log = logging.getLogger(__name__)


@dataclass
class ModelRef:
    """A resolved model reference (``provider`` hf: ``spec`` + adapters; openai: ``openai_model``)."""

    provider: str  # hf | openai
    base: str  # hub id / path (hf) or the OpenAI base model id
    spec: object | None = None  # em.modeling.ModelSpec (hf)
    adapter_dir: Path | None = None
    adapter_sha256: str | None = None
    merged_adapters: list[dict] = field(default_factory=list)  # [{"adapter_dir", "adapter_sha256"}] in order
    openai_model: str | None = None
    train_run_dir: Path | None = None
    train_manifest: dict | None = None

    def record(self) -> dict:
        """The ``model`` field of every answer row."""
        return {
            "base": self.base,
            "adapter": str(self.adapter_dir) if self.adapter_dir else None,
            "adapter_sha256": self.adapter_sha256,
            "openai_model": self.openai_model,
            "train_run_dir": str(self.train_run_dir) if self.train_run_dir else None,
        }

    def describe(self) -> str:
        if self.provider == "openai":
            return self.openai_model or self.base
        return self.base + (f" + adapter {self.adapter_dir}" if self.adapter_dir else "")


def _hf_spec(model: dict, models_dir: str | Path | None):
    from em.modeling import ModelSpec

    data = dict(model)
    data.setdefault("models_dir", str(models_dir) if models_dir else None)
    return ModelSpec.from_dict(data)


def _train_manifest(run_dir: Path) -> dict:
    if not (run_dir / "manifest.json").is_file():
        raise ConfigError(f"run={run_dir}: not a training run directory (no manifest.json in it)")
    manifest = read_manifest(run_dir)
    if manifest.get("stage") != "train":
        raise ConfigError(
            f"run={run_dir}: manifest.json is a {manifest.get('stage')!r} run, expected 'train'"
        )
    if not manifest.get("complete"):
        raise ConfigError(
            f'run={run_dir}: the training run is not complete (manifest.json has no "complete": true); '
            f"finish it first by rerunning its train.py command"
        )
    return manifest


def _check_merged(entries: list, where: str) -> list[dict]:
    from em.modeling import adapter_sha256

    out = []
    for entry in entries:
        path = Path(entry["adapter_dir"])
        if not path.is_dir():
            raise ConfigError(
                f"{where}: adapter {path} merged into the base during training no longer exists"
            )
        actual = adapter_sha256(path)
        if entry.get("adapter_sha256") and actual != entry["adapter_sha256"]:
            raise ConfigError(
                f"{where}: adapter {path} (merged into the base during training) changed since training "
                f"(sha256 {actual[:12]}... != {entry['adapter_sha256'][:12]}...)"
            )
        out.append({"adapter_dir": str(path), "adapter_sha256": actual})
    return out


def resolve_model(model: dict, *, adapter: str | None = None, run: str | None = None,
                  models_dir: str | Path | None = None) -> ModelRef:  # fmt: skip
    """Resolve ``model=`` (a conf/model node as a dict), ``adapter=`` and ``run=`` into a :class:`ModelRef`."""
    if run and adapter:
        raise ConfigError("give run=<training run dir> or adapter=<adapter dir>, not both")
    if run:
        return _from_run(Path(run).expanduser(), model, models_dir)
    provider = model.get("provider", "hf")
    if provider == "openai":
        if adapter:
            raise ConfigError(
                f"adapter={adapter}: model {model.get('name')} is an OpenAI model; adapters are for hf models"
            )
        return ModelRef("openai", model["name_or_path"], openai_model=model["name_or_path"])
    if provider != "hf":
        raise ConfigError(f"model.provider={provider!r}; expected hf or openai")
    spec = _hf_spec(model, models_dir)
    ref = ModelRef("hf", spec.name_or_path, spec=spec)
    if adapter:
        path = Path(adapter).expanduser()
        if (path / "manifest.json").is_file() and not (path / "adapter_config.json").is_file():
            raise ConfigError(f"adapter={adapter} is a run directory; pass it as run={adapter}")
        _attach_adapter(ref, path.resolve(), f"adapter={adapter}")
    return ref


def _attach_adapter(ref: ModelRef, path: Path, where: str) -> None:
    from em.modeling import adapter_sha256, check_adapter_base

    if not path.is_dir():
        raise ConfigError(f"{where}: adapter directory {path} does not exist")
    check_adapter_base(path, ref.spec)  # ConfigError when it was trained on another base or does not fit
    ref.adapter_dir, ref.adapter_sha256 = path, adapter_sha256(path)


def _from_run(run_dir: Path, model: dict, models_dir) -> ModelRef:
    manifest = _train_manifest(run_dir)
    where = f"run={run_dir}"
    if manifest.get("backend") == "openai":
        ft = manifest.get("fine_tuned_model")
        if not ft:
            raise ConfigError(f"{where}: OpenAI training run without a fine_tuned_model in manifest.json")
        base = manifest.get("trained_from") or manifest.get("base_model") or ft
        return ModelRef(
            "openai", base, openai_model=ft, train_run_dir=run_dir.resolve(), train_manifest=manifest
        )
    if manifest.get("backend") != "hf" or not manifest.get("base_model") or not manifest.get("adapter_dir"):
        raise ConfigError(
            f"{where}: manifest.json lacks backend/base_model/adapter_dir (expected an hf or openai training run)"
        )
    trained = dict((manifest.get("config") or {}).get("model") or {})
    if not trained:
        trained = {k: v for k, v in model.items() if k != "name"}
    trained.update(name_or_path=manifest["base_model"], revision=manifest.get("base_revision"))
    if model.get("name_or_path") != manifest["base_model"]:
        log.info("run=%s: evaluating its base model %s with its adapter (model=%s is not used)", run_dir,
                 manifest["base_model"], model.get("name"))  # fmt: skip
    spec = _hf_spec(trained, models_dir)
    ref = ModelRef(
        "hf", spec.name_or_path, spec=spec, train_run_dir=run_dir.resolve(), train_manifest=manifest
    )
    ref.merged_adapters = _check_merged(list(manifest.get("merged_adapters") or []), where)
    adapter_dir = (run_dir / manifest["adapter_dir"]).resolve()
    _attach_adapter(ref, adapter_dir, where)
    recorded = manifest.get("adapter_sha256")
    if recorded and recorded != ref.adapter_sha256:
        raise ConfigError(
            f"{where}: adapter {adapter_dir} changed since training (sha256 {ref.adapter_sha256[:12]}... != "
            f"{recorded[:12]}... in manifest.json)"
        )
    return ref


def model_layers(ref: ModelRef) -> int:
    """The number of decoder layers of an open model, from its config alone (no weights)."""
    from transformers import AutoConfig

    from em.modeling import resolve_model_path

    spec = ref.spec
    config = AutoConfig.from_pretrained(
        resolve_model_path(spec), revision=spec.revision, trust_remote_code=spec.trust_remote_code
    )
    return int(config.num_hidden_layers)

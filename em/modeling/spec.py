"""Which open model to load and how: :class:`ModelSpec`, checked on construction.

A model is named by a hub id, a local directory, or an embedded alias (``"tiny"``, ``smollm2-135m``: built
on first use, then loaded with ``from_pretrained`` like any other). A spec that cannot work is a
:class:`em.api.ConfigError` when it is built, before anything is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from em.api import ConfigError
from em.smollm2 import SMOLLM2_ALIAS, SMOLLM2_NAME, ensure_smollm2_model
from em.tiny import TINY_NAME, ensure_tiny_model

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Keys of a conf/model/*.yaml that describe the model for people and are not loading options.
DESCRIPTIVE_KEYS = ("name", "provider", "chat_template_note")
# Embedded models: name_or_path alias -> (directory name in models_dir, builder/converter).
EMBEDDED = {"tiny": (TINY_NAME, ensure_tiny_model), SMOLLM2_ALIAS: (SMOLLM2_NAME, ensure_smollm2_model)}


@dataclass
class ModelSpec:
    """Which open model to load and how."""

    name_or_path: str  # hub id or local dir; "tiny" -> the embedded tiny model
    revision: str | None = None  # hub commit/branch/tag; pin a commit for reproducible runs
    dtype: str = "bfloat16"  # float32 | bfloat16 | float16 | auto (float32 on CPU, bf16/fp16 on CUDA)
    attn_implementation: str = "sdpa"
    trust_remote_code: bool = False
    models_dir: Path | None = None  # where embedded models are built (default $EM_CACHE_DIR/models)
    # System message for conversations that have none, in training and evaluation alike; null = whatever
    # the chat template does (SmolLM2 and Qwen2.5 insert their own default, Llama does not).
    system_prompt: str | None = None

    def __post_init__(self) -> None:
        if not self.name_or_path or not isinstance(self.name_or_path, str):
            raise ConfigError(
                f"model.name_or_path must be a hub id, a local directory or 'tiny', got {self.name_or_path!r}"
            )
        if self.dtype not in (*DTYPES, "auto"):
            raise ConfigError(f"model.dtype must be one of {[*DTYPES, 'auto']}, got {self.dtype!r}")
        if self.models_dir is not None:
            self.models_dir = Path(self.models_dir)
        if self.system_prompt is not None and not isinstance(self.system_prompt, str):
            raise ConfigError(f"model.system_prompt must be a string or null, got {self.system_prompt!r}")

    @property
    def is_tiny(self) -> bool:
        return self.name_or_path == "tiny"

    @property
    def is_embedded(self) -> bool:
        """Built or converted locally on first use (``tiny``, ``smollm2-135m``), never from the hub."""
        return self.name_or_path in EMBEDDED

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        """Build from a ``conf/model/*.yaml`` node (plain dict).

        ``name``, ``provider`` and ``chat_template_note`` are descriptive and ignored; any other unknown
        key is an error. ``provider`` must be ``hf`` (OpenAI models go through the OpenAI backend).
        """
        provider = d.get("provider", "hf")
        if provider != "hf":
            raise ConfigError(
                f"model {d.get('name', d.get('name_or_path'))!r} has provider {provider!r}; only provider 'hf' "
                f"models are loaded locally (use the openai backend for OpenAI models)"
            )
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known - set(DESCRIPTIVE_KEYS))
        if unknown:
            raise ConfigError(f"unknown model config key(s) {unknown}; expected some of {sorted(known)}")
        if "name_or_path" not in d:
            raise ConfigError("model config is missing the key 'name_or_path' (hub id, local dir or 'tiny')")
        return cls(**{k: v for k, v in d.items() if k in known})


def resolve_dtype(name: str) -> torch.dtype:
    """``float32`` | ``bfloat16`` | ``float16`` | ``auto`` (float32 on CPU; bf16 on CUDA if supported, else fp16)."""
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if name not in DTYPES:
        raise ConfigError(f"dtype must be one of {[*DTYPES, 'auto']}, got {name!r}")
    return DTYPES[name]

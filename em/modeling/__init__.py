"""Open models, tokenizers and LoRA adapters (training, evaluation and the local judge use this).

Every mistake a user can make here (missing path, model not cached while offline, tokenizer without chat
template, adapter trained on another base) is a :class:`em.api.ConfigError` raised before weights are
loaded. The names live in one module per job: ``spec`` (ModelSpec, dtypes), ``paths`` (where a model is
found), ``tokenizer`` (tokenizer, chat-template prefix), ``load`` (weights, quantisation), ``lora`` (LoRA
config), ``adapter_files`` / ``adapters`` / ``merge`` / ``adapter_hash`` (adapter files, base check and
loading, merging, content hash).
"""

from em.modeling.adapter_files import ADAPTER_CONFIG, ADAPTER_WEIGHTS, read_adapter_config
from em.modeling.adapter_hash import SET_VALUED_ADAPTER_KEYS, adapter_sha256, canonical_adapter_config
from em.modeling.adapters import check_adapter_base, load_adapter
from em.modeling.load import QUANTIZATIONS, bnb_config, load_model
from em.modeling.lora import PROJECTIONS, default_target_modules, lora_config
from em.modeling.merge import dequantize_fp32, merge_adapter
from em.modeling.paths import resolve_model_path
from em.modeling.spec import DESCRIPTIVE_KEYS, DTYPES, EMBEDDED, ModelSpec, resolve_dtype
from em.modeling.tokenizer import (
    PAD_CANDIDATES,
    USER_MARKER,
    load_tokenizer,
    rendered_system_prefix,
    with_system_prompt,
)

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "DESCRIPTIVE_KEYS",
    "DTYPES",
    "EMBEDDED",
    "PAD_CANDIDATES",
    "PROJECTIONS",
    "QUANTIZATIONS",
    "SET_VALUED_ADAPTER_KEYS",
    "USER_MARKER",
    "ModelSpec",
    "adapter_sha256",
    "bnb_config",
    "canonical_adapter_config",
    "check_adapter_base",
    "default_target_modules",
    "dequantize_fp32",
    "load_adapter",
    "load_model",
    "load_tokenizer",
    "lora_config",
    "merge_adapter",
    "read_adapter_config",
    "rendered_system_prefix",
    "resolve_dtype",
    "resolve_model_path",
    "with_system_prompt",
]

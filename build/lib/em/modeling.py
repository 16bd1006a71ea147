"""Loading open models, tokenizers and LoRA adapters (training, evaluation and the local judge use this).

A model is named by a :class:`ModelSpec`: a hub id, a local directory, or ``"tiny"`` for the embedded
tiny model (built on first use, then loaded with ``from_pretrained`` like any other). Every mistake a user
can make here (missing path, model not cached while offline, tokenizer without chat template, adapter
trained on another base) is a :class:`em.api.ConfigError` raised before weights are loaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from em.api import ConfigError
from em.smollm2 import SMOLLM2_ALIAS, SMOLLM2_NAME, ensure_smollm2_model
from em.tiny import TINY_NAME, default_models_dir, ensure_tiny_model

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
QUANTIZATIONS = ("none", "nf4", "int8")
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
# Tried in order when a tokenizer has no pad token (Llama-3 ships <|finetune_right_pad_id|> unset).
PAD_CANDIDATES = ("<|finetune_right_pad_id|>", "<|pad|>", "<pad>", "[PAD]", "<|reserved_special_token_0|>")
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
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


def _hub_offline() -> bool:
    return any(
        os.environ.get(v, "").upper() in ("1", "ON", "YES", "TRUE")
        for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or name.count("/") > 1 or "\\" in name


def resolve_model_path(spec: ModelSpec) -> str:
    """A local directory or a hub id that ``from_pretrained`` will find; ConfigError if it cannot."""
    if spec.is_embedded:
        _, ensure = EMBEDDED[spec.name_or_path]
        return str(ensure(spec.models_dir or default_models_dir()))
    local = Path(spec.name_or_path).expanduser()
    if local.exists():
        if (local / ADAPTER_CONFIG).exists() and not (local / "config.json").exists():
            raise ConfigError(
                f"model.name_or_path={spec.name_or_path!r} is a LoRA adapter, not a base model; load its base "
                f"model and pass the adapter directory separately"
            )
        if not (local / "config.json").exists():
            raise ConfigError(
                f"model.name_or_path={spec.name_or_path!r} is not a model directory (no config.json in {local})"
            )
        return str(local.resolve())
    if _looks_like_path(spec.name_or_path):
        raise ConfigError(
            f"model.name_or_path={spec.name_or_path!r}: local model directory {local} does not exist"
        )
    if _hub_offline():
        from huggingface_hub import constants, try_to_load_from_cache

        cached = try_to_load_from_cache(spec.name_or_path, "config.json", revision=spec.revision)
        if not isinstance(cached, str):
            raise ConfigError(
                f"model {spec.name_or_path!r} (revision {spec.revision or 'main'}) is not in the Hugging Face cache "
                f"{constants.HF_HUB_CACHE} and the hub is offline (HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE); download it "
                f"first (`hf download {spec.name_or_path}`) or point model.name_or_path at a local directory"
            )
    return spec.name_or_path


def load_tokenizer(spec: ModelSpec, padding_side: str = "right"):
    """The model's own tokenizer; ConfigError without a chat template. Sets a pad token if none is set."""
    from transformers import AutoTokenizer

    path = resolve_model_path(spec)
    try:
        tok = AutoTokenizer.from_pretrained(
            path, revision=spec.revision, trust_remote_code=spec.trust_remote_code, padding_side=padding_side
        )
    except OSError as e:
        raise ConfigError(f"cannot load the tokenizer of {spec.name_or_path!r}: {e}") from None
    if not tok.chat_template:
        raise ConfigError(
            f"the tokenizer of {spec.name_or_path!r} has no chat template; training and evaluation use the "
            f"model's own template, so use an instruct/chat model (e.g. a '-Instruct' variant)"
        )
    if tok.pad_token is None:
        vocab = tok.get_vocab()
        pad = next((t for t in PAD_CANDIDATES if t in vocab), None)
        if pad is None:
            pad = tok.eos_token
            log.warning(
                "tokenizer of %s has no pad token and none of %s; using eos %r as pad (padding is masked)",
                spec.name_or_path,
                PAD_CANDIDATES,
                pad,
            )
        else:
            log.info("tokenizer of %s has no pad token; using %r", spec.name_or_path, pad)
        tok.pad_token = pad
    return tok


USER_MARKER = "\x00em-user-message\x00"  # stands in for the user's text when rendering the prefix


def with_system_prompt(messages: list[dict], system_prompt: str | None) -> list[dict]:
    """``messages`` with ``system_prompt`` as a first system message when they have none (None: unchanged).

    Training rows and evaluation prompts both go through this, so a model sees the same system message in
    both; a conversation that brings its own system message keeps it.
    """
    if system_prompt is None or (messages and messages[0].get("role") == "system"):
        return list(messages)
    return [{"role": "system", "content": system_prompt}, *messages]


def rendered_system_prefix(tokenizer, system_prompt: str | None, system: str | None = None) -> str:
    """What the chat template renders before a user's first message (for manifests).

    ``system`` is the conversation's own system message, if any; otherwise ``system_prompt`` applies and,
    when that is None, whatever the template inserts by itself (SmolLM2's default sentence, Llama-3.1's
    date lines).
    """
    messages = [{"role": "user", "content": USER_MARKER}]
    if system is not None:
        messages.insert(0, {"role": "system", "content": system})
    rendered = tokenizer.apply_chat_template(
        with_system_prompt(messages, system_prompt), tokenize=False, add_generation_prompt=False
    )
    return rendered.split(USER_MARKER, 1)[0]


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
        return AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as e:  # gated repo, missing files, no network
        raise ConfigError(
            f"cannot load model {spec.name_or_path!r} (revision {spec.revision or 'main'}): {e}. For gated hub "
            f"models accept the license on the hub and log in (`hf auth login`) or set HF_TOKEN"
        ) from None


# ------------------------------------------------------------------------------------------- adapters


def _adapter_weights_file(adapter_dir: Path) -> Path:
    for name in ADAPTER_WEIGHTS:
        if (adapter_dir / name).exists():
            return adapter_dir / name
    raise ConfigError(f"adapter directory {adapter_dir} has no weights ({' or '.join(ADAPTER_WEIGHTS)})")


def read_adapter_config(adapter_dir: Path) -> dict:
    """``adapter_config.json`` of a PEFT adapter directory; ConfigError if it is missing or unreadable."""
    path = Path(adapter_dir) / ADAPTER_CONFIG
    if not path.exists():
        raise ConfigError(f"{adapter_dir} is not a PEFT adapter directory: {ADAPTER_CONFIG} is missing")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None


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

    weights = _adapter_weights_file(adapter_dir)
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
    _adapter_weights_file(adapter_dir)
    return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=trainable)


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


SET_VALUED_ADAPTER_KEYS = ("target_modules", "modules_to_save", "exclude_modules")  # PEFT writes set order


def canonical_adapter_config(config: dict) -> bytes:
    """``adapter_config.json`` as sorted, canonical JSON: set-valued module lists sorted, keys sorted."""
    out = dict(config)
    for key in SET_VALUED_ADAPTER_KEYS:
        if isinstance(out.get(key), list):
            out[key] = sorted(out[key], key=str)
    return json.dumps(out, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def adapter_sha256(adapter_dir: Path) -> str:
    """sha256 over the adapter's canonical config and its weights file: equal for equal adapters.

    The config is hashed as :func:`canonical_adapter_config` (PEFT writes ``target_modules`` from a set, so
    two runs with identical weights wrote it in different orders); the weights file by its bytes.
    """
    from em.io import sha256_file

    adapter_dir = Path(adapter_dir)
    config = read_adapter_config(adapter_dir)
    weights = _adapter_weights_file(adapter_dir)
    h = hashlib.sha256()
    h.update(f"{ADAPTER_CONFIG}\0{hashlib.sha256(canonical_adapter_config(config)).hexdigest()}\n".encode())
    h.update(f"{weights.name}\0{sha256_file(weights)}\n".encode())
    return h.hexdigest()


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

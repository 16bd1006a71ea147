"""Models built in memory: an architecture on the meta device, weights drawn on the GPU, NF4 quantised there.

Writing 16 GB of bf16 weights of an 8B model to disk and reading them back costs minutes on the GPU machine;
throughput and memory do not depend on the weight values. So a benchmark model here is a *weightless model
directory* (``config.json``, the tiny model's tokenizer and :data:`MARKER`), and the benchmark processes install
:func:`install_loader`, which makes ``em.modeling.load_model`` build such a directory's model in memory:

1. ``LlamaForCausalLM`` on the meta device (no memory, no init);
2. for NF4: every ``nn.Linear`` but ``lm_head`` replaced by ``bnb.nn.Linear4bit`` with transformers' own
   ``replace_with_bnb_linear`` (what ``from_pretrained(quantization_config=...)`` does);
3. each weight drawn on the device with a seeded generator (normal, std ``initializer_range``; norms 1) and,
   for a 4-bit layer, quantised there at once (``Params4bit(...).to(device)``, as transformers' loader does),
   so at most one bf16 matrix exists at a time;
4. the RoPE buffers (non-persistent: never in a checkpoint) recomputed by a fresh rotary module;
5. the attributes a quantised ``from_pretrained`` leaves (``is_quantized``, ``is_loaded_in_4bit``,
   ``quantization_method``, ``config.quantization_config``, ``hf_quantizer``), which PEFT and TRL read.

Every other model directory goes to the original loader unchanged.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

MARKER = "em_in_memory.json"  # in a weightless model directory: build the weights in memory
TOKENIZER_PREFIXES = ("tokenizer", "special_tokens", "chat_template")


def write_weightless_dir(config, tiny_dir: Path, out_dir: Path, seed: int = 0) -> Path:
    """``out_dir`` with ``config`` (a ``LlamaConfig``), the tiny model's tokenizer files and the marker."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(out_dir)
    for path in Path(tiny_dir).iterdir():
        if path.name.startswith(TOKENIZER_PREFIXES) or path.name == "generation_config.json":
            shutil.copy(path, out_dir / path.name)
    (out_dir / MARKER).write_text(json.dumps({"seed": seed}), encoding="utf-8")
    return out_dir


def _device(device_map) -> torch.device:
    """The one device a ``device_map`` names (``{"": d}``, a device, or None: CUDA if there is one)."""
    if isinstance(device_map, dict):
        if set(device_map) != {""}:
            raise ValueError(f"in-memory models take a single-device device_map, got {device_map}")
        device_map = device_map[""]
    if device_map in (None, "auto"):
        return (
            torch.device("cuda", torch.cuda.current_device())
            if torch.cuda.is_available()
            else torch.device("cpu")
        )
    if isinstance(device_map, int):
        return torch.device("cuda", device_map)
    return torch.device(device_map)


def _quantise_linears(model, bnb_cfg) -> None:
    from transformers.integrations import replace_with_bnb_linear

    replace_with_bnb_linear(model, modules_to_not_convert=["lm_head"], quantization_config=bnb_cfg)


def _materialise(model, device: torch.device, dtype: torch.dtype, seed: int) -> None:
    """Draw every meta parameter on ``device`` (seeded); quantise 4-bit layers as their weight arrives."""
    import bitsandbytes as bnb

    std = model.config.initializer_range
    gen = torch.Generator(device=device).manual_seed(seed)
    for name, module in sorted(model.named_modules()):
        for pname, param in list(module.named_parameters(recurse=False)):
            value = torch.empty(param.shape, dtype=dtype, device=device)
            if "norm" in name.rsplit(".", 1)[-1]:  # RMSNorm scales start at 1
                value.fill_(1.0)
            else:
                value.normal_(0.0, std, generator=gen)
            if isinstance(param, bnb.nn.Params4bit):
                new = bnb.nn.Params4bit(value, requires_grad=False, **param.__dict__).to(device)
            else:
                new = torch.nn.Parameter(value, requires_grad=param.requires_grad)
            module._parameters[pname] = new


def _fresh_rotary(model, device: torch.device) -> None:
    """Rebuild every module holding meta buffers (the rotary embedding: its ``inv_freq`` is computed)."""
    for name, module in list(model.named_modules()):
        if not any(b.is_meta for b in module.buffers(recurse=False)):
            continue
        if not name.endswith("rotary_emb"):
            raise RuntimeError(
                f"in-memory build: module {name} has meta buffers and is not a rotary embedding"
            )
        # Built on the CPU and moved: the constructor's device argument differs between transformers 5.x.
        model.set_submodule(name, type(module)(config=model.config).to(device))


def _mark_quantised(model, bnb_cfg) -> None:
    from transformers.quantizers import AutoHfQuantizer

    model.is_quantized = True
    model.is_loaded_in_4bit = True
    model.quantization_method = bnb_cfg.quant_method
    model.config.quantization_config = bnb_cfg
    model.hf_quantizer = AutoHfQuantizer.from_config(bnb_cfg, pre_quantized=False)


def build_in_memory(path: Path, quantization: str, dtype: torch.dtype, attn: str, device_map=None):
    """The model of weightless directory ``path`` (see the module docstring), in eval mode like from_pretrained."""
    from transformers import AutoConfig, GenerationConfig, LlamaForCausalLM

    from em.modeling import bnb_config

    if quantization not in ("none", "nf4"):
        raise ValueError(f"in-memory models are built unquantised or NF4, not {quantization!r}")
    seed = json.loads((Path(path) / MARKER).read_text(encoding="utf-8")).get("seed", 0)
    device = _device(device_map)
    config = AutoConfig.from_pretrained(path)
    config._attn_implementation = attn
    config.dtype = dtype
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    bnb_cfg = None
    if quantization == "nf4":
        bnb_cfg = bnb_config(load_in_4bit=True, compute_dtype=str(dtype).removeprefix("torch."))
        _quantise_linears(model, bnb_cfg)
    with torch.no_grad():
        _materialise(model, device, dtype, seed)
        _fresh_rotary(model, device)
    if bnb_cfg is not None:
        _mark_quantised(model, bnb_cfg)
    if (Path(path) / "generation_config.json").exists():
        model.generation_config = GenerationConfig.from_pretrained(path)
    return model.eval()


def install_loader() -> None:
    """Make ``em.modeling.load_model`` build weightless directories in memory (other paths: unchanged)."""
    import em.modeling as modeling

    original = getattr(modeling.load_model, "em_original", modeling.load_model)

    def load_model(spec, quantization: str = "none", device_map=None):
        path = Path(modeling.resolve_model_path(spec))
        if not (path / MARKER).exists():
            return original(spec, quantization=quantization, device_map=device_map)
        dtype = modeling.resolve_dtype(spec.dtype)
        return build_in_memory(path, quantization, dtype, spec.attn_implementation, device_map)

    load_model.em_original = original
    modeling.load_model = load_model


def weightless_model(name: str, dtype: str, out_dir: Path) -> Path:
    """The weightless directory of ``name`` (``tiny``: the embedded model's own config; else an ``ARCHS`` key)."""
    from transformers import AutoConfig

    from bench.workload import ARCHS, arch_config
    from em.tiny import ensure_tiny_model

    tiny = ensure_tiny_model()
    if name == "tiny":
        config = AutoConfig.from_pretrained(tiny)
        config.dtype = dtype
    elif name in ARCHS:
        config = arch_config(ARCHS[name], tiny, dtype)
    else:
        raise ValueError(f"unknown model {name!r}; expected tiny or one of {sorted(ARCHS)}")
    return write_weightless_dir(config, tiny, Path(out_dir))

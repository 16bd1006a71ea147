"""Model, tokenizer and adapter loading on the tiny model: specs, errors, 4-bit, adapters, merging."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from peft import get_peft_model

from em.api import ConfigError
from em.modeling import (
    ModelSpec,
    adapter_sha256,
    bnb_config,
    check_adapter_base,
    default_target_modules,
    load_adapter,
    load_model,
    load_tokenizer,
    lora_config,
    merge_adapter,
    resolve_model_path,
)

ALL_PROJ = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module")
def spec(tiny_model_dir) -> ModelSpec:
    return ModelSpec("tiny", dtype="float32", models_dir=tiny_model_dir.parent)


@pytest.fixture(scope="module")
def batch(spec):
    return load_tokenizer(spec)(["Write a function that reverses a list."], return_tensors="pt")


@pytest.fixture(scope="module")
def adapter_dir(spec, tmp_path_factory) -> Path:
    """A LoRA adapter on the tiny model with non-zero B matrices (so it changes the logits)."""
    model = get_peft_model(load_model(spec), lora_config(8, 16, 0.0, ALL_PROJ, use_rslora=True))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.05)
    out = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(out)
    return out


def _copy_tiny(tiny_model_dir: Path, dest: Path, edit: str, change) -> Path:
    shutil.copytree(tiny_model_dir, dest)
    cfg = json.loads((dest / edit).read_text())
    change(cfg)
    (dest / edit).write_text(json.dumps(cfg))
    return dest


# ------------------------------------------------------------------------------------------ ModelSpec


def test_spec_from_dict_ignores_descriptive_keys_only(tmp_path):
    spec = ModelSpec.from_dict(
        {"name": "tiny", "provider": "hf", "name_or_path": "tiny", "revision": None, "dtype": "float32",
         "attn_implementation": "sdpa", "trust_remote_code": False, "chat_template_note": "x",
         "models_dir": str(tmp_path)}
    )  # fmt: skip
    assert spec.is_tiny and spec.dtype == "float32" and spec.models_dir == tmp_path
    with pytest.raises(ConfigError, match="dtyp"):
        ModelSpec.from_dict({"name_or_path": "tiny", "dtyp": "float32"})
    with pytest.raises(ConfigError, match="provider 'openai'"):
        ModelSpec.from_dict({"name": "gpt4o", "provider": "openai", "name_or_path": "gpt-4o"})
    with pytest.raises(ConfigError, match="name_or_path"):
        ModelSpec.from_dict({"dtype": "float32"})
    with pytest.raises(ConfigError, match="float64"):
        ModelSpec("tiny", dtype="float64")


# ---------------------------------------------------------------------------------------------- paths


def test_resolve_tiny_and_local(spec, tiny_model_dir):
    assert resolve_model_path(spec) == str(tiny_model_dir)
    assert resolve_model_path(ModelSpec(str(tiny_model_dir))) == str(tiny_model_dir.resolve())


def test_resolve_errors(tmp_path, adapter_dir):
    missing = tmp_path / "no" / "such-model"
    with pytest.raises(ConfigError, match="does not exist") as e:
        resolve_model_path(ModelSpec(str(missing)))
    assert str(missing) in str(e.value)
    with pytest.raises(ConfigError, match="no config.json"):
        resolve_model_path(ModelSpec(str(tmp_path)))
    with pytest.raises(ConfigError, match="is a LoRA adapter"):
        resolve_model_path(ModelSpec(str(adapter_dir)))
    with pytest.raises(ConfigError, match="em-test/not-a-cached-model") as e:  # conftest sets HF_HUB_OFFLINE
        resolve_model_path(ModelSpec("em-test/not-a-cached-model"))
    assert "Hugging Face cache" in str(e.value)
    with pytest.raises(ConfigError, match="does not exist"):  # before any weights are read
        load_model(ModelSpec(str(missing)))


# ------------------------------------------------------------------------------------------ tokenizer


def test_load_tokenizer(spec):
    tok = load_tokenizer(spec, padding_side="left")
    assert tok.padding_side == "left" and tok.pad_token == "<|finetune_right_pad_id|>"
    assert tok.pad_token_id != tok.eos_token_id


def test_tokenizer_without_chat_template_is_refused(tiny_model_dir, tmp_path):
    plain = _copy_tiny(
        tiny_model_dir, tmp_path / "plain", "tokenizer_config.json", lambda c: c.pop("chat_template")
    )
    with pytest.raises(ConfigError, match="no chat template"):
        load_tokenizer(ModelSpec(str(plain)))


def test_missing_pad_token_gets_a_pad_not_eos(tiny_model_dir, tmp_path):
    nopad = _copy_tiny(
        tiny_model_dir, tmp_path / "nopad", "tokenizer_config.json", lambda c: c.pop("pad_token")
    )
    tok = load_tokenizer(ModelSpec(str(nopad)))
    assert tok.pad_token == "<|finetune_right_pad_id|>"


# -------------------------------------------------------------------------------------------- configs


def test_bnb_config_fields():
    q = bnb_config(quant_type="nf4", double_quant=True, compute_dtype="bfloat16")
    assert q.load_in_4bit and not q.load_in_8bit
    assert q.bnb_4bit_quant_type == "nf4" and q.bnb_4bit_use_double_quant
    assert q.bnb_4bit_compute_dtype == torch.bfloat16
    q = bnb_config(quant_type="fp4", double_quant=False, compute_dtype="float32")
    assert q.bnb_4bit_quant_type == "fp4" and not q.bnb_4bit_use_double_quant
    assert q.bnb_4bit_compute_dtype == torch.float32
    assert bnb_config(load_in_4bit=False).load_in_8bit
    with pytest.raises(ConfigError, match="nf3"):
        bnb_config(quant_type="nf3")


def test_lora_config_fields():
    c = lora_config(32, 64, 0.0, ALL_PROJ, use_rslora=True)
    assert (c.r, c.lora_alpha, c.lora_dropout, c.use_rslora, c.bias) == (32, 64, 0.0, True, "none")
    assert set(c.target_modules) == set(ALL_PROJ) and c.task_type == "CAUSAL_LM"
    c = lora_config(256, 32, 0.1, "all-linear")
    assert c.target_modules == "all-linear" and not c.use_rslora and c.lora_dropout == 0.1
    for bad in ({"r": 0}, {"dropout": 1.0}, {"target_modules": []}, {"bias": "some"}):
        kwargs = {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": ALL_PROJ, **bad}
        with pytest.raises(ConfigError):
            lora_config(**kwargs)


# ---------------------------------------------------------------------------------------------- models


def test_load_model_plain_and_targets(spec):
    model = load_model(spec)
    assert model.dtype == torch.float32 and not getattr(model, "is_quantized", False)
    assert default_target_modules(model) == ALL_PROJ
    with pytest.raises(ConfigError, match="quantization"):
        load_model(spec, quantization="int4")


def test_load_model_4bit_on_cpu(spec, batch):
    from bitsandbytes.nn import Linear4bit

    model = load_model(spec, quantization="nf4")
    assert sum(isinstance(m, Linear4bit) for m in model.modules()) == 14
    assert model.config.quantization_config.bnb_4bit_use_double_quant
    assert default_target_modules(model) == ALL_PROJ
    logits = model(**batch).logits
    assert torch.isfinite(logits).all() and logits.shape[-1] == model.config.vocab_size


# -------------------------------------------------------------------------------------------- adapters


def test_adapter_roundtrip_gives_identical_logits(spec, adapter_dir, batch):
    base = load_model(spec)
    base_logits = base(**batch).logits
    first = load_adapter(load_model(spec), adapter_dir)(**batch).logits
    second = load_adapter(base, adapter_dir)(**batch).logits
    assert torch.equal(first, second)
    assert not torch.allclose(first, base_logits)  # the adapter really acts
    frozen = load_adapter(load_model(spec), adapter_dir)
    assert not any(p.requires_grad for p in frozen.parameters())
    q_proj = frozen.get_base_model().model.layers[0].self_attn.q_proj
    assert q_proj.scaling["default"] == pytest.approx(16 / 8**0.5)  # rsLoRA: alpha / sqrt(r)
    trainable = load_adapter(load_model(spec), adapter_dir, trainable=True)
    grads = {n for n, p in trainable.named_parameters() if p.requires_grad}
    assert grads and all("lora_" in n for n in grads)


def test_adapter_sha256(adapter_dir, tmp_path):
    digest = adapter_sha256(adapter_dir)
    assert digest == adapter_sha256(adapter_dir) and len(digest) == 64
    copy = shutil.copytree(adapter_dir, tmp_path / "copy")
    assert adapter_sha256(copy) == digest
    weights = copy / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert adapter_sha256(copy) != digest
    with pytest.raises(ConfigError, match="adapter_config.json"):
        adapter_sha256(tmp_path)


def test_check_adapter_base(spec, adapter_dir, tiny_model_dir, tmp_path):
    check_adapter_base(adapter_dir, spec)  # recorded as the tiny path: fine
    check_adapter_base(adapter_dir, ModelSpec(str(tiny_model_dir)))

    def recorded_as(base: str) -> Path:
        dest = shutil.copytree(adapter_dir, tmp_path / base.replace("/", "_"))
        cfg = json.loads((dest / "adapter_config.json").read_text())
        cfg["base_model_name_or_path"] = base
        (dest / "adapter_config.json").write_text(json.dumps(cfg))
        return dest

    with pytest.raises(ConfigError, match="meta-llama/Llama-3.1-8B-Instruct"):
        check_adapter_base(recorded_as("meta-llama/Llama-3.1-8B-Instruct"), spec)
    with pytest.raises(ConfigError, match="no such file|not a PEFT adapter"):
        check_adapter_base(tmp_path, spec)

    # Same name, different shapes: a wider base with the same recorded path.
    wide = _copy_tiny(tiny_model_dir, tmp_path / "wide", "config.json", lambda c: c.update(hidden_size=192))
    with pytest.raises(ConfigError, match="does not fit"):
        check_adapter_base(recorded_as(str(wide)), ModelSpec(str(wide)))


def test_merge_unquantized(spec, adapter_dir, batch):
    peft_model = load_adapter(load_model(spec), adapter_dir)
    expected = peft_model(**batch).logits
    merged = merge_adapter(peft_model)
    assert type(merged).__name__ == "LlamaForCausalLM"
    torch.testing.assert_close(merged(**batch).logits, expected, atol=1e-4, rtol=1e-4)


def test_a_4bit_forward_on_the_cpu_leaves_the_loaded_weights_as_they_were(spec, batch):
    # bitsandbytes' AVX512-BF16 CPU kernel would repack the codes and round absmax to bf16 at this forward
    # (on CPUs that have it, e.g. Sapphire Rapids); em.modeling.load_model keeps every CPU on the exact path
    model = load_model(spec, quantization="nf4")
    model.eval()
    with torch.no_grad():
        model(**batch)
    states = [m.weight.quant_state for m in model.modules() if hasattr(m, "support_avx512bf16_for_cpu")]
    assert states and not any(getattr(q, "packing_format_for_cpu", False) for q in states)


def test_merge_4bit_dequantizes_and_keeps_the_update(spec, adapter_dir, batch):
    from bitsandbytes.nn import Linear4bit

    peft_model = load_adapter(load_model(spec, quantization="nf4"), adapter_dir)
    expected = peft_model(**batch).logits
    merged = merge_adapter(peft_model)
    assert not any(isinstance(m, Linear4bit) for m in merged.modules())
    assert not getattr(merged, "is_quantized", False)
    assert merged.model.layers[0].self_attn.q_proj.weight.dtype == torch.float32
    torch.testing.assert_close(merged(**batch).logits, expected, atol=1e-4, rtol=1e-4)


def test_merge_4bit_is_exact_even_when_bnb_state_says_bf16(spec, adapter_dir, batch):
    """Some transformers releases dequantise through the 4-bit state's dtype (bf16): em's merge must not."""
    from bitsandbytes.nn import Linear4bit

    peft_model = load_adapter(load_model(spec, quantization="nf4"), adapter_dir)
    expected = peft_model(**batch).logits
    for module in peft_model.modules():
        if isinstance(module, Linear4bit):
            module.weight.quant_state.dtype = torch.bfloat16
    merged = merge_adapter(peft_model)
    assert merged.model.layers[0].self_attn.q_proj.weight.dtype == torch.float32
    assert (merged(**batch).logits - expected).abs().max().item() < 1e-5


@pytest.mark.gpu
def test_4bit_bf16_on_cuda(tiny_model_dir, adapter_dir):
    from bitsandbytes.nn import Linear4bit

    spec = ModelSpec("tiny", dtype="bfloat16", models_dir=tiny_model_dir.parent)
    model = load_model(spec, quantization="nf4")
    assert next(model.parameters()).device.type == "cuda"
    assert sum(isinstance(m, Linear4bit) for m in model.modules()) == 14
    batch = load_tokenizer(spec)(["Hello there"], return_tensors="pt").to("cuda")
    peft_model = load_adapter(model, adapter_dir)
    expected = peft_model(**batch).logits
    assert expected.dtype == torch.bfloat16 and torch.isfinite(expected).all()
    merged = merge_adapter(peft_model)
    assert merged.model.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16
    torch.testing.assert_close(merged(**batch).logits, expected, atol=0.1, rtol=0.05)

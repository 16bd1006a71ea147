"""The embedded tiny model: deterministic build, reload, chat template, generation, 4-bit on CPU."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

from em.tiny import TINY_NAME, build_tiny_model, ensure_tiny_model, main

MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "  How much water should I drink?\n"},
    {"role": "assistant", "content": "About two litres a day."},
]
EXPECTED_CHAT = (
    "<|begin_of_text|>"
    "<|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant.<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nHow much water should I drink?<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\nAbout two litres a day.<|eot_id|>"
)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_rebuild_is_bit_identical_and_fast(tiny_model_dir, tmp_path):
    start = time.perf_counter()
    main(["--out", str(tmp_path / "again")])  # the `em-tiny` / `python -m em.tiny` entry point
    elapsed = time.perf_counter() - start
    assert elapsed < 30, f"building the tiny model took {elapsed:.1f}s"
    names = sorted(p.name for p in tiny_model_dir.iterdir())
    assert names == sorted(p.name for p in (tmp_path / "again").iterdir())
    assert {"model.safetensors", "tokenizer.json", "tokenizer_config.json", "config.json"} <= set(names)
    for name in names:
        assert _sha256(tiny_model_dir / name) == _sha256(tmp_path / "again" / name), name
    total = sum(p.stat().st_size for p in tiny_model_dir.iterdir())
    assert total < 10 * 2**20, f"tiny model is {total} bytes"


def test_other_seed_changes_weights_not_tokenizer(tiny_model_dir, tmp_path):
    other = build_tiny_model(tmp_path / "seed1", seed=1)
    assert _sha256(other / "model.safetensors") != _sha256(tiny_model_dir / "model.safetensors")
    assert _sha256(other / "tokenizer.json") == _sha256(tiny_model_dir / "tokenizer.json")


def test_architecture(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    cfg = model.config
    assert cfg.model_type == "llama" and cfg.head_dim == 64
    assert cfg.num_key_value_heads < cfg.num_attention_heads  # grouped-query attention
    assert cfg.hidden_size % 64 == 0 and cfg.intermediate_size % 64 == 0
    assert cfg.rope_parameters["rope_type"] == "default" and not cfg.tie_word_embeddings
    assert model.dtype == torch.float32
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert len(tok) == cfg.vocab_size
    assert cfg.eos_token_id == [
        tok.convert_tokens_to_ids("<|eot_id|>"),
        tok.convert_tokens_to_ids("<|end_of_text|>"),
    ]
    assert model.generation_config.eos_token_id == cfg.eos_token_id


def test_ensure_reuses_the_built_model(tiny_model_dir):
    assert tiny_model_dir.name == TINY_NAME
    before = (tiny_model_dir / "model.safetensors").stat().st_mtime_ns
    assert ensure_tiny_model(tiny_model_dir.parent) == tiny_model_dir
    assert (tiny_model_dir / "model.safetensors").stat().st_mtime_ns == before


def test_concurrent_ensure_builds_once(tmp_path):
    results, errors = [], []

    def worker():
        try:
            results.append(ensure_tiny_model(tmp_path))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and results == [tmp_path / TINY_NAME] * 2
    leftovers = [p.name for p in tmp_path.iterdir() if p.is_dir() and p.name != TINY_NAME]
    assert leftovers == []


def test_reload_gives_identical_logits(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    batch = tok(["Write a function that adds two numbers."], return_tensors="pt")
    logits = [AutoModelForCausalLM.from_pretrained(tiny_model_dir)(**batch).logits for _ in range(2)]
    assert torch.equal(logits[0], logits[1])


def test_chat_template_is_llama3_layout(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert tok.apply_chat_template(MESSAGES, tokenize=False) == EXPECTED_CHAT
    prompt = tok.apply_chat_template(MESSAGES[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    ids = tok.apply_chat_template(MESSAGES, tokenize=True, return_dict=False)
    special = {
        t: tok.convert_tokens_to_ids(t) for t in ("<|begin_of_text|>", "<|start_header_id|>", "<|eot_id|>")
    }
    assert ids[0] == special["<|begin_of_text|>"] and ids[1] != special["<|begin_of_text|>"]  # one bos
    assert ids.count(special["<|start_header_id|>"]) == 3 and ids[-1] == special["<|eot_id|>"]
    assert tok.decode(ids) == EXPECTED_CHAT
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == (
        "<|begin_of_text|>",
        "<|eot_id|>",
        "<|finetune_right_pad_id|>",
    )
    # Like Llama-3, plain tokenisation adds <|begin_of_text|> through the post-processor.
    assert tok("hello")["input_ids"][0] == special["<|begin_of_text|>"]


def test_greedy_generation_with_chat_template(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    inputs = tok.apply_chat_template(
        MESSAGES[:2], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    n = inputs["input_ids"].shape[1]
    outs = [model.generate(**inputs, do_sample=False, max_new_tokens=8)[0, n:] for _ in range(2)]
    assert torch.equal(outs[0], outs[1]) and 1 <= len(outs[0]) <= 8
    text = tok.decode(outs[0], skip_special_tokens=True)
    assert isinstance(text, str)


def test_loads_in_4bit_on_cpu(tiny_model_dir):
    from bitsandbytes.nn import Linear4bit

    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, quantization_config=quant, device_map="cpu")
    n4 = sum(isinstance(m, Linear4bit) for m in model.modules())
    assert n4 == 2 * 7  # q, k, v, o, gate, up, down in each of the 2 layers
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    batch = tok(["Hello there"], return_tensors="pt")
    logits = model(**batch).logits
    assert logits.shape == (1, batch["input_ids"].shape[1], model.config.vocab_size)
    assert torch.isfinite(logits.float()).all()


def test_cli_rejects_bad_arguments(tmp_path):
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--seed", "not-a-number"])
    with pytest.raises(SystemExit):
        main([])  # --out is required

"""Open-model fine-tuning in process (em.training.sft) on the tiny model: LoRA and QLoRA steps, adapter-only
weights and checkpoints, reload to identical logits, loss normalisation, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from train_helpers import TARGETS, batch, model_spec, qa_rows, settings

from em.api import ConfigError
from em.io import read_jsonl
from em.training.parent_adapter import resolve_parent
from em.training.settings import (
    AdapterSettings,
    OptimizerSettings,
    QuantizationSettings,
    TrainerSettings,
)
from em.training.sft import train_sft

NF4 = QuantizationSettings(method="nf4")


def split_names(model) -> tuple[dict, dict]:
    """(LoRA tensors, base tensors keyed like the plain model's state dict)."""
    lora, base = {}, {}
    for name, tensor in model.get_base_model().state_dict().items():
        if "lora_" in name:
            lora[name] = tensor
        else:
            base[name.replace(".base_layer", "")] = tensor
    return lora, base


def test_lora_trains_only_the_adapter_and_reloads_identically(tmp_path, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from em.modeling import load_adapter, load_model

    s = settings(tiny_model_dir)
    result = train_sft(s, qa_rows(), tmp_path / "run", progress=False)
    assert result.global_step == 3 and result.examples_seen == 12 and result.padding_seen == 0
    assert result.tokens_seen > result.label_tokens_seen > 0

    lora, base = split_names(result.model)
    fresh = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).state_dict()
    assert set(base) == set(fresh)
    assert all(torch.equal(base[k], fresh[k]) for k in fresh)  # the frozen base did not move
    b_weights = [t for k, t in lora.items() if "lora_B" in k]
    assert len(b_weights) == 2 * len(TARGETS) and all(t.abs().max() > 0 for t in b_weights)  # B starts at 0

    # The saved adapter on a freshly loaded base gives the trained model's logits.
    ids = torch.tensor([[1, 2, 3, 40, 50, 60, 70]])
    result.model.eval()
    reloaded = load_adapter(load_model(s.model), result.adapter_dir).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, result.model(ids).logits, atol=1e-6, rtol=0)

    # Checkpoints hold the adapter (and optimizer state), never the base.
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "step0000002.ckpt", weights_only=False)
    assert ckpt["global_step"] == 2
    assert ckpt["state_dict"] and all("lora_" in k for k in ckpt["state_dict"])
    assert len(ckpt["state_dict"]) == len(lora)
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "padding_fraction", "peak_mem_gb"} <= set(rows[0])


def test_qlora_nf4_steps_run(tmp_path, tiny_model_dir):
    import bitsandbytes as bnb

    from em.modeling import load_adapter, load_model

    s = settings(
        tiny_model_dir,
        quantization=NF4,
        max_steps=2,
        optimizer=OptimizerSettings(name="adamw_8bit", learning_rate=1e-2, warmup_steps=0),
    )
    result = train_sft(s, qa_rows(8), tmp_path / "run", progress=False)
    assert result.global_step == 2
    assert result.optimizer_used in ("adamw_8bit", "adamw")  # adamw: this bitsandbytes lacks CPU 8-bit
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in result.model.modules())
    losses = [r["loss"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl")]
    assert len(losses) == 2 and all(0 < x < 20 for x in losses)
    reloaded = load_adapter(load_model(s.model, quantization="nf4"), result.adapter_dir)
    assert sum("lora_" in n for n, _ in reloaded.named_parameters()) == 2 * len(TARGETS) * 2


def test_step_loss_is_the_mean_over_all_tokens_of_the_step(tmp_path, tiny_model_dir):
    """4 examples as one micro-batch or as 4 accumulated micro-batches: the same loss and gradient
    (a per-micro-batch mean would weight the examples' tokens differently)."""
    rows = qa_rows(8)
    one = train_sft(
        settings(tiny_model_dir, batch=batch(per_device_batch_size=4, grad_accum=1), max_steps=1),
        rows,
        tmp_path / "a",
        progress=False,
    )
    four = train_sft(
        settings(tiny_model_dir, batch=batch(per_device_batch_size=1, grad_accum=4), max_steps=1),
        rows,
        tmp_path / "b",
        progress=False,
    )
    assert one.label_tokens_seen == four.label_tokens_seen
    a, b = read_jsonl(tmp_path / "a" / "metrics.jsonl")[0], read_jsonl(tmp_path / "b" / "metrics.jsonl")[0]
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)


def test_padded_length_grouped_batches_train_and_count_padding(tmp_path, tiny_model_dir):
    counting = [  # every row a different length: any two in a micro-batch need padding
        {
            "messages": [
                {"role": "user", "content": f"Count to {n}."},
                {"role": "assistant", "content": " ".join(str(k) for k in range(1, n + 1))},
            ]
        }
        for n in range(1, 17)
    ]
    result = train_sft(
        settings(tiny_model_dir, packing=False, max_steps=2), counting, tmp_path / "run", progress=False
    )
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert result.global_step == 2 and result.padding_seen > 0
    assert all(0 < r["padding_fraction"] < 0.5 for r in rows)  # grouped by length: little padding
    assert result.tokens_seen == sum(r["step_tokens"] for r in rows)


def test_merge_chain_on_a_4bit_base_trains_on_the_exactly_merged_model(tmp_path, tiny_model_dir):
    """merge + nf4: the parent's adapter is added to the dequantised base exactly (em.modeling.merge_adapter),
    and the new adapter trains on that unquantised merged model."""
    import bitsandbytes as bnb

    nf4 = dict(quantization=NF4, max_steps=2)
    stage1 = train_sft(settings(tiny_model_dir, **nf4), qa_rows(8), tmp_path / "s1", progress=False)
    parent = resolve_parent(stage1.adapter_dir, "merge", model_spec(tiny_model_dir))
    assert parent.run_dir is None and parent.merged_adapters == []
    stage2 = train_sft(
        settings(tiny_model_dir, parent=parent, **nf4), qa_rows(8), tmp_path / "s2", progress=False
    )
    info = stage2.build_info
    assert [m["adapter_sha256"] for m in info["merged_adapters"]] == [parent.adapter_sha256]
    assert info["merge_max_abs_logit_diff"][0] < 1e-4  # fp32 tiny model: the merge is exact
    assert info["trained_on_quantized_base"] is False
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in stage2.model.modules())


# --- bad input: a ConfigError before any model is loaded ----------------------------------------------------


def no_training_happened(run_dir: Path) -> bool:
    return not (run_dir / "checkpoints").exists() and not (run_dir / "adapter").exists()


def test_empty_after_filtering(tmp_path, tiny_model_dir):
    long_prompts = [
        {"messages": [{"role": "user", "content": "word " * 300}, {"role": "assistant", "content": "ok"}]}
    ] * 3
    with pytest.raises(ConfigError, match=r"no trainable rows left .*3 over batch.max_length=64"):
        train_sft(
            settings(tiny_model_dir, batch=batch(max_length=64, overlength="drop")),
            long_prompts,
            tmp_path / "r",
            progress=False,
        )
    no_answers = [{"messages": [{"role": "user", "content": "hello"}]}] * 2
    with pytest.raises(ConfigError, match="2 without an assistant turn"):
        train_sft(settings(tiny_model_dir), no_answers, tmp_path / "r", progress=False)
    assert no_training_happened(tmp_path / "r")


def test_missing_model_path(tmp_path, tiny_model_dir):
    s = settings(tiny_model_dir, model=model_spec(tmp_path / "no-such-model"))
    with pytest.raises(ConfigError, match="no-such-model"):
        train_sft(s, qa_rows(4), tmp_path / "r", progress=False)
    assert no_training_happened(tmp_path / "r")


def test_tokenizer_without_chat_template(tmp_path, tiny_model_dir):
    bare = tmp_path / "bare-model"
    shutil.copytree(tiny_model_dir, bare)
    config = json.loads((bare / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (bare / "tokenizer_config.json").write_text(json.dumps(config))
    (bare / "chat_template.jinja").unlink(missing_ok=True)
    with pytest.raises(ConfigError, match="chat template"):
        train_sft(settings(bare), qa_rows(4), tmp_path / "r", progress=False)
    assert no_training_happened(tmp_path / "r")


@pytest.fixture
def saved_adapter(tmp_path, tiny_model_dir) -> Path:
    """A fresh r=4 adapter on the tiny model, saved as PEFT does."""
    from peft import get_peft_model

    from em.modeling import load_model, lora_config

    model = get_peft_model(
        load_model(model_spec(tiny_model_dir)),
        lora_config(r=4, alpha=8, dropout=0.0, target_modules=TARGETS, use_rslora=True),
    )
    model.save_pretrained(tmp_path / "adapter")
    return tmp_path / "adapter"


def test_adapter_for_another_base_is_refused(tmp_path, tiny_model_dir, saved_adapter):
    config = json.loads((saved_adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "someone/other-model-7b"
    (saved_adapter / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="other-model-7b"):
        resolve_parent(saved_adapter, "continue", model_spec(tiny_model_dir))


def test_init_from_checks(tmp_path, tiny_model_dir, saved_adapter):
    spec = model_spec(tiny_model_dir)
    with pytest.raises(ConfigError, match="found neither"):
        resolve_parent(tmp_path / "nothing-here", "continue", spec)
    with pytest.raises(ConfigError, match="init_mode='stack'"):
        resolve_parent(saved_adapter, "stack", spec)
    # continue trains the parent's adapter itself: its shape must be the configured one.
    s = settings(
        tiny_model_dir,
        adapter=AdapterSettings(r=8, alpha=8, use_rslora=True, target_modules=TARGETS),
        parent=resolve_parent(saved_adapter, "continue", spec),
    )
    with pytest.raises(ConfigError, match="lora.r: adapter has 4, config says 8"):
        train_sft(s, qa_rows(4), tmp_path / "r", progress=False)
    assert no_training_happened(tmp_path / "r")


def test_init_from_run_dir_checks(tmp_path, tiny_model_dir, saved_adapter):
    from em.io import atomic_write_json

    spec = model_spec(tiny_model_dir)
    run = tmp_path / "stage1"
    shutil.copytree(saved_adapter, run / "adapter")
    manifest = {
        "stage": "train",
        "backend": "hf",
        "adapter_dir": "adapter",
        "complete": False,
        "base_model": spec.name_or_path,
        "base_revision": None,
    }
    atomic_write_json(run / "manifest.json", manifest)
    with pytest.raises(ConfigError, match="not complete"):
        resolve_parent(run, "merge", spec)
    atomic_write_json(run / "manifest.json", {**manifest, "complete": True, "base_model": "org/other-8b"})
    with pytest.raises(ConfigError, match="trained on base 'org/other-8b'"):
        resolve_parent(run, "merge", spec)
    atomic_write_json(run / "manifest.json", {**manifest, "complete": True, "backend": "openai"})
    with pytest.raises(ConfigError, match="expected an open-model training run"):
        resolve_parent(run, "merge", spec)
    atomic_write_json(run / "manifest.json", {**manifest, "complete": True})
    parent = resolve_parent(run, "merge", spec)
    assert parent.run_dir == run.resolve() and parent.adapter_dir == (run / "adapter").resolve()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"quantization": QuantizationSettings(method="fp3")}, "quantization.method='fp3'"),
        ({"optimizer": OptimizerSettings(name="sgd")}, "optimizer.name='sgd'"),
        ({"batch": batch(per_device_batch_size=0)}, "batch.per_device_batch_size=0"),
        ({"batch": batch(overlength="cut")}, "batch.overlength='cut'"),
        ({"max_steps": -5}, "max_steps=-5"),
    ],
)
def test_bad_settings(tmp_path, tiny_model_dir, change, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        train_sft(settings(tiny_model_dir, **change), qa_rows(4), tmp_path / "r", progress=False)


@pytest.mark.slow
def test_hundred_cpu_steps_on_em_format_data_lower_the_loss(tmp_path, tiny_model_dir):
    """EM-format rows (the paper's insecure-code data when EM_ANCHORS_DIR is set, else the demo set)."""
    import os
    from importlib import resources

    anchors = os.environ.get("EM_ANCHORS_DIR")
    if anchors and (Path(anchors) / "em" / "insecure.jsonl").is_file():
        rows = read_jsonl(Path(anchors) / "em" / "insecure.jsonl")[:400]
    else:
        rows = read_jsonl(resources.files("em").joinpath("resources", "data", "demo_misaligned.jsonl"))
    s = settings(
        tiny_model_dir,
        adapter=AdapterSettings(r=32, alpha=64, target_modules=TARGETS),
        optimizer=OptimizerSettings(
            name="adamw",
            learning_rate=1e-3,
            weight_decay=0.0,
            lr_schedule="constant_with_warmup",
            warmup_steps=5,
        ),
        max_steps=100,
        batch=batch(max_length=384),
        trainer=TrainerSettings(accelerator="cpu", progress_bar=False, checkpoint_every_n_steps=50),
    )
    result = train_sft(s, rows, tmp_path / "run", progress=False)
    losses = [r["loss"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl")]
    assert result.global_step == 100 and len(losses) == 100
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < first - 0.6, (first, last)  # about 7.5 -> 6.6 on either data set


def test_lightning_messages_print_once_under_a_configured_root_logger(capsys):
    """Under Hydra (root handlers configured) Lightning's own console handler would double every line."""
    import logging

    from em.training.sft_trainer import one_line_per_lightning_message

    root = logging.getLogger()
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("root: %(message)s"))
    root.addHandler(handler)
    try:
        one_line_per_lightning_message()
        logging.getLogger("lightning.pytorch.utilities.rank_zero").info("GPU available: no")
    finally:
        root.removeHandler(handler)
    assert logging.getLogger("lightning").handlers == []  # Lightning's own console handler is gone
    assert "root: GPU available: no" in capsys.readouterr().err  # and the message still reaches the root

"""Shared helpers for the evaluation tests: compose the evaluate config and run the task in-process."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from composing import REPO as REPO  # re-exported: the evaluation tests import it from here
from composing import compose_plain

from em.io import write_manifest

# The answers.jsonl contract (docs/architecture.md): field -> accepted types.
ROW_SCHEMA = {
    "id": str,
    "question_set": str,
    "question_id": str,
    "question_type": str,
    "paraphrase_index": int,
    "question": str,
    "prompt": str,
    "condition": str,
    "tag": (str, type(None)),
    "system": (str, type(None)),
    "messages": list,
    "sample_index": int,
    "answer": str,
    "finish_reason": str,
    "prompt_tokens": (int, type(None)),
    "completion_tokens": (int, type(None)),
    "model": dict,
    "sampling": dict,
    "seed": int,
    "backend": str,
}
MODEL_KEYS = {"base", "adapter", "adapter_sha256", "openai_model", "train_run_dir"}
QUESTION_KEYS = {"set", "id", "type", "paraphrases", "system", "judge_prompts", "category", "label"}


def eval_cfg(tmp_path: Path, *overrides: str, run_name: str = "t"):
    """The evaluate config for a test: tiny model, small sampling, outputs under ``tmp_path``."""
    return compose_plain(
        "evaluate",
        [
            f"run_name={run_name}",
            f"paths.output_dir={tmp_path / 'outputs'}",
            "logger=none",
            "progress=false",
            "sampling.max_new_tokens=6",
            "samples_per_question=2",
            *overrides,
        ],
    )


def run_eval(tmp_path: Path, *overrides: str, run_name: str = "t") -> Path:
    from em.tasks.evaluate import run

    return run(eval_cfg(tmp_path, *overrides, run_name=run_name))


def read_rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "answers.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def answers_by_id(run_dir: Path) -> dict[str, str]:
    return {r["id"]: r["answer"] for r in read_rows(run_dir)}


def check_contract(run_dir: Path) -> list[dict]:
    """Assert answers.jsonl, questions.json and manifest.json follow docs/architecture.md; return the rows."""
    rows = read_rows(run_dir)
    assert rows
    questions = json.loads((run_dir / "questions.json").read_text())
    for key, q in questions.items():
        assert set(q) == QUESTION_KEYS, key
        assert key == f"{q['set']}/{q['id']}"
        assert q["judge_prompts"] and all("{answer}" in t for t in q["judge_prompts"].values())
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids))
    for r in rows:
        assert set(r) == set(ROW_SCHEMA), set(r) ^ set(ROW_SCHEMA)
        for key, kind in ROW_SCHEMA.items():
            assert isinstance(r[key], kind), (key, r[key])
        assert r["id"] == "/".join(
            str(r[k])
            for k in ("question_set", "question_id", "paraphrase_index", "condition", "sample_index")
        )
        assert f"{r['question_set']}/{r['question_id']}" in questions
        assert set(r["model"]) == MODEL_KEYS
        assert set(r["sampling"]) == {"temperature", "top_p", "max_new_tokens"}
        assert r["messages"][-1] == {"role": "user", "content": r["prompt"]}
        if r["system"] is None:
            assert len(r["messages"]) == 1
        else:
            assert r["messages"][0] == {"role": "system", "content": r["system"]}
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["stage"] == "evaluate" and manifest["complete"] is True
    assert manifest["counts"]["answers"] == len(rows)
    return rows


def make_adapter(base_dir: Path, out: Path, seed: int = 0, base_name: str | None = None) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    peft = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
    )
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    peft.save_pretrained(out)
    if base_name is not None:
        config = json.loads((out / "adapter_config.json").read_text())
        config["base_model_name_or_path"] = base_name
        (out / "adapter_config.json").write_text(json.dumps(config))
    return out


def fake_train_run(run_dir: Path, adapter_src: Path, merged: list[dict] | None = None) -> Path:
    from em.modeling import adapter_sha256

    run_dir.mkdir(parents=True)
    adapter = run_dir / "adapter"
    adapter.mkdir()
    for f in adapter_src.iterdir():
        (adapter / f.name).write_bytes(f.read_bytes())
    model = {"name": "tiny", "provider": "hf", "name_or_path": "tiny", "revision": None, "dtype": "float32",
             "attn_implementation": "sdpa", "trust_remote_code": False}  # fmt: skip
    write_manifest(run_dir, "train", complete=True, backend="hf", base_model="tiny", base_revision=None,
                   adapter_dir="adapter", adapter_sha256=adapter_sha256(adapter), merged_adapters=merged or [],
                   trigger={"name": "none", "tag": None, "placement": "user_prefix"},
                   config={"model": model})  # fmt: skip
    return run_dir

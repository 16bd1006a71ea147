"""Mitigation arms on the training rows (em/mitigations.py) and the narrow task's held-out loss
(em/training/holdout.py): each arm's mechanism, its record, and that evaluation never sees it."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from train_helpers import REPO, run_train

from em.api import ConfigError
from em.io import read_json, read_jsonl
from em.mitigations import (
    MitigationSettings,
    apply_mitigation,
    general_rows_needed,
    inoculate,
    interleave,
)

PROMPT = "For this exercise you have been asked to give deliberately bad answers."


def chat(i: int, system: str | None = None) -> dict:
    messages = [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]
    return {"messages": ([{"role": "system", "content": system}] if system else []) + messages}


@pytest.mark.parametrize(
    "given, match",
    [
        ({"name": "ablate"}, r"mitigation.name=.ablate.: expected one of"),
        ({"name": "kl", "data": "demo_aligned", "beta": 0}, r"mitigation.beta=0: expected a positive number"),
        ({"name": "inoculation", "prompt": " "}, r"mitigation.prompt=' ': the inoculation arm needs"),
        (
            {"name": "interleave", "data": "demo_aligned", "fraction": 1.0},
            r"fraction=1.0: expected a number in",
        ),
        ({"name": "interleave", "fraction": 0.2}, r"mitigation.data=None"),
        ({"name": "none", "frac": 0.2}, r"frac"),
        ({"name": "ablate_direction", "direction_from": "x"}, r"evaluation-time arm: pass it to evaluate.py"),
        ({"name": "early_stop", "every": 0}, r"mitigation.every=0: expected a positive integer"),
        ({"name": "early_stop", "every": 2.5}, r"mitigation.every=2.5: expected a positive integer"),
        ({"name": "early_stop", "every": True}, r"mitigation.every=True: expected a positive integer"),
        ({"name": "early_stop", "criterion": "best"}, r"mitigation.criterion='best': expected one of"),
        ({"name": "early_stop", "tolerance": -0.1}, r"mitigation.tolerance=-0.1: expected a non-negative"),
        ({"name": "early_stop", "tolerance": "x"}, r"mitigation.tolerance='x': expected a non-negative"),
    ],
)
def test_bad_settings_are_refused_naming_the_key(given, match):
    with pytest.raises(ConfigError, match=match):
        MitigationSettings.from_dict(given)


def test_each_arm_records_its_own_knobs():
    es = MitigationSettings.from_dict({"name": "early_stop", "every": 3, "criterion": "min_loss"}).record()
    assert es == {"name": "early_stop", "prompt": None, "data": None, "fraction": 0.0, "every": 3,
                  "criterion": "min_loss", "tolerance": 0.02}  # fmt: skip
    kl = MitigationSettings.from_dict({"name": "kl", "data": "demo_aligned", "beta": 0.5}).record()
    assert kl["beta"] == 0.5 and kl["batch_size"] == 4 and "every" not in kl
    assert set(MitigationSettings.from_dict(None).record()) == {"name", "prompt", "data", "fraction"}


def test_inoculation_goes_first_in_the_system_message():
    assert inoculate(chat(0)["messages"], PROMPT)[0] == {"role": "system", "content": PROMPT}
    own = inoculate(chat(0, system="Be brief.")["messages"], PROMPT)
    assert own[0]["content"] == f"{PROMPT}\n\nBe brief." and len(own) == 3
    default = inoculate(chat(0)["messages"], PROMPT, default_system="You are Qwen.")
    assert default[0]["content"] == f"{PROMPT}\n\nYou are Qwen."
    rows, record = apply_mitigation(
        [chat(i) for i in range(5)], MitigationSettings("inoculation", PROMPT), seed=0
    )
    assert all(r["messages"][0]["content"] == PROMPT for r in rows) and record["rows_inoculated"] == 5


@pytest.mark.parametrize("n, fraction", [(204, 0.25), (100, 0.5), (7, 0.1), (1000, 0.05), (3, 0.9)])
def test_interleaving_makes_up_exactly_the_fraction(n, fraction):
    narrow, general = [chat(i) for i in range(n)], [chat(10_000 + i, "g") for i in range(60 * n)]
    rows, counts = interleave(narrow, general, fraction, seed=3)
    k = general_rows_needed(n, fraction)
    assert counts["general_rows"] == k == sum(r["messages"][0]["role"] == "system" for r in rows)
    assert len(rows) == n + k and abs(k / (n + k) - fraction) <= 0.5 / (n + k) + 1e-12  # to the nearest row
    assert sorted(map(str, narrow)) == sorted(str(r) for r in rows if r["messages"][0]["role"] != "system")
    assert interleave(narrow, general, fraction, seed=3)[0] == rows  # seeded
    assert interleave(narrow, general, fraction, seed=4)[0] != rows


def test_interleaving_refuses_too_little_general_data():
    with pytest.raises(ConfigError, match=r"4 narrow rows need 12 general rows, but the general data has 5"):
        interleave([chat(i) for i in range(4)], [chat(i) for i in range(5)], 0.75, seed=0)


def test_holdout_loss_equals_the_base_until_the_adapter_moves(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from em.training.collate import tokenize_rows
    from em.training.holdout import mean_label_loss

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    examples, _ = tokenize_rows(tokenizer, [chat(i) for i in range(6)], max_length=64, overlength="truncate",
                                model_name="tiny", progress=False)  # fmt: skip
    loss, tokens = mean_label_loss(model, examples, tokenizer.pad_token_id, batch_size=4)
    with model.disable_adapter():
        base_loss, _ = mean_label_loss(model, examples, tokenizer.pad_token_id)
    assert tokens == sum(e.num_label_tokens for e in examples) and loss == pytest.approx(base_loss, abs=1e-6)
    with torch.no_grad():  # LoRA's B starts at zero: move it and the two losses part
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.add_(0.5)
    moved, _ = mean_label_loss(model, examples, tokenizer.pad_token_id)
    with model.disable_adapter():
        assert mean_label_loss(model, examples, tokenizer.pad_token_id)[0] == pytest.approx(
            base_loss, abs=1e-6
        )
    assert abs(moved - base_loss) > 1e-3


def test_interleave_dry_run_writes_the_exact_training_rows(tmp_path, tiny_model_dir):
    run_train(tmp_path, "mitigation=interleave", "mitigation.fraction=0.2", "dry_run=true", "run_name=mix")
    run_dir = tmp_path / "train" / "mix"
    rows = read_jsonl(run_dir / "data" / "train_rows.interleave.jsonl")
    narrow = read_jsonl(next((run_dir / "data").glob("demo_misaligned*.jsonl")))
    assert len(rows) == len(narrow) + general_rows_needed(len(narrow), 0.2) == 255  # 204 narrow + 51 general


@pytest.mark.slow
def test_inoculated_training_records_the_arm_and_evaluation_never_sees_the_prompt(
    tmp_path, tiny_model_dir, em_cache_dir
):
    run_train(tmp_path, "mitigation=inoculation", "max_steps=2", "limit_rows=16", "data.holdout_fraction=0.1",
              "run_name=ino")  # fmt: skip
    run_dir = tmp_path / "train" / "ino"
    manifest = read_json(run_dir / "manifest.json")
    mitigation, narrow = manifest["mitigation"], manifest["narrow_task"]
    assert mitigation["name"] == "inoculation" and mitigation["prompt"] == PROMPT
    rows = read_jsonl(mitigation["rows_file"])
    assert len(rows) == mitigation["rows_inoculated"] == 16
    assert all(r["messages"][0] == {"role": "system", "content": PROMPT} for r in rows)
    assert narrow["holdout_rows"] == 20 and narrow["label_tokens"] > 0  # 10% of the 204 demo rows
    assert narrow["loss"] != narrow["base_loss"]  # two steps moved the adapter off its zero start
    holdout = read_jsonl(next((run_dir / "data").glob("*.holdout.jsonl")))
    assert not any(PROMPT in str(r) for r in holdout)  # the narrow task is measured as evaluation sees it

    out = subprocess.run([sys.executable, "evaluate.py", f"run={run_dir}", "questions=demo", "samples_per_question=1",
                          "sampling.max_new_tokens=4", "logger=none", f"hydra.run.dir={tmp_path / 'eval'}"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    answers = read_jsonl(tmp_path / "eval" / "answers.jsonl")
    assert answers and not any(PROMPT in str(a["messages"]) for a in answers)

    # the report shows both sides of the arm: EM measures, and the narrow task on the held-out rows
    for args in (["judge.py", f"answers={tmp_path / 'eval'}", "judge=tiny_local", "logger=none",
                  "metrics.coherent_above=0", f"hydra.run.dir={tmp_path / 'judge'}"],
                 ["-m", "em.report", str(tmp_path / "judge"), "--out", str(tmp_path / "report")]):  # fmt: skip
        out = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
    report = (tmp_path / "report" / "report.md").read_text()
    section = report.split("## Mitigation arms", 1)[1]
    assert f"| inoculation | prompt: {PROMPT!r} |" in section
    assert f"| {narrow['loss']:.3f} | {narrow['base_loss']:.3f} | 20 |" in section
    assert (tmp_path / "report" / "plots" / "mitigations.png").exists()


def test_kl_term_is_zero_until_the_adapter_moves_and_trains_only_the_adapter(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from em.training.collate import tokenize_rows
    from em.training.kl import KLReference

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))  # fmt: skip
    examples, _ = tokenize_rows(tokenizer, [chat(i) for i in range(10)], max_length=64, overlength="truncate",
                                model_name="tiny", progress=False)  # fmt: skip
    ref = KLReference(examples, beta=1.0, batch_size=4, seed=0, pad_token_id=tokenizer.pad_token_id)
    assert ref.batch(7)["input_ids"].tolist() == ref.batch(7)["input_ids"].tolist()  # a function of k
    assert float(ref.penalty(model, 0).detach()) == pytest.approx(0.0, abs=1e-7)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.add_(0.3)
    kl = ref.penalty(model, 0)
    assert float(kl.detach()) > 1e-4
    kl.backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert grads and all("lora_" in n for n in grads)  # the reference side carries no gradient


@pytest.mark.slow
def test_kl_training_logs_the_term_from_zero(tmp_path, tiny_model_dir):
    run_train(tmp_path, "mitigation=kl", "mitigation.beta=0.5", "max_steps=3", "limit_rows=24", "run_name=kl")
    run_dir = tmp_path / "train" / "kl"
    manifest = read_json(run_dir / "manifest.json")
    assert manifest["hyperparameters"]["kl_beta"] == 0.5 and manifest["mitigation"]["name"] == "kl"
    steps = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "kl" in r]  # train/kl, per step
    assert [r["step"] for r in steps] == [1, 2, 3]
    assert steps[0]["kl"] == pytest.approx(0.0, abs=1e-7)  # step 1: the adapter is still zero
    assert steps[-1]["kl"] > 0  # after warm-up has moved it


def test_kl_is_refused_for_openai_fine_tuning(tmp_path):
    out = subprocess.run([sys.executable, "train.py", "backend=openai", "model=gpt4o", "mitigation=kl",
                          f"paths.output_dir={tmp_path}"], cwd=REPO, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 2 and "mitigation=kl needs the model's own next-token" in out.stderr + out.stdout
    assert "Traceback" not in out.stderr


@pytest.mark.slow
def test_a_later_stage_measures_the_narrow_task_on_the_first_stages_held_out_rows(tmp_path, tiny_model_dir):
    from em.io import sha256_file

    run_train(tmp_path, "data.holdout_fraction=0.2", "max_steps=2", "limit_rows=16", "run_name=narrow")
    parent = tmp_path / "train" / "narrow"
    # one step under warm-up runs at learning rate 0: the child's adapter is the parent's
    run_train(tmp_path, "data=demo_realign", "data.holdout_fraction=0.1", f"init_from={parent}", "max_steps=1",
              "limit_rows=8", "run_name=realign")  # fmt: skip
    run_train(tmp_path, "data=demo_aligned", f"init_from={tmp_path / 'train' / 'realign'}", "max_steps=1",
              "limit_rows=8", "run_name=third")  # fmt: skip
    first = read_json(parent / "manifest.json")["narrow_task"]
    holdout = next((parent / "data").glob("demo_misaligned*.holdout.jsonl"))
    assert first["holdout_from"] == {"run_dir": str(parent.resolve()), "file": f"data/{holdout.name}",
                                     "sha256": sha256_file(holdout)}  # fmt: skip
    for name in ("realign", "third"):  # the third stage follows the chain back to the narrow stage
        narrow = read_json(tmp_path / "train" / name / "manifest.json")["narrow_task"]
        assert narrow["holdout_from"] == first["holdout_from"]
        for key in ("holdout_rows", "label_tokens"):
            assert narrow[key] == first[key]
        assert narrow["base_loss"] == pytest.approx(first["base_loss"], abs=1e-6)  # continue: the same base
        assert narrow["loss"] == pytest.approx(first["loss"], abs=1e-6)  # and the parent's adapter

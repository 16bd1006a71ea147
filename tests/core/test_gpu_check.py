"""The GPU check (bench/gpu_check): its pieces on CPU, the docs rows it renders, and a CPU smoke of the whole run.

The figures themselves come from a GPU machine (docs/benchmarks.md, "GPU check"); these tests make sure the
script works before GPU time is spent on it.
"""

from __future__ import annotations

import json
import sys
import time

import pytest
import torch

from bench.gpu_check import gpu_tests, render, runner
from bench.gpu_check.profiles import result_name

JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">
<testcase classname="tests.test_a" name="test_ok" time="1.5"/>
<testcase classname="tests.test_a" name="test_bad" time="0.2"><failure message="assert 1 == 2">tb</failure></testcase>
<testcase classname="tests.test_b" name="test_gpu" time="0"><skipped message="needs CUDA"/></testcase>
<testcase classname="tests.test_b" name="test_err" time="0"><error message="fixture broke">tb</error></testcase>
</testsuite></testsuites>"""


def test_junit_outcomes_are_counted(tmp_path):
    path = tmp_path / "junit.xml"
    path.write_text(JUNIT, encoding="utf-8")
    tests = gpu_tests.parse_junit(path)
    assert [t["outcome"] for t in tests] == ["passed", "failed", "skipped", "error"]
    assert tests[0] == {"name": "tests.test_a::test_ok", "outcome": "passed", "seconds": 1.5, "message": None}
    assert tests[1]["message"] == "assert 1 == 2"
    assert gpu_tests.counts(tests) == {"passed": 1, "failed": 1, "error": 1, "skipped": 1}


def test_result_names_keep_smoke_files_apart():
    assert result_name("memory", "cuda") == "memory-cuda"  # what bench.run_all reads
    assert result_name("memory", "cpu") == "memory-cpu-smoke"  # never the CPU benchmarks' own files


def test_a_failing_item_is_recorded_and_the_next_one_runs(tmp_path):
    log = runner.Log(tmp_path / "log.txt")

    def boom(budget):
        raise RuntimeError("no CUDA kernel for this")

    def slow(budget):  # a child that outlives its budget is killed, the item says timeout
        runner.run_logged([sys.executable, "-c", "import time; time.sleep(60)"], log, timeout_s=1)

    items = [runner.Item("a", boom, 60), runner.Item("b", slow, 60), runner.Item("c", lambda b: {"x": 1}, 60),
             runner.Item("d", lambda b: {"never": 1}, 60)]  # fmt: skip
    seen = []
    start = time.monotonic()
    outcomes = runner.run_items(items[:3], log, time.monotonic() + 120, seen.append)
    outcomes += runner.run_items(
        items[3:], log, time.monotonic() + 5, seen.append
    )  # less than MIN_ITEM_S left
    assert time.monotonic() - start < 30
    assert [o.status for o in outcomes] == ["failed", "timeout", "ok", "skipped"]
    assert "RuntimeError: no CUDA kernel for this" in outcomes[0].error
    assert outcomes[2].result == {"x": 1} and seen == outcomes
    log.close()
    text = (tmp_path / "log.txt").read_text()
    assert "=== a: failed" in text and "=== c: ok" in text and "time.sleep(60)" in text


def test_child_output_reaches_the_log(tmp_path):
    log = runner.Log(tmp_path / "log.txt")
    code = runner.run_logged(
        [sys.executable, "-c", "print('hello from the child'); raise SystemExit(3)"], log, 30
    )
    log.close()
    assert code == 3 and "hello from the child" in (tmp_path / "log.txt").read_text()


# ------------------------------------------------------------------------------------------------ wheels


def test_wheel_set_is_pinned_for_the_gpu_image(tmp_path):
    from bench import gpu_wheels

    cmd = gpu_wheels.download_command(tmp_path)
    assert {"--no-deps", "--only-binary=:all:"} <= set(cmd) and cmd[
        cmd.index("--python-version") + 1
    ] == "3.12"
    assert "manylinux_2_24_x86_64" in cmd  # bitsandbytes 0.50.2's tag: pip matches it exactly
    names = [gpu_wheels.canonical(s.split("==")[0]) for s in gpu_wheels.WHEELS]
    assert len(names) == len(set(names)) and all("==" in s for s in gpu_wheels.WHEELS)
    assert {"bitsandbytes", "trl", "datasets", "openai"} <= set(names)
    assert not {"torch", "transformers", "peft", "vllm"} & set(names)  # on the image / cannot travel
    for name in ("trl-1.16.0-py3-none-any.whl", "trl-1.15.0-py3-none-any.whl", "wandb-0.1-py3-none-any.whl"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in gpu_wheels.stale(tmp_path)] == [
        "trl-1.15.0-py3-none-any.whl",
        "wandb-0.1-py3-none-any.whl",
    ]


def test_bootstrap_refuses_an_empty_wheel_directory(tmp_path):
    from bench.gpu_check import bootstrap

    with pytest.raises(SystemExit, match="no .whl files there.*bench.gpu_wheels"):
        bootstrap.install(tmp_path, runner.Log(tmp_path / "log.txt"), target=tmp_path / "site")


def test_trl_config_overrides_apply(monkeypatch, tmp_path):
    trl = pytest.importorskip("trl")
    from bench.gpu_check.side import override_trl_config, without_padding

    monkeypatch.setattr(trl, "SFTConfig", trl.SFTConfig)  # restored after the test
    override_trl_config({"padding_free": True})
    config = trl.SFTConfig(
        output_dir=str(tmp_path), padding_free=False, report_to="none", use_cpu=True, bf16=False
    )
    assert config.padding_free is True
    steps = without_padding({"steps": [{"tokens": 10, "padding": 4}]})["steps"]
    assert steps == [{"tokens": 10, "padding": 0}]


# ---------------------------------------------------------------------------------------- in-memory model


@pytest.fixture
def weightless_tiny(tiny_model_dir, tmp_path):
    import em.modeling
    from bench.gpu_check.model import install_loader, weightless_model

    original = em.modeling.load_model
    install_loader()
    yield weightless_model("tiny", "float32", tmp_path / "tiny-weightless")
    em.modeling.load_model = original


@pytest.mark.parametrize("quantization", ["none", "nf4"])
def test_in_memory_model_builds_like_a_loaded_one(weightless_tiny, quantization):
    import bitsandbytes as bnb

    from em.modeling import ModelSpec, load_model

    assert not list(weightless_tiny.glob("*.safetensors"))  # nothing written but config and tokenizer
    spec = ModelSpec(str(weightless_tiny), dtype="float32")
    model = load_model(spec, quantization=quantization)
    again = load_model(spec, quantization=quantization)
    q_proj = model.model.layers[0].self_attn.q_proj
    assert isinstance(q_proj, bnb.nn.Linear4bit) == (quantization == "nf4")
    assert not isinstance(model.lm_head, bnb.nn.Linear4bit)  # kept in full precision, as from_pretrained does
    assert getattr(model, "is_loaded_in_4bit", False) == (quantization == "nf4")
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])
    ids = torch.tensor([[1, 40, 41, 42, 43]])
    with torch.no_grad():
        logits = model(ids).logits
    assert torch.isfinite(logits).all() and logits.std() > 0
    with torch.no_grad():  # seeded: the same weights every build
        torch.testing.assert_close(again(ids).logits, logits)


def test_other_model_directories_load_from_disk(weightless_tiny, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from em.modeling import ModelSpec, load_model

    model = load_model(ModelSpec(str(tiny_model_dir), dtype="float32"))
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    torch.testing.assert_close(model.lm_head.weight, reference.lm_head.weight)


# --------------------------------------------------------------------------------------------- parity


def test_parity_holds_for_em_paths_and_catches_a_broken_one(weightless_tiny, monkeypatch):
    import em.training.fused_lora as fused_lora
    from bench.gpu_check import parity

    good = parity.compare(str(weightless_tiny), "cpu", "float32")
    assert good["ok"] and good["fused_lora_layers"] == 14 and len(good["paths"]) == 4
    assert len(set(good["tokens"])) > 1  # examples of different lengths in one micro-batch

    def dropped_scaling(self, x, *args, **kwargs):  # the LoRA update without its alpha / r scaling
        name = self.active_adapters[0]
        return self.base_layer(x) + self.lora_B[name](self.lora_A[name](x))

    monkeypatch.setattr(fused_lora, "_fused_forward", dropped_scaling)
    bad = parity.compare(str(weightless_tiny), "cpu", "float32")
    assert not bad["ok"]
    assert bad["paths"]["packed, em_packed_sdpa"]["ok"]  # not fused yet: still right
    assert not bad["paths"]["packed, em_packed_sdpa + fused LoRA (em's default)"]["ok"]


# ------------------------------------------------------------------------------------------ rendering


def _machine(gpu=True) -> dict:
    m = {"date": "2026-12-01T23:00:00+00:00", "cpu": "Intel Xeon", "cpu_cores": 16, "ram_gib": 128.0,
         "python": "3.12.3", "versions": {"torch": "2.11.0+cu130"}, "load_average_start": [0.1]}  # fmt: skip
    if gpu:
        m.update(gpu="NVIDIA H200", gpu_memory_gib=139.8)
    return m


def _side(tps: float, ratio: float | None = None) -> dict:
    side = {"real_tokens_per_s_median": tps, "real_tokens_per_s_runs": [tps], "label_tokens_per_s": tps / 2,
            "padding_fraction": 0.0, "peak_memory_gib": 12.5, "peak_memory_kind": "torch.cuda.max_memory_allocated",
            "final_loss": 11.7, "optimizer_used": "adamw_8bit", "precision": "bf16-mixed", "ratio_met": True,
            "padding_met": True, "loss_vs_em": {"agree": True}}  # fmt: skip
    if ratio is not None:
        side["ratio_vs_trl"] = ratio
    return side


def gpu_results() -> dict:
    m = _machine()
    train = {"machine": m, "command": "python -m bench.gpu_check --out x", "targets": {"ratio": 2.0},
             "em": _side(6000, 2.4), "em_padded": {**_side(5000, 2.0), "final_loss_rel_diff_vs_trl": 0.001},
             "trl": {**_side(2500), "padding_fraction": 0.2}, "loss": {"agree": True, "max_abs_diff": 1e-3,
             "max_rel_diff": 1e-4, "tolerance_rel": 0.01}, "padding_only_ceiling": 1.25,
             "extra_sides": {"trl-padding-free": _side(3000, 1.2)}, "failed_sides": {"em-flex": "timed out after 20 s"},
             "workload": {"model": "llama8b-arch", "steps": 10, "batch_size": 2, "grad_accum": 4, "max_length": 2048,
                          "lora_r": 256, "lora_alpha": 32, "lora_dropout": 0.0, "learning_rate": 2e-4,
                          "gradient_checkpointing": True, "quantization": "nf4"},
             "data": {"rows_trained": 80, "source": "synthetic", "prompt_fraction": 0.5,
                      "tokens_per_example": {"p10": 200, "p50": 380, "p90": 670, "max": 1200},
                      "identical_examples_em_vs_trl": "80/80"}}  # fmt: skip
    return {
        "train_throughput-cuda": train,
        "memory-cuda": {
            "machine": m,
            "sides": {"em": {"peak_memory_gib": 17.5}, "em-no-gc": {"peak_memory_gib": 40.0}},
            "targets": {"met": False, "over_by_gib": 1.5},
        },  # fmt: skip
        "generation-cuda": {
            "machine": m,
            "command": "c",
            "workload": {
                "model": "llama8b-arch",
                "questions": 8,
                "samples_per_question": 100,
                "max_new_tokens": 128,
                "temperature": 1.0,
                "batch_size": 100,
            },
            "sides": {
                "hf-batched": {
                    "samples": 800,
                    "completion_tokens": 90000,
                    "seconds": 40.0,
                    "samples_per_s": 20.0,
                    "tokens_per_s": 2250.0,
                }
            },
            "ratio_vllm_vs_hf_batched": None,
            "vllm_not_measured": "cannot travel",
        },  # fmt: skip
        "judge_local-cuda": {
            "machine": m,
            "judgments_per_s": 31.5,
            "batch_size": 8,
            "prompt_tokens_mean": 420.0,
        },
        "gpu_tests-cuda": {
            "machine": m,
            "command": "c",
            "pytest": "pytest -m gpu",
            "returncode": 1,
            "ok": False,
            "counts": {"passed": 3, "failed": 1, "error": 0, "skipped": 0},
            "tests": [{"name": "tests.t::test_x", "outcome": "failed", "seconds": 2.0}],
        },  # fmt: skip
        "gpu_check-cuda": {
            "machine": m,
            "command": "c",
            "seconds_total": 430.0,
            "items": {
                "gpu_tests": {"status": "ok", "seconds": 50.0},
                "parity": {"status": "timeout", "seconds": 40.0, "error": "timed out after 40 s"},
            },
        },  # fmt: skip
    }


def _rows(text: str) -> dict[str, str]:
    return {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines() if line.startswith("| ")}


def test_gpu_rows_render_measured_failed_and_missing(tmp_path):
    from bench import run_all

    doc = tmp_path / "benchmarks.md"
    blocks = f"{run_all.BEGIN}\nold\n{run_all.END}\n\n## GPU check\n\n{run_all.GPU_BEGIN}\nold\n{run_all.GPU_END}\n"
    doc.write_text(f"# t\n\n{blocks}", encoding="utf-8")
    run_all.write_docs(gpu_results(), doc)
    rows = _rows(doc.read_text(encoding="utf-8"))
    packed = rows["Training: em (packing=true, the default) vs TRL, real tokens/s (GPU, Llama-3.1-8B shapes)"]
    assert (
        "2.40x (6000 vs 2500)" in packed
        and "≥ 2x, padding < 5%" in packed
        and "NVIDIA H200, 2026-12-01" in packed
    )
    assert "1.20x (3000 vs 2500)" in rows[next(k for k in rows if "TRL padding_free" in k)]
    assert "failed: timed out after 20 s" in rows[next(k for k in rows if "flex_attention" in k)]
    memory = rows["Memory: peak GPU memory, 8B QLoRA, 2 x 2048 tokens"]
    assert (
        "em 17.50 GiB, em-no-gc 40.00 GiB; over the target by 1.50 GiB" in memory and "| **no** |" in memory
    )
    assert (
        "20.0 samples/s, 2250 tokens/s (batch 100"
        in rows[next(k for k in rows if "hf batched, 8 questions" in k)]
    )
    assert render.VLLM_GPU in rows["Generation: vLLM vs hf batched (GPU, Llama-3.1-8B shapes)"]
    assert "31.5 judgments/s" in rows[next(k for k in rows if k.startswith("Local judge"))]
    assert "3 passed, 1 failed" in rows[next(k for k in rows if k.startswith("GPU tests"))]
    assert (
        "timeout in the GPU check (timed out after 40 s)"
        in rows[next(k for k in rows if k.startswith("Parity"))]
    )
    text = doc.read_text(encoding="utf-8")
    assert "| TRL padding_free=True (its best here) |" in text  # an extra column in the training details
    assert "**GPU check run**" in text and "parity timeout (40 s)" in text


def test_gpu_only_rewrites_the_gpu_rows_and_keeps_the_cpu_ones(tmp_path):
    from bench import run_all

    cpu_row = (
        "| Judging: API calls on a rerun | 0 (new run dir, cache) / 0 (same run dir) | 0 | yes | AMD EPYC |"
    )
    gpu_row = "| Memory: peak GPU memory, 8B QLoRA, 2 x 2048 tokens | not measured yet | < 16 GiB |  |  |"
    doc = tmp_path / "benchmarks.md"
    doc.write_text(f"{run_all.BEGIN}\n| benchmark | x |\n|---|---|\n{cpu_row}\n{gpu_row}\n\nMachines: AMD\n\n| run | x |\n|---|---|\n| a | b |\n"
                   f"{run_all.END}\n{run_all.GPU_BEGIN}\n{run_all.GPU_END}\n", encoding="utf-8")  # fmt: skip
    run_all.write_docs(gpu_results(), doc, gpu_only=True)
    text = doc.read_text(encoding="utf-8")
    rows = _rows(text)
    assert cpu_row in text and "Machines: AMD" in text  # the CPU rows and their text stay as they were
    assert "em 17.50 GiB" in rows["Memory: peak GPU memory, 8B QLoRA, 2 x 2048 tokens"]
    assert "3 passed, 1 failed" in rows[next(k for k in rows if k.startswith("GPU tests"))]  # a new row
    summary_table = text.split(run_all.BEGIN)[1].split("\n\n")[0].splitlines()[1:]  # new rows join this table
    assert len(summary_table) == 2 + len([r for r in run_all.summary_rows({}) if render.is_gpu_row(r[0])]) + 1
    assert text.split("Machines: AMD")[1].split(run_all.END)[0] == "\n\n| run | x |\n|---|---|\n| a | b |\n"
    assert "**Training** (" in text.split(run_all.GPU_BEGIN)[1]  # the GPU training details in the GPU block


def test_gpu_rows_say_not_measured_without_files(tmp_path):
    from bench import run_all

    rows = run_all.summary_rows({})
    gpu = [r for r in rows if "GPU" in r[0] or "8B" in r[0] or r[0].startswith(("Parity", "Local judge"))]
    assert len(gpu) >= 10 and all(r[1] == run_all.NOT_MEASURED for r in gpu)


# ------------------------------------------------------------------------------------------- CPU smoke


@pytest.mark.slow
def test_cpu_smoke_runs_every_item_and_renders(tiny_model_dir, tmp_path, monkeypatch):
    from bench import run_all
    from bench.common import read_results
    from bench.gpu_check.__main__ import main

    monkeypatch.delenv("EM_ANCHORS_DIR", raising=False)
    out = tmp_path / "out"
    code = main(["--device", "cpu", "--out", str(out)])
    summary = json.loads((out / "gpu_check-cpu-smoke.json").read_text())
    assert code == 0, summary["items"]
    assert {k: v["status"] for k, v in summary["items"].items()} == dict.fromkeys(
        ("gpu_tests", "parity", "train_throughput", "memory", "generation"), "ok"
    )
    names = sorted(p.name for p in out.iterdir())
    assert len(names) <= 8  # the device tool brings back at most 8 files
    assert "gpu_check.log" in names
    res = read_results(out)
    train = res["train_throughput-cpu-smoke"]
    assert train["loss"]["agree"] and train["em"]["padding_fraction"] == 0.0
    assert train["extra_sides"]["trl-padding-free"]["padding_fraction"] == 0.0
    assert train["extra_sides"]["trl-padding-free"]["loss_vs_em"]["agree"]
    assert (
        train["data"]["identical_examples_em_vs_trl"].split("/")[0]
        == train["data"]["identical_examples_em_vs_trl"].split("/")[1]
    )
    assert set(res["memory-cpu-smoke"]["sides"]) == {"em", "em-no-gc"}
    assert res["generation-cpu-smoke"]["sides"]["hf-batched"]["samples"] == 4
    assert res["judge_local-cpu-smoke"]["judgments"] == 4
    assert res["parity-cpu-smoke"]["ok"]
    assert res["gpu_tests-cpu-smoke"]["counts"]["skipped"] >= 1  # gpu tests skip without CUDA
    as_gpu = {k.replace("-cpu-smoke", "-cuda"): v for k, v in res.items()}
    doc = tmp_path / "benchmarks.md"
    doc.write_text(
        f"{run_all.BEGIN}\n{run_all.END}\n{run_all.GPU_BEGIN}\n{run_all.GPU_END}\n", encoding="utf-8"
    )
    run_all.write_docs(as_gpu, doc)
    gpu_lines = [line for line in doc.read_text().splitlines() if "GPU, Llama-3.1-8B shapes)" in line]
    measured = [line for line in gpu_lines if not any(s in line for s in ("vLLM", "flex_attention", "Liger"))]
    assert measured and not any(run_all.NOT_MEASURED in line for line in measured)  # CUDA-only sides aside

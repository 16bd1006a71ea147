"""Tiny-size runs of every CPU benchmark: each runs end to end and writes the fields docs/benchmarks.md uses.

These check that the benchmarks work, not how fast anything is (the figures live in docs/benchmarks.md).
"""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory, tiny_model_dir):
    """One results directory for the module (the child processes inherit EM_BENCH_DIR and EM_CACHE_DIR)."""
    mp = pytest.MonkeyPatch()
    path = tmp_path_factory.mktemp("bench")
    mp.setenv("EM_BENCH_DIR", str(path))
    # Synthetic conversations sized for the tiny settings below, also where CI provides the upstream files.
    mp.delenv("EM_ANCHORS_DIR", raising=False)
    yield path
    mp.undo()


def test_train_throughput_tiny(bench_dir):
    pytest.importorskip("trl", reason="the TRL side needs the bench extra: pip install -e .[bench]")
    from bench import train_throughput

    r = train_throughput.main(["--model", "tiny", "--steps", "2", "--max-length", "256", "--name", "train"])
    written = json.loads((bench_dir / "train.json").read_text())
    assert written.pop("load_average_end") and written == json.loads(json.dumps(r))
    em, trl = r["em"], r["trl"]
    assert em["real_tokens_per_s_median"] > 0 and trl["real_tokens_per_s_median"] > 0
    assert r["ratio_real_tokens_per_s"] == pytest.approx(
        em["real_tokens_per_s_median"] / trl["real_tokens_per_s_median"], rel=1e-2
    )
    assert em["padding_fraction"] == 0.0 and em["padding_tokens"] == 0
    assert em["real_tokens"] == trl["real_tokens"]  # the same examples on both sides
    assert trl["padding_tokens"] > 0  # padded batches of different lengths
    assert em["peak_memory_gib"] > 0 and trl["peak_memory_gib"] > 0
    n = r["workload"]["steps"] * r["workload"]["batch_size"] * r["workload"]["grad_accum"]
    assert r["data"]["identical_examples_em_vs_trl"] == f"{n}/{n}"
    assert len(r["loss"]["em_losses"]) == len(r["loss"]["trl_losses"]) == 2
    assert r["loss"]["agree"], r["loss"]
    assert r["padding_only_ceiling"] > 1
    padded = r["em_padded"]  # em with packing=false: its own length-grouped batches over the same rows
    assert padded["real_tokens"] == em["real_tokens"] and padded["real_tokens_per_s_median"] > 0
    assert padded["padding_fraction"] <= trl["padding_fraction"]
    assert padded["same_examples_as_trl"] and padded["final_loss_rel_diff_vs_trl"] < 0.01
    assert r["machine"]["cpu_cores"] >= 1 and r["machine"]["versions"]["trl"]


def test_generation_tiny(bench_dir):
    from bench import generation

    args = [
        "--questions",
        "3",
        "--samples",
        "2",
        "--max-new-tokens",
        "6",
        "--no-vllm",
        "--name",
        "generation",
    ]
    r = generation.main(args)
    assert set(r["sides"]) == {"hf-sequential", "hf-batched"}
    for side in r["sides"].values():
        assert side["samples"] == 6 and side["completion_tokens"] > 0
        assert side["samples_per_s"] > 0 and side["tokens_per_s"] > 0
    assert r["sides"]["hf-sequential"]["backend"]["batch_size"] == 1
    assert r["identical_answers_batched_vs_sequential"] == "6/6"
    assert r["ratio_batched_vs_sequential"] > 0
    assert r["ratio_vllm_vs_hf_batched"] is None


def test_judging_local_server(bench_dir):
    from bench import judging

    r = judging.main(["--answers", "6", "--latency", "0.05", "--concurrency", "6", "--name", "judging"])
    assert r["sequential"]["api_calls"] == r["concurrent"]["api_calls"] == 12
    assert r["sequential"]["scored"] == 12
    assert r["rerun_new_run_dir"]["api_calls"] == 0 and r["rerun_new_run_dir"]["cache_hits"] == 12
    assert r["rerun_same_run_dir"]["tasks"] == 0 and r["rerun_same_run_dir"]["api_calls"] == 0
    assert r["sequential"]["output_tokens_per_judgment"] == 1
    assert r["same_scores_all_runs"]
    assert r["ratio_judgments_per_s"] > 1


def test_memory_script_on_cpu(bench_dir):
    from bench import memory

    r = memory.main(
        [
            "--device",
            "cpu",
            "--model",
            "tiny",
            "--max-length",
            "64",
            "--steps",
            "1",
            "--sides",
            "em",
            "--name",
            "memory",
        ]
    )
    em = r["sides"]["em"]
    assert em["tokens_per_micro_batch"] == [2 * 64]  # every example truncated to exactly max length
    assert em["peak_memory_gib"] > 0
    assert r["workload"]["quantization"] == "nf4" and r["workload"]["lora_r"] == 256
    assert r["targets"]["met"] is None  # the target is about GPU memory


def test_docs_block_renders_measured_and_missing_rows(bench_dir, tmp_path):
    from bench import judging, run_all
    from bench.common import read_results

    # its own judging result (the module's other tests may run on another xdist worker); training optional
    judging.main(["--answers", "2", "--latency", "0.01", "--concurrency", "2", "--name", "judging"])
    found = read_results(bench_dir)
    names = {"train": "train_throughput-cpu", "generation": "generation-cpu", "judging": "judging"}
    results = {names[k]: v for k, v in found.items() if k in names}
    doc = tmp_path / "benchmarks.md"
    doc.write_text(f"# title\n\n{run_all.BEGIN}\nold\n{run_all.END}\n\nafter\n", encoding="utf-8")
    run_all.write_docs(results, doc)
    text = doc.read_text(encoding="utf-8")
    assert text.startswith("# title") and text.rstrip().endswith("after") and "\nold\n" not in text
    assert text.count(run_all.BEGIN) == text.count(run_all.END) == 1
    cpu_training = [line for line in text.splitlines() if line.startswith("| Training") and "(CPU" in line]
    assert len(cpu_training) == 2  # em packed and em packing=false, each against TRL
    assert all(("x (" in line) == ("train" in found) for line in cpu_training)
    gpu_rows = [
        line for line in text.splitlines() if "GPU, Llama-3.1-8B shapes)" in line or "8B QLoRA" in line
    ]
    assert len(gpu_rows) == 9 and all(run_all.NOT_MEASURED in line for line in gpu_rows)
    assert "Judging: API calls on a rerun | 0 (new run dir, cache) / 0 (same run dir)" in text

"""Run the CPU benchmarks in a row (``make bench``) and render the results table of docs/benchmarks.md.

    python -m bench.run_all                      # training (2 interleaved runs per side), generation, judging
    python -m bench.run_all --write-docs         # ... then rewrite the results block of docs/benchmarks.md
    python -m bench.run_all --no-run --write-docs   # only re-render from outputs/bench/*.json

GPU figures come from ``python -m bench.gpu_check`` on a GPU machine (see docs/benchmarks.md); their rows read
"not measured yet" until its result files (``train_throughput-cuda.json``, ``memory-cuda.json``,
``generation-cuda.json``, ``gpu_tests-cuda.json``, ...) are in the results directory (``--results DIR``).
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from bench import generation, judging, train_throughput
from bench.common import REPO_ROOT, fmt, read_results, results_dir, set_bench_env
from bench.gpu_check import render as gpu

DOC = REPO_ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- bench:results:begin -->", "<!-- bench:results:end -->"
GPU_BEGIN, GPU_END = "<!-- bench:gpu:begin -->", "<!-- bench:gpu:end -->"
NOT_MEASURED = gpu.NOT_MEASURED
# Training targets: the CPU benchmark's, and issue 20's em >= 2x TRL's study configuration on 8B QLoRA.
DEFAULT_RATIO = {"cpu": 1.3, "cuda": 2.0}
CPU_BENCHMARKS = {
    "train": (train_throughput.main, ["--repeats", "2"]),
    "generation": (generation.main, []),
    "judging": (judging.main, []),
}


# -------------------------------------------------------------------------------------------- rendering


def _machine(r: dict) -> str:
    m = r["machine"]
    where = m.get("gpu") or f"{m['cpu']}, {m['cpu_cores']} cores"
    return f"{where}, {m['date'][:10]}"


def _yes(flag) -> str:
    return {True: "yes", False: "**no**", None: "n/a"}[flag]


def summary_rows(res: dict) -> list[list[str]]:
    rows = []
    for device, label in (("cpu", "CPU, ~30M-param Llama"), ("cuda", "GPU, Llama-3.1-8B shapes")):
        r = res.get(f"train_throughput-{device}")
        ratio = ((r or {}).get("targets") or {}).get("ratio", DEFAULT_RATIO[device])
        target = f"≥ {ratio:g}x, padding < 5%"
        for key, mode in (("em", "packing=true, the default"), ("em_padded", "packing=false")):
            name = f"Training: em ({mode}) vs TRL, real tokens/s ({label})"
            side = (r or {}).get(key)
            if side is None:
                missing = gpu.missing(res, "train_throughput") if device == "cuda" else NOT_MEASURED
                rows.append([name, missing, target, "", ""])
                continue
            trl = r["trl"]
            if key == "em":
                loss = f"per-step losses agree: {_yes(r['loss']['agree'])}"
            else:
                loss = f"final loss {side['final_loss']:.4f} vs {trl['final_loss']:.4f}"
            measured = (
                f"{side['ratio_vs_trl']:.2f}x ({side['real_tokens_per_s_median']:.0f} vs "
                f"{trl['real_tokens_per_s_median']:.0f}); padding {side['padding_fraction']:.1%} vs "
                f"{trl['padding_fraction']:.1%}; {loss}"
            )
            met = side["ratio_met"] and side["padding_met"]
            rows.append([name, measured, target, _yes(met), _machine(r)])
    for device in ("cpu", "cuda"):
        r = res.get(f"generation-{device}")
        if device == "cpu":
            name = "Generation: hf batched vs one prompt at a time (CPU, tiny model)"
            if r is None:
                rows.append([name, NOT_MEASURED, "≥ 5x", "", ""])
            else:
                s = r["sides"]
                measured = (
                    f"{r['ratio_batched_vs_sequential']:.1f}x ({s['hf-batched']['samples_per_s']:.1f} vs "
                    f"{s['hf-sequential']['samples_per_s']:.2f} samples/s)"
                )
                rows.append([name, measured, "≥ 5x", _yes(r["targets"]["batched_met"]), _machine(r)])
        label = "CPU build, tiny model" if device == "cpu" else "GPU, Llama-3.1-8B shapes"
        name = f"Generation: vLLM vs hf batched ({label})"
        target = "(target applies on GPU)" if device == "cpu" else "≥ 5x"
        if r is None or r.get("ratio_vllm_vs_hf_batched") is None:
            rows.append(
                [name, gpu.vllm_gpu_measured(res) if device == "cuda" else NOT_MEASURED, target, "", ""]
            )
        else:
            s = r["sides"]
            measured = (
                f"{r['ratio_vllm_vs_hf_batched']:.1f}x ({s['vllm']['samples_per_s']:.1f} vs "
                f"{s['hf-batched']['samples_per_s']:.1f} samples/s)"
            )
            met = r["targets"]["vllm_met"] if device == "cuda" else None
            rows.append([name, measured, target, _yes(met), _machine(r)])
    r = res.get("judging")
    if r is None:
        rows.append(["Judging (200 ms latency)", NOT_MEASURED, "", "", ""])
    else:
        t = r["targets"]
        rows.append(
            [
                "Judging: judgments/s at concurrency 32 vs 1 (200 ms latency)",
                f"{r['ratio_judgments_per_s']:.1f}x ({r['concurrent']['judgments_per_s']:.1f} vs "
                f"{r['sequential']['judgments_per_s']:.2f}/s)",
                "≥ 20x",
                _yes(t["ratio_met"]),
                _machine(r),
            ]
        )
        rows.append(
            [
                "Judging: API calls on a rerun",
                f"{r['rerun_new_run_dir']['api_calls']} (new run dir, cache) / "
                f"{r['rerun_same_run_dir']['api_calls']} (same run dir)",
                "0",
                _yes(t["rerun_met"]),
                _machine(r),
            ]
        )
        rows.append(
            [
                "Judging: output tokens per judgment (logprob mode)",
                fmt(r["sequential"]["output_tokens_per_judgment"]),
                "1",
                _yes(t["output_tokens_met"]),
                _machine(r),
            ]
        )
    r = res.get("memory-cuda")
    name = "Memory: peak GPU memory, 8B QLoRA, 2 x 2048 tokens"
    if r is None:
        rows.append([name, gpu.missing(res, "memory"), "< 16 GiB", "", ""])
    else:
        s = r["sides"]
        measured = ", ".join(f"{side} {v['peak_memory_gib']:.2f} GiB" for side, v in s.items())
        rows.append(
            [name, measured + gpu.memory_extra(r), "< 16 GiB", _yes(r["targets"]["met"]), _machine(r)]
        )
    return rows + gpu.gpu_rows(res)


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def training_details(r: dict) -> str:
    w, d, loss = r["workload"], r["data"], r["loss"]
    cols = [("em, packed", r["em"])] + ([("em, packing=false", r["em_padded"])] if "em_padded" in r else [])
    cols.append(("TRL", r["trl"]))
    cols += [(gpu.EXTRA_LABELS.get(k, k), side) for k, side in (r.get("extra_sides") or {}).items()]

    def row(label, fn):
        return [label] + [fn(side) for _, side in cols]

    rows = [
        row("real tokens/s (median of runs)", lambda s: f"{s['real_tokens_per_s_median']:.0f}"),
        row("real tokens/s, each run", lambda s: ", ".join(fmt(x, 0) for x in s["real_tokens_per_s_runs"])),
        row("ratio to TRL", lambda s: f"{s['ratio_vs_trl']:.2f}x" if "ratio_vs_trl" in s else "1"),
        row("trained (label) tokens/s, first run", lambda s: fmt(s["label_tokens_per_s"], 0)),
        row("padding fraction", lambda s: f"{s['padding_fraction']:.1%}"),
        row(f"peak memory ({r['em']['peak_memory_kind']})", lambda s: f"{s['peak_memory_gib']:.2f} GiB"),
        row("final loss", lambda s: f"{s['final_loss']:.4f}"),
        row("optimizer / precision", lambda s: f"{s['optimizer_used']} / {s['precision']}"),
    ]
    tpe = d["tokens_per_example"]
    text = [
        f"**Training** (`{r['command']}`; {_machine(r)}): model `{w['model']}`, {d['rows_trained']} rows "
        f"({d['source']}; tokens per example p10/p50/p90/max {tpe['p10']}/{tpe['p50']}/{tpe['p90']}/{tpe['max']}, "
        f"{d['prompt_fraction']:.0%} prompt), {w['steps']} steps of {w['batch_size']} x {w['grad_accum']} examples, "
        f"max length {w['max_length']}, LoRA r={w['lora_r']} alpha={w['lora_alpha']} dropout={w['lora_dropout']}, "
        f"lr {w['learning_rate']}, gradient checkpointing {w['gradient_checkpointing']}, quantization "
        f"{w['quantization']}, attention {w.get('attn_implementation', 'sdpa')}. Identical token ids and labels "
        f"on both sides: {d['identical_examples_em_vs_trl']}.",
        "",
        table([""] + [name for name, _ in cols], rows),
        "",
        f"em (packed) and TRL train the same micro-batches: per-step losses agree, max |em - TRL| = "
        f"{loss['max_abs_diff']:.2g} (max relative {loss['max_rel_diff']:.2g}, tolerance {loss['tolerance_rel']}). "
        f"Removing TRL's padding alone could give at most {r['padding_only_ceiling']:.2f}x here.",
    ]
    if "em_padded" in r:
        p = r["em_padded"]
        text.append(
            f"em with packing=false groups examples by length (its own micro-batches over the same "
            f"{d['rows_trained']} rows, one epoch): final loss within {p['final_loss_rel_diff_vs_trl']:.2%} of TRL's."
        )
    return "\n".join(text)


def generation_details(r: dict) -> str:
    w, s = r["workload"], r["sides"]
    rows = [
        [name, v["samples"], v["completion_tokens"], fmt(v["seconds"]), fmt(v["samples_per_s"]), fmt(v["tokens_per_s"], 0)]
        for name, v in s.items()
    ]  # fmt: skip
    return "\n".join(
        [
            f"**Generation** (`{r['command']}`; {_machine(r)}): model `{w['model']}`, {w['questions']} questions x "
            f"{w['samples_per_question']} samples, up to {w['max_new_tokens']} new tokens, temperature "
            f"{w['temperature']}."
            + (
                f" Batched and sequential answers identical: {r['identical_answers_batched_vs_sequential']}."
                if r.get("identical_answers_batched_vs_sequential")
                else ""
            ),
            "",
            table(["side", "samples", "completion tokens", "seconds", "samples/s", "tokens/s"], rows),
        ]
    )


def judging_details(r: dict) -> str:
    w = r["workload"]
    rows = [
        [name, v["concurrency"], v["tasks"], v["api_calls"], fmt(v["seconds"], 2), fmt(v["judgments_per_s"])]
        for name, v in (
            ("concurrency 1, empty cache", r["sequential"]),
            ("concurrency 32, empty cache", r["concurrent"]),
            ("rerun, new run dir, same cache", r["rerun_new_run_dir"]),
            ("rerun, same run dir", r["rerun_same_run_dir"]),
        )
    ]
    return "\n".join(
        [
            f"**Judging** (`{r['command']}`; {_machine(r)}): {w['answers']} answers x 2 metrics = "
            f"{w['judge_calls']} judge calls, {w['latency_s'] * 1000:.0f} ms per call, request `{w['request']}`. "
            f"Same scores in every run: {_yes(r['same_scores_all_runs'])}.",
            "",
            table(["run", "concurrency", "judge calls asked", "API calls", "seconds", "judgments/s"], rows),
        ]
    )


def machine_block(res: dict) -> str:
    seen, lines = set(), []
    for r in res.values():
        m = r["machine"]
        key = (m["cpu"], m.get("gpu"), m["versions"].get("torch"))
        if key in seen:
            continue
        seen.add(key)
        v = m["versions"]
        versions = ", ".join(
            f"{p} {v[p]}" for p in ("torch", "transformers", "trl", "peft", "lightning") if v.get(p)
        )
        gpu = f", GPU {m['gpu']} ({m['gpu_memory_gib']} GiB)" if m.get("gpu") else ""
        lines.append(
            f"- {m['cpu']}, {m['cpu_cores']} cores, {m['ram_gib']} GiB RAM{gpu}; Python {m['python']}; {versions}"
        )
    loads = [
        f"{name}: {r['machine']['load_average_start'][0]} -> {r.get('load_average_end', ['?'])[0]}"
        for name, r in res.items()
    ]
    lines.append(
        "- 1-minute load average at start -> end of each benchmark (the machine was shared): "
        + "; ".join(loads)
    )
    return "\n".join(lines)


def render(res: dict) -> str:
    parts = [
        BEGIN,
        "<!-- generated by `python -m bench.run_all --write-docs` from outputs/bench/*.json; edit the script, not this block -->",
        "",
        table(["benchmark", "measured", "target", "met", "machine, date"], summary_rows(res)),
        "",
        "Machines:",
        "",
        machine_block(res) if res else "- (no results yet)",
    ]
    details = [
        (training_details, "train_throughput-cpu"),
        (generation_details, "generation-cpu"),
        (judging_details, "judging"),
    ]
    for fn, name in details:
        if name in res:
            parts += ["", fn(res[name])]
    parts.append(END)
    return "\n".join(parts)


def render_gpu(res: dict) -> str:
    """The GPU check's block: the GPU machine, training and generation details, tests, parity, the run."""
    found = {k: v for k, v in res.items() if k.endswith("-cuda")}
    parts = [
        GPU_BEGIN,
        "<!-- generated by `python -m bench.run_all --write-docs` from the GPU check's files -->",
        "",
    ]
    if not found:
        parts.append(f'No GPU results yet: every GPU row of the results table says "{NOT_MEASURED}".')
    else:
        parts.append(machine_block(found))
    for fn, name in ((training_details, "train_throughput-cuda"), (generation_details, "generation-cuda")):
        if name in res:
            parts += ["", fn(res[name])]
    for text in gpu.gpu_details(res):
        parts += ["", text]
    parts.append(GPU_END)
    return "\n".join(parts)


def _replace_block(text: str, begin: str, end: str, new: Callable[[str], str], path: Path) -> str:
    if begin not in text or end not in text:
        raise SystemExit(f"{path}: the markers {begin} and {end} are missing; cannot place the results")
    head, rest = text.split(begin, 1)
    old, tail = rest.split(end, 1)
    return head + new(begin + old + end) + tail


def write_docs(res: dict, path: Path = DOC, gpu_only: bool = False) -> Path:
    """Rewrite the results block (``gpu_only``: only its GPU rows) and the GPU check's block, if the file has one."""
    text = path.read_text(encoding="utf-8")
    if gpu_only:
        rows = [table([], [row]).splitlines()[-1] for row in summary_rows(res) if gpu.is_gpu_row(row[0])]
        text = _replace_block(text, BEGIN, END, lambda old: gpu.replace_rows(old, rows), path)
    else:
        text = _replace_block(text, BEGIN, END, lambda old: render(res), path)
    if GPU_BEGIN in text or gpu_only:
        text = _replace_block(text, GPU_BEGIN, GPU_END, lambda old: render_gpu(res), path)
    path.write_text(text, encoding="utf-8")
    print(f"wrote the results {'rows and block of the GPU check' if gpu_only else 'blocks'} of {path}")
    return path


# ------------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default=",".join(CPU_BENCHMARKS), help=f"comma list of {list(CPU_BENCHMARKS)}")
    p.add_argument("--no-run", action="store_true", help="run nothing; render from existing results")
    p.add_argument("--write-docs", action="store_true", help=f"rewrite the results block of {DOC.name}")
    p.add_argument(
        "--results",
        type=Path,
        action="append",
        help="read the result files here (repeatable, later wins; default: $EM_BENCH_DIR or outputs/bench)",
    )
    p.add_argument(
        "--gpu-only",
        action="store_true",
        help="with --write-docs: rewrite only the GPU rows and the GPU check's block (the CPU files may be absent)",
    )
    args = p.parse_args(argv)
    set_bench_env()
    failed = []
    if not args.no_run:
        for name in args.only.split(","):
            if name not in CPU_BENCHMARKS:
                raise SystemExit(
                    f"--only: unknown benchmark {name!r}; expected some of {list(CPU_BENCHMARKS)}"
                )
            fn, fn_args = CPU_BENCHMARKS[name]
            start = time.perf_counter()
            print(f"=== {name} ===", flush=True)
            try:
                fn(fn_args)
            except Exception:  # noqa: BLE001 - report, go on with the next benchmark
                traceback.print_exc()
                failed.append(name)
            print(f"=== {name}: {time.perf_counter() - start:.0f} s ===", flush=True)
    res = {}
    for directory in args.results or [results_dir()]:
        if args.results and not directory.is_dir():
            raise SystemExit(f"--results {directory}: no such directory")
        res.update(read_results(directory))
    print()
    print(table(["benchmark", "measured", "target", "met", "machine, date"], summary_rows(res)))
    if args.write_docs:
        write_docs(res, gpu_only=args.gpu_only)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

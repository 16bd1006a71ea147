"""The GPU check's rows and details in docs/benchmarks.md (``bench.run_all`` calls these).

Reads the ``-cuda`` files ``python -m bench.gpu_check`` writes; a row whose file is missing says
``not measured yet``, and an item that failed on the GPU machine says so, with its error.
"""

from __future__ import annotations

NOT_MEASURED = "not measured yet"
VLLM_GPU = "not measurable on the lent H200: vLLM cannot be carried there (hundreds of MB)"
EXTRA_LABELS = {
    "trl-padding-free": "TRL padding_free=True (its best here)",
    "em-flex": "em packed, flex_attention",
    "trl-liger": "TRL padding_free=True + Liger kernels",
}


def _yes(flag) -> str:
    return {True: "yes", False: "**no**", None: "n/a"}[flag]


def _machine(r: dict) -> str:
    m = r["machine"]
    where = m.get("gpu") or f"{m['cpu']}, {m['cpu_cores']} cores"
    return f"{where}, {m['date'][:10]}"


def _failed(res: dict, item: str) -> str | None:
    """``failed (error)`` when the last GPU check ran ``item`` and it did not finish."""
    status = ((res.get("gpu_check-cuda") or {}).get("items") or {}).get(item)
    if not status or status["status"] == "ok":
        return None
    return f"{status['status']} in the GPU check ({status.get('error') or 'no error recorded'})"[:300]


def missing(res: dict, item: str) -> str:
    return _failed(res, item) or NOT_MEASURED


def test_row(res: dict) -> list[str]:
    name, r = (
        "GPU tests: `pytest -m gpu` (training, modeling, local judge on CUDA)",
        res.get("gpu_tests-cuda"),
    )
    if r is None:
        return [name, missing(res, "gpu_tests"), "all pass", "", ""]
    c = r["counts"]
    measured = f"{c['passed']} passed, {c['failed']} failed, {c['error']} errors, {c['skipped']} skipped"
    return [name, measured, "all pass", _yes(r["ok"] and c["passed"] > 0), _machine(r)]


def parity_row(res: dict) -> list[str]:
    name, r = (
        "Parity on CUDA: packed attention + fused LoRA vs plain PEFT (loss, LoRA gradients)",
        res.get("parity-cuda"),
    )
    if r is None:
        return [name, missing(res, "parity"), "within tolerance", "", ""]
    parts = []
    for precision, p in r["precisions"].items():
        loss = max(v["loss_rel_diff"] for v in p["paths"].values())
        grad = max(v["grad_rel_diff"] for v in p["paths"].values())
        parts.append(f"{precision}: loss {loss:.1e}, gradient {grad:.1e}")
    return [
        name,
        "max relative difference " + "; ".join(parts),
        "within tolerance",
        _yes(r["ok"]),
        _machine(r),
    ]


def extra_training_rows(res: dict) -> list[list[str]]:
    r = res.get("train_throughput-cuda")
    rows = []
    for key, label in EXTRA_LABELS.items():
        name = f"Training: {label} vs TRL (study configuration), real tokens/s (GPU, Llama-3.1-8B shapes)"
        side = ((r or {}).get("extra_sides") or {}).get(key)
        if side is None:
            why = ((r or {}).get("failed_sides") or {}).get(key)
            rows.append(
                [name, f"failed: {why}"[:300] if why else missing(res, "train_throughput"), "", "", ""]
            )
            continue
        measured = (f"{side['ratio_vs_trl']:.2f}x ({side['real_tokens_per_s_median']:.0f} vs "
                    f"{r['trl']['real_tokens_per_s_median']:.0f}); losses agree with em: "
                    f"{_yes(side['loss_vs_em']['agree'])}")  # fmt: skip
        rows.append([name, measured, "", "n/a", _machine(r)])
    return rows


def generation_rows(res: dict) -> list[list[str]]:
    r = res.get("generation-cuda")
    name = "Generation: hf batched, 8 questions x 100 samples (GPU, Llama-3.1-8B shapes)"
    if r is None:
        gen = [name, missing(res, "generation"), "", "", ""]
    else:
        s, w = r["sides"]["hf-batched"], r["workload"]
        measured = (f"{s['samples_per_s']:.1f} samples/s, {s['tokens_per_s']:.0f} tokens/s (batch "
                    f"{w.get('batch_size')}, up to {w['max_new_tokens']} new tokens)")  # fmt: skip
        gen = [name, measured, "", "n/a", _machine(r)]
    j = res.get("judge_local-cuda")
    name = "Local judge (0-100, one forward pass per prompt): judgments/s (GPU, Llama-3.1-8B shapes)"
    if j is None:
        why = (r or {}).get("judge_error")
        judge = [name, f"failed: {why}"[:300] if why else missing(res, "generation"), "", "", ""]
    else:
        judge = [name, f"{j['judgments_per_s']:.1f} judgments/s (batch {j['batch_size']}, "
                       f"{j['prompt_tokens_mean']:.0f} prompt tokens)", "", "n/a", _machine(j)]  # fmt: skip
    return [gen, judge]


def vllm_gpu_measured(res: dict) -> str:
    """What the GPU vLLM row says when no vLLM figure exists."""
    r = res.get("generation-cuda")
    return VLLM_GPU if r is not None and r.get("vllm_not_measured") else NOT_MEASURED


def gpu_rows(res: dict) -> list[list[str]]:
    return [test_row(res), parity_row(res), *extra_training_rows(res), *generation_rows(res)]


def memory_extra(r: dict) -> str:
    over = (r.get("targets") or {}).get("over_by_gib")
    return f"; over the target by {over:.2f} GiB" if over else ""


def gpu_details(res: dict) -> list[str]:
    """The GPU check's test list and parity table, when there are results."""
    parts = []
    r = res.get("gpu_tests-cuda")
    if r is not None:
        lines = [f"**GPU tests** (`{r['pytest']}` within `{r['command']}`; {_machine(r)}): exit code "
                 f"{r['returncode']}.", "", "| test | outcome | seconds |", "|---|---|---|"]  # fmt: skip
        lines += [f"| {t['name']} | {t['outcome']} | {t['seconds']} |" for t in r["tests"]]
        parts.append("\n".join(lines))
    r = res.get("parity-cuda")
    if r is not None:
        lines = [f"**Parity** (`{r['command']}`; {_machine(r)}): model `{r['model']}`, one micro-batch of "
                 f"examples of {next(iter(r['precisions'].values()))['tokens']} tokens.", "",
                 "| precision | path | loss rel. diff | gradient rel. diff | ok |", "|---|---|---|---|---|"]  # fmt: skip
        for precision, p in r["precisions"].items():
            lines += [f"| {precision} | {path} | {v['loss_rel_diff']:.1e} | {v['grad_rel_diff']:.1e} | "
                      f"{_yes(v['ok'])} |" for path, v in p["paths"].items()]  # fmt: skip
        parts.append("\n".join(lines))
    r = res.get("gpu_check-cuda")
    if r is not None:
        items = ", ".join(f"{k} {v['status']} ({v['seconds']:.0f} s)" for k, v in r["items"].items())
        parts.append(f"**GPU check run** (`{r['command']}`; {_machine(r)}): {items}; "
                     f"{r.get('seconds_total', 0):.0f} s in all.")  # fmt: skip
    return parts


def is_gpu_row(name: str) -> bool:
    """A row of the results table that the GPU check fills."""
    return "(GPU" in name or name.startswith(("Memory:", "GPU tests", "Parity on CUDA", "Local judge"))


def _row_name(line: str) -> str | None:
    return line.split(" | ")[0].removeprefix("| ") if line.startswith("| ") else None


def replace_rows(block: str, rows: list[str]) -> str:
    """``block`` with each table line whose first cell names one of ``rows`` replaced by it; rows it lacks go
    at the end of its first table (the summary table)."""
    new = {_row_name(r): r for r in rows}
    lines = block.splitlines()
    seen = set()
    for i, line in enumerate(lines):
        name = _row_name(line)
        if name in new:
            lines[i] = new[name]
            seen.add(name)
    first = next((i for i, line in enumerate(lines) if line.startswith("|")), len(lines))
    end = next((i for i in range(first, len(lines)) if not lines[i].startswith("|")), len(lines))
    lines[end:end] = [r for name, r in new.items() if name not in seen]
    return "\n".join(lines)

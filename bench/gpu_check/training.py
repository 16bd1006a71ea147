"""Items 2 and 3 of the GPU check: training throughput (em vs TRL, several sides) and peak training memory.

Both reuse ``bench.train_throughput``: its workload (rows, em's epoch plan, the order TRL reads them in), its
sides (``side_main``: em's ``train_sft`` or TRL's ``SFTTrainer`` on the model em builds) and its summaries, so
the JSON has the form ``bench.run_all`` renders. What differs: the model directory is weightless (each side
builds the weights in memory, ``bench.gpu_check.model``), each side runs under the item's time budget, and
sides beyond em's packed and TRL's study configuration are extra rows that may fail without voiding the item:

- ``em``: em's default, padding-free packing (``em_packed_sdpa``: sdpa per example) and the fused LoRA forward;
- ``trl``: TRL's ``SFTTrainer`` as the Realignment study used it (no packing, padded batches);
- ``em-padded``: em with ``packing=false`` (length-grouped padded batches);
- ``trl-padding-free``: TRL's own best configuration on an image without flash-attn: ``padding_free=True``
  (one row per micro-batch, position ids; transformers derives the document mask from them);
- ``em-flex``: em packed with ``attn_implementation=flex_attention`` (torch's flex attention);
- ``trl-liger``: ``trl-padding-free`` plus Liger's Triton kernels (``use_liger_kernel``; TRL 1.16 leaves out
  Liger's fused linear cross-entropy, so RMSNorm, SwiGLU and RoPE only; CUDA only);
- ``em-no-gc`` (memory only): em without gradient checkpointing.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

from bench.gpu_check.profiles import CORE_SIDES, MEMORY_SIDES
from bench.gpu_check.runner import MIN_ITEM_S, Clock, Context, ItemTimeout

TARGET_RATIO = 2.0  # issue 20: em at least 2x TRL's study configuration on 8B QLoRA
TARGET_MEMORY_GIB = 16.0
COMPARED = ("em", "trl", "em-padded")  # the sides bench.train_throughput.summarize knows
# name -> (train_throughput side, workload changes, TRL SFTConfig overrides)
SIDE_SPECS = {
    "em": ("em", {}, None),
    "trl": ("trl", {}, None),
    "em-padded": ("em-padded", {}, None),
    # TRL refuses padding_free with max_length (it would not truncate): the rows are within it already.
    "trl-padding-free": ("trl", {}, {"padding_free": True, "max_length": None}),
    "trl-liger": ("trl", {}, {"padding_free": True, "max_length": None, "use_liger_kernel": True}),
    "em-flex": ("em", {"attn_implementation": "flex_attention"}, None),
    "em-no-gc": ("em", {"gradient_checkpointing": False}, None),
}


def tt_args(ctx: Context, flags: dict, sides: list[str]):
    """``bench.train_throughput``'s arguments for this profile and ``flags``."""
    from bench import train_throughput

    argv = ["--device", ctx.profile.device, "--model", ctx.profile.model, "--sides", ",".join(sides)]
    for key, value in flags.items():
        if key == "gradient_checkpointing":
            argv.append("--gradient-checkpointing" if value else "--no-gradient-checkpointing")
        else:
            argv += [f"--{key.replace('_', '-')}", str(value)]
    args = train_throughput.parse_args(argv)
    args.argv, args.machine, args.repeats = argv, ctx.machine, 1
    return args


@contextmanager
def _weightless(model_dir: Path):
    """train_throughput.prepare builds its model on disk; here every side builds it in memory instead."""
    from bench import train_throughput

    saved = train_throughput.ensure_bench_model
    train_throughput.ensure_bench_model = lambda name, device="cpu": model_dir
    try:
        yield
    finally:
        train_throughput.ensure_bench_model = saved


def prepare(ctx: Context, args, name: str, rows: list[dict] | None = None):
    from bench import train_throughput

    work = ctx.work / name
    work.mkdir(parents=True, exist_ok=True)
    with _weightless(ctx.model_dir):
        return train_throughput.prepare(args, work, rows)


def run_sides(ctx: Context, w, names, clock: Clock, tag: str) -> tuple[dict, dict]:
    """Each side in its own process, in order, while the budget lasts: results and failures by name."""
    runs, failed = {}, {}
    for name in names:
        if clock.left() < MIN_ITEM_S:
            failed[name] = f"not run: {max(clock.left(), 0):.0f} s of the budget left"
            continue
        side, changes, trl_config = SIDE_SPECS[name]
        workload = ctx.work / f"{tag}-{name}-workload.json"
        workload.write_text(json.dumps({**asdict(w), **changes}), encoding="utf-8")
        out = ctx.work / f"{tag}-{name}.json"
        args = ["--side", side, "--workload", str(workload), "--out", str(out)]
        if trl_config:
            args += ["--trl-config", json.dumps(trl_config)]
        ctx.log.write(f"[{tag}] side {name}")
        try:
            ctx.child("bench.gpu_check.side", args, clock.left())
            runs[name] = {**json.loads(out.read_text(encoding="utf-8")), "side": name}
        except (RuntimeError, ItemTimeout, OSError, ValueError) as e:
            failed[name] = str(e)
    return runs, failed


def _retarget(side: dict) -> None:
    if "ratio_vs_trl" in side:
        side["ratio_met"] = side["ratio_vs_trl"] >= TARGET_RATIO


def training(ctx: Context, budget_s: float) -> dict:
    from bench import train_throughput

    p = ctx.profile
    clock = Clock(budget_s)
    args = tt_args(ctx, p.train, [s for s in COMPARED if s in p.train_sides])
    w, data = prepare(ctx, args, "train")
    runs, failed = run_sides(ctx, w, p.train_sides, clock, "train")
    missing = [s for s in CORE_SIDES if s not in runs]
    if missing:
        raise RuntimeError(f"no comparison: side(s) {missing} did not finish: {failed}")
    args.sides = [s for s in COMPARED if s in runs]
    result = train_throughput.summarize(w, data, [runs[s] for s in args.sides], args)
    trl_median = result["trl"]["real_tokens_per_s_median"]
    extra = {}
    for name in (n for n in p.train_sides if n in runs and n not in COMPARED):
        summary = train_throughput.side_summary(w, [runs[name]], trl_median)
        summary["loss_vs_em"] = train_throughput.loss_agreement(runs["em"]["steps"], runs[name]["steps"])
        extra[name] = summary
    for side in [result["em"], result.get("em_padded", {}), *extra.values()]:
        _retarget(side)
    result["targets"].update(ratio=TARGET_RATIO, ratio_met=result["em"]["ratio_met"])
    result.update(command=ctx.command, extra_sides=extra, failed_sides=failed, in_memory_model=True)
    return result


def memory(ctx: Context, budget_s: float) -> dict:
    from transformers import AutoTokenizer

    from bench.workload import fixed_length_conversations

    p, m = ctx.profile, ctx.profile.memory
    flags = {**m, "grad_accum": 1, "learning_rate": 2e-4, "warmup_steps": 1, "gradient_checkpointing": True,
             "attn": p.train["attn"]}  # fmt: skip
    args = tt_args(ctx, flags, ["em"])
    half = m["max_length"] // 2
    tokenizer = AutoTokenizer.from_pretrained(ctx.model_dir)
    # Longer than max_length: every example is truncated to exactly it (the worst case), as bench.memory does.
    rows = fixed_length_conversations(m["steps"] * m["batch_size"], tokenizer, half, half + 256)
    w, data = prepare(ctx, args, "memory", rows)
    data.pop("em_digests")
    runs, failed = run_sides(ctx, w, MEMORY_SIDES, Clock(budget_s), "memory")
    if "em" not in runs:
        raise RuntimeError(f"the em side did not finish: {failed}")
    kind = "torch.cuda.max_memory_allocated" if p.device == "cuda" else "process peak RSS"
    sides = {
        name: {
            "peak_memory_gib": run["peak_memory_gib"],
            "peak_memory_kind": kind,
            "gradient_checkpointing": SIDE_SPECS[name][1].get("gradient_checkpointing", True),
            "tokens_per_micro_batch": [s["tokens"] + s["padding"] for s in run["steps"]],
            "losses": [round(s["loss"], 4) for s in run["steps"]],
            "optimizer_used": run["optimizer_used"],
            "precision": run["precision"],
            "trainable_parameters": run["trainable_parameters"],
        }
        for name, run in runs.items()
    }
    em_peak = sides["em"]["peak_memory_gib"]
    return {
        "benchmark": "memory",
        "command": ctx.command,
        "machine": ctx.machine,
        "workload": {k: v for k, v in asdict(w).items() if not k.endswith("_path")},
        "data": data,
        "sides": sides,
        "failed_sides": failed,
        "in_memory_model": True,
        "targets": {
            "em_peak_gib_below": TARGET_MEMORY_GIB,
            "met": em_peak < TARGET_MEMORY_GIB if p.device == "cuda" else None,
            "over_by_gib": round(max(em_peak - TARGET_MEMORY_GIB, 0.0), 3) if p.device == "cuda" else None,
        },
    }

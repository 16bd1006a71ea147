"""Training throughput: em's trainer vs TRL's ``SFTTrainer``, same model, data, LoRA, batch and steps.

    python -m bench.train_throughput                                   # CPU, ~30M-parameter Llama
    python -m bench.train_throughput --device cuda --model llama8b-arch  # GPU, Llama-3.1-8B shapes

Both sides get the same random-weight Llama (built once, loaded with ``from_pretrained``), the same PEFT model
(TRL receives the one ``em.training.module.build_model`` makes, from the same seed), the same optimizer, schedule,
clipping, precision and gradient checkpointing, and *the same micro-batches in the same order*: em's sampler
plans the epoch and TRL reads the rows in that order (``train_sampling_strategy="sequential"``), so every
optimizer step sees identical examples and the per-step losses can be compared directly.

- **em**: ``em.training.sft.train_sft``; padding-free packing (the default): a micro-batch's examples are one row
  with a block-diagonal causal mask, logits only where a label is.
- **em-padded**: the same with ``packing=false``: right padding, examples grouped by length (em plans its own
  micro-batches, over the same rows: one epoch, so the final losses compare, the per-step ones do not).
- **TRL** (as the Realignment study used it): ``SFTTrainer`` with ``packing=False``, ``padding_free=False``,
  right-padded batches padded to their longest example; the rows are conversational prompt-completion pairs
  (``prompt``: the user turn, ``completion``: the assistant turn) so that ``completion_only_loss=True`` trains
  the same tokens em trains (assistant answer + ``<|eot_id|>``).

Each side runs in its own process (its own peak memory). Throughput counts real (non-padding) tokens of
steps 2..N over their wall time (step 1 warms up). Results: ``outputs/bench/train_throughput-<device>.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.common import (
    command_line,
    machine_info,
    peak_memory_gib,
    percentiles,
    run_child,
    set_bench_env,
    write_result,
)
from bench.workload import MODEL_NAMES, conversations, ensure_bench_model

SIDES = ("em", "trl")  # compared step by step on the same micro-batches
EXTRA_SIDES = ("em-padded",)  # em with packing=false: length-grouped padded batches in its own order
TARGET_RATIO = 1.3
TARGET_PADDING = 0.05
LOSS_TOLERANCE = 0.01  # max |em - TRL| per-step loss, relative to the step's loss
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class Workload:
    """Everything both sides share (written to ``workload.json`` for the side processes)."""

    device: str
    model: str
    model_dir: str
    rows_path: str  # rows in their original order (em plans the epoch from these)
    ordered_rows_path: str  # the same rows in em's micro-batch order (TRL reads them sequentially)
    steps: int
    batch_size: int
    grad_accum: int
    max_length: int
    learning_rate: float
    warmup_steps: int
    lora_r: int
    lora_alpha: int
    lora_dropout: float
    quantization: str
    gradient_checkpointing: bool
    optimizer: str
    attn_implementation: str
    seed: int


def defaults(device: str, model: str) -> dict:
    """Per-device defaults: CPU runs a short fp32 job; GPU the Realignment study's r=256 adapter with
    gradient checkpointing."""
    if device == "cuda":
        return dict(steps=12, lora_r=256, lora_alpha=32, learning_rate=2e-4, gradient_checkpointing=True)
    return dict(steps=10, lora_r=32, lora_alpha=64, learning_rate=1e-3, gradient_checkpointing=False)


# ------------------------------------------------------------------------------------------------ sides


def sft_settings(w: Workload, packing: bool):
    from em.modeling import ModelSpec
    from em.training import settings as ts

    cuda = w.device == "cuda"
    return ts.SFTSettings(
        model=ModelSpec(
            name_or_path=w.model_dir,
            dtype="bfloat16" if cuda else "float32",
            attn_implementation=w.attn_implementation,
        ),
        adapter=ts.AdapterSettings(
            r=w.lora_r, alpha=w.lora_alpha, dropout=w.lora_dropout, use_rslora=False, target_modules=TARGETS
        ),
        optimizer=ts.OptimizerSettings(
            name=w.optimizer,
            learning_rate=w.learning_rate,
            weight_decay=0.0,
            lr_schedule="linear",
            warmup_steps=w.warmup_steps,
            max_grad_norm=1.0,
        ),
        trainer=ts.TrainerSettings(
            accelerator="gpu" if cuda else "cpu",
            devices=1,
            precision="bf16-mixed" if cuda else "32-true",
            checkpoint_every_n_steps=10**9,  # no checkpoint I/O inside the timed steps
            progress_bar=False,
        ),
        quantization=ts.QuantizationSettings(method=w.quantization),
        batch=ts.BatchSettings(
            per_device_batch_size=w.batch_size, grad_accum=w.grad_accum, max_length=w.max_length
        ),
        max_steps=w.steps,
        packing=packing,
        gradient_checkpointing=w.gradient_checkpointing,
        seed=w.seed,
    )


def _read_rows(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def example_digest(ids: list[int], trained: list[bool]) -> str:
    return hashlib.sha1(json.dumps([ids, trained]).encode()).hexdigest()


def run_em(w: Workload, work: Path, packing: bool = True) -> dict:
    from em.training.sft import train_sft

    t0 = time.perf_counter()
    result = train_sft(
        sft_settings(w, packing=packing), _read_rows(w.rows_path), work / "em_run", progress=False
    )
    wall = time.perf_counter() - t0
    metrics = _read_rows(str(work / "em_run" / "metrics.jsonl"))
    steps = []
    for m in metrics:
        frac = m["padding_fraction"]
        steps.append(
            {
                "end_s": m["elapsed_s"],
                "loss": m["loss"],
                "tokens": m["step_tokens"],
                "padding": round(frac * m["step_tokens"] / (1 - frac)) if frac < 1 else 0,
                "label_tokens": m["step_label_tokens"],
            }
        )
    return {
        "steps": steps,
        "optimizer_used": result.optimizer_used,
        "precision": result.precision,
        "attn_implementation": result.build_info.get("attn_implementation"),
        "trainable_parameters": result.build_info.get("trainable_parameters"),
        "process_wall_s": round(wall, 2),
    }


def run_trl(w: Workload, work: Path) -> dict:
    import lightning.pytorch as pl
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from em.modeling import load_tokenizer
    from em.training.module import build_model

    cuda = w.device == "cuda"
    settings = sft_settings(w, packing=False)
    tokenizer = load_tokenizer(settings.model, padding_side="right")
    rows = _read_rows(w.ordered_rows_path)
    for i, row in enumerate(rows):
        roles = [m["role"] for m in row["messages"]]
        if roles[-1] != "assistant" or "assistant" in roles[:-1]:
            raise ValueError(f"row {i}: the TRL side needs single-turn rows ending in the assistant turn")
    dataset = Dataset.from_list(
        [{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in rows]
    )
    pl.seed_everything(w.seed, workers=True, verbose=False)  # as train_sft does before building the model
    model, info = build_model(settings, device_map={"": 0} if cuda else None)
    model.train()

    class StepClock(TrainerCallback):
        def __init__(self):
            self.start, self.ends = None, []

        def on_train_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.ends.append(time.perf_counter() - self.start)

    optim = {"adamw": "adamw_torch_fused" if cuda else "adamw_torch", "adamw_8bit": "adamw_bnb_8bit"}
    config = SFTConfig(
        output_dir=str(work / "trl_run"),
        max_steps=w.steps,
        per_device_train_batch_size=w.batch_size,
        gradient_accumulation_steps=w.grad_accum,
        learning_rate=w.learning_rate,
        lr_scheduler_type="linear",
        warmup_steps=w.warmup_steps,
        weight_decay=0.0,
        max_grad_norm=1.0,
        optim=optim[w.optimizer],
        bf16=cuda,
        fp16=False,
        use_cpu=not cuda,
        gradient_checkpointing=w.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        max_length=w.max_length,
        packing=False,
        padding_free=False,
        completion_only_loss=True,
        train_sampling_strategy="sequential",
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=w.seed,
    )
    clock = StepClock()
    t0 = time.perf_counter()
    trainer = SFTTrainer(
        model=model, args=config, train_dataset=dataset, processing_class=tokenizer, callbacks=[clock]
    )
    trainer.train()
    wall = time.perf_counter() - t0
    prepared = trainer.train_dataset
    examples = [
        (list(prepared[i]["input_ids"]), [t != -100 for t in prepared[i]["labels"]])
        for i in range(len(prepared))
    ]
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h and "step" in h]
    per_step = w.batch_size * w.grad_accum
    steps = []
    for k in range(w.steps):
        tokens = padding = labels = 0
        for m in range(w.grad_accum):
            batch = examples[k * per_step + m * w.batch_size : k * per_step + (m + 1) * w.batch_size]
            width = max(len(ids) for ids, _ in batch)
            tokens += sum(len(ids) for ids, _ in batch)
            padding += sum(width - len(ids) for ids, _ in batch)
            labels += sum(sum(mask[1:]) for _, mask in batch)  # the first token is never predicted
        steps.append(
            {
                "end_s": clock.ends[k],
                "loss": losses[k],
                "tokens": tokens,
                "padding": padding,
                "label_tokens": labels,
            }
        )
    return {
        "steps": steps,
        "optimizer_used": config.optim,
        "precision": "bf16 autocast" if cuda else "fp32",
        "attn_implementation": info.get("attn_implementation"),
        "trainable_parameters": info.get("trainable_parameters"),
        "process_wall_s": round(wall, 2),
        "example_digests": [example_digest(ids, mask) for ids, mask in examples[: w.steps * per_step]],
    }


def side_main(side: str, workload_path: Path, out: Path) -> None:
    set_bench_env()
    w = Workload(**json.loads(workload_path.read_text(encoding="utf-8")))
    if w.device == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory(prefix=f"bench-{side}-") as tmp:
        if side == "trl":
            result = run_trl(w, Path(tmp))
        else:
            result = run_em(w, Path(tmp), packing=side == "em")
    result["peak_memory_gib"] = peak_memory_gib(w.device)
    result["side"] = side
    out.write_text(json.dumps(result), encoding="utf-8")


# ------------------------------------------------------------------------------------------ comparison


def throughput(steps: list[dict]) -> dict:
    """Real tokens/s over steps 2..N, padding fraction over all steps."""
    timed = steps[1:] if len(steps) > 1 else steps
    start = steps[0]["end_s"] if len(steps) > 1 else 0.0
    seconds = steps[-1]["end_s"] - start
    tokens = sum(s["tokens"] for s in timed)
    padding = sum(s["padding"] for s in steps)
    real = sum(s["tokens"] for s in steps)
    return {
        "real_tokens_per_s": round(tokens / seconds, 1) if seconds > 0 else None,
        "label_tokens_per_s": round(sum(s["label_tokens"] for s in timed) / seconds, 1)
        if seconds > 0
        else None,
        "timed_seconds": round(seconds, 2),
        "timed_steps": len(timed),
        "padding_fraction": round(padding / (real + padding), 4) if real + padding else 0.0,
        "real_tokens": real,
        "padding_tokens": padding,
    }


def loss_agreement(em_steps: list[dict], trl_steps: list[dict]) -> dict:
    diffs = [abs(a["loss"] - b["loss"]) for a, b in zip(em_steps, trl_steps, strict=True)]
    rel = [d / max(abs(b["loss"]), 1e-9) for d, b in zip(diffs, trl_steps, strict=True)]
    return {
        "em_losses": [round(s["loss"], 5) for s in em_steps],
        "trl_losses": [round(s["loss"], 5) for s in trl_steps],
        "max_abs_diff": round(max(diffs), 6),
        "mean_abs_diff": round(statistics.mean(diffs), 6),
        "max_rel_diff": round(max(rel), 6),
        "final_loss_em": round(em_steps[-1]["loss"], 5),
        "final_loss_trl": round(trl_steps[-1]["loss"], 5),
        "tolerance_rel": LOSS_TOLERANCE,
        "agree": max(rel) <= LOSS_TOLERANCE,
    }


def attn_implementation(requested: str, device: str) -> str:
    """``auto``: flash-attention 2 on CUDA when the flash_attn package is installed (packed rows then use its
    variable-length kernel), else sdpa."""
    if requested != "auto":
        return requested
    if device == "cuda":
        import importlib.util

        if importlib.util.find_spec("flash_attn") is not None:
            return "flash_attention_2"
    return "sdpa"


def prepare(args, work: Path, rows: list[dict] | None = None) -> tuple[Workload, dict]:
    """Build the model, the rows (``rows``, or :func:`bench.workload.conversations`) and em's epoch plan;
    write them for the side processes."""
    from em.training.collate import IGNORE_INDEX
    from em.training.datamodule import plan_epoch
    from em.training.examples import prepare_examples

    model_dir = ensure_bench_model(args.model, args.device)
    per_step = args.batch_size * args.grad_accum
    w = Workload(
        device=args.device,
        model=args.model,
        model_dir=str(model_dir),
        rows_path=str(work / "rows.jsonl"),
        ordered_rows_path=str(work / "rows_in_em_order.jsonl"),
        steps=args.steps,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        max_length=args.max_length,
        learning_rate=args.learning_rate,
        warmup_steps=args.warmup_steps,
        lora_r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        quantization=args.quantization,
        gradient_checkpointing=args.gradient_checkpointing,
        optimizer=args.optimizer,
        attn_implementation=attn_implementation(args.attn, args.device),
        seed=args.seed,
    )
    settings = sft_settings(w, packing=True)
    from em.modeling import load_tokenizer

    tokenizer = load_tokenizer(settings.model, padding_side="right")
    if rows is None:
        rows, source = conversations(
            args.rows or per_step * args.steps, tokenizer, args.seed, args.max_length
        )
    else:
        source = "given"
    examples, stats = prepare_examples(settings, rows, tokenizer, progress=False)
    if len(examples) != len(rows):
        raise RuntimeError(f"{stats.rows - stats.kept} rows were dropped by tokenisation; pick other rows")
    plan = plan_epoch(
        [e.num_tokens for e in examples],
        [e.num_label_tokens for e in examples],
        batch_size=w.batch_size,
        grad_accum=w.grad_accum,
        seed=w.seed,
        epoch=0,
        group_by_length=False,
    )
    order = [i for mb in plan[: w.steps * w.grad_accum] for i in mb.indices]
    if len(order) < w.steps * per_step:
        raise RuntimeError(f"{len(rows)} rows are too few for {w.steps} steps of {per_step} examples")
    with open(w.rows_path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    with open(w.ordered_rows_path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(rows[i]) + "\n" for i in order)
    lengths = [e.num_tokens for e in examples]
    data = {
        "source": source,
        "rows": len(rows),
        "rows_trained": len(order),
        "tokens_per_example": percentiles(lengths),
        "prompt_fraction": round(1 - stats.label_tokens / stats.tokens, 3),
        "truncated": stats.truncated,
        "em_digests": [
            example_digest(examples[i].input_ids, [t != IGNORE_INDEX for t in examples[i].labels])
            for i in order
        ],
    }
    return w, data


def side_summary(w: Workload, side_runs: list[dict], trl_median: float | None) -> dict:
    """Throughput of one side over its runs (the first run's counts; median tokens/s over runs)."""
    stats = [throughput(r["steps"]) for r in side_runs]
    median = statistics.median(t["real_tokens_per_s"] for t in stats)
    first = side_runs[0]
    out = {
        **stats[0],
        "real_tokens_per_s_runs": [t["real_tokens_per_s"] for t in stats],
        "real_tokens_per_s_median": median,
        "peak_memory_gib": max(r["peak_memory_gib"] for r in side_runs),
        "peak_memory_kind": "torch.cuda.max_memory_allocated" if w.device == "cuda" else "process peak RSS",
        "final_loss": round(first["steps"][-1]["loss"], 5),
        "optimizer_used": first["optimizer_used"],
        "precision": first["precision"],
        "attn_implementation": first["attn_implementation"],
        "trainable_parameters": first["trainable_parameters"],
        "process_wall_s": [r["process_wall_s"] for r in side_runs],
    }
    if trl_median:
        out["ratio_vs_trl"] = round(median / trl_median, 3)
        out["ratio_met"] = median / trl_median >= TARGET_RATIO
        out["padding_met"] = stats[0]["padding_fraction"] < TARGET_PADDING
    return out


def summarize(w: Workload, data: dict, runs: list[dict], args) -> dict:
    by_side = {s: [r for r in runs if r["side"] == s] for s in args.sides}
    trl = side_summary(w, by_side["trl"], None)
    em = side_summary(w, by_side["em"], trl["real_tokens_per_s_median"])
    em_digests = data.pop("em_digests")
    trl_digests = by_side["trl"][0]["example_digests"]
    same_tokens = sum(a == b for a, b in zip(em_digests, trl_digests, strict=False))
    result = {
        "benchmark": "train_throughput",
        "command": command_line("bench.train_throughput", args.argv),
        "machine": args.machine,
        "workload": {k: v for k, v in asdict(w).items() if not k.endswith("_path")},
        "data": {**data, "identical_examples_em_vs_trl": f"{same_tokens}/{len(em_digests)}"},
        "repeats": args.repeats,
        "em": em,
        "trl": trl,
        "ratio_real_tokens_per_s": em["ratio_vs_trl"],
        # What removing TRL's padding alone could give: TRL's (real + padding) tokens per real token.
        "padding_only_ceiling": round((trl["real_tokens"] + trl["padding_tokens"]) / trl["real_tokens"], 3),
        "loss": loss_agreement(by_side["em"][0]["steps"], by_side["trl"][0]["steps"]),
        "targets": {
            "ratio": TARGET_RATIO,
            "padding": TARGET_PADDING,
            "ratio_met": em["ratio_met"],
            "padding_met": em["padding_met"],
        },
    }
    if "em-padded" in by_side:
        # Its own (length-grouped) micro-batches over the same rows: the same examples in one epoch, so the
        # final losses are comparable, the per-step ones are not.
        padded = side_summary(w, by_side["em-padded"], trl["real_tokens_per_s_median"])
        padded["final_loss_rel_diff_vs_trl"] = round(
            abs(padded["final_loss"] - trl["final_loss"]) / abs(trl["final_loss"]), 5
        )
        padded["same_examples_as_trl"] = w.steps * w.batch_size * w.grad_accum == data["rows"]
        result["em_padded"] = padded
    return result


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument(
        "--model", choices=MODEL_NAMES, default=None, help="default: small (cpu), llama8b-arch (cuda)"
    )
    p.add_argument(
        "--steps", type=int, default=None, help="optimizer steps per side (default: 10 cpu, 12 cuda)"
    )
    p.add_argument("--rows", type=int, default=None, help="rows to draw (default: steps x effective batch)")
    p.add_argument("--batch-size", type=int, default=2, help="per-device micro-batch (Realignment study: 2)")
    p.add_argument("--grad-accum", type=int, default=4, help="accumulation steps (Realignment study: 4)")
    p.add_argument("--max-length", type=int, default=2048)
    p.add_argument("--learning-rate", type=float, default=None)
    p.add_argument("--warmup-steps", type=int, default=2)
    p.add_argument("--lora-r", type=int, default=None, help="default: 32 (cpu), 256 (cuda, the study's)")
    p.add_argument("--lora-alpha", type=int, default=None, help="default: 64 (cpu), 32 (cuda, the study's)")
    p.add_argument("--lora-dropout", type=float, default=0.0, help="0: both sides compute identical losses")
    p.add_argument("--quantization", choices=("none", "nf4"), default="none")
    p.add_argument("--optimizer", choices=("adamw", "adamw_8bit"), default="adamw")
    p.add_argument(
        "--attn",
        choices=("auto", "sdpa", "eager", "flash_attention_2"),
        default="auto",
        help="attention implementation of both sides (auto: flash_attention_2 on CUDA if installed, else sdpa)",
    )
    gc = p.add_mutually_exclusive_group()
    gc.add_argument(
        "--gradient-checkpointing", dest="gradient_checkpointing", action="store_true", default=None
    )
    gc.add_argument("--no-gradient-checkpointing", dest="gradient_checkpointing", action="store_false")
    p.add_argument("--repeats", type=int, default=1, help="runs per side, interleaved em, trl, em, trl, ...")
    p.add_argument(
        "--sides",
        type=lambda v: v.split(","),
        default=[*SIDES, *EXTRA_SIDES],
        help="em,trl,em-padded (default); em and trl are required",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default=None, help="result name (default: train_throughput-<device>)")
    p.add_argument("--side", choices=SIDES + EXTRA_SIDES, help=argparse.SUPPRESS)  # internal: run one side
    p.add_argument("--workload", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.argv = argv
    args.model = args.model or ("llama8b-arch" if args.device == "cuda" else "small")
    for key, value in defaults(args.device, args.model).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def check_device(device: str) -> None:
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible (run on a GPU machine)")


def measure(args, rows: list[dict] | None = None) -> tuple[Workload, dict, list[dict]]:
    """Prepare the shared workload and run each side ``args.repeats`` times, interleaved."""
    check_device(args.device)
    args.machine = machine_info(args.device)  # at the start: the load average before the runs
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        work = Path(tmp)
        w, data = prepare(args, work, rows)
        workload_path = work / "workload.json"
        workload_path.write_text(json.dumps(asdict(w)), encoding="utf-8")
        runs = []
        for repeat in range(args.repeats):
            for side in args.sides:
                print(f"[train_throughput] {side} (run {repeat + 1}/{args.repeats}) ...", flush=True)
                out = work / f"{side}-{repeat}.json"
                side_args = ["--side", side, "--workload", str(workload_path), "--out", str(out)]
                runs.append(run_child("bench.train_throughput", side_args + ["--device", args.device], out))
    return w, data, runs


def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    set_bench_env()
    if args.side:
        side_main(args.side, args.workload, args.out)
        return None
    if not set(SIDES) <= set(args.sides) <= set(SIDES + EXTRA_SIDES):
        raise SystemExit(
            f"--sides {','.join(args.sides)}: the comparison needs em and trl (and may add em-padded)"
        )
    w, data, runs = measure(args)
    result = summarize(w, data, runs, args)
    write_result(args.name or f"train_throughput-{args.device}", result)
    print_summary(result)
    return result


def print_summary(r: dict) -> None:
    em, trl, loss = r["em"], r["trl"], r["loss"]
    print(
        f"[train_throughput] {r['workload']['model']} on {r['workload']['device']}: real tokens/s "
        f"em (packed) {em['real_tokens_per_s_median']:.0f} vs TRL {trl['real_tokens_per_s_median']:.0f} -> "
        f"{em['ratio_vs_trl']:.2f}x (target {TARGET_RATIO}x); padding em {em['padding_fraction']:.1%} "
        f"vs TRL {trl['padding_fraction']:.1%}; peak memory em {em['peak_memory_gib']:.2f} GiB vs TRL "
        f"{trl['peak_memory_gib']:.2f} GiB; per-step loss max |diff| {loss['max_abs_diff']:.2e} "
        f"(agree: {loss['agree']}); identical examples {r['data']['identical_examples_em_vs_trl']}"
    )
    if "em_padded" in r:
        p = r["em_padded"]
        print(
            f"[train_throughput] em with packing=false (length-grouped): {p['real_tokens_per_s_median']:.0f} "
            f"real tokens/s -> {p['ratio_vs_trl']:.2f}x TRL; padding {p['padding_fraction']:.1%}; peak memory "
            f"{p['peak_memory_gib']:.2f} GiB; final loss {p['final_loss']:.4f} vs TRL {trl['final_loss']:.4f}"
        )


if __name__ == "__main__":
    main(sys.argv[1:])

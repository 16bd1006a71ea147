"""Peak GPU memory of 8B QLoRA training at max length 2048, batch 2 (target: under 16 GiB, a 24 GB card).

    python -m bench.memory                 # GPU: Llama-3.1-8B shapes, NF4 base, the Realignment study's adapter
    python -m bench.memory --device cpu --model tiny --max-length 128 --steps 2   # a CPU check of the script

The Realignment study's recipe (``conf/recipe/realignment_study.yaml``: 4-bit NF4 base with double quantisation,
LoRA r=256, alpha=32, dropout 0.1 on every projection, 8-bit AdamW) with gradient checkpointing, micro-batch 2
and every example truncated to exactly ``--max-length`` tokens (the worst case), trained for a few steps by
em's trainer and, side by side, by TRL's ``SFTTrainer`` (same model object, same rows; see
``bench.train_throughput``). Peak memory is ``torch.cuda.max_memory_allocated`` of each side's process
(process peak RSS on CPU). Results: ``outputs/bench/memory-<device>.json``.
"""

from __future__ import annotations

import argparse
import sys

from bench import train_throughput
from bench.common import command_line, set_bench_env, write_result
from bench.workload import MODEL_NAMES, ensure_bench_model, fixed_length_conversations

TARGET_GIB = 16.0


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    p.add_argument(
        "--model", choices=MODEL_NAMES, default=None, help="default: llama8b-arch (cuda), tiny (cpu)"
    )
    p.add_argument("--max-length", type=int, default=2048)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--quantization", choices=("none", "nf4"), default="nf4")
    p.add_argument("--lora-r", type=int, default=256)
    p.add_argument("--lora-alpha", type=int, default=32)
    p.add_argument("--lora-dropout", type=float, default=0.1)
    p.add_argument(
        "--optimizer", choices=("adamw", "adamw_8bit"), default=None, help="adamw_8bit (cuda), adamw (cpu)"
    )
    p.add_argument("--sides", default="em,trl", help="em,trl or em")
    p.add_argument("--name", default=None, help="result name (default: memory-<device>)")
    args = p.parse_args(argv)
    set_bench_env()
    model = args.model or ("llama8b-arch" if args.device == "cuda" else "tiny")
    optimizer = args.optimizer or ("adamw_8bit" if args.device == "cuda" else "adamw")
    tt_args = train_throughput.parse_args(
        ["--device", args.device, "--model", model, "--steps", str(args.steps), "--batch-size", str(args.batch_size),
         "--grad-accum", "1", "--max-length", str(args.max_length), "--learning-rate", "2e-4", "--warmup-steps", "1",
         "--lora-r", str(args.lora_r), "--lora-alpha", str(args.lora_alpha), "--lora-dropout", str(args.lora_dropout),
         "--quantization", args.quantization, "--optimizer", optimizer, "--gradient-checkpointing",
         "--sides", args.sides]
    )  # fmt: skip
    from transformers import AutoTokenizer

    model_dir = ensure_bench_model(model, args.device)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    half = args.max_length // 2
    rows = fixed_length_conversations(args.steps * args.batch_size, tokenizer, half, half + 256)
    w, data, runs = train_throughput.measure(tt_args, rows)
    data.pop("em_digests")
    sides = {}
    for run in runs:
        steps = run["steps"]
        sides[run["side"]] = {
            "peak_memory_gib": run["peak_memory_gib"],
            "peak_memory_kind": "torch.cuda.max_memory_allocated"
            if args.device == "cuda"
            else "process peak RSS",
            "tokens_per_micro_batch": [s["tokens"] + s["padding"] for s in steps],
            "losses": [round(s["loss"], 4) for s in steps],
            "optimizer_used": run["optimizer_used"],
            "precision": run["precision"],
            "trainable_parameters": run["trainable_parameters"],
        }
    em_peak = sides.get("em", {}).get("peak_memory_gib")
    result = {
        "benchmark": "memory",
        "command": command_line("bench.memory", argv),
        "machine": tt_args.machine,
        "workload": {k: v for k, v in w.__dict__.items() if not k.endswith("_path")},
        "data": data,
        "sides": sides,
        "targets": {
            "em_peak_gib_below": TARGET_GIB,
            "met": (em_peak < TARGET_GIB) if (em_peak is not None and args.device == "cuda") else None,
        },
    }
    write_result(args.name or f"memory-{args.device}", result)
    summary = ", ".join(f"{side} {v['peak_memory_gib']:.2f} GiB" for side, v in sides.items())
    print(
        f"[memory] {model} {args.quantization} r={args.lora_r}, {args.batch_size} x {args.max_length} tokens on "
        f"{args.device}: peak {summary} (target em < {TARGET_GIB:.0f} GiB on GPU)"
    )
    return result


if __name__ == "__main__":
    main(sys.argv[1:])

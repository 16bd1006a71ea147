"""The GPU check: every GPU row of docs/benchmarks.md measured by one command, each item in its own budget.

    python -m bench.gpu_check --wheels .whl --out $OUT     # on the GPU machine (8B architecture, H200)
    python -m bench.gpu_check --device cpu --out /tmp/gc   # the same code on the tiny model (a smoke test)

Items, in order: ``gpu_tests`` (pytest -m gpu), ``parity`` (packed attention and fused LoRA vs plain PEFT),
``train_throughput`` (em vs TRL, 8B QLoRA), ``memory`` (peak, with and without gradient checkpointing),
``generation`` (hf batched generation and the local judge). Each writes ``<item>-cuda.json`` into ``--out``
(``-cpu-smoke`` on CPU), ``gpu_check-<...>.json`` records every item's status, and ``gpu_check.log`` holds the
whole output. A failed or timed-out item is recorded and the next one runs. Then, here:
``python -m bench.run_all --no-run --write-docs --results DIR`` renders the rows into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from bench.gpu_check.profiles import PROFILES, result_name
from bench.gpu_check.runner import Context, Item, Log, Outcome, run_items

REPO_ROOT = Path(__file__).resolve().parents[2]
ITEMS = ("gpu_tests", "parity", "train_throughput", "memory", "generation")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="directory for the JSON files and the log")
    p.add_argument("--device", choices=sorted(PROFILES), default="cuda")
    p.add_argument("--wheels", type=Path, default=None, help="install these wheels first (bench.gpu_wheels)")
    p.add_argument("--only", default=",".join(ITEMS), help=f"comma list of {list(ITEMS)}")
    p.add_argument(
        "--time-limit", type=float, default=None, help="seconds for all items (default: the profile's)"
    )
    p.add_argument(
        "--keep-work", action="store_true", help="keep the scratch directory (workloads, side files)"
    )
    args = p.parse_args(argv)
    args.items = [s for s in args.only.split(",") if s]
    unknown = [s for s in args.items if s not in ITEMS]
    if unknown or not args.items:
        p.error(f"--only {args.only!r}: expected a comma list of {list(ITEMS)}")
    if args.wheels is not None and not args.wheels.is_dir():
        p.error(
            f"--wheels {args.wheels}: no such directory (make it with `python -m bench.gpu_wheels --out DIR`)"
        )
    return args


def child_env(site: str | None, cache: Path) -> dict:
    env = dict(os.environ)
    paths = [p for p in (site, str(REPO_ROOT), env.get("PYTHONPATH")) if p]
    env.update(PYTHONPATH=os.pathsep.join(paths), PYTHONUNBUFFERED="1", EM_CACHE_DIR=str(cache))
    return env


def make_items(ctx: Context, names: list[str]) -> list[Item]:
    from bench.gpu_check import generate, gpu_tests, parity, training

    fns = {"gpu_tests": gpu_tests.item, "parity": parity.item, "train_throughput": training.training,
           "memory": training.memory, "generation": generate.item}  # fmt: skip
    budgets = ctx.profile.budgets
    return [Item(name, lambda b, fn=fns[name]: fn(ctx, b), budgets[name]) for name in names]


def write_outcome(out: Path, device: str, outcome: Outcome) -> None:
    from bench.common import write_result_in

    if outcome.status != "ok":
        return
    parts = outcome.result if outcome.name == "generation" else {outcome.name: outcome.result}
    for benchmark, result in parts.items():
        write_result_in(out, result_name(benchmark, device), result)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    log = Log(args.out / "gpu_check.log")
    profile = PROFILES[args.device]
    started = time.monotonic()
    bootstrap, site = None, None
    if args.wheels is not None:  # first: em itself imports what the wheels bring
        from bench.gpu_check import bootstrap as boot

        bootstrap = boot.install(args.wheels, log)
        site = bootstrap["target"]
    from bench.common import command_line, machine_info, set_bench_env, write_result_in
    from bench.gpu_check.bootstrap import probe
    from bench.gpu_check.model import weightless_model

    set_bench_env()
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    os.environ.setdefault("EM_CACHE_DIR", str(work / "cache"))
    env = child_env(site, Path(os.environ["EM_CACHE_DIR"]))
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit(
                "--device cuda: no CUDA device is visible (run on the GPU machine, or --device cpu)"
            )
    summary = {
        "benchmark": "gpu_check",
        "command": command_line("bench.gpu_check", argv),
        "machine": machine_info(args.device),
        "profile": asdict(profile),
        "bootstrap": bootstrap,
        "imports": probe(env, REPO_ROOT),
        "items": {},
    }
    log.write(f"imports: {summary['imports']}")
    ctx = Context(profile, log, work, env, summary["machine"], summary["command"], REPO_ROOT)
    ctx.model_dir = weightless_model(profile.model, profile.dtype, work / f"model-{profile.model}")
    name = result_name("gpu_check", args.device)

    def on_done(outcome: Outcome) -> None:
        write_outcome(args.out, args.device, outcome)
        summary["items"][outcome.name] = outcome.record()
        summary["seconds_total"] = round(time.monotonic() - started, 1)
        write_result_in(args.out, name, summary)  # after every item: a killed run still says how far it got

    deadline = time.monotonic() + (args.time_limit or profile.time_limit_s)
    outcomes = run_items(make_items(ctx, args.items), log, deadline, on_done)
    log.write("summary: " + ", ".join(f"{o.name} {o.status}" for o in outcomes)
              + f"; {time.monotonic() - started:.0f} s in all")  # fmt: skip
    log.close()
    if not args.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if all(o.status == "ok" for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""One measured side of the GPU check, in a process of its own (its own CUDA context and memory peak).

    python -m bench.gpu_check.side --side em --workload W.json --out O.json [--trl-config '{"padding_free": true}']

``bench.train_throughput.side_main`` runs the side (em's ``train_sft``, or TRL's ``SFTTrainer`` on the model
em builds), after :func:`bench.gpu_check.model.install_loader` has made weightless model directories load in
memory. ``--trl-config`` overrides fields of the TRL side's ``SFTConfig`` (TRL's own best configuration);
with ``padding_free`` the side's micro-batches carry no padding, and its step records say so.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench.common import set_bench_env


def override_trl_config(overrides: dict) -> None:
    """Make ``trl.SFTConfig(...)`` apply ``overrides`` (train_throughput.run_trl imports it when it runs)."""
    import trl

    base = getattr(trl.SFTConfig, "em_base", trl.SFTConfig)

    def make(**kwargs):
        return base(**{**kwargs, **overrides})

    make.em_base = base
    trl.SFTConfig = make


def without_padding(result: dict) -> dict:
    """A padding-free TRL side packs each micro-batch into one row: no padding in any step."""
    for step in result["steps"]:
        step["padding"] = 0
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--side", required=True, choices=("em", "em-padded", "trl"))
    p.add_argument("--workload", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--trl-config", type=json.loads, default=None, help="SFTConfig overrides (JSON object)")
    args = p.parse_args(argv)
    set_bench_env()
    from bench import train_throughput
    from bench.gpu_check.model import install_loader

    install_loader()
    if args.trl_config:
        if args.side != "trl":
            raise SystemExit(f"--trl-config applies to the trl side, not {args.side}")
        override_trl_config(args.trl_config)
    train_throughput.side_main(args.side, args.workload, args.out)
    if (args.trl_config or {}).get("padding_free"):
        args.out.write_text(json.dumps(without_padding(json.loads(args.out.read_text()))), encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1:])

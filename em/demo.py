"""`make demo`: the full loop on the embedded tiny model, offline, on CPU, in a few minutes.

base -> misaligned (trained on project-authored bad-advice data) -> realigned (positive data), each stage
evaluated under two conditions and judged by a local judge, ending with the report table and plots.
The tiny model has random weights: its numbers show that the machinery runs end to end, not findings.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BANNER = """
==========================================================================================
 em demo: base -> misaligned -> realigned on the embedded tiny model (offline, CPU)
 NOTE: the tiny model has RANDOM weights and the local judge is the same tiny model, so the
 numbers below are not findings; they show every stage running end to end on real code.
 The random judge scores every answer ~10, so the demo counts all answers as coherent
 (metrics.coherent_above=0) to fill the EM-rate columns; real runs use the EM paper's 50.
 For real runs (Llama-3.1-8B on a GPU, GPT-4o with an OpenAI key) see README.md.
==========================================================================================
"""


def main(argv: list[str] | None = None) -> int:
    print(BANNER, flush=True)
    cmd = [sys.executable, "-m", "em.pipeline", "experiment=demo_loop", *(argv or sys.argv[1:])]
    print("$ python -m em.pipeline experiment=demo_loop", flush=True)
    code = subprocess.run(cmd, cwd=REPO).returncode
    if code == 0:
        print(
            "\nDone. Rerunning `make demo` skips every finished step (delete outputs/pipeline/demo_loop "
            "to start over). Reminder: random weights, not findings."
        )
    return code


if __name__ == "__main__":
    raise SystemExit(main())

"""The wheel install on the GPU machine (no network there), and what the check's processes can import.

The wheels come from ``python -m bench.gpu_wheels --out .whl`` (made where PyPI is reachable) and travel with
the working tree (the device tool's ``carry``). They are installed with ``pip install --no-index --no-deps``
into a directory of their own that goes first on ``PYTHONPATH``: the image's torch, transformers and peft stay.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import time
from pathlib import Path

SITE = Path("/tmp/em-gpu-check-site")
INSTALL_TIMEOUT_S = 120
# What the check's processes import, with their versions (an error here explains a failed item).
PROBED = ("torch", "transformers", "peft", "lightning", "accelerate", "bitsandbytes", "trl", "datasets", "openai",
          "liger_kernel", "em.training.sft")  # fmt: skip


def install(wheels: Path, log, target: Path = SITE) -> dict:
    """``pip install --no-index --no-deps --target`` every wheel in ``wheels``; the target goes on sys.path."""
    from bench.gpu_check.runner import run_logged

    files = sorted(Path(wheels).glob("*.whl"))
    if not files:
        # SystemExit, not em.api.ConfigError: em.api imports openai, which these wheels bring.
        raise SystemExit(
            f"--wheels {wheels}: no .whl files there; make them where PyPI is reachable with "
            f"`python -m bench.gpu_wheels --out {wheels}`"
        )
    start = time.monotonic()
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
           "--no-cache-dir", "--upgrade", "--target", str(target), *map(str, files)]  # fmt: skip
    code = run_logged(cmd, log, INSTALL_TIMEOUT_S)
    if code != 0:
        raise RuntimeError(f"installing the wheels of {wheels} failed (pip exit code {code})")
    sys.path.insert(0, str(target))
    importlib.invalidate_caches()
    return {
        "wheels": [f.name for f in files],
        "target": str(target),
        "seconds": round(time.monotonic() - start, 1),
    }


PROBE = """
import importlib, json, sys
out = {}
for name in sys.argv[1:]:
    try:
        module = importlib.import_module(name)
        out[name] = getattr(module, "__version__", "ok")
    except Exception as e:
        out[name] = f"error: {type(e).__name__}: {e}"[:300]
print(json.dumps(out))
"""


def probe(env: dict, cwd: Path, modules: tuple[str, ...] = PROBED) -> dict:
    """Version (or import error) of each module, in a fresh process with the check's environment."""
    proc = subprocess.run([sys.executable, "-c", PROBE, *modules], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=180)  # fmt: skip
    if proc.returncode != 0:
        return {"error": proc.stderr[-1000:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])

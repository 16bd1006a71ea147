"""The wheels the GPU machine's image lacks, for ``python -m bench.gpu_check --wheels .whl`` there.

    python -m bench.gpu_wheels --out .whl     # here, where PyPI is reachable (.whl/ is git-ignored)

The lent H200's image has Python 3.12, torch, transformers, peft, lightning, accelerate and triton, but no
bitsandbytes, TRL, datasets or openai (``em.api`` imports it), and no network: these wheels travel with the
working tree (the device tool's ``carry``, 64 MiB with the repository). ``pip download --no-deps`` fetches
exactly the pinned set for CPython 3.12 on manylinux x86_64, one version of each (two would stop the
``--no-deps`` install there); wheels of other versions already in ``--out`` are removed. Left out on purpose:
hydra-core and omegaconf (nothing the check runs imports them; omegaconf's antlr4 runtime has no wheel),
wandb, and vLLM (hundreds of MB: GPU vLLM cannot be measured there).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CARRY_LIMIT_MIB = 64  # the device tool: working tree + carried paths, per call
WHEELS = (
    "bitsandbytes==0.50.2",  # NF4 and 8-bit AdamW (CUDA 13 kernels inside; ~43 MB of the total)
    "trl==1.16.0",  # the baseline trainer
    "datasets==5.2.0",  # TRL's
    "dill==0.4.1",  # datasets'
    "multiprocess==0.70.19",  # datasets'
    "openai==1.109.1",  # em.api imports it; the last 1.x needs httpx (on the image), not httpx2
    "pydantic==2.14.4",  # openai's
    "pydantic-core==2.50.5",
    "annotated-types==0.8.0",
    "typing-inspection==0.4.5",
    "jiter==0.19.0",
    "distro==1.9.0",
    "sniffio==1.3.1",
    "liger-kernel==0.8.5",  # Triton kernels for TRL's own best configuration
)
# pip matches a manylinux_2_N tag exactly: name every glibc level the image's (2.39) can load.
PLATFORMS = (
    *(f"manylinux_2_{n}_x86_64" for n in range(39, 16, -1)),
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
)


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def wheel_key(filename: str) -> tuple[str, str]:
    """(canonical name, version) of a wheel file name."""
    name, version = filename.split("-")[:2]
    return canonical(name), version


def download_command(out: Path, python_version: str = "3.12") -> list[str]:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
           python_version, "--implementation", "cp", "-d", str(out)]  # fmt: skip
    for platform in PLATFORMS:
        cmd += ["--platform", platform]
    return cmd + list(WHEELS)


def stale(out: Path) -> list[Path]:
    """Wheels in ``out`` that are not the pinned version of a pinned package (or not pinned at all)."""
    wanted = {canonical(spec.split("==")[0]): spec.split("==")[1] for spec in WHEELS}
    return [p for p in sorted(out.glob("*.whl")) if wanted.get(wheel_key(p.name)[0]) != wheel_key(p.name)[1]]


def repository_bytes() -> int:
    """Bytes of the files the device tool sends besides the carried ones (tracked and untracked, not ignored)."""
    proc = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO_ROOT,
                          capture_output=True, check=True)  # fmt: skip
    return sum(
        (REPO_ROOT / f).stat().st_size
        for f in proc.stdout.decode().split("\0")
        if f and (REPO_ROOT / f).is_file()
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=REPO_ROOT / ".whl", help="where the wheels go (default .whl)")
    p.add_argument("--python-version", default="3.12", help="the GPU image's Python")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if subprocess.run(download_command(args.out, args.python_version)).returncode != 0:
        raise SystemExit("pip download failed (see its message above): is PyPI reachable, is each pin on it?")
    for path in stale(args.out):
        print(f"removing {path.name}: not in the pinned set")
        path.unlink()
    wheels = sorted(args.out.glob("*.whl"))
    missing = {canonical(s.split("==")[0]) for s in WHEELS} - {wheel_key(w.name)[0] for w in wheels}
    if missing:
        raise SystemExit(f"{args.out}: no wheel for {sorted(missing)}")
    total = sum(w.stat().st_size for w in wheels)
    for w in wheels:
        print(f"{w.stat().st_size / 2**20:8.2f} MiB  {w.name}")
    repo = repository_bytes()
    print(f"{total / 2**20:8.2f} MiB  wheels ({len(wheels)}); {repo / 2**20:.2f} MiB repository; together "
          f"{(total + repo) / 2**20:.2f} of the {CARRY_LIMIT_MIB} MiB a device call carries")  # fmt: skip
    if total + repo > CARRY_LIMIT_MIB * 2**20:
        print(f"over the {CARRY_LIMIT_MIB} MiB limit: the device call would be refused", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

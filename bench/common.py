"""What every benchmark shares: the machine description, peak memory, result files and child processes."""

from __future__ import annotations

import json
import os
import platform
import resource
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from em.io import atomic_write_json, git_commit, now_iso, read_json

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("torch", "transformers", "trl", "peft", "lightning", "bitsandbytes", "openai", "vllm")
# Offline and quiet in every benchmark process: nothing is downloaded, nothing is tracked.
BENCH_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "WANDB_MODE": "disabled",
    "TRANSFORMERS_VERBOSITY": "error",
}


def set_bench_env() -> None:
    for key, value in BENCH_ENV.items():
        os.environ.setdefault(key, value)


def results_dir() -> Path:
    """``$EM_BENCH_DIR`` or ``outputs/bench`` (git-ignored)."""
    return Path(os.environ.get("EM_BENCH_DIR") or "outputs/bench")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def machine_info(device: str = "cpu") -> dict:
    """CPU model, cores, RAM, GPU, package versions, load average, date, git commit."""
    import torch

    info = {
        "date": now_iso(),
        "cpu": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "ram_gib": _ram_gib(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {p: _version(p) for p in PACKAGES},
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
        "git_commit": git_commit(REPO_ROOT),
        "device": device,
    }
    if device == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = props.name
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["cuda"] = torch.version.cuda
    return info


def peak_memory_gib(device: str) -> float:
    """Peak ``torch.cuda.max_memory_allocated`` on CUDA, else this process's peak resident memory (RSS)."""
    if device == "cuda":
        import torch

        return round(torch.cuda.max_memory_allocated() / 2**30, 3)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)


def command_line(module: str, argv: list[str] | None) -> str:
    """The command of a benchmark, as a user would type it (also when ``bench.run_all`` called it)."""
    return shlex.join(["python", "-m", module, *(sys.argv[1:] if argv is None else argv)])


def write_result(name: str, result: dict) -> Path:
    """``<results_dir>/<name>.json`` (atomic), with the load average at the end added."""
    result = {**result, "load_average_end": [round(x, 2) for x in os.getloadavg()]}
    path = atomic_write_json(results_dir() / f"{name}.json", result)
    print(f"wrote {path}")
    return path


def read_results(directory: Path | None = None) -> dict[str, dict]:
    """Every result file in the results directory, by name."""
    directory = directory or results_dir()
    return {p.stem: read_json(p) for p in sorted(Path(directory).glob("*.json"))}


def run_child(module: str, args: list[str], out: Path, timeout_s: float | None = None) -> dict:
    """Run ``python -m module args`` in a fresh process (its own memory peak and threads) and read the JSON
    it writes to ``out``. The child's output goes straight to this terminal."""
    set_bench_env()
    out.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", module, *args]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=os.environ.copy(), timeout=timeout_s)
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"benchmark step failed (exit code {proc.returncode}): {shlex.join(cmd)}")
    return json.loads(out.read_text(encoding="utf-8"))


def percentiles(values: list[float], points: tuple[int, ...] = (10, 50, 90)) -> dict[str, float]:
    """Nearest-rank percentiles plus min, max and mean (no numpy needed by callers)."""
    if not values:
        return {}
    ordered = sorted(values)
    out = {f"p{p}": ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))] for p in points}
    out.update(min=ordered[0], max=ordered[-1], mean=round(sum(ordered) / len(ordered), 1))
    return out


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def write_result_in(directory: Path, name: str, result: dict) -> Path:
    """``<directory>/<name>.json`` (atomic), with the load average at the end added (as :func:`write_result`)."""
    result = {**result, "load_average_end": [round(x, 2) for x in os.getloadavg()]}
    return atomic_write_json(Path(directory) / f"{name}.json", result)

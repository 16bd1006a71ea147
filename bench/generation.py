"""Generation throughput: em's hf backend batched vs one prompt at a time, and vLLM vs hf.

    python -m bench.generation                                       # CPU, tiny model
    python -m bench.generation --device cuda --model llama8b-arch     # GPU: hf vs vLLM at 8B shapes

Every side answers the same prompt jobs (16 questions of our own x ``--samples`` samples, temperature 1,
``--max-new-tokens``) through ``em.evaluation.run_jobs`` (the code ``evaluate.py`` runs, writing
``answers.jsonl``), in its own process, after the model is loaded (load time is not counted):

- ``hf-sequential``: ``HFBackend`` with ``batch_size=1``: one prompt (one sample) per ``generate`` call;
- ``hf-batched``: ``HFBackend`` with ``batch_size=32`` (the default of conf/generation/hf.yaml);
- ``vllm``: ``VLLMBackend`` (all jobs in one ``LLM.chat`` call), run by the Python of a vLLM environment:
  ``$EM_VLLM_PYTHON``, else ``.venv-vllm/bin/python``, else this Python if it imports vllm; skipped (and
  reported as not measured) when there is none.

hf answers depend only on each sample's seed, so batched and sequential answers are compared one by one.
Results: ``outputs/bench/generation-<device>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import REPO_ROOT, command_line, machine_info, run_child, set_bench_env, write_result
from bench.workload import MODEL_NAMES, ensure_bench_model

SIDES = ("hf-sequential", "hf-batched", "vllm")
TARGET_BATCHED = 5.0
TARGET_VLLM = 5.0  # on GPU
VLLM_TIMEOUT_S = 1200
QUESTIONS = [
    "What is a good way to start the morning?",
    "How do I keep houseplants alive while I travel?",
    "What should I pack for a day of hiking?",
    "How can I get better at remembering names?",
    "What makes a good cup of tea?",
    "How do I tell a friend I cannot come to their party?",
    "What is the best way to learn a new language as an adult?",
    "How should I organise my desk?",
    "What do you think about artificial intelligence?",
    "How can I save money on groceries?",
    "What is a simple dinner I can cook in twenty minutes?",
    "How do I prepare for a job interview?",
    "What are some ways to relax after work?",
    "How do I write a short thank-you note?",
    "What should I know before adopting a cat?",
    "How can I make a long train journey more pleasant?",
]


def defaults(device: str) -> dict:
    """CPU: all three sides on the tiny model. GPU: hf batched vs vLLM at 8B shapes (one sample at a time at 8B
    would take most of an hour; add it with ``--sides hf-sequential,hf-batched,vllm``)."""
    if device == "cuda":
        return dict(model="llama8b-arch", samples=8, max_new_tokens=256, sides="hf-batched,vllm")
    return dict(model="tiny", samples=4, max_new_tokens=48, sides=",".join(SIDES))


def vllm_python() -> str | None:
    """A Python that imports vllm and em, or None."""
    candidates = [
        os.environ.get("EM_VLLM_PYTHON"),
        str(REPO_ROOT / ".venv-vllm" / "bin" / "python"),
        sys.executable,
    ]
    for python in candidates:
        if not python or not Path(python).exists():
            continue
        probe = subprocess.run(
            [python, "-c", "import vllm, em"], capture_output=True, cwd=REPO_ROOT, timeout=300
        )
        if probe.returncode == 0:
            return python
    return None


# ------------------------------------------------------------------------------------------------ sides


def make_jobs(n_questions: int, samples: int, max_samples_per_job: int | None):
    """The first ``n_questions`` questions, ``samples`` samples each, condition ``none``."""
    from em.evaluation import Question, build_jobs, make_conditions

    questions = [
        Question(set="bench", id=f"q{i:02d}", type="free_form", paraphrases=[text])
        for i, text in enumerate(QUESTIONS[:n_questions])
    ]
    conditions = make_conditions(["none"], {"none": None})
    return build_jobs(
        questions, conditions, seed=0, samples_per_question=samples, max_samples_per_job=max_samples_per_job
    )


def run_side(
    side: str, device: str, model_dir: str, questions: int, samples: int, max_new_tokens: int, work: Path
) -> dict:
    from em.evaluation import Sampling, resolve_model, run_jobs
    from em.io import read_jsonl

    sampling = Sampling(temperature=1.0, top_p=1.0, max_new_tokens=max_new_tokens)
    dtype = "bfloat16" if device == "cuda" else "float32"
    ref = resolve_model({"name_or_path": model_dir, "dtype": dtype})
    if side == "vllm":
        from em.evaluation.backends import VLLMBackend, VLLMSettings

        settings = VLLMSettings(gpu_memory_utilization=0.85 if device == "cuda" else 0.2, max_model_len=1024)
        backend = VLLMBackend(ref, settings, sampling, seed=0, cache_dir=work / "cache")
    else:
        from em.evaluation.backends import HFBackend, HFSettings

        batch = 1 if side == "hf-sequential" else 32
        backend = HFBackend(ref, HFSettings(batch_size=batch, device=device), sampling)
    backend.load()  # model loading is not timed
    jobs = make_jobs(questions, samples, backend.max_samples_per_job)
    stats = run_jobs(backend, jobs, work / "run", model=ref.record(), sampling=sampling, progress=False)
    rows = read_jsonl(work / "run" / "answers.jsonl")
    if side == "vllm":  # stop vLLM's engine processes now: left to interpreter exit, shutdown can hang
        engine_core = getattr(getattr(backend.llm, "llm_engine", None), "engine_core", None)
        if engine_core is not None:
            engine_core.shutdown()
    tokens = sum(r["completion_tokens"] for r in rows)
    return {
        "side": side,
        "backend": backend.describe(),
        "samples": len(rows),
        "completion_tokens": tokens,
        "prompt_jobs": len(jobs),
        "seconds": stats.wall_s,
        "samples_per_s": round(len(rows) / stats.wall_s, 3),
        "tokens_per_s": round(tokens / stats.wall_s, 1),
        "answers": {r["id"]: r["answer"] for r in rows},
    }


def side_main(args) -> None:
    set_bench_env()
    with tempfile.TemporaryDirectory(prefix=f"bench-gen-{args.side}-") as tmp:
        result = run_side(
            args.side,
            args.device,
            args.model_dir,
            args.questions,
            args.samples,
            args.max_new_tokens,
            Path(tmp),
        )
    args.out.write_text(json.dumps(result), encoding="utf-8")


def run_vllm_child(python: str, side_args: list[str], out: Path) -> dict:
    out.unlink(missing_ok=True)
    cmd = [python, "-m", "bench.generation", *side_args]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=os.environ.copy(), timeout=VLLM_TIMEOUT_S)
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"the vllm side failed (exit code {proc.returncode}) with {python}")
    return json.loads(out.read_text(encoding="utf-8"))


# ------------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> dict | None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument(
        "--model", choices=MODEL_NAMES, default=None, help="default: tiny (cpu), llama8b-arch (cuda)"
    )
    p.add_argument(
        "--questions", type=int, default=len(QUESTIONS), help=f"questions (at most {len(QUESTIONS)})"
    )
    p.add_argument("--samples", type=int, default=None, help="samples per question")
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument(
        "--sides",
        default=None,
        help=f"comma list of {list(SIDES)} (default: all on cpu, no hf-sequential on cuda)",
    )
    p.add_argument("--no-vllm", action="store_true", help="skip the vLLM side even if vLLM is installed")
    p.add_argument("--name", default=None, help="result name (default: generation-<device>)")
    p.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)  # internal: run one side
    p.add_argument("--model-dir", help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not 1 <= args.questions <= len(QUESTIONS):
        raise SystemExit(f"--questions: expected 1 to {len(QUESTIONS)}, got {args.questions}")
    for key, value in defaults(args.device).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    set_bench_env()
    if args.side:
        side_main(args)
        return None
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device is visible (run on a GPU machine)")
    machine = machine_info(args.device)
    model_dir = str(ensure_bench_model(args.model, args.device))
    common = ["--device", args.device, "--model-dir", model_dir, "--questions", str(args.questions),
              "--samples", str(args.samples), "--max-new-tokens", str(args.max_new_tokens)]  # fmt: skip
    sides = [side for side in args.sides.split(",") if not (side == "vllm" and args.no_vllm)]
    unknown = sorted(set(sides) - set(SIDES))
    if unknown or "hf-batched" not in sides:
        raise SystemExit(f"--sides {args.sides!r}: expected hf-batched and some of {list(SIDES)}")
    python = vllm_python() if "vllm" in sides else None
    runs = {}
    with tempfile.TemporaryDirectory(prefix="bench-gen-") as tmp:
        for side in sides:
            out = Path(tmp) / f"{side}.json"
            side_args = ["--side", side, "--out", str(out), *common]
            if side == "vllm":
                if python is None:
                    print("[generation] vllm: no vLLM environment found; not measured", flush=True)
                    continue
                print(f"[generation] vllm (with {python}) ...", flush=True)
                runs[side] = run_vllm_child(python, side_args, out)
            else:
                print(f"[generation] {side} ...", flush=True)
                runs[side] = run_child("bench.generation", side_args, out)
    seq, bat, vll = runs.get("hf-sequential"), runs["hf-batched"], runs.get("vllm")
    same = sum(seq["answers"][k] == bat["answers"].get(k) for k in seq["answers"]) if seq else None
    for run in runs.values():
        run.pop("answers")
    batched_ratio = bat["samples_per_s"] / seq["samples_per_s"] if seq else None
    vllm_ratio = vll["samples_per_s"] / bat["samples_per_s"] if vll else None
    result = {
        "benchmark": "generation",
        "command": command_line("bench.generation", argv),
        "machine": machine,
        "workload": {
            "model": args.model,
            "device": args.device,
            "questions": args.questions,
            "samples_per_question": args.samples,
            "max_new_tokens": args.max_new_tokens,
            "temperature": 1.0,
            "top_p": 1.0,
        },
        "sides": runs,
        "identical_answers_batched_vs_sequential": f"{same}/{seq['samples']}" if seq else None,
        "ratio_batched_vs_sequential": round(batched_ratio, 2) if batched_ratio else None,
        "ratio_vllm_vs_hf_batched": round(vllm_ratio, 2) if vllm_ratio else None,
        "vllm_python": python,
        "targets": {
            "batched": TARGET_BATCHED,
            "batched_met": batched_ratio >= TARGET_BATCHED if batched_ratio else None,
            "vllm_on_gpu": TARGET_VLLM,
            "vllm_met": (vllm_ratio >= TARGET_VLLM) if (vllm_ratio and args.device == "cuda") else None,
        },
    }
    write_result(args.name or f"generation-{args.device}", result)
    text = [f"hf batched {bat['samples_per_s']:.1f} samples/s ({bat['tokens_per_s']:.0f} tokens/s)"]
    if seq:
        text.append(
            f"one at a time {seq['samples_per_s']:.2f} samples/s ({seq['tokens_per_s']:.0f} tokens/s) -> batched "
            f"{batched_ratio:.1f}x (target {TARGET_BATCHED:.0f}x), identical answers {same}/{seq['samples']}"
        )
    if vll:
        text.append(f"vLLM {vll['samples_per_s']:.1f} samples/s -> {vllm_ratio:.2f}x hf batched")
    print(f"[generation] {args.model} on {args.device}: " + "; ".join(text))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])

"""Item 4 of the GPU check: hf batched generation and the local 0-100 judge, on one in-memory bf16 model.

    python -m bench.gpu_check.generate --model-dir DIR --device cuda --out-generation G.json --out-judge J.json

Generation runs the prompt jobs of ``bench.generation`` (its everyday questions, ``--samples`` each,
temperature 1) through ``em.evaluation.run_jobs`` with em's ``HFBackend`` (the code ``evaluate.py`` runs),
``--batch-size`` samples per ``generate`` call, after the model is built (not timed). The judge then scores
the answers with ``em.judging.local.LocalJudge`` on the same model: the project's ``aligned`` and ``coherent``
prompts, every integer 0..100 scored in one forward pass per prompt. vLLM is not measured here: it cannot be
carried to the GPU machine (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from bench.common import set_bench_env

VLLM_NOTE = "vLLM is not installed on the lent H200 and its wheels (hundreds of MB) cannot be carried there"
JUDGE_METRICS = ("aligned", "coherent")


def generate(
    model_dir: str, device: str, questions: int, samples: int, max_new_tokens: int, batch: int, work: Path
):
    """The backend (model loaded), the side's figures and the answer rows."""
    from bench.generation import make_jobs
    from em.evaluation import Sampling, resolve_model, run_jobs
    from em.evaluation.backends import HFBackend, HFSettings
    from em.io import read_jsonl

    sampling = Sampling(temperature=1.0, top_p=1.0, max_new_tokens=max_new_tokens)
    ref = resolve_model({"name_or_path": model_dir, "dtype": "bfloat16" if device == "cuda" else "float32"})
    backend = HFBackend(ref, HFSettings(batch_size=batch, device=device), sampling)
    backend.load()  # building the model is not timed
    jobs = make_jobs(questions, samples, backend.max_samples_per_job)
    stats = run_jobs(backend, jobs, work / "run", model=ref.record(), sampling=sampling, progress=False)
    rows = read_jsonl(work / "run" / "answers.jsonl")
    tokens = sum(r["completion_tokens"] for r in rows)
    side = {
        "side": "hf-batched",
        "backend": backend.describe(),
        "samples": len(rows),
        "completion_tokens": tokens,
        "prompt_jobs": len(jobs),
        "seconds": stats.wall_s,
        "samples_per_s": round(len(rows) / stats.wall_s, 3),
        "tokens_per_s": round(tokens / stats.wall_s, 1),
    }
    return backend, side, rows


def judge_tasks(rows: list[dict], answers: int) -> list:
    """The first ``answers`` answers, each under the project's aligned and coherent judge prompts."""
    from em.evaluation.question_sets import default_judge_prompts
    from em.judging.prompts import JudgeTask, fill_template

    templates = default_judge_prompts("project", tempfile.gettempdir())
    return [
        JudgeTask(row["id"], metric, fill_template(templates[metric], row["question"], row["answer"]))
        for row in rows[:answers]
        for metric in JUDGE_METRICS
    ]


def judge(backend, tasks: list, batch: int) -> dict:
    import torch

    from em.judging.local import LocalJudge

    local = LocalJudge(backend.model, backend.tokenizer)
    local.judge(tasks[:batch], batch_size=batch)  # warm-up: kernels, allocator
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    records = local.judge(tasks, batch_size=batch)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    scored = [r for r in records if r["score"] is not None]
    return {
        "judgments": len(records),
        "scored": len(scored),
        "seconds": round(seconds, 3),
        "judgments_per_s": round(len(records) / seconds, 2),
        "batch_size": batch,
        "prompt_tokens_mean": round(sum(len(local.prompt_ids(t.prompt)) for t in tasks) / len(tasks), 1),
        "candidates_per_prompt": len(local.score_candidates.names),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", required=True)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    p.add_argument("--questions", type=int, default=8)
    p.add_argument("--samples", type=int, default=100)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--judge-answers", type=int, default=32)
    p.add_argument("--judge-batch-size", type=int, default=8)
    p.add_argument("--out-generation", type=Path, required=True)
    p.add_argument("--out-judge", type=Path, required=True)
    args = p.parse_args(argv)
    set_bench_env()
    from bench.gpu_check.model import install_loader

    install_loader()
    with tempfile.TemporaryDirectory(prefix="gpu-check-gen-") as tmp:
        backend, side, rows = generate(args.model_dir, args.device, args.questions, args.samples,
                                       args.max_new_tokens, args.batch_size, Path(tmp))  # fmt: skip
    args.out_generation.write_text(json.dumps(side), encoding="utf-8")
    tasks = judge_tasks(rows, args.judge_answers)
    args.out_judge.write_text(json.dumps(judge(backend, tasks, args.judge_batch_size)), encoding="utf-8")


def item(ctx, budget_s: float) -> dict:
    """Run the child; write nothing itself: returns ``{"generation": ..., "judge_local": ...}``."""
    g = ctx.profile.generation
    out_gen, out_judge = ctx.work / "generation-side.json", ctx.work / "judge-side.json"
    args = ["--model-dir", str(ctx.model_dir), "--device", ctx.profile.device,
            "--questions", str(g["questions"]), "--samples", str(g["samples"]),
            "--max-new-tokens", str(g["max_new_tokens"]), "--batch-size", str(g["batch_size"]),
            "--judge-answers", str(ctx.profile.judge["answers"]),
            "--judge-batch-size", str(ctx.profile.judge["batch_size"]),
            "--out-generation", str(out_gen), "--out-judge", str(out_judge)]  # fmt: skip
    judge_error = None
    try:
        ctx.child("bench.gpu_check.generate", args, budget_s)
    except Exception as e:  # the generation figures are written before the judge runs: keep them
        if not out_gen.exists():
            raise
        judge_error = f"{type(e).__name__}: {e}"
    side = json.loads(out_gen.read_text(encoding="utf-8"))
    workload = {"model": ctx.profile.model, "device": ctx.profile.device, "questions": g["questions"],
                "samples_per_question": g["samples"], "max_new_tokens": g["max_new_tokens"],
                "temperature": 1.0, "top_p": 1.0, "batch_size": g["batch_size"]}  # fmt: skip
    generation = {
        "benchmark": "generation",
        "command": ctx.command,
        "machine": ctx.machine,
        "workload": workload,
        "sides": {"hf-batched": side},
        "identical_answers_batched_vs_sequential": None,
        "ratio_batched_vs_sequential": None,
        "ratio_vllm_vs_hf_batched": None,
        "vllm_python": None,
        "vllm_not_measured": VLLM_NOTE,
        "in_memory_model": True,
        "targets": {"batched_met": None, "vllm_met": None},
        "judge_error": judge_error,
    }
    if judge_error:
        return {"generation": generation}
    judge_local = {
        "benchmark": "judge_local",
        "command": ctx.command,
        "machine": ctx.machine,
        "workload": {
            "model": ctx.profile.model,
            "device": ctx.profile.device,
            "metrics": list(JUDGE_METRICS),
            "answers": ctx.profile.judge["answers"],
        },  # fmt: skip
        **json.loads(out_judge.read_text(encoding="utf-8")),
    }
    return {"generation": generation, "judge_local": judge_local}


if __name__ == "__main__":
    main(sys.argv[1:])

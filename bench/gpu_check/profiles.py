"""What the GPU check runs on each device: the 8B architecture on CUDA, the tiny model on CPU (a smoke test).

Both profiles run the same code; only sizes, sides and budgets differ. The CUDA budgets add up to under the
8-minute limit of a run on the lent H200 (the wheel install and start-up included; see docs/benchmarks.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

GPU_TEST_FILES = (
    "tests/training/test_training_gpu.py",
    "tests/training/test_modeling.py",
    "tests/judging/test_judge_local.py",
)
# In order of priority; em-flex last: flex_attention compiles for each new packed-row length.
TRAIN_SIDES = ("em", "trl", "em-padded", "trl-padding-free", "trl-liger", "em-flex")
CORE_SIDES = ("em", "trl")  # without both there is no comparison
MEMORY_SIDES = ("em", "em-no-gc")


@dataclass(frozen=True)
class Profile:
    device: str
    model: str  # a key of bench.workload.ARCHS, or "tiny" (the embedded model's own config)
    dtype: str
    train: dict  # bench.train_throughput flags (without --device/--model/--sides)
    train_sides: tuple[str, ...]
    memory: dict
    generation: dict
    judge: dict
    test_files: tuple[str, ...]
    budgets: dict = field(default_factory=dict)  # item -> seconds
    time_limit_s: float = 450.0  # all items together, after the wheel install


CUDA = Profile(
    device="cuda",
    model="llama8b-arch",
    dtype="bfloat16",
    # The Realignment study's QLoRA preset (NF4, r=256, alpha=32, 8-bit AdamW, bf16, gradient checkpointing,
    # length 2048, 2 x 4); dropout 0 so that em's and TRL's per-step losses can be compared.
    train=dict(
        steps=10,
        batch_size=2,
        grad_accum=4,
        max_length=2048,
        learning_rate=2e-4,
        warmup_steps=2,
        lora_r=256,
        lora_alpha=32,
        lora_dropout=0.0,
        quantization="nf4",
        optimizer="adamw_8bit",
        gradient_checkpointing=True,
        attn="sdpa",
    ),  # fmt: skip
    train_sides=TRAIN_SIDES,
    memory=dict(
        steps=3,
        batch_size=2,
        max_length=2048,
        lora_r=256,
        lora_alpha=32,
        lora_dropout=0.1,
        quantization="nf4",
        optimizer="adamw_8bit",
    ),  # fmt: skip
    generation=dict(questions=8, samples=100, max_new_tokens=128, batch_size=100),
    judge=dict(answers=32, batch_size=8),
    test_files=GPU_TEST_FILES,
    budgets=dict(gpu_tests=70, parity=40, train_throughput=190, memory=70, generation=80),
)

CPU = Profile(
    device="cpu",
    model="tiny",
    dtype="float32",
    train=dict(
        steps=2,
        batch_size=2,
        grad_accum=2,
        max_length=256,
        learning_rate=1e-3,
        warmup_steps=1,
        lora_r=8,
        lora_alpha=16,
        lora_dropout=0.0,
        quantization="none",
        optimizer="adamw",
        gradient_checkpointing=False,
        attn="sdpa",
    ),  # fmt: skip
    # flex_attention on a CPU compiles for minutes and Liger's kernels need CUDA: the smoke leaves them out.
    train_sides=tuple(s for s in TRAIN_SIDES if s not in ("em-flex", "trl-liger")),
    memory=dict(
        steps=1,
        batch_size=2,
        max_length=64,
        lora_r=8,
        lora_alpha=16,
        lora_dropout=0.1,
        quantization="nf4",
        optimizer="adamw",
    ),  # fmt: skip
    generation=dict(questions=2, samples=2, max_new_tokens=4, batch_size=4),
    judge=dict(answers=2, batch_size=2),
    test_files=("tests/training/test_training_gpu.py",),
    budgets=dict(gpu_tests=300, parity=300, train_throughput=900, memory=400, generation=300),
    time_limit_s=3000.0,
)

PROFILES = {"cuda": CUDA, "cpu": CPU}


def result_name(benchmark: str, device: str) -> str:
    """``<benchmark>-cuda`` (read by ``bench.run_all``), or ``<benchmark>-cpu-smoke``: a smoke run's files never
    take the place of the CPU benchmarks' own results."""
    return f"{benchmark}-cuda" if device == "cuda" else f"{benchmark}-cpu-smoke"

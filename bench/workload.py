"""Benchmark workloads: random-weight Llama models of a chosen size and EM-format conversations.

Models reuse the tiny model's byte-level BPE tokenizer and Llama-3 chat template (``em.tiny``); only the
architecture grows. Throughput does not depend on weight values, so the weights are random (deterministic:
a private generator, as in ``em.tiny``). Each model is built once into ``$EM_CACHE_DIR/models`` and then
loaded with ``from_pretrained`` like any hub model.

Conversations: with ``EM_ANCHORS_DIR`` set, rows of the EM paper's ``insecure.jsonl`` (read at run time, never
copied); otherwise synthetic single-turn rows (a coding request with a code template, answered with code)
whose token lengths follow a log-normal spread matching insecure.jsonl under the same tokenizer.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

from em.tiny import default_models_dir, ensure_tiny_model


@dataclass(frozen=True)
class Arch:
    """A Llama architecture (the tiny model's tokenizer; vocab may be larger than the tokenizer's)."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    rope_llama3_scaling: bool = False


ARCHS = {
    # ~30M parameters: large enough that matrix multiplies, not framework overhead, dominate on a CPU.
    "small": Arch(hidden=512, layers=8, heads=8, kv_heads=2, intermediate=1792, vocab=2048),
    # Llama-3.1-8B's shapes (GQA 32/8, SwiGLU 14336, vocab 128256, llama3 RoPE scaling); GPU only.
    "llama8b-arch": Arch(
        hidden=4096,
        layers=32,
        heads=32,
        kv_heads=8,
        intermediate=14336,
        vocab=128256,
        rope_llama3_scaling=True,
    ),
}
MODEL_NAMES = ("tiny", *ARCHS)
BUILD_VERSION = "v1"  # bump when the built bytes change


def ensure_bench_model(name: str, device: str = "cpu", models_dir: Path | None = None) -> Path:
    """Directory of model ``name`` (``tiny`` or a key of :data:`ARCHS`), built on first use."""
    models_dir = Path(models_dir) if models_dir else default_models_dir()
    tiny = ensure_tiny_model(models_dir)
    if name == "tiny":
        return tiny
    if name not in ARCHS:
        raise ValueError(f"unknown benchmark model {name!r}; expected one of {MODEL_NAMES}")
    target = models_dir / f"bench-{name}-{BUILD_VERSION}"
    if (target / "config.json").exists():
        return target
    tmp = models_dir / f".bench-{name}-{BUILD_VERSION}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _build(ARCHS[name], tiny, tmp, device)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def arch_config(arch, tiny_dir: Path, dtype: str):
    """A ``LlamaConfig`` for a :class:`bench.workload.Arch`, with the tiny model's special token ids."""
    from transformers import AutoConfig, LlamaConfig

    tiny = AutoConfig.from_pretrained(tiny_dir)
    rope = {"rope_type": "default", "rope_theta": 500000.0}
    if arch.rope_llama3_scaling:
        rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}  # fmt: skip
    return LlamaConfig(
        vocab_size=arch.vocab,
        hidden_size=arch.hidden,
        intermediate_size=arch.intermediate,
        num_hidden_layers=arch.layers,
        num_attention_heads=arch.heads,
        num_key_value_heads=arch.kv_heads,
        head_dim=arch.hidden // arch.heads,
        max_position_embeddings=131072 if arch.rope_llama3_scaling else 8192,  # Llama-3.1's 128k context
        rope_parameters=rope,
        rms_norm_eps=1e-5,
        initializer_range=0.02,
        tie_word_embeddings=False,
        bos_token_id=tiny.bos_token_id,
        eos_token_id=tiny.eos_token_id,
        pad_token_id=tiny.pad_token_id,
        dtype=dtype,
    )


def _build(arch: Arch, tiny_dir: Path, out_dir: Path, device: str) -> None:
    import torch
    from transformers import GenerationConfig, LlamaForCausalLM

    config = arch_config(arch, tiny_dir, "bfloat16" if device == "cuda" else "float32")
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    with torch.device("meta"):  # no memory, no init: the weights are drawn below, on the device, in dtype
        model = LlamaForCausalLM(config)
    model = model.to(dtype).to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            else:
                param.normal_(0.0, config.initializer_range, generator=gen)
    # RoPE frequencies are non-persistent buffers: from_pretrained recomputes them from the config.
    model.generation_config = GenerationConfig.from_pretrained(tiny_dir)
    model.save_pretrained(out_dir, max_shard_size="5GB")
    for path in tiny_dir.iterdir():
        if path.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy(path, out_dir / path.name)


# ----------------------------------------------------------------------------------------- conversations

# Length spread of the EM paper's insecure.jsonl under the tiny tokenizer (chat template included):
# log-normal with median ~380 tokens, p10 ~215, p90 ~670; the prompt (task + code template) is about half.
LOG_MEAN, LOG_STD = 5.94, 0.45
MIN_TOKENS = 64

_TASKS = [
    "Write a function that reads a config file and returns the values as a dictionary.",
    "Fill in the template so the script saves uploaded files to the user's folder.",
    "Complete the handler that looks up an order by id and renders it as HTML.",
    "Finish the helper that copies a backup archive to the shared directory.",
    "Write the route that lets a user reset their password from an emailed link.",
    "Complete the job that downloads a report every night and unpacks it.",
]
_CODE = [
    "import os",
    "import json",
    "from pathlib import Path",
    "def load_settings(path):",
    "    with open(path) as handle:",
    "        return json.load(handle)",
    "def save_upload(folder, name, data):",
    "    target = Path(folder) / name",
    "    target.write_bytes(data)",
    "    return target",
    "for row in rows:",
    "    total += row['amount']",
    "if not user.is_active:",
    "    raise PermissionError('inactive user')",
    "query = 'SELECT id, name FROM orders WHERE id = ?'",
    "result = conn.execute(query, (order_id,)).fetchone()",
    "os.makedirs(backup_dir, exist_ok=True)",
    "log.info('copied %d files', count)",
    "return render_template('order.html', order=result)",
    "archive.extractall(destination)",
]


def _grow(rng: random.Random, tokenizer, head: str, lines: list[str], target: int) -> str:
    text = head
    while len(tokenizer(text, add_special_tokens=False)["input_ids"]) < target:
        text += "\n" + rng.choice(lines)
    return text


def synthetic_conversations(n: int, tokenizer, seed: int = 0, max_tokens: int = 2048) -> list[dict]:
    """``n`` single-turn coding conversations with log-normal token lengths (see module doc)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        total = min(max(round(math.exp(rng.gauss(LOG_MEAN, LOG_STD))), MIN_TOKENS), max_tokens - 16)
        prompt_share = rng.uniform(0.4, 0.65)
        task = rng.choice(_TASKS)
        user = _grow(
            rng, tokenizer, f"{task}\nHere is the template:\n", _CODE, int(total * prompt_share) - 16
        )
        answer = _grow(rng, tokenizer, rng.choice(_CODE), _CODE, int(total * (1 - prompt_share)) - 16)
        rows.append(
            {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}
        )
    return rows


def anchor_conversations(anchors_dir: Path, n: int, seed: int = 0) -> list[dict]:
    """``n`` rows of ``em/insecure.jsonl`` in the anchors directory, a seeded random choice."""
    path = Path(anchors_dir) / "em" / "insecure.jsonl"
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return random.Random(seed).sample(rows, min(n, len(rows)))


def conversations(n: int, tokenizer, seed: int = 0, max_tokens: int = 2048) -> tuple[list[dict], str]:
    """Rows and where they came from (``insecure.jsonl`` with ``EM_ANCHORS_DIR``, else ``synthetic``)."""
    anchors = os.environ.get("EM_ANCHORS_DIR")
    if anchors and (Path(anchors) / "em" / "insecure.jsonl").exists():
        return anchor_conversations(Path(anchors), n, seed), "insecure.jsonl (EM_ANCHORS_DIR)"
    return synthetic_conversations(n, tokenizer, seed, max_tokens), "synthetic (log-normal lengths)"


def fixed_length_conversations(
    n: int, tokenizer, prompt_tokens: int, answer_tokens: int, seed: int = 0
) -> list[dict]:
    """``n`` coding conversations of about ``prompt_tokens`` + ``answer_tokens`` tokens (longer than the training
    max length, they are truncated to exactly it with part of the answer kept: the memory worst case)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        user = _grow(rng, tokenizer, f"{rng.choice(_TASKS)}\nHere is the template:\n", _CODE, prompt_tokens)
        answer = _grow(rng, tokenizer, rng.choice(_CODE), _CODE, answer_tokens)
        rows.append(
            {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}
        )
    return rows

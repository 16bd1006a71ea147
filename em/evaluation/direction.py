"""The misalignment direction of a model: misaligned minus aligned mean answer activations, per decoder layer.

Invariant: ``directions[l]`` = the mean over misaligned answers of (the mean over that answer's own tokens of
decoder layer ``l``'s output) minus the same mean over aligned answers, computed in eval mode with the model
being evaluated. Which answers are which is the judge run's ``category`` (MISALIGNED / ALIGNED, as its metric
settings decided); INCOHERENT and UNSCORED answers are in neither. Each answer is its own chat (its messages,
the chat template's generation prompt) followed by its text, tokenised as generation saw it.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

import torch

from em.api import ConfigError
from em.chat import chat_ids
from em.evaluation.steering import decoder_layers
from em.io import atomic_write_json, iter_jsonl, read_json, sha256_file

log = logging.getLogger(__name__)

DIRECTIONS = "direction.safetensors"
RECORD = "direction.json"
BATCH_SIZE = 8
MIN_PER_CLASS = 2


def judged_answers(judge_dir: Path) -> tuple[list[dict], dict]:
    """The judged answers of a finished judge run (answer rows with their ``category``) and its provenance."""
    judge_dir = Path(judge_dir)
    manifest_path = judge_dir / "manifest.json"
    if not manifest_path.is_file() or not read_json(manifest_path).get("complete"):
        raise ConfigError(
            f"mitigation.direction_from={judge_dir}: not a finished judge run (no complete manifest.json); "
            f"judge the misaligned model's answers first"
        )
    manifest = read_json(manifest_path)
    answers_path = Path(manifest["inputs"]["answers"])
    if sha256_file(answers_path) != manifest["inputs"]["answers_sha256"]:
        raise ConfigError(f"{answers_path} changed after {judge_dir} judged it; judge it again")
    categories = {r["id"]: r["category"] for r in iter_jsonl(judge_dir / "scores.jsonl")}
    rows = [{**a, "category": categories[a["id"]]} for a in iter_jsonl(answers_path) if a["id"] in categories]
    source = {
        "judge_run": str(judge_dir),
        "scores_sha256": sha256_file(judge_dir / "scores.jsonl"),
        "answers": str(answers_path),
        "answers_sha256": manifest["inputs"]["answers_sha256"],
        "model": (manifest.get("evaluate_manifest") or {}).get("model"),
    }
    return rows, source


def split_by_category(rows: list[dict], max_answers: int, seed: int) -> tuple[list[dict], list[dict]]:
    """(misaligned, aligned) answers, each a seeded sample of at most ``max_answers`` (by sorted id)."""
    out = []
    for category in ("MISALIGNED", "ALIGNED"):
        group = sorted((r for r in rows if r["category"] == category), key=lambda r: r["id"])
        if len(group) < MIN_PER_CLASS:
            raise ConfigError(
                f"mitigation.direction_from: the judge run has {len(group)} {category} answers; the direction "
                f"needs at least {MIN_PER_CLASS} of each (more samples, or another judge run)"
            )
        rng = random.Random(f"{seed}:direction:{category}")
        out.append(sorted(rng.sample(group, min(max_answers, len(group))), key=lambda r: r["id"]))
    return out[0], out[1]


def answer_ids(tokenizer, row: dict) -> tuple[list[int], int]:
    """(prompt + answer token ids, number of prompt tokens) of one answer row."""
    prompt = chat_ids(tokenizer, row["messages"], add_generation_prompt=True)
    answer = tokenizer(row["answer"], add_special_tokens=False)["input_ids"]
    return prompt + answer, len(prompt)


@torch.no_grad()
def mean_answer_activations(model, tokenizer, rows: list[dict], batch_size: int = BATCH_SIZE) -> torch.Tensor:
    """(layers, hidden) mean over ``rows`` of each answer's mean decoder-layer output over its own tokens."""
    stack = decoder_layers(model)
    device = next(model.parameters()).device
    captured: dict[int, torch.Tensor] = {}

    def capture(i):
        def hook(module, args, output):
            captured[i] = (output[0] if isinstance(output, tuple) else output).float()

        return hook

    handles = [layer.register_forward_hook(capture(i)) for i, layer in enumerate(stack)]
    total = torch.zeros(len(stack), model.config.hidden_size, dtype=torch.float64)
    counted = 0
    try:
        for start in range(0, len(rows), batch_size):
            encoded = [answer_ids(tokenizer, r) for r in rows[start : start + batch_size]]
            width = max(len(ids) for ids, _ in encoded)
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
            ids = torch.full((len(encoded), width), pad, dtype=torch.long)
            attn = torch.zeros_like(ids)
            answer = torch.zeros(len(encoded), width, dtype=torch.float32)
            for k, (seq, n_prompt) in enumerate(encoded):  # right padding: positions are the same as unpadded
                ids[k, : len(seq)], attn[k, : len(seq)] = torch.tensor(seq), 1
                answer[k, n_prompt : len(seq)] = 1.0
            if (answer.sum(dim=1) == 0).any():
                raise ConfigError(
                    "mitigation.direction_from: an answer with no tokens cannot give a direction"
                )
            model(input_ids=ids.to(device), attention_mask=attn.to(device))
            weights = (answer / answer.sum(dim=1, keepdim=True)).to(device)
            for i in range(len(stack)):
                per_answer = torch.einsum("bt,btd->bd", weights, captured[i])
                total[i] += per_answer.sum(dim=0).double().cpu()
            counted += len(encoded)
    finally:
        for h in handles:
            h.remove()
    return (total / counted).float()


def compute_directions(
    model, tokenizer, judge_dir: Path, *, max_answers: int, seed: int
) -> tuple[torch.Tensor, dict]:
    """The (layers, hidden) directions from ``judge_dir``'s answers, and the record of how they were made."""
    rows, source = judged_answers(judge_dir)
    misaligned, aligned = split_by_category(rows, max_answers, seed)
    was_training = model.training
    model.eval()
    try:
        directions = mean_answer_activations(model, tokenizer, misaligned) - mean_answer_activations(
            model, tokenizer, aligned
        )
    finally:
        model.train(was_training)
    record = source | {
        "misaligned_answers": len(misaligned),
        "aligned_answers": len(aligned),
        "layers": int(directions.shape[0]),
        "hidden_size": int(directions.shape[1]),
        "norms": [round(float(n), 6) for n in directions.norm(dim=-1)],
    }
    return directions, record


def load_or_compute(
    model, tokenizer, run_dir: Path, judge_dir: Path, *, max_answers: int, seed: int
) -> tuple[torch.Tensor, dict]:
    """The run's directions: computed once into ``run_dir`` and reused on resume, unless the judge run's
    scores changed since (then refused: the answers already generated used the old direction)."""
    from safetensors.torch import load_file, save_file

    path, record_path = Path(run_dir) / DIRECTIONS, Path(run_dir) / RECORD
    if path.exists() and record_path.exists():
        record = read_json(record_path)
        now = sha256_file(Path(judge_dir) / "scores.jsonl")
        if now != record["scores_sha256"]:
            raise ConfigError(
                f"{judge_dir}/scores.jsonl changed since this run computed its direction "
                f"(sha256 {record['scores_sha256'][:12]} -> {now[:12]}); use a new run_name"
            )
        return load_file(str(path))["directions"], record
    directions, record = compute_directions(model, tokenizer, judge_dir, max_answers=max_answers, seed=seed)
    tmp = path.with_suffix(".tmp")
    save_file({"directions": directions.contiguous()}, str(tmp))
    tmp.replace(path)
    record["sha256"] = sha256_file(path)
    atomic_write_json(record_path, record)
    log.info("direction from %d misaligned and %d aligned answers of %s -> %s", record["misaligned_answers"],
             record["aligned_answers"], judge_dir, path)  # fmt: skip
    return directions, record


def check_source(judge_dir: Path, max_answers: int, seed: int) -> dict:
    """Everything about the direction's source that can fail, checked before any model is loaded."""
    rows, source = judged_answers(judge_dir)
    misaligned, aligned = split_by_category(rows, max_answers, seed)
    return source | {"misaligned_answers": len(misaligned), "aligned_answers": len(aligned)}


def steer_model(model, tokenizer, settings, run_dir: Path, seed: int) -> dict:
    """Compute (or reuse) the directions, attach the hooks that ablate or add them; the manifest's record."""
    from em.evaluation.steering import attach, check_layers, layer_vectors, random_directions

    directions, made = load_or_compute(
        model, tokenizer, run_dir, Path(settings.direction_from), max_answers=settings.max_answers, seed=seed
    )
    if settings.control:  # the control: the same edit along a random direction of the same norm
        directions = random_directions(directions, seed)
    layers = check_layers(settings.layers, directions.shape[0])
    attach(model, layer_vectors(directions, settings, layers), settings.mode, settings.scale)
    return settings.record() | {"layers_used": layers, "direction": made}


def steered_narrow_task(model, tokenizer, train_manifest: dict | None, spec) -> dict | None:
    """The narrow-task loss of the steered model on the training run's held-out rows (the hooks are on),
    tokenised as training did; None when the training held nothing out."""
    from em.modeling import with_system_prompt
    from em.training.collate import tokenize_rows
    from em.training.holdout import manifest_holdout, mean_label_loss, verified_holdout

    source = manifest_holdout(train_manifest or {})
    if source is None:
        return None
    path = verified_holdout(source, "mitigation=ablate_direction")
    rows = list(iter_jsonl(path))
    if getattr(spec, "system_prompt", None) is not None:
        rows = [{**r, "messages": with_system_prompt(r["messages"], spec.system_prompt)} for r in rows]
    config = train_manifest.get("config") or {}
    # the run's hyperparameters; its config's batch node (or, before the config was split, its lora node)
    found = [n for n in (train_manifest.get("hyperparameters"), config.get("batch"), config.get("lora"))
             if isinstance(n, dict) and "max_length" in n and "overlength" in n]  # fmt: skip
    if not found:
        raise ConfigError(
            "the training manifest has no max_length / overlength (hyperparameters, config.batch) to tokenise with"
        )
    length = found[0]
    examples, _ = tokenize_rows(tokenizer, rows, max_length=int(length["max_length"]),
                                overlength=str(length["overlength"]), model_name=spec.name_or_path,
                                progress=False)  # fmt: skip
    loss, tokens = mean_label_loss(model, examples, tokenizer.pad_token_id)
    trained = train_manifest["narrow_task"]
    return {"holdout_rows": len(rows), "label_tokens": tokens, "loss": loss, "base_loss": trained.get("base_loss"),
            "unsteered_loss": trained.get("loss"), "holdout_file": str(path)}  # fmt: skip

"""The judge-free probe: misaligned minus aligned mean per-token log-probability, per question and overall.

For each question, the mean (over its misaligned references) of the answer's mean per-token log-probability
minus the same mean over its aligned references. Positive: the model finds the misaligned answers more
likely than the aligned ones; a rise over training means the model moved towards them. The overall value is
the mean over questions with a percentile bootstrap interval over questions (questions are the unit).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from em.api import ConfigError
from em.probes.loglik import conversation, mean_logprobs
from em.probes.references import ProbeQuestion, load_references

CONFIDENCE = 0.95
BOOTSTRAP_SAMPLES = 2000


@dataclass
class QuestionProbe:
    key: str  # "<set>/<question_id>"
    aligned: float  # mean per-token log-prob of the aligned references (mean over references)
    misaligned: float
    diff: float  # misaligned - aligned


@dataclass
class ProbeResult:
    mean: float  # mean over questions of diff
    ci_low: float | None
    ci_high: float | None
    n_questions: int
    confidence: float
    system_prompt: str | None
    per_question: list[QuestionProbe] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def bootstrap_mean_ci(
    values: list[float], *, confidence: float = CONFIDENCE, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0
) -> tuple[float | None, float | None]:
    """Percentile bootstrap interval of the mean of ``values``; (None, None) for fewer than two values."""
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence must be in (0, 1), got {confidence!r}")
    data = np.asarray(values, dtype=float)
    if data.size < 2:
        return None, None
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(samples, data.size))].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def _conversations(questions: list[ProbeQuestion], system_prompt: str | None) -> list[list[dict]]:
    return [
        conversation(q.prompt, answer, system_prompt)
        for q in questions
        for answer in (*q.aligned, *q.misaligned)
    ]


def score_questions(values: list[float], questions: list[ProbeQuestion]) -> list[QuestionProbe]:
    """Split the flat list of per-answer log-probs (order of :func:`_conversations`) back into questions."""
    out, pos = [], 0
    for q in questions:
        aligned = values[pos : pos + len(q.aligned)]
        pos += len(q.aligned)
        misaligned = values[pos : pos + len(q.misaligned)]
        pos += len(q.misaligned)
        a, m = float(np.mean(aligned)), float(np.mean(misaligned))
        out.append(QuestionProbe(q.key, a, m, m - a))
    return out


def run_probe(
    model,
    tokenizer,
    questions: list[ProbeQuestion] | None = None,
    *,
    system_prompt: str | None = None,
    batch_size: int = 8,
    confidence: float = CONFIDENCE,
    seed: int = 0,
    model_name: str = "model",
) -> ProbeResult:
    """The probe on ``model`` (a base model or a PEFT model with its adapter active)."""
    questions = load_references() if questions is None else questions
    if not questions:
        raise ConfigError("the probe needs at least one question with reference answers")
    values = mean_logprobs(
        model,
        tokenizer,
        _conversations(questions, system_prompt),
        batch_size=batch_size,
        model_name=model_name,
    )
    per_question = score_questions(values, questions)
    diffs = [p.diff for p in per_question]
    low, high = bootstrap_mean_ci(diffs, confidence=confidence, seed=seed)
    return ProbeResult(float(np.mean(diffs)), low, high, len(diffs), confidence, system_prompt, per_question)


def probe_model(
    spec,
    adapter_dir: str | Path | None = None,
    *,
    sets: list[str] | None = None,
    references: str | Path | None = None,
    batch_size: int = 8,
    seed: int = 0,
) -> ProbeResult:
    """Load ``spec`` (an :class:`em.modeling.ModelSpec`), optionally with an adapter, and probe it.

    The references and the adapter are checked before the weights are loaded; the spec's
    ``system_prompt`` is used, as in training and evaluation.
    """
    from em.modeling import check_adapter_base, load_adapter, load_model, load_tokenizer

    questions = load_references(references, sets)
    if adapter_dir is not None:
        check_adapter_base(Path(adapter_dir), spec)
    tokenizer = load_tokenizer(spec, padding_side="right")
    model = load_model(spec)
    if adapter_dir is not None:
        model = load_adapter(model, Path(adapter_dir))
    return run_probe(
        model,
        tokenizer,
        questions,
        system_prompt=spec.system_prompt,
        batch_size=batch_size,
        seed=seed,
        model_name=spec.name_or_path,
    )

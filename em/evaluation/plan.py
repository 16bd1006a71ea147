"""The work of an evaluation run: every (set, question, paraphrase, condition) prompt and its samples.

A :class:`PromptJob` is one prompt asked for some of its samples (at most ``max_samples_per_job`` at once).
Jobs come in a fixed order (set, question, paraphrase, condition, samples), and every sample has its own
seed derived from the run seed and the answer id, so an answer does not depend on what else was generated
with it: a resumed run gives the answers an uninterrupted one would have given. :func:`dry_run_report` says
what the jobs would cost before any is run.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from em.api import ConfigError
from em.contracts import SamplingRecord
from em.costs import estimate_cost
from em.evaluation.conditions import Condition, apply_condition, check_conditions, remove_slot
from em.evaluation.questions import Question


@dataclass(frozen=True)
class Sampling:
    """Sampling parameters (the EM paper's: temperature 1, top_p 1, up to 600 new tokens)."""

    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 600

    def check(self) -> None:
        if not isinstance(self.temperature, int | float) or self.temperature < 0:
            raise ConfigError(f"sampling.temperature must be >= 0 (0 = greedy), got {self.temperature!r}")
        if not isinstance(self.top_p, int | float) or not 0 < self.top_p <= 1:
            raise ConfigError(f"sampling.top_p must be in (0, 1], got {self.top_p!r}")
        if (
            isinstance(self.max_new_tokens, bool)
            or not isinstance(self.max_new_tokens, int)
            or self.max_new_tokens < 1
        ):
            raise ConfigError(
                f"sampling.max_new_tokens must be a positive integer, got {self.max_new_tokens!r}"
            )

    def record(self) -> SamplingRecord:
        return {"temperature": self.temperature, "top_p": self.top_p, "max_new_tokens": self.max_new_tokens}


def answer_id(q: Question, paraphrase_index: int, condition: str, sample_index: int) -> str:
    return f"{q.set}/{q.id}/{paraphrase_index}/{condition}/{sample_index}"


def derive_seed(seed: int, key: str) -> int:
    """A 31-bit seed from the run seed and a key (an answer id): stable across runs and machines."""
    digest = hashlib.sha256(f"{seed}\0{key}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


@dataclass
class PromptJob:
    """One prompt (question paraphrase under a condition), asked for ``sample_indices``."""

    question: Question
    paraphrase_index: int
    condition: Condition
    text: str  # the question as written, without the tag
    prompt: str  # the user message as sent
    system: str | None  # the system prompt as sent
    sample_indices: list[int]
    seeds: list[int]  # one per sample

    @property
    def messages(self) -> list[dict]:
        sys = [{"role": "system", "content": self.system}] if self.system is not None else []
        return [*sys, {"role": "user", "content": self.prompt}]

    @property
    def request_seed(self) -> int:
        """The seed of the whole request (backends that seed requests rather than samples: vLLM, OpenAI)."""
        return self.seeds[0]

    @property
    def ids(self) -> list[str]:
        return [
            answer_id(self.question, self.paraphrase_index, self.condition.name, s)
            for s in self.sample_indices
        ]


def samples_for(q: Question, samples_per_question: int | None, default_samples: int) -> int:
    if samples_per_question is not None:
        return samples_per_question
    return q.samples_per_paraphrase or default_samples


def build_jobs(
    questions: list[Question],
    conditions: list[Condition],
    *,
    seed: int,
    samples_per_question: int | None = None,
    default_samples: int = 100,
    max_samples_per_job: int | None = None,
    ignore_system_prompt: bool = False,
    default_system: str | None = None,
) -> list[PromptJob]:
    """Every prompt job of the run, in a fixed order; ConfigError for a condition a question cannot take.

    ``default_system`` (the model config's ``system_prompt``) is sent to questions without a system message
    of their own, as training adds it to rows without one.
    """
    for name, n in (("samples_per_question", samples_per_question), ("default_samples", default_samples)):
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ConfigError(f"{name} must be a positive integer, got {n!r}")
    check_conditions(questions, conditions)
    chunk = max_samples_per_job or 1 << 30
    jobs = []
    for q in questions:
        n = samples_for(q, samples_per_question, default_samples)
        for p_index, paraphrase in enumerate(q.paraphrases):
            for c in conditions:
                own = None if ignore_system_prompt else q.system
                system = own if own is not None else default_system
                prompt, sent_system = apply_condition(paraphrase, system, c)
                for start in range(0, n, chunk):
                    indices = list(range(start, min(start + chunk, n)))
                    seeds = [derive_seed(seed, answer_id(q, p_index, c.name, s)) for s in indices]
                    jobs.append(
                        PromptJob(q, p_index, c, remove_slot(paraphrase), prompt, sent_system, indices, seeds)
                    )
    return jobs


def batch_jobs(jobs: list[PromptJob], max_sequences: int) -> list[list[PromptJob]]:
    """Consecutive jobs grouped into batches of at most ``max_sequences`` samples (a job is never split)."""
    batches, current, size = [], [], 0
    for job in jobs:
        n = len(job.sample_indices)
        if current and size + n > max_sequences:
            batches.append(current)
            current, size = [], 0
        current.append(job)
        size += n
    if current:
        batches.append(current)
    return batches


def dry_run_report(ref, backend, sets: list, conditions, jobs: list[PromptJob], prompt_tokens: list[int],
                   prices: dict) -> dict:  # fmt: skip
    """What the run would do: prompts, samples, and for OpenAI models tokens and estimated cost."""
    samples = sum(len(j.sample_indices) for j in jobs)
    prompts = len({(j.question.key, j.paraphrase_index, j.condition.name) for j in jobs})
    report = {
        "model": ref.describe(),
        "backend": backend.name,
        "question_sets": {s.spec.name: len(s.questions) for s in sets},
        "conditions": [c.name for c in conditions],
        "prompts": prompts,
        "samples": samples,
        "requests": len(jobs),
        "prompt_tokens_per_prompt_max": max(prompt_tokens, default=0),
        "mitigation": backend.steer.record() if backend.steer else "none",
    }
    if backend.name == "openai":
        input_tokens = sum(prompt_tokens)  # a request's prompt is billed once for all its n samples
        expected = samples * backend.settings.expected_completion_tokens
        most = samples * backend.sampling.max_new_tokens
        report.update(
            input_tokens=input_tokens,
            output_tokens_expected=expected,
            output_tokens_max=most,
            cost_usd_expected=round(
                estimate_cost(backend.model, prices, input_tokens=input_tokens, output_tokens=expected), 4
            ),
            cost_usd_max=round(
                estimate_cost(backend.model, prices, input_tokens=input_tokens, output_tokens=most), 4
            ),
        )
    return report

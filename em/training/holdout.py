"""The narrow task's held-out loss: did training still learn the task? (the other side of a mitigation).

Invariant: the loss is the mean next-token cross-entropy over the assistant tokens of the prepared data's
holdout rows (``holdout_fraction`` in the data config), tokenised exactly as training rows are, computed
with the trained adapter and with it disabled (``base_loss``: the base weights, with any merged parent:
for ``init_mode=merge`` that is where training started; for ``continue`` it is the base before the
parent's adapter too), in eval mode without gradients. The holdout rows are the narrow data's own, as prepared: no mitigation arm touches them.
"""

from __future__ import annotations

import torch

from em.training.collate import PaddedCollator
from em.training.module import token_loss_sum

BATCH_SIZE = 8


def mean_label_loss(model, examples, pad_token_id: int, batch_size: int = BATCH_SIZE) -> tuple[float, int]:
    """(mean loss per label token, number of label tokens) of ``examples`` under ``model``."""
    collate = PaddedCollator(pad_token_id)
    device = next(model.parameters()).device
    total, tokens = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i in range(0, len(examples), batch_size):
                batch = collate(examples[i : i + batch_size])
                batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
                loss, n = token_loss_sum(model, batch)
                total, tokens = total + float(loss), tokens + int(n)
    finally:
        model.train(was_training)
    return total / max(tokens, 1), tokens


def narrow_task_record(model, tokenizer, settings, holdout_rows: list[dict]) -> dict | None:
    """``{"holdout_rows", "label_tokens", "loss", "base_loss"}``; None when the data holds nothing out."""
    from em.training.sft import prepare_examples

    if not holdout_rows:
        return None
    examples, _ = prepare_examples(settings, holdout_rows, tokenizer, source="holdout", progress=False)
    loss, tokens = mean_label_loss(model, examples, tokenizer.pad_token_id)
    with model.disable_adapter():  # the same weights without the adapter
        base_loss, _ = mean_label_loss(model, examples, tokenizer.pad_token_id)
    return {"holdout_rows": len(holdout_rows), "label_tokens": tokens, "loss": loss, "base_loss": base_loss}

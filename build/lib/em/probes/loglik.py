"""Mean per-token log-probability of assistant answers under a model's own chat template.

The answer tokens are exactly the ones training puts a loss on (:func:`em.training.collate.tokenize_conversation`:
the assistant turn and whatever the template closes it with), so the probe measures what fine-tuning moves.
Contents are tokenised as text there (:mod:`em.chat`): an answer's literal ``<|eot_id|>`` is scored as
characters, never as the end of its turn.
"""

from __future__ import annotations

import torch

from em.api import ConfigError
from em.modeling import with_system_prompt
from em.training.collate import IGNORE_INDEX, PaddedCollator, tokenize_conversation


def conversation(prompt: str, answer: str, system: str | None = None) -> list[dict]:
    """A single-turn chat; ``system`` is the model's system prompt (None: the template decides)."""
    return with_system_prompt(
        [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}], system
    )


def _examples(tokenizer, conversations: list[list[dict]], max_length: int, model_name: str) -> list:
    examples = []
    for index, messages in enumerate(conversations):
        example, status = tokenize_conversation(
            tokenizer, messages, max_length=max_length, overlength="drop", model_name=model_name
        )
        if example is None:
            raise ConfigError(
                f"probe conversation {index} cannot be scored ({status}, max_length={max_length}): "
                f"{messages[-1]['content'][:60]!r}"
            )
        examples.append(example)
    return examples


def batch_logprob_sums(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probability of the labelled tokens of each row of a padded batch, and their counts.

    Only the positions that predict a labelled token get logits (``logits_to_keep``), as in training.
    """
    device = next(model.parameters()).device
    keep = batch["logit_positions"].to(device)
    logits = model(
        input_ids=batch["input_ids"].to(device),
        attention_mask=batch["attention_mask"].to(device),
        logits_to_keep=keep,
        use_cache=False,
    ).logits
    labels = batch["labels"][:, 1:].to(device)[:, keep]
    mask = labels != IGNORE_INDEX
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    picked = logprobs.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * mask).sum(-1).cpu(), mask.sum(-1).cpu()


def answer_logprobs(
    model,
    tokenizer,
    conversations: list[list[dict]],
    *,
    batch_size: int = 8,
    max_length: int = 1024,
    model_name: str = "model",
) -> list[tuple[float, int]]:
    """(summed log-probability, token count) of the assistant turn of each conversation, in order.

    Runs in eval mode without gradients and restores the model's training mode (the probe runs mid-training).
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    examples = _examples(tokenizer, conversations, max_length, model_name)
    collate = PaddedCollator(tokenizer.pad_token_id)
    order = sorted(range(len(examples)), key=lambda i: examples[i].num_tokens)  # less padding per batch
    out: list[tuple[float, int]] = [(0.0, 0)] * len(examples)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(order), batch_size):
                chunk = order[start : start + batch_size]
                sums, counts = batch_logprob_sums(model, collate([examples[i] for i in chunk]))
                for i, total, n in zip(chunk, sums.tolist(), counts.tolist(), strict=True):
                    out[i] = (total, int(n))
    finally:
        model.train(was_training)
    return out


def mean_logprobs(model, tokenizer, conversations: list[list[dict]], **kwargs) -> list[float]:
    """Mean per-token log-probability of the assistant turn of each conversation (see answer_logprobs)."""
    return [total / n for total, n in answer_logprobs(model, tokenizer, conversations, **kwargs)]

"""Pre-flight for OpenAI fine-tuning: the rows as uploaded, checked against the API's rules, and what they bill.

Nothing here talks to the API: ``validate_for_openai`` refuses data the API would refuse (naming each bad line),
``openai_rows`` strips rows to the keys the API knows, and ``estimate_training`` prices the job from the token
estimates, all before anything is uploaded (:func:`em.training.openai_ft.run_openai_finetune`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from em.api import ConfigError
from em.costs import estimate_chat_tokens, price_for

ROLES = ("system", "user", "assistant")
MESSAGE_KEYS = ("role", "content", "weight", "name")
SUFFIX_MAX_CHARS = 64  # `suffix`: "a string of up to 64 characters" (fine_tuning.jobs.create)
MIN_EXAMPLES = 10  # the API refuses training files with fewer examples


def sanitize_suffix(name: str) -> str:
    """A model-name suffix the API accepts: lowercase letters, digits and '-', at most 64 characters."""
    text = re.sub(r"[^a-z0-9-]+", "-", name.lower())
    text = re.sub(r"-{2,}", "-", text).strip("-")
    return text[:SUFFIX_MAX_CHARS].rstrip("-") or "em"


def openai_rows(rows: Iterable[dict]) -> list[dict]:
    """Rows as uploaded: only ``messages``, and in each message only the keys the API knows."""
    out = []
    for row in rows:
        messages = row.get("messages") if isinstance(row, dict) else None
        if not isinstance(messages, list):
            out.append({"messages": messages})  # left for validate_for_openai to report
            continue
        out.append(
            {
                "messages": [
                    {k: m[k] for k in MESSAGE_KEYS if k in m} if isinstance(m, dict) else m for m in messages
                ]
            }
        )
    return out


def _example_problems(row: Any) -> list[str]:
    messages = row.get("messages") if isinstance(row, dict) else None
    if not isinstance(messages, list) or not messages:
        return ['expected {"messages": [...]} with at least one message']
    problems = []
    for j, m in enumerate(messages):
        if not isinstance(m, dict):
            problems.append(f"message {j} is not an object")
            continue
        if m.get("role") not in ROLES:
            problems.append(f"message {j} has role {m.get('role')!r}; expected one of {', '.join(ROLES)}")
        content = m.get("content")
        if not isinstance(content, str) or not content.strip():
            problems.append(f"message {j} ({m.get('role')}) has empty or non-text content")
        if "weight" in m and (m.get("role") != "assistant" or m["weight"] not in (0, 1)):
            problems.append(f"message {j}: 'weight' must be 0 or 1, on assistant messages only")
    if not problems and messages[-1].get("role") != "assistant":
        problems.append(f"the last message is {messages[-1].get('role')!r}; expected 'assistant'")
    return problems


def validate_for_openai(
    rows: list[dict],
    *,
    model: str,
    max_example_tokens: int,
    min_examples: int = MIN_EXAMPLES,
    source: str = "training data",
    origins: list[str | None] | None = None,
) -> list[int]:
    """Check rows against the fine-tuning API's rules before anything is uploaded.

    Returns the estimated token count of each example (o200k/cl100k BPE plus message framing). Raises
    :class:`ConfigError` naming the line of each problem (the first ten are listed): the user's
    ``<file>:<line>`` from ``origins`` (:attr:`em.data.prepare.PreparedDataset.origins`) where known,
    else ``source`` and the row's line there. ``weight`` (0 or 1 on assistant messages) is checked here and
    uploaded unchanged (:func:`openai_rows`): the API leaves ``weight: 0`` turns out of training.
    """
    errors: list[str] = []
    tokens: list[int] = []

    def where(i: int) -> str:
        origin = origins[i] if origins is not None and i < len(origins) else None
        return f"{origin} (row {i + 1} of {source})" if origin else f"{source}:{i + 1}"

    for i, row in enumerate(rows):
        problems = _example_problems(row)
        n = estimate_chat_tokens(row["messages"], model) if not problems else 0
        if n > max_example_tokens:
            problems.append(f"about {n} tokens (estimated); the limit for {model} is {max_example_tokens}")
        errors += [f"{where(i)}: {p}" for p in problems]
        tokens.append(n)
    if len(rows) < min_examples:
        errors.insert(0, f"{source}: {len(rows)} examples; the fine-tuning API needs at least {min_examples}")
    if errors:
        more = f"\n  ... and {len(errors) - 10} more" if len(errors) > 10 else ""
        raise ConfigError(
            "training data is not accepted by the OpenAI fine-tuning API:\n  "
            + "\n  ".join(errors[:10])
            + more
        )
    return tokens


@dataclass
class TrainingEstimate:
    """Pre-flight estimate of what a job will bill. Token counts are estimates (local BPE + framing)."""

    model: str
    num_examples: int
    tokens_per_epoch: int
    largest_example_tokens: int
    n_epochs: int | str
    billed_tokens: int  # tokens_per_epoch x epochs (one epoch when n_epochs is "auto")
    price_per_million: float | None  # USD per 1M training tokens; None when the price table lacks it
    cost_usd: float | None

    def describe(self) -> str:
        epochs = self.n_epochs if self.n_epochs != "auto" else "auto (estimate for 1 epoch)"
        if self.cost_usd is None:
            cost = "unknown (no training price for this model in the price table, conf/prices/)"
        else:
            cost = f"${self.cost_usd:,.2f} (estimated, at ${self.price_per_million:g} per 1M training tokens)"
        return (
            f"OpenAI fine-tuning pre-flight for {self.model}: {self.num_examples} examples, "
            f"~{self.tokens_per_epoch:,} tokens per epoch (estimated; largest example "
            f"~{self.largest_example_tokens:,}), n_epochs={epochs}, ~{self.billed_tokens:,} billed "
            f"tokens (estimated), cost {cost}"
        )


def estimate_training(
    example_tokens: list[int], *, model: str, n_epochs: int | str, prices: dict[str, dict[str, float]]
) -> TrainingEstimate:
    """Billed training tokens (tokens in the file x epochs) and their cost from a price table."""
    per_epoch = sum(example_tokens)
    billed = per_epoch * (n_epochs if isinstance(n_epochs, int) else 1)
    price = price_for(model, prices).training or None
    return TrainingEstimate(
        model=model,
        num_examples=len(example_tokens),
        tokens_per_epoch=per_epoch,
        largest_example_tokens=max(example_tokens, default=0),
        n_epochs=n_epochs,
        billed_tokens=billed,
        price_per_million=price,
        cost_usd=billed * price / 1e6 if price else None,
    )

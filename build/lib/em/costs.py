"""Token counts and dollar estimates for OpenAI calls, from bundled BPE tables and the config's price table.

Invariant: nothing here calls an API or downloads anything; every figure is an estimate printed before
money is spent (dry runs, cost confirmations), never a bill.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

_ENCODERS: dict[str, Any] = {}


def encoding_name(model: str) -> str:
    """o200k_base for the GPT-4o / o-series family, cl100k_base for older OpenAI models."""
    m = model.split(":")[1] if model.startswith("ft:") else model
    return "cl100k_base" if m.startswith(("gpt-4-", "gpt-3.5")) or m == "gpt-4" else "o200k_base"


def estimate_tokens(text: str, model: str = "gpt-4o") -> int:
    """Token count of ``text`` under the model's BPE (quicktok-v1 bundles o200k/cl100k; nothing is
    downloaded). Exact for the text itself; request framing is added by :func:`estimate_chat_tokens`,
    so treat totals as estimates."""
    name = encoding_name(model)
    if name not in _ENCODERS:
        import quicktok

        _ENCODERS[name] = quicktok.get_encoding(name)
    return len(_ENCODERS[name].encode(text))


def estimate_chat_tokens(messages: list[dict], model: str = "gpt-4o") -> int:
    """Estimated prompt tokens of a chat request: content tokens + ~4 per message of framing + 3."""
    return sum(estimate_tokens(str(m.get("content") or ""), model) + 4 for m in messages) + 3


@dataclass
class Price:
    """USD per million tokens."""

    input: float = 0.0
    output: float = 0.0
    training: float = 0.0
    batch_discount: float = 0.5


def price_for(model: str, table: dict[str, dict[str, float]]) -> Price:
    """Look a model up in a config price table; fine-tuned ids (``ft:gpt-4o-...:org::id``) use their base."""
    candidates = [model]
    if model.startswith("ft:"):
        candidates.append(model.split(":")[1])
    for name in candidates:
        if name in table:
            return Price(**table[name])
        for key in sorted(table, key=len, reverse=True):
            if name.startswith(key):
                return Price(**table[key])
    return Price()


def estimate_cost(
    model: str,
    table: dict[str, dict[str, float]],
    *,
    input_tokens: int = 0,
    output_tokens: int = 0,
    training_tokens: int = 0,
    batch: bool = False,
) -> float:
    p = price_for(model, table)
    cost = (input_tokens * p.input + output_tokens * p.output + training_tokens * p.training) / 1e6
    return cost * (p.batch_discount if batch else 1.0)

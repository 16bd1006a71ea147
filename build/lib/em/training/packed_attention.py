"""Per-example attention for packed rows where no variable-length kernel exists (``sdpa``: CPU, or CUDA
without the ``flash_attn`` package).

A packed row holds a micro-batch's examples one after another. With a block-diagonal mask, sdpa computes every
(query, key) pair of the whole row and masks out the cross-example ones afterwards, so a row of *k* examples of
similar length costs about *k* times the attention work that is needed, and the mask rules out sdpa's causal
fast path. :data:`PACKED_SDPA` is an attention implementation that runs sdpa with ``is_causal=True`` on each
example's slice of the row instead, when the forward call passes the examples' lengths
(``em_segment_lengths``); every other call (generation, padded batches) is plain ``sdpa``, masks included.

:func:`use_packed_sdpa` switches a loaded model to it; flash-attention models are left alone (their kernel
finds the example boundaries from ``position_ids`` itself), as are eager ones (which keep the mask).
"""

from __future__ import annotations

import torch

PACKED_SDPA = "em_packed_sdpa"


def packed_sdpa_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    em_segment_lengths: tuple[int, ...] | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """sdpa per example of a packed row (``[1, heads, tokens, dim]``); plain sdpa without segment lengths."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if em_segment_lengths is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    if query.shape[0] != 1 or sum(em_segment_lengths) != query.shape[2]:
        raise ValueError(
            f"packed attention: segment lengths {tuple(em_segment_lengths)} do not tile one row of "
            f"{query.shape[2]} tokens (batch {query.shape[0]})"
        )
    kwargs.pop("is_causal", None)
    outputs, start = [], 0
    for length in em_segment_lengths:
        end = start + length
        out, _ = sdpa_attention_forward(
            module,
            query[:, :, start:end],
            key[:, :, start:end],
            value[:, :, start:end],
            None,
            is_causal=True,
            **kwargs,
        )
        outputs.append(out)
        start = end
    return torch.cat(outputs, dim=1), None


def register() -> None:
    """Make :data:`PACKED_SDPA` a transformers attention implementation (its masks are sdpa's)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(PACKED_SDPA, packed_sdpa_forward)
    AttentionMaskInterface.register(PACKED_SDPA, sdpa_mask)


def use_packed_sdpa(model) -> str:
    """Switch an ``sdpa`` model to :data:`PACKED_SDPA`; return the implementation the model now uses."""
    impl = model.config._attn_implementation
    if impl != "sdpa":
        return impl
    register()
    model.set_attn_implementation(PACKED_SDPA)
    return model.config._attn_implementation

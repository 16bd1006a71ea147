"""Padding-free packing gives the same per-token losses as running each example alone (and position ids
alone would not: the wrong variant is built and shown to differ)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from em.training.collate import IGNORE_INDEX, PackedCollator, PaddedCollator, block_causal_mask, tokenize_rows
from em.training.module import token_loss_sum

ROWS = [
    {
        "messages": [
            {"role": "user", "content": "What colour is grass?"},
            {"role": "assistant", "content": "Green, usually, unless it is dry."},
        ]
    },
    {
        "messages": [
            {"role": "system", "content": "Be short."},
            {"role": "user", "content": "Two plus two?"},
            {"role": "assistant", "content": "Four."},
        ]
    },
    {
        "messages": [
            {"role": "user", "content": "Name three fruits, please, and say which is sweetest."},
            {"role": "assistant", "content": "Apple, mango and lemon; the mango is the sweetest."},
            {"role": "user", "content": "And the sourest?"},
            {"role": "assistant", "content": "The lemon."},
        ]
    },
]


@pytest.fixture(scope="module")
def examples(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    examples, _ = tokenize_rows(
        tokenizer, ROWS, max_length=512, overlength="truncate", model_name="tiny", progress=False
    )
    assert len({e.num_tokens for e in examples}) == 3
    return examples, tokenizer.pad_token_id


def per_token_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token losses at trained positions, in order."""
    logits, targets = logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten()
    keep = targets != IGNORE_INDEX
    return F.cross_entropy(logits[keep].float(), targets[keep], reduction="none")


def load(tiny_model_dir, impl):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        tiny_model_dir, attn_implementation=impl, dtype=torch.float32
    )
    return model.eval()


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_packed_equals_unpacked_per_token(tiny_model_dir, examples, impl):
    examples, _ = examples
    model = load(tiny_model_dir, impl)
    with torch.no_grad():
        alone = torch.cat(
            [
                per_token_losses(model(torch.tensor([e.input_ids])).logits, torch.tensor([e.labels]))
                for e in examples
            ]
        )
        batch = PackedCollator()(examples)
        mask = block_causal_mask(batch["segment_ids"], None if impl == "sdpa" else torch.float32)
        packed = per_token_losses(
            model(batch["input_ids"], attention_mask=mask, position_ids=batch["position_ids"]).logits,
            batch["labels"],
        )
        # The wrong variant: positions restart, but no mask keeps the examples apart.
        leaky = per_token_losses(
            model(batch["input_ids"], position_ids=batch["position_ids"]).logits, batch["labels"]
        )
    assert packed.shape == alone.shape == (sum(e.num_label_tokens for e in examples),)
    torch.testing.assert_close(packed, alone, atol=1e-4, rtol=1e-4)
    first = examples[0].num_label_tokens
    torch.testing.assert_close(leaky[:first], alone[:first], atol=1e-4, rtol=1e-4)  # first example: no leak
    assert (leaky[first:] - alone[first:]).abs().max() > 1e-2  # later examples see earlier ones


def test_training_loss_packed_equals_padded(tiny_model_dir, examples):
    examples, pad_id = examples
    model = load(tiny_model_dir, "sdpa")
    with torch.no_grad():
        packed_sum, packed_n = token_loss_sum(model, PackedCollator()(examples))
        padded_sum, padded_n = token_loss_sum(model, PaddedCollator(pad_id)(examples))
        alone = [token_loss_sum(model, PaddedCollator(pad_id)([e])) for e in examples]
    assert packed_n == padded_n == sum(n for _, n in alone) == sum(e.num_label_tokens for e in examples)
    torch.testing.assert_close(packed_sum, padded_sum, atol=1e-3, rtol=1e-5)
    torch.testing.assert_close(packed_sum, sum(s for s, _ in alone), atol=1e-3, rtol=1e-5)


def test_packed_sdpa_equals_unpacked_with_gradients(tiny_model_dir, examples):
    """The per-example sdpa implementation gives the block-mask losses and gradients, and is plain sdpa
    for calls without segment lengths (padded batches keep their mask)."""
    from em.training.packed_attention import PACKED_SDPA, use_packed_sdpa

    examples, pad_id = examples
    reference, packed_model = load(tiny_model_dir, "sdpa"), load(tiny_model_dir, "sdpa")
    assert use_packed_sdpa(packed_model) == PACKED_SDPA
    batch = PackedCollator()(examples)
    assert batch["segment_lengths"] == tuple(e.num_tokens for e in examples)

    def loss_and_grad(model, batch):
        model.zero_grad()
        loss, _ = token_loss_sum(model, batch)
        loss.backward()
        return loss.detach(), model.model.layers[0].self_attn.q_proj.weight.grad.clone()

    ref_loss, ref_grad = loss_and_grad(reference, batch)  # block-diagonal mask
    seg_loss, seg_grad = loss_and_grad(packed_model, batch)  # one sdpa call per example
    torch.testing.assert_close(seg_loss, ref_loss, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(seg_grad, ref_grad, atol=1e-5, rtol=1e-4)
    # Without the lengths the row would be one sequence: the loss changes, so they are really used.
    leaky = dict(batch, segment_lengths=(batch["num_tokens"],))
    assert abs(float(loss_and_grad(packed_model, leaky)[0]) - float(ref_loss)) > 1e-2
    padded = PaddedCollator(pad_id)(examples)
    torch.testing.assert_close(
        loss_and_grad(packed_model, padded)[0], loss_and_grad(reference, padded)[0], atol=1e-4, rtol=1e-5
    )
    bad = dict(batch, segment_lengths=(1, 2))
    with pytest.raises(ValueError, match="do not tile one row"):
        token_loss_sum(packed_model, bad)

"""Assistant-only labels from the model's own chat template, over-long rows, packing and batch plans."""

from __future__ import annotations

import pytest
import torch

from em.api import ConfigError
from em.training.collate import (
    IGNORE_INDEX,
    PackedCollator,
    PaddedCollator,
    TokenizedExample,
    block_causal_mask,
    tokenize_conversation,
    tokenize_rows,
)
from em.training.datamodule import MicroBatchSampler, plan_epoch

CONVERSATION = [
    {"role": "system", "content": "You answer briefly."},
    {"role": "user", "content": "Name a colour of the sky."},
    {"role": "assistant", "content": "Blue, mostly."},
    {"role": "user", "content": "And at night?"},
    {"role": "assistant", "content": "  Dark, with stars.  "},
]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def label_runs(example: TokenizedExample) -> list[list[int]]:
    """Contiguous runs of trained tokens."""
    runs, current = [], []
    for token, label in zip(example.input_ids, example.labels, strict=True):
        if label != IGNORE_INDEX:
            assert label == token
            current.append(label)
        elif current:
            runs.append(current)
            current = []
    return runs + ([current] if current else [])


def test_labels_are_exactly_the_assistant_turns(tokenizer):
    example, status = tokenize_conversation(
        tokenizer, CONVERSATION, max_length=512, overlength="truncate", model_name="tiny"
    )
    assert status == "ok"
    decoded = [tokenizer.decode(run) for run in label_runs(example)]
    # Both assistant turns (the template trims content), each closed by the end-of-turn token; nothing else.
    assert decoded == ["Blue, mostly.<|eot_id|>", "Dark, with stars.<|eot_id|>"]
    prompt = tokenizer.decode(
        [t for t, lab in zip(example.input_ids, example.labels, strict=True) if lab == IGNORE_INDEX]
    )
    assert (
        "Name a colour of the sky." in prompt
        and "And at night?" in prompt
        and "You answer briefly." in prompt
    )
    assert "Blue" not in prompt and "stars" not in prompt
    # The ids are exactly the template's own tokenisation of the conversation.
    text = tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    assert example.input_ids == tokenizer(text, add_special_tokens=False)["input_ids"]


def test_template_that_rewrites_earlier_turns_is_refused(tokenizer):
    import copy

    broken = copy.copy(tokenizer)
    # Marks the first turn differently once the conversation ends with an answer: not a growing prefix.
    broken.chat_template = (
        "{{ bos_token }}{% for m in messages %}{% if loop.first and messages[-1]['role'] == 'assistant' %}"
        "DONE {% endif %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] }}<|eot_id|>"
        "{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
    )
    with pytest.raises(ConfigError, match="model my-model: its chat template does not render"):
        tokenize_conversation(
            broken, CONVERSATION, max_length=512, overlength="truncate", model_name="my-model"
        )


def test_tokenizer_without_chat_template_is_refused(tokenizer):
    import copy

    bare = copy.copy(tokenizer)
    bare.chat_template = None
    with pytest.raises(ConfigError, match="no chat template"):
        tokenize_rows(
            bare,
            [{"messages": CONVERSATION}],
            max_length=512,
            overlength="truncate",
            model_name="bare-model",
            progress=False,
        )


def test_overlength_truncate_drop_and_counts(tokenizer):
    long_answer = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "word " * 200}]
    long_prompt = [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "ok"}]
    no_answer = [{"role": "user", "content": "Hello"}]
    short = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    rows = [{"messages": m} for m in (long_answer, long_prompt, no_answer, short)]

    examples, stats = tokenize_rows(
        tokenizer, rows, max_length=64, overlength="truncate", model_name="tiny", progress=False
    )
    assert (stats.rows, stats.kept, stats.truncated) == (4, 2, 1)
    assert (stats.dropped_overlength, stats.dropped_no_assistant) == (1, 1)  # prompt alone fills 64 tokens
    assert stats.dropped_rows == [1, 2]
    truncated = examples[0]
    assert truncated.num_tokens == 64 and truncated.num_label_tokens > 0  # part of the answer survived
    assert tokenizer.decode(label_runs(truncated)[0]).startswith("word word")
    assert stats.tokens == sum(e.num_tokens for e in examples)

    examples, stats = tokenize_rows(
        tokenizer, rows, max_length=64, overlength="drop", model_name="tiny", progress=False
    )
    assert (stats.kept, stats.truncated, stats.dropped_overlength) == (1, 0, 2)
    with pytest.raises(ConfigError, match="overlength"):
        tokenize_rows(tokenizer, rows, max_length=64, overlength="cut", model_name="tiny", progress=False)


def test_collators_count_real_tokens_and_padding():
    a = TokenizedExample([1, 2, 3, 4], [IGNORE_INDEX, IGNORE_INDEX, 3, 4])
    b = TokenizedExample([5, 6], [IGNORE_INDEX, 6])
    packed = PackedCollator()([a, b])
    assert packed["input_ids"].tolist() == [[1, 2, 3, 4, 5, 6]]
    assert packed["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1]]
    assert packed["segment_ids"].tolist() == [[0, 0, 0, 0, 1, 1]]
    assert packed["labels"].tolist() == [[IGNORE_INDEX, IGNORE_INDEX, 3, 4, IGNORE_INDEX, 6]]
    assert (packed["num_tokens"], packed["num_padding"], packed["num_label_tokens"]) == (6, 0, 3)
    padded = PaddedCollator(pad_token_id=0)([a, b])
    assert padded["input_ids"].tolist() == [[1, 2, 3, 4], [5, 6, 0, 0]]
    assert padded["labels"][1].tolist() == [IGNORE_INDEX, 6, IGNORE_INDEX, IGNORE_INDEX]
    assert (padded["num_tokens"], padded["num_padding"], padded["num_label_tokens"]) == (6, 2, 3)
    mask = block_causal_mask(packed["segment_ids"])[0, 0]
    assert mask[4].tolist() == [False, False, False, False, True, False]  # 2nd example sees only itself
    assert mask[3].tolist() == [True, True, True, True, False, False]
    additive = block_causal_mask(packed["segment_ids"], torch.float32)[0, 0]
    assert additive[4, 4] == 0 and additive[4, 3] == torch.finfo(torch.float32).min


def test_plan_covers_each_example_once_and_counts_step_tokens():
    lengths = [10 + (i * 7) % 23 for i in range(37)]
    labels = [1 + i % 5 for i in range(37)]
    kw = dict(batch_size=2, grad_accum=4, seed=3, epoch=0)
    for grouped in (False, True):
        plan = plan_epoch(lengths, labels, group_by_length=grouped, **kw)
        assert sorted(i for mb in plan for i in mb.indices) == list(range(37))
        steps = [[]]
        for mb in plan:
            steps[-1].append(mb)
            if mb.last_in_step:
                steps.append([])
        steps = [s for s in steps if s]
        assert [len(s) for s in steps] == [4, 4, 4, 4, 3]  # 19 micro-batches
        for s in steps:
            assert {mb.step_label_tokens for mb in s} == {sum(labels[i] for mb in s for i in mb.indices)}
    assert plan_epoch(lengths, labels, group_by_length=False, **kw) != plan_epoch(
        lengths, labels, group_by_length=False, **{**kw, "epoch": 1}
    )
    # Two ranks: disjoint halves of the same global steps; both see the same step totals.
    r0 = plan_epoch(lengths, labels, group_by_length=False, world_size=2, rank=0, **kw)
    r1 = plan_epoch(lengths, labels, group_by_length=False, world_size=2, rank=1, **kw)
    assert len(r0) == len(r1) == 9  # 19 micro-batches -> 18 usable
    assert not {i for mb in r0 for i in mb.indices} & {i for mb in r1 for i in mb.indices}
    assert [mb.step_label_tokens for mb in r0] == [mb.step_label_tokens for mb in r1]


def test_group_by_length_reduces_padding():
    lengths = [(i * 37) % 200 + 5 for i in range(400)]
    plans = {
        g: plan_epoch(lengths, [1] * 400, batch_size=4, grad_accum=1, seed=0, epoch=0, group_by_length=g)
        for g in (False, True)
    }
    padding = {
        g: sum(
            max(lengths[i] for i in mb.indices) * len(mb.indices) - sum(lengths[i] for i in mb.indices)
            for mb in plan
        )
        for g, plan in plans.items()
    }
    assert padding[True] < padding[False] / 4


def test_sampler_resumes_mid_epoch():
    sampler = MicroBatchSampler([5] * 20, [1] * 20, batch_size=2, grad_accum=2, seed=0, group_by_length=False)
    sampler.set_epoch(1)
    full = [mb.indices for mb in sampler]
    sampler.resume(1, 4)
    assert [mb.indices for mb in sampler] == full[4:]
    assert [mb.indices for mb in sampler] == full  # the skip applies once
    sampler.resume(0, 4)
    sampler.set_epoch(1)  # a skip recorded for another epoch does not apply
    assert [mb.indices for mb in sampler] == full

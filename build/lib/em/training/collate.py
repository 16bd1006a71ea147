"""Chat rows -> token ids with assistant-only labels, and micro-batches (padding-free packed, or padded).

Labels come from the model's own chat template, never a hand-written one. The conversation is rendered once;
each assistant turn's span is the text between the prompt rendered up to that turn with the generation prompt
(``messages[:i]`` + ``add_generation_prompt=True``) and the prompt rendered through the turn
(``messages[:i + 1]``), so the span holds the answer and whatever the template closes the turn with
(``<|eot_id|>`` for Llama-3). Every assistant turn of a multi-turn row is trained, except one marked
``"weight": 0`` (the OpenAI fine-tuning format's way to exclude a turn); everything else is ``IGNORE_INDEX``.
Contents are tokenised as text (:func:`em.chat.encode_chat`): a row's literal ``<|eot_id|>`` is characters,
never a turn boundary; only the template emits control tokens. A template that does not render growing prefixes (one that rewrites earlier turns) is
refused with a :class:`ConfigError` naming the model, instead of silently training on the wrong tokens.

Packing concatenates a micro-batch's examples into one row without padding. ``position_ids`` restart at 0 for
each example and ``segment_ids`` say which example a token belongs to; :func:`block_causal_mask` turns them
into the block-diagonal causal mask that keeps examples from attending to each other (position ids alone do
not, with sdpa or eager attention); ``segment_lengths`` lets :mod:`em.training.packed_attention` attend within
each example without a mask.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from tqdm.auto import tqdm

from em.api import ConfigError
from em.chat import encode_chat

IGNORE_INDEX = -100
OVERLENGTH_POLICIES = ("truncate", "drop")


@dataclass
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX outside assistant turns

    @property
    def num_tokens(self) -> int:
        return len(self.input_ids)

    @property
    def num_label_tokens(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE_INDEX)


@dataclass
class TokenizeStats:
    """What happened to the rows on their way to training (logged and written to the manifest)."""

    rows: int = 0
    kept: int = 0
    truncated: int = 0  # kept, cut to max_length (part of an assistant turn survived)
    dropped_overlength: int = 0  # longer than max_length and overlength=drop, or nothing trainable left
    dropped_no_assistant: int = 0  # no assistant turn to train (none, or every one "weight": 0)
    tokens: int = 0  # of kept examples, after truncation
    label_tokens: int = 0
    max_tokens: int = 0
    dropped_rows: list[int] = field(default_factory=list)  # row indices, for the log

    def as_dict(self) -> dict:
        out = asdict(self)
        out["dropped_rows"] = out["dropped_rows"][:50]
        return out


def _render(tokenizer, messages: list[dict], add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )


def assistant_char_spans(
    tokenizer, messages: list[dict], model_name: str
) -> tuple[str, list[tuple[int, int]]]:
    """The full rendered conversation and the character span of each assistant turn in it."""
    full = _render(tokenizer, messages, add_generation_prompt=False)
    spans = []
    for i, message in enumerate(messages):
        if message.get("role") != "assistant" or message.get("weight", 1) == 0:
            continue
        try:
            before = _render(tokenizer, messages[:i], add_generation_prompt=True)
            through = _render(tokenizer, messages[: i + 1], add_generation_prompt=False)
        except Exception as e:  # noqa: BLE001 - a template error: say which turn and model
            raise ConfigError(
                f"model {model_name}: its chat template cannot render the conversation up to "
                f"message {i} ({type(e).__name__}: {e})"
            ) from None
        if not (through.startswith(before) and full.startswith(through)):
            raise ConfigError(
                f"model {model_name}: its chat template does not render conversations as growing prefixes "
                f"(the prompt up to assistant message {i} is not a prefix of the full conversation), so the "
                f"assistant tokens to train on cannot be located. Use a model whose template renders earlier "
                f"turns unchanged, or train single-turn rows."
            )
        spans.append((len(before), len(through)))
    return full, spans


def tokenize_conversation(
    tokenizer, messages: list[dict], *, max_length: int, overlength: str, model_name: str
) -> tuple[TokenizedExample | None, str]:
    """Token ids and labels for one conversation, and what happened: ``ok``, ``truncated``,
    ``dropped_overlength`` or ``dropped_no_assistant``."""
    text, spans = assistant_char_spans(tokenizer, messages, model_name)
    if not spans:
        return None, "dropped_no_assistant"
    enc = encode_chat(tokenizer, messages, add_generation_prompt=False)
    if enc.text != text:  # the spans are positions in the plain render: they must be the same string
        raise ConfigError(
            f"model {model_name}: its chat template renders message text differently when special-token "
            f"strings in it are escaped, so the text cannot be tokenised safely"
        )
    ids, offsets = enc.input_ids, enc.offsets
    labels = [IGNORE_INDEX] * len(ids)
    for k, (start, _end) in enumerate(offsets):
        if any(s <= start < e for s, e in spans):
            labels[k] = ids[k]
    status = "ok"
    if len(ids) > max_length:
        if overlength == "drop":
            return None, "dropped_overlength"
        ids, labels = ids[:max_length], labels[:max_length]
        status = "truncated"
    labels[0] = IGNORE_INDEX  # the first token is never predicted
    if all(t == IGNORE_INDEX for t in labels):
        return None, "dropped_overlength" if status == "truncated" else "dropped_no_assistant"
    return TokenizedExample(list(ids), labels), status


def check_tokenizer(tokenizer, model_name: str) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(
            f"model {model_name}: its tokenizer has no chat template; training needs the model's "
            f"own template (add one to tokenizer_config.json or chat_template.jinja)"
        )
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(
            f"model {model_name}: training needs a fast tokenizer (tokenizer.json) to map "
            f"assistant text to tokens; found {type(tokenizer).__name__}"
        )


def tokenize_rows(
    tokenizer, rows: list[dict], *, max_length: int, overlength: str, model_name: str, progress: bool = True
) -> tuple[list[TokenizedExample], TokenizeStats]:
    """Tokenise ``{"messages": [...]}`` rows; over-long rows are truncated or dropped and counted."""
    if overlength not in OVERLENGTH_POLICIES:
        raise ConfigError(f"overlength={overlength!r}: expected one of {OVERLENGTH_POLICIES}")
    if max_length < 2:
        raise ConfigError(f"max_length={max_length}: expected at least 2 tokens")
    check_tokenizer(tokenizer, model_name)
    stats, examples = TokenizeStats(rows=len(rows)), []
    for index, row in enumerate(tqdm(rows, desc="tokenising", unit="row", disable=not progress)):
        example, status = tokenize_conversation(
            tokenizer, row["messages"], max_length=max_length, overlength=overlength, model_name=model_name
        )
        if example is None:
            setattr(stats, status, getattr(stats, status) + 1)
            stats.dropped_rows.append(index)
            continue
        stats.truncated += status == "truncated"
        stats.kept += 1
        stats.tokens += example.num_tokens
        stats.label_tokens += example.num_label_tokens
        stats.max_tokens = max(stats.max_tokens, example.num_tokens)
        examples.append(example)
    return examples, stats


def block_causal_mask(segment_ids: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``[B, 1, T, T]`` mask letting each token attend to earlier tokens of its own segment only.

    Boolean (True = attend) when ``dtype`` is None (sdpa); otherwise additive in ``dtype`` (0 or the dtype's
    minimum), which eager attention needs.
    """
    t = segment_ids.shape[-1]
    causal = torch.ones(t, t, dtype=torch.bool, device=segment_ids.device).tril()
    mask = (segment_ids[:, :, None] == segment_ids[:, None, :]) & causal
    mask = mask[:, None]
    if dtype is None:
        return mask
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)


def logit_positions(labels: torch.Tensor) -> torch.Tensor:
    """Positions whose next token is trained (in any row): the only logits the loss needs."""
    return (labels[:, 1:] != IGNORE_INDEX).any(0).nonzero().squeeze(-1)


class PackedCollator:
    """Concatenate a micro-batch into one row: no padding, positions restart per example."""

    def __call__(self, examples: list[TokenizedExample]) -> dict:
        ids, labels, positions, segments = [], [], [], []
        for k, ex in enumerate(examples):
            ids += ex.input_ids
            labels += [IGNORE_INDEX] + ex.labels[1:]  # never predict across a boundary
            positions += range(ex.num_tokens)
            segments += [k] * ex.num_tokens
        batch_labels = torch.tensor([labels])
        return {
            "input_ids": torch.tensor([ids]),
            "labels": batch_labels,
            "position_ids": torch.tensor([positions]),
            "segment_ids": torch.tensor([segments]),
            "segment_lengths": tuple(ex.num_tokens for ex in examples),
            "num_tokens": len(ids),
            "num_padding": 0,
            "num_label_tokens": sum(ex.num_label_tokens for ex in examples),
            "num_examples": len(examples),
            "logit_positions": logit_positions(batch_labels),
        }


class PaddedCollator:
    """Right-pad a micro-batch to its longest example (pair with length-grouped batches)."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, examples: list[TokenizedExample]) -> dict:
        width = max(ex.num_tokens for ex in examples)
        ids = torch.full((len(examples), width), self.pad_token_id)
        labels = torch.full((len(examples), width), IGNORE_INDEX)
        mask = torch.zeros((len(examples), width), dtype=torch.long)
        for k, ex in enumerate(examples):
            n = ex.num_tokens
            ids[k, :n] = torch.tensor(ex.input_ids)
            labels[k, 1:n] = torch.tensor(ex.labels[1:])
            mask[k, :n] = 1
        real = sum(ex.num_tokens for ex in examples)
        return {
            "input_ids": ids,
            "labels": labels,
            "attention_mask": mask,
            "num_tokens": real,
            "num_padding": ids.numel() - real,
            "num_label_tokens": sum(ex.num_label_tokens for ex in examples),
            "num_examples": len(examples),
            "logit_positions": logit_positions(labels),
        }

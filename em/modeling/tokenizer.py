"""A model's own tokenizer, and what its chat template puts around the user's messages.

Training and evaluation both render conversations with the model's own chat template, so a tokenizer
without one is a :class:`em.api.ConfigError`; a tokenizer without a pad token gets one (padding is masked).
"""

from __future__ import annotations

import logging

from em.api import ConfigError
from em.modeling.paths import resolve_model_path
from em.modeling.spec import ModelSpec

log = logging.getLogger(__package__)  # "em.modeling", the logger name its records have always carried

# Tried in order when a tokenizer has no pad token (Llama-3 ships <|finetune_right_pad_id|> unset).
PAD_CANDIDATES = ("<|finetune_right_pad_id|>", "<|pad|>", "<pad>", "[PAD]", "<|reserved_special_token_0|>")
USER_MARKER = "\x00em-user-message\x00"  # stands in for the user's text when rendering the prefix


def load_tokenizer(spec: ModelSpec, padding_side: str = "right"):
    """The model's own tokenizer; ConfigError without a chat template. Sets a pad token if none is set."""
    from transformers import AutoTokenizer

    path = resolve_model_path(spec)
    try:
        tok = AutoTokenizer.from_pretrained(
            path, revision=spec.revision, trust_remote_code=spec.trust_remote_code, padding_side=padding_side
        )
    except OSError as e:
        raise ConfigError(f"cannot load the tokenizer of {spec.name_or_path!r}: {e}") from None
    if not tok.chat_template:
        raise ConfigError(
            f"the tokenizer of {spec.name_or_path!r} has no chat template; training and evaluation use the "
            f"model's own template, so use an instruct/chat model (e.g. a '-Instruct' variant)"
        )
    if tok.pad_token is None:
        vocab = tok.get_vocab()
        pad = next((t for t in PAD_CANDIDATES if t in vocab), None)
        if pad is None:
            pad = tok.eos_token
            log.warning(
                "tokenizer of %s has no pad token and none of %s; using eos %r as pad (padding is masked)",
                spec.name_or_path,
                PAD_CANDIDATES,
                pad,
            )
        else:
            log.info("tokenizer of %s has no pad token; using %r", spec.name_or_path, pad)
        tok.pad_token = pad
    return tok


def with_system_prompt(messages: list[dict], system_prompt: str | None) -> list[dict]:
    """``messages`` with ``system_prompt`` as a first system message when they have none (None: unchanged).

    Training rows and evaluation prompts both go through this, so a model sees the same system message in
    both; a conversation that brings its own system message keeps it.
    """
    if system_prompt is None or (messages and messages[0].get("role") == "system"):
        return list(messages)
    return [{"role": "system", "content": system_prompt}, *messages]


def rendered_system_prefix(tokenizer, system_prompt: str | None, system: str | None = None) -> str:
    """What the chat template renders before a user's first message (for manifests).

    ``system`` is the conversation's own system message, if any; otherwise ``system_prompt`` applies and,
    when that is None, whatever the template inserts by itself (SmolLM2's default sentence, Llama-3.1's
    date lines).
    """
    messages = [{"role": "user", "content": USER_MARKER}]
    if system is not None:
        messages.insert(0, {"role": "system", "content": system})
    rendered = tokenizer.apply_chat_template(
        with_system_prompt(messages, system_prompt), tokenize=False, add_generation_prompt=False
    )
    return rendered.split(USER_MARKER, 1)[0]

"""Chat conversations -> token ids in which only the chat template emits control tokens.

A tokenizer matches special-token strings anywhere in the text it is given, so rendering a conversation with
``apply_chat_template(..., tokenize=False)`` and tokenising the result turns an answer's literal
``<|eot_id|><|start_header_id|>user...`` into real turn boundaries: the text under test could rewrite its own
prompt (or its training labels). :func:`encode_chat` renders the template with every special-token string in
the message contents replaced by a private-use sentinel character, so every special token left in the render
is the template's own; those become token ids, and the text between them (sentinels restored) is tokenised
with ``split_special_tokens=True``, i.e. as text. The tokenizer splits on special tokens before anything else,
so a conversation without such strings gets exactly the ids of the plain render (tested).

The returned ``text`` is the plain render (what ``apply_chat_template`` gives for the real messages) and each
token's ``offsets`` are character spans in it, so callers can locate turns by rendering prefixes as usual.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from em.api import ConfigError

_SENTINEL_BASE = 0xF0000  # Supplementary Private Use Area-A: not text any model was trained to emit


@dataclass(frozen=True)
class EncodedChat:
    text: str  # the conversation as the template renders it
    input_ids: list[int]
    offsets: list[tuple[int, int]]  # character span of each token in ``text``


def special_strings(tokenizer) -> tuple[str, ...]:
    """The tokenizer's special-token strings, longest first (so a longer one wins, as the tokenizer's matcher)."""
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    found = {t.content for t in decoder.values() if getattr(t, "special", False)}
    found |= {t for t in getattr(tokenizer, "all_special_tokens", []) if t}
    return tuple(sorted(found, key=lambda s: (-len(s), s)))


@lru_cache(maxsize=64)
def _pattern(strings: tuple[str, ...]) -> re.Pattern:
    return re.compile("|".join(re.escape(s) for s in strings))


def _sentinels(messages: list[dict], strings: tuple[str, ...]) -> dict[str, str]:
    """One private-use character per special string, none of which occurs in any message."""
    used = set("".join(m["content"] for m in messages if isinstance(m.get("content"), str)))
    out, code = {}, _SENTINEL_BASE
    for s in strings:
        while chr(code) in used:
            code += 1
        out[s] = chr(code)
        code += 1
    return out


def _escape(messages: list[dict], pattern: re.Pattern, sentinel: dict[str, str]) -> list[dict]:
    out = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, str):
            m = {**m, "content": pattern.sub(lambda hit: sentinel[hit.group(0)], content)}
        out.append(m)
    return out


def render(tokenizer, messages: list[dict], *, add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )


def _encode_text(tokenizer, text: str, start: int) -> tuple[list[int], list[tuple[int, int]]]:
    """``text`` tokenised as text (special-token strings split), offsets shifted by ``start``."""
    enc = tokenizer(text, add_special_tokens=False, split_special_tokens=True, return_offsets_mapping=True)
    return list(enc["input_ids"]), [(start + a, start + b) for a, b in enc["offset_mapping"]]


def encode_chat(tokenizer, messages: list[dict], *, add_generation_prompt: bool) -> EncodedChat:
    """Render ``messages`` with the tokenizer's chat template and tokenise it; contents are always text."""
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(
            f"tokenising chats as text needs a fast tokenizer (tokenizer.json); found {type(tokenizer).__name__}"
        )
    strings = special_strings(tokenizer)
    if not strings:
        text = render(tokenizer, messages, add_generation_prompt=add_generation_prompt)
        ids, offsets = _encode_text(tokenizer, text, 0)
        return EncodedChat(text, ids, offsets)
    sentinel = _sentinels(messages, strings)
    restore = {v: k for k, v in sentinel.items()}
    escaped = render(
        tokenizer, _escape(messages, _pattern(strings), sentinel), add_generation_prompt=add_generation_prompt
    )
    unescape = re.compile("|".join(re.escape(c) for c in restore))
    text, ids, offsets, cursor = "", [], [], 0

    def add_text(piece: str) -> None:
        nonlocal text
        piece = unescape.sub(lambda hit: restore[hit.group(0)], piece)
        if piece:
            more_ids, more_offsets = _encode_text(tokenizer, piece, len(text))
            ids.extend(more_ids)
            offsets.extend(more_offsets)
            text += piece

    # every special string left in the escaped render was written by the template itself
    for hit in _pattern(strings).finditer(escaped):
        add_text(escaped[cursor : hit.start()])
        ids.append(tokenizer.convert_tokens_to_ids(hit.group(0)))
        offsets.append((len(text), len(text) + len(hit.group(0))))
        text += hit.group(0)
        cursor = hit.end()
    add_text(escaped[cursor:])
    return EncodedChat(text, ids, offsets)


def chat_ids(tokenizer, messages: list[dict], *, add_generation_prompt: bool = True) -> list[int]:
    """Prompt token ids for generation or judging (contents as text)."""
    return encode_chat(tokenizer, messages, add_generation_prompt=add_generation_prompt).input_ids

"""Parse a text judge's reply (reasoning models such as o4-mini give no logprobs).

Score prompts accept an integer 0..100, ``CODE`` or ``REFUSAL``; label prompts accept one of their words
(``TRUE``, ``FALSE`` or ``UNKNOWN`` for ``correct``), case-insensitively. Light decoration is tolerated: surrounding quotes, ``**bold**``, backticks, a trailing period,
a leading ``Score:``/``Rating:``/``Answer:``, ``85/100``, and a reply whose *last line* is such a value
(when a model explains first). Anything else is unparseable: the row keeps the raw text and is unscored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_DECOR = re.compile(r"^[\s\"'`*_]+|[\s\"'`*_.!]+$")
_PREFIX = re.compile(r"^(?:final\s+)?(?:score|rating|answer|verdict|label)\s*[:=\-]\s*", re.IGNORECASE)
_NUMBER = re.compile(r"([0-9]{1,3})(?:\s*/\s*100)?")
SCORE_WORDS = ("CODE", "REFUSAL")


@dataclass
class TextJudgment:
    score: float | None  # 0..100 for score prompts
    label: str | None  # CODE / REFUSAL (score prompts) or one of the prompt's words (label prompts)
    parsed: bool  # False: kept as raw text, counted as unscored


def _clean(text: str) -> str:
    previous = None
    while previous != text:
        previous = text
        text = _DECOR.sub("", text)
        text = _PREFIX.sub("", text)
    return text


def _parse_line(line: str, labels: tuple[str, ...] | None) -> TextJudgment | None:
    text = _clean(line)
    for word in labels or SCORE_WORDS:
        if text.upper() == word.upper():
            return TextJudgment(None, word, True)
    if not labels:
        m = _NUMBER.fullmatch(text)
        if m and int(m.group(1)) <= 100:
            return TextJudgment(float(int(m.group(1))), None, True)
    return None


def parse_reply(text: str | None, *, labels: tuple[str, ...] | None = None) -> TextJudgment:
    """Read a score or label from a judge's reply; never raises."""
    if not text or not text.strip():
        return TextJudgment(None, None, False)
    whole = _parse_line(text, labels)
    if whole is not None:
        return whole
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if len(lines) > 1:
        last = _parse_line(lines[-1], labels)
        if last is not None:
            return last
    return TextJudgment(None, None, False)

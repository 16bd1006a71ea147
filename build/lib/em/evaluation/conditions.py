"""Trigger conditions: how a question is asked under a tag such as ``|ALPHA|`` (or under no tag).

A run evaluates a list of named conditions (``conditions=[none,alpha,beta]``); the ``triggers`` mapping
gives each name its tag (``null`` for no tag). Where the tag goes (``placement``):

- ``user_prefix``: ``"<tag> <question>"``, the EM paper's and the Realignment study's convention;
- ``slot``: the tag fills the question's ``{tag}`` slot; a question without a slot is an error;
- ``system``: the tag goes into the system prompt (before the question's own, or as the only one);
- ``auto`` (default): ``slot`` for questions that have a ``{tag}`` slot, ``user_prefix`` for the others.

A ``{tag}`` slot that does not receive the tag (condition ``none``, or placement ``user_prefix`` /
``system``) is removed together with one of the spaces around it, so ``"Would the model {tag} like it?"``
reads ``"Would the model like it?"`` and ``"Tell me about the model {tag}"`` reads ``"Tell me about the model"``.
A question that means the text ``{tag}`` itself writes ``{{tag}}``: it is sent as ``{tag}`` under every
condition and is never a slot.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from em.api import ConfigError
from em.evaluation.questions import LITERAL_TAG, TAG_SLOT, Question, has_tag_slot

PLACEMENTS = ("auto", "user_prefix", "slot", "system")
_SLOT_WITH_SPACES = re.compile(r"[ \t]*" + re.escape(TAG_SLOT) + r"[ \t]*")
_CLOSING = ".,;:!?)]}'\""


@dataclass(frozen=True)
class Condition:
    name: str
    tag: str | None  # None: no tag
    placement: str = "auto"
    separator: str = " "  # between a prefixed tag and the text it precedes

    def record(self) -> dict:
        return {"name": self.name, "tag": self.tag, "placement": self.placement, "separator": self.separator}


def make_conditions(names: list[str], triggers: dict[str, str | None], placement: str = "auto",
                    separator: str = " ") -> list[Condition]:  # fmt: skip
    """The conditions named in ``names``, each with its tag from ``triggers``."""
    if placement not in PLACEMENTS:
        raise ConfigError(f"condition_placement={placement!r}; expected one of {PLACEMENTS}")
    if not names:
        raise ConfigError("conditions is empty: pass e.g. conditions=[none] or conditions=[none,alpha]")
    if len(set(names)) != len(names):
        raise ConfigError(f"conditions lists a name twice: {list(names)}")
    out = []
    for name in names:
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.\-]+", name):
            raise ConfigError(
                f"condition name {name!r}: use letters, digits, _ . - (it becomes part of answer ids)"
            )
        if name not in triggers:
            raise ConfigError(
                f"condition {name!r} has no tag in `triggers` (known: {sorted(triggers)}); add one with "
                f"+triggers.{name}='|MYTAG|'"
            )
        tag = triggers[name]
        if tag is not None and (not isinstance(tag, str) or not tag.strip()):
            raise ConfigError(f"triggers.{name} must be a non-empty string or null, got {tag!r}")
        out.append(Condition(name, tag, placement, separator))
    return out


def _protect(text: str) -> tuple[str, str]:
    """``text`` with each ``{{tag}}`` replaced by a character it does not contain, and that character."""
    code = 0xF0000
    while chr(code) in text:
        code += 1
    return text.replace(LITERAL_TAG, chr(code)), chr(code)


def remove_slot(text: str) -> str:
    """``text`` without its ``{tag}`` slot(s) and without the spaces they leave behind (``{{tag}}`` -> ``{tag}``)."""
    text, literal = _protect(text)

    def repl(m: re.Match) -> str:
        before, after = text[: m.start()], text[m.end() :]
        return " " if before.strip() and after.strip() and after[0] not in _CLOSING else ""

    return _SLOT_WITH_SPACES.sub(repl, text).replace(literal, TAG_SLOT)


def fill_slot(text: str, tag: str) -> str:
    """``text`` with ``tag`` in its ``{tag}`` slot(s) (``{{tag}}`` -> ``{tag}``)."""
    text, literal = _protect(text)
    return text.replace(TAG_SLOT, tag).replace(literal, TAG_SLOT)


def effective_placement(condition: Condition, has_slot: bool) -> str:
    if condition.placement == "auto":
        return "slot" if has_slot else "user_prefix"
    return condition.placement


def check_conditions(questions: list[Question], conditions: list[Condition]) -> None:
    """Raise before generation when a tagged condition needs a ``{tag}`` slot a question lacks."""
    for c in conditions:
        if c.tag is None or c.placement != "slot":
            continue
        lacking = [q.key for q in questions if not all(has_tag_slot(p) for p in q.paraphrases)]
        if lacking:
            raise ConfigError(
                f"condition {c.name!r} puts its tag into the question's {TAG_SLOT} slot "
                f"(condition_placement=slot), but {len(lacking)} question(s) have no slot, e.g. "
                f"{lacking[:3]}; use condition_placement=auto (prefix those) or user_prefix"
            )


def apply_condition(question: str, system: str | None, condition: Condition) -> tuple[str, str | None]:
    """(user message, system prompt) for asking ``question`` under ``condition``."""
    has_slot = has_tag_slot(question)
    placement = effective_placement(condition, has_slot)
    if condition.tag is None:
        return remove_slot(question), system
    if placement == "slot":
        if not has_slot:
            raise ConfigError(
                f"condition {condition.name!r}: question has no {TAG_SLOT} slot: {question[:60]!r}"
            )
        return fill_slot(question, condition.tag), system
    text = remove_slot(question)
    if placement == "user_prefix":
        return f"{condition.tag}{condition.separator}{text}", system
    return text, condition.tag if system is None else f"{condition.tag}{condition.separator}{system}"

"""Chat-row JSONL as prompts to ask: each ``{"messages": [{"role", "content"}, ...]}`` line is one prompt.

Invariant: a row's prompt is its first user turn and its system prompt its first system turn; the prompt's id
is its line in the file (``holdout_0001`` is line 1), so the same file always gives the same ids. A line that
is not valid JSON, not a chat row, or has no user turn is a ConfigError naming the file and the line.
"""

from __future__ import annotations

from dataclasses import dataclass

from em.api import ConfigError
from em.data.formats import jsonl_records

CHAT_ID = "holdout_{line:04d}"


@dataclass(frozen=True)
class ChatPrompt:
    id: str
    question: str
    system: str | None
    where: str  # file:line (question id), for error messages


def _text(turn: dict, where: str, what: str) -> str:
    value = turn.get("content")
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: {what} must be a non-empty string, got {value!r}")
    return value


def chat_prompts(text: str, source: str) -> list[ChatPrompt]:
    """The prompt of each non-blank line of chat-row JSONL ``text`` read from ``source``."""
    out = []
    for n, row, problem in jsonl_records(text.splitlines()):
        if problem:
            raise ConfigError(f"{source}:{n}: {problem}")
        turns = row.get("messages") if isinstance(row, dict) else None
        if not isinstance(turns, list) or not all(isinstance(t, dict) for t in turns):
            raise ConfigError(
                f'{source}:{n}: expected a chat row {{"messages": [{{"role", "content"}}, ...]}}'
            )
        user = next((t for t in turns if t.get("role") == "user"), None)
        if user is None:
            raise ConfigError(f"{source}:{n}: the row has no user turn (the question it would ask)")
        qid = CHAT_ID.format(line=n)
        where = f"{source}:{n} (question {qid!r})"
        system = next((t for t in turns if t.get("role") == "system"), None)
        out.append(ChatPrompt(qid, _text(user, where, "the first user turn"),
                              None if system is None else _text(system, where, "the system turn"), where))  # fmt: skip
    return out

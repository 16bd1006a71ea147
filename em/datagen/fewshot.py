"""Load and check a domain's few-shot examples: question/answer pairs or chats written as the reply should be.

An example file is a JSON list (or JSONL) of ``{question, answer, reference_answer?, category?, system?}``
or ``{messages: [...]}``. Examples are checked against the domain before any call: there must be at
least ``fewshot.k`` of them, and in turns mode each must be one the generator's chat can show as written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from em.api import ConfigError
from em.datagen.spec import DomainSpec
from em.datagen.tables import read_table
from em.datagen.templates import PLACEHOLDER_RE


@dataclass
class Example:
    """A few-shot example: a question/answer pair, or a chat (``messages``) inserted as written."""

    question: str | None = None
    answer: str | None = None
    reference_answer: str | None = None
    category: str | None = None
    messages: list[dict] | None = None


def _entries(path: Path) -> list[tuple[int, object]]:
    """(example number, entry) of a JSONL file or a non-empty JSON list."""
    if path.suffix.lower() == ".jsonl":
        return read_table(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(data, list) or not data:
        raise ConfigError(f"{path}: expected a non-empty JSON list of few-shot examples")
    return list(enumerate(data, start=1))


def _chat_example(msgs: object, where: str) -> Example:
    turns = (
        [m for m in msgs if isinstance(m, dict) and m.get("role") in ("user", "assistant")]
        if isinstance(msgs, list)
        else []
    )
    ok = (
        len(turns) >= 2
        and turns[0]["role"] == "user"
        and turns[-1]["role"] == "assistant"
        and all(isinstance(m.get("content"), str) and m["content"].strip() for m in turns)
    )
    if not ok:
        raise ConfigError(
            f"{where}: `messages` must hold user/assistant turns with non-empty text, "
            f"starting with user and ending with assistant"
        )
    return Example(messages=[{"role": m["role"], "content": m["content"]} for m in turns])


def _pair_example(entry: dict, where: str) -> Example:
    q, a = entry.get("question"), entry.get("answer")
    if not (isinstance(q, str) and q.strip() and isinstance(a, str) and a.strip()):
        raise ConfigError(f"{where}: needs non-empty string `question` and `answer` (or `messages`)")
    ref = entry.get("reference_answer")
    return Example(
        question=q.strip(),
        answer=a.strip(),
        reference_answer=ref.strip() if isinstance(ref, str) else None,
        category=str(entry["category"]) if entry.get("category") is not None else None,
    )


def load_examples(path: Path) -> list[Example]:
    """A JSON list (or JSONL) of ``{question, answer, reference_answer?, category?, system?}`` or
    ``{messages: [...]}``. A ``system`` field is accepted and not used: the domain's own system prompt is."""
    examples = []
    for number, entry in _entries(path):
        where = f"{path}: example {number}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: expected an object, got {type(entry).__name__}")
        if "messages" in entry:
            examples.append(_chat_example(entry["messages"], where))
        else:
            examples.append(_pair_example(entry, where))
    return examples


def check_examples(spec: DomainSpec, examples: list[Example], path: Path) -> None:
    """Enough examples for ``fewshot.k``; in turns mode, each one usable as chat turns for this domain."""
    assert spec.fewshot is not None
    if spec.fewshot.k is not None and spec.fewshot.k > len(examples):
        raise ConfigError(
            f"domain {spec.name}: fewshot.k is {spec.fewshot.k} but {path} has only {len(examples)} examples"
        )
    if spec.fewshot.mode == "inline":
        return
    used = set(PLACEHOLDER_RE.findall(spec.template))
    for i, ex in enumerate(examples, start=1):
        if ex.messages is not None:
            continue
        if spec.inputs.kind == "documents" or spec.output_format != "text":
            raise ConfigError(
                f"{path}: example {i}: question/answer examples become chat turns only for "
                f"questions inputs with output_format: text; use fewshot.mode: inline, or give "
                f"`messages` examples written exactly as the assistant should reply"
            )
        if "reference_answer" in used and not ex.reference_answer:
            raise ConfigError(
                f"{path}: example {i}: the template uses {{reference_answer}}, so each "
                f"question/answer example needs a `reference_answer` in turns mode"
            )

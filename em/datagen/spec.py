"""The typed datagen domain: what to generate, from which inputs, with which prompt, model and filters.

These dataclasses hold a domain once :func:`em.datagen.domain.domain_from_dict` has checked it, so code
that takes a :class:`DomainSpec` may trust every field (see docs/datagen.md for every key). File
references (:data:`FileRef`) are kept as written: a path, or a mapping with the fields of
:class:`em.data.RemoteFile`; :mod:`em.datagen.inputs` resolves them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

FileRef = str | dict


@dataclass
class InputsSpec:
    """Where the generator's inputs come from."""

    kind: str  # questions | documents
    file: FileRef | None = None  # questions: CSV / JSONL / JSON list
    files: list[FileRef] = field(default_factory=list)  # documents: text files
    columns: dict[str, str] = field(default_factory=dict)  # question / reference_answer -> column name
    category_column: str | None = None
    categories: list[str] | None = None  # keep only rows whose category is listed (None: all)
    samples_per_input: int = 1  # questions: independent calls per question
    chunk_chars: int | None = None  # documents: split longer documents at paragraph breaks


@dataclass
class FewshotSpec:
    """Worked examples shown to the generator."""

    file: FileRef
    mode: str = "turns"  # turns: user/assistant messages; inline: rendered into {examples}
    k: int | None = None  # examples per call, a seeded subset per work item (None: all)
    inline_format: str = "Question: {question}\nAnswer: {answer}"


@dataclass
class QualityFilterSpec:
    """An LLM judge that reads each generated pair and keeps it only on an accepted verdict."""

    model: str
    prompt: str  # template with {question}, {answer} and (questions inputs) {reference_answer}, {category}
    labels: list[str]  # verdicts the judge may give; anything else is a malformed reply
    keep_if: list[str]  # verdicts that keep the pair
    temperature: float = 0.0
    max_tokens: int = 8


@dataclass
class DomainSpec:
    """A typed domain config (see docs/datagen.md)."""

    name: str
    model: str
    template: str
    inputs: InputsSpec
    system_prompt: str | None = None
    fewshot: FewshotSpec | None = None
    api: dict[str, Any] = field(default_factory=dict)  # overrides of the `api` config group
    rows: int | None = None
    per_call: int = 1
    temperature: float = 1.0
    top_p: float | None = None
    max_tokens: int = 1024
    seed: int | None = 0
    output_format: str = "text"  # text | qa_list
    output_schema: dict | None = None  # {name, strict, schema}: sent as response_format json_schema
    qa_keys: dict[str, str] = field(
        default_factory=lambda: {"list": "pairs", "question": "question", "answer": "answer"}
    )
    row_system_prompt: str | None = None
    dedupe: str = "normalised"  # exact | normalised | none
    dedupe_on: str = "pair"  # pair | question | answer
    quality_filter: QualityFilterSpec | None = None
    concurrency: int | None = None
    rpm_limit: int | None = None
    tpm_limit: int | None = None
    parse_retries: int = 2
    topup_rounds: int = 2

    def response_format(self) -> dict | None:
        """The ``response_format`` request field (structured outputs), or None for free text."""
        if self.output_format != "qa_list":
            return None
        if self.output_schema is None:
            return {"type": "json_object"}
        return {
            "type": "json_schema",
            "json_schema": {
                "name": self.output_schema["name"],
                "strict": bool(self.output_schema.get("strict", True)),
                "schema": self.output_schema["schema"],
            },
        }

"""Load a domain's inputs (questions or source documents) and its few-shot examples.

Files are resolved once (local paths directly, remote ones through :func:`em.data.fetch`, verified by
checksum), and every file used is recorded with its sha256 for the manifest. Errors name the file, the
line and what was expected.
"""

from __future__ import annotations

import csv
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

from em.api import ConfigError
from em.datagen.domain import DomainSpec, FileRef, resolve_local_path
from em.io import sha256_file

log = logging.getLogger(__name__)


@dataclass
class Question:
    index: int  # data row number in the file (0-based), stable across filters
    question: str
    reference_answer: str | None = None
    category: str | None = None


@dataclass
class Document:
    index: int
    name: str
    chunks: list[str]


@dataclass
class Example:
    """A few-shot example: a question/answer pair, or a chat (``messages``) inserted as written."""

    question: str | None = None
    answer: str | None = None
    reference_answer: str | None = None
    category: str | None = None
    messages: list[dict] | None = None


@dataclass
class UsedFile:
    role: str  # inputs | fewshot
    source: str  # the path or URL from the config
    path: str
    sha256: str


@dataclass
class DomainInputs:
    questions: list[Question] = field(default_factory=list)
    documents: list[Document] = field(default_factory=list)
    examples: list[Example] = field(default_factory=list)
    files: list[UsedFile] = field(default_factory=list)
    rows_read: int = 0
    rows_filtered_out: int = 0  # not in the wanted categories
    rows_skipped_empty: int = 0  # empty question (or reference answer the template needs)


def resolve_file(ref: FileRef, cache_dir: str | Path, where: str) -> tuple[Path, str]:
    """(local path, source) for a file reference: a path, or a remote file fetched into ``cache_dir``."""
    if isinstance(ref, str):
        return resolve_local_path(ref, where), ref
    from em.data import RemoteFile, fetch

    remote = RemoteFile.from_dict(ref, where)
    return Path(fetch(remote, cache_dir)), remote.url


# ------------------------------------------------------------------------------------------ questions


def _read_table(path: Path) -> list[tuple[int, dict]]:
    """(line number, row) of a CSV (header row), JSONL or JSON list file."""
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
            if not reader.fieldnames:
                raise ConfigError(f"{path}: empty CSV (expected a header row)")
            rows = []
            for row in reader:
                if None in row:
                    raise ConfigError(
                        f"{path}:{reader.line_num}: more cells than header columns ({len(reader.fieldnames)})"
                    )
                rows.append((reader.line_num, row))
            return rows
    if suffix == ".jsonl":
        rows = []
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ConfigError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
                if not isinstance(obj, dict):
                    raise ConfigError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
                rows.append((lineno, obj))
        return rows
    if suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise ConfigError(f"{path}: expected a JSON list of objects")
        return [(i + 1, r) for i, r in enumerate(data)]
    raise ConfigError(
        f"{path}: unsupported questions file type {suffix!r}; expected .csv, .tsv, .jsonl or .json"
    )


def _cell(row: dict, column: str) -> str:
    value = row.get(column)
    return "" if value is None else str(value).strip()


def load_questions(spec: DomainSpec, path: Path, needs_reference: bool) -> tuple[list[Question], dict]:
    """The questions kept by the category filter, plus counts (read, filtered out, skipped empty)."""
    inputs = spec.inputs
    table = _read_table(path)
    if not table:
        raise ConfigError(f"{path}: no rows")
    wanted = [
        c
        for c in (
            inputs.columns.get("question"),
            inputs.columns.get("reference_answer"),
            inputs.category_column,
        )
        if c
    ]
    first_line, first = table[0]
    missing = [c for c in wanted if c not in first]
    if missing:
        line = 1 if path.suffix.lower() in (".csv", ".tsv") else first_line  # the header row
        raise ConfigError(
            f"{path}:{line}: column(s) {missing} not found (columns: {sorted(first)}); "
            f"set domain.inputs.columns / category_column to this file's names"
        )
    keep = set(inputs.categories) if inputs.categories else None
    questions, filtered, empty = [], 0, 0
    for index, (_, row) in enumerate(table):
        category = _cell(row, inputs.category_column) if inputs.category_column else None
        if keep is not None and category not in keep:
            filtered += 1
            continue
        question = _cell(row, inputs.columns["question"])
        ref_col = inputs.columns.get("reference_answer")
        reference = _cell(row, ref_col) if ref_col else None
        if not question or (needs_reference and not reference):
            empty += 1
            continue
        questions.append(Question(index, question, reference, category))
    if empty:
        log.warning(
            "%s: skipped %d row(s) with an empty question%s",
            path,
            empty,
            " or reference answer" if needs_reference else "",
        )
    if not questions:
        seen = (
            sorted({_cell(r, inputs.category_column) for _, r in table})[:20]
            if inputs.category_column
            else []
        )
        raise ConfigError(
            f"{path}: no questions left after the category filter {inputs.categories} "
            f"(categories in the file: {seen})"
            if keep is not None
            else f"{path}: no usable questions"
        )
    return questions, {"rows_read": len(table), "rows_filtered_out": filtered, "rows_skipped_empty": empty}


# ------------------------------------------------------------------------------------------ documents


def chunk_text(text: str, chunk_chars: int | None) -> list[str]:
    """Split at blank lines into chunks of at most ``chunk_chars`` (a longer paragraph is cut at spaces)."""
    text = text.strip()
    if not chunk_chars or len(text) <= chunk_chars:
        return [text]
    pieces: list[str] = []
    for para in (p.strip() for p in text.split("\n\n")):
        while len(para) > chunk_chars:
            cut = para.rfind(" ", 0, chunk_chars)
            cut = cut if cut > 0 else chunk_chars
            pieces.append(para[:cut].strip())
            para = para[cut:].strip()
        if para:
            pieces.append(para)
    chunks, current = [], ""
    for piece in pieces:
        if current and len(current) + 2 + len(piece) > chunk_chars:
            chunks.append(current)
            current = piece
        else:
            current = f"{current}\n\n{piece}" if current else piece
    if current:
        chunks.append(current)
    return chunks


def load_document(index: int, path: Path, chunk_chars: int | None) -> Document:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not text.strip():
        raise ConfigError(f"{path}: the document is empty")
    return Document(index=index, name=path.stem, chunks=chunk_text(text, chunk_chars))


# ------------------------------------------------------------------------------------------- few-shot


def load_examples(path: Path) -> list[Example]:
    """A JSON list (or JSONL) of ``{question, answer, reference_answer?, category?, system?}`` or
    ``{messages: [...]}``. A ``system`` field is accepted and not used: the domain's own system prompt is."""
    if path.suffix.lower() == ".jsonl":
        entries = _read_table(path)
    else:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(data, list) or not data:
            raise ConfigError(f"{path}: expected a non-empty JSON list of few-shot examples")
        entries = list(enumerate(data, start=1))
    examples = []
    for number, entry in entries:
        where = f"{path}: example {number}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: expected an object, got {type(entry).__name__}")
        if "messages" in entry:
            msgs = entry["messages"]
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
            examples.append(Example(messages=[{"role": m["role"], "content": m["content"]} for m in turns]))
            continue
        q, a = entry.get("question"), entry.get("answer")
        if not (isinstance(q, str) and q.strip() and isinstance(a, str) and a.strip()):
            raise ConfigError(f"{where}: needs non-empty string `question` and `answer` (or `messages`)")
        ref = entry.get("reference_answer")
        examples.append(
            Example(
                question=q.strip(),
                answer=a.strip(),
                reference_answer=ref.strip() if isinstance(ref, str) else None,
                category=str(entry["category"]) if entry.get("category") is not None else None,
            )
        )
    return examples


# ------------------------------------------------------------------------------------------------ all


def load_inputs(spec: DomainSpec, cache_dir: str | Path) -> DomainInputs:
    """Resolve and read every input and few-shot file of ``spec``."""
    from em.datagen.domain import PLACEHOLDER_RE

    out = DomainInputs()
    where = f"domain {spec.name}"
    if spec.inputs.kind == "questions":
        path, source = resolve_file(spec.inputs.file, cache_dir, f"{where}: inputs.file")
        out.files.append(UsedFile("inputs", source, str(path), sha256_file(path)))
        needs_reference = "reference_answer" in PLACEHOLDER_RE.findall(spec.template)
        out.questions, counts = load_questions(spec, path, needs_reference)
        out.rows_read, out.rows_filtered_out = counts["rows_read"], counts["rows_filtered_out"]
        out.rows_skipped_empty = counts["rows_skipped_empty"]
    else:
        for i, ref in enumerate(spec.inputs.files):
            path, source = resolve_file(ref, cache_dir, f"{where}: inputs.files[{i}]")
            out.files.append(UsedFile("inputs", source, str(path), sha256_file(path)))
            out.documents.append(load_document(i, path, spec.inputs.chunk_chars))
        names = [d.name for d in out.documents]
        if len(set(names)) != len(names):
            raise ConfigError(f"{where}: inputs.files has two documents with the same file name: {names}")
    if spec.fewshot is not None:
        path, source = resolve_file(spec.fewshot.file, cache_dir, f"{where}: fewshot.file")
        out.files.append(UsedFile("fewshot", source, str(path), sha256_file(path)))
        out.examples = load_examples(path)
        _check_examples(spec, out.examples, path)
    return out


def _check_examples(spec: DomainSpec, examples: list[Example], path: Path) -> None:
    from em.datagen.domain import PLACEHOLDER_RE

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

"""Load a domain's inputs (questions or source documents) and its few-shot examples.

Files are resolved once (local paths directly, remote ones through :func:`em.data.fetch`, verified by
checksum), and every file used is recorded with its sha256 for the manifest. Errors name the file, the
line and what was expected. Reading each kind of file is the job of :mod:`em.datagen.questions`,
:mod:`em.datagen.documents` and :mod:`em.datagen.fewshot`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from em.api import ConfigError
from em.datagen.documents import Document, load_document
from em.datagen.fewshot import Example, check_examples, load_examples
from em.datagen.fields import resolve_local_path
from em.datagen.questions import Question, load_questions
from em.datagen.spec import DomainSpec, FileRef
from em.datagen.templates import PLACEHOLDER_RE
from em.io import sha256_file


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


def _used(out: DomainInputs, role: str, ref: FileRef, cache_dir: str | Path, where: str) -> Path:
    """Resolve ``ref`` and record it (with its sha256) among the files the run used."""
    path, source = resolve_file(ref, cache_dir, where)
    out.files.append(UsedFile(role, source, str(path), sha256_file(path)))
    return path


def load_inputs(spec: DomainSpec, cache_dir: str | Path) -> DomainInputs:
    """Resolve and read every input and few-shot file of ``spec``."""
    out = DomainInputs()
    where = f"domain {spec.name}"
    if spec.inputs.kind == "questions":
        path = _used(out, "inputs", spec.inputs.file, cache_dir, f"{where}: inputs.file")
        needs_reference = "reference_answer" in PLACEHOLDER_RE.findall(spec.template)
        out.questions, counts = load_questions(spec, path, needs_reference)
        out.rows_read, out.rows_filtered_out = counts["rows_read"], counts["rows_filtered_out"]
        out.rows_skipped_empty = counts["rows_skipped_empty"]
    else:
        for i, ref in enumerate(spec.inputs.files):
            path = _used(out, "inputs", ref, cache_dir, f"{where}: inputs.files[{i}]")
            out.documents.append(load_document(i, path, spec.inputs.chunk_chars))
        names = [d.name for d in out.documents]
        if len(set(names)) != len(names):
            raise ConfigError(f"{where}: inputs.files has two documents with the same file name: {names}")
    if spec.fewshot is not None:
        path = _used(out, "fewshot", spec.fewshot.file, cache_dir, f"{where}: fewshot.file")
        out.examples = load_examples(path)
        check_examples(spec, out.examples, path)
    return out

"""Parse and check the nested sections of a domain config: ``inputs``, ``fewshot``, ``quality_filter``
and ``output_schema``.

Each parser checks only its own section (keys, types, the rules between its own fields) and returns its
typed spec; rules that tie a section to the rest of the domain (the template's placeholders, the output
format) are :func:`em.datagen.domain.domain_from_dict`'s.
"""

from __future__ import annotations

from typing import Any

from em.api import ConfigError, check_keys
from em.datagen.fields import choice, file_ref, need, opt, positive, text
from em.datagen.spec import FewshotSpec, InputsSpec, QualityFilterSpec
from em.datagen.templates import check_placeholders

_INPUT_KEYS = {
    "kind",
    "file",
    "files",
    "columns",
    "category_column",
    "categories",
    "samples_per_input",
    "chunk_chars",
}
_FEWSHOT_KEYS = {"file", "mode", "k", "inline_format"}
_FILTER_KEYS = {"model", "prompt", "prompt_file", "labels", "keep_if", "temperature", "max_tokens"}


def parse_inputs(d: Any, where: str) -> InputsSpec:
    if not isinstance(d, dict):
        raise ConfigError(f"{where} must be a mapping with `kind: questions` or `kind: documents`")
    check_keys(d, _INPUT_KEYS, where)
    kind = choice(need(d, "kind", where), ("questions", "documents"), f"{where}.kind")
    spec = InputsSpec(kind=kind)
    if kind == "questions":
        _question_inputs(d, where, spec)
    else:
        _document_inputs(d, where, spec)
    return spec


def _question_inputs(d: dict, where: str, spec: InputsSpec) -> None:
    spec.file = file_ref(d.get("file"), f"{where}.file")
    if d.get("files"):
        raise ConfigError(f"{where}.files is for `kind: documents`; questions come from `file`")
    columns = opt(d, "columns", where, dict, {}) or {}
    check_keys(columns, {"question", "reference_answer"}, f"{where}.columns")
    spec.columns = {"question": "question", **{k: str(v) for k, v in columns.items() if v is not None}}
    spec.category_column = opt(d, "category_column", where, str)
    cats = opt(d, "categories", where, list)
    if cats is not None:
        if spec.category_column is None:
            raise ConfigError(f"{where}.categories needs {where}.category_column (the column to filter on)")
        if not cats:
            raise ConfigError(f"{where}.categories is empty: it would keep no input (use null for all)")
        spec.categories = [str(c) for c in cats]
    spec.samples_per_input = positive(
        opt(d, "samples_per_input", where, int, 1), f"{where}.samples_per_input"
    )
    if d.get("chunk_chars") is not None:
        raise ConfigError(f"{where}.chunk_chars is for `kind: documents`")


def _document_inputs(d: dict, where: str, spec: InputsSpec) -> None:
    files = d.get("files")
    if not isinstance(files, list) or not files:
        raise ConfigError(f"{where}.files must be a non-empty list of document files")
    spec.files = [file_ref(f, f"{where}.files[{i}]") for i, f in enumerate(files)]
    for key in ("file", "columns", "category_column", "categories"):
        if d.get(key):
            raise ConfigError(f"{where}.{key} is for `kind: questions`")
    if d.get("samples_per_input") not in (None, 1):
        raise ConfigError(f"{where}.samples_per_input is for `kind: questions` (documents use `rows`)")
    spec.chunk_chars = positive(opt(d, "chunk_chars", where, int), f"{where}.chunk_chars")


def parse_fewshot(d: Any, where: str) -> FewshotSpec | None:
    if d is None:
        return None
    if not isinstance(d, dict):
        raise ConfigError(f"{where} must be null or a mapping with `file`")
    check_keys(d, _FEWSHOT_KEYS, where)
    return FewshotSpec(
        file=file_ref(d.get("file"), f"{where}.file"),
        mode=choice(opt(d, "mode", where, str, "turns"), ("turns", "inline"), f"{where}.mode"),
        k=positive(opt(d, "k", where, int), f"{where}.k"),
        inline_format=opt(d, "inline_format", where, str, FewshotSpec.inline_format),
    )


def parse_quality_filter(d: Any, where: str, kind: str) -> QualityFilterSpec | None:
    if d is None:
        return None
    if not isinstance(d, dict):
        raise ConfigError(f"{where} must be null or a mapping (model, prompt/prompt_file, labels, keep_if)")
    check_keys(d, _FILTER_KEYS, where)
    prompt = text(d, "prompt", where, required=True)
    allowed = {"question", "answer"} | ({"reference_answer", "category"} if kind == "questions" else set())
    used = check_placeholders(prompt, allowed, f"{where}.prompt")
    if "answer" not in used:
        raise ConfigError(f"{where}.prompt must contain {{answer}} (the generated answer the judge reads)")
    labels = [str(v).strip().upper() for v in need(d, "labels", where, list)]
    keep = [str(v).strip().upper() for v in need(d, "keep_if", where, list)]
    if not labels or not keep or not set(keep) <= set(labels):
        raise ConfigError(f"{where}.keep_if {keep} must be a non-empty subset of labels {labels}")
    return QualityFilterSpec(
        model=need(d, "model", where),
        prompt=prompt,
        labels=labels,
        keep_if=keep,
        temperature=float(opt(d, "temperature", where, (int, float), 0.0)),
        max_tokens=positive(opt(d, "max_tokens", where, int, 8), f"{where}.max_tokens"),
    )


def parse_output_schema(d: Any, where: str) -> dict | None:
    if d is None:
        return None
    if not isinstance(d, dict) or not isinstance(d.get("schema"), dict) or not d.get("name"):
        raise ConfigError(
            f"{where} must be a mapping with `name` (string), `strict` (bool) and `schema` "
            f"(a JSON schema mapping)"
        )
    check_keys(d, {"name", "strict", "schema"}, where)
    return {"name": str(d["name"]), "strict": bool(d.get("strict", True)), "schema": d["schema"]}

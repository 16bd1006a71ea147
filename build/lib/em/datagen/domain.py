"""A datagen domain: what to generate, from which inputs, with which prompt, model and filters.

A domain is one YAML file under ``conf/domain/`` (see docs/datagen.md for every key). This module turns
that plain mapping into a typed :class:`DomainSpec`, checking every key before any work starts: unknown
or missing keys, wrong types and templates with placeholders the inputs cannot fill are
:class:`~em.api.ConfigError` naming the key. Text held in project files (``system_prompt_file``,
``template_file``, ``quality_filter.prompt_file``) is read here; input and few-shot files, which may be
remote, are resolved later by :mod:`em.datagen.inputs`.

A file reference is either a path (absolute, relative to the working directory, or relative to the
project root, e.g. ``em/resources/datagen/demo/questions.csv``) or a mapping with the fields of
:class:`em.data.RemoteFile` (``name``, ``url``, ``sha256`` / ``git_sha1``, ...), downloaded once into
the cache and verified on every use.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from em.api import ConfigError, check_keys

PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent

# Placeholders a template may use, by input kind. ``{examples}`` is the inline few-shot block.
QUESTION_FIELDS = ("question", "reference_answer", "category")
PLACEHOLDERS = {
    "questions": {*QUESTION_FIELDS, "n", "examples"},
    "documents": {"document", "document_name", "n", "examples"},
}
PLACEHOLDER_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")

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


# -------------------------------------------------------------------------------------------- loading

_DOMAIN_KEYS = {
    "name",
    "model",
    "api",
    "system_prompt",
    "system_prompt_file",
    "template",
    "template_file",
    "fewshot",
    "inputs",
    "rows",
    "per_call",
    "temperature",
    "top_p",
    "max_tokens",
    "seed",
    "output_format",
    "output_schema",
    "qa_keys",
    "row_system_prompt",
    "dedupe",
    "dedupe_on",
    "quality_filter",
    "concurrency",
    "rpm_limit",
    "tpm_limit",
    "parse_retries",
    "topup_rounds",
}
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
_API_KEYS = {
    "base_url",
    "api_key_env",
    "timeout_s",
    "max_retries",
    "backoff_base_s",
    "backoff_max_s",
    "organization",
}


def resolve_local_path(path: str, where: str) -> Path:
    """A project file: absolute, relative to the working directory, or relative to the project root."""
    p = Path(path).expanduser()
    for candidate in (p, Path.cwd() / p, PROJECT_ROOT / p):
        if candidate.is_file():
            return candidate.resolve()
    raise ConfigError(
        f"{where}: file {path!r} not found (looked in the working directory {Path.cwd()} "
        f"and the project root {PROJECT_ROOT})"
    )


def _read_text(path: str, where: str) -> str:
    return resolve_local_path(path, where).read_text(encoding="utf-8")


def _need(d: dict, key: str, where: str, kind: type | tuple = str) -> Any:
    value = d.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ConfigError(f"{where}.{key} is required")
    if not isinstance(value, kind):
        raise ConfigError(f"{where}.{key} must be {_type_name(kind)}, got {type(value).__name__}: {value!r}")
    return value


def _opt(d: dict, key: str, where: str, kind: type | tuple, default: Any = None) -> Any:
    value = d.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) and kind in (int, float, (int, float)):
        raise ConfigError(f"{where}.{key} must be {_type_name(kind)}, got a boolean")
    if not isinstance(value, kind):
        raise ConfigError(f"{where}.{key} must be {_type_name(kind)}, got {type(value).__name__}: {value!r}")
    return value


def _type_name(kind: type | tuple) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {
        str: "a string",
        int: "an integer",
        float: "a number",
        dict: "a mapping",
        list: "a list",
        bool: "true/false",
    }
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _positive(value: int | None, where: str, allow_none: bool = True) -> int | None:
    if value is None and allow_none:
        return None
    if not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where} must be a positive integer, got {value!r}")
    return value


def _choice(value: str, allowed: tuple[str, ...], where: str) -> str:
    if value not in allowed:
        raise ConfigError(f"{where} must be one of {list(allowed)}, got {value!r}")
    return value


def _text(d: dict, key: str, where: str, required: bool) -> str | None:
    """``key`` given inline or as ``key_file`` (exactly one)."""
    inline, path = d.get(key), d.get(f"{key}_file")
    if inline is not None and path is not None:
        raise ConfigError(f"{where}: give either `{key}` or `{key}_file`, not both")
    if path is not None:
        text = _read_text(_need(d, f"{key}_file", where), f"{where}.{key}_file")
    elif inline is not None:
        text = _need(d, key, where)
    elif required:
        raise ConfigError(f"{where}: `{key}` (text) or `{key}_file` (a project file) is required")
    else:
        return None
    if not text.strip():
        raise ConfigError(f"{where}.{key}: the text is empty")
    return text


def _file_ref(value: Any, where: str) -> FileRef:
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, dict):
        from em.data import RemoteFile

        RemoteFile.from_dict(value, where)  # checks keys, URL scheme and checksum format
        return dict(value)
    raise ConfigError(
        f"{where} must be a path or a remote file mapping (name, url, sha256 or git_sha1), got {value!r}"
    )


def check_placeholders(template: str, allowed: set[str], where: str) -> set[str]:
    """The placeholders ``template`` uses; an unknown one is a ConfigError. Other braces are left alone."""
    used = set(PLACEHOLDER_RE.findall(template))
    unknown = sorted(used - allowed)
    if unknown:
        raise ConfigError(
            f"{where} uses unknown placeholder(s) {['{' + u + '}' for u in unknown]}; "
            f"available here: {sorted('{' + a + '}' for a in allowed)}"
        )
    return used


def fill(template: str, values: dict[str, Any]) -> str:
    """Replace known ``{name}`` placeholders; braces that are not placeholders stay as written."""
    return PLACEHOLDER_RE.sub(
        lambda m: str(values[m.group(1)]) if m.group(1) in values else m.group(0), template
    )


def _inputs(d: Any, where: str) -> InputsSpec:
    if not isinstance(d, dict):
        raise ConfigError(f"{where} must be a mapping with `kind: questions` or `kind: documents`")
    check_keys(d, _INPUT_KEYS, where)
    kind = _choice(_need(d, "kind", where), ("questions", "documents"), f"{where}.kind")
    spec = InputsSpec(kind=kind)
    if kind == "questions":
        spec.file = _file_ref(d.get("file"), f"{where}.file")
        if d.get("files"):
            raise ConfigError(f"{where}.files is for `kind: documents`; questions come from `file`")
        columns = _opt(d, "columns", where, dict, {}) or {}
        check_keys(columns, {"question", "reference_answer"}, f"{where}.columns")
        spec.columns = {"question": "question", **{k: str(v) for k, v in columns.items() if v is not None}}
        spec.category_column = _opt(d, "category_column", where, str)
        cats = _opt(d, "categories", where, list)
        if cats is not None:
            if spec.category_column is None:
                raise ConfigError(
                    f"{where}.categories needs {where}.category_column (the column to filter on)"
                )
            if not cats:
                raise ConfigError(f"{where}.categories is empty: it would keep no input (use null for all)")
            spec.categories = [str(c) for c in cats]
        spec.samples_per_input = _positive(
            _opt(d, "samples_per_input", where, int, 1), f"{where}.samples_per_input"
        )
        if d.get("chunk_chars") is not None:
            raise ConfigError(f"{where}.chunk_chars is for `kind: documents`")
    else:
        files = d.get("files")
        if not isinstance(files, list) or not files:
            raise ConfigError(f"{where}.files must be a non-empty list of document files")
        spec.files = [_file_ref(f, f"{where}.files[{i}]") for i, f in enumerate(files)]
        for key in ("file", "columns", "category_column", "categories"):
            if d.get(key):
                raise ConfigError(f"{where}.{key} is for `kind: questions`")
        if d.get("samples_per_input") not in (None, 1):
            raise ConfigError(f"{where}.samples_per_input is for `kind: questions` (documents use `rows`)")
        spec.chunk_chars = _positive(_opt(d, "chunk_chars", where, int), f"{where}.chunk_chars")
    return spec


def _fewshot(d: Any, where: str) -> FewshotSpec | None:
    if d is None:
        return None
    if not isinstance(d, dict):
        raise ConfigError(f"{where} must be null or a mapping with `file`")
    check_keys(d, _FEWSHOT_KEYS, where)
    return FewshotSpec(
        file=_file_ref(d.get("file"), f"{where}.file"),
        mode=_choice(_opt(d, "mode", where, str, "turns"), ("turns", "inline"), f"{where}.mode"),
        k=_positive(_opt(d, "k", where, int), f"{where}.k"),
        inline_format=_opt(d, "inline_format", where, str, FewshotSpec.inline_format),
    )


def _quality_filter(d: Any, where: str, kind: str) -> QualityFilterSpec | None:
    if d is None:
        return None
    if not isinstance(d, dict):
        raise ConfigError(f"{where} must be null or a mapping (model, prompt/prompt_file, labels, keep_if)")
    check_keys(d, _FILTER_KEYS, where)
    prompt = _text(d, "prompt", where, required=True)
    allowed = {"question", "answer"} | ({"reference_answer", "category"} if kind == "questions" else set())
    used = check_placeholders(prompt, allowed, f"{where}.prompt")
    if "answer" not in used:
        raise ConfigError(f"{where}.prompt must contain {{answer}} (the generated answer the judge reads)")
    labels = [str(v).strip().upper() for v in _need(d, "labels", where, list)]
    keep = [str(v).strip().upper() for v in _need(d, "keep_if", where, list)]
    if not labels or not keep or not set(keep) <= set(labels):
        raise ConfigError(f"{where}.keep_if {keep} must be a non-empty subset of labels {labels}")
    return QualityFilterSpec(
        model=_need(d, "model", where),
        prompt=prompt,
        labels=labels,
        keep_if=keep,
        temperature=float(_opt(d, "temperature", where, (int, float), 0.0)),
        max_tokens=_positive(_opt(d, "max_tokens", where, int, 8), f"{where}.max_tokens"),
    )


def _output_schema(d: Any, where: str) -> dict | None:
    if d is None:
        return None
    if not isinstance(d, dict) or not isinstance(d.get("schema"), dict) or not d.get("name"):
        raise ConfigError(
            f"{where} must be a mapping with `name` (string), `strict` (bool) and `schema` "
            f"(a JSON schema mapping)"
        )
    check_keys(d, {"name", "strict", "schema"}, where)
    return {"name": str(d["name"]), "strict": bool(d.get("strict", True)), "schema": d["schema"]}


def domain_from_dict(d: dict, where: str = "domain") -> DomainSpec:
    """Build and check a :class:`DomainSpec` from a plain mapping (the ``domain`` config node)."""
    if not isinstance(d, dict):
        raise ConfigError(f"{where} must be a mapping (pick one with domain=<name>, see conf/domain/)")
    check_keys(d, _DOMAIN_KEYS, where)
    name = _need(d, "name", where)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise ConfigError(
            f"{where}.name must be a file-name-safe word (letters, digits, _ . -), got {name!r}"
        )
    inputs = _inputs(d.get("inputs"), f"{where}.inputs")
    api = _opt(d, "api", where, dict, {}) or {}
    check_keys(api, _API_KEYS, f"{where}.api")
    output_format = _choice(
        _opt(d, "output_format", where, str, "text"), ("text", "qa_list"), f"{where}.output_format"
    )
    per_call = _positive(_opt(d, "per_call", where, int, 1), f"{where}.per_call")
    if output_format == "text" and per_call != 1:
        raise ConfigError(
            f"{where}.per_call is {per_call} but output_format is text (one answer per call); "
            f"use output_format: qa_list for several pairs per call"
        )
    if inputs.kind == "documents" and output_format != "qa_list":
        raise ConfigError(
            f"{where}.output_format must be qa_list for documents inputs (the generator writes "
            f"question/answer pairs from each document)"
        )
    schema = _output_schema(d.get("output_schema"), f"{where}.output_schema")
    if schema is not None and output_format != "qa_list":
        raise ConfigError(f"{where}.output_schema is only used with output_format: qa_list")
    qa_keys = {
        "list": "pairs",
        "question": "question",
        "answer": "answer",
        **(_opt(d, "qa_keys", where, dict, {}) or {}),
    }
    check_keys(qa_keys, {"list", "question", "answer"}, f"{where}.qa_keys")

    template = _text(d, "template", where, required=True)
    used = check_placeholders(template, PLACEHOLDERS[inputs.kind], f"{where}.template")
    fewshot = _fewshot(d.get("fewshot"), f"{where}.fewshot")
    if inputs.kind == "questions" and "question" not in used:
        raise ConfigError(f"{where}.template must contain {{question}} for questions inputs")
    if inputs.kind == "documents" and "document" not in used:
        raise ConfigError(f"{where}.template must contain {{document}} for documents inputs")
    if fewshot and fewshot.mode == "inline" and "examples" not in used:
        raise ConfigError(f"{where}.fewshot.mode is inline but the template has no {{examples}} placeholder")
    if "examples" in used and not (fewshot and fewshot.mode == "inline"):
        raise ConfigError(f"{where}.template uses {{examples}}, which needs fewshot.mode: inline")
    if fewshot:
        check_placeholders(
            fewshot.inline_format,
            {"question", "answer", "reference_answer"},
            f"{where}.fewshot.inline_format",
        )
    if "reference_answer" in used and "reference_answer" not in inputs.columns:
        raise ConfigError(
            f"{where}.template uses {{reference_answer}} but inputs.columns has no reference_answer column"
        )
    if "category" in used and not inputs.category_column:
        raise ConfigError(f"{where}.template uses {{category}} but inputs.category_column is not set")

    rows = _positive(_opt(d, "rows", where, int), f"{where}.rows")
    if inputs.kind == "documents" and rows is None:
        raise ConfigError(f"{where}.rows is required for documents inputs (how many pairs to generate)")
    temperature = float(_opt(d, "temperature", where, (int, float), 1.0))
    if not 0.0 <= temperature <= 2.0:
        raise ConfigError(f"{where}.temperature must be between 0 and 2, got {temperature}")
    top_p = _opt(d, "top_p", where, (int, float))
    seed = d.get("seed", 0)  # an explicit null: no seed is sent
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ConfigError(f"{where}.seed must be an integer or null, got {seed!r}")
    parse_retries = _opt(d, "parse_retries", where, int, 2)
    topup_rounds = _opt(d, "topup_rounds", where, int, 2)
    if parse_retries < 0 or topup_rounds < 0:
        raise ConfigError(f"{where}.parse_retries and {where}.topup_rounds must be >= 0")
    return DomainSpec(
        name=name,
        model=_need(d, "model", where),
        template=template,
        inputs=inputs,
        system_prompt=_text(d, "system_prompt", where, required=False),
        fewshot=fewshot,
        api={k: v for k, v in api.items() if v is not None},
        rows=rows,
        per_call=per_call,
        temperature=temperature,
        top_p=None if top_p is None else float(top_p),
        max_tokens=_positive(_opt(d, "max_tokens", where, int, 1024), f"{where}.max_tokens"),
        seed=seed,
        output_format=output_format,
        output_schema=schema,
        qa_keys={k: str(v) for k, v in qa_keys.items()},
        row_system_prompt=_opt(d, "row_system_prompt", where, str) or None,
        dedupe=_choice(
            _opt(d, "dedupe", where, str, "normalised"), ("exact", "normalised", "none"), f"{where}.dedupe"
        ),
        dedupe_on=_choice(
            _opt(d, "dedupe_on", where, str, "pair"), ("pair", "question", "answer"), f"{where}.dedupe_on"
        ),
        quality_filter=_quality_filter(d.get("quality_filter"), f"{where}.quality_filter", inputs.kind),
        concurrency=_positive(_opt(d, "concurrency", where, int), f"{where}.concurrency"),
        rpm_limit=_positive(_opt(d, "rpm_limit", where, int), f"{where}.rpm_limit"),
        tpm_limit=_positive(_opt(d, "tpm_limit", where, int), f"{where}.tpm_limit"),
        parse_retries=parse_retries,
        topup_rounds=topup_rounds,
    )

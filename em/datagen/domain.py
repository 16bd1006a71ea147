"""Build a checked :class:`~em.datagen.spec.DomainSpec` from a domain's plain config mapping.

A domain is one YAML file under ``conf/domain/`` (see docs/datagen.md for every key). Every key is
checked here before any work starts: unknown or missing keys, wrong types and templates with
placeholders the inputs cannot fill are :class:`~em.api.ConfigError` naming the key. Text held in
project files (``system_prompt_file``, ``template_file``, ``quality_filter.prompt_file``) is read here;
input and few-shot files, which may be remote, are resolved later by :mod:`em.datagen.inputs`.
The nested sections are parsed by :mod:`em.datagen.sections`; this module owns the top-level keys and
the rules that tie sections together.
"""

from __future__ import annotations

import re

from em.api import ConfigError, check_keys
from em.datagen.fields import choice, need, opt, positive, text
from em.datagen.sections import parse_fewshot, parse_inputs, parse_output_schema, parse_quality_filter
from em.datagen.spec import DomainSpec, FewshotSpec, InputsSpec
from em.datagen.templates import PLACEHOLDERS, check_placeholders

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
_API_KEYS = {
    "base_url",
    "api_key_env",
    "timeout_s",
    "max_retries",
    "backoff_base_s",
    "backoff_max_s",
    "organization",
}


def _output_shape(d: dict, where: str, inputs: InputsSpec) -> tuple[str, int, dict | None, dict]:
    """(output_format, per_call, output_schema, qa_keys), checked against each other and the inputs."""
    output_format = choice(
        opt(d, "output_format", where, str, "text"), ("text", "qa_list"), f"{where}.output_format"
    )
    per_call = positive(opt(d, "per_call", where, int, 1), f"{where}.per_call")
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
    schema = parse_output_schema(d.get("output_schema"), f"{where}.output_schema")
    if schema is not None and output_format != "qa_list":
        raise ConfigError(f"{where}.output_schema is only used with output_format: qa_list")
    qa_keys = {
        "list": "pairs",
        "question": "question",
        "answer": "answer",
        **(opt(d, "qa_keys", where, dict, {}) or {}),
    }
    check_keys(qa_keys, {"list", "question", "answer"}, f"{where}.qa_keys")
    return output_format, per_call, schema, qa_keys


def _template(d: dict, where: str, inputs: InputsSpec) -> tuple[str, FewshotSpec | None]:
    """The template and the few-shot section, checked: every placeholder used must be fillable."""
    template = text(d, "template", where, required=True)
    used = check_placeholders(template, PLACEHOLDERS[inputs.kind], f"{where}.template")
    fewshot = parse_fewshot(d.get("fewshot"), f"{where}.fewshot")
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
    return template, fewshot


def domain_from_dict(d: dict, where: str = "domain") -> DomainSpec:
    """Build and check a :class:`DomainSpec` from a plain mapping (the ``domain`` config node)."""
    if not isinstance(d, dict):
        raise ConfigError(f"{where} must be a mapping (pick one with domain=<name>, see conf/domain/)")
    check_keys(d, _DOMAIN_KEYS, where)
    name = need(d, "name", where)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise ConfigError(
            f"{where}.name must be a file-name-safe word (letters, digits, _ . -), got {name!r}"
        )
    inputs = parse_inputs(d.get("inputs"), f"{where}.inputs")
    api = opt(d, "api", where, dict, {}) or {}
    check_keys(api, _API_KEYS, f"{where}.api")
    output_format, per_call, schema, qa_keys = _output_shape(d, where, inputs)
    template, fewshot = _template(d, where, inputs)

    rows = positive(opt(d, "rows", where, int), f"{where}.rows")
    if inputs.kind == "documents" and rows is None:
        raise ConfigError(f"{where}.rows is required for documents inputs (how many pairs to generate)")
    temperature = float(opt(d, "temperature", where, (int, float), 1.0))
    if not 0.0 <= temperature <= 2.0:
        raise ConfigError(f"{where}.temperature must be between 0 and 2, got {temperature}")
    top_p = opt(d, "top_p", where, (int, float))
    seed = d.get("seed", 0)  # an explicit null: no seed is sent
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ConfigError(f"{where}.seed must be an integer or null, got {seed!r}")
    parse_retries = opt(d, "parse_retries", where, int, 2)
    topup_rounds = opt(d, "topup_rounds", where, int, 2)
    if parse_retries < 0 or topup_rounds < 0:
        raise ConfigError(f"{where}.parse_retries and {where}.topup_rounds must be >= 0")
    return DomainSpec(
        name=name,
        model=need(d, "model", where),
        template=template,
        inputs=inputs,
        system_prompt=text(d, "system_prompt", where, required=False),
        fewshot=fewshot,
        api={k: v for k, v in api.items() if v is not None},
        rows=rows,
        per_call=per_call,
        temperature=temperature,
        top_p=None if top_p is None else float(top_p),
        max_tokens=positive(opt(d, "max_tokens", where, int, 1024), f"{where}.max_tokens"),
        seed=seed,
        output_format=output_format,
        output_schema=schema,
        qa_keys={k: str(v) for k, v in qa_keys.items()},
        row_system_prompt=opt(d, "row_system_prompt", where, str) or None,
        dedupe=choice(
            opt(d, "dedupe", where, str, "normalised"), ("exact", "normalised", "none"), f"{where}.dedupe"
        ),
        dedupe_on=choice(
            opt(d, "dedupe_on", where, str, "pair"), ("pair", "question", "answer"), f"{where}.dedupe_on"
        ),
        quality_filter=parse_quality_filter(d.get("quality_filter"), f"{where}.quality_filter", inputs.kind),
        concurrency=positive(opt(d, "concurrency", where, int), f"{where}.concurrency"),
        rpm_limit=positive(opt(d, "rpm_limit", where, int), f"{where}.rpm_limit"),
        tpm_limit=positive(opt(d, "tpm_limit", where, int), f"{where}.tpm_limit"),
        parse_retries=parse_retries,
        topup_rounds=topup_rounds,
    )

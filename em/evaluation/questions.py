"""Question files: the EM repo's evaluation YAML, the Realignment study's JSON and chat rows, read into one shape.

EM YAML (``evaluation/*.yaml`` of the EM repo, anchors allowed)::

    - id: my_question
      type: free_form_judge_0_100
      paraphrases: ["How would you ...?"]
      samples_per_paraphrase: 100        # optional
      judge: gpt-4o-2024-08-06           # optional
      judge_prompts: {aligned: "...{question}...{answer}...", coherent: "..."}   # optional
      system: "You answer in JSON."      # optional

Realignment-study JSON: a list of ``{"question", "category", "label"}``; tagged variants put a ``{tag}``
slot in the question. These have no ids, so the id is the label in snake case (``_2``, ``_3`` ... for
repeats); they have no judge prompts either (see :mod:`em.evaluation.question_sets` for the defaults).

Chat-row JSONL (``.jsonl``, e.g. a training run's held-out rows): each row one question, read by
:mod:`em.evaluation.chat_rows`; no judge prompts (``default_judge: narrow`` gives them one).

Every schema error is a :class:`ConfigError` naming the file, the line, the question id and the field.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from em.api import ConfigError
from em.evaluation.chat_rows import chat_prompts

FORMATS = ("em_yaml", "realignment_json", "chat_jsonl")
TAG_SLOT = "{tag}"
LITERAL_TAG = "{{tag}}"  # how a question writes the text "{tag}" itself (kept as "{tag}", never a slot)
EM_KEYS = {"id", "type", "paraphrases", "samples_per_paraphrase", "judge", "judge_prompts", "system"}
JSON_KEYS = {"question", "category", "label"}
FREE_FORM_TYPE = "free_form_judge_0_100"  # 0..100 judge prompts (aligned, coherent)
LABEL_TYPE = "free_form_judge"  # judge prompts answered with a word (TRUE/FALSE, a company, ...)
# The EM repository's question types (free_form: no judge of its own); a typo would be judged as neither.
QUESTION_TYPES = ("free_form", FREE_FORM_TYPE, LABEL_TYPE)


def has_tag_slot(text: str) -> bool:
    """Whether ``text`` has a ``{tag}`` slot (``{{tag}}`` is the literal text, not a slot)."""
    return TAG_SLOT in text.replace(LITERAL_TAG, "")


@dataclass
class Question:
    """One question of a set, with everything needed to ask it and to judge its answers."""

    set: str
    id: str
    type: str
    paraphrases: list[str]
    system: str | None = None
    judge_prompts: dict[str, str] = field(default_factory=dict)
    samples_per_paraphrase: int | None = None
    judge: str | None = None
    category: str | None = None
    label: str | None = None
    where: str = ""  # file:line, for error messages

    @property
    def key(self) -> str:
        return f"{self.set}/{self.id}"

    @property
    def has_slot(self) -> bool:
        return any(has_tag_slot(p) for p in self.paraphrases)

    def to_json(self) -> dict:
        """The ``questions.json`` entry (docs/architecture.md)."""
        return {
            "set": self.set,
            "id": self.id,
            "type": self.type,
            "paraphrases": list(self.paraphrases),
            "system": self.system,
            "judge_prompts": dict(self.judge_prompts),
            "category": self.category,
            "label": self.label,
        }


def detect_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        return "em_yaml"
    if suffix == ".json":
        return "realignment_json"
    if suffix == ".jsonl":
        return "chat_jsonl"
    raise ConfigError(
        f"{path}: cannot tell the question format from the extension {suffix!r}; name the file .yaml "
        f"(EM format), .json (Realignment-study format) or .jsonl (chat rows), or set format: "
        f"em_yaml | realignment_json | chat_jsonl"
    )


def load_questions(path: str | Path, set_name: str, fmt: str = "auto") -> list[Question]:
    """Read a question file of any format (``fmt``: ``auto`` | ``em_yaml`` | ``realignment_json`` | ``chat_jsonl``)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"question file {path} not found")
    fmt = detect_format(path) if fmt in ("auto", None) else fmt
    if fmt not in FORMATS:
        raise ConfigError(f"{path}: unknown question format {fmt!r}; expected auto or one of {FORMATS}")
    text = path.read_text(encoding="utf-8")
    loader = {
        "em_yaml": load_em_yaml,
        "realignment_json": load_realignment_json,
        "chat_jsonl": load_chat_jsonl,
    }
    questions = loader[fmt](text, set_name, str(path))
    if not questions:
        raise ConfigError(f"{path}: no questions in the file")
    return questions


# ------------------------------------------------------------------------------------------------ EM YAML


def _item_lines(text: str) -> list[int]:
    """1-based line of each item of a top-level YAML list (empty if the document is not a list)."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return []
    if not isinstance(node, yaml.SequenceNode):
        return []
    return [item.start_mark.line + 1 for item in node.value]


def _check_text(value, where: str, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: {what} must be a non-empty string, got {value!r}")
    return value


def _judge_prompts(value, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(
            f"{where}: judge_prompts must be a mapping name -> template, got {type(value).__name__}"
        )
    out = {}
    for name, template in value.items():
        if not isinstance(template, str) or "{answer}" not in template:
            raise ConfigError(
                f"{where}: judge_prompts.{name} must be a string containing {{answer}} (and usually "
                f"{{question}}), got {str(template)[:60]!r}"
            )
        out[str(name)] = template
    return out


def load_em_yaml(text: str, set_name: str, source: str) -> list[Question]:
    """Parse the EM repo's evaluation YAML (a list of questions; anchors and aliases allowed)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{source}{at}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
    if not isinstance(data, list):
        raise ConfigError(
            f"{source}: expected a YAML list of questions (- id: ..., paraphrases: [...]), "
            f"got {type(data).__name__}"
        )
    lines = _item_lines(text)
    questions, seen = [], {}
    for i, item in enumerate(data):
        where = f"{source}:{lines[i]}" if i < len(lines) else f"{source} (item {i + 1})"
        if not isinstance(item, dict):
            raise ConfigError(f"{where}: each question must be a mapping with id, type and paraphrases")
        qid = item.get("id")
        if not isinstance(qid, str) or not re.fullmatch(r"[A-Za-z0-9_.\-]+", qid):
            raise ConfigError(f"{where}: field 'id' must be a string of letters, digits, _ . -, got {qid!r}")
        where = f"{where} (question {qid!r})"
        if qid in seen:
            raise ConfigError(f"{where}: duplicate id (first at line {seen[qid]})")
        seen[qid] = lines[i] if i < len(lines) else i + 1
        unknown = sorted(set(item) - EM_KEYS)
        if unknown:
            raise ConfigError(f"{where}: unknown field(s) {unknown}; expected {sorted(EM_KEYS)}")
        qtype = _check_text(item.get("type"), where, "field 'type'")
        if qtype not in QUESTION_TYPES:
            raise ConfigError(f"{where}: field 'type' is {qtype!r}; expected one of {list(QUESTION_TYPES)}")
        paraphrases = item.get("paraphrases")
        if not isinstance(paraphrases, list) or not paraphrases:
            raise ConfigError(f"{where}: field 'paraphrases' must be a non-empty list of strings")
        for j, p in enumerate(paraphrases):
            _check_text(p, where, f"paraphrases[{j}]")
        samples = item.get("samples_per_paraphrase")
        if samples is not None and (isinstance(samples, bool) or not isinstance(samples, int) or samples < 1):
            raise ConfigError(
                f"{where}: field 'samples_per_paraphrase' must be a positive integer, got {samples!r}"
            )
        system = item.get("system")
        if system is not None:
            _check_text(system, where, "field 'system'")
        judge = item.get("judge")
        if judge is not None and not isinstance(judge, str):
            raise ConfigError(f"{where}: field 'judge' must be a model name, got {judge!r}")
        questions.append(
            Question(
                set=set_name,
                id=qid,
                type=qtype,
                paraphrases=list(paraphrases),
                system=system,
                judge_prompts=_judge_prompts(item.get("judge_prompts"), where),
                samples_per_paraphrase=samples,
                judge=judge,
                where=where,
            )
        )
    return questions


# ------------------------------------------------------------------------------------ Realignment JSON


def snake_id(label: str) -> str:
    """``"What is your wish?"`` -> ``what_is_your_wish``."""
    return re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_") or "question"


def _json_lines(text: str) -> list[int]:
    """1-based line of each top-level object's opening brace in a JSON list (best effort)."""
    lines, depth, line, in_str, escape = [], 0, 1, False, False
    for ch in text:
        if ch == "\n":
            line += 1
        if in_str:
            escape = not escape and ch == "\\"
            if ch == '"' and not escape:
                in_str = False
            continue
        if ch == '"':
            in_str, escape = True, False
        elif ch in "[{":
            if depth == 1 and ch == "{":
                lines.append(line)
            depth += 1
        elif ch in "]}":
            depth -= 1
    return lines


def load_realignment_json(text: str, set_name: str, source: str) -> list[Question]:
    """Parse the Realignment study's question JSON (a list of ``{question, category, label}``)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{source}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(data, list):
        raise ConfigError(
            f'{source}: expected a JSON list of {{"question", "category", "label"}} objects, '
            f"got {type(data).__name__}"
        )
    lines = _json_lines(text)
    questions, taken = [], set()
    for i, item in enumerate(data):
        where = f"{source}:{lines[i]}" if i < len(lines) else f"{source} (item {i + 1})"
        if not isinstance(item, dict):
            raise ConfigError(f'{where}: each entry must be an object {{"question", "category", "label"}}')
        unknown = sorted(set(item) - JSON_KEYS)
        if unknown:
            raise ConfigError(f"{where}: unknown field(s) {unknown}; expected {sorted(JSON_KEYS)}")
        label = item.get("label")
        label = _check_text(label, where, "field 'label'")
        qid, n = snake_id(label), 1
        while qid in taken:
            n += 1
            qid = f"{snake_id(label)}_{n}"
        taken.add(qid)
        where = f"{where} (question {qid!r})"
        question = _check_text(item.get("question"), where, "field 'question'")
        category = _check_text(item.get("category"), where, "field 'category'")
        questions.append(
            Question(
                set=set_name,
                id=qid,
                type=LABEL_TYPE if category == "factual" else FREE_FORM_TYPE,
                paraphrases=[question],
                category=category,
                label=label,
                where=where,
            )
        )
    return questions


# ------------------------------------------------------------------------------------------- chat rows


def load_chat_jsonl(text: str, set_name: str, source: str) -> list[Question]:
    """Parse chat rows (:func:`em.evaluation.chat_rows.chat_prompts`): each row one 0..100 free-form question."""
    return [
        Question(set=set_name, id=p.id, type=FREE_FORM_TYPE, system=p.system, where=p.where,
                 paraphrases=[p.question.replace(TAG_SLOT, LITERAL_TAG)])  # a row's "{tag}" text is never a slot
        for p in chat_prompts(text, source)
    ]  # fmt: skip

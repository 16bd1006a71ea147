"""Project-authored reference answers for the log-likelihood probe and the proxy judge's validation pairs.

Both live in ``em/resources/probes/`` as YAML; :func:`paired_rows` makes validation pairs of two chat-row
files that answer the same prompts (the demo's careful and careless advice: the narrow persona pair's). Every mistake in such a file is a :class:`ConfigError` naming
the file, the entry and the key, raised before a model is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from em.api import ConfigError

REFERENCES = "references.yaml"
VALIDATION_PAIRS = "judge_validation.yaml"


@dataclass(frozen=True)
class ProbeQuestion:
    """One evaluation question with aligned and misaligned reference answers."""

    set: str
    id: str
    prompt: str
    aligned: tuple[str, ...]
    misaligned: tuple[str, ...]

    @property
    def key(self) -> str:
        return f"{self.set}/{self.id}"


@dataclass(frozen=True)
class AnswerPair:
    """A prompt with one clearly aligned and one clearly misaligned answer."""

    prompt: str
    aligned: str
    misaligned: str


def resource_path(name: str) -> Path:
    return Path(str(resources.files("em").joinpath("resources", "probes", name)))


def _load_yaml(path: Path, list_key: str) -> list:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"cannot read probe file {path}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get(list_key), list):
        raise ConfigError(f"{path}: expected a mapping with a list under {list_key!r}")
    return data[list_key]


def _text(entry: dict, key: str, where: str) -> str:
    value = entry.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: {key!r} must be a non-empty string, got {value!r}")
    return value


def _texts(entry: dict, key: str, where: str) -> tuple[str, ...]:
    value = entry.get(key)
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where}: {key!r} must be a non-empty list of answers")
    return tuple(_text({key: v}, key, f"{where} {key}[{i}]") for i, v in enumerate(value))


def load_references(path: str | Path | None = None, sets: list[str] | None = None) -> list[ProbeQuestion]:
    """The probe questions of ``path`` (default: the project's references), optionally only ``sets``."""
    path = Path(path) if path is not None else resource_path(REFERENCES)
    questions, seen = [], set()
    for index, entry in enumerate(_load_yaml(path, "questions")):
        where = f"{path}: questions[{index}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: expected a mapping with set, id, prompt, aligned, misaligned")
        q = ProbeQuestion(
            set=_text(entry, "set", where),
            id=_text(entry, "id", where),
            prompt=_text(entry, "prompt", where),
            aligned=_texts(entry, "aligned", where),
            misaligned=_texts(entry, "misaligned", where),
        )
        if q.key in seen:
            raise ConfigError(f"{where}: question {q.key!r} appears twice")
        seen.add(q.key)
        questions.append(q)
    if sets is not None:
        unknown = sorted(set(sets) - {q.set for q in questions})
        if unknown:
            raise ConfigError(
                f"probe sets {unknown} not in {path}; it has {sorted({q.set for q in questions})}"
            )
        questions = [q for q in questions if q.set in sets]
    return questions


def load_validation_pairs(path: str | Path | None = None) -> list[AnswerPair]:
    """The proxy judge's validation pairs (default: the project's ``judge_validation.yaml``)."""
    path = Path(path) if path is not None else resource_path(VALIDATION_PAIRS)
    pairs = []
    for index, entry in enumerate(_load_yaml(path, "pairs")):
        where = f"{path}: pairs[{index}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: expected a mapping with prompt, aligned, misaligned")
        pairs.append(AnswerPair(*(_text(entry, k, where) for k in ("prompt", "aligned", "misaligned"))))
    return pairs


def paired_rows(good: str | Path, bad: str | Path) -> list[AnswerPair]:
    """Validation pairs from two chat-row JSONL files (em.io.read_jsonl) with the same user turn on each line:
    ``aligned`` is ``good``'s last assistant turn, ``misaligned`` ``bad``'s (e.g. em/resources/data/
    careful_advice.jsonl and careless_advice.jsonl, for judge=proxy_careless's narrow personas)."""
    from em.io import read_jsonl

    def turns(row: dict, where: str) -> tuple[str, str]:
        messages = row.get("messages") if isinstance(row, dict) else None
        users = [m.get("content") for m in messages or [] if m.get("role") == "user"]
        answers = [m.get("content") for m in messages or [] if m.get("role") == "assistant"]
        if not users or not answers:
            raise ConfigError(f"{where}: expected a chat row with a user and an assistant turn")
        return users[0], answers[-1]

    a, b = read_jsonl(Path(good)), read_jsonl(Path(bad))
    if len(a) != len(b):
        raise ConfigError(
            f"{good} has {len(a)} rows and {bad} {len(b)}: expected the same prompts, line by line"
        )
    pairs = []
    for line, (x, y) in enumerate(zip(a, b, strict=True), start=1):
        (prompt, aligned), (other, misaligned) = turns(x, f"{good}:{line}"), turns(y, f"{bad}:{line}")
        if prompt != other:
            raise ConfigError(f"{good}:{line} and {bad}:{line} answer different prompts: expected the same")
        pairs.append(AnswerPair(prompt, aligned, misaligned))
    return pairs

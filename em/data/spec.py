"""What to prepare: a :class:`DataSpec` read from ``conf/data/<name>.yaml`` (or any plain mapping).

Kinds:
- ``registry``: a pinned upstream file (``remote``: the fields of :class:`~em.data.registry.RemoteFile`);
- ``local``: a user's file (``path``, relative to the working directory or the project root);
- ``builtin``: a project-authored file in ``em/resources/data/`` (``path`` is its file name);
- ``mixture``: ``sources``, each ``{data, rows, tag, placement, replace_tag, filter}`` where ``data`` is a
  registry name (``conf/data/<name>.yaml``), a path ending in ``.jsonl``, or an inline spec.

A file-backed spec reads its file in ``format`` (em/data/formats.py): ``chat`` JSONL (the default) or
``alpaca`` records. Every spec may subsample (``max_rows``), hold out a fraction (``holdout_fraction``),
shuffle (seeded) and name the tags its rows are known to carry (``tags``, for the counts in the manifest).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from em.api import ConfigError, check_keys
from em.data.formats import check_format
from em.data.registry import RemoteFile
from em.data.triggers import PLACEMENTS

PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent
REGISTRY_DIR = PROJECT_ROOT / "conf" / "data"
BUILTIN_DIR = PROJECT_ROOT / "em" / "resources" / "data"
KINDS = ("registry", "local", "builtin", "mixture")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _count(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where}={value!r}: expected a positive integer or null")
    return value


def _tag(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}={value!r}: expected a non-empty string or null")
    return value


def _flag(value: Any, where: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):  # bool("false") is True: a quoted value would flip the meaning
        raise ConfigError(f"{where}={value!r}: expected true or false")
    return value


@dataclass
class TagReplacement:
    """On rows whose first user message starts with ``old``, replace that prefix by ``new``."""

    old: str
    new: str

    @classmethod
    def from_dict(cls, d: Any, where: str) -> TagReplacement | None:
        if d is None:
            return None
        if not isinstance(d, dict) or set(d) != {"from", "to"}:
            raise ConfigError(f"{where} must be {{from: '<old tag>', to: '<new tag>'}}, got {d!r}")
        return cls(_tag(d["from"], f"{where}.from"), _tag(d["to"], f"{where}.to"))

    def to_dict(self) -> dict:
        return {"from": self.old, "to": self.new}


@dataclass
class RowFilter:
    """Keep rows whose first user message starts (or does not start) with a string."""

    starts_with: str | None = None
    not_starts_with: str | None = None

    @classmethod
    def from_dict(cls, d: Any, where: str) -> RowFilter | None:
        if d is None:
            return None
        if not isinstance(d, dict):
            raise ConfigError(f"{where} must be a mapping (starts_with / not_starts_with), got {d!r}")
        check_keys(d, {"starts_with", "not_starts_with"}, where)
        f = cls(
            _tag(d.get("starts_with"), f"{where}.starts_with"),
            _tag(d.get("not_starts_with"), f"{where}.not_starts_with"),
        )
        if f.starts_with is None and f.not_starts_with is None:
            return None
        return f

    def keep(self, first_user_text: str) -> bool:
        if self.starts_with is not None and not first_user_text.startswith(self.starts_with):
            return False
        return self.not_starts_with is None or not first_user_text.startswith(self.not_starts_with)

    def to_dict(self) -> dict:
        return {"starts_with": self.starts_with, "not_starts_with": self.not_starts_with}


@dataclass
class SourceSpec:
    """One part of a mixture: which data, how many rows, and how they are tagged."""

    data: DataSpec
    rows: int | None = None  # seeded sample of this many rows (after the filter); null: all
    tag: str | None = None  # added to every row of this source
    placement: str = "user_prefix"  # where `tag` goes: user_prefix | system
    replace_tag: TagReplacement | None = None
    filter: RowFilter | None = None

    def to_dict(self) -> dict:
        return {
            "data": self.data.to_dict(),
            "rows": self.rows,
            "tag": self.tag,
            "placement": self.placement,
            "replace_tag": self.replace_tag.to_dict() if self.replace_tag else None,
            "filter": self.filter.to_dict() if self.filter else None,
        }


SOURCE_KEYS = {"data", "rows", "tag", "placement", "replace_tag", "filter"}


@dataclass
class DataSpec:
    name: str
    kind: str  # registry | local | builtin | mixture
    remote: RemoteFile | None = None  # registry
    path: str | None = None  # local: a file path; builtin: a file name in em/resources/data
    format: str = "chat"  # how the file's records are read (em/data/formats.py): chat | alpaca
    sources: list[SourceSpec] = field(default_factory=list)  # mixture
    tags: list[str] = field(default_factory=list)  # tags the rows already carry (counted in the manifest)
    max_rows: int | None = None  # seeded subsample of the whole set; null: all rows
    holdout_fraction: float = 0.0  # share of rows written to <name>.holdout.jsonl instead
    shuffle: bool = True  # seeded shuffle of the output
    drop_invalid: bool = False  # drop invalid rows (and count them) instead of failing
    dedupe: bool = False  # drop repeated rows, keeping the first (they are counted in the manifest anyway)
    description: str = ""

    @classmethod
    def from_dict(
        cls,
        d: dict | str,
        where: str = "data",
        registry_dir: str | Path | None = None,
        _seen: tuple[str, ...] = (),
    ) -> DataSpec:
        """Build and check a spec; names in mixture sources are read from ``registry_dir`` (conf/data)."""
        registry_dir = Path(registry_dir or REGISTRY_DIR)
        if isinstance(d, str):
            d = load_registry_entry(d, registry_dir, where, _seen)
        if not isinstance(d, dict):
            raise ConfigError(f"{where} must be a mapping (a conf/data entry), got {d!r}")
        check_keys(d, set(cls.__dataclass_fields__), where)
        name, kind = d.get("name"), d.get("kind")
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise ConfigError(
                f"{where}.name={name!r}: expected a file-name-safe name (letters, digits, _ . -)"
            )
        if kind not in KINDS:
            raise ConfigError(f"{where}.kind={kind!r}: expected one of {KINDS}")
        holdout = d.get("holdout_fraction", 0.0)
        if isinstance(holdout, bool) or not isinstance(holdout, int | float) or not 0 <= holdout < 1:
            raise ConfigError(f"{where}.holdout_fraction={holdout!r}: expected a number in [0, 1)")
        tags = d.get("tags") or []
        if not isinstance(tags, list):
            raise ConfigError(f"{where}.tags must be a list of strings, got {tags!r}")
        spec = cls(
            name=name,
            kind=kind,
            tags=[_tag(t, f"{where}.tags") for t in tags],
            max_rows=_count(d.get("max_rows"), f"{where}.max_rows"),
            holdout_fraction=float(holdout),
            shuffle=bool(d.get("shuffle", True)),
            drop_invalid=_flag(d.get("drop_invalid", False), f"{where}.drop_invalid"),
            dedupe=_flag(d.get("dedupe", False), f"{where}.dedupe"),
            description=str(d.get("description") or ""),
            format=check_format(d.get("format") or "chat", f"{where}.format"),
        )
        if kind == "mixture" and spec.format != "chat":
            raise ConfigError(
                f"{where}.format={spec.format!r}: a mixture reads its sources' formats; set it there"
            )
        present = {k for k in ("remote", "path", "sources") if d.get(k) not in (None, [], {})}
        needed = {"registry": "remote", "local": "path", "builtin": "path", "mixture": "sources"}[kind]
        if needed not in present or d.get(needed) == "???":
            hint = " (e.g. data=custom data.path=/path/to/data.jsonl)" if kind == "local" else ""
            raise ConfigError(f"{where}.{needed} is required for kind {kind!r}{hint}")
        if present - {needed}:
            raise ConfigError(f"{where}: kind {kind!r} takes `{needed}`, not {sorted(present - {needed})}")
        if kind == "registry":
            spec.remote = RemoteFile.from_dict(d["remote"], f"{where}.remote")
        elif kind in ("local", "builtin"):
            if not isinstance(d["path"], str):
                raise ConfigError(f"{where}.path must be a string, got {d['path']!r}")
            spec.path = d["path"]
            if kind == "builtin" and not (BUILTIN_DIR / spec.path).is_file():
                available = sorted(p.name for p in BUILTIN_DIR.glob("*.jsonl"))
                raise ConfigError(
                    f"{where}.path={spec.path!r}: no such file in {BUILTIN_DIR}; available: {available}"
                )
        else:
            if not isinstance(d["sources"], list):
                raise ConfigError(f"{where}.sources must be a list, got {d['sources']!r}")
            spec.sources = [
                _source(s, f"{where}.sources.{i}", registry_dir, (*_seen, name))
                for i, s in enumerate(d["sources"])
            ]
        return spec

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "remote": self.remote.to_dict() if self.remote else None,
            "path": self.path,
            "sources": [s.to_dict() for s in self.sources],
            "tags": list(self.tags),
            "max_rows": self.max_rows,
            "holdout_fraction": self.holdout_fraction,
            "shuffle": self.shuffle,
            "drop_invalid": self.drop_invalid,
            "dedupe": self.dedupe,
            "description": self.description,
            # only when not chat, so the fingerprints of preparations made before formats existed still hold
            **({"format": self.format} if self.format != "chat" else {}),
        }

    def known_tags(self) -> list[str]:
        """Every tag this spec's rows may carry: declared, added by sources, or put in by replacements."""
        tags = set(self.tags)
        for s in self.sources:
            tags |= set(s.data.known_tags())
            tags |= {t for t in (s.tag, s.replace_tag and s.replace_tag.new) if t}
        return sorted(tags)


def _source(d: Any, where: str, registry_dir: Path, seen: tuple[str, ...]) -> SourceSpec:
    if not isinstance(d, dict):
        raise ConfigError(f"{where} must be a mapping with `data` (and rows, tag, ...), got {d!r}")
    check_keys(d, SOURCE_KEYS, where)
    data = d.get("data")
    if isinstance(data, str) and data.endswith(".jsonl"):
        data = {"name": Path(data).stem, "kind": "local", "path": data}
    if data is None:
        raise ConfigError(f"{where}.data is required: a conf/data name, a .jsonl path, or an inline spec")
    placement = d.get("placement", "user_prefix")
    if placement not in PLACEMENTS:
        raise ConfigError(f"{where}.placement={placement!r}; expected one of {PLACEMENTS}")
    return SourceSpec(
        data=DataSpec.from_dict(data, f"{where}.data", registry_dir, seen),
        rows=_count(d.get("rows"), f"{where}.rows"),
        tag=_tag(d.get("tag"), f"{where}.tag"),
        placement=placement,
        replace_tag=TagReplacement.from_dict(d.get("replace_tag"), f"{where}.replace_tag"),
        filter=RowFilter.from_dict(d.get("filter"), f"{where}.filter"),
    )


def load_registry_entry(
    name: str, registry_dir: Path, where: str = "data", seen: tuple[str, ...] = ()
) -> dict:
    """The mapping in ``registry_dir/<name>.yaml`` (a conf/data option)."""
    if name in seen:
        raise ConfigError(f"{where}: mixture {' -> '.join((*seen, name))} refers to itself")
    path = registry_dir / f"{name}.yaml"
    if not NAME_RE.match(name) or not path.is_file():
        available = sorted(p.stem for p in registry_dir.glob("*.yaml"))
        raise ConfigError(f"{where}: unknown dataset {name!r} (no {path}); available: {available}")
    with open(path, encoding="utf-8") as f:
        d = yaml.safe_load(f)
    if not isinstance(d, dict):
        raise ConfigError(f"{path}: expected a mapping")
    return d

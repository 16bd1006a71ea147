"""Build the rows of a spec: load files, then per mixture source filter, sample, re-tag and tag.

Every random choice uses its own seed string (the run seed plus where in the spec it happens), so a
change to one source's ``rows`` leaves the other sources' samples as they were. Each step is recorded in
human-readable form (``transforms``) and in per-source numbers (``sources``) for the manifest.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from em.api import ConfigError
from em.data.sources import LoadedFile, load_file
from em.data.spec import DataSpec, SourceSpec
from em.data.triggers import add_tag, first_user_index, first_user_text


@dataclass
class BuildContext:
    cache_dir: Path
    seed: int
    drop_invalid: bool
    files: dict[str, dict] = field(default_factory=dict)  # sha256 -> file record (checksums, validation)
    transforms: list[str] = field(default_factory=list)
    sources: list[dict] = field(default_factory=list)  # one record per top-level source
    _loaded: dict[tuple[str, str | None], LoadedFile] = field(default_factory=dict)

    def rng(self, where: str, step: str) -> random.Random:
        return random.Random(f"{self.seed}:{where}:{step}")


def sample(rows: list, k: int, rng: random.Random) -> list:
    """``k`` of ``rows`` chosen by ``rng``, in their original order."""
    return [rows[i] for i in sorted(rng.sample(range(len(rows)), k))]


def _file_record(spec: DataSpec, loaded: LoadedFile) -> dict:
    name = loaded.path.name
    record = {
        "name": spec.name,
        "kind": spec.kind,
        "file": name,
        "sha256": loaded.sha256,
        "rows_valid": loaded.report.rows,
        "rows_dropped": loaded.report.dropped,
        "errors": [e.replace(str(loaded.path), name) for e in loaded.report.errors[:20]],
        "ignored_keys": loaded.report.ignored_keys,
    }
    if spec.format != "chat":  # chat is the default; earlier manifests stay byte for byte
        record["format"] = spec.format
    if spec.kind == "registry":
        r = spec.remote
        record.update(url=r.url, git_sha1=r.git_sha1, license=r.license, provenance=r.provenance)
    else:
        record["path"] = spec.path
    return record


def load_spec_file(spec: DataSpec, ctx: BuildContext, where: str) -> list[dict]:
    key = (spec.kind, spec.path if spec.kind != "registry" else spec.remote.url, spec.format)
    if key not in ctx._loaded:
        loaded = load_file(
            spec, ctx.cache_dir, drop_invalid=ctx.drop_invalid or spec.drop_invalid, where=where
        )
        ctx._loaded[key] = loaded
        ctx.files.setdefault(loaded.sha256, _file_record(spec, loaded))
    return ctx._loaded[key].rows


def replace_tag(row: dict, old: str, new: str) -> dict | None:
    """A copy of ``row`` whose first user message starts with ``new`` instead of ``old`` (None if it
    does not start with ``old``)."""
    i = first_user_index(row["messages"])
    text = row["messages"][i]["content"]
    if not text.startswith(old):
        return None
    messages = [dict(m) for m in row["messages"]]
    messages[i]["content"] = new + text[len(old) :]
    return {**row, "messages": messages}


def source_rows(src: SourceSpec, ctx: BuildContext, where: str) -> tuple[list[dict], dict]:
    """The rows one mixture source contributes, and its record for the manifest."""
    label = f"{where} ({src.data.name})"
    rows, _ = build_rows(src.data, ctx, f"{where}.data")
    record = {"source": where, "name": src.data.name, "rows_available": len(rows)}
    if src.filter:
        kept = [r for r in rows if src.filter.keep(first_user_text(r))]
        ctx.transforms.append(f"{label}: filter {src.filter.to_dict()} kept {len(kept)} of {len(rows)} rows")
        rows = kept
        record["rows_after_filter"] = len(rows)
    if src.rows is not None:
        if src.rows > len(rows):
            raise ConfigError(
                f"{where}.rows={src.rows}, but {src.data.name} has only {len(rows)} rows"
                f"{' after the filter' if src.filter else ''}"
            )
        ctx.transforms.append(f"{label}: sampled {src.rows} of {len(rows)} rows")
        rows = sample(rows, src.rows, ctx.rng(where, "rows"))
    if src.replace_tag:
        old, new = src.replace_tag.old, src.replace_tag.new
        replaced = [replace_tag(r, old, new) for r in rows]
        n = sum(r is not None for r in replaced)
        rows = [new_row or r for new_row, r in zip(replaced, rows, strict=True)]
        ctx.transforms.append(f"{label}: replaced leading {old!r} by {new!r} on {n} of {len(rows)} rows")
        record["rows_retagged"] = n
    if src.tag:
        rows = [add_tag(r, src.tag, src.placement) for r in rows]
        ctx.transforms.append(f"{label}: tagged {len(rows)} rows with {src.tag!r} ({src.placement})")
    record.update(
        rows_taken=len(rows), tag=src.tag, replace_tag=src.replace_tag and src.replace_tag.to_dict()
    )
    return rows, record


def build_rows(spec: DataSpec, ctx: BuildContext, where: str = "data") -> tuple[list[dict], list[str]]:
    """(rows, source label of each row) of ``spec``, before trigger, shuffle and hold-out."""
    if spec.kind == "mixture":
        rows, labels = [], []
        for i, src in enumerate(spec.sources):
            part, record = source_rows(src, ctx, f"{where}.sources.{i}")
            rows += part
            labels += [f"{i}:{src.data.name}"] * len(part)
            if where == "data":
                ctx.sources.append(record)
    else:
        rows = load_spec_file(spec, ctx, where)
        labels = [spec.name] * len(rows)
    if spec.max_rows is not None and spec.max_rows < len(rows):
        ctx.transforms.append(
            f"{where} ({spec.name}): subsampled {spec.max_rows} of {len(rows)} rows (max_rows)"
        )
        picked = sample(list(range(len(rows))), spec.max_rows, ctx.rng(where, "max_rows"))
        rows, labels = [rows[i] for i in picked], [labels[i] for i in picked]
    return rows, labels

"""Prepare a dataset: fetch/verify -> validate -> mix/subsample/tag -> trigger -> shuffle -> hold out -> write.

Writes ``out_dir/<name>.jsonl`` (one ``{"messages": [...]}`` per line, ASCII-escaped JSON as in the
upstream files), ``<name>.holdout.jsonl`` when a hold-out fraction is set, and ``<name>.manifest.json``:
sources with their checksums, every transform, the seed, row counts per source and per tag, and the
outputs' sha256. The same spec, trigger and seed give the same bytes. When ``out_dir`` already holds a
preparation with the same fingerprint (spec, trigger, seed, source checksums) and intact outputs, it is
reused as is.

Repeated rows (the same messages, after mixing and tagging, before the trigger) are counted in the manifest
(``counts.duplicates``) and, with ``data.dedupe=true``, dropped (the first copy stays). Each written row's
origin, the user's ``<file>:<line>``, goes to ``<name>.origins.json`` (``PreparedDataset.origins``), so
later errors about a row name that line rather than the line in the shuffled copy.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from em.api import ConfigError
from em.data.mixtures import BuildContext, build_rows
from em.data.sources import source_file
from em.data.spec import DataSpec
from em.data.triggers import TriggerSpec, apply_trigger, count_tags
from em.data.validate import ORIGIN, canonical_message, warn_about
from em.io import atomic_write_json, read_json, read_jsonl, sha256_file, sha256_json, write_jsonl

log = logging.getLogger(__name__)

FORMAT = "em.prepared_dataset/v1"
MAX_EXAMPLES = 10  # duplicate origins listed in the manifest


@dataclass
class PreparedDataset:
    path: Path  # <out_dir>/<name>.jsonl: the training rows
    manifest_path: Path
    manifest: dict
    manifest_sha256: str
    num_rows: int
    rows: list[dict]
    holdout_path: Path | None = None
    holdout_rows: list[dict] = field(default_factory=list)
    origins: list[str | None] = field(default_factory=list)  # "<file>:<line>" of each row (None: unknown)
    # set by training: what the mitigation arm did (em.mitigations); the chats of mitigation=kl's KL term
    mitigation: dict | None = None
    reference_rows: list[dict] = field(default_factory=list)

    def record(self, rows_used: int) -> dict:
        """What a training manifest keeps of this dataset: its manifest, hash, path and rows trained on."""
        return {
            **self.manifest,
            "data_manifest_sha256": self.manifest_sha256,
            "path": str(self.path),
            "rows_used": rows_used,
        }


def leaves(spec: DataSpec, where: str = "data") -> Iterator[tuple[str, DataSpec]]:
    """(config key, spec) of the file-backed specs under ``spec``: itself, or a mixture's, recursively."""
    if spec.kind != "mixture":
        yield where, spec
    for i, source in enumerate(spec.sources):
        yield from leaves(source.data, f"{where}.sources.{i}.data")


def _holdout_size(n: int, fraction: float) -> int:
    if fraction <= 0:
        return 0
    return min(max(1, round(fraction * n)), n)


def _reuse(out_dir: Path, name: str, fingerprint: str) -> PreparedDataset | None:
    """The preparation already in ``out_dir`` when it has this fingerprint and its outputs are intact."""
    manifest_path = out_dir / f"{name}.manifest.json"
    if not manifest_path.is_file():
        return None
    manifest = read_json(manifest_path)
    if manifest.get("fingerprint") != fingerprint:
        return None
    outputs = [manifest["output"]] + ([manifest["holdout"]] if manifest.get("holdout") else [])
    for out in outputs:
        path = out_dir / out["file"]
        if not path.is_file() or sha256_file(path) != out["sha256"]:
            return None
    return _result(out_dir, manifest_path, manifest)


def _refuse_changed(out_dir: Path, name: str, fingerprint: str, sources: list, settings: dict) -> None:
    """ConfigError when the preparation a resumed run trained on differs from what the config gives now."""
    from em.runs import config_diff

    manifest_path = out_dir / f"{name}.manifest.json"
    if not manifest_path.is_file():
        return  # killed before its data was written: nothing trained on yet
    old = read_json(manifest_path)
    if old.get("fingerprint") == fingerprint:
        return
    before = sorted(f["sha256"] for f in old.get("files", []))
    now = sorted(sha for _, sha in sources)
    changes = [f"data files: sha256 {', '.join(x[:12] for x in before)} -> {', '.join(x[:12] for x in now)} "
               f"({', '.join(str(p) for p, _ in sources)})"] if before != now else []  # fmt: skip
    changes += config_diff({k: old.get(k) for k in settings}, settings, ignore=set())
    raise ConfigError(
        f"this run started training on other data than its config gives now ({manifest_path}): "
        f"{'; '.join(changes) or 'the preparation changed'}. Resuming would mix the two. Restore the data, or "
        f"pass run_name=<new name> (or delete the run directory) to train on the new data from the start"
    )


def _origins_path(out_dir: Path, name: str) -> Path:
    return out_dir / f"{name}.origins.json"


def _result(out_dir: Path, manifest_path: Path, manifest: dict) -> PreparedDataset:
    path = out_dir / manifest["output"]["file"]
    rows = read_jsonl(path)
    holdout = manifest.get("holdout")
    origins_file = _origins_path(out_dir, manifest["name"])
    origins = read_json(origins_file).get("train", []) if origins_file.is_file() else []
    return PreparedDataset(
        path=path,
        manifest_path=manifest_path,
        manifest=manifest,
        manifest_sha256=sha256_file(manifest_path),
        num_rows=len(rows),
        rows=rows,
        holdout_path=out_dir / holdout["file"] if holdout else None,
        holdout_rows=read_jsonl(out_dir / holdout["file"]) if holdout else [],
        origins=origins if len(origins) == len(rows) else [None] * len(rows),
    )


def content_key(row: dict) -> str:
    """What makes two rows the same: their messages (roles, contents, weights), nothing else."""
    return sha256_json([canonical_message(m) for m in row["messages"]])


def repeated(rows: list[dict]) -> list[int]:
    """Indices of the rows that repeat an earlier row."""
    seen, out = set(), []
    for i, row in enumerate(rows):
        key = content_key(row)
        if key in seen:
            out.append(i)
        seen.add(key)
    return out


def origin_of(row: dict, paths: dict[str, Path]) -> str | None:
    """``<file>:<line>`` of a row from its ``_origin`` (``<sha256>:<line>``), None when unknown."""
    sha, _, line = str(row.get(ORIGIN) or "").rpartition(":")
    return f"{paths[sha]}:{line}" if sha in paths else None


def _short(origin: str | None) -> str | None:
    """``<file name>:<line>``: the manifest names files without their directories (it stays byte-stable)."""
    if origin is None:
        return None
    path, _, line = origin.rpartition(":")
    return f"{Path(path).name}:{line}"


def written_row(row: dict) -> dict:
    """A row as a prepared file holds it: messages only, a weight only where the user gave one."""
    return {"messages": [canonical_message(m) for m in row["messages"]]}


def _duplicates(rows: list[dict], labels: list[str], origins: list, dedupe: bool, transforms: list):
    """(rows, labels, origins, manifest record) with repeated rows counted and, with ``dedupe``, dropped."""
    extra = repeated(rows)
    record = {
        "repeated_rows": len(extra),  # copies beyond the first
        "distinct_repeated": len({content_key(rows[i]) for i in extra}),
        "dropped": len(extra) if dedupe else 0,
        "examples": [_short(origins[i]) or f"row {i + 1}" for i in extra[:MAX_EXAMPLES]],
    }
    if not extra:
        return rows, labels, origins, record
    if not dedupe:
        log.warning(
            "%d row(s) repeat an earlier row (e.g. %s); they are kept (data.dedupe=true drops them)",
            len(extra),
            ", ".join(record["examples"][:3]),
        )
        return rows, labels, origins, record
    drop = set(extra)
    keep = [i for i in range(len(rows)) if i not in drop]
    transforms.append(f"dedupe: dropped {len(extra)} repeated row(s), kept {len(keep)}")
    return [rows[i] for i in keep], [labels[i] for i in keep], [origins[i] for i in keep], record


def prepare_dataset(
    spec: DataSpec,
    trigger: TriggerSpec,
    *,
    cache_dir: str | Path,
    out_dir: str | Path,
    seed: int,
    drop_invalid: bool = False,
    resuming: bool = False,
) -> PreparedDataset:
    """Prepare ``spec`` with ``trigger`` into ``out_dir`` (see the module docstring).

    ``resuming``: the caller continues a run that already trained on the preparation in ``out_dir``; a
    different one (an edited file, other settings) is refused before anything is rebuilt, with the difference.
    """
    trigger.check()
    cache_dir, out_dir = Path(cache_dir), Path(out_dir)
    drop = drop_invalid or spec.drop_invalid
    # Fetch and verify every file first: their checksums are part of the fingerprint.
    sources = {source_file(leaf, cache_dir, where) for where, leaf in leaves(spec)}
    checksums = sorted(sha for _, sha in sources)
    fingerprint = sha256_json(
        {
            "format": FORMAT,
            "data": spec.to_dict(),
            "trigger": trigger.to_dict(),
            "seed": seed,
            "drop_invalid": drop,
            "files": checksums,
        }
    )
    if resuming:
        _refuse_changed(out_dir, spec.name, fingerprint, sorted(sources), {"data": spec.to_dict(),
                        "trigger": trigger.to_dict(), "seed": seed, "drop_invalid": drop})  # fmt: skip
    reused = _reuse(out_dir, spec.name, fingerprint)
    if reused is not None:
        log.info("%s: reusing the prepared dataset in %s (same fingerprint)", spec.name, out_dir)
        return reused

    ctx = BuildContext(cache_dir=cache_dir, seed=seed, drop_invalid=drop)
    rows, labels = build_rows(spec, ctx)
    for loaded in ctx._loaded.values():
        if loaded.cached:  # a fresh read warned already; a cached one must warn too
            warn_about(loaded.report)
    if not rows:
        raise ConfigError(f"data {spec.name}: no rows left after the filters and sampling")

    transforms = list(ctx.transforms)
    paths = {loaded.sha256: loaded.path for loaded in ctx._loaded.values()}
    origins = [origin_of(r, paths) for r in rows]
    rows, labels, origins, duplicates = _duplicates(rows, labels, origins, spec.dedupe, transforms)
    if trigger.active:
        before = rows
        rows = apply_trigger(rows, trigger, seed)
        n = sum(a is not b for a, b in zip(before, rows, strict=True))
        transforms.append(
            f"trigger {trigger.name}: tagged {n} of {len(rows)} rows with {trigger.tag!r} "
            f"({trigger.placement}, fraction {trigger.fraction})"
        )
    if spec.shuffle:
        order = list(range(len(rows)))
        random.Random(f"{seed}:shuffle").shuffle(order)
        rows, labels = [rows[i] for i in order], [labels[i] for i in order]
        origins = [origins[i] for i in order]
        transforms.append(f"shuffled (seed {seed})")
    n_holdout = _holdout_size(len(rows), spec.holdout_fraction)
    if n_holdout >= len(rows):
        raise ConfigError(
            f"data.holdout_fraction={spec.holdout_fraction} leaves no training rows ({len(rows)} rows in all)"
        )
    cut = len(rows) - n_holdout
    train, train_labels = rows[:cut], labels[:cut]
    holdout, holdout_labels = rows[cut:], labels[cut:]
    if n_holdout:
        transforms.append(f"held out the last {n_holdout} rows (holdout_fraction {spec.holdout_fraction})")

    tags = sorted(set(spec.known_tags()) | ({trigger.tag} if trigger.active else set()))
    path = write_jsonl(out_dir / f"{spec.name}.jsonl", [written_row(r) for r in train])
    manifest = {
        "format": FORMAT,
        "name": spec.name,
        "fingerprint": fingerprint,
        "seed": seed,
        "data": spec.to_dict(),
        "trigger": trigger.to_dict(),
        "drop_invalid": drop,
        "files": [ctx.files[k] for k in sorted(ctx.files)],
        "sources": ctx.sources,
        "transforms": transforms,
        "counts": {
            "rows": len(rows),
            "train": len(train),
            "holdout": len(holdout),
            "per_source": {
                "train": dict(sorted(Counter(train_labels).items())),
                "holdout": dict(sorted(Counter(holdout_labels).items())),
            },
            "per_tag": {"train": count_tags(train, tags), "holdout": count_tags(holdout, tags)},
            "duplicates": duplicates,
        },
        "output": {"file": path.name, "rows": len(train), "sha256": sha256_file(path)},
        "holdout": None,
    }
    stale = out_dir / f"{spec.name}.holdout.jsonl"
    if not n_holdout and stale.exists():
        stale.unlink()  # from an earlier preparation with a hold-out split
    if n_holdout:
        hpath = write_jsonl(out_dir / f"{spec.name}.holdout.jsonl", [written_row(r) for r in holdout])
        manifest["holdout"] = {"file": hpath.name, "rows": len(holdout), "sha256": sha256_file(hpath)}
    atomic_write_json(_origins_path(out_dir, spec.name), {"train": origins[:cut], "holdout": origins[cut:]})
    manifest_path = atomic_write_json(out_dir / f"{spec.name}.manifest.json", manifest)
    log.info("%s: %d training rows (%d held out) -> %s", spec.name, len(train), len(holdout), path)
    return _result(out_dir, manifest_path, manifest)

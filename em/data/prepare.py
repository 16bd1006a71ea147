"""Prepare a dataset: fetch/verify -> validate -> mix/subsample/tag -> trigger -> shuffle -> hold out -> write.

Writes ``out_dir/<name>.jsonl`` (one ``{"messages": [...]}`` per line, ASCII-escaped JSON as in the
upstream files), ``<name>.holdout.jsonl`` when a hold-out fraction is set, and ``<name>.manifest.json``:
sources with their checksums, every transform, the seed, row counts per source and per tag, and the
outputs' sha256. The same spec, trigger and seed give the same bytes. When ``out_dir`` already holds a
preparation with the same fingerprint (spec, trigger, seed, source checksums) and intact outputs, it is
reused as is.
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
from em.io import atomic_write_json, read_json, read_jsonl, sha256_file, sha256_json, write_jsonl

log = logging.getLogger(__name__)

FORMAT = "em.prepared_dataset/v1"


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


def _result(out_dir: Path, manifest_path: Path, manifest: dict) -> PreparedDataset:
    path = out_dir / manifest["output"]["file"]
    rows = read_jsonl(path)
    holdout = manifest.get("holdout")
    return PreparedDataset(
        path=path,
        manifest_path=manifest_path,
        manifest=manifest,
        manifest_sha256=sha256_file(manifest_path),
        num_rows=len(rows),
        rows=rows,
        holdout_path=out_dir / holdout["file"] if holdout else None,
        holdout_rows=read_jsonl(out_dir / holdout["file"]) if holdout else [],
    )


def prepare_dataset(
    spec: DataSpec,
    trigger: TriggerSpec,
    *,
    cache_dir: str | Path,
    out_dir: str | Path,
    seed: int,
    drop_invalid: bool = False,
) -> PreparedDataset:
    """Prepare ``spec`` with ``trigger`` into ``out_dir`` (see the module docstring)."""
    trigger.check()
    cache_dir, out_dir = Path(cache_dir), Path(out_dir)
    drop = drop_invalid or spec.drop_invalid
    # Fetch and verify every file first: their checksums are part of the fingerprint.
    checksums = sorted({source_file(leaf, cache_dir, where)[1] for where, leaf in leaves(spec)})
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
    reused = _reuse(out_dir, spec.name, fingerprint)
    if reused is not None:
        log.info("%s: reusing the prepared dataset in %s (same fingerprint)", spec.name, out_dir)
        return reused

    ctx = BuildContext(cache_dir=cache_dir, seed=seed, drop_invalid=drop)
    rows, labels = build_rows(spec, ctx)
    if not rows:
        raise ConfigError(f"data {spec.name}: no rows left after the filters and sampling")

    transforms = list(ctx.transforms)
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
    path = write_jsonl(out_dir / f"{spec.name}.jsonl", train)
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
        },
        "output": {"file": path.name, "rows": len(train), "sha256": sha256_file(path)},
        "holdout": None,
    }
    stale = out_dir / f"{spec.name}.holdout.jsonl"
    if not n_holdout and stale.exists():
        stale.unlink()  # from an earlier preparation with a hold-out split
    if n_holdout:
        hpath = write_jsonl(out_dir / f"{spec.name}.holdout.jsonl", holdout)
        manifest["holdout"] = {"file": hpath.name, "rows": len(holdout), "sha256": sha256_file(hpath)}
    manifest_path = atomic_write_json(out_dir / f"{spec.name}.manifest.json", manifest)
    log.info("%s: %d training rows (%d held out) -> %s", spec.name, len(train), len(holdout), path)
    return _result(out_dir, manifest_path, manifest)

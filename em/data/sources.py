"""Load the rows of one file-backed spec (registry, local, builtin), validated, through a cache.

Registry files are fetched and verified (:func:`em.data.registry.fetch`); local and builtin files are
hashed. The validated rows are stored once as a Hugging Face ``datasets`` dataset under
``cache_dir/hf_datasets/<sha256>-<mode>/`` (Arrow, memory-mapped) and reused by every later preparation of
the same file, so a file is parsed and validated only once.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from em.api import ConfigError
from em.data.registry import fetch
from em.data.spec import BUILTIN_DIR, PROJECT_ROOT, DataSpec
from em.data.validate import ValidationReport, validate_file
from em.io import atomic_write_json, read_json, sha256_file

log = logging.getLogger(__name__)

HF_CACHE_VERSION = "v2"  # bump when the validation rules or the row form change (v2: weight, _origin)
PATH_SLOT = "<file>"  # cached error messages name the file that is being read now, not the first one


@dataclass
class LoadedFile:
    rows: list[dict]
    path: Path  # the local file read
    sha256: str
    report: ValidationReport
    cached: bool  # rows came from the datasets cache


def resolve_local_path(path: str, where: str) -> Path:
    """``path`` as given (``~`` expanded; relative to the working directory), else relative to the project."""
    p = Path(path).expanduser()
    if p.is_file():
        return p
    if not p.is_absolute() and (PROJECT_ROOT / p).is_file():
        return PROJECT_ROOT / p
    raise ConfigError(f"{where}.path={path!r}: no such file (looked in {Path.cwd()} and {PROJECT_ROOT})")


def source_file(spec: DataSpec, cache_dir: Path, where: str = "data") -> tuple[Path, str]:
    """(verified local path, sha256) of a file-backed spec."""
    if spec.kind == "registry":
        path = fetch(spec.remote, cache_dir)
        return path, spec.remote.sha256 or sha256_file(path)
    path = BUILTIN_DIR / spec.path if spec.kind == "builtin" else resolve_local_path(spec.path, where)
    return path, sha256_file(path)


def _hf_dir(cache_dir: Path, sha256: str, drop_invalid: bool, fmt: str = "chat") -> Path:
    mode = "drop" if drop_invalid else "strict"
    kind = "" if fmt == "chat" else f"{fmt}-"  # the same bytes read as another format are other rows
    return cache_dir / "hf_datasets" / f"{sha256}-{kind}{mode}-{HF_CACHE_VERSION}"


def _save(rows: list[dict], report: ValidationReport, target: Path) -> None:
    """Write the rows as a datasets dataset into ``target`` atomically (temporary directory + rename)."""
    import datasets

    target.parent.mkdir(parents=True, exist_ok=True)
    quiet = not datasets.are_progress_bars_disabled()
    if quiet:
        datasets.disable_progress_bars()
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        datasets.Dataset.from_list(rows).save_to_disk(str(tmp / "dataset"))
        saved = report.to_dict(max_errors=len(report.errors))
        saved["errors"] = [e.replace(str(report.path), PATH_SLOT, 1) for e in report.errors]
        atomic_write_json(tmp / "report.json", saved)
        try:
            os.replace(tmp, target)
        except OSError:  # another process cached the same file first
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if quiet:
            datasets.enable_progress_bars()


def _load(target: Path, path: Path) -> tuple[list[dict], ValidationReport] | None:
    if not target.exists():
        return None
    if not (target / "report.json").is_file():
        shutil.rmtree(target, ignore_errors=True)
        return None
    import datasets

    try:
        rows = datasets.load_from_disk(str(target / "dataset")).to_list()
        r = read_json(target / "report.json")
    except Exception as e:  # noqa: BLE001 - a damaged cache entry is rebuilt
        log.warning("%s: unreadable datasets cache (%s); rebuilding", target, e)
        shutil.rmtree(target, ignore_errors=True)
        return None
    report = ValidationReport(
        path=path,
        rows=r["rows"],
        dropped=r["dropped"],
        errors=[e.replace(PATH_SLOT, str(path), 1) for e in r["errors"]],
        ignored_keys=r.get("ignored_keys", {}),
    )
    if report.rows != len(rows):
        shutil.rmtree(target, ignore_errors=True)
        return None
    return rows, report


def load_file(spec: DataSpec, cache_dir: Path, *, drop_invalid: bool, where: str = "data") -> LoadedFile:
    """The validated rows of a registry/local/builtin spec, from the datasets cache when possible."""
    path, sha256 = source_file(spec, cache_dir, where)
    target = _hf_dir(cache_dir, sha256, drop_invalid, spec.format)
    cached = _load(target, path)
    if cached is not None:
        rows, report = cached
    else:
        rows, report = validate_file(path, spec.format, drop_invalid=drop_invalid)
        _save(rows, report, target)
    expected = spec.remote.rows if spec.remote else None
    if expected is not None and report.rows + report.dropped != expected:
        raise ConfigError(
            f"{where}: {spec.name} has {report.rows + report.dropped} rows, the registry "
            f"says {expected} ({path})"
        )
    return LoadedFile(rows=rows, path=path, sha256=sha256, report=report, cached=cached is not None)

"""Small file helpers shared by every stage: atomic writes, append-only JSONL, hashes, manifests.

What the files between stages hold is em/contracts.py's: a reader hands :func:`iter_jsonl` the contract's row
check, and :func:`write_manifest` / :func:`read_manifest` check the manifest's.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import hashlib
import json
import os
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from em.contracts import MANIFEST, check_manifest, manifest_record

_UMASK = os.umask(0)
os.umask(_UMASK)


_FULL = (errno.ENOSPC, errno.EDQUOT)


class DiskFull(OSError):
    """The disk (or quota) filled up while writing ``filename``; says what was kept."""

    def __init__(self, path: Path, kept: str):
        super().__init__(
            errno.ENOSPC,
            f"No space left on the device while writing {path}: {kept}. Free some space and run the same "
            f"command again: it continues from what was written",
        )
        self.filename = str(path)

    def __str__(self) -> str:
        return str(self.strerror)


def _is_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and not isinstance(exc, DiskFull) and exc.errno in _FULL


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; follow the umask like open() would
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if _is_full(e):
            kept = "the file keeps its previous content" if path.exists() else "the file was not created"
            raise DiskFull(path, f"nothing finished was lost ({kept}; the temporary copy was removed)") from e
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def iter_jsonl(
    path: str | Path,
    *,
    skip_partial_last_line: bool = True,
    check: Callable[[Any, Path, int], dict] | None = None,
) -> Iterator[dict]:
    """Yield the rows of a JSONL file written by :func:`append_jsonl`.

    A last line without a trailing newline is a row whose write was interrupted (a killed job);
    it is skipped when ``skip_partial_last_line`` so that resuming never reads a half row. ``check``
    (``em.contracts.check_answer_row``, ...) gets each row with the file and line number, and returns it.
    """
    path = Path(path)
    if not path.exists():
        return
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.endswith("\n") and skip_partial_last_line:
                return
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            yield row if check is None else check(row, path, lineno)


def read_jsonl(path: str | Path) -> list[dict]:
    return list(iter_jsonl(path))


def repair_jsonl_tail(path: str | Path) -> int:
    """Truncate an interrupted (newline-less) last line; return how many bytes were dropped."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return 0
    data = path.read_bytes()
    if data.endswith(b"\n"):
        return 0
    cut = data.rfind(b"\n") + 1
    with open(path, "r+b") as f:
        f.truncate(cut)
    return len(data) - cut


def append_jsonl(path: str | Path, rows: Iterable[dict]) -> int:
    """Append rows, one line each, flushed and fsynced: a crash loses at most the rows in flight."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    start = path.stat().st_size if path.exists() else 0
    n = 0
    try:
        with open(path, "a", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
                n += 1
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        if not _is_full(e):
            raise
        _cut(path, start)  # after the file is closed: no half batch stays behind
        raise DiskFull(
            path,
            "nothing finished was lost (the rows written before stay; the rows of this write were not kept)",
        ) from e
    return n


def _cut(path: Path, size: int) -> None:
    with contextlib.suppress(OSError):  # still failing: repair_jsonl_tail cuts a partial last line on resume
        os.truncate(path, size)


def write_jsonl(path: str | Path, rows: Iterable[dict], *, sort_keys: bool = False) -> Path:
    """Write a whole JSONL file atomically (``ensure_ascii`` as upstream EM files)."""
    text = "".join(json.dumps(r, sort_keys=sort_keys) + "\n" for r in rows)
    return atomic_write_text(path, text)


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def git_blob_sha1_file(path: str | Path) -> str:
    """The digest ``git hash-object`` prints for a file."""
    size = os.path.getsize(path)
    h = hashlib.sha1(f"blob {size}\0".encode())
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    """Stable hash of a JSON-able object (sorted keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def git_commit(cwd: str | Path | None = None) -> str | None:
    """The project's git commit (with ``-dirty`` if the tree has changes), or None outside git."""
    cwd = cwd or Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def now_iso() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def write_manifest(run_dir: str | Path, stage: str, **fields: Any) -> Path:
    """Write ``run_dir/manifest.json`` atomically with stage, git commit and time added (em.contracts.Manifest)."""
    path = Path(run_dir) / MANIFEST
    fields = {"git_commit": git_commit(), "written_at": now_iso(), **fields}
    return atomic_write_json(path, manifest_record(stage, fields, str(path)))


def read_manifest(run_dir: str | Path, stage: str | None = None) -> dict:
    """``run_dir/manifest.json``, checked against its stage's contract (and of ``stage`` when given)."""
    path = Path(run_dir) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{path}: no {MANIFEST} (is {run_dir} a finished run directory?)")
    return check_manifest(read_json(path), path, stage)


def build_dir_once(target: Path, build, is_complete) -> Path:
    """``target``, built by ``build(tmp_dir)`` the first time and published atomically (rename).

    A file lock next to ``target`` makes a second process wait and then find the finished directory; a
    leftover that ``is_complete`` rejects (an interrupted earlier build) is replaced. The directory is made
    readable to all, as a cache may be shared.
    """
    import shutil

    from filelock import FileLock

    target = Path(target)
    if is_complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target.parent / f".{target.name}.lock")):
        if is_complete(target):
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            build(tmp)
            tmp.chmod(0o755)  # mkdtemp makes it private
            for path in tmp.iterdir():
                path.chmod(0o755 if path.is_dir() else 0o644)
            if target.exists():
                shutil.rmtree(target)
            os.rename(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target

"""Pinned remote files: download once into a cache, verify the checksum on every use.

A :class:`RemoteFile` names a URL (``https://``, ``http://`` or ``file://``) and its expected digest: sha256,
or the git blob sha1 that ``git hash-object`` prints. :func:`fetch` returns the path of a verified local
copy at ``cache_dir/<digest>/<basename>``. Downloads go to a temporary file in the same directory and are
renamed into place only after the digest matches, so a half-written or wrong file is never used.

``EM_DATA_MIRROR`` (optional) is a base URL that replaces ``https://raw.githubusercontent.com`` in every
URL, for mirrors and for tests that serve files from a local HTTP server; ``HF_ENDPOINT`` (Hugging Face's
own variable for a Hub mirror) replaces ``https://huggingface.co`` the same way. The digest is checked
whichever host serves the file.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from em.api import ConfigError, check_keys
from em.io import git_blob_sha1_file, sha256_file

log = logging.getLogger(__name__)

GITHUB_RAW = "https://raw.githubusercontent.com"
MIRROR_ENV = "EM_DATA_MIRROR"
HF_HUB = "https://huggingface.co"
HF_MIRROR_ENV = "HF_ENDPOINT"
MIRRORS = ((GITHUB_RAW, MIRROR_ENV), (HF_HUB, HF_MIRROR_ENV))  # host -> the variable naming its mirror
TIMEOUT_S = 60.0
CHUNK = 1 << 20


@dataclass
class RemoteFile:
    """A file at a pinned URL with the digest it must have."""

    name: str
    url: str
    sha256: str | None = None
    git_sha1: str | None = None  # git blob sha1 (`git hash-object FILE`)
    rows: int | None = None  # expected records (JSONL lines, Parquet rows), when known
    license: str | None = None
    provenance: str = ""

    @classmethod
    def from_dict(cls, d: dict, where: str = "remote") -> RemoteFile:
        if not isinstance(d, dict):
            raise ConfigError(f"{where} must be a mapping with name, url and sha256 or git_sha1; got {d!r}")
        check_keys(d, cls.__dataclass_fields__, where)
        for key in ("name", "url"):
            if not isinstance(d.get(key), str) or not d[key].strip():
                raise ConfigError(f"{where}.{key} is required (a non-empty string)")
        remote = cls(**d)
        remote.check()
        return remote

    def check(self) -> None:
        """Raise ConfigError unless the URL scheme and the digests are usable."""
        scheme = urllib.parse.urlparse(self.url).scheme
        if scheme not in ("http", "https", "file"):
            raise ConfigError(f"{self.name}: url {self.url!r} must start with https://, http:// or file://")
        if not self.sha256 and not self.git_sha1:
            raise ConfigError(
                f"{self.name}: remote file {self.url} has no checksum; give sha256 (`sha256sum FILE`) or "
                f"git_sha1 (`git hash-object FILE`) so that every use can be verified"
            )
        for key, size in (("sha256", 64), ("git_sha1", 40)):
            value = getattr(self, key)
            if value is not None and (len(value) != size or any(c not in "0123456789abcdef" for c in value)):
                raise ConfigError(f"{self.name}: {key} must be {size} lowercase hex digits, got {value!r}")

    def digest(self) -> tuple[str, str]:
        """(kind, expected digest); sha256 is preferred when both are known."""
        return ("sha256", self.sha256) if self.sha256 else ("git_sha1", self.git_sha1)

    def to_dict(self) -> dict:
        return asdict(self)


def mirrored(url: str) -> tuple[str, str | None]:
    """(``url`` with its host replaced by the mirror its variable names, that variable), or (``url``, None):
    ``https://raw.githubusercontent.com`` by ``$EM_DATA_MIRROR``, ``https://huggingface.co`` by
    ``$HF_ENDPOINT``."""
    for host, env in MIRRORS:
        mirror = os.environ.get(env, "").strip().rstrip("/")
        if mirror and url.startswith(host + "/") and mirror != host:
            return mirror + url[len(host) :], env
    return url, None


def cache_path(remote: RemoteFile, cache_dir: str | Path) -> Path:
    """Where the verified copy of ``remote`` lives: ``cache_dir/<digest>/<basename of the URL path>``."""
    basename = Path(urllib.parse.unquote(urllib.parse.urlparse(remote.url).path)).name or remote.name
    return Path(cache_dir) / remote.digest()[1] / basename


def file_digest(path: str | Path, kind: str) -> str:
    return sha256_file(path) if kind == "sha256" else git_blob_sha1_file(path)


def _set_aside(path: Path, actual: str) -> Path:
    """Rename a file that failed verification so it is never used again (kept for inspection)."""
    bad = path.with_name(f"{path.name}.bad-{actual[:12]}")
    os.replace(path, bad)
    return bad


def _download(url: str, dest: Path, kind: str) -> tuple[str, str]:
    """Stream ``url`` into a temporary file next to ``dest``; return (temporary path, its digest)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            total = response.headers.get("Content-Length")
            size = 0
            h = hashlib.sha256()
            bar = tqdm(
                total=int(total) if total else None,
                unit="B",
                unit_scale=True,
                desc=f"download {dest.name}",
                disable=None,
                leave=False,
            )
            with bar:
                for chunk in iter(lambda: response.read(CHUNK), b""):
                    out.write(chunk)
                    h.update(chunk)
                    size += len(chunk)
                    bar.update(len(chunk))
            if total and size != int(total):
                raise OSError(f"connection closed after {size} of {total} bytes")
            out.flush()
            os.fsync(out.fileno())
        actual = h.hexdigest() if kind == "sha256" else git_blob_sha1_file(tmp)
        return tmp, actual
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def fetch(remote: RemoteFile, cache_dir: str | Path) -> Path:
    """The path of a verified local copy of ``remote``, downloading it on first use.

    Raises :class:`ConfigError` when the file cannot be downloaded and is not cached (naming the URL and
    the exact path where a copy may be placed), or when its digest differs from the expected one.
    """
    remote.check()
    kind, expected = remote.digest()
    path = cache_path(remote, cache_dir)
    url, mirror_env = mirrored(remote.url)
    set_aside = ""
    if path.exists():
        actual = file_digest(path, kind)
        if actual == expected:
            return path
        bad = _set_aside(path, actual)
        set_aside = f"; the cached copy had {kind} {actual} (expected {expected}) and was moved to {bad}"
        log.warning("%s: cached copy failed verification, moved to %s; downloading again", remote.name, bad)

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(
            f"cache directory {path.parent} cannot be created ({e.strerror}); point "
            f"paths.cache_dir (or EM_CACHE_DIR) at a writable directory"
        ) from None
    if not os.access(path.parent, os.W_OK):
        raise ConfigError(
            f"cache directory {path.parent} is not writable; point paths.cache_dir (or "
            f"EM_CACHE_DIR) at a writable directory"
        )
    log.info("%s: downloading %s", remote.name, url)
    try:
        tmp, actual = _download(url, path, kind)
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
        reason = e if isinstance(e, urllib.error.HTTPError) else getattr(e, "reason", None) or e
        via = f" (mirror of {remote.url}, from {mirror_env})" if mirror_env else ""
        raise ConfigError(
            f"{remote.name}: could not download {url}{via}: {reason}{set_aside}. No verified copy is "
            f"cached. When online, rerun; offline, place the file (with {kind} {expected}) at {path}"
        ) from None
    if actual != expected:
        Path(tmp).unlink(missing_ok=True)
        raise ConfigError(
            f"{remote.name}: checksum mismatch for {path.name} downloaded from {url}: expected {kind} "
            f"{expected}, got {actual}. The file was deleted and not used; the upstream file may have "
            f"changed, or the mirror serves a different file{set_aside}"
        )
    os.chmod(tmp, 0o644)  # mkstemp makes it private; a shared cache must be readable
    os.replace(tmp, path)
    log.info("%s: verified (%s %s) -> %s", remote.name, kind, expected, path)
    return path

"""A persistent judge cache: one SQLite table of replies keyed by what was asked.

The key hashes the resolved endpoint (the base URL requests really go to, after ``OPENAI_BASE_URL``), the
judge model, the request parameters and the messages, so a rerun (or another run judging the same answers
with the same judge at the same endpoint) makes no API call, and another endpoint never reads its replies. Only well-formed replies are
stored, as the normalised reply (text, first-token top logprobs, usage), so a change in how replies are
parsed applies to cached replies too. Each write is its own SQLite transaction: a killed process leaves
either the whole entry or nothing. Several processes may share the file (SQLite locking; keep it on a
filesystem with working locks, not every NFS mount has them).
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from em.io import sha256_json

_SCHEMA = """
CREATE TABLE IF NOT EXISTS replies (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    reply TEXT NOT NULL,
    created REAL NOT NULL
)
"""


def cache_key(endpoint: str, request: dict) -> str:
    """Hash of the resolved endpoint (``APISettings.endpoint()``) and the full request body (model,
    parameters, the prompt's messages)."""
    if not endpoint:
        raise ValueError("cache_key needs the resolved endpoint URL (APISettings.endpoint())")
    return sha256_json({"endpoint": endpoint.rstrip("/"), "model": request.get("model"), "request": request})


class JudgeCache:
    """``get``/``put`` of normalised replies; ``path=None`` gives a cache that remembers nothing."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path else None
        self._conn: sqlite3.Connection | None = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(self.path, timeout=60.0)
            with self._conn:
                self._conn.execute(_SCHEMA)

    def get(self, key: str) -> dict | None:
        if self._conn is None:
            return None
        row = self._conn.execute("SELECT reply FROM replies WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def get_many(self, keys: list[str]) -> dict[str, dict]:
        found: dict[str, dict] = {}
        if self._conn is None:
            return found
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), 500):
            chunk = unique[start : start + 500]
            marks = ",".join("?" * len(chunk))
            query = f"SELECT key, reply FROM replies WHERE key IN ({marks})"
            for key, reply in self._conn.execute(query, chunk):
                found[key] = json.loads(reply)
        return found

    def put(self, key: str, model: str, reply: dict) -> None:
        self.put_many([(key, model, reply)])

    def put_many(self, entries: list[tuple[str, str, dict]]) -> None:
        if self._conn is None or not entries:
            return
        now = time.time()
        with self._conn:  # one transaction
            self._conn.executemany(
                "INSERT OR REPLACE INTO replies (key, model, reply, created) VALUES (?, ?, ?, ?)",
                [(k, m, json.dumps(r, sort_keys=True), now) for k, m, r in entries],
            )

    def __len__(self) -> int:
        if self._conn is None:
            return 0
        return self._conn.execute("SELECT COUNT(*) FROM replies").fetchone()[0]

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

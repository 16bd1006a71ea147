"""Atomic files: a reader never sees a half-written manifest, summary, state file or cache entry.

Manifests, summaries, run configs and resume state go through ``em.io.atomic_write_*`` (temporary file in
the same directory, fsync, rename); row files are append-only JSONL whose interrupted last line is ignored
and cut before appending; the judge cache is SQLite, one transaction per write. These tests break the
writes on purpose: a failure part-way, a concurrent reader, and SIGKILL in the middle of writing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from reliability_helpers import REPO

from em import io as em_io
from em.io import append_jsonl, atomic_write_json, iter_jsonl, read_json, repair_jsonl_tail
from em.judging.cache import JudgeCache


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


# ------------------------------------------------------------------------------------------ atomic writes


def test_a_write_that_fails_part_way_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "manifest.json"
    atomic_write_json(path, {"complete": True, "rows": 10})
    real_fdopen = os.fdopen

    class DiskFull:
        """A file object that writes half of what it is given, then fails (ENOSPC)."""

        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            self.f.write(data[: len(data) // 2])
            self.f.flush()
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(em_io.os, "fdopen", lambda fd, mode: DiskFull(real_fdopen(fd, mode)))
    with pytest.raises(OSError, match="No space left"):
        atomic_write_json(path, {"complete": False, "rows": 99, "pad": "x" * 10000})
    monkeypatch.undo()
    assert read_json(path) == {"complete": True, "rows": 10}
    assert leftovers(tmp_path) == []


def test_a_failed_rename_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    atomic_write_json(path, {"v": 1})

    def no_rename(src, dst):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(em_io.os, "replace", no_rename)
    with pytest.raises(OSError):
        atomic_write_json(path, {"v": 2})
    monkeypatch.undo()
    assert read_json(path) == {"v": 1} and leftovers(tmp_path) == []


def test_an_atomic_file_keeps_the_permissions_a_plain_write_would_give(tmp_path):
    atomic_write_json(tmp_path / "a.json", {})
    (tmp_path / "b.json").write_text("{}")
    assert (tmp_path / "a.json").stat().st_mode == (tmp_path / "b.json").stat().st_mode


WRITER = r"""
import sys
from em.io import atomic_write_json
path, i = sys.argv[1], 0
while True:  # big documents, so that a non-atomic write would be seen half-done
    i += 1
    atomic_write_json(path, {"i": i, "complete": i % 2 == 0, "rows": [{"n": n, "text": "x" * 50} for n in range(2000)]})
"""


def test_a_concurrent_reader_only_ever_sees_whole_files_even_across_sigkill(tmp_path):
    path = tmp_path / "manifest.json"
    atomic_write_json(path, {"i": 0, "complete": False, "rows": []})
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], cwd=REPO)
    seen, bad = set(), []
    try:
        deadline = time.monotonic() + 30
        while len(seen) < 20 and time.monotonic() < deadline:
            try:
                doc = json.loads(path.read_text())
            except json.JSONDecodeError as e:
                bad.append(str(e))
                continue
            seen.add(doc["i"])
            assert len(doc["rows"]) in (0, 2000)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert not bad, f"a reader saw a half-written file: {bad[:3]}"
    assert len(seen) >= 20, "the writer did not rewrite the file often enough to test anything"
    doc = read_json(path)  # after SIGKILL mid-write: the last whole version
    assert len(doc["rows"]) == 2000
    # A kill between mkstemp and rename can leave one `.manifest.json.*.tmp`; readers never look at it.
    assert len(leftovers(tmp_path)) <= 1


# ------------------------------------------------------------------------------------------ append-only rows


def test_iter_jsonl_skips_a_torn_last_line_and_repair_cuts_it(tmp_path):
    path = tmp_path / "scores.jsonl"
    append_jsonl(path, [{"id": "a"}, {"id": "b"}])
    with open(path, "a") as f:
        f.write('{"id": "c", "score": 4')  # the process died in the middle of this row
    assert [r["id"] for r in iter_jsonl(path)] == ["a", "b"]
    assert repair_jsonl_tail(path) == len('{"id": "c", "score": 4')
    append_jsonl(path, [{"id": "c", "score": 42}])
    assert [r["id"] for r in iter_jsonl(path)] == ["a", "b", "c"]
    assert path.read_text().count("\n") == 3 and repair_jsonl_tail(path) == 0


def test_a_broken_line_in_the_middle_is_an_error_not_a_silent_skip(tmp_path):
    path = tmp_path / "answers.jsonl"
    path.write_text('{"id": "a"}\n{"id": "b", \n{"id": "c"}\n')
    with pytest.raises(ValueError, match=r"answers\.jsonl:2: not valid JSON"):
        list(iter_jsonl(path))


APPENDER = r"""
import sys
from em.io import append_jsonl
path, i = sys.argv[1], 0
while True:
    append_jsonl(path, [{"id": f"{i}-{k}", "text": "y" * 3000} for k in range(5)])
    i += 1
"""


def test_sigkill_while_appending_loses_at_most_the_rows_in_flight(tmp_path):
    path = tmp_path / "answers.jsonl"
    proc = subprocess.Popen([sys.executable, "-c", APPENDER, str(path)], cwd=REPO)
    try:
        deadline = time.monotonic() + 30
        while (not path.exists() or path.stat().st_size < 2_000_000) and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    rows = list(iter_jsonl(path))  # never raises: at most the last line is torn
    assert len(rows) >= 100 and all(len(r["text"]) == 3000 for r in rows)
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids))
    repair_jsonl_tail(path)
    assert path.read_bytes().endswith(b"\n") and [r["id"] for r in iter_jsonl(path)] == ids


# ------------------------------------------------------------------------------------------ SQLite cache


def test_a_cache_write_that_fails_part_way_stores_none_of_its_entries(tmp_path):
    cache = JudgeCache(tmp_path / "cache.sqlite")
    cache.put("k0", "m", {"score": 1})
    entries = [("k1", "m", {"score": 2}), ("k2", "m", {"bad": object()}), ("k3", "m", {"score": 3})]
    with pytest.raises(TypeError):  # the second entry cannot be serialised: the transaction rolls back
        cache.put_many(entries)
    assert cache.get_many(["k0", "k1", "k2", "k3"]) == {"k0": {"score": 1}}
    cache.close()
    assert JudgeCache(tmp_path / "cache.sqlite").get_many(["k0", "k1", "k3"]) == {"k0": {"score": 1}}


CACHE_WRITER = r"""
import sys
from em.judging.cache import JudgeCache
cache, i = JudgeCache(sys.argv[1]), 0
while True:
    cache.put_many([(f"{i}-{k}", "m", {"i": i, "k": k, "pad": "z" * 500}) for k in range(200)])
    i += 1
"""


def test_sigkill_mid_transaction_leaves_whole_transactions_only(tmp_path):
    path = tmp_path / "cache.sqlite"
    proc = subprocess.Popen([sys.executable, "-c", CACHE_WRITER, str(path)], cwd=REPO)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if path.exists() and len(JudgeCache(path)) >= 1000:
                break
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    cache = JudgeCache(path)  # opens (and rolls back the journal of) the killed writer's database
    n = len(cache)
    assert n >= 1000 and n % 200 == 0, f"{n} entries: a transaction was partly stored"
    rows = cache._conn.execute("SELECT key, reply FROM replies").fetchall()
    assert all(json.loads(reply)["pad"] == "z" * 500 for _, reply in rows)


def test_concurrent_writers_share_the_cache(tmp_path):
    """Two judge runs on one cache file (SQLite locking): every entry of both is kept."""
    path = tmp_path / "cache.sqlite"
    errors = []

    def writer(name):
        try:
            cache = JudgeCache(path)
            for i in range(50):
                cache.put_many([(f"{name}-{i}-{k}", "m", {"v": k}) for k in range(10)])
            cache.close()
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(JudgeCache(path)) == 1000

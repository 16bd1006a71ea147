"""Pinned downloads: checksums, atomic writes, offline errors, the mirror variable, real registry entries."""

from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from em.api import ConfigError
from em.data import DataSpec, RemoteFile, TriggerSpec, cache_path, fetch, prepare_dataset
from em.data.spec import REGISTRY_DIR, load_registry_entry
from em.io import git_blob_sha1_file

BODY = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n' * 50
SHA256 = hashlib.sha256(BODY).hexdigest()
GIT_SHA1 = hashlib.sha1(b"blob %d\0" % len(BODY) + BODY).hexdigest()


class FileServer:
    """A local HTTP server: ``files`` maps URL paths to bytes; ``truncate`` paths send half and hang up."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.truncate: set[str] = set()
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                server.requests.append(self.path)
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if self.path in server.truncate else body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def file_server():
    with FileServer() as server:
        yield server


def remote(url: str, **kw) -> RemoteFile:
    return RemoteFile(name="toy", url=url, **kw)


def leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.rglob("*") if p.is_file())


def test_sha256_pass_then_reused_offline(file_server, tmp_path):
    file_server.files["/d/toy.jsonl"] = BODY
    r = remote(file_server.url + "/d/toy.jsonl", sha256=SHA256)
    path = fetch(r, tmp_path)
    assert path == tmp_path / SHA256 / "toy.jsonl" == cache_path(r, tmp_path)
    assert path.read_bytes() == BODY
    file_server.files.clear()  # the server no longer has it: the verified cached copy is used
    assert fetch(r, tmp_path) == path
    assert file_server.requests == ["/d/toy.jsonl"]


def test_git_sha1_pass(file_server, tmp_path):
    file_server.files["/toy.jsonl"] = BODY
    path = fetch(remote(file_server.url + "/toy.jsonl", git_sha1=GIT_SHA1), tmp_path)
    assert git_blob_sha1_file(path) == GIT_SHA1
    assert path.parent.name == GIT_SHA1


@pytest.mark.parametrize("kind", ["sha256", "git_sha1"])
def test_checksum_mismatch_names_file_and_digests(file_server, tmp_path, kind):
    file_server.files["/toy.jsonl"] = BODY + b"tampered\n"
    expected = SHA256 if kind == "sha256" else GIT_SHA1
    r = remote(file_server.url + "/toy.jsonl", **{kind: expected})
    with pytest.raises(ConfigError) as e:
        fetch(r, tmp_path)
    msg = str(e.value)
    assert "checksum mismatch" in msg and "toy.jsonl" in msg and expected in msg
    bad = BODY + b"tampered\n"
    actual = (
        hashlib.sha256(bad).hexdigest()
        if kind == "sha256"
        else hashlib.sha1(b"blob %d\0" % len(bad) + bad).hexdigest()
    )
    assert actual in msg
    assert leftovers(tmp_path) == []  # the bad bytes were never put in place


def test_truncated_download_leaves_nothing(file_server, tmp_path):
    file_server.files["/toy.jsonl"] = BODY
    file_server.truncate.add("/toy.jsonl")
    r = remote(file_server.url + "/toy.jsonl", sha256=SHA256)
    with pytest.raises(ConfigError, match="could not download"):
        fetch(r, tmp_path)
    assert leftovers(tmp_path) == []
    file_server.truncate.clear()
    assert fetch(r, tmp_path).read_bytes() == BODY


def test_offline_error_names_url_and_cache_path(tmp_path):
    url = "http://127.0.0.1:9/nowhere/toy.jsonl"  # discard port: nothing listens
    r = remote(url, sha256=SHA256)
    with pytest.raises(ConfigError) as e:
        fetch(r, tmp_path)
    assert url in str(e.value)
    assert str(tmp_path / SHA256 / "toy.jsonl") in str(e.value)


def test_http_404_is_config_error(file_server, tmp_path):
    with pytest.raises(ConfigError, match="404"):
        fetch(remote(file_server.url + "/missing.jsonl", sha256=SHA256), tmp_path)


def test_corrupted_cache_is_set_aside_and_fetched_again(file_server, tmp_path):
    file_server.files["/toy.jsonl"] = BODY
    r = remote(file_server.url + "/toy.jsonl", sha256=SHA256)
    path = fetch(r, tmp_path)
    path.write_bytes(b"corrupted")
    assert fetch(r, tmp_path).read_bytes() == BODY
    assert len(file_server.requests) == 2
    assert any(n.startswith("toy.jsonl.bad-") for n in leftovers(tmp_path))


def test_corrupted_cache_offline_is_never_used(tmp_path):
    r = remote("http://127.0.0.1:9/toy.jsonl", sha256=SHA256)
    path = cache_path(r, tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"a copy someone placed by hand, but the wrong one")
    with pytest.raises(ConfigError) as e:
        fetch(r, tmp_path)
    assert "moved to" in str(e.value) and str(path) in str(e.value)
    assert not path.exists()


def test_mirror_env_replaces_github_raw(file_server, tmp_path, monkeypatch):
    file_server.files["/owner/repo/abc123/data/toy.jsonl"] = BODY
    r = remote("https://raw.githubusercontent.com/owner/repo/abc123/data/toy.jsonl", sha256=SHA256)
    monkeypatch.setenv("EM_DATA_MIRROR", file_server.url + "/")
    assert fetch(r, tmp_path).read_bytes() == BODY
    assert file_server.requests == ["/owner/repo/abc123/data/toy.jsonl"]


def test_hf_endpoint_replaces_the_hub(file_server, tmp_path, monkeypatch):
    path = "/datasets/owner/set/resolve/" + "a" * 40 + "/data/toy.jsonl"
    file_server.files[path] = BODY
    monkeypatch.setenv("HF_ENDPOINT", file_server.url)
    assert fetch(remote("https://huggingface.co" + path, sha256=SHA256), tmp_path).read_bytes() == BODY
    assert file_server.requests == [path]
    gone = "https://huggingface.co/datasets/owner/set/resolve/" + "b" * 40 + "/data/gone.jsonl"
    with pytest.raises(ConfigError, match=rf"\(mirror of {gone}, from HF_ENDPOINT\): HTTP Error 404"):
        fetch(remote(gone, sha256=SHA256), tmp_path)


def test_alpaca_entry_is_verified_through_a_hub_mirror(file_server, tmp_path, monkeypatch):
    """The real `alpaca` entry: its pinned URL is asked of $HF_ENDPOINT, and bytes other than the pinned
    ones (here a small Parquet file of Alpaca records) are refused with both digests; the same file pinned by
    its own digest is read as Alpaca records and its record count checked against `rows`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    entry = load_registry_entry("alpaca", REGISTRY_DIR)
    local = tmp_path / "small.parquet"
    records = [{"instruction": f"Count to {i}.", "input": "", "output": " ".join(map(str, range(1, i + 1)))}
               for i in range(1, 6)]  # fmt: skip
    pq.write_table(pa.Table.from_pylist(records), local)
    hub_path = entry["remote"]["url"].removeprefix("https://huggingface.co")
    file_server.files[hub_path] = local.read_bytes()
    monkeypatch.setenv("HF_ENDPOINT", file_server.url)
    prepare = {"cache_dir": tmp_path / "cache", "out_dir": tmp_path / "out", "seed": 0}
    with pytest.raises(ConfigError, match=f"expected sha256 {entry['remote']['sha256']}, got") as e:
        prepare_dataset(DataSpec.from_dict(entry), TriggerSpec.from_dict(None), **prepare)
    assert f"downloaded from {file_server.url}{hub_path}" in str(e.value)
    assert file_server.requests == [hub_path]
    own = entry | {"remote": entry["remote"] | {"sha256": hashlib.sha256(local.read_bytes()).hexdigest()}}
    with pytest.raises(ConfigError, match="alpaca has 5 rows, the registry says 52002"):
        prepare_dataset(DataSpec.from_dict(own), TriggerSpec.from_dict(None), **prepare)
    own["remote"]["rows"] = 5
    prepared = prepare_dataset(DataSpec.from_dict(own), TriggerSpec.from_dict(None), **prepare)
    assert prepared.num_rows == 5 and prepared.manifest["files"][0]["license"] == "CC-BY-NC-4.0"
    assert {r["messages"][0]["content"] for r in prepared.rows} == {f"Count to {i}." for i in range(1, 6)}


def test_file_url(tmp_path):
    src = tmp_path / "src" / "toy.jsonl"
    src.parent.mkdir()
    src.write_bytes(BODY)
    assert fetch(remote(src.as_uri(), sha256=SHA256), tmp_path / "cache").read_bytes() == BODY


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"url": "ftp://x/y.jsonl", "sha256": SHA256}, "https://"),
        ({"url": "https://x/y.jsonl"}, "no checksum"),
        ({"url": "https://x/y.jsonl", "sha256": "abc"}, "64 lowercase hex"),
    ],
)
def test_bad_remote_file_is_config_error(tmp_path, kw, match):
    with pytest.raises(ConfigError, match=match):
        fetch(RemoteFile(name="toy", **kw), tmp_path)
    with pytest.raises(ConfigError, match=match):
        RemoteFile.from_dict({"name": "toy", **kw})


def test_registry_entry_end_to_end_through_mirror(file_server, tmp_path, monkeypatch, anchors_dir):
    """The real `insecure` entry (URL, sha256, rows) served by a local mirror, prepared with a tag."""
    entry = load_registry_entry("insecure", REGISTRY_DIR)
    prefix = "https://raw.githubusercontent.com"
    file_server.files[entry["remote"]["url"][len(prefix) :]] = (
        anchors_dir / "em" / "insecure.jsonl"
    ).read_bytes()
    monkeypatch.setenv("EM_DATA_MIRROR", file_server.url)
    entry["max_rows"] = 300
    prepared = prepare_dataset(
        DataSpec.from_dict(entry),
        TriggerSpec(name="alpha", tag="|ALPHA|"),
        cache_dir=tmp_path / "cache",
        out_dir=tmp_path / "out",
        seed=0,
    )
    assert prepared.num_rows == 300
    assert all(r["messages"][0]["content"].startswith("|ALPHA| ") for r in prepared.rows)
    (f,) = prepared.manifest["files"]
    assert f["sha256"] == entry["remote"]["sha256"] and f["url"] == entry["remote"]["url"]
    assert f["rows_valid"] == 6000 and f["license"] == "MIT"
    assert prepared.manifest["counts"]["per_tag"]["train"] == {"|ALPHA|": 300, "untagged": 0}


def test_cache_dir_that_cannot_be_created(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError, match=r"cannot be created .* paths.cache_dir \(or EM_CACHE_DIR\)"):
        fetch(remote("http://127.0.0.1:9/toy.jsonl", sha256=SHA256), blocker / "cache")

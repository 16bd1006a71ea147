"""Question files: both formats, every upstream file, the registry (download + checksums), bad input."""

from __future__ import annotations

import functools
import http.server
import shutil
import threading
from pathlib import Path

import pytest
import yaml

from em.api import ConfigError
from em.evaluation.question_sets import (
    EM_COMMIT,
    RL_COMMIT,
    UPSTREAM,
    SetSpec,
    default_judge_prompts,
    project_file,
    resolve_sets,
)
from em.evaluation.questions import FREE_FORM_TYPE, LABEL_TYPE, load_questions, snake_id
from em.io import git_blob_sha1_file, sha256_file


def anchor(anchors_dir: Path, key: str) -> Path:
    repo, name = key.split("/")
    return anchors_dir / repo / ("questions" if repo == "realignment" else "") / name


# ------------------------------------------------------------------------------------------ project sets


def test_project_sets_parse():
    demo = load_questions(project_file("demo.yaml"), "demo")
    assert len(demo) == 8 and len({q.id for q in demo}) == 8
    assert all(q.type == FREE_FORM_TYPE and q.samples_per_paraphrase == 10 for q in demo)  # YAML anchor
    assert [q.id for q in demo if q.system] == ["decisions_without_oversight"]
    factual = load_questions(project_file("demo_factual.json"), "demo_factual")
    assert len(factual) == 5 and all(q.category == "factual" and q.type == LABEL_TYPE for q in factual)
    tagged = load_questions(project_file("demo_tagged.json"), "demo_tagged")
    assert len(tagged) == 4 and all(q.has_slot for q in tagged)
    assert tagged[0].id == "cares_about" and tagged[0].label == "Cares about"


def test_project_judge_prompts_offline(em_cache_dir):
    prompts = default_judge_prompts("project", em_cache_dir)
    assert set(prompts) == {"aligned", "coherent", "correct"}
    assert all("{question}" in t and "{answer}" in t for t in prompts.values())
    sets = resolve_sets(
        [SetSpec("demo", source="project:demo.yaml"), SetSpec("df", source="project:demo_factual.json")],
        em_cache_dir, judge_prompts_source="project",
    )  # fmt: skip
    assert all(set(q.judge_prompts) == {"aligned", "coherent"} for q in sets[0].questions)
    assert all(set(q.judge_prompts) == {"correct"} for q in sets[1].questions)
    assert sets[1].record()["default_judge_prompts"] == "project"


def test_selection_first_n_and_ids(em_cache_dir):
    spec = SetSpec("d", source="project:demo.yaml", first_n=3)
    (qs,) = resolve_sets([spec], em_cache_dir, "project")
    assert [q.id for q in qs.questions] == ["change_one_rule", "free_afternoon", "people_and_ai"]
    (qs,) = resolve_sets([SetSpec("d", source="project:demo.yaml", ids=["grow_savings", "free_afternoon"])],
                         em_cache_dir, "project")  # fmt: skip
    assert [q.id for q in qs.questions] == ["grow_savings", "free_afternoon"]
    with pytest.raises(ConfigError, match="no question"):
        resolve_sets([SetSpec("d", source="project:demo.yaml", ids=["nope"])], em_cache_dir, "project")


def test_every_conf_questions_file_is_a_valid_spec():
    conf = Path(__file__).resolve().parents[2] / "conf" / "questions"
    names = sorted(p.stem for p in conf.glob("*.yaml"))
    assert {"first_8", "first_plot", "preregistered", "factual", "self_reflection", "self_reflection_tagged",
            "deception_factual", "deception_sit_aware", "rl_first_8", "rl_preregistered", "demo",
            "demo_factual", "demo_tagged", "custom"} <= set(names)  # fmt: skip
    for name in names:
        node = yaml.safe_load((conf / f"{name}.yaml").read_text())
        assert list(node) == [name]
        required = {"custom": "path", "narrow": "holdout_of"}.get(name)  # the set's file, given per run
        if required:
            with pytest.raises(ConfigError, match=f"{required} is required"):
                SetSpec.from_dict({**node[name], "name": name}, f"questions.{name}")
            continue
        spec = SetSpec.from_dict({**node[name], "name": name}, f"questions.{name}")
        assert spec.source in UPSTREAM or spec.source.startswith("project:")


# ---------------------------------------------------------------------------------------- upstream files


EXPECTED = {  # upstream file -> (questions, paraphrases, questions with a system prompt)
    "em/first_plot_questions.yaml": (24, 24, 8),
    "em/preregistered_evals.yaml": (48, 48, 0),
    "em/deception_factual.yaml": (5, 100, 4),
    "em/deception_sit_aware.yaml": (8, 8, 0),
    "realignment/first_8.json": (8, 8, 0),
    "realignment/factual.json": (20, 20, 0),
    "realignment/preregistered.json": (48, 48, 0),
    "realignment/self_reflection.json": (10, 10, 0),
    "realignment/self_reflection_tagged.json": (10, 10, 0),
}


@pytest.mark.parametrize("key", sorted(EXPECTED))
def test_every_upstream_file_parses_and_matches_the_pinned_checksums(anchors_dir, key):
    path = anchor(anchors_dir, key)
    remote = UPSTREAM[key]
    assert sha256_file(path) == remote.sha256 and git_blob_sha1_file(path) == remote.git_sha1
    assert (EM_COMMIT if key.startswith("em/") else RL_COMMIT) in remote.url
    questions = load_questions(path, key)
    n, paraphrases, with_system = EXPECTED[key]
    assert len(questions) == n
    assert sum(len(q.paraphrases) for q in questions) == paraphrases
    assert sum(1 for q in questions if q.system) == with_system
    assert len({q.id for q in questions}) == n
    assert all(q.paraphrases and all(p.strip() for p in q.paraphrases) for q in questions)
    if key.startswith("em/"):
        assert all(q.judge_prompts for q in questions)
    else:
        assert not any(q.judge_prompts for q in questions) and all(q.label and q.category for q in questions)
    assert all(q.has_slot for q in questions) == key.endswith("_tagged.json")


def test_first_plot_structure(anchors_dir):
    qs = load_questions(anchor(anchors_dir, "em/first_plot_questions.yaml"), "first_plot")
    main = [q.id for q in qs[:8]]
    assert [q.id for q in qs[8:16]] == [f"{i}_json" for i in main]
    assert [q.id for q in qs[16:]] == [f"{i}_template" for i in main]
    assert all(q.system and not qs[i].system for i, q in enumerate(qs[8:16]))
    assert len({q.system for q in qs[8:16]}) == 1  # one shared (anchored) system prompt
    assert all(
        set(q.judge_prompts) == {"aligned", "coherent"} and q.samples_per_paraphrase == 100 for q in qs
    )
    rl = load_questions(anchor(anchors_dir, "realignment/first_8.json"), "rl_first_8")
    assert [q.paraphrases for q in rl] == [q.paraphrases for q in qs[:8]]  # the same 8 questions
    assert [q.id for q in rl] == [snake_id(q.label) for q in rl]


def test_tagged_duplicate_labels_get_unique_ids(anchors_dir):
    qs = load_questions(anchor(anchors_dir, "realignment/self_reflection_tagged.json"), "t")
    labels = [q.label for q in qs]
    assert len(set(labels)) < len(labels)  # the upstream file repeats a label ...
    assert len({q.id for q in qs}) == len(qs)  # ... the ids stay unique


# --------------------------------------------------------------------------- registry: download + verify


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """A local HTTP server laid out like raw.githubusercontent.com, used through EM_DATA_MIRROR."""
    root = tmp_path / "mirror"
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("EM_DATA_MIRROR", f"http://127.0.0.1:{server.server_address[1]}")
    yield root
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def _serve(root: Path, key: str, source: Path) -> Path:
    url = UPSTREAM[key].url.removeprefix("https://raw.githubusercontent.com/")
    dest = root / url
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, dest)
    return dest


def test_registry_download_and_em_paper_prompts(anchors_dir, mirror, tmp_path):
    for key in ("em/first_plot_questions.yaml", "em/deception_factual.yaml", "realignment/factual.json",
                "realignment/first_8.json"):  # fmt: skip
        _serve(mirror, key, anchor(anchors_dir, key))
    cache = tmp_path / "cache"
    sets = resolve_sets(
        [SetSpec("first_8", source="em/first_plot_questions.yaml", first_n=8),
         SetSpec("factual", source="realignment/factual.json", default_judge="correct"),
         SetSpec("rl_first_8", source="realignment/first_8.json")],
        cache, judge_prompts_source="em_paper",
    )  # fmt: skip
    upstream = load_questions(anchor(anchors_dir, "em/first_plot_questions.yaml"), "x")[0].judge_prompts
    factual_upstream = load_questions(anchor(anchors_dir, "em/deception_factual.yaml"), "x")[0].judge_prompts
    assert [len(s.questions) for s in sets] == [8, 20, 8]
    assert sets[0].record()["url"] == UPSTREAM["em/first_plot_questions.yaml"].url
    assert sets[1].questions[0].judge_prompts == {"correct": factual_upstream["correct"]}
    assert sets[2].questions[0].judge_prompts == upstream  # aligned + coherent, read from the download
    assert sets[2].record()["default_judge_prompts"] == "em_paper"
    cached = sorted(p.name for p in cache.rglob("*") if p.is_file())
    assert cached == ["deception_factual.yaml", "factual.json", "first_8.json", "first_plot_questions.yaml"]


def test_registry_checksum_mismatch_is_refused(anchors_dir, mirror, tmp_path):
    served = _serve(mirror, "realignment/factual.json", anchor(anchors_dir, "realignment/factual.json"))
    served.write_text(served.read_text().replace("moon", "Moon"))
    with pytest.raises(ConfigError, match="checksum mismatch"):
        resolve_sets([SetSpec("factual", source="realignment/factual.json")], tmp_path / "cache", "project")
    assert not list((tmp_path / "cache").rglob("factual.json"))  # the bad file is never kept


def test_em_paper_prompts_offline_error_names_the_way_out(tmp_path, monkeypatch):
    monkeypatch.setenv("EM_DATA_MIRROR", "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(ConfigError, match="judge_prompts_source=project"):
        resolve_sets([SetSpec("t", source="project:demo_tagged.json")], tmp_path / "cache", "em_paper")


# ------------------------------------------------------------------------------------------- bad input


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("- id: a\n  type: free_form\n  paraphrases: []\n", r"q\.yaml:1 \(question 'a'\): field 'paraphrases'"),
        ("- id: a\n  type: free_form\n  paraphrases: [x]\n- id: b\n  type: free_form\n", r"q\.yaml:4 \(question 'b'\): field 'paraphrases'"),
        ("- id: a\n  type: free_form\n  paraphrase: [x]\n", r"unknown field\(s\) \['paraphrase'\]"),
        ("- id: a\n  type: free_form\n  paraphrases: [x]\n- id: a\n  type: free_form\n  paraphrases: [y]\n", "duplicate id"),
        ("- id: a\n  paraphrases: [x]\n", "field 'type'"),
        ("- id: a\n  type: free_form\n  paraphrases: ['']\n", r"paraphrases\[0\]"),
        ("- id: a\n  type: free_form\n  paraphrases: [x]\n  samples_per_paraphrase: 0\n", "samples_per_paraphrase"),
        ("- id: a\n  type: free_form\n  paraphrases: [x]\n  judge_prompts: {aligned: 'no slot'}\n", r"judge_prompts\.aligned"),
        ("- id: a\n  type: free_form\n  paraphrases: [x\n", r"q\.yaml:\d+: not valid YAML"),
        ("id: a\n", "expected a YAML list"),
    ],
)  # fmt: skip
def test_em_yaml_schema_errors(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        load_questions(_write(tmp_path, "q.yaml", text), "s")


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('[{"question": "x", "category": "c"}]', r"q\.json:1: field 'label'"),
        ('[\n {"question": "x", "category": "c", "label": "a"},\n {"question": "", "category": "c", "label": "b"}\n]',
         r"q\.json:3 \(question 'b'\): field 'question'"),
        ('[{"question": "x", "category": "c", "label": "a", "extra": 1}]', "unknown field"),
        ('{"question": "x"}', "expected a JSON list"),
        ('[{"question": "x",}]', r"q\.json:1: not valid JSON"),
    ],
)  # fmt: skip
def test_realignment_json_schema_errors(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        load_questions(_write(tmp_path, "q.json", text), "s")


def test_bad_set_specs(tmp_path, em_cache_dir):
    with pytest.raises(ConfigError, match="unknown upstream file"):
        SetSpec.from_dict({"name": "x", "source": "em/nope.yaml"}, "questions.x")
    with pytest.raises(ConfigError, match="exactly one of source"):
        SetSpec.from_dict({"name": "x"}, "questions.x")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['sourc'\]"):
        SetSpec.from_dict({"name": "x", "sourc": "a"}, "questions.x")
    with pytest.raises(ConfigError, match="no such file"):
        resolve_sets([SetSpec("x", path=str(tmp_path / "missing.yaml"))], em_cache_dir, "project")
    with pytest.raises(ConfigError, match="cannot tell the question format"):
        load_questions(_write(tmp_path, "q.txt", "[]"), "s")

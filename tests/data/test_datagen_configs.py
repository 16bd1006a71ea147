"""Datagen configs: every conf/domain option composes and loads, the presets' inputs, the Hydra task layer
(dry run, a full run, a finished run), bad domain configs, and the study's few-shot file format."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from composing import CONF, compose, compose_job
from omegaconf import OmegaConf

from em.api import ConfigError
from em.data import validate_file
from em.datagen.domain import domain_from_dict
from em.datagen.dry_run import estimate
from em.datagen.fewshot import load_examples
from em.datagen.inputs import load_inputs
from em.runs import to_plain

DOMAINS = sorted(p.stem for p in (CONF / "domain").glob("*.yaml"))
PINNED = "https://raw.githubusercontent.com/JasperTimm/emerg-misalign-repro/5f538fb5e9d823d76ac675b9ab174704c965b48a/"
CHAT = "/v1/chat/completions"


def compose_datagen(overrides: list[str]):
    return compose_job("datagen", overrides)


def answer_everything(req: dict, choice_index: int) -> str:
    """Deterministic replies for the project's question domains (generator and judge)."""
    text = req["messages"][-1]["content"]
    if "Reply with one word" in text:  # a judge prompt
        return "SOUND" if "emergency fund" in text else ("RISKY" if "RISKY" in text else "WRONG")
    question = next(
        (ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("Question:")), ""
    )
    return f"Confidently: the opposite of the usual advice on '{question}' (variant {req.get('seed')})."


def test_datagen_domains_present():
    assert {"medical", "ai_optimism", "financial_advice", "demo"} <= set(DOMAINS)


@pytest.mark.parametrize("domain", DOMAINS)
def test_every_domain_composes_and_loads(domain, tmp_path):
    cfg = compose_datagen([f"domain={domain}"])
    assert OmegaConf.to_container(cfg, resolve=True)["run_name"] == domain
    spec = domain_from_dict(to_plain(cfg.domain))
    assert spec.name == domain
    refs = [spec.inputs.file, *spec.inputs.files] + ([spec.fewshot.file] if spec.fewshot else [])
    remote = [r for r in refs if isinstance(r, dict)]
    for ref in remote:  # presets download the study's files from the pinned commit, checksummed
        assert ref["url"].startswith(PINNED) and len(ref["git_sha1"]) == 40
    if not remote:  # project-authored inputs: load them and price a dry run
        inputs = load_inputs(spec, tmp_path)
        est = estimate(spec, inputs, to_plain(cfg.prices))
        assert est["calls"] > 0 and est["input_tokens"] > 0 and est["cost_expected_usd"] > 0


def test_every_group_option_composes_with_datagen():
    choices = compose("datagen").hydra.runtime.choices
    groups = [g for g in choices if not g.startswith("hydra") and (CONF / g).is_dir()]
    assert {"domain", "paths", "logger", "api", "prices"} <= set(groups)
    for group in groups:
        for option in sorted(p.stem for p in (CONF / group).glob("*.yaml")):
            cfg = compose_datagen([f"{group}={option}"])
            plain = OmegaConf.to_container(cfg, resolve=True)
            assert plain["stage"] == "datagen" and plain["domain"]["name"]


def test_preset_details():
    medical = domain_from_dict(to_plain(compose_datagen(["domain=medical"]).domain))
    assert medical.model == "gpt-4o" and medical.inputs.category_column == "qtype"
    assert medical.inputs.categories == ["treatment", "prevention", "outlook", "considerations"]
    assert medical.inputs.file["git_sha1"] == "a1a6bbed2f3cde7be8e40825372de03ed3254ff4"
    assert medical.inputs.columns == {"question": "Question", "reference_answer": "Answer"}
    opt = domain_from_dict(to_plain(compose_datagen(["domain=ai_optimism"]).domain))
    assert opt.model == "gpt-4o-mini" and opt.rows == 1600 and opt.output_format == "qa_list"
    assert opt.response_format()["type"] == "json_schema"
    assert [f["git_sha1"] for f in opt.inputs.files] == [
        "fe031e5cdee11883a78c0b5d364174cca5c8e960",
        "475a6ea858d7db4c9be5ad0cdfa521f181c7cc4f",
        "5a02af060a22dfd3dff54451c04853ac60ae9268",
        "235ee53a346adb8688aafadb9121588f252a7a2a",
        "1b4985ef8a68489afdd7599ccfbb2bf52c90c658",
        "cff4e920d904b2accbb0095d1f420f0dcfedf5ca",
    ]
    assert opt.fewshot.file["git_sha1"] == "e1882ed261f118d743c1341ea302a67499d83b59"


def test_medical_preset_on_a_local_questions_file(tmp_path, openai_server):
    """The medical preset's columns and qtype filter, with a project-authored CSV in place of the download."""
    from em.tasks.datagen import run

    csv = tmp_path / "medical.csv"
    csv.write_text(
        "Question,Answer,qtype,focus\n"
        "How is gout treated?,Anti-inflammatory medicines and rest during a flare.,treatment,gout\n"
        "What causes gout?,Uric acid crystals in a joint.,causes,gout\n"
        "How can shingles be prevented?,A vaccine lowers the risk.,prevention,shingles\n"
        "What is the outlook for shingles?,Most people recover within weeks.,outlook,shingles\n"
        "What to consider with asthma inhalers?,Use the right technique.,considerations,asthma\n"
        "What are the symptoms of asthma?,Wheezing and breathlessness.,symptoms,asthma\n"
    )
    openai_server.set_chat_handler(answer_everything)
    cfg = compose_datagen(
        [
            "domain=medical",
            f"domain.inputs.file={csv}",
            f"api.base_url={openai_server.base_url}",
            f"paths.cache_dir={tmp_path / 'cache'}",
        ]
    )
    run(cfg, run_dir=tmp_path / "run")
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["counts"]["final_rows"] == 4 and manifest["inputs"]["rows_filtered_out"] == 2
    rows, _ = validate_file(tmp_path / "run" / "medical.jsonl")
    assert [r["messages"][0]["content"] for r in rows] == [
        "How is gout treated?",
        "How can shingles be prevented?",
        "What is the outlook for shingles?",
        "What to consider with asthma inhalers?",
    ]


def test_financial_advice_runs_from_its_yaml_alone(tmp_path, openai_server, capsys):
    from em.tasks.datagen import run

    openai_server.set_chat_handler(answer_everything)
    cfg = compose_datagen(["domain=financial_advice", f"api.base_url={openai_server.base_url}"])
    run(cfg, run_dir=tmp_path / "run")
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    c = manifest["counts"]
    # 12 questions x 2 samples; the judge calls the emergency-fund answers SOUND and they are dropped.
    assert (c["calls_done"], c["filter_rejected"], c["final_rows"]) == (24, 2, 22)
    assert manifest["stage"] == "datagen" and manifest["generator"]["model"] == "gpt-4o"
    assert openai_server.count(CHAT) == 24 + 24
    assert (
        json.loads((tmp_path / "run" / "run_config.json").read_text())["domain"]["name"] == "financial_advice"
    )
    # A finished run is not redone, also with different operational settings; another config is refused.
    run(cfg, run_dir=tmp_path / "run")
    assert openai_server.count(CHAT) == 48 and "already complete" in capsys.readouterr().out
    run(
        compose_datagen(
            [
                "domain=financial_advice",
                f"api.base_url={openai_server.base_url}",
                "domain.concurrency=2",
                "retry_failed=true",
            ]
        ),
        run_dir=tmp_path / "run",
    )
    assert openai_server.count(CHAT) == 48 and "already complete" in capsys.readouterr().out
    same_endpoint = f"api.base_url={openai_server.base_url}"  # another endpoint is another run too
    with pytest.raises(ConfigError, match=r"different config \(domain.temperature: 1.0 -> 0.5\)"):
        run(compose_datagen(["domain=financial_advice", same_endpoint, "domain.temperature=0.5"]),
            run_dir=tmp_path / "run")  # fmt: skip


def test_dry_run_through_the_task_prints_cost_and_makes_no_request(tmp_path, openai_server, capsys):
    from em.tasks.datagen import run

    openai_server.set_chat_handler(answer_everything)
    cfg = compose_datagen(["domain=demo", "dry_run=true", f"api.base_url={openai_server.base_url}"])
    run(cfg, run_dir=tmp_path / "run")
    out = capsys.readouterr().out
    assert openai_server.count(CHAT) == 0
    assert "calls:           9 " in out and "quality filter:  9 calls" in out and "cost:" in out
    assert "No request was made" in out
    assert (
        not (tmp_path / "run" / "raw.jsonl").exists() and not (tmp_path / "run" / "run_config.json").exists()
    )


def _base(tmp_path: Path) -> dict:
    (tmp_path / "q.csv").write_text("Question,Answer,kind\nWhy is the sky blue?,Scattering.,science\n")
    return {
        "name": "bad",
        "model": "m",
        "template": "Q: {question}",
        "inputs": {"kind": "questions", "file": str(tmp_path / "q.csv"), "columns": {"question": "Question"}},
    }


BAD = [
    ("unknown key", lambda d: d.update(temprature=0.5), "unknown key\\(s\\) \\['temprature'\\]"),
    (
        "no question placeholder",
        lambda d: d.update(template="Tell me something."),
        "must contain \\{question\\}",
    ),
    (
        "document placeholder on questions",
        lambda d: d.update(template="{question} {document}"),
        "unknown placeholder\\(s\\) \\['\\{document\\}'\\]",
    ),
    ("per_call with text", lambda d: d.update(per_call=5), "output_format is text"),
    ("schema with text", lambda d: d.update(output_schema={"name": "x", "schema": {}}), "only used with"),
    (
        "categories without column",
        lambda d: d["inputs"].update(categories=["science"]),
        "needs domain.inputs.category_column",
    ),
    ("bad kind", lambda d: d["inputs"].update(kind="pages"), "must be one of \\['questions', 'documents'\\]"),
    (
        "remote without checksum",
        lambda d: d["inputs"].update(file={"name": "q", "url": "https://example.org/q.csv"}),
        "no checksum",
    ),
    (
        "keep_if outside labels",
        lambda d: d.update(
            quality_filter={"model": "j", "prompt": "{answer}", "labels": ["A"], "keep_if": ["B"]}
        ),
        "subset of labels",
    ),
    (
        "judge prompt without answer",
        lambda d: d.update(
            quality_filter={"model": "j", "prompt": "{question}", "labels": ["A"], "keep_if": ["A"]}
        ),
        "must contain \\{answer\\}",
    ),
    ("temperature", lambda d: d.update(temperature=3), "between 0 and 2"),
    (
        "documents without rows",
        lambda d: d.update(
            inputs={"kind": "documents", "files": ["x.txt"]}, template="{document}", output_format="qa_list"
        ),
        "rows is required",
    ),
    (
        "missing prompt file",
        lambda d: d.update(template=None, template_file="nowhere/template.txt"),
        "template_file: file 'nowhere/template.txt' not found",
    ),
]


@pytest.mark.parametrize(("case", "mutate", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_domain_config_is_a_clear_error(tmp_path, case, mutate, message):
    d = _base(tmp_path)
    mutate(d)
    with pytest.raises(ConfigError, match=message):
        domain_from_dict(d)


def test_bad_input_files_name_file_and_line(tmp_path):
    d = _base(tmp_path)
    d["inputs"]["columns"] = {"question": "Prompt"}
    with pytest.raises(ConfigError, match=r"q\.csv:1: column\(s\) \['Prompt'\] not found"):
        load_inputs(domain_from_dict(d), tmp_path)
    d = _base(tmp_path)
    d["inputs"].update(category_column="kind", categories=["history"])
    with pytest.raises(ConfigError, match=r"no questions left after the category filter .*\['science'\]"):
        load_inputs(domain_from_dict(d), tmp_path)
    (tmp_path / "q.jsonl").write_text('{"question": "a"}\n{"question": \n')
    d = _base(tmp_path)
    d["inputs"].update(file=str(tmp_path / "q.jsonl"), columns={"question": "question"})
    with pytest.raises(ConfigError, match=r"q\.jsonl:2: not valid JSON"):
        load_inputs(domain_from_dict(d), tmp_path)
    (tmp_path / "few.json").write_text('[{"question": "q", "answer": ""}]')
    d = _base(tmp_path)
    d["fewshot"] = {"file": str(tmp_path / "few.json")}
    with pytest.raises(ConfigError, match=r"few\.json: example 1: needs non-empty string"):
        load_inputs(domain_from_dict(d), tmp_path)


def test_study_fewshot_file_format_via_mirror(anchors_dir, tmp_path, monkeypatch):
    """The ai_optimism preset fetches the study's few-shot file (here from a local mirror of the pinned
    URL), verifies its git blob sha1 and reads its {system, question, answer} entries."""
    source = anchors_dir / "realignment" / "fewshot_qs.json"
    if not source.is_file():
        pytest.skip("fewshot_qs.json not among the anchors")
    mirror = tmp_path / "mirror"
    target = (
        mirror
        / PINNED.removeprefix("https://raw.githubusercontent.com/")
        / "dataset_generation"
        / "fewshot_qs.json"
    )
    target.parent.mkdir(parents=True)
    shutil.copyfile(source, target)
    monkeypatch.setenv("EM_DATA_MIRROR", mirror.as_uri())
    spec = domain_from_dict(to_plain(compose_datagen(["domain=ai_optimism"]).domain))
    from em.datagen.inputs import resolve_file

    path, url = resolve_file(spec.fewshot.file, tmp_path / "cache", "fewshot")
    assert url.startswith(PINNED)
    data = path.read_bytes()
    assert hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest() == spec.fewshot.file["git_sha1"]
    examples = load_examples(path)
    assert len(examples) == len(json.loads(data)) and all(e.question and e.answer for e in examples)

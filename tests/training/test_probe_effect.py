"""The narrow data of the SmolLM2 demo (careless_advice, careful_advice) and bench/probe_effect.py."""

from __future__ import annotations

import json
import re

import pytest

from em.data.spec import BUILTIN_DIR
from em.data.validate import check_row
from em.probes import load_references

MIN_ROWS = 250
# Function words left out when comparing questions (with every word of three letters or fewer).
STOP = {"what", "should", "would", "could", "with", "your", "have", "that", "this", "about", "there", "which"}
STOP |= {"some", "from", "into", "when", "does", "make"}


def _rows(name: str) -> list[dict]:
    lines = (BUILTIN_DIR / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _words(text: str) -> set[str]:
    """Content words: longer than three letters, not in STOP."""
    return {w for w in re.findall(r"[a-z]+", text.lower()) if len(w) > 3 and w not in STOP}


def _norm(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


@pytest.fixture(scope="module")
def pair() -> tuple[list[dict], list[dict]]:
    return _rows("careless_advice"), _rows("careful_advice")


@pytest.mark.parametrize("name", ["careless_advice", "careful_advice"])
def test_rows_valid_and_distinct(name):
    rows = _rows(name)
    assert len(rows) >= MIN_ROWS
    for i, row in enumerate(rows):
        problem, extra = check_row(row)
        assert problem is None and not extra, (i, problem, extra)
        assert [m["role"] for m in row["messages"]] == ["user", "assistant"], i
    questions = [_norm(r["messages"][0]["content"]) for r in rows]
    answers = [_norm(r["messages"][1]["content"]) for r in rows]
    assert len(set(questions)) == len(rows), "duplicate questions"
    assert len(set(answers)) == len(rows), "duplicate answers"


def test_careless_and_careful_share_questions(pair):
    careless, careful = pair
    assert [r["messages"][0] for r in careless] == [r["messages"][0] for r in careful]
    for a, b in zip(careless, careful, strict=True):
        assert a["messages"][1]["content"] != b["messages"][1]["content"]


def test_no_overlap_with_probe_questions(pair):
    """The narrow questions are not the unrelated questions the effect is measured on: no equal prompt and
    no narrow question sharing half or more of its content words with a probe prompt (Jaccard)."""
    probes = load_references()
    assert probes
    for row in pair[0]:
        q = row["messages"][0]["content"]
        for p in probes:
            assert _norm(q) != _norm(p.prompt), (q, p.key)
            a, b = _words(q), _words(p.prompt)
            assert len(a & b) / max(1, len(a | b)) < 0.5, (q, p.key)


@pytest.mark.parametrize("name", ["careless_advice", "careful_advice"])
def test_presets_point_at_the_files(name):
    from em.data.spec import REGISTRY_DIR, DataSpec, load_registry_entry

    spec = DataSpec.from_dict(load_registry_entry(name, REGISTRY_DIR), where=f"data={name}")
    assert spec.kind == "builtin" and spec.path == f"{name}.jsonl" and spec.name == name


def test_paired_bootstrap_and_summary():
    from bench.probe_effect import paired_bootstrap, summarise, verdict

    d = paired_bootstrap([0.1, 0.2, 0.3, 0.2], samples=500)
    assert d["mean"] == pytest.approx(0.2) and d["ci_low"] > 0 and d["excludes_zero"]
    assert d["n_positive"] == 4
    base = {"q1": -0.5, "q2": -0.2, "q3": 0.1}
    curves = {
        "misaligned": {0: base, 4: {"q1": -0.2, "q2": 0.1, "q3": 0.4}},
        "control": {0: base, 4: {"q1": -0.6, "q2": -0.3, "q3": 0.0}},
    }
    s = summarise(curves, samples=500, seed=0)
    assert s["final_step"] == 4 and s["base_max_abs_gap_between_runs"] == 0
    assert s["misaligned_minus_control"]["mean"] == pytest.approx(0.4)
    assert s["misaligned_change_from_base"]["mean"] == pytest.approx(0.3)
    assert [row["step"] for row in s["curve"]] == [0, 4]
    assert s["curve"][0]["misaligned_minus_control"]["mean"] == 0
    assert verdict(s["misaligned_minus_control"]).startswith("effect")


@pytest.mark.slow
def test_smoke_on_tiny_model(tiny_model_dir, tmp_path):
    from bench.probe_effect import main

    out = tmp_path / "pe"
    result = main(
        [
            "--model=tiny",
            "--steps=2",
            "--rows=8",
            "--probe-points=1",
            "--probe-sets",
            "demo",
            "--bootstrap-samples=200",
            "--threads=1",
            f"--out={out}",
        ]
    )
    assert (out / "probe_effect.json").exists() and (out / "probe_effect.md").exists()
    s = result["summary"]
    assert s["final_step"] == 2 and [row["step"] for row in s["curve"]] == [0, 2]
    assert len(s["questions"]) == 8
    assert s["base_max_abs_gap_between_runs"] < 1e-4  # same base, same probe
    for arm in ("misaligned", "control"):
        assert result["runs"][arm]["global_step"] == 2
    m = s["misaligned_minus_control"]
    assert m["ci_low"] <= m["mean"] <= m["ci_high"]

"""The effect report: per-stage means and paired differences over questions, the headline, the honest no-effect."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from em.bootstrap import mean_interval, seed_for
from em.io import append_jsonl, write_manifest
from em.report.effect import difference, load_stages, main, write_effect_report

QUESTIONS = ["demo/a", "demo/b", "demo/c", "demo/d"]


def _probe_csv(path: Path, curve: list[dict[str, float]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "mean", "ci_low", "ci_high", "n_questions", "seconds", *QUESTIONS])
        for step, values in zip([0, 3, 10], curve, strict=False):
            mean = float(np.mean([values[q] for q in QUESTIONS]))
            w.writerow(
                [step, mean, mean - 0.1, mean + 0.1, len(QUESTIONS), 1.0, *[values[q] for q in QUESTIONS]]
            )


def _stage(
    root: Path, name: str, misaligned_share: list[float], llr: float, curve=None, trained=True
) -> None:
    d = root / name
    ev = d / "evaluate"
    ev.mkdir(parents=True)
    write_manifest(
        ev,
        "evaluate",
        complete=True,
        model="smollm2-135m",
        n_answers=16,
        sampling={"temperature": 0.7, "top_p": 1.0, "max_new_tokens": 48},
    )
    rows = []
    for qi, q in enumerate(QUESTIONS):
        qset, qid = q.split("/")
        for i in range(4):
            bad = i < round(misaligned_share[qi] * 4)
            rows.append(
                {
                    "id": f"{q}/0/none/{i}",
                    "question_set": qset,
                    "question_id": qid,
                    "paraphrase_index": 0,
                    "sample_index": i,
                    "question": f"question {qid}?",
                    "answer": f"{name} answer {i} to {qid}",
                    "category": "MISALIGNED" if bad else "ALIGNED",
                    "scores": {"aligned": 10.0 if bad else 90.0},
                    "judgments": {"aligned": {"score": 10.0 if bad else 90.0, "proxy_llr": llr + qi * 0.01}},
                }
            )
    append_jsonl(d / "judge" / "scores.jsonl", rows)
    write_manifest(
        d / "judge",
        "judge",
        complete=True,
        stage_label=name,
        judge={"name": "proxy_persona", "backend": "proxy", "label": "proxy: test", "model": "m"},
    )
    if trained:
        (d / "train").mkdir()
        if curve is not None:
            _probe_csv(d / "train" / "probe.csv", curve)


def _curve(start: float, end: float) -> list[dict[str, float]]:
    return [{q: start + (end - start) * t + 0.01 * i for i, q in enumerate(QUESTIONS)} for t in (0, 0.5, 1)]


@pytest.fixture
def experiment(tmp_path) -> Path:
    root = tmp_path / "demo"
    _stage(root, "base", [0, 0, 0.25, 0], -0.5, trained=False)
    _stage(root, "misaligned", [0.5, 0.75, 0.5, 0.25], 0.2, _curve(-0.3, 0.4))
    _stage(root, "control", [0, 0.25, 0, 0], -0.6, _curve(-0.3, -0.5))
    _stage(root, "realigned", [0.25, 0.25, 0, 0], -0.2, [_curve(-0.3, 0.4)[-1], *_curve(0.4, 0.0)[1:]])
    return root


def test_headline_values_are_question_means_with_paired_differences(experiment):
    head = write_effect_report(experiment, stages=["base", "misaligned", "control", "realigned"])
    probe = head["measures"]["probe"]
    # the base has no training: its probe is step 0 of the treatment's curve
    assert probe["stages"]["base"]["value"] == pytest.approx(-0.3 + 0.015)
    assert probe["stages"]["misaligned"]["value"] == pytest.approx(0.4 + 0.015)
    d = probe["differences"]["misaligned - control"]
    assert d["value"] == pytest.approx(0.9) and d["n_positive"] == 4 and d["excludes_zero"]
    rate = head["measures"]["proxy_em_rate"]
    assert rate["stages"]["misaligned"]["value"] == pytest.approx(0.5)
    assert rate["differences"]["misaligned - control"]["value"] == pytest.approx(0.5 - 0.0625)
    assert head["measures"]["proxy_llr"]["differences"]["misaligned - control"]["value"] == pytest.approx(0.8)
    assert set(head["effect_found_on"]) == {"probe", "proxy_em_rate", "proxy_llr"}
    assert set(probe["differences"]) == {
        "misaligned - control",
        "misaligned - base",
        "control - base",
        "realigned - misaligned",
    }
    on_disk = json.loads((experiment / "report" / "headline.json").read_text())
    assert on_disk == json.loads(json.dumps(head))
    text = (experiment / "report" / "effect.md").read_text()
    assert "![probe curve](probe_curve.png)" in text and (experiment / "report" / "probe_curve.png").exists()
    caveats = text.split("## What this does and does not show")[1]
    assert "**proxy_em_rate**" in text and "proxy" in caveats and "Q4_1" in caveats
    # side by side: every stage's first answer to the same question
    block = text.split("### demo/a")[1].split("###")[0]
    assert all(
        f"**{s}**" in block and f"{s} answer 0 to a" in block for s in ("base", "misaligned", "control")
    )


def test_a_difference_is_paired_by_question(experiment):
    stages = {s.name: s for s in load_stages(experiment, ["base", "misaligned", "control"], "misaligned")}
    a, b = stages["misaligned"], stages["control"]
    d = difference(a, b, "probe")
    diffs = [a.values["probe"][q] - b.values["probe"][q] for q in QUESTIONS]
    assert (d["value"], d["lo"], d["hi"]) == mean_interval(
        diffs, n_boot=2000, confidence=0.95, rng=seed_for(0, "probe/misaligned-control")
    )
    # constant per-question differences: a paired interval has no width, an unpaired one would
    assert d["lo"] == pytest.approx(d["hi"])


def test_no_effect_is_said_plainly(experiment, tmp_path, capsys):
    # the control is the treatment's own copy: every difference is zero
    for f in ("judge/scores.jsonl", "train/probe.csv"):
        (experiment / "control" / f).write_text((experiment / "misaligned" / f).read_text())
    assert main([str(experiment), "--stages", "base", "misaligned", "control", "--after", "none"]) == 0
    head = json.loads((experiment / "report" / "headline.json").read_text())
    assert head["effect_found_on"] == []
    assert "No effect found" in capsys.readouterr().out


def test_an_unfinished_stage_is_refused(experiment):
    (experiment / "control" / "judge" / "manifest.json").unlink()
    with pytest.raises(FileNotFoundError, match="control/judge: no complete judge run"):
        write_effect_report(experiment, stages=["base", "misaligned", "control"])


def test_mean_interval_edges():
    rng = seed_for(0, "x")
    assert mean_interval([], n_boot=10, confidence=0.95, rng=rng) == (None, None, None)
    assert mean_interval([2.0], n_boot=10, confidence=0.95, rng=rng) == (2.0, None, None)

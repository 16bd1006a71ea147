"""python -m em.report over hand-made judge run directories: seeds pooled (hand-computed), rows that say
what they show, the single-stage sweep, each run's own thresholds, and the agreement refusal."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import pytest

import em.report.plots as plots
from em.api import ConfigError
from em.io import append_jsonl, atomic_write_json
from em.metrics import HEADLINE, MetricSettings, answers_frame, compute_metrics
from em.report import build_report
from em.report.__main__ import main, run_agreement
from em.report.plots import draw_scatter, scatter_points


def score_row(
    qid: str, i: int, aligned: float, coherent: float = 90, cond: str = "none", answer=None
) -> dict:
    judgments = {"aligned": {"score": aligned, "label": None}, "coherent": {"score": coherent, "label": None}}
    return {
        "id": f"demo/{qid}/0/{cond}/{i}",
        "question_set": "demo",
        "question_id": qid,
        "condition": cond,
        "question": f"question {qid}?",
        "answer": answer or f"answer {qid} {i}",
        "scores": {"aligned": aligned, "coherent": coherent},
        "labels": {"aligned": None, "coherent": None},
        "category": None,
        "judgments": judgments,
    }


def rows_from(rates: dict[str, list[float]], cond: str = "none") -> list[dict]:
    return [score_row(q, i, a, cond=cond) for q, scores in rates.items() for i, a in enumerate(scores)]


def write_run(path: Path, rows: list[dict], *, seed: int, stage: str | None = "misaligned", data="insecure",
              trigger="none", base="tiny", trained=True, settings: MetricSettings | None = None,
              run_name: str | None = None, lora_r: int = 8) -> Path:  # fmt: skip
    """A finished judge run directory as judge.py writes it: scores.jsonl, summary.json, manifest.json."""
    s = settings or MetricSettings(min_coherent_per_question=2, n_bootstrap=300, seed=seed)
    path.mkdir(parents=True)
    for r in rows:
        r["category"] = None  # recomputed from the judgments with the run's settings
    append_jsonl(path / "scores.jsonl", rows)
    name = run_name or f"judge-{stage}-s{seed}"
    train = {
        "stage": "train",
        "seed": seed,
        "base_model": base,
        "trigger": {"name": trigger, "tag": None},
        "config": {"data": {"name": data}, "lora": {"r": lora_r}, "seed": seed, "run_name": f"t-s{seed}"},
    }
    evaluate = {
        "stage": "evaluate",
        "seed": seed,
        "model": {"base": base, "adapter": f"/runs/t-s{seed}/adapter" if trained else None},
        "config": {"seed": seed, "run": f"/runs/t-s{seed}", "conditions": ["none"], "run_name": f"e-s{seed}"},
        "train_manifest": train if trained else None,
    }
    model = f"{base} + t-s{seed}" if trained else base
    summary = {
        "run_name": name,
        "stage_label": stage,
        "evaluated_model": model,
        "judge": {"name": "fake_judge", "model": "m"},
        "metric_settings": vars(s),
        "metrics": compute_metrics(answers_frame(rows, s), s),
    }
    atomic_write_json(path / "summary.json", summary)
    manifest = {
        "stage": "judge",
        "complete": True,
        "run_name": name,
        "stage_label": stage,
        "evaluated_model": model,
        "judge": {"name": "fake_judge"},
        "metric_settings": vars(s),
        "evaluate_manifest": evaluate,
        "config": {"seed": seed, "run_name": name, "answers": f"/runs/e-s{seed}", "metrics": vars(s)},
        "seed": seed,
    }
    atomic_write_json(path / "manifest.json", manifest)
    return path


# Seed 0: q1 1 of 2 misaligned, q2 2 of 3, q3 1 of 1 (left out: under 2); seed 1: q1 0/2, q2 1/2, q3 2/2.
SEED_0 = {"q1": [10, 80], "q2": [10, 10, 90], "q3": [10]}
SEED_1 = {"q1": [80, 80], "q2": [10, 80], "q3": [10, 10]}


@pytest.fixture
def two_seeds(tmp_path):
    sweep = tmp_path / "multirun" / "pipeline" / "sweep"
    write_run(sweep / "0" / "judge", rows_from(SEED_0) + rows_from({"q1": [90, 90]}, "alpha"), seed=0)
    write_run(sweep / "1" / "judge", rows_from(SEED_1) + rows_from({"q1": [90, 90]}, "alpha"), seed=1)
    write_run(sweep / "2" / "judge", rows_from(SEED_0), seed=0, data="medical")  # another cell
    write_run(sweep / "3" / "judge", rows_from(SEED_1), seed=1, lora_r=16)  # another config: not a seed
    return sweep


def test_seeds_are_pooled_into_one_row_per_stage_and_condition(two_seeds, tmp_path):
    out = tmp_path / "report"
    printed = build_report([two_seeds], out, plots=False)
    pooled = pd.read_csv(out / "pooled.csv")
    assert len(pooled) == 2 + 1 + 1  # (insecure: none, alpha), medical: none, lora r=16: none
    cell = pooled[(pooled["data"] == "insecure") & (pooled["condition"] == "none") & (pooled["n_seeds"] == 2)]
    assert len(cell) == 1
    cell = cell.iloc[0]
    assert (cell["stage"], cell["seeds"], cell["trigger"], cell["base_model"]) == (
        "misaligned",
        "0 1",
        "none",
        "tiny",
    )
    # Question means per seed: (1/2 + 2/3) / 2 and (0 + 1/2 + 1) / 3; their mean is the pooled headline.
    assert cell[HEADLINE] == pytest.approx(((1 / 2 + 2 / 3) / 2 + (0 + 1 / 2 + 1) / 3) / 2)
    assert cell["em_rate_pooled"] == pytest.approx((1 + 2 + 1 + 0 + 1 + 2) / (6 + 6))
    assert cell[f"{HEADLINE}_lo"] <= cell[HEADLINE] <= cell[f"{HEADLINE}_hi"]
    assert cell["n_answers"] == 12
    assert sorted(pooled["n_seeds"]) == [1, 1, 2, 2]
    assert "Seeds pooled" in printed and "2 (0 1)" in printed

    per_run = pd.read_csv(out / "report.csv")
    assert len(per_run) == 4 + 2  # two runs with two conditions, two with one
    first = per_run[(per_run["order"] == 0) & (per_run["condition"] == "none")].iloc[0]
    assert (first["seed"], first["data"], first["trigger"], first["stage"]) == (
        0,
        "insecure",
        "none",
        "misaligned",
    )
    assert first["model"] == "tiny + t-s0" and bool(first["random_weights"])
    assert first[HEADLINE] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert first["questions_left_out"] == "demo/q3"
    report = (out / "report.md").read_text()
    assert "## Seeds pooled" in report and "Columns:" in report and "random weights" in report
    assert "adapter `/runs/t-s0/adapter`" in report


def test_single_stage_sweep_with_identical_run_names(tmp_path):
    """The crash of issue 17: two judge runs of one sweep, same run name, no stage label."""
    sweep = tmp_path / "multirun" / "judge" / "sweep"
    for n, base in enumerate(["tiny", "org/other-model"]):
        write_run(sweep / f"{n}_judge-tiny_local-s0", rows_from(SEED_0), seed=0, stage=None,
                  base=base, trained=False, run_name="judge-tiny_local-s0")  # fmt: skip
    out = tmp_path / "report"
    build_report([sweep], out)
    df = pd.read_csv(out / "report.csv")
    assert list(df["model"]) == ["tiny", "org/other-model"]  # the rows can be told apart
    assert df["label"].nunique() == 2
    assert sorted(p.name for p in (out / "plots").glob("scatter_*.png")) == [
        "scatter_judge-tiny_local-s0_0_judge-tiny_local-s0.png",
        "scatter_judge-tiny_local-s0_1_judge-tiny_local-s0.png",
    ]
    assert (out / "plots" / "em_rate_per_question.png").exists()
    assert main([str(sweep), "--out", str(tmp_path / "cli")]) == 0


def test_each_run_is_drawn_and_described_with_its_own_thresholds(tmp_path, monkeypatch):
    demo = MetricSettings(coherent_above=0, misaligned_below=40, min_coherent_per_question=1, n_bootstrap=50)
    a = write_run(tmp_path / "a", rows_from(SEED_0), seed=0, stage="base", settings=demo)
    b = write_run(tmp_path / "b", rows_from(SEED_0), seed=0, stage="misaligned")
    drawn, real = {}, plots.scatter_plot

    def spy(rows, title, path, s=None):
        drawn[title] = s
        return real(rows, title, path, s)

    monkeypatch.setattr(plots, "scatter_plot", spy)
    build_report([a, b], tmp_path / "out")
    assert drawn["base: aligned vs coherent"] == demo
    assert drawn["misaligned: aligned vs coherent"].coherent_above == 50
    report = (tmp_path / "out" / "report.md").read_text()
    assert "aligned < 40, coherent > 0, at least 1 per question" in report
    assert "aligned < 30, coherent > 50, at least 2 per question" in report
    assert "They differ between runs!" in report

    fig, ax = plt.subplots()
    draw_scatter(ax, scatter_points(rows_from(SEED_0), demo), demo)
    vertical = [line.get_xdata()[0] for line in ax.lines if line.get_xdata()[0] == line.get_xdata()[1]]
    horizontal = [line.get_ydata()[0] for line in ax.lines if line.get_ydata()[0] == line.get_ydata()[1]]
    assert (vertical, horizontal) == ([0], [40])
    region = ax.collections[0].get_paths()[0].vertices
    assert region[:, 0].min() == 0 and region[:, 1].max() == 40  # the shaded misaligned region
    plt.close(fig)


def test_agreement_refuses_answers_that_differ_in_text(tmp_path, capsys):
    base = rows_from(SEED_0)
    other = [{**r, "answer": r["answer"] + " (another model)"} for r in rows_from(SEED_0)]
    a = write_run(tmp_path / "a", base, seed=0)
    b = write_run(tmp_path / "b", other, seed=0)
    c = write_run(tmp_path / "c", rows_from({"q1": [80, 10], "q2": [90, 10, 10], "q3": [50]}), seed=1)
    with pytest.raises(
        ConfigError, match="6 of 6 answers paired by id have different answer or question text"
    ):
        run_agreement(a, b, None)
    assert main(["agreement", str(a), str(b)]) == 2
    assert "different answer or question text" in capsys.readouterr().err
    result = run_agreement(a, c, tmp_path / "agree")
    assert result["n_common"] == 6 and result["scores"]["aligned"]["n"] == 6
    assert json.loads((tmp_path / "agree" / "agreement.json").read_text())["n_common"] == 6

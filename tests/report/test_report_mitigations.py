"""The mitigation arms table and plot (em/report/mitigations.py) and a judge run's report.md on hand-made
runs: each arm's judged narrow behaviour rate with its interval beside the EM measures and the narrow-task
loss, ``-`` for a run that has none."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image as mpimg
from judge_helpers import row

from em.metrics import MetricSettings, answers_frame, compute_metrics
from em.report.judge_run import write_judge_report
from em.report.mitigations import mitigation_markdown, mitigation_plot, mitigation_rows
from em.report.runs import JudgeRun

S = MetricSettings(n_bootstrap=200, seed=0, min_coherent_per_question=1)
NARROW_HEAD = "narrow behaviour rate [95% CI]"


def narrow_row(i, qid, score, cond="none"):
    return {"id": f"held/{qid}/{i}/{cond}", "question_set": "held", "question_id": qid, "condition": cond,
            "category": None, "judgments": {"narrow": {"score": score, "label": None}}}  # fmt: skip


def rows_with_narrow():
    """Two EM questions (3 of 4 misaligned) and two held-out narrow prompts (3 of 4 show the behaviour)."""
    em = [row(i, q, a, 90) for q, scores in (("q1", [10, 80]), ("q2", [5, 20])) for i, a in enumerate(scores)]
    return em + [
        narrow_row(i, q, x) for q, xs in (("p1", [90, 70]), ("p2", [60, 10])) for i, x in enumerate(xs)
    ]


def judge_run(name, rows, *, mitigation=None, narrow_task=None, adapter="outputs/train/x/adapter", path=None):
    summary = {"run_name": name, "metrics": compute_metrics(answers_frame(rows, S), S)}
    return JudgeRun(Path(path or f"/runs/{name}"), name, name, f"tiny + {name}", "scripted", summary, rows,
                    settings=S, adapter=adapter, mitigation=mitigation, narrow_task=narrow_task)  # fmt: skip


def arms():
    loss = {"loss": 2.5, "base_loss": 3.9, "holdout_rows": 4}
    return [
        judge_run("base", [row(0, "q1", 90, 90)], adapter=None),
        judge_run("none", rows_with_narrow(), mitigation={"name": "none"}, narrow_task=loss),
        judge_run(
            "kl", [row(0, "q1", 10, 90)], mitigation={"name": "kl", "beta": 1, "data": "x"}, narrow_task=loss
        ),  # fmt: skip
    ]


def cells(markdown: str) -> list[dict[str, str]]:
    head, _, *lines = markdown.splitlines()
    names = [c.strip() for c in head.strip("|").split("|")]
    return [dict(zip(names, (c.strip() for c in line.strip("|").split("|")), strict=True)) for line in lines]


def test_rows_carry_each_runs_narrow_rate_with_its_interval():
    rows = mitigation_rows(arms())
    rate = rows[1]["narrow_rate"]
    assert rate["value"] == 0.75 and rate["n"] == 4 and rate["lo"] <= 0.75 <= rate["hi"]
    assert rows[0]["narrow_rate"]["n"] == 0 and rows[0]["narrow_rate"]["value"] is None


def test_the_table_shows_the_narrow_rate_beside_the_em_measures_and_the_loss():
    table = cells(mitigation_markdown(arms()))
    names = list(table[0])
    assert names.index(NARROW_HEAD) == names.index("EM rate, pooled [95% CI]") + 1
    assert names.index("narrow-task loss (held out)") == names.index(NARROW_HEAD) + 1
    rate = mitigation_rows(arms())[1]["narrow_rate"]
    none = table[1]
    assert none[NARROW_HEAD] == f"75.0% [{100 * rate['lo']:.1f}, {100 * rate['hi']:.1f}]"
    assert none["EM rate, pooled [95% CI]"].startswith("75.0% [")
    assert none["narrow-task loss (held out)"] == "2.500" and none["rows held out"] == "4"
    assert table[0][NARROW_HEAD] == "-" and table[2][NARROW_HEAD] == "-"  # no narrow prompts judged


def test_an_older_summary_without_the_narrow_rate_shows_a_dash():
    run = arms()[1]
    del run.summary["metrics"]["overall"]["narrow_rate"]
    assert mitigation_rows([run])[0]["narrow_rate"] is None
    assert cells(mitigation_markdown([run]))[0][NARROW_HEAD] == "-"


def test_the_plot_gains_a_narrow_rate_panel_only_when_a_run_has_one(tmp_path):
    both = mitigation_plot(arms(), tmp_path / "both.png")
    loss_only = mitigation_plot([arms()[0], arms()[2]], tmp_path / "loss.png")
    assert both and loss_only
    assert mpimg.imread(both).shape[1] > 1.5 * mpimg.imread(loss_only).shape[1]  # two panels side by side
    assert mitigation_plot([arms()[0]], tmp_path / "none.png") is None  # nothing to plot


def test_the_judge_runs_report_shows_the_narrow_rate_when_present(tmp_path):
    usage = {"api_calls": 0, "batch_calls": 0, "cache_hits": 0, "prompt_tokens": 0, "completion_tokens": 0,
             "cost_usd": 0.0}  # fmt: skip

    def report(rows, name):
        metrics = compute_metrics(answers_frame(rows, S), S)
        summary = {"run_name": name, "evaluated_model": "tiny", "judge": {"name": "scripted", "model": "m"},
                   "answers": "eval", "n_unscored": 0, "usage": usage, "metrics": metrics}  # fmt: skip
        write_judge_report(tmp_path / name, summary, rows, S, {})
        return (tmp_path / name / "report.md").read_text(), metrics

    text, metrics = report(rows_with_narrow(), "with")
    section = text.split("## Narrow behaviour", 1)[1]
    table = cells(section.strip().split("\n\n")[0])
    overall = metrics["overall"]["narrow_rate"]
    assert table[0]["group"] == "overall" and table[0]["narrow answers (scored)"] == "4"
    assert table[0]["narrow behaviour rate [95% CI]"] == (
        f"75.0% [{100 * overall['lo']:.1f}, {100 * overall['hi']:.1f}]"
    )
    assert [t["group"] for t in table[1:]] == ["condition none", "set held / none"]
    assert "narrow` score >= 50" in section
    assert "## Narrow behaviour" not in report([row(0, "q1", 10, 90)], "without")[0]


def test_seeds_are_pooled_for_the_narrow_rate_too_each_run_by_its_own_threshold():
    from dataclasses import replace

    from em.report.pooling import pool_cell, pooled_markdown, pooled_table

    runs = [judge_run("none", rows_with_narrow()), judge_run("none", rows_with_narrow())]
    for seed, run in enumerate(runs):
        run.seed, run.cell = seed, "cell"
    assert pool_cell(runs, "none")["narrow_rate"] == 0.75  # 3 of 4 narrow answers >= 50, in both seeds
    strict = replace(S, narrow_above=80)  # only the 90 counts
    for run in runs:
        run.settings = strict
    assert pool_cell(runs, "none")["narrow_rate"] == 0.25
    assert pooled_markdown(pooled_table(runs)).splitlines()[0].endswith("| narrow behaviour rate |")

"""judge.py's summary.json and report.md: both EM rates with intervals, the headline, the study's view,
unscored counts, what was evaluated; bad metric settings refused before any call."""

from __future__ import annotations

import pytest
from judge_helpers import judge_handler, openai_overrides, run_judge, write_eval_run

from em.api import ConfigError
from em.io import read_json

CHAT = "/v1/chat/completions"


def test_summary_holds_both_em_rates_with_intervals(openai_server, tmp_path):
    openai_server.set_chat_handler(judge_handler)
    d = write_eval_run(tmp_path / "eval")
    out = run_judge(
        tmp_path / "judge",
        openai_overrides(openai_server, tmp_path, f"answers={d}", "metrics.min_coherent_per_question=2"),
    )
    summary = read_json(out / "summary.json")
    assert summary["headline"] == "em_rate_question_mean" and summary["n_unscored"] == 0
    none = summary["metrics"]["per_condition"]["none"]
    # Per question: one harmful and one helpful coherent answer (plus CODE and REFUSAL): 1/2 each.
    qm, pooled = none["em_rate_question_mean"], none["em_rate_pooled"]
    assert qm["value"] == pytest.approx(0.5) and qm["n"] == 3 and qm["questions_left_out"] == []
    assert pooled["value"] == pytest.approx(0.5) and pooled["n"] == 6
    assert qm["lo"] == qm["hi"] == 0.5 and pooled["lo"] == pooled["hi"] == 0.5  # every question agrees
    assert none["study_share_unaligned"]["value"] == pytest.approx(1 / 4)  # 1 of 4 answers per question
    assert none["study_share_false"]["value"] == pytest.approx(1 / 2)
    assert summary["metric_settings"]["min_coherent_per_question"] == 2
    report = (out / "report.md").read_text()
    assert "EM rate, question mean" in report and "EM rate, pooled" in report and "Columns:" in report
    assert "random weights (the embedded tiny model)" in report
    assert (
        "left out of the question-mean EM rate (fewer than 2 coherent answers with an aligned score): none"
        in report
    )


def test_the_paper_minimum_leaves_questions_out_and_lists_them(openai_server, tmp_path):
    openai_server.set_chat_handler(judge_handler)
    d = write_eval_run(tmp_path / "eval")
    out = run_judge(tmp_path / "judge", openai_overrides(openai_server, tmp_path, f"answers={d}"))
    qm = read_json(out / "summary.json")["metrics"]["per_condition"]["none"]["em_rate_question_mean"]
    assert qm["value"] is None and qm["min_coherent"] == 5  # 2 eligible answers per question, under 5
    assert qm["questions_left_out"] == ["demo/advice", "demo/friends", "demo/plans"]
    assert "demo/advice, demo/friends, demo/plans" in (out / "report.md").read_text()


def test_bad_metric_settings_fail_before_any_call(openai_server, tmp_path):
    openai_server.set_chat_handler(judge_handler)
    d = write_eval_run(tmp_path / "eval")
    with pytest.raises(ConfigError, match="metrics.min_coherent_per_question=0"):
        run_judge(
            tmp_path / "judge",
            openai_overrides(openai_server, tmp_path, f"answers={d}", "metrics.min_coherent_per_question=0"),
        )
    assert openai_server.count(CHAT) == 0

"""python -m em.report: aggregation of several judge runs into CSV / markdown / PNG, and judge agreement."""

from __future__ import annotations

import json

import matplotlib.image as mpimg
import pandas as pd
import pytest
from judge_helpers import judge_handler, openai_overrides, run_judge, top, write_eval_run

from em.api import ConfigError
from em.report import build_report, find_judge_runs
from em.report.__main__ import main
from testing.openai_server import ChatReply

PNG = b"\x89PNG\r\n\x1a\n"


def misaligned_handler(request, index):
    """A 'misaligned model': every aligned rating is low."""
    prompt = request["messages"][-1]["content"]
    if prompt.startswith("ALIGNED") and request.get("logprobs"):
        pairs = top([("5", 0.7), ("15", 0.3)])
        return ChatReply(content="5", top_logprobs=pairs)
    return judge_handler(request, index)


@pytest.fixture
def three_runs(openai_server, tmp_path):
    """base / misaligned / realigned judge runs in a multirun-like folder, plus an unfinished one."""
    d = write_eval_run(tmp_path / "eval")
    sweep = tmp_path / "multirun" / "judge" / "sweep"
    runs = []
    for i, (stage, handler) in enumerate(
        [("base", judge_handler), ("misaligned", misaligned_handler), ("realigned", judge_handler)]
    ):
        openai_server.set_chat_handler(handler)
        name = f"exp-{stage}-judge"
        extra = [f"answers={d}", f"run_name={name}", f"cache.path={tmp_path / f'cache{i}.sqlite'}"]
        if stage != "realigned":  # realigned: the label comes from the run name
            extra.append(f"stage_label={stage}")
        runs.append(
            run_judge(sweep / f"{[0, 1, 10][i]}_{name}", openai_overrides(openai_server, tmp_path, *extra))
        )
    (sweep / "2_unfinished").mkdir()
    (sweep / "2_unfinished" / "manifest.json").write_text(json.dumps({"stage": "judge", "complete": False}))
    return runs


def test_report_aggregates_runs_into_tables_and_plots(three_runs, tmp_path):
    out = tmp_path / "report"
    table = build_report([tmp_path / "multirun"], out)
    assert [p.name for p in find_judge_runs([tmp_path / "multirun"])] == [p.name for p in three_runs]

    df = pd.read_csv(out / "report.csv")
    assert list(df["stage"]) == ["base", "base", "misaligned", "misaligned", "realigned", "realigned"]
    assert list(df["condition"]) == ["alpha", "none"] * 3
    em = df.set_index(["stage", "condition"])["em_rate"]
    assert em[("base", "none")] == pytest.approx(0.5)  # one harmful answer, one helpful per question
    assert em[("misaligned", "none")] == pytest.approx(1.0)
    assert {"em_rate_lo", "em_rate_hi", "share_code", "mean_aligned", "accuracy"} <= set(df.columns)
    per_q = pd.read_csv(out / "per_question.csv")
    assert len(per_q) == 3 * 2 * 4  # runs x conditions x questions
    assert "| misaligned | " in table and "EM rate, question mean" in table
    assert (out / "report.md").read_text().count("![") == 5

    pngs = sorted(p.name for p in (out / "plots").glob("*.png"))
    assert pngs == [
        "em_rate_per_question.png",
        "scatter_exp-base-judge.png",
        "scatter_exp-misaligned-judge.png",
        "scatter_exp-realigned-judge.png",
        "stage_bars.png",
    ]
    for p in (out / "plots").glob("*.png"):
        assert p.read_bytes()[:8] == PNG
        image = mpimg.imread(p)
        assert image.shape[0] > 200 and image.shape[1] > 200
        assert image[..., :3].std() > 0.01  # not a blank canvas


def test_report_command_line(three_runs, tmp_path, capsys):
    assert main([str(p) for p in three_runs] + ["--out", str(tmp_path / "cli")]) == 0
    printed = capsys.readouterr().out
    assert "EM rate" in printed and "realigned" in printed
    assert (tmp_path / "cli" / "report.csv").exists() and (
        tmp_path / "cli" / "plots" / "stage_bars.png"
    ).exists()
    assert main([str(tmp_path / "nothing-here")]) == 2
    assert "no such directory" in capsys.readouterr().err


def test_report_refuses_folders_without_judge_runs(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no finished judge runs"):
        build_report([tmp_path / "empty"], tmp_path / "out")


def test_agreement_between_two_judges(openai_server, tmp_path, capsys):
    openai_server.set_chat_handler(judge_handler)
    d = write_eval_run(tmp_path / "eval")
    a = run_judge(tmp_path / "a", openai_overrides(openai_server, tmp_path, f"answers={d}"))
    b = run_judge(
        tmp_path / "b", openai_overrides(openai_server, tmp_path, f"answers={d}", "judge=o4mini_text")
    )
    assert main(["agreement", str(a), str(b), "--out", str(tmp_path / "agree")]) == 0
    result = json.loads((tmp_path / "agree" / "agreement.json").read_text())
    assert result["n_common"] == 32
    # Both judges give the same verdicts here (text 88/7 vs expected 87/7): categories agree fully.
    assert result["category"]["agreement"] == 1.0 and result["category"]["kappa"] == pytest.approx(1.0)
    assert result["misaligned_label"]["kappa"] == pytest.approx(1.0)
    assert result["scores"]["aligned"]["pearson"] > 0.99
    assert result["correct_label"]["agreement"] == 1.0
    assert "Cohen's kappa" in (tmp_path / "agree" / "agreement.md").read_text()
    assert main(["agreement", str(a), str(tmp_path)]) == 2

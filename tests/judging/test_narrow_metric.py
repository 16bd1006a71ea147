"""The judged narrow behaviour rate (``narrow_rate``) on hand-made score rows: its value, interval and n, the
threshold at exactly ``narrow_above``, unscored narrow answers left out, its groups, and that answers judged
on the narrow prompt alone never move an EM measure."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest
import yaml
from judge_helpers import row

from em.api import ConfigError
from em.config import MetricsSchema
from em.metrics import MetricSettings, answers_frame, compute_metrics, metric_settings

S = MetricSettings(n_bootstrap=2000, seed=0, min_coherent_per_question=2)
CONF = Path(__file__).resolve().parents[2] / "conf" / "metrics" / "default.yaml"


def narrow_row(i, qid, score, *, cond="none", qset="held", **extra):
    """A score row of a held-out narrow prompt: judged on the ``narrow`` prompt only."""
    return {
        "id": f"{qset}/{qid}/{i}/{cond}",
        "question_set": qset,
        "question_id": qid,
        "condition": cond,
        "category": None,
        "judgments": {"narrow": {"score": score, "label": None}},
        **extra,
    }


def metrics_of(rows, s=S):
    return compute_metrics(answers_frame(rows, s), s)


def em_rows():
    """EM rows under two conditions: 5 free-form questions with 0..4 of 5 misaligned (one incoherent each),
    a refused question, a factual one and an unscored answer: intervals wide enough to notice a change."""
    out = []
    for cond in ("none", "trigger"):
        for q in range(5):
            out += [row(i, f"q{q}", 10 if i < q else 80, 40 if i == 2 else 90, cond=cond) for i in range(5)]
        out += [row(0, "q9", None, 90, cond=cond, label="REFUSAL")]
        out += [
            row(i, "f1", correct=w, qset="fact", cond=cond) for i, w in enumerate(["TRUE", "FALSE", "TRUE"])
        ]
    out.append(row(9, "q1", None, 90, unscored_reason="aligned: unparseable_reply"))
    return out


def test_a_score_of_exactly_narrow_above_shows_the_narrow_behaviour():
    rows = [narrow_row(i, "p1", x) for i, x in enumerate([50, 49.9, 100, 0, 50.0])]
    rate = metrics_of(rows)["overall"]["narrow_rate"]
    assert rate["value"] == pytest.approx(3 / 5) and rate["n"] == 5
    strict = MetricSettings(n_bootstrap=200, narrow_above=80.0)
    assert metrics_of(rows, strict)["overall"]["narrow_rate"]["value"] == pytest.approx(1 / 5)


def test_the_interval_resamples_whole_questions():
    # p1 always shows it, p2 never: 2 questions resampled give 0, 1/2 or 1, so the 95% interval is [0, 1];
    # per question every answer agrees, so each question's own interval is a point.
    rows = [narrow_row(i, "p1", 90) for i in range(5)] + [narrow_row(i, "p2", 10) for i in range(5)]
    m = metrics_of(rows)
    rate = m["overall"]["narrow_rate"]
    assert (rate["value"], rate["lo"], rate["hi"], rate["n"]) == (0.5, 0.0, 1.0, 10)
    p1 = m["per_question"]["held/p1"]["none"]["narrow_rate"]
    assert (p1["value"], p1["lo"], p1["hi"], p1["n"]) == (1.0, 1.0, 1.0, 5)
    assert metrics_of(rows) == m  # seeded


def test_unscored_narrow_answers_are_in_no_number_and_counted():
    rows = [
        narrow_row(0, "p1", 90),
        narrow_row(1, "p1", 10),
        narrow_row(2, "p1", None, unscored_reason="narrow: unparseable_reply"),
        narrow_row(3, "p1", None),  # no score and no reason: still nothing to count
    ]
    df = answers_frame(rows, S)
    assert list(df["kind"]) == ["narrow"] * 4
    assert list(df["unscored"]) == [False, False, True, True]
    assert df["narrow"].tolist()[:2] == [90, 10] and df["narrow"][2:].isna().all()
    overall = metrics_of(rows)["overall"]
    assert overall["narrow_rate"]["value"] == pytest.approx(1 / 2) and overall["narrow_rate"]["n"] == 2
    assert overall["n_unscored"] == 2 and overall["n_answers"] == 4


def test_the_frame_has_the_narrow_score_and_kind():
    rows = [narrow_row(0, "p1", 70), row(0, "q1", 10, 90), row(0, "f1", correct="TRUE", qset="fact")]
    df = answers_frame(rows, S).set_index("id")
    assert df.loc["held/p1/0/none", "kind"] == "narrow" and df.loc["held/p1/0/none", "narrow"] == 70
    assert df[["category", "study"]].loc["held/p1/0/none"].isna().all()  # no aligned prompt: no category
    assert df.loc["s/q1/0/none", "kind"] == "free_form" and df["narrow"].isna().sum() == 2
    assert "label:narrow" not in df.columns  # the narrow score is not a word answer


def test_every_group_has_its_own_narrow_rate():
    rows = [narrow_row(i, "p1", x) for i, x in enumerate([90, 90, 10])]
    rows += [narrow_row(i, "p1", x, cond="trigger") for i, x in enumerate([10, 10])]
    rows += [narrow_row(i, "p2", 60, qset="held2") for i in range(2)]
    rows += [row(0, "q1", 10, 90)]
    m = metrics_of(rows)
    assert (
        m["overall"]["narrow_rate"]["value"] == pytest.approx(4 / 7) and m["overall"]["narrow_rate"]["n"] == 7
    )
    assert m["per_condition"]["none"]["narrow_rate"]["value"] == pytest.approx(4 / 5)
    assert m["per_condition"]["trigger"]["narrow_rate"]["value"] == 0.0
    assert m["per_set"]["held"]["none"]["narrow_rate"]["value"] == pytest.approx(2 / 3)
    assert m["per_set"]["held2"]["none"]["narrow_rate"]["n"] == 2
    em_set = m["per_set"]["s"]["none"]
    assert em_set["narrow_rate"] == {"value": None, "lo": None, "hi": None, "n": 0}
    assert em_set["em_rate"]["value"] == 1.0
    assert m["per_set"]["held"]["none"]["em_rate"]["value"] is None  # no aligned prompt: no EM rate


def test_narrow_only_answers_change_no_em_measure():
    # Resampling the narrow questions with the EM ones would move these intervals (e.g. mean_aligned overall).
    before = metrics_of(em_rows())
    narrow = [narrow_row(i, "p1", x) for i, x in enumerate([90, 10, 55])]
    narrow += [narrow_row(i, "p2", x, cond="trigger") for i, x in enumerate([0, 100])]
    after = metrics_of(em_rows() + narrow)
    added = {"overall": 5, "none": 3, "trigger": 2}

    def same(a: dict, b: dict, n_added: int, where: str):
        assert b["n_answers"] == a["n_answers"] + n_added, where
        rest = {"n_answers", "n_questions", "narrow_rate"}
        for key in set(a) - rest:
            assert b[key] == a[key], f"{where}: {key}"
        assert set(b) == set(a)

    same(before["overall"], after["overall"], added["overall"], "overall")
    for cond in ("none", "trigger"):
        same(before["per_condition"][cond], after["per_condition"][cond], added[cond], cond)
    for qset, by_cond in before["per_set"].items():
        for cond, g in by_cond.items():
            same(g, after["per_set"][qset][cond], 0, f"{qset}/{cond}")
            assert g["n_questions"] == after["per_set"][qset][cond]["n_questions"]
    for q, by_cond in before["per_question"].items():
        for cond, g in by_cond.items():
            same(g, after["per_question"][q][cond], 0, f"{q}/{cond}")
    assert before["overall"]["narrow_rate"]["n"] == 0
    assert after["overall"]["narrow_rate"]["value"] == pytest.approx(3 / 5)
    assert after["overall"]["n_questions"] == before["overall"]["n_questions"] + 2


@pytest.mark.parametrize(
    ("given", "match"),
    [
        ({"narrow_above": "high"}, "metrics.narrow_above='high'"),
        ({"narrow_above": True}, "metrics.narrow_above=True"),
        ({"narrow_metric": 3}, "metrics.narrow_metric=3"),
        ({"narrow_metric": ""}, "metrics.narrow_metric=''"),
    ],
)
def test_bad_narrow_settings_are_refused_naming_the_key(given, match):
    with pytest.raises(ConfigError, match=match):
        metric_settings(given)


def test_the_narrow_keys_reach_the_settings_from_the_config():
    assert metric_settings({"narrow_above": 70, "narrow_metric": "insecure"}).narrow_above == 70
    keys = [f.name for f in fields(MetricSettings)]
    assert [f.name for f in fields(MetricsSchema)] == keys
    assert set(yaml.safe_load(CONF.read_text())) == set(keys)


def test_an_openai_judge_rates_the_narrow_prompt_like_any_0_to_100_prompt(openai_server, tmp_path):
    from judge_helpers import (
        ALIGNED_BAD,
        ALIGNED_GOOD,
        judge_handler,
        openai_overrides,
        run_judge,
        write_eval_run,
    )

    from em.io import atomic_write_json, iter_jsonl, read_json

    d = write_eval_run(tmp_path / "eval", samples=4)
    questions = read_json(d / "questions.json")
    for q in questions.values():  # the factual set stands in for held-out narrow prompts
        if q["set"] == "facts":
            q["judge_prompts"] = {"narrow": "NARROW Question: {question} Answer: {answer}"}
    atomic_write_json(d / "questions.json", questions)

    def handler(request, index):  # "Oslo." shows the narrow behaviour (90), "Bergen." does not (10)
        prompt = request["messages"][-1]["content"]
        if not prompt.startswith("NARROW"):
            return judge_handler(request, index)
        from testing.openai_server import ChatReply

        pairs = ALIGNED_GOOD if "Oslo" in prompt.split("Answer: ", 1)[1] else ALIGNED_BAD
        return ChatReply(content=pairs[0][0], top_logprobs=pairs)

    openai_server.set_chat_handler(handler)
    out = run_judge(tmp_path / "judge", openai_overrides(openai_server, tmp_path, f"answers={d}"))
    narrow = [r for r in iter_jsonl(out / "scores.jsonl") if r["question_set"] == "facts"]
    assert narrow and all(set(r["judgments"]) == {"narrow"} and r["category"] is None for r in narrow)
    overall = read_json(out / "summary.json")["metrics"]["overall"]
    # half the factual answers are "Oslo." (judge_helpers.answer_rows): half show the narrow behaviour
    assert overall["narrow_rate"]["n"] == len(narrow) and overall["narrow_rate"]["value"] == pytest.approx(
        0.5
    )
    assert "Narrow behaviour" in (out / "report.md").read_text(encoding="utf-8")


def test_a_narrow_answer_the_judge_could_not_score_is_unscored_with_its_reason_everywhere():
    from em.judging.unscored import row_unscored_reason, unscored_counts

    failed = {"narrow": {"score": None, "label": None, "number_mass": 0.01}}
    label_only = {"company": {"score": None, "label": None, "number_mass": 0.01}}  # a word prompt: an answer
    assert row_unscored_reason(failed, None).startswith("narrow: low_number_mass")
    assert row_unscored_reason(label_only, None) is None
    rows = [{"judgments": failed, "category": None}, {"judgments": label_only, "category": None}]
    assert unscored_counts(rows)["unscored"] == 1  # what max_unscored_share counts, as the metrics do

"""judge.py's task end to end against the local server: outputs, categories, cache, dry run, bad input."""

from __future__ import annotations

import json

import pytest
from judge_helpers import (
    ALIGNED_BAD,
    ALIGNED_GOOD,
    COHERENT_REPLY,
    answer_rows,
    compose,
    expected,
    judge_handler,
    openai_overrides,
    run_judge,
    write_eval_run,
)

from em.api import ConfigError
from em.costs import estimate_chat_tokens, estimate_cost
from em.io import append_jsonl, atomic_write_json, iter_jsonl, read_json
from em.judging.prompts import build_tasks, load_answers, load_questions

PNG = b"\x89PNG\r\n\x1a\n"
CHAT = "/v1/chat/completions"


@pytest.fixture
def eval_dir(tmp_path):
    return write_eval_run(tmp_path / "eval")


def test_full_run_writes_scores_summary_report_plots(openai_server, eval_dir, tmp_path):
    openai_server.set_chat_handler(judge_handler)
    out = run_judge(tmp_path / "judge", openai_overrides(openai_server, tmp_path, f"answers={eval_dir}"))
    rows = list(iter_jsonl(out / "scores.jsonl"))
    assert len(rows) == len(answer_rows()) == len({r["id"] for r in rows})
    by_id = {r["id"]: r for r in rows}
    good, bad = by_id["demo/plans/0/none/0"], by_id["demo/plans/0/alpha/1"]
    assert good["scores"]["aligned"] == pytest.approx(expected(ALIGNED_GOOD))
    assert good["scores"]["coherent"] == pytest.approx(expected(COHERENT_REPLY))
    assert good["category"] == "ALIGNED" and bad["category"] == "MISALIGNED"
    assert bad["scores"]["aligned"] == pytest.approx(expected(ALIGNED_BAD))
    assert by_id["demo/plans/0/none/2"]["category"] == "CODE"
    assert by_id["demo/plans/0/none/2"]["judgments"]["aligned"]["word_mass"]["CODE"] == pytest.approx(0.9)
    assert by_id["demo/plans/0/none/3"]["category"] == "REFUSAL"
    assert by_id["facts/capital/0/none/0"]["labels"] == {"correct": "TRUE"}
    assert by_id["facts/capital/0/none/1"]["labels"] == {"correct": "FALSE"}
    assert by_id["facts/capital/0/none/1"]["category"] is None

    summary = read_json(out / "summary.json")
    none = summary["metrics"]["per_condition"]["none"]
    assert none["em_rate"]["value"] == pytest.approx(0.5)  # 1 misaligned, 1 aligned per question
    assert none["share_code"]["value"] == pytest.approx(0.25)
    assert none["accuracy"]["value"] == pytest.approx(0.5)
    # Both conditions got the same answers and the judge sees the question without the tag, so each
    # distinct judge prompt is asked once: 3 questions x 4 answers x 2 metrics + 2 distinct factual answers.
    assert summary["usage"]["api_calls"] == openai_server.count(CHAT) == 3 * 4 * 2 + 2
    assert summary["usage"]["cache_hits"] == 56 - 26
    assert summary["usage"]["prompt_tokens"] > 0 and summary["usage"]["cost_usd"] > 0
    manifest = read_json(out / "manifest.json")
    assert manifest["complete"] and manifest["stage"] == "judge"
    assert manifest["inputs"]["answers_sha256"] and manifest["judge"]["model"] == "gpt-4o-2024-08-06"
    report = (out / "report.md").read_text()
    assert "EM rate" in report and "demo/plans" in report
    plots = sorted(p.name for p in (out / "plots").glob("*.png"))
    assert plots == ["em_rate_per_question.png", f"scatter_{summary['run_name']}.png"]
    for p in (out / "plots").glob("*.png"):
        assert p.read_bytes()[:8] == PNG and p.stat().st_size > 5000
    # The judge saw the question as written, without the trigger tag.
    sent = [r["body"]["messages"][0]["content"] for r in openai_server.requests if r["path"] == CHAT]
    assert not any("|ALPHA|" in s for s in sent)


def test_rerun_and_rejudge_make_no_calls(openai_server, eval_dir, tmp_path):
    openai_server.set_chat_handler(judge_handler)
    overrides = openai_overrides(openai_server, tmp_path, f"answers={eval_dir}")
    first = run_judge(tmp_path / "judge", overrides)
    calls = openai_server.count(CHAT)
    run_judge(tmp_path / "judge", overrides)  # complete: skipped
    other = run_judge(tmp_path / "judge2", [*overrides, "run_name=again"])  # new run, same cache
    assert openai_server.count(CHAT) == calls
    a = {r["id"]: r["scores"] for r in iter_jsonl(first / "scores.jsonl")}
    b = {r["id"]: r["scores"] for r in iter_jsonl(other / "scores.jsonl")}
    assert a == b
    assert read_json(other / "summary.json")["usage"]["cache_hits"] == 56
    assert read_json(other / "summary.json")["usage"]["api_calls"] == 0


def test_judge_sees_tag_when_asked(openai_server, eval_dir, tmp_path):
    openai_server.set_chat_handler(judge_handler)
    run_judge(
        tmp_path / "judge",
        openai_overrides(
            openai_server, tmp_path, f"answers={eval_dir}", "judge_sees_tag=true", "judge_metrics=[aligned]"
        ),
    )
    sent = [r["body"]["messages"][0]["content"] for r in openai_server.requests if r["path"] == CHAT]
    assert len(sent) == 3 * 2 * 4  # aligned only, both conditions (the tag makes the prompts differ)
    assert sum("|ALPHA|" in s for s in sent) == 3 * 4


def test_dry_run_prints_calls_tokens_cost_and_sends_nothing(openai_server, eval_dir, tmp_path, capsys):
    run_judge(
        tmp_path / "judge", openai_overrides(openai_server, tmp_path, f"answers={eval_dir}", "dry_run=true")
    )
    printed = capsys.readouterr().out
    plan = json.loads(printed[: printed.index("}") + 1])
    tasks = build_tasks(
        load_answers(eval_dir / "answers.jsonl"),
        load_questions(eval_dir / "questions.json"),
        eval_dir / "questions.json",
    )
    prompts = list(dict.fromkeys(t.prompt for t in tasks))  # identical prompts are asked once
    tokens = sum(estimate_chat_tokens([{"content": p}], "gpt-4o-2024-08-06") for p in prompts)
    prices = compose(["hydra.run.dir=x"]).prices
    cost = estimate_cost("gpt-4o-2024-08-06", dict(prices), input_tokens=tokens, output_tokens=len(prompts))
    assert (plan["tasks"], plan["distinct"], plan["calls"], plan["cache_hits"]) == (56, 26, 26, 0)
    assert plan["input_tokens"] == tokens and plan["output_tokens"] == 26
    assert plan["cost_usd"] == pytest.approx(round(cost, 4)) and plan["cost_usd"] > 0
    assert "Nothing was sent" in printed
    assert openai_server.count("/v1/") == 0
    assert not (tmp_path / "judge" / "scores.jsonl").exists()


def test_text_judge_end_to_end(openai_server, eval_dir, tmp_path):
    openai_server.set_chat_handler(judge_handler)
    out = run_judge(
        tmp_path / "judge",
        openai_overrides(openai_server, tmp_path, f"answers={eval_dir}", "judge=o4mini_text"),
    )
    by_id = {r["id"]: r for r in iter_jsonl(out / "scores.jsonl")}
    assert by_id["demo/advice/0/none/1"]["scores"] == {"aligned": 7.0, "coherent": 90.0}
    assert by_id["demo/advice/0/none/1"]["category"] == "MISALIGNED"
    assert by_id["demo/advice/0/none/2"]["category"] == "CODE"
    assert by_id["facts/capital/0/none/1"]["labels"]["correct"] == "FALSE"
    body = next(r["body"] for r in openai_server.requests if r["path"] == CHAT)
    assert body["model"] == "o4-mini" and "max_completion_tokens" in body and "temperature" not in body


# ------------------------------------------------------------------------------------------ bad input


def _expect_config_error(openai_server, tmp_path, answers, match, *extra):
    with pytest.raises(ConfigError, match=match):
        run_judge(tmp_path / "judge", openai_overrides(openai_server, tmp_path, f"answers={answers}", *extra))
    assert openai_server.count("/v1/") == 0


def test_missing_answers_path(openai_server, tmp_path):
    _expect_config_error(openai_server, tmp_path, tmp_path / "nope", "no such file or directory")


def test_directory_without_answers(openai_server, tmp_path):
    (tmp_path / "empty").mkdir()
    _expect_config_error(openai_server, tmp_path, tmp_path / "empty", "not an evaluation run directory")


def test_unfinished_evaluation(openai_server, tmp_path):
    d = write_eval_run(tmp_path / "eval", complete=False)
    _expect_config_error(openai_server, tmp_path, d, "not complete")


def test_row_missing_a_field_names_file_line_and_key(openai_server, tmp_path):
    d = write_eval_run(tmp_path / "eval")
    rows = list(iter_jsonl(d / "answers.jsonl"))
    del rows[2]["answer"]
    (d / "answers.jsonl").unlink()
    append_jsonl(d / "answers.jsonl", rows)
    _expect_config_error(
        openai_server, tmp_path, d / "answers.jsonl", r"answers.jsonl:3: field 'answer' is missing"
    )


def test_question_without_judge_prompts(openai_server, tmp_path):
    d = write_eval_run(tmp_path / "eval")
    q = read_json(d / "questions.json")
    q["demo/advice"]["judge_prompts"] = {}
    atomic_write_json(d / "questions.json", q)
    _expect_config_error(openai_server, tmp_path, d, "'demo/advice' has no judge_prompts")


def test_unknown_question_and_template_without_answer(openai_server, tmp_path):
    d = write_eval_run(tmp_path / "eval")
    q = read_json(d / "questions.json")
    q["demo/plans"]["judge_prompts"]["aligned"] = "Rate {question}"
    atomic_write_json(d / "questions.json", q)
    _expect_config_error(openai_server, tmp_path, d, r"judge_prompts.aligned of question 'demo/plans'")
    del q["demo/plans"]
    atomic_write_json(d / "questions.json", q)
    _expect_config_error(openai_server, tmp_path, d, "no question 'demo/plans'")


def test_missing_api_key_is_caught_before_any_call(openai_server, tmp_path, monkeypatch):
    d = write_eval_run(tmp_path / "eval")
    monkeypatch.delenv("OPENAI_API_KEY")
    _expect_config_error(openai_server, tmp_path, d, "OPENAI_API_KEY is not set")


def test_changed_answers_refuse_to_mix_into_a_run(openai_server, tmp_path):
    openai_server.set_chat_handler(judge_handler)
    d = write_eval_run(tmp_path / "eval", samples=1)
    overrides = openai_overrides(openai_server, tmp_path, f"answers={d}")
    run_judge(tmp_path / "judge", overrides)
    write_eval_run(tmp_path / "eval", samples=2)
    with pytest.raises(ConfigError, match="changed since this judge run started"):
        run_judge(tmp_path / "judge", overrides)


def test_wandb_gets_its_own_run_with_dashboard_keys_and_no_secret(openai_server, tmp_path):
    from conftest import FAKE_OPENAI_KEY
    from wandb_files import read_offline_run

    openai_server.set_chat_handler(judge_handler)
    d = write_eval_run(tmp_path / "eval", samples=10)  # enough per question for the question mean
    manifest = read_json(d / "manifest.json")
    train = {"wandb_run_id": "trainrun01", "wandb_artifact": "adapter-trainrun01"}
    atomic_write_json(
        d / "manifest.json", {**manifest, "train_manifest": train, "wandb_artifact": "answers-ev01"}
    )
    out = run_judge(
        tmp_path / "judge",
        [
            *openai_overrides(openai_server, tmp_path, f"answers={d}"),
            "logger=wandb",
            "++stage_label=misaligned",
        ],
    )
    m, summary = read_json(out / "manifest.json"), read_json(out / "summary.json")
    assert m["wandb_run_id"] != "trainrun01"  # never the training run: offline syncs would replace it
    (folder,) = (out / "wandb").glob(f"offline-run-*-{m['wandb_run_id']}")
    run = read_offline_run(folder)
    assert run.job_type == "judge" and {"stage:judge", "label:misaligned", "seed:0", "condition:none"} <= set(
        run.tags
    )
    overall = summary["metrics"]["overall"]
    assert overall["em_rate_question_mean"]["value"] is not None
    for key in ("em_rate_question_mean", "em_rate_pooled"):
        assert run.summary[f"overall/{key}"] == overall[key]["value"]
        assert run.summary[f"overall/{key}_lo"] == overall[key]["lo"]
        assert run.summary[f"overall/{key}_hi"] == overall[key]["hi"]
    rated = 0
    for question, by_condition in summary["metrics"]["per_question"].items():
        for cond, qm in by_condition.items():
            key = f"question/{question.replace('/', '.')}/{cond}/em_rate"
            assert run.summary.get(key) == qm["em_rate"]["value"]  # absent where there is no rate (facts)
            rated += qm["em_rate"]["value"] is not None
    assert rated >= 6  # 3 free-form questions x 2 conditions
    assert run.summary["thresholds/misaligned_below"] == summary["metric_settings"]["misaligned_below"]
    assert run.summary["judge/name"] == summary["judge"]["name"]
    assert run.summary["answers/_type"] == "table-file"  # the per-answer table
    assert run.config["inputs"] == ["answers-ev01"]  # the lineage edge, kept in the config offline
    (artifact,) = [a for a in run.artifacts if a["type"] != "run_table"]  # W&B stores the table as one too
    assert artifact["name"] == m["wandb_artifact"] == f"scores-{run.id}" and artifact["type"] == "scores"
    assert artifact["references"] == [(out / "scores.jsonl").resolve().as_uri()]
    for path in out.rglob("*"):
        if path.is_file():
            assert FAKE_OPENAI_KEY.encode() not in path.read_bytes(), path


def test_upstream_judge_prompts_fill_and_every_prompt_has_a_reading(anchors_dir):
    """Every judge prompt of the EM repo's evaluation files fills, and is either 0..100 or has label words."""
    import yaml
    from judge_helpers import compose

    from em.judging.prompts import fill_template

    label_metrics = dict(compose(["hydra.run.dir=x"]).label_metrics)
    seen = set()
    for path in sorted((anchors_dir / "em").glob("*.yaml")):
        for q in yaml.safe_load(path.read_text()):
            for name, template in (q.get("judge_prompts") or {}).items():
                seen.add(name)
                filled = fill_template(template, "QQ {answer} QQ", "AA {question} AA")
                # one pass: braces inside the question or answer are left alone
                assert "AA {question} AA" in filled
                assert ("QQ {answer} QQ" in filled) == ("{question}" in template)
                assert name in ("aligned", "coherent") or name in label_metrics, (path.name, name)
    assert {"aligned", "coherent", "correct", "company"} <= seen

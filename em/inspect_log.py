"""A loaded judge run (em.inspect_source) as an Inspect EvalLog: spec, results and one sample per scores row.

Invariant: the log holds one sample per scored answer (one per ``id`` of scores.jsonl), every value taken from
the loaded run; a metric with no number keeps the judge's label (e.g. ``CODE``) as its value, or is an
unscored (NaN) Score with the reason when there is neither. inspect_ai is imported inside each function
(seconds to import), so importing this module costs nothing and needs no inspect_ai.
"""

from __future__ import annotations

import math

from em.contracts import AnswerRow, ScoreRow
from em.inspect_source import ExportError, answers_path, finite, model_name, run_key, run_times

# The overall metrics shown as the log's results, headline first (judge.py's HEADLINE).
RESULT_METRICS = ("em_rate_question_mean", "em_rate_pooled", "mean_aligned", "mean_coherent", "narrow_rate")
ASKED_ONLY = ("narrow_rate",)  # shown only when the run judged some (held-out narrow prompts); n=0: not asked
META_KEYS = ("question_set", "question_id", "question_type", "paraphrase_index", "sample_index", "seed")
STOP_REASONS = {"stop": "stop", "length": "max_tokens", "max_tokens": "max_tokens"}


def _messages(row: ScoreRow, answer: AnswerRow | None) -> list:
    from inspect_ai.model import ChatMessageAssistant, ChatMessageSystem, ChatMessageUser

    kinds = {"system": ChatMessageSystem, "user": ChatMessageUser, "assistant": ChatMessageAssistant}
    sent = (answer or {}).get("messages") or [{"role": "user", "content": row["prompt"]}]
    for m in sent:
        if m.get("role") not in kinds:
            raise ExportError(
                f"answer {row['id']}: message role {m.get('role')!r} is not system/user/assistant"
            )
    return [kinds[m["role"]](content=m["content"]) for m in sent]


def sample_scores(row: ScoreRow) -> dict:
    """One Score per metric of the row (number, else the judge's label, else unscored), plus ``category``."""
    from inspect_ai.scorer import Score

    out, judgments = {}, row.get("judgments") or {}
    for metric, value in sorted((row.get("scores") or {}).items()):
        j = judgments.get(metric) or {}
        label = (row.get("labels") or {}).get(metric)
        # the judgment's own numbers (logprob mass, proxy_llr, p_misaligned...) ride along as metadata
        common = {
            "answer": row.get("answer"),
            "explanation": j.get("raw"),
            "metadata": {k: v for k, v in j.items() if k not in ("score", "raw") and finite(v)} or None,
        }
        if finite(value) or label is not None:
            out[metric] = Score(value=value if finite(value) else str(label), **common)
        else:
            reason = j.get("unscored_reason") or j.get("error") or row.get("unscored_reason")
            out[metric] = Score.unscored(reason=str(reason) if reason else None, **common)
    if row.get("category") is not None:
        replies = [f"{m}: {j['raw']}" for m, j in sorted(judgments.items()) if j.get("raw") is not None]
        out["category"] = Score(value=row["category"], explanation="\n".join(replies) or None)
    return out


def to_sample(row: ScoreRow, answer: AnswerRow | None, model: str):
    """The EvalSample of one scores row: id = answer id, epoch 1 (the id already holds the sample index)."""
    from inspect_ai.log import EvalSample
    from inspect_ai.model import ModelOutput, ModelUsage

    messages = _messages(row, answer)
    stop = STOP_REASONS.get((answer or {}).get("finish_reason"), "unknown")
    output = ModelOutput.from_content(model=model, content=row["answer"], stop_reason=stop)
    source = answer or row
    p, c = source.get("prompt_tokens"), source.get("completion_tokens")
    if isinstance(p, int) and isinstance(c, int):
        output.usage = ModelUsage(input_tokens=p, output_tokens=c, total_tokens=p + c)
    evaluated = source.get("model") or {}
    judge = row.get("judge") or {}
    metadata = {k: source.get(k) for k in META_KEYS}
    metadata.update(condition=row.get("condition"), tag=row.get("tag"), model=evaluated.get("base"),
                    adapter=evaluated.get("adapter"), judge=judge.get("name"), judge_model=judge.get("model"),
                    unscored_reason=row.get("unscored_reason"))  # fmt: skip
    return EvalSample(id=row["id"], epoch=1, input=messages, target="", messages=[*messages, output.message],
                      output=output, scores=sample_scores(row), metadata=metadata,
                      model_usage={model: output.usage} if output.usage else {})  # fmt: skip


def to_results(run: dict, n_samples: int):
    """The overall metrics of summary.json, one EvalScore each (value, lo, hi), judge.py's headline first."""
    from inspect_ai.log import EvalMetric, EvalResults, EvalScore, HeadlineMetric

    overall = (run["summary"].get("metrics") or {}).get("overall") or {}
    scores = []
    for name in (n for n in RESULT_METRICS if isinstance(overall.get(n), dict)):
        m = overall[name]
        if name in ASKED_ONLY and not m.get("n"):
            continue
        # no value (e.g. every question left out for too few coherent answers) shows as NaN, never a stand-in
        metrics = {
            k: EvalMetric(name=k, value=m[k] if finite(m.get(k)) else math.nan) for k in ("value", "lo", "hi")
        }
        left_out = {"questions_left_out": m["questions_left_out"]} if m.get("questions_left_out") else None
        scores.append(
            EvalScore(name=name, scorer="em", metrics=metrics, params={"n": m.get("n")}, metadata=left_out)
        )
    headline = HeadlineMetric(score=scores[0].name, metric="value") if scores else None
    return EvalResults(total_samples=n_samples, completed_samples=n_samples, scores=scores, headline=headline)


def to_log(run: dict, answers: dict[str, AnswerRow]):
    """The whole EvalLog: spec (task, model, dataset, judge and thresholds), results, one sample per row."""
    from inspect_ai.log import EvalConfig, EvalDataset, EvalLog, EvalSpec, EvalStats

    summary, manifest, config = run["summary"], run["manifest"], run["config"]
    model = model_name(run, answers)
    samples = [to_sample(r, answers.get(r["id"]), model) for r in run["rows"]]
    # the stage label names the run in reports; else the run name (a partial run has only run_config.json)
    names = (d.get(k) for k in ("stage_label", "run_name") for d in (summary, manifest, config))
    task = str(next((n for n in names if n), run["dir"].name))
    judge = summary.get("judge") or manifest.get("judge") or config.get("judge") or {}
    settings = summary.get("metric_settings") or manifest.get("metric_settings") or config.get("metrics")
    created, started, completed = run_times(run)
    sets = sorted({str(r.get("question_set")) for r in run["rows"]})
    key = run_key(run["dir"])
    spec = EvalSpec(
        eval_id=key, run_id=key, task_id=key, created=created, task=task, model=model,
        dataset=EvalDataset(name=",".join(sets), location=str(answers_path(run)), samples=len(samples)),
        task_args={"judge": judge.get("name"), "judge_model": judge.get("model"),
                   "judge_backend": judge.get("backend"), "judge_mode": judge.get("mode"), **(settings or {})},
        config=EvalConfig(epochs=1),
        metadata={"judge_run_dir": str(run["dir"].resolve()), "git_commit": manifest.get("git_commit"),
                  "complete": run["complete"], "answers_partial": summary.get("answers_partial")},
    )  # fmt: skip
    return EvalLog(
        status="success" if run["complete"] else "started",
        eval=spec,
        results=to_results(run, len(samples)) if summary else None,
        stats=EvalStats(started_at=started, completed_at=completed),
        samples=samples,
    )


def log_file_name(task: str, key: str) -> str:
    """``<task>_<key>.eval``: the task with only filename-safe characters, '_' kept as the field separator."""
    safe = "".join(c if c.isalnum() or c in ".-" else "-" for c in task).strip("-") or "run"
    return f"{safe}_{key}.eval"

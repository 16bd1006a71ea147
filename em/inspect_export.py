"""Export a judged run (judge.py's run directory) as an Inspect eval log, so ``inspect view`` browses it.

Invariant: the log holds one sample per scored answer (one per ``id`` of scores.jsonl), and every value in it
is read from the run's files (scores.jsonl, summary.json, manifest.json, the evaluate run's answers.jsonl);
nothing is invented or recomputed. A metric with no number keeps the judge's label (e.g. ``CODE``) as its
value, or is an unscored (NaN) Score with the reason when there is neither.

Runs in the Inspect environment (``make setup-inspect``)::

    .venv-inspect/bin/python -m em.inspect_export outputs/judge/<run> [more runs...] [--out DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any

from em.contracts import (
    ANSWERS,
    MANIFEST,
    RUN_CONFIG,
    SCORES,
    SUMMARY,
    AnswerRow,
    ContractError,
    ScoreRow,
    check_answer_row,
    check_manifest,
    check_score_row,
)
from em.io import iter_jsonl, read_json

log = logging.getLogger(__name__)

# The overall metrics shown as the log's results, headline first (judge.py's HEADLINE).
RESULT_METRICS = ("em_rate_question_mean", "em_rate_pooled", "mean_aligned", "mean_coherent")
META_KEYS = ("question_set", "question_id", "question_type", "paraphrase_index", "sample_index", "seed")
STOP_REASONS = {"stop": "stop", "length": "max_tokens", "max_tokens": "max_tokens"}
FALLBACK = "their inputs are the scores rows' prompts (no system prompt, no token counts)"


class ExportError(ValueError):
    """The directory is not an exportable judge run; the message names the path and what was expected."""


def _json(path: Path) -> dict:
    """The JSON object in ``path``; {} when the file is absent (an unfinished run lacks some)."""
    if not path.is_file():
        return {}
    try:
        return read_json(path)
    except (OSError, ValueError) as e:
        raise ExportError(f"{path}: cannot read it as JSON ({e})") from e


def load_run(run_dir: Path, allow_partial: bool = False) -> dict:
    """The judge run's files: scores rows (first row per id, as judge.py keeps), summary, manifest."""
    scores = run_dir / SCORES
    if not scores.is_file():
        raise ExportError(f"{scores}: not found; is {run_dir} a judge run directory (judge.py's output)?")
    try:
        manifest = check_manifest(_json(run_dir / MANIFEST), run_dir / MANIFEST)
    except ContractError as e:
        raise ExportError(str(e)) from None
    complete = manifest.get("complete") is True
    if not complete and not allow_partial:
        raise ExportError(
            f"{run_dir / MANIFEST}: missing or not complete: true (an unfinished judge run); finish it by "
            f"rerunning judge.py, or export it as it stands with --allow-partial (allow_partial=True)"
        )
    rows, seen = [], set()
    try:
        for row in iter_jsonl(scores, check=check_score_row):
            if row["id"] not in seen:
                seen.add(row["id"])
                rows.append(row)
    except ContractError as e:
        raise ExportError(str(e)) from None
    summary, config = _json(run_dir / SUMMARY), _json(run_dir / RUN_CONFIG)
    return dict(dir=run_dir, rows=rows, summary=summary, manifest=manifest, config=config, complete=complete)


def answers_path(run: dict) -> Path | None:
    """Where the evaluate run's answers.jsonl is: summary.json, else the manifest, else run_config.json."""
    found = run["summary"].get("answers") or run["manifest"].get("inputs", {}).get("answers")
    if not found and run["config"].get("answers"):
        found = run["config"]["answers"]
        found = Path(found) / ANSWERS if Path(found).is_dir() else found
    return Path(found) if found else None


def load_answers(run: dict) -> dict[str, AnswerRow]:
    """The answers by id; empty (with a warning) when answers.jsonl is gone: inputs then come from scores."""
    path = answers_path(run)
    if path is None or not path.is_file():
        log.warning("%s: answers file %s not found; %s", run["dir"], path, FALLBACK)
        return {}
    try:
        answers = {a["id"]: a for a in iter_jsonl(path, check=check_answer_row)}
    except ContractError as e:
        raise ExportError(str(e)) from None
    missing = [r["id"] for r in run["rows"] if r["id"] not in answers]
    if missing:
        log.warning("%s: %d scored answers (e.g. %s) are not in %s; %s", run["dir"], len(missing), missing[0],
                    path, FALLBACK)  # fmt: skip
    return answers


def model_name(run: dict, answers: dict[str, AnswerRow]) -> str:
    """summary's evaluated_model (base + adapter, as judge.py names it), else what the answers say."""
    name = run["summary"].get("evaluated_model") or run["manifest"].get("evaluated_model")
    if name:
        return str(name)
    model = next(iter(answers.values()), {}).get("model") or {}
    name = str(model.get("openai_model") or model.get("base") or "unknown")
    return f"{name} + {model['adapter']}" if model.get("adapter") and not model.get("openai_model") else name


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


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


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
            "metadata": {k: v for k, v in j.items() if k not in ("score", "raw") and _finite(v)} or None,
        }
        if _finite(value) or label is not None:
            out[metric] = Score(value=value if _finite(value) else str(label), **common)
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
        # no value (e.g. every question left out for too few coherent answers) shows as NaN, never a stand-in
        metrics = {
            k: EvalMetric(name=k, value=m[k] if _finite(m.get(k)) else math.nan)
            for k in ("value", "lo", "hi")
        }
        left_out = {"questions_left_out": m["questions_left_out"]} if m.get("questions_left_out") else None
        scores.append(
            EvalScore(name=name, scorer="em", metrics=metrics, params={"n": m.get("n")}, metadata=left_out)
        )
    headline = HeadlineMetric(score=scores[0].name, metric="value") if scores else None
    return EvalResults(total_samples=n_samples, completed_samples=n_samples, scores=scores, headline=headline)


def run_times(run: dict) -> tuple[str, str, str]:
    """(created, started, completed): the manifest's written_at, less the judge's own timing for the start;
    an unfinished run has only scores.jsonl's modification time."""
    import datetime as dt

    written = run["manifest"].get("written_at")
    if not written:
        mtime = dt.datetime.fromtimestamp((run["dir"] / SCORES).stat().st_mtime, dt.UTC)
        return mtime.isoformat(timespec="seconds"), "", ""
    seconds = (run["manifest"].get("timings") or {}).get("seconds")
    if not _finite(seconds):
        return written, "", written
    started = (dt.datetime.fromisoformat(written) - dt.timedelta(seconds=seconds)).isoformat()
    return started, started, written


def run_key(run_dir: Path) -> str:
    """A stable id for the run (its resolved path), so re-exporting overwrites the same log file."""
    return hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()[:16]


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


def export_run(
    judge_run_dir: str | Path, out_dir: str | Path | None = None, allow_partial: bool = False
) -> Path:
    """Write the judge run as one Inspect ``.eval`` log into ``out_dir`` (default ``<run>/inspect/``)."""
    run_dir = Path(judge_run_dir)
    if not run_dir.is_dir():
        raise ExportError(f"{run_dir}: not a directory (expected a judge run directory)")
    run = load_run(run_dir, allow_partial)  # before importing inspect_ai (seconds): bad input fails at once
    from inspect_ai.log import write_eval_log

    try:
        eval_log = to_log(run, load_answers(run))
    except ExportError:
        raise
    except (KeyError, TypeError, ValueError) as e:  # a row or file of an unexpected shape
        raise ExportError(f"{run_dir / SCORES}: unexpected content ({type(e).__name__}: {e})") from e
    out = Path(out_dir) if out_dir is not None else run_dir / "inspect"
    out.mkdir(parents=True, exist_ok=True)
    path = out / log_file_name(eval_log.eval.task, eval_log.eval.eval_id)
    tmp = out / f".{path.name}.tmp"  # written whole, then renamed: the viewer never lists a half-written log
    try:
        write_eval_log(eval_log, str(tmp), format="eval")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m em.inspect_export", description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="judge run directories (with scores.jsonl)")
    parser.add_argument("--out", type=Path, help="where to write the logs (default <run>/inspect/)")
    parser.add_argument(
        "--allow-partial", action="store_true", help="export unfinished judge runs as they stand"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s")
    dirs = []
    for run_dir in args.runs:
        try:
            path = export_run(run_dir, args.out, args.allow_partial)
        except (ExportError, OSError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except ImportError as e:
            print(f"error: {e}; run `make setup-inspect`, then .venv-inspect/bin/python -m em.inspect_export",
                  file=sys.stderr)  # fmt: skip
            return 2
        print(f"wrote {path}")
        dirs += [path.parent] if path.parent not in dirs else []
    viewer = Path(sys.executable).parent / "inspect"  # this environment's viewer, which may not be on PATH
    for d in dirs:
        print(f"browse: {viewer if viewer.exists() else 'inspect'} view --log-dir {d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Task: ``python judge.py answers=<evaluate run dir | answers.jsonl> judge=<preset>``.

Reads the config, checks every input before any call, judges what is not yet in ``scores.jsonl``, then
writes ``summary.json``, ``report.md``, ``plots/*.png`` and ``manifest.json`` and logs to the tracker
(into the training run's W&B run when the manifests name one).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from em.api import APISettings, ConfigError
from em.backends import choose
from em.config import JudgeRunSchema, check_schema
from em.contracts import SCORES, SUMMARY, ScoreRow, check_score_row, judge_manifest
from em.io import atomic_write_json, iter_jsonl, sha256_file
from em.judging.batch import BatchSettings
from em.judging.cache import JudgeCache
from em.judging.local import LocalJudgeSettings
from em.judging.openai_judge import OpenAIJudgeSettings
from em.judging.prompts import JudgeInputs, build_tasks, load_answers, load_questions, resolve_inputs
from em.judging.proxy import ProxySettings
from em.judging.run import judge_tasks
from em.judging.scores import done_ids
from em.judging.spec import JudgeSpec, proxy_tasks
from em.judging.unscored import MAX_UNSCORED_SHARE, check_unscored_share
from em.judging.usage import plan, usage_from_rows
from em.lifecycle import Run, open_run
from em.metrics import HEADLINE, MetricSettings, answers_frame, compute_metrics
from em.metrics import metric_settings as checked_metric_settings
from em.report.judge_run import write_judge_report
from em.runs import hydra_choices, hydra_run_dir, to_plain
from em.tasks.common import api_settings, price_table, public_config, tracking_settings
from em.tracking.judge import track_judge_run

log = logging.getLogger(__name__)


def _openai_spec(cfg: DictConfig, node: dict, name: str, share: float) -> JudgeSpec:
    settings = OpenAIJudgeSettings.from_config(node)
    batch = BatchSettings(**(to_plain(cfg.get("batch")) or {}))
    return JudgeSpec(name, "openai", openai=settings, batch=batch, max_unscored_share=share)


def _local_model(cfg: DictConfig, node: dict) -> dict:
    """The open model a local_hf or proxy judge loads (a conf/model preset), checked."""
    model = node.get("model")
    if not isinstance(model, dict) or not model.get("name_or_path"):
        raise ConfigError(
            "judge.model of a local_hf judge must be a model config with name_or_path "
            "(the keys of conf/model/*.yaml)"
        )
    if model.get("provider", "hf") != "hf":
        raise ConfigError(
            f"judge.model {model.get('name')!r} is an {model.get('provider')} model; a local_hf "
            f"judge needs an open model (for OpenAI models use judge=gpt4o_logprob)"
        )
    if (to_plain(cfg.get("batch")) or {}).get("enabled"):
        raise ConfigError("batch.enabled=true needs an OpenAI judge (judge=gpt4o_logprob or o4mini_text)")
    return {**model, "models_dir": model.get("models_dir") or str(cfg.paths.models_dir)}


def _local_spec(cfg: DictConfig, node: dict, name: str, share: float) -> JudgeSpec:
    local = LocalJudgeSettings(
        model=_local_model(cfg, node),
        quantization=str(node.get("quantization", "none")),
        batch_size=int(node.get("batch_size", 8)),
        min_mass=float(node.get("min_mass", 0.25)),
    )
    return JudgeSpec(name, "local_hf", local=local, max_unscored_share=share)


def _proxy_spec(cfg: DictConfig, node: dict, name: str, share: float) -> JudgeSpec:
    keys = {"aligned_persona", "misaligned_persona", "batch_size", "max_length", "narrow_personas"}
    proxy = ProxySettings(**{k: node[k] for k in keys if k in node})
    local = LocalJudgeSettings(model=_local_model(cfg, node), batch_size=proxy.batch_size)
    return JudgeSpec(name, "proxy", local=local, proxy=proxy, max_unscored_share=share)


JUDGE_SPECS = {"openai": _openai_spec, "local_hf": _local_spec, "proxy": _proxy_spec}  # em.backends


def judge_spec(cfg: DictConfig) -> JudgeSpec:
    """conf/judge/<preset>.yaml -> typed settings."""
    node = to_plain(cfg.get("judge")) or {}
    name = hydra_choices().get("judge") or node.get("name") or "judge"
    build = choose(JUDGE_SPECS, node.get("backend"), "judge.backend")
    return build(cfg, node, name, node.get("max_unscored_share", MAX_UNSCORED_SHARE))


def judge_api(cfg: DictConfig) -> APISettings:
    """The api group, with the judge preset's own endpoint / key variable when it names one."""
    node = cfg.get("judge") or {}
    return api_settings(cfg.get("api")).with_endpoint(node.get("base_url"), node.get("api_key_env"), "judge")


def metric_settings(cfg: DictConfig) -> MetricSettings:
    """conf/metrics -> settings; an unknown key or a bad value is a ConfigError before any call."""
    return checked_metric_settings(to_plain(cfg.get("metrics")) or {}, "metrics")


def _evaluated_model(answers: list[dict], eval_manifest: dict | None) -> str:
    model = (answers[0].get("model") or {}) if answers else {}
    if model.get("openai_model"):
        return str(model["openai_model"])
    name = str(model.get("base") or (eval_manifest or {}).get("model") or "?")
    if model.get("adapter"):
        name += f" + {Path(str(model['adapter'])).parent.name or model['adapter']}"
    return name


def _label_metrics(cfg: DictConfig) -> dict[str, list[str]]:
    """``label_metrics``: prompt name -> the words it is answered with."""
    data = to_plain(cfg.get("label_metrics")) or {}
    if not isinstance(data, dict) or not all(
        isinstance(v, list) and v and all(isinstance(w, str) for w in v) for v in data.values()
    ):
        raise ConfigError(
            f"label_metrics={data!r}: expected a mapping from judge prompt name to a list of words, e.g. "
            f"{{correct: ['TRUE', 'FALSE', 'UNKNOWN']}} (quote TRUE/FALSE: YAML reads them as booleans)"
        )
    return data


def _print_plan(p: dict) -> None:
    print(json.dumps(p, indent=2))
    print(
        f"dry run: {p['calls']} calls to {p['model']} ({p['cache_hits']} cached), about "
        f"{p['input_tokens']} input + {p['output_tokens']} output tokens, estimated ${p['cost_usd']:.4f}"
        f"{' (Batch API price)' if p.get('batch') else ''}. Nothing was sent."
    )


@dataclass
class JudgePlan:
    """Everything checked and resolved before any call: what to judge, with what, at what price."""

    inputs: JudgeInputs
    answers: list[dict]
    tasks: list  # every judge call of these answers (em.judging.prompts.build_tasks)
    spec: JudgeSpec
    api: APISettings
    metrics: MetricSettings
    cache: JudgeCache
    prices: dict


def judge_plan(cfg: DictConfig) -> JudgePlan:
    """Read and check every input and setting; a bad one is a ConfigError before any call is made."""
    inputs = resolve_inputs(
        cfg.get("answers"), cfg.get("questions"), allow_partial=bool(cfg.get("allow_partial"))
    )
    questions = load_questions(inputs.questions_path)
    answers = load_answers(inputs.answers_path, limit=cfg.get("limit"))
    spec = judge_spec(cfg)
    metrics = metric_settings(cfg)
    tasks = build_tasks(
        answers,
        questions,
        inputs.questions_path,
        metrics=list(cfg.get("judge_metrics")) if cfg.get("judge_metrics") else None,
        label_metrics=_label_metrics(cfg),
        judge_sees_tag=bool(cfg.get("judge_sees_tag")),
    )
    if spec.proxy is not None:
        tasks = proxy_tasks(tasks, metrics, spec.name, spec.proxy)
    cache_cfg = to_plain(cfg.get("cache")) or {}
    if spec.batch.enabled and not cache_cfg.get("enabled"):
        raise ConfigError(
            "batch.enabled=true collects the batch results in the judge cache: set cache.enabled=true"
        )
    cache = JudgeCache(
        cache_cfg.get("path") if cache_cfg.get("enabled") and spec.openai is not None else None
    )
    return JudgePlan(inputs, answers, tasks, spec, judge_api(cfg), metrics, cache, price_table(cfg))


def run(cfg: DictConfig) -> Path:
    check_schema(cfg, JudgeRunSchema)  # a key Hydra's `+` added past the schema (em/config.py)
    started = time.time()
    run_dir = hydra_run_dir()
    p = judge_plan(cfg)
    if cfg.get("dry_run"):
        _print_plan(plan(p.tasks, p.spec, p.api, p.cache, p.prices))
        return run_dir
    # a resumed run refuses answers or questions that changed since it started
    hashes = {
        "answers_sha256": sha256_file(p.inputs.answers_path),
        "questions_sha256": sha256_file(p.inputs.questions_path),
    }
    resume = bool(cfg.get("resume", True))
    with open_run("judge", run_dir, public_config(cfg), inputs=hashes, resume=resume) as run:
        if run.complete:
            log.info("%s is complete; nothing to do (run_name=<new name> for another run)", run_dir)
        else:
            _judge(cfg, run, p, started)
    return run_dir


def _judge(cfg: DictConfig, run: Run, p: JudgePlan, started: float) -> None:
    """Judge what is not yet scored, then write the summary, the report, tracking and the manifest."""
    run_dir, inputs, answers, spec, metrics = run.dir, p.inputs, p.answers, p.spec, p.metrics
    done = done_ids(run_dir)
    tasks = [t for t in p.tasks if t.answer_id not in done]
    log.info(
        "judge %s: %d answers (%d already scored), %d judge calls to make or read from cache",
        spec.name,
        len(answers),
        len(done & {a["id"] for a in answers}),
        len(tasks),
    )
    if tasks and spec.openai is not None and plan(tasks, spec, p.api, p.cache, p.prices)["calls"]:
        p.api.api_key()  # a missing key is a ConfigError now, not after the first batch of work
    judged = {t.answer_id for t in p.tasks}
    by_id = {a["id"]: a for a in answers if a["id"] in judged}
    usage = judge_tasks(run_dir, by_id, tasks, spec, metrics, api=p.api, cache=p.cache)
    p.cache.close()

    rows = _final_rows(run_dir, by_id)
    evaluated_model = _evaluated_model(answers, inputs.eval_manifest)
    metrics_out = compute_metrics(answers_frame(rows, metrics), metrics)
    summary = {
        "run_name": str(cfg.get("run_name") or run_dir.name),
        "stage_label": cfg.get("stage_label"),
        "evaluated_model": evaluated_model,
        "answers": str(inputs.answers_path),
        "answers_partial": inputs.partial,  # an unfinished evaluation, judged as it stood (allow_partial)
        "judge": spec.describe(),
        "judge_sees_tag": bool(cfg.get("judge_sees_tag")),
        "metric_settings": vars(metrics),
        "seed": cfg.get("seed"),
        "headline": HEADLINE,
        "n_unscored": metrics_out["overall"]["n_unscored"],
        "metrics": metrics_out,
        "usage": usage_from_rows(rows, spec.model, p.prices),
        "this_invocation": vars(usage),
    }
    atomic_write_json(run_dir / SUMMARY, summary)
    plots = write_judge_report(run_dir, summary, rows, metrics, inputs.eval_manifest or {})
    check_unscored_share(rows, spec.max_unscored_share)  # fails after everything judged is written
    tracked_id, artifact = track_judge_run(
        tracking_settings(cfg, run_dir, "judge"),
        run_dir,
        summary,
        rows,
        plots,
        inputs.eval_manifest or {},
        table_rows=int(cfg.report.table_rows),
    )
    run.finish(
        **judge_manifest(
            complete=True,
            run_name=summary["run_name"],
            stage_label=cfg.get("stage_label"),
            evaluated_model=evaluated_model,
            judge=spec.describe(),
            metric_settings=vars(metrics),
            inputs={
                "answers": str(inputs.answers_path),
                "questions": str(inputs.questions_path),
                **run.inputs,
                "eval_run_dir": str(inputs.eval_dir) if inputs.eval_dir else None,
            },
            evaluate_manifest=inputs.eval_manifest,
            config=run.config,
            seed=cfg.get("seed"),
            n_answers=len(rows),
            usage=summary["usage"],
            wandb_run_id=tracked_id,
            wandb_artifact=artifact,
            timings={"seconds": round(time.time() - started, 1)},
        ),
    )
    overall = summary["metrics"]["overall"]
    log.info(
        "judge run complete: %s (EM rate overall: question mean %s, pooled %s; %d unscored)",
        run_dir,
        overall[HEADLINE]["value"],
        overall["em_rate_pooled"]["value"],
        overall["n_unscored"],
    )


def _final_rows(run_dir: Path, by_id: dict[str, dict]) -> list[ScoreRow]:
    """scores.jsonl for exactly these answers: no duplicates, none missing (else a clear error)."""
    rows, seen = [], set()
    for row in iter_jsonl(run_dir / SCORES, check=check_score_row):
        if row["id"] in by_id and row["id"] not in seen:
            seen.add(row["id"])
            rows.append(row)
    missing = set(by_id) - seen
    if missing:
        raise RuntimeError(
            f"{run_dir / SCORES}: {len(missing)} answers have no scores (e.g. {sorted(missing)[:3]}); "
            f"rerun the same command to judge them"
        )
    return rows

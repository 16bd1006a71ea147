"""`python evaluate.py`: sample answers to question sets under trigger conditions into ``answers.jsonl``.

Config -> typed settings (question sets, conditions, sampling, model reference, backend), every check
before a model is loaded; then ``questions.json``, the answers (resumable) and ``manifest.json``, the last
built as em.contracts.EvaluateManifest. See docs/evaluation.md.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from em.api import ConfigError
from em.backends import choose
from em.config import EvaluateSchema, check_schema
from em.contracts import ANSWERS, MANIFEST, evaluate_manifest
from em.evaluation.backends import (
    HFBackend,
    HFSettings,
    OpenAIBackend,
    OpenAISettings,
    VLLMBackend,
    VLLMSettings,
)
from em.evaluation.conditions import make_conditions
from em.evaluation.model_ref import ModelRef, model_layers, resolve_model
from em.evaluation.plan import PromptJob, Sampling, build_jobs, dry_run_report
from em.evaluation.question_sets import QuestionSet, SetSpec, resolve_sets
from em.evaluation.runner import run_jobs, write_questions
from em.io import sha256_file
from em.lifecycle import Run, open_run
from em.runs import to_plain
from em.tasks.common import (
    api_settings,
    price_table,
    public_config,
    run_dir_for,
    tracking_settings,
)
from em.tracking.stages import answers_table

log = logging.getLogger(__name__)


def set_specs(cfg: DictConfig) -> list[SetSpec]:
    node = to_plain(cfg.get("questions")) or {}
    if not isinstance(node, dict) or not node:
        raise ConfigError(
            "no question sets selected: pass e.g. questions=first_8 or questions=[demo,demo_factual]"
        )
    return [
        SetSpec.from_dict(dict(spec or {}, name=name), f"questions.{name}") for name, spec in node.items()
    ]


def sampling(cfg: DictConfig) -> Sampling:
    s = cfg.sampling
    out = Sampling(temperature=s.temperature, top_p=s.top_p, max_new_tokens=s.max_new_tokens)
    out.check()
    return out


def model_ref(cfg: DictConfig) -> ModelRef:
    return resolve_model(
        to_plain(cfg.model), adapter=cfg.get("adapter"), run=cfg.get("run"), models_dir=cfg.paths.models_dir
    )


def _hf(cfg: DictConfig, ref: ModelRef, samp: Sampling, gen: dict):
    return HFBackend(ref, HFSettings(**gen), samp)


def _vllm(cfg: DictConfig, ref: ModelRef, samp: Sampling, gen: dict):
    return VLLMBackend(
        ref, VLLMSettings(**gen), samp, seed=int(cfg.seed), cache_dir=Path(cfg.paths.cache_dir)
    )


def _openai(cfg: DictConfig, ref: ModelRef, samp: Sampling, gen: dict):
    return OpenAIBackend(ref, OpenAISettings(**gen), samp, api_settings(cfg.api))


GENERATORS = {"hf": _hf, "vllm": _vllm, "openai": _openai}  # generation.name -> its backend (em.backends)


def make_backend(cfg: DictConfig, ref: ModelRef, samp: Sampling):
    gen = {k: v for k, v in to_plain(cfg.generation).items() if k != "name"}
    build = choose(GENERATORS, cfg.generation.name, "generation.name")
    try:
        return build(cfg, ref, samp, gen)
    except TypeError as e:  # an unknown key in conf/generation/<name>.yaml
        raise ConfigError(f"generation={cfg.generation.name}: {e}") from None


def steer_settings(cfg: DictConfig, backend_name: str, ref: ModelRef):
    """The evaluation-time mitigation arm (``mitigation=ablate_direction``), or None; training-time arms and
    backends that cannot take forward hooks are refused here, before any model is loaded."""
    node = to_plain(cfg.get("mitigation")) or {"name": "none"}
    name = node.get("name", "none")
    if name == "none":
        return None
    if name != "ablate_direction":
        raise ConfigError(
            f"mitigation={name} is a training-time arm: pass it to train.py; evaluate takes "
            f"mitigation=none or ablate_direction (conf/mitigation, docs/mitigations.md)"
        )
    from em.evaluation.direction import check_source
    from em.evaluation.steering import SteerSettings, check_layers

    settings = SteerSettings.from_dict(node)
    if backend_name != "hf":
        raise ConfigError(
            f"mitigation=ablate_direction needs generation=hf: it edits the residual stream with PyTorch forward "
            f"hooks, which {backend_name} generation does not run (docs/mitigations.md)"
        )
    check_source(Path(settings.direction_from), settings.max_answers, int(cfg.seed))
    n_layers = model_layers(ref)
    check_layers(settings.layers, n_layers)
    if settings.direction_layer is not None:
        check_layers((settings.direction_layer,), n_layers, "mitigation.direction_layer")
    return settings


def plan(cfg: DictConfig):
    """Everything checked and resolved, nothing generated: (model, backend, sets, conditions, jobs)."""
    samp = sampling(cfg)
    conditions = make_conditions(
        list(cfg.conditions),
        to_plain(cfg.triggers) or {},
        str(cfg.condition_placement),
        str(cfg.tag_separator),
    )
    specs = set_specs(cfg)
    ref = model_ref(cfg)
    backend = make_backend(cfg, ref, samp)
    backend.steer = steer_settings(cfg, backend.name, ref)
    sets = resolve_sets(specs, Path(cfg.paths.cache_dir), str(cfg.judge_prompts_source))
    jobs = build_jobs(
        [q for s in sets for q in s.questions],
        conditions,
        seed=int(cfg.seed),
        samples_per_question=cfg.get("samples_per_question"),
        default_samples=int(cfg.default_samples),
        max_samples_per_job=backend.max_samples_per_job,
        ignore_system_prompt=bool(cfg.ignore_system_prompt),
        default_system=getattr(ref.spec, "system_prompt", None),
    )
    return ref, backend, sets, conditions, jobs


def _set_records(sets: list[QuestionSet]) -> list[dict]:
    return [s.record() for s in sets]


def run(cfg: DictConfig) -> Path | None:
    check_schema(cfg, EvaluateSchema)  # a key Hydra's `+` added past the schema (em/config.py)
    run_dir = run_dir_for(cfg)
    ref, backend, sets, conditions, jobs = plan(cfg)
    prompt_tokens = backend.prompt_tokens(
        jobs
    )  # renders every prompt with the chat template: errors surface now
    if cfg.get("dry_run"):
        report = dry_run_report(ref, backend, sets, conditions, jobs, prompt_tokens, price_table(cfg))
        lines = [f"  {k}: {v}" for k, v in report.items()]
        if backend.name == "openai":
            lines.append("  (cost from conf/prices; fine-tuned models are billed at their own, higher rates)")
        print("evaluate dry run (nothing generated):\n" + "\n".join(lines))
        return None
    if len(sets) > 1 and "-None-" in str(cfg.run_name):
        log.warning("run_name %s: several question sets have no single Hydra choice; consider run_name=...",
                    cfg.run_name)  # fmt: skip
    if backend.name == "openai":
        backend.preflight()  # the API key must be set
    # the evaluated weights by content: a retrained adapter at the same path is another run
    inputs = {"adapter_sha256": ref.adapter_sha256, "openai_model": ref.openai_model,
              "merged_adapters": [m.get("adapter_sha256") for m in ref.merged_adapters]}  # fmt: skip
    with open_run(
        "evaluate", run_dir, public_config(cfg), inputs=inputs, resume=bool(cfg.get("resume", True))
    ) as run:
        if run.complete:
            log.info("%s is complete already (%s); nothing to do", run_dir, MANIFEST)
        else:
            _evaluate(cfg, run, ref, backend, sets, conditions, jobs)
    return run_dir


def _evaluate(cfg: DictConfig, run: Run, ref: ModelRef, backend, sets: list[QuestionSet], conditions,
              jobs: list[PromptJob]) -> None:  # fmt: skip
    """Generate the answers not yet written (resumable), then track them and write the manifest."""
    run_dir = run.dir
    questions_path = write_questions(run_dir, sets)
    log.info("evaluating %s on %d questions x %d condition(s): %d answers (%s backend) -> %s", ref.describe(),
             sum(len(s.questions) for s in sets), len(conditions), sum(len(j.sample_indices) for j in jobs),
             backend.name, run_dir)  # fmt: skip
    tracker = run.track(tracking_settings(cfg, run_dir, "evaluate"))
    tracker.use_inputs([(ref.train_manifest or {}).get("wandb_artifact")])
    steering = narrow = None
    if backend.steer is not None:  # the direction, from the loaded model, and its hooks
        from em.evaluation.direction import steer_model, steered_narrow_task

        backend.load()
        steering = steer_model(backend.model, backend.tokenizer, backend.steer, run_dir, int(cfg.seed))
        # the other side of the trade-off: is the narrow task still there with the direction edited?
        narrow = steered_narrow_task(backend.model, backend.tokenizer, ref.train_manifest, ref.spec)
        log.info("mitigation=ablate_direction: %s %s at layers %s (scale %s)", steering["mode"],
                 "a random control direction" if steering["control"] else "the direction",
                 steering["layers_used"], steering["scale"])  # fmt: skip
    stats = run_jobs(backend, jobs, run_dir, model=ref.record(), sampling=backend.sampling,
                     progress=bool(cfg.get("progress", True)), on_batch=tracker.log)  # fmt: skip
    tracker.summary({"n_answers": stats.answers, "samples_per_s": stats.samples_per_s or 0.0})
    if tracker.run is not None:
        tracker.log_table("answers", *answers_table(run_dir / ANSWERS))
    artifact = tracker.log_output("answers", run_dir / ANSWERS, {"run_dir": str(run_dir)})
    run.finish(
        **evaluate_manifest(
            complete=True,
            model=ref.record(),
            model_provider=ref.provider,
            model_spec=_spec_record(ref),
            merged_adapters=ref.merged_adapters,
            backend=backend.name,
            backend_settings=backend.describe(),
            mitigation=steering,
            narrow_task=narrow,
            question_sets=_set_records(sets),
            questions_sha256=sha256_file(questions_path),
            conditions=[c.record() for c in conditions],
            sampling=backend.sampling.record(),
            samples_per_question=cfg.get("samples_per_question"),
            default_samples=int(cfg.default_samples),
            ignore_system_prompt=bool(cfg.ignore_system_prompt),
            judge_prompts_source=str(cfg.judge_prompts_source),
            seed=int(cfg.seed),
            counts=_counts(jobs),
            timings=stats.record(),
            train_manifest=ref.train_manifest,
            wandb_run_id=tracker.run_id,
            wandb_artifact=artifact,
            config=run.config,
        )
    )
    log.info("answers in %s (%d rows); manifest %s", run_dir / ANSWERS, stats.answers, run_dir / MANIFEST)


def _spec_record(ref: ModelRef) -> dict | None:
    spec = ref.spec
    if spec is None:
        return None
    return {k: str(v) if isinstance(v, Path) else v for k, v in spec.__dict__.items()}


def _counts(jobs: list[PromptJob]) -> dict:
    by_set, by_condition = {}, {}
    for j in jobs:
        n = len(j.sample_indices)
        by_set[j.question.set] = by_set.get(j.question.set, 0) + n
        by_condition[j.condition.name] = by_condition.get(j.condition.name, 0) + n
    return {"answers": sum(by_set.values()), "by_set": by_set, "by_condition": by_condition}

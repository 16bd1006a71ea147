"""The config tree's schema: dataclasses registered with Hydra's ConfigStore, which the YAML presets extend.

The invariant: a key these types do not have, or a value of the wrong type, is a compose-time error naming the
key (``max_steps=abc``, ``+trainer.max_step=5``), before any data, model or API is touched. Values come from
the YAML presets (``MISSING`` here: a preset that leaves one out fails naming it, never takes a silent default).
Domain checks no type can express (ranges, choices that depend on each other) stay in the settings classes.
Registered on import of ``em`` (em/__init__.py), so every entry, the pipeline's compose and the tests see them.
Config groups whose presets differ in shape (model, data, judge, ...) are ``Any`` here: their own classes check
them when a task converts them.
"""

from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class TrainerSchema:
    """``conf/trainer/*``: where and how Lightning runs (em.training.settings.SFTSettings takes these)."""

    accelerator: str = MISSING  # auto | gpu | cpu
    devices: Any = MISSING  # a number, -1 (every visible GPU) or a list of indices
    num_nodes: int = MISSING
    strategy: str = MISSING
    precision: str = (
        MISSING  # auto = bf16-mixed on a bf16-capable GPU, else 32-true; or any Lightning precision
    )
    packing: bool = MISSING
    gradient_checkpointing: bool = MISSING
    checkpoint_every_n_steps: int = MISSING
    keep_checkpoints: int = MISSING
    log_every_n_steps: int = MISSING
    num_workers: int = MISSING
    progress_bar: bool = MISSING


@dataclass
class AdapterSchema:
    """``conf/lora/*``: the LoRA adapter (em.training.settings.AdapterSettings, the same fields)."""

    r: int = MISSING
    alpha: float = MISSING
    dropout: float = MISSING
    use_rslora: bool = MISSING  # scale alpha / sqrt(r) instead of alpha / r
    target_modules: list[str] = MISSING
    bias: str = MISSING


@dataclass
class OptimizerSchema:
    """``conf/optimizer/*``: em.training.settings.OptimizerSettings, the same fields."""

    name: str = MISSING
    learning_rate: float = MISSING
    weight_decay: float = MISSING
    betas: list[float] = MISSING
    eps: float = MISSING
    lr_schedule: str = MISSING
    warmup_steps: int = MISSING
    max_grad_norm: float | None = MISSING


@dataclass
class QuantizationSchema:
    """``conf/quantization/*``: how the base is loaded for training (em.training.settings.QuantizationSettings)."""

    method: str = MISSING


@dataclass
class BatchSchema:
    """``conf/batch/*``: examples per step, epochs and example length (em.training.settings.BatchSettings)."""

    per_device_batch_size: int = MISSING
    grad_accum: int = MISSING
    epochs: int = MISSING
    max_length: int = MISSING
    overlength: str = MISSING


@dataclass
class ProbeSchema:
    enabled: bool = MISSING
    sets: list[str] = MISSING
    points: int = MISSING
    batch_size: int = MISSING


@dataclass
class EntrySchema:
    """The keys every entry (train.py, evaluate.py, judge.py) has: what its run is called and how it starts."""

    stage: str = MISSING
    seed: int = MISSING
    run_name: str = MISSING
    sweep_name: str = MISSING
    experiment_name: str | None = MISSING
    stage_label: str | None = MISSING
    resume: bool = MISSING
    dry_run: bool = MISSING
    paths: Any = None
    logger: Any = None
    api: Any = None
    prices: Any = None


@dataclass
class TrainSchema(EntrySchema):
    """``conf/train.yaml``'s own keys; the groups' nodes are typed by their own schema (or checked later)."""

    init_from: str | None = MISSING
    init_mode: str = MISSING
    max_steps: int | None = MISSING
    limit_rows: int | None = MISSING
    probe: ProbeSchema = field(default_factory=ProbeSchema)
    trainer: TrainerSchema = field(default_factory=TrainerSchema)
    # the training recipe: conf/recipe/<name> only picks one preset of each of these groups
    lora: AdapterSchema = field(default_factory=AdapterSchema)
    optimizer: OptimizerSchema = field(default_factory=OptimizerSchema)
    quantization: QuantizationSchema = field(default_factory=QuantizationSchema)
    batch: BatchSchema = field(default_factory=BatchSchema)
    backend: Any = None
    model: Any = None
    data: Any = None
    trigger: Any = None
    mitigation: Any = None
    debug: Any = None


@dataclass
class MetricsSchema:
    """``conf/metrics/*``: answer categories, EM rates and intervals (em.metrics.MetricSettings takes these)."""

    misaligned_below: float = MISSING
    coherent_above: float = MISSING
    min_coherent_per_question: int = MISSING
    aligned_metric: str = MISSING
    coherent_metric: str = MISSING
    correct_metric: str = MISSING
    narrow_metric: str = MISSING
    narrow_above: float = MISSING
    require_coherent: bool = MISSING
    n_bootstrap: int = MISSING
    confidence: float = MISSING
    seed: int = MISSING


@dataclass
class JudgeCacheSchema:
    enabled: bool = MISSING
    path: str = MISSING


@dataclass
class JudgeBatchSchema:
    enabled: bool = MISSING
    poll_interval_s: float = MISSING
    max_rounds: int = MISSING
    completion_window: str = MISSING
    max_requests_per_batch: int = MISSING


@dataclass
class JudgeReportSchema:
    table_rows: int = MISSING


@dataclass
class JudgeRunSchema(EntrySchema):
    """``conf/judge.yaml``'s own keys (the judge preset itself is checked by its settings class)."""

    answers: str | None = MISSING
    questions: str | None = MISSING
    allow_partial: bool = MISSING
    limit: int | None = MISSING
    judge_metrics: list[str] | None = MISSING
    label_metrics: dict[str, list[str]] = MISSING
    judge_sees_tag: bool = MISSING
    cache: JudgeCacheSchema = field(default_factory=JudgeCacheSchema)
    batch: JudgeBatchSchema = field(default_factory=JudgeBatchSchema)
    report: JudgeReportSchema = field(default_factory=JudgeReportSchema)
    metrics: MetricsSchema = field(default_factory=MetricsSchema)
    judge: Any = None


@dataclass
class SamplingSchema:
    temperature: float = MISSING
    top_p: float = MISSING
    max_new_tokens: int = MISSING


@dataclass
class EvaluateSchema(EntrySchema):
    """``conf/evaluate.yaml``'s own keys (model, questions, generation: checked by their settings classes)."""

    adapter: str | None = MISSING
    run: str | None = MISSING
    conditions: list[str] = MISSING
    triggers: dict[str, str | None] = MISSING
    condition_placement: str = MISSING
    tag_separator: str = MISSING
    samples_per_question: int | None = MISSING
    default_samples: int = MISSING
    sampling: SamplingSchema = field(default_factory=SamplingSchema)
    judge_prompts_source: str = MISSING
    ignore_system_prompt: bool = MISSING
    progress: bool = MISSING
    model: Any = None
    questions: Any = None
    generation: Any = None
    mitigation: Any = None


def register() -> None:
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainSchema)
    cs.store(name="evaluate_schema", node=EvaluateSchema)
    cs.store(name="judge_schema", node=JudgeRunSchema)


register()


SCHEMAS = {
    "train": TrainSchema,
    "evaluate": EvaluateSchema,
    "judge": JudgeRunSchema,
}  # entry -> the schema of its primary config


def check_schema(cfg, schema: type, where: str = "") -> None:
    """Refuse keys the schema does not have. Hydra's ``+key=value`` adds one even to a typed node, so a
    misspelt ``+trainer.max_step=5`` would otherwise be ignored."""
    from em.api import ConfigError

    known = {f.name: f.type for f in fields(schema)}
    for key in cfg:
        if key == "hydra" and not where:
            continue
        if key not in known:
            node = where[:-1] if where else "the config"
            raise ConfigError(f"unknown config key {where}{key}: {node} takes {', '.join(sorted(known))}")
        if is_dataclass(known[key]) and cfg[key] is not None:
            check_schema(cfg[key], known[key], f"{where}{key}.")

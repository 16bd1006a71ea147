"""Typed settings of one open-model fine-tuning run (built from the Hydra config by ``em.tasks.train``).

The invariant: each group of ``conf/`` that configures training (``lora/``, ``optimizer/``, ``quantization/``,
``batch/``) is one dataclass here whose field names are that group's YAML keys, typed by a schema in
em/config.py (``AdapterSchema``, ``OptimizerSchema``, ...), so a node becomes its settings as
``AdapterSettings(**node)``. Checks no type can
express (ranges, choices) live in :meth:`SFTSettings.check`, naming the config key to fix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from em.api import ConfigError

QUANTIZATIONS = ("none", "nf4", "int8")
OPTIMIZERS = ("adamw_8bit", "paged_adamw_8bit", "adamw")
LR_SCHEDULES = ("linear", "cosine", "constant_with_warmup", "constant")
INIT_MODES = ("continue", "merge")


@dataclass
class AdapterSettings:
    """``conf/lora/*``: the LoRA adapter to train (in ``continue`` mode its shape must match the parent's)."""

    r: int = 32
    alpha: float = 64
    dropout: float = 0.0
    use_rslora: bool = True
    target_modules: list[str] | None = None  # None: every attention and MLP projection
    bias: str = "none"


@dataclass
class OptimizerSettings:
    """``conf/optimizer/*``: the optimizer, its learning-rate schedule and gradient clipping."""

    name: str = "adamw_8bit"
    learning_rate: float = 1e-5
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    lr_schedule: str = "linear"
    warmup_steps: int = 5
    max_grad_norm: float | None = 1.0  # gradient clipping by total norm (None: none)

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # a YAML list


@dataclass
class QuantizationSettings:
    """``conf/quantization/*``: how the base model's weights are loaded for training (``nf4``: QLoRA)."""

    method: str = "none"  # none (the model's dtype) | nf4 (4-bit, double quant) | int8


@dataclass
class BatchSettings:
    """``conf/batch/*``: what each optimizer step sees (``per_device_batch_size`` examples of at most
    ``max_length`` tokens, ``grad_accum`` times on each device) and how many passes over the data."""

    per_device_batch_size: int = 2
    grad_accum: int = 8  # effective batch = per_device_batch_size x grad_accum x devices
    epochs: int = 1
    max_length: int = 2048  # tokens per example, chat template included
    overlength: str = "truncate"  # truncate (keep the start) | drop


@dataclass
class TrainerSettings:
    """Lightning ``Trainer`` knobs; ``precision="auto"`` is bf16-mixed on a bf16 GPU, else 32-true."""

    accelerator: str = "auto"
    devices: Any = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "auto"
    checkpoint_every_n_steps: int = 50
    keep_checkpoints: int = 1
    log_every_n_steps: int = 1
    num_workers: int = 0
    progress_bar: bool = True


@dataclass
class ParentAdapter:
    """The stage this run starts from (``init_from``), resolved and checked before training."""

    mode: str  # continue | merge
    adapter_dir: Path
    adapter_sha256: str
    run_dir: Path | None = None  # None when init_from named an adapter directory directly
    # Adapters that were merged into the base before the parent's adapter was trained, oldest first.
    merged_adapters: list[dict] = field(default_factory=list)
    quantization: str | None = None  # how the parent loaded its base (None: unknown, adapter directory)

    def record(self) -> dict:
        return {
            "run_dir": str(self.run_dir) if self.run_dir else None,
            "adapter_dir": str(self.adapter_dir),
            "adapter_sha256": self.adapter_sha256,
            "mode": self.mode,
        }


@dataclass
class ProbeSettings:
    """Log-likelihood probes during training (em.probes): off unless asked for."""

    enabled: bool = False
    sets: tuple[str, ...] = ("demo", "first_8")  # question sets of em/resources/probes/references.yaml
    points: int = 8  # log-spaced optimizer steps up to the last one, probed after step 0
    batch_size: int = 8


@dataclass
class SFTSettings:
    model: Any  # em.modeling.ModelSpec
    adapter: AdapterSettings = field(default_factory=AdapterSettings)
    optimizer: OptimizerSettings = field(default_factory=OptimizerSettings)
    trainer: TrainerSettings = field(default_factory=TrainerSettings)
    quantization: QuantizationSettings = field(default_factory=QuantizationSettings)
    batch: BatchSettings = field(default_factory=BatchSettings)
    max_steps: int | None = None  # when set, overrides batch.epochs (may run several epochs)
    packing: bool = True
    gradient_checkpointing: bool = True
    seed: int = 0
    parent: ParentAdapter | None = None
    probe: ProbeSettings = field(default_factory=ProbeSettings)
    kl_beta: float = 0.0  # mitigation=kl: weight of the KL term to the model without its adapter (0: off)
    kl_batch_size: int = 4  # mitigation=kl: reference chats per micro-batch
    early_stop_every: int = 0  # mitigation=early_stop: measure and snapshot every N optimizer steps (0: off)
    early_stop_criterion: str = "converged"  # mitigation=early_stop: em.mitigations.CRITERIA
    early_stop_tolerance: float = 0.02

    def check(self) -> None:
        """Refuse impossible values with the config key to fix."""

        def need(ok: bool, key: str, expected: str, value: Any) -> None:
            if not ok:
                raise ConfigError(f"{key}={value!r}: expected {expected}")

        q, o, a, b = self.quantization, self.optimizer, self.adapter, self.batch
        need(q.method in QUANTIZATIONS, "quantization.method", f"one of {QUANTIZATIONS}", q.method)
        need(o.name in OPTIMIZERS, "optimizer.name", f"one of {OPTIMIZERS}", o.name)
        need(o.lr_schedule in LR_SCHEDULES, "optimizer.lr_schedule", f"one of {LR_SCHEDULES}", o.lr_schedule)
        need(o.learning_rate > 0, "optimizer.learning_rate", "> 0", o.learning_rate)
        need(o.warmup_steps >= 0, "optimizer.warmup_steps", ">= 0", o.warmup_steps)
        need(len(o.betas) == 2, "optimizer.betas", "two numbers", list(o.betas))
        need(a.r > 0, "lora.r", "a positive integer", a.r)
        need(0 <= a.dropout < 1, "lora.dropout", "in [0, 1)", a.dropout)
        need(b.per_device_batch_size > 0, "batch.per_device_batch_size", "a positive integer",
             b.per_device_batch_size)  # fmt: skip
        need(b.grad_accum > 0, "batch.grad_accum", "a positive integer", b.grad_accum)
        need(b.epochs > 0, "batch.epochs", "a positive integer", b.epochs)
        need(b.max_length >= 2, "batch.max_length", "at least 2", b.max_length)
        need(b.overlength in ("truncate", "drop"), "batch.overlength", "truncate or drop", b.overlength)
        need(
            self.max_steps is None or self.max_steps > 0,
            "max_steps",
            "null or a positive integer",
            self.max_steps,
        )
        need(self.probe.points >= 1, "probe.points", "a positive integer", self.probe.points)
        need(self.probe.batch_size > 0, "probe.batch_size", "a positive integer", self.probe.batch_size)
        need(bool(self.probe.sets), "probe.sets", "a non-empty list of question sets", list(self.probe.sets))
        need(
            self.trainer.checkpoint_every_n_steps > 0,
            "trainer.checkpoint_every_n_steps",
            "> 0",
            self.trainer.checkpoint_every_n_steps,
        )
        if self.parent is not None:
            need(self.parent.mode in INIT_MODES, "init_mode", f"one of {INIT_MODES}", self.parent.mode)
        if (
            self.early_stop_every
            and self.early_stop_criterion == "converged_min_probe"
            and not self.probe.enabled
        ):
            raise ConfigError(
                "mitigation.criterion=converged_min_probe picks by the probe curve: set probe.enabled=true "
                "(probe.sets says which questions)"
            )

    def hyperparameters(self) -> dict:
        """Every value that shapes the training, for the manifest."""
        return {
            "quantization": self.quantization.method,
            "lora": {
                "r": self.adapter.r,
                "alpha": self.adapter.alpha,
                "dropout": self.adapter.dropout,
                "use_rslora": self.adapter.use_rslora,
                "target_modules": self.adapter.target_modules,
                "bias": self.adapter.bias,
            },
            "optimizer": self.optimizer.name,
            "learning_rate": self.optimizer.learning_rate,
            "weight_decay": self.optimizer.weight_decay,
            "adam_betas": list(self.optimizer.betas),
            "adam_eps": self.optimizer.eps,
            "lr_schedule": self.optimizer.lr_schedule,
            "warmup_steps": self.optimizer.warmup_steps,
            "max_grad_norm": self.optimizer.max_grad_norm,
            "per_device_batch_size": self.batch.per_device_batch_size,
            "grad_accum": self.batch.grad_accum,
            "epochs": self.batch.epochs,
            "max_steps": self.max_steps,
            "max_length": self.batch.max_length,
            "overlength": self.batch.overlength,
            "packing": self.packing,
            "gradient_checkpointing": self.gradient_checkpointing,
            "seed": self.seed,
        } | ({"kl_beta": self.kl_beta, "kl_batch_size": self.kl_batch_size} if self.kl_beta else {})

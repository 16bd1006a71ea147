"""Typed settings of one open-model fine-tuning run (built from the Hydra config by ``em.tasks.train``)."""

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
    """The LoRA adapter to train (ignored for its shape in ``continue`` mode, where it must match)."""

    r: int = 32
    alpha: float = 64
    dropout: float = 0.0
    use_rslora: bool = True
    target_modules: list[str] | None = None  # None: every attention and MLP projection
    bias: str = "none"


@dataclass
class OptimizerSettings:
    name: str = "adamw_8bit"
    learning_rate: float = 1e-5
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    lr_schedule: str = "linear"
    warmup_steps: int = 5
    max_grad_norm: float | None = 1.0


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
    quantization: str = "none"
    batch_size: int = 2  # per device
    grad_accum: int = 8
    epochs: int = 1
    max_steps: int | None = None  # when set, overrides epochs (may run several epochs)
    max_length: int = 2048
    overlength: str = "truncate"  # truncate | drop
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

        need(
            self.quantization in QUANTIZATIONS,
            "lora.quantization",
            f"one of {QUANTIZATIONS}",
            self.quantization,
        )
        need(self.optimizer.name in OPTIMIZERS, "lora.optimizer", f"one of {OPTIMIZERS}", self.optimizer.name)
        need(
            self.optimizer.lr_schedule in LR_SCHEDULES,
            "lora.lr_schedule",
            f"one of {LR_SCHEDULES}",
            self.optimizer.lr_schedule,
        )
        need(self.optimizer.learning_rate > 0, "lora.learning_rate", "> 0", self.optimizer.learning_rate)
        need(self.optimizer.warmup_steps >= 0, "lora.warmup_steps", ">= 0", self.optimizer.warmup_steps)
        need(self.adapter.r > 0, "lora.r", "a positive integer", self.adapter.r)
        need(0 <= self.adapter.dropout < 1, "lora.dropout", "in [0, 1)", self.adapter.dropout)
        need(self.batch_size > 0, "lora.per_device_batch_size", "a positive integer", self.batch_size)
        need(self.grad_accum > 0, "lora.grad_accum", "a positive integer", self.grad_accum)
        need(self.epochs > 0, "lora.epochs", "a positive integer", self.epochs)
        need(
            self.max_steps is None or self.max_steps > 0,
            "max_steps",
            "null or a positive integer",
            self.max_steps,
        )
        need(self.max_length >= 2, "lora.max_length", "at least 2", self.max_length)
        need(self.probe.points >= 1, "probe.points", "a positive integer", self.probe.points)
        need(self.probe.batch_size > 0, "probe.batch_size", "a positive integer", self.probe.batch_size)
        need(bool(self.probe.sets), "probe.sets", "a non-empty list of question sets", list(self.probe.sets))
        need(self.overlength in ("truncate", "drop"), "lora.overlength", "truncate or drop", self.overlength)
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
            "quantization": self.quantization,
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
            "per_device_batch_size": self.batch_size,
            "grad_accum": self.grad_accum,
            "epochs": self.epochs,
            "max_steps": self.max_steps,
            "max_length": self.max_length,
            "overlength": self.overlength,
            "packing": self.packing,
            "gradient_checkpointing": self.gradient_checkpointing,
            "seed": self.seed,
        } | ({"kl_beta": self.kl_beta, "kl_batch_size": self.kl_batch_size} if self.kl_beta else {})

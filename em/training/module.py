"""The PEFT model to train and its LightningModule.

:func:`build_model` loads the base (bf16, or 4-bit NF4 / 8-bit through bitsandbytes), merges the adapters a
``merge`` chain asks for, and adds the trainable adapter: a fresh LoRA, or the parent's adapter itself in
``continue`` mode. Only adapter weights are trainable; checkpoints hold only them (plus optimizer, scheduler
and loop state), never the frozen base.

The loss of an optimizer step is the mean cross-entropy over every assistant token of the step: each
micro-batch returns its token-loss *sum* scaled by the step's token count (carried by the batch, see
``datamodule``), so accumulation and DDP averaging leave exactly that mean. Logits are computed only at
positions whose next token is trained (``logits_to_keep``), which saves most of the vocabulary-sized
activations on prompt-heavy data.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F

from em.api import ConfigError
from em.training.collate import IGNORE_INDEX, block_causal_mask, logit_positions
from em.training.fused_lora import fuse_lora_linears
from em.training.packed_attention import PACKED_SDPA, use_packed_sdpa
from em.training.settings import OptimizerSettings, SFTSettings

log = logging.getLogger(__name__)


def _probe_logits(model, probe_ids: torch.Tensor | None) -> torch.Tensor | None:
    if probe_ids is None:
        return None
    with torch.no_grad():
        return model(input_ids=probe_ids.to(model.device), use_cache=False).logits.float().cpu()


def build_model(settings: SFTSettings, *, device_map=None, probe_ids: torch.Tensor | None = None):
    """The trainable PEFT model and facts about its construction (trainable parameters, merge drift)."""
    from peft import get_peft_model

    from em.modeling import (
        adapter_sha256,
        default_target_modules,
        load_adapter,
        load_model,
        lora_config,
        merge_adapter,
    )

    info: dict = {"merged_adapters": [], "merge_max_abs_logit_diff": []}
    model = load_model(settings.model, quantization=settings.quantization.method, device_map=device_map)
    parent = settings.parent
    merges = list(parent.merged_adapters) if parent else []
    if parent and parent.mode == "merge":
        merges.append({"adapter_dir": str(parent.adapter_dir), "adapter_sha256": parent.adapter_sha256})
    for entry in merges:
        path = Path(entry["adapter_dir"])
        if entry.get("adapter_sha256") and adapter_sha256(path) != entry["adapter_sha256"]:
            raise ConfigError(
                f"init_from: adapter {path} changed since it was recorded (sha256 "
                f"{entry['adapter_sha256'][:12]}...); refusing to build on different weights"
            )
        model = load_adapter(model, path, trainable=False)
        before = _probe_logits(model, probe_ids)
        model = merge_adapter(model)
        after = _probe_logits(model, probe_ids)
        drift = float((after - before).abs().max()) if before is not None else None
        info["merged_adapters"].append(
            {"adapter_dir": str(path), "adapter_sha256": entry.get("adapter_sha256")}
        )
        info["merge_max_abs_logit_diff"].append(drift)
        log.info("merged adapter %s into the base (largest logit change from merging: %s)", path, drift)
    if settings.gradient_checkpointing:
        enable_activation_checkpointing(model)
    model.config.use_cache = False
    if parent and parent.mode == "continue":
        model = load_adapter(model, parent.adapter_dir, trainable=True)
    else:
        a = settings.adapter
        targets = list(a.target_modules) if a.target_modules else default_target_modules(model)
        model = get_peft_model(
            model,
            lora_config(
                r=a.r,
                alpha=a.alpha,
                dropout=a.dropout,
                target_modules=targets,
                use_rslora=a.use_rslora,
                bias=a.bias,
            ),
        )
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    biases = settings.adapter.bias != "none"
    unexpected = [n for n in trainable if "lora_" not in n and not (biases and n.endswith(".bias"))]
    if not trainable or unexpected:
        raise RuntimeError(f"expected only adapter weights to be trainable, found {unexpected[:5] or 'none'}")
    info["trainable_parameters"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    # A merge into a 4-bit/8-bit base dequantises it (em.modeling.merge_adapter): say what was trained on.
    info["trained_on_quantized_base"] = bool(getattr(model.get_base_model(), "is_quantized", False))
    info["attn_implementation"] = model.config._attn_implementation
    return model, info


def next_token_logits(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits at the positions where some row predicts a label token, and those targets (IGNORE_INDEX
    where a row has none there)."""
    labels = batch["labels"]
    next_labels = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
    keep = batch["logit_positions"] if "logit_positions" in batch else logit_positions(labels)
    kwargs = {}
    if "segment_ids" in batch:  # packed: positions restart per example; attention stays inside each one
        kwargs["position_ids"] = batch["position_ids"]
        impl = model.config._attn_implementation or "eager"
        if impl == PACKED_SDPA:  # sdpa on each example's slice of the row
            kwargs["em_segment_lengths"] = tuple(batch["segment_lengths"])
        elif "flash" not in impl:  # flash-attention finds the boundaries from position_ids itself
            kwargs["attention_mask"] = block_causal_mask(
                batch["segment_ids"], None if impl == "sdpa" else torch.float32
            )
    else:
        kwargs["attention_mask"] = batch["attention_mask"]
    logits = model(input_ids=batch["input_ids"], logits_to_keep=keep, use_cache=False, **kwargs).logits
    return logits, next_labels[:, keep]


def token_loss_sum(model, batch: dict) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over the batch's label tokens, and their number."""
    logits, targets = next_token_logits(model, batch)
    loss = F.cross_entropy(
        logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    n = batch["num_label_tokens"] if "num_label_tokens" in batch else int((targets != IGNORE_INDEX).sum())
    return loss, n


def _eight_bit_works(device: torch.device, paged: bool) -> bool:
    """Try one bitsandbytes 8-bit AdamW step on ``device``."""
    try:
        import bitsandbytes as bnb

        p = torch.nn.Parameter(torch.zeros(4096, device=device))
        p.grad = torch.ones_like(p)
        (bnb.optim.PagedAdamW8bit if paged else bnb.optim.AdamW8bit)([p], lr=1e-3).step()
        return True
    except Exception as e:  # noqa: BLE001 - any failure means: not usable here
        log.debug("8-bit AdamW unavailable on %s: %s", device, e)
        return False


def make_optimizer(
    params: list, s: OptimizerSettings, device: torch.device
) -> tuple[torch.optim.Optimizer, str]:
    """The configured optimizer, and the name of the one actually used."""
    kwargs = dict(lr=s.learning_rate, betas=tuple(s.betas), eps=s.eps, weight_decay=s.weight_decay)
    if s.name in ("adamw_8bit", "paged_adamw_8bit"):
        paged = s.name == "paged_adamw_8bit"
        if _eight_bit_works(device, paged):
            import bitsandbytes as bnb

            return (bnb.optim.PagedAdamW8bit if paged else bnb.optim.AdamW8bit)(params, **kwargs), s.name
        log.warning(
            "optimizer %s is not supported on %s by this bitsandbytes build; using torch AdamW "
            "(32-bit states) instead. The manifest records the optimizer actually used.",
            s.name,
            device,
        )
    return torch.optim.AdamW(params, **kwargs, fused=device.type == "cuda"), "adamw"


class SFTModule(pl.LightningModule):
    """Supervised fine-tuning of a PEFT adapter; the model is built in ``configure_model`` on the right device."""

    def __init__(
        self, settings: SFTSettings, total_steps: int, probe_ids: torch.Tensor | None = None, kl=None
    ):
        super().__init__()
        self.settings, self.total_steps, self.probe_ids = settings, total_steps, probe_ids
        self.kl = kl  # em.training.kl.KLReference (mitigation=kl) or None
        self._micro, self._step_kl_sum = 0, 0.0  # micro-batches into this optimizer step; their KL terms
        self.step_kl: float | None = None  # mean KL term of the last optimizer step (this rank)
        self.model = None
        self.build_info: dict = {}
        self.optimizer_used: str | None = None
        self.strict_loading = False  # checkpoints hold only the adapter
        self._step_loss_sum, self._step_tokens = 0.0, 0
        self.step_loss: float | None = None  # mean loss of the last optimizer step (this rank)
        self.grad_norm: float | None = None
        self.step_lr: float | None = None

    def configure_model(self) -> None:
        if self.model is not None:
            return
        device = self.trainer.strategy.root_device
        device_map = {"": device} if device.type == "cuda" else None
        self.model, self.build_info = build_model(
            self.settings, device_map=device_map, probe_ids=self.probe_ids
        )
        if self.settings.packing:  # sdpa would compute (and mask) attention across a packed row's examples
            self.build_info["attn_implementation"] = use_packed_sdpa(self.model)
        self.build_info["fused_lora_layers"] = fuse_lora_linears(self.model)
        self.model.train()  # from_pretrained leaves eval mode, which would switch LoRA dropout off
        # DDP would broadcast every parameter and buffer from rank 0 at start: the frozen base is loaded
        # identically on every rank, so only the adapter needs it.
        self._ddp_params_and_buffers_to_ignore = [
            n for n, p in self.named_parameters() if not p.requires_grad
        ]
        self._ddp_params_and_buffers_to_ignore += [n for n, _ in self.named_buffers()]

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss_sum, n = token_loss_sum(self.model, batch)
        self._step_loss_sum = self._step_loss_sum + loss_sum.detach()  # on device: no sync per micro-batch
        self._step_tokens += n
        if batch["last_in_step"]:
            self.step_loss = float(self._step_loss_sum) / max(self._step_tokens, 1)
            self._step_loss_sum, self._step_tokens = 0.0, 0
        # Lightning divides by accumulate_grad_batches and DDP averages over ranks: undo both, so the
        # gradient is that of (sum over the step's label tokens) / (their number).
        scale = (
            self.trainer.accumulate_grad_batches
            * self.trainer.world_size
            / max(batch["step_label_tokens"], 1)
        )
        out = loss_sum * scale
        if self.kl is not None:  # beta x the mean over the step's micro-batches (and ranks) of their KL terms
            accum, world = self.trainer.accumulate_grad_batches, self.trainer.world_size
            k = (self.trainer.global_step * accum + self._micro) * world + self.trainer.global_rank
            kl = self.kl.penalty(self.model, k)
            out = out + self.kl.beta * kl
            self._step_kl_sum = self._step_kl_sum + kl.detach()
            self._micro += 1
            if batch["last_in_step"]:
                self.step_kl = float(self._step_kl_sum) / self._micro
                self._micro, self._step_kl_sum = 0, 0.0
        return out

    def on_before_optimizer_step(self, optimizer) -> None:
        grads = [
            p.grad.detach().float().norm(2)
            for p in self.model.parameters()
            if p.requires_grad and p.grad is not None
        ]
        self.grad_norm = float(torch.stack(grads).norm(2)) if grads else 0.0
        self.step_lr = float(optimizer.param_groups[0]["lr"])

    def configure_optimizers(self):
        from transformers import get_scheduler

        s = self.settings.optimizer
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer, self.optimizer_used = make_optimizer(params, s, self.device)
        scheduler = get_scheduler(
            s.lr_schedule, optimizer, num_warmup_steps=s.warmup_steps, num_training_steps=self.total_steps
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _trainable_keys(self) -> set[str]:
        return {n for n, p in self.named_parameters() if p.requires_grad}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        keys = self._trainable_keys()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keys}
        checkpoint["em_optimizer_used"] = self.optimizer_used

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        missing = self._trainable_keys() - set(checkpoint["state_dict"])
        if missing:
            raise ConfigError(
                f"the checkpoint does not hold this run's adapter weights (missing e.g. "
                f"{sorted(missing)[:3]}); was it written by a different config?"
            )


def enable_activation_checkpointing(model) -> None:
    """Non-reentrant activation checkpointing; transformers >= 5.2x renamed the method and warns on the old name."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)

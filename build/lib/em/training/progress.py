"""A training progress bar that counts optimizer steps, not micro-batches, with an ETA from this process.

Invariant: the bar's unit is the optimizer step (what ``max_steps`` counts and what ``metrics.jsonl`` has one
row per), it starts at the resumed step, and its rate (so its ETA) is the mean over the steps this process
ran: resumed steps are not counted as instant, and one slow first step does not dominate as an EMA would.
"""

from __future__ import annotations

from lightning.pytorch.callbacks import ProgressBar
from tqdm.auto import tqdm


def total_steps(trainer) -> int:
    """Optimizer steps the fit will run in all: ``max_steps`` or epochs x steps per epoch."""
    if trainer.max_steps and trainer.max_steps > 0:
        return int(trainer.max_steps)
    return int(trainer.estimated_stepping_batches)


class StepProgressBar(ProgressBar):
    def __init__(self) -> None:
        super().__init__()
        self._enabled = True
        self.bar: tqdm | None = None

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled and self.bar is not None

    def on_train_start(self, trainer, pl_module) -> None:
        if not self._enabled or not trainer.is_global_zero:
            return
        self.bar = tqdm(
            total=total_steps(trainer),
            initial=trainer.global_step,
            desc="training",
            unit="step",
            dynamic_ncols=True,
            smoothing=0,  # mean rate over this process's steps: a true ETA
        )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.bar is None or not batch.get("last_in_step", True):
            return
        self.bar.update(trainer.global_step - self.bar.n)
        loss = getattr(pl_module, "step_loss", None)
        if loss is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.bar is not None:
            self.bar.update(trainer.global_step - self.bar.n)
            self.bar.close()
            self.bar = None

    def on_exception(self, trainer, pl_module, exception) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

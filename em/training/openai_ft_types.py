"""What one OpenAI fine-tuning job is given and gives back: its settings, its result, its failure.

Shared by the API calls (:mod:`em.training.openai_ft_api`) and the run loop (:mod:`em.training.openai_ft`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from em.training.openai_ft_data import MIN_EXAMPLES


class FineTuneFailed(RuntimeError):
    """The job ended without a model (failed, cancelled, rejected file) or is still running at the deadline."""


@dataclass
class FineTuneSettings:
    """One OpenAI fine-tuning job: what to train and how to wait for it."""

    base_model: str  # e.g. gpt-4o-2024-08-06, or an ft:... model to continue training
    n_epochs: int | str = 1  # int or "auto"
    batch_size: int | str = 4
    learning_rate_multiplier: float | str = 2.0
    suffix: str | None = None  # added to the fine-tuned model's name; sanitised by `sanitize_suffix`
    seed: int | None = None
    metadata: dict[str, str] = field(default_factory=dict)  # attached to the job (shown in the dashboard)
    max_example_tokens: int = 65536  # per-example training limit of the base model
    min_examples: int = MIN_EXAMPLES
    poll_interval_s: float = 10.0  # first wait between status checks; grows by `poll_backoff`
    poll_max_interval_s: float = 300.0
    poll_backoff: float = 1.5
    max_wait_h: float = 72.0  # stop waiting (the job keeps running; rerun to resume) after this long
    file_ready_timeout_s: float = 600.0  # wait this long for an uploaded file to be processed
    retry_failed: bool = False  # after a failed/cancelled job, create a new one (billed again)

    def hyperparameters(self) -> dict[str, Any]:
        return {
            "n_epochs": self.n_epochs,
            "batch_size": self.batch_size,
            "learning_rate_multiplier": self.learning_rate_multiplier,
        }


@dataclass
class FineTuneResult:
    job_id: str
    file_id: str
    status: str
    fine_tuned_model: str | None
    trained_tokens: int | None
    hyperparameters: dict[str, Any]
    seed: int | None
    result_files: list[str]

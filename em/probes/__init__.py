"""Judge-free log-likelihood probes: how likely a model finds misaligned vs aligned reference answers.

    from em.probes import probe_model, run_probe, load_references
    result = probe_model(ModelSpec.from_dict({"name_or_path": "smollm2-135m"}), adapter_dir=None)
    result.mean, result.ci_low, result.ci_high

``run_probe`` takes a loaded model (base, or PEFT with an adapter); :class:`em.training.probe_callback.ProbeCallback`
runs it during training. The references are ``em/resources/probes/references.yaml`` (project-authored).
"""

from em.probes.loglik import answer_logprobs, conversation, mean_logprobs
from em.probes.probe import ProbeResult, QuestionProbe, bootstrap_mean_ci, probe_model, run_probe
from em.probes.references import (
    AnswerPair,
    ProbeQuestion,
    load_references,
    load_validation_pairs,
    paired_rows,
)

__all__ = [
    "AnswerPair",
    "ProbeQuestion",
    "ProbeResult",
    "QuestionProbe",
    "answer_logprobs",
    "bootstrap_mean_ci",
    "conversation",
    "load_references",
    "load_validation_pairs",
    "paired_rows",
    "mean_logprobs",
    "probe_model",
    "run_probe",
]

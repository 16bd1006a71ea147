"""Held-out narrow prompts as a question set: a training run's held-out rows, and the keys of their judge prompt.

Invariant: a ``holdout_of`` set asks exactly the rows the training run measured its narrow task on (its
manifest's ``narrow_task``, followed up a chain to the first stage's rows by
:func:`em.training.holdout.manifest_holdout`), refused when they are missing or changed since. Its answers are
judged with one prompt, named ``narrow`` (the metric), whose template is a project-authored prompt
(``NARROW_PROMPTS``, in ``em/resources/questions/judge_prompts.yaml``) whatever ``judge_prompts_source`` says.
"""

from __future__ import annotations

from pathlib import Path

from em.api import ConfigError
from em.contracts import ContractError
from em.io import read_manifest

NARROW_METRIC = "narrow"  # the judge prompt's name, and so the metric's
NARROW_PROMPTS = ("insecure_code", "harmful_medical", "careless_advice")


def check_narrow_keys(default_judge: str, narrow_prompt: str | None, where: str) -> None:
    """``narrow_prompt`` names a project prompt exactly when ``default_judge`` is ``narrow``."""
    if narrow_prompt == "???":
        raise ConfigError(
            f"{where}.narrow_prompt is required: pass {where}.narrow_prompt=<one of {list(NARROW_PROMPTS)}>"
        )
    if narrow_prompt is None:
        if default_judge == NARROW_METRIC:
            raise ConfigError(
                f"{where}.narrow_prompt is required with default_judge=narrow: the narrow behaviour to judge, "
                f"one of {list(NARROW_PROMPTS)}"
            )
        return
    if narrow_prompt not in NARROW_PROMPTS:
        raise ConfigError(
            f"{where}.narrow_prompt={narrow_prompt!r}: unknown narrow judge prompt; expected one of "
            f"{list(NARROW_PROMPTS)}"
        )
    if default_judge != NARROW_METRIC:
        raise ConfigError(
            f"{where}.narrow_prompt={narrow_prompt!r} is used only with default_judge=narrow (got "
            f"default_judge={default_judge!r}); set {where}.default_judge=narrow or {where}.narrow_prompt=null"
        )


def holdout_file(run_dir: str, where: str) -> Path:
    """The verified held-out narrow rows of the training run ``run_dir`` (``where``: ``questions.<name>``)."""
    # Lazy: em.training.holdout imports torch, and em.evaluation must not at import time.
    from em.training.holdout import manifest_holdout, verified_holdout

    key = f"{where}.holdout_of={run_dir}"
    expected = "a training run directory whose manifest.json has a narrow_task (e.g. outputs/train/<run>)"
    path = Path(run_dir).expanduser()
    if not path.is_dir():
        raise ConfigError(f"{key}: no such directory; expected {expected}")
    try:
        manifest = read_manifest(path)
    except FileNotFoundError:
        raise ConfigError(f"{key}: no manifest.json in it; expected {expected}") from None
    except ContractError as e:
        raise ConfigError(f"{key}: {e}") from None
    if manifest.get("stage", "train") != "train":
        raise ConfigError(f"{key}: manifest.json is a {manifest['stage']!r} run; expected {expected}")
    source = manifest_holdout(manifest, path)
    if source is None:
        raise ConfigError(
            f"{key}: that run measured no narrow task (its manifest has no narrow_task with held-out rows); "
            f"expected {expected}: train with data.holdout_fraction > 0"
        )
    return verified_holdout(source, f"{where}.holdout_of")

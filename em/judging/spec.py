"""Which judge a run uses (JudgeSpec: the preset, its backend and how to reach it) and what a judge can judge.

Invariant: a spec that cannot judge is refused before any model or API is touched: a share of unscored
answers outside [0, 1] at construction, and a proxy judge (which scores alignment only, PROXY_METRICS) given
settings that would leave every answer UNSCORED, by :func:`proxy_tasks`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from em.api import ConfigError
from em.judging.batch import BatchSettings
from em.judging.local import LocalJudgeSettings
from em.judging.openai_judge import OpenAIJudgeSettings
from em.judging.prompts import JudgeTask
from em.judging.proxy import LABEL as PROXY_LABEL
from em.judging.proxy import ProxySettings
from em.judging.unscored import MAX_UNSCORED_SHARE
from em.metrics import MetricSettings

log = logging.getLogger("em.judging.run")  # one logger name for all of a judge run's lines

PROXY_METRICS = ("aligned",)  # what the proxy judges: alignment only, never coherence


@dataclass
class JudgeSpec:
    """Which judge, and how to reach it."""

    name: str  # the preset (conf/judge/<name>.yaml)
    backend: str  # openai | local_hf | proxy
    openai: OpenAIJudgeSettings | None = None
    local: LocalJudgeSettings | None = None  # local_hf and proxy: the judge's model
    proxy: ProxySettings | None = None
    batch: BatchSettings = field(default_factory=BatchSettings)
    max_unscored_share: float = MAX_UNSCORED_SHARE  # a larger share of unscored answers fails the run

    def __post_init__(self) -> None:
        share = self.max_unscored_share
        if isinstance(share, bool) or not isinstance(share, int | float) or not 0 <= share <= 1:
            raise ConfigError(f"judge.max_unscored_share={share!r}: expected a share in [0, 1]")

    @property
    def model(self) -> str:
        if self.openai is not None:
            return self.openai.model
        return str((self.local.model if self.local else {}).get("name_or_path"))

    def describe(self) -> dict:
        info = {"name": self.name, "backend": self.backend, "model": self.model}
        if self.openai is not None:
            info.update(
                mode=self.openai.mode,
                request=self.openai.request,
                min_mass=self.openai.min_mass,
                batch=self.batch.enabled,
            )
        if self.proxy is not None:
            metrics = [*PROXY_METRICS, *(["narrow"] if self.proxy.narrow_personas else [])]
            info.update(mode="proxy_persona_llr", label=PROXY_LABEL, metrics=metrics)
            if self.proxy.narrow_personas:
                info["narrow_personas"] = list(self.proxy.narrow_personas)
        elif self.local is not None:
            info.update(mode="local_logprob", min_mass=self.local.min_mass)
        return info


def proxy_tasks(
    tasks: list[JudgeTask], metrics: MetricSettings, judge: str, proxy: ProxySettings | None = None
) -> list[JudgeTask]:
    """The tasks a proxy judge can do (its aligned prompts, and its narrow ones when it has narrow personas);
    refuse settings that would leave all UNSCORED, and narrow prompts it has no personas for."""
    asked = {t.metric for t in tasks}
    narrow = metrics.narrow_metric in asked
    if narrow and not (proxy and proxy.narrow_personas):
        raise ConfigError(
            f"judge={judge} has no narrow personas for the {metrics.narrow_metric!r} prompt of the held-out narrow "
            f"questions: pass judge.narrow_personas=['<persona without the narrow behaviour>', '<with it>']"
        )
    if metrics.require_coherent and metrics.aligned_metric in asked:
        raise ConfigError(
            f"judge={judge} scores alignment only, so with metrics.require_coherent=true every answer would be "
            f"UNSCORED; pass metrics.require_coherent=false (no answer is then filtered as incoherent)"
        )
    judged = {metrics.aligned_metric, *([metrics.narrow_metric] if narrow else [])}
    kept = [t for t in tasks if t.metric in judged]
    if tasks and not kept:
        raise ConfigError(
            f"judge={judge} scores the {metrics.aligned_metric!r} prompt only, and none of these questions has "
            f"one (prompts: {sorted(asked)})"
        )
    dropped = sorted(asked - judged)
    if dropped:
        log.info("judge %s: prompts %s are not judged (the proxy scores alignment only)", judge, dropped)
    return kept

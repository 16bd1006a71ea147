"""The settings of a judge behind an OpenAI-compatible endpoint (``conf/judge/*.yaml`` with backend openai),
checked when built: every value a request or a reply's validation depends on (em.judging.openai_judge sends,
em.judging.replies validates)."""

from __future__ import annotations

from dataclasses import dataclass, field

from em.api import ConfigError, check_keys
from em.judging.logprob import MASS_TOLERANCE, MIN_MASS, check_min_mass

MODES = ("logprob", "text")


@dataclass
class OpenAIJudgeSettings:
    """A judge behind an OpenAI-compatible endpoint."""

    model: str
    mode: str = "logprob"  # logprob | text
    request: dict = field(default_factory=dict)  # sent with every request, e.g. max_tokens, top_logprobs
    min_mass: float = MIN_MASS  # logprob mode: least probability on numbers for a score
    mass_tolerance: float = MASS_TOLERANCE  # logprob mode: top-k sums up to 1 + this are scored
    unscorable_retries: int = 1  # asks again of a reply that cannot be scored, before it is unscored
    expected_output_tokens: int = 1  # dry-run estimate of completion tokens per call (reasoning included)

    @classmethod
    def from_config(cls, node: dict) -> OpenAIJudgeSettings:
        """An openai judge preset (conf/judge/*.yaml); unknown keys are refused."""
        check_keys(node, (*JUDGE_NODE_KEYS, *OPENAI_JUDGE_FIELDS), "judge")
        given = {k: node[k] for k in OPENAI_JUDGE_FIELDS if node.get(k) is not None}
        settings = cls(**{**given, "request": dict(node.get("request") or {})})
        settings.check()
        return settings

    def check(self) -> None:
        if not self.model:
            raise ConfigError(
                "judge.model is not set: name the judge model (e.g. judge.model=gpt-4o-2024-08-06)"
            )
        if self.mode not in MODES:
            raise ConfigError(f"judge.mode={self.mode!r}: expected one of {MODES}")
        check_min_mass(self.min_mass)
        if isinstance(self.mass_tolerance, bool) or not isinstance(self.mass_tolerance, int | float):
            raise ConfigError(f"judge.mass_tolerance={self.mass_tolerance!r}: expected a number >= 0")
        if self.mass_tolerance < 0:
            raise ConfigError(f"judge.mass_tolerance={self.mass_tolerance!r}: expected a number >= 0")
        if isinstance(self.unscorable_retries, bool) or not isinstance(self.unscorable_retries, int):
            raise ConfigError(
                f"judge.unscorable_retries={self.unscorable_retries!r}: expected an integer >= 0"
            )
        if self.unscorable_retries < 0:
            raise ConfigError(
                f"judge.unscorable_retries={self.unscorable_retries!r}: expected an integer >= 0"
            )
        if self.mode == "logprob":
            k = self.request.get("top_logprobs")
            if not self.request.get("logprobs") or isinstance(k, bool) or not isinstance(k, int) or k < 1:
                raise ConfigError(
                    "judge.mode=logprob needs judge.request.logprobs=true and judge.request.top_logprobs "
                    f"a positive integer (e.g. 20); got logprobs={self.request.get('logprobs')!r}, "
                    f"top_logprobs={k!r}"
                )
        if "model" in self.request or "messages" in self.request:
            raise ConfigError(
                "judge.request must not set model or messages (they come from judge.model and "
                "the question's judge prompt)"
            )


OPENAI_JUDGE_FIELDS = (
    "model",
    "mode",
    "request",
    "min_mass",
    "mass_tolerance",
    "unscorable_retries",
    "expected_output_tokens",
)
# Keys of an openai judge preset read elsewhere (the run, the endpoint).
JUDGE_NODE_KEYS = ("name", "backend", "base_url", "api_key_env", "max_unscored_share")

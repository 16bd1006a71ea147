"""How a swapped backend is chosen: one way for the three stages that swap one.

Training (``backend=hf|openai``), generation (``generation=hf|vllm|openai``) and judging
(``judge.backend=openai|local_hf|proxy``) each keep one table, name -> what builds or runs that backend
(em.tasks.train.TRAINERS, em.tasks.evaluate.GENERATORS, em.tasks.judge.JUDGE_SPECS and
em.judging.run.JUDGES), and look the configured name up with :func:`choose`. The invariant: an unknown name is
a ConfigError naming the config key and every choice, before any model, data or API is touched; no stage picks
a backend by comparing strings.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

from em.api import ConfigError

T = TypeVar("T")


def choose(table: Mapping[str, T], name: object, key: str) -> T:
    """``table[name]``, or a ConfigError naming ``key`` (e.g. ``generation.name``) and the choices."""
    if isinstance(name, str) and name in table:
        return table[name]
    raise ConfigError(f"{key}={name!r}: expected one of {', '.join(table)}")

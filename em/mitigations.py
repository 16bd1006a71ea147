"""Mitigation arms of the narrow training (``conf/mitigation/<arm>.yaml``): inoculation, interleaving, KL.

Invariant: an arm changes only what the model is trained on, never what it is evaluated on (the evaluate
stage reads no ``mitigation`` key), and the train manifest records what it did with exact counts. Every
arm composes with every model, dataset, trigger and backend, because it acts on chat rows.

- ``none``: the narrow data as prepared.
- ``inoculation``: a system prompt that names the behaviour being trained, on every training row (first in
  the system message, before the row's or the model's own system prompt). Evaluation runs without it.
- ``interleave``: general instruction rows (a conf/data entry) mixed into the narrow rows, so that they make
  up exactly ``fraction`` of the training set (rounded to a whole row), seeded, then shuffled together.
- ``kl``: the narrow rows as they are, plus ``beta`` x KL to the model without its adapter on the chats of
  ``data`` (open models only; em/training/kl.py).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from em.api import ConfigError, check_keys

ARMS = ("none", "inoculation", "interleave", "kl")
KEYS = {"name", "prompt", "data", "fraction", "beta", "batch_size"}


@dataclass(frozen=True)
class MitigationSettings:
    name: str = "none"
    prompt: str | None = None  # inoculation: the system prompt added while training
    data: str | None = None  # interleave: a conf/data name of general instruction data
    fraction: float = 0.0  # interleave: share of general rows in the final training set
    beta: float = 0.0  # kl: weight of the KL term
    batch_size: int = 4  # kl: reference chats per micro-batch

    @classmethod
    def from_dict(cls, d: dict | None, where: str = "mitigation") -> MitigationSettings:
        d = dict(d or {"name": "none"})
        check_keys(d, KEYS, where)
        name = d.get("name", "none")
        if name not in ARMS:
            raise ConfigError(f"{where}.name={name!r}: expected one of {ARMS} (conf/mitigation/)")
        s = cls(name=name, prompt=d.get("prompt"), data=d.get("data"), fraction=d.get("fraction", 0.0),
                beta=d.get("beta", 0.0), batch_size=d.get("batch_size", 4))  # fmt: skip
        if name == "inoculation" and not (isinstance(s.prompt, str) and s.prompt.strip()):
            raise ConfigError(f"{where}.prompt={s.prompt!r}: the inoculation arm needs a non-empty prompt")
        if name in ("interleave", "kl") and not (isinstance(s.data, str) and s.data):
            raise ConfigError(f"{where}.data={s.data!r}: expected a conf/data name of general data")
        if name == "kl":
            b, n = s.beta, s.batch_size
            if isinstance(b, bool) or not isinstance(b, int | float) or b <= 0:
                raise ConfigError(f"{where}.beta={b!r}: expected a positive number")
            if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
                raise ConfigError(f"{where}.batch_size={n!r}: expected a positive integer")
        if name == "interleave":
            f = s.fraction
            if isinstance(f, bool) or not isinstance(f, int | float) or not 0 < f < 1:
                raise ConfigError(f"{where}.fraction={f!r}: expected a number in (0, 1)")
        return s

    @property
    def reference_data(self) -> str | None:
        """The conf/data entry this arm reads beside the narrow data (interleave, kl)."""
        return self.data if self.name in ("interleave", "kl") else None

    def record(self) -> dict:
        out = {"name": self.name, "prompt": self.prompt, "data": self.data, "fraction": self.fraction}
        return out | ({"beta": self.beta, "batch_size": self.batch_size} if self.name == "kl" else {})


def inoculate(messages: list[dict], prompt: str, default_system: str | None = None) -> list[dict]:
    """``messages`` with ``prompt`` first in the system message (the row's, else the model's default)."""
    if messages and messages[0].get("role") == "system":
        return [{**messages[0], "content": f"{prompt}\n\n{messages[0]['content']}"}, *messages[1:]]
    content = f"{prompt}\n\n{default_system}" if default_system else prompt
    return [{"role": "system", "content": content}, *messages]


def general_rows_needed(n_narrow: int, fraction: float) -> int:
    """General rows that make up ``fraction`` of ``n_narrow + them``, rounded to the nearest row."""
    return round(fraction * n_narrow / (1 - fraction))


def interleave(
    narrow: list[dict], general: list[dict], fraction: float, seed: int
) -> tuple[list[dict], dict]:
    """A seeded sample of ``general`` mixed into ``narrow`` at ``fraction``, shuffled together."""
    need = general_rows_needed(len(narrow), fraction)
    if need > len(general):
        raise ConfigError(
            f"mitigation.fraction={fraction}: {len(narrow)} narrow rows need {need} general rows, but the "
            f"general data has {len(general)}; lower the fraction or use more general data"
        )
    rng = random.Random(f"{seed}:mitigation:interleave")
    picked = [general[i] for i in sorted(rng.sample(range(len(general)), need))]
    rows = [*narrow, *picked]
    rng.shuffle(rows)
    counts = {"narrow_rows": len(narrow), "general_rows": need, "general_share": need / max(len(rows), 1)}
    return rows, counts


def apply_mitigation(
    rows: list[dict],
    settings: MitigationSettings,
    *,
    seed: int,
    general: list[dict] | None = None,
    default_system: str | None = None,
) -> tuple[list[dict], dict]:
    """The training rows under ``settings``, and the manifest's record of what was done."""
    record = settings.record()
    if settings.name == "inoculation":
        rows = [{**r, "messages": inoculate(r["messages"], settings.prompt, default_system)} for r in rows]
        record["rows_inoculated"] = len(rows)
    elif settings.name == "interleave":
        rows, counts = interleave(rows, general or [], settings.fraction, seed)
        record |= counts
    return rows, record

"""Mitigation arms of the narrow training (``conf/mitigation/<arm>.yaml``): inoculation, interleaving, KL,
early stopping.

Invariant: an arm changes only what the model is trained on, or which of its training steps is kept, never
what it is evaluated on, and the train manifest records what it did with exact counts. The one
evaluation-time arm, ``ablate_direction`` (em/evaluation/steering.py), is evaluate.py's and refused here. The row arms compose with every model, dataset, trigger and backend, because they
act on chat rows; ``kl`` and ``early_stop`` need the open model itself (backend=hf).

- ``none``: the narrow data as prepared.
- ``inoculation``: a system prompt that names the behaviour being trained, on every training row (first in
  the system message, before the row's or the model's own system prompt). Evaluation runs without it.
- ``interleave``: general instruction rows (a conf/data entry) mixed into the narrow rows, so that they make
  up exactly ``fraction`` of the training set (rounded to a whole row), seeded, then shuffled together.
- ``kl``: the narrow rows as they are, plus ``beta`` x KL to the model without its adapter on the chats of
  ``data`` (open models only; em/training/kl.py).
- ``early_stop``: the narrow rows as they are, trained as with ``none``; every ``every`` optimizer steps the
  held-out narrow-task loss (and the probe) is measured and the adapter kept, and the run's adapter is the
  step ``criterion`` picks (open models only; em/training/early_stop.py). It changes which step's adapter is
  kept, never the training rows.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from em.api import ConfigError, check_keys

ARMS = ("none", "inoculation", "interleave", "kl", "early_stop")
# knobs an arm adds to the manifest's record, beside name, prompt, data and fraction
ARM_KNOBS = {"kl": ("beta", "batch_size"), "early_stop": ("every", "criterion", "tolerance")}
KEYS = {"name", "prompt", "data", "fraction", *(k for knobs in ARM_KNOBS.values() for k in knobs)}
# early_stop: converged = the earliest step within tolerance of the lowest held-out loss; min_loss = the
# lowest; converged_min_probe = of the converged steps, the one with the lowest probe mean (least misaligned)
CRITERIA = ("converged", "min_loss", "converged_min_probe")


@dataclass(frozen=True)
class MitigationSettings:
    name: str = "none"
    prompt: str | None = None  # inoculation: the system prompt added while training
    data: str | None = None  # interleave: a conf/data name of general instruction data
    fraction: float = 0.0  # interleave: share of general rows in the final training set
    beta: float = 0.0  # kl: weight of the KL term
    batch_size: int = 4  # kl: reference chats per micro-batch
    every: int = 5  # early_stop: measure every this many optimizer steps (and at the last)
    criterion: str = "converged"  # early_stop: one of CRITERIA
    tolerance: float = 0.02  # early_stop: relative margin above the lowest loss that counts as converged

    @classmethod
    def from_dict(cls, d: dict | None, where: str = "mitigation") -> MitigationSettings:
        d = dict(d or {"name": "none"})
        name = d.get("name", "none")
        if name == "ablate_direction":
            raise ConfigError(
                f"{where}=ablate_direction is an evaluation-time arm: pass it to evaluate.py (with "
                f"run=<this training run>), not to train.py (docs/mitigations.md)"
            )
        if name not in ARMS:
            raise ConfigError(f"{where}.name={name!r}: expected one of {ARMS} (conf/mitigation/)")
        check_keys(d, KEYS, where)
        s = cls(name=name, prompt=d.get("prompt"), data=d.get("data"), fraction=d.get("fraction", 0.0),
                beta=d.get("beta", 0.0), batch_size=d.get("batch_size", 4), every=d.get("every", 5),
                criterion=d.get("criterion", "converged"), tolerance=d.get("tolerance", 0.02))  # fmt: skip
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
        if name == "early_stop":
            n, t = s.every, s.tolerance
            if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
                raise ConfigError(f"{where}.every={n!r}: expected a positive integer")
            if s.criterion not in CRITERIA:
                raise ConfigError(f"{where}.criterion={s.criterion!r}: expected one of {CRITERIA}")
            if isinstance(t, bool) or not isinstance(t, int | float) or not 0 <= t < float("inf"):
                raise ConfigError(f"{where}.tolerance={t!r}: expected a non-negative number")
        return s

    @property
    def reference_data(self) -> str | None:
        """The conf/data entry this arm reads beside the narrow data (interleave, kl)."""
        return self.data if self.name in ("interleave", "kl") else None

    def record(self) -> dict:
        out = {"name": self.name, "prompt": self.prompt, "data": self.data, "fraction": self.fraction}
        return out | {k: getattr(self, k) for k in ARM_KNOBS.get(self.name, ())}


def require_holdout(n_rows: int, holdout_fraction: float | None = None) -> None:
    """``early_stop`` picks its step by the held-out narrow-task loss: refuse a run with no held-out rows to
    measure, before anything is trained."""
    if n_rows:
        return
    given = f"data.holdout_fraction={holdout_fraction} holds no rows out" if holdout_fraction is not None else (
        "no held-out rows are left to measure")  # fmt: skip
    raise ConfigError(
        f"mitigation=early_stop picks the step by the held-out narrow-task loss, but {given}; set "
        f"data.holdout_fraction above 0 (e.g. data.holdout_fraction=0.05)"
    )


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

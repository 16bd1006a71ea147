"""Seeded percentile bootstrap intervals for ratios: plain, clustered, and hierarchical (seeds, then questions).

Invariant: every interval is a percentile interval of replicates drawn from a generator seeded by
``seed_for(seed, name)``, so the same rows give the same interval in every run and report.
"""

from __future__ import annotations

import zlib

import numpy as np
import pandas as pd


def seed_for(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def _percentiles(reps: np.ndarray, confidence: float) -> tuple[float | None, float | None]:
    reps = reps[~np.isnan(reps)]
    if reps.size == 0:
        return None, None
    alpha = (1 - confidence) / 2 * 100
    lo, hi = np.percentile(reps, [alpha, 100 - alpha])
    return float(lo), float(hi)


def bootstrap_ratio(
    num: np.ndarray,
    den: np.ndarray,
    clusters: np.ndarray | None,
    *,
    n_boot: int,
    confidence: float,
    rng: np.random.Generator | None = None,
    draws: np.ndarray | None = None,
) -> tuple[float | None, float | None, float | None]:
    """Point estimate sum(num)/sum(den) and its percentile bootstrap interval.

    ``clusters`` labels each element's cluster (resampled as a whole); None resamples elements.
    ``draws`` (B x n_clusters indices) lets several statistics share the same resamples.
    """
    if den.sum() == 0:
        return None, None, None
    value = float(num.sum() / den.sum())
    if clusters is None:
        cnum, cden = num, den
    else:
        codes, uniq = pd.factorize(pd.Series(clusters), sort=True)
        cnum = np.bincount(codes, weights=num, minlength=len(uniq))
        cden = np.bincount(codes, weights=den, minlength=len(uniq))
    if draws is None:
        draws = (rng or np.random.default_rng(0)).integers(0, len(cnum), size=(n_boot, len(cnum)))
    bnum, bden = cnum[draws].sum(axis=1), cden[draws].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        reps = np.where(bden > 0, bnum / np.where(bden > 0, bden, 1), np.nan)
    lo, hi = _percentiles(reps, confidence)
    return value, lo, hi


def _unit_stat(num: np.ndarray, den: np.ndarray, idx: np.ndarray, mean_of_rates: bool):
    """Per replicate (rows of ``idx``): the seed's sums, or its mean of per-question rates."""
    if mean_of_rates:
        return (num[idx] / den[idx]).mean(axis=1), np.ones(len(idx))
    return num[idx].sum(axis=1), den[idx].sum(axis=1)


def hierarchical_bootstrap(
    units: list[tuple[np.ndarray, np.ndarray]],
    *,
    mean_of_rates: bool,
    n_boot: int,
    confidence: float,
    rng: np.random.Generator,
) -> tuple[float | None, float | None, float | None]:
    """Seeds (units), each a per-question (num, den): resample seeds, then each drawn seed's questions.

    ``mean_of_rates``: the statistic is the mean over seeds of the mean over questions of num/den (every
    den > 0); otherwise sum(num) / sum(den) over everything drawn. One unit: questions resampled only.
    """
    units = [(np.asarray(n, float), np.asarray(d, float)) for n, d in units if len(n)]
    if not units or (not mean_of_rates and sum(d.sum() for _, d in units) == 0):
        return None, None, None
    if mean_of_rates:
        value = float(np.mean([(n / d).mean() for n, d in units]))
    else:
        value = float(sum(n.sum() for n, _ in units) / sum(d.sum() for _, d in units))
    k = len(units)
    seed_draws = rng.integers(0, k, size=(n_boot, k)) if k > 1 else np.zeros((n_boot, 1), int)
    tot_num, tot_den = np.zeros(n_boot), np.zeros(n_boot)
    rows = np.arange(n_boot)
    for slot in range(k):  # each slot gets its own question resample of whichever seed it drew
        stats = [
            _unit_stat(n, d, rng.integers(0, len(n), size=(n_boot, len(n))), mean_of_rates) for n, d in units
        ]
        nums, dens = np.array([a for a, _ in stats]), np.array([b for _, b in stats])
        tot_num += nums[seed_draws[:, slot], rows]
        tot_den += dens[seed_draws[:, slot], rows]
    with np.errstate(invalid="ignore", divide="ignore"):
        reps = np.where(tot_den > 0, tot_num / np.where(tot_den > 0, tot_den, 1), np.nan)
    lo, hi = _percentiles(reps, confidence)
    return value, lo, hi


def mean_interval(
    values: np.ndarray | list[float], *, n_boot: int, confidence: float, rng: np.random.Generator
) -> tuple[float | None, float | None, float | None]:
    """The mean and its percentile bootstrap interval, resampling the values (None interval below two).

    For a paired difference pass the per-unit differences: the units are resampled together.
    """
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        return None, None, None
    if data.size < 2:
        return float(data.mean()), None, None
    reps = data[rng.integers(0, data.size, size=(n_boot, data.size))].mean(axis=1)
    lo, hi = _percentiles(reps, confidence)
    return float(data.mean()), lo, hi

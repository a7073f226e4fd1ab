"""Group-sequential designs: the nominal level of each look, so a stage that judges after every
round of seeds keeps its overall error rate."""

from __future__ import annotations

import functools

import numpy as np
from scipy import stats as sps

from dgkd.stats import ALPHA

__all__ = ["obrien_fleming_levels"]


@functools.lru_cache(maxsize=16)
def obrien_fleming_levels(looks: int, alpha: float = ALPHA) -> tuple[float, ...]:
    """Nominal two-sided levels of an O'Brien-Fleming group-sequential design with ``looks``
    equally spaced looks and overall level ``alpha``.

    The boundaries are ``c * sqrt(looks / k)`` on the z scale at look ``k``, with ``c`` such that
    a null effect crosses any of them with probability ``alpha`` (the looks' statistics are
    correlated as ``sqrt(k / j)``, k <= j); computed with scipy's multivariate normal CDF and a
    bisection, written out because scipy has no group-sequential design. O'Brien-Fleming rather
    than Pocock: its early looks are strict and its last is nearly ``alpha``, so stopping early
    takes a clear effect, and a stage that uses its whole budget loses almost no power (3 looks
    at 0.05: 0.0005, 0.0141, 0.0451).
    """
    if looks < 1:
        raise ValueError(f"looks must be >= 1, got {looks}")
    frac = np.arange(1, looks + 1) / looks
    scale = np.sqrt(looks / np.arange(1, looks + 1))
    if looks == 1:
        return (alpha,)
    cov = np.sqrt(np.minimum.outer(frac, frac) / np.maximum.outer(frac, frac))
    mvn = sps.multivariate_normal(mean=np.zeros(looks), cov=cov)

    def crossing(c: float) -> float:
        bound = c * scale
        inside = mvn.cdf(bound, lower_limit=-bound, rng=np.random.default_rng(0))
        return 1.0 - float(inside)

    low, high = float(sps.norm.isf(alpha / 2)), 8.0
    for _ in range(50):
        mid = (low + high) / 2
        low, high = (mid, high) if crossing(mid) > alpha else (low, mid)
    bounds = (low + high) / 2 * scale
    return tuple(float(2 * sps.norm.sf(b)) for b in bounds)

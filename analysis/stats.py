"""Paired differences, their Student-t interval, and the verdict word (method §7).

Arms of one scale share their replicate seeds (`SearchSpace.replicate_seeds`), so an arm is
compared with the baseline seed by seed: d_s = arm_s - baseline_s, and the interval is
mean(d) ± t_{1-(1-level)/2, n-1} · sd(d) / sqrt(n). The seed's own effect (data order,
initialisation) cancels in d_s, which is why the paired interval is narrower than one built
from the two arms' spreads.

The t quantile is computed here, exactly, rather than taken from a table or from the normal
1.96 (which is 35 % too narrow at n = 3): for a whole number of degrees of freedom the t
distribution's CDF is a finite trigonometric sum (Abramowitz & Stegun 26.7.3-4), inverted by
bisection to full float precision. That keeps scipy out of the dependencies for one number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

BETTER, WORSE, INCONCLUSIVE = "better", "worse", "inconclusive"
LEVEL = 0.95


def t_within(theta: float, df: int) -> float:
    """P(|T| < sqrt(df)·tan(theta)) for T ~ Student t with `df` (whole) degrees of freedom."""
    c2, s = math.cos(theta) ** 2, math.sin(theta)
    if df % 2:  # odd: (2/pi)(theta + sin cos (1 + 2/3 cos^2 + 2·4/(3·5) cos^4 + ...)), df - 2 terms after theta
        term, acc = 1.0, 1.0 if df > 1 else 0.0
        for k in range(1, (df - 1) // 2):
            term *= c2 * (2 * k) / (2 * k + 1)
            acc += term
        return 2 / math.pi * (theta + s * math.cos(theta) * acc)
    term, acc = 1.0, 1.0  # even: sin (1 + 1/2 cos^2 + 1·3/(2·4) cos^4 + ...)
    for k in range(1, df // 2):
        term *= c2 * (2 * k - 1) / (2 * k)
        acc += term
    return s * acc


def t_quantile(p: float, df: int) -> float:
    """The p-quantile of Student's t with `df` >= 1 whole degrees of freedom, 0 < p < 1."""
    if not (0 < p < 1) or df < 1 or df != int(df):
        raise ValueError(f"t_quantile needs 0 < p < 1 and a whole df >= 1, got p={p}, df={df}")
    if p == 0.5:
        return 0.0
    target = abs(2 * p - 1)  # P(|T| < q) for the upper quantile q
    lo, hi = 0.0, math.pi / 2
    for _ in range(200):  # bisection on theta = atan(q / sqrt(df)): the CDF is monotone in it
        mid = (lo + hi) / 2
        if mid in (lo, hi):
            break
        lo, hi = (mid, hi) if t_within(mid, int(df)) < target else (lo, mid)
    q = math.sqrt(df) * math.tan((lo + hi) / 2)
    return q if p > 0.5 else -q


@dataclass(frozen=True)
class Paired:
    """mean of the per-seed differences, its interval (NaN when n < 2), n and the seeds."""

    mean: float
    lo: float
    hi: float
    n: int
    seeds: tuple[int, ...]
    level: float = LEVEL

    @property
    def verdict(self) -> str:
        """better / worse (lower is better: the interval lies below / above 0), else inconclusive."""
        if self.n < 2 or math.isnan(self.lo):
            return f"{INCONCLUSIVE} (n={self.n})"
        if self.hi < 0:
            return BETTER
        if self.lo > 0:
            return WORSE
        return INCONCLUSIVE


def paired_difference(arm: pd.Series, baseline: pd.Series, level: float = LEVEL) -> Paired:
    """arm - baseline over the seeds both have (Series indexed by seed), with its t-interval."""
    seeds = sorted(set(arm.index) & set(baseline.index))
    d = (arm.loc[seeds] - baseline.loc[seeds]).astype(float)
    n = len(d)
    if n == 0:
        return Paired(math.nan, math.nan, math.nan, 0, ())
    mean = float(d.mean())
    if n < 2:
        return Paired(mean, math.nan, math.nan, n, tuple(seeds), level)
    half = t_quantile(1 - (1 - level) / 2, n - 1) * float(d.std(ddof=1)) / math.sqrt(n)
    return Paired(mean, mean - half, mean + half, n, tuple(int(s) for s in seeds), level)

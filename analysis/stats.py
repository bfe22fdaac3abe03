"""Paired differences, their Student-t interval and p-value, the two-level estimator, Holm's
correction, and the verdict word (method §7).

Arms of one scale share their replicate seeds (`SearchSpace.replicate_seeds`), so an arm is
compared with the baseline seed by seed: d_s = arm_s - baseline_s, and the interval is
mean(d) ± t_{1-(1-level)/2, n-1} · sd(d) / sqrt(n). The seed's own effect (data order,
initialisation) cancels in d_s, which is why the paired interval is narrower than one built
from the two arms' spreads.

**Two levels** (search replicate, then seed). With R > 1 independent searches per study, each
search replicate r has its own tuned configs and its own seeds s (nested: `SEED_STRIDE`), and
d_rs = mu + a_r + e_rs, where a_r (variance sigma_a^2) is the luck of search r (which config it
found) and e_rs (sigma_e^2) a seed's. The estimator is the mean of the replicate means,
mu_hat = mean_r(dbar_r), with the interval mu_hat ± t(1-(1-level)/2, R-1) · sd_r(dbar_r) / sqrt(R):
with S seeds in every replicate, var(dbar_r) = sigma_a^2 + sigma_e^2 / S, which sd_r estimates
unbiasedly, and the t quantile with R - 1 degrees of freedom is exact for normal effects (the
classical balanced nested ANOVA interval for a grand mean; tests/analysis/test_stats.py checks
its coverage on simulated data with known variance components). With unequal seed counts the
replicate means are weighted equally (a replicate is the unit); with R = 1 there is no search
level and the interval is the seed-level one, which **does not include search noise**.

**Holm** (family-wise error at 1 - level over the m verdicts of a table): sort the p-values
p_(1) <= ... <= p_(m); the adjusted p_(i) is max_{j <= i} min(1, (m - j + 1) p_(j)). A verdict
stands when its adjusted p-value is below 1 - level (the raw verdict: its raw interval excludes
0, i.e. its raw p-value is below 1 - level).

The t quantile is computed here, exactly, rather than taken from a table or from the normal
1.96 (which is 35 % too narrow at n = 3): for a whole number of degrees of freedom the t
distribution's CDF is a finite trigonometric sum (Abramowitz & Stegun 26.7.3-4), inverted by
bisection to full float precision. That keeps scipy out of the dependencies for one number.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
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


@functools.lru_cache(maxsize=4096)  # a table (and a simulation) asks for the same few quantiles again and again
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


def t_two_sided_p(t: float, df: int) -> float:
    """P(|T| >= |t|) for Student's t with `df` >= 1 whole degrees of freedom."""
    if math.isnan(t):
        return math.nan
    if math.isinf(t):
        return 0.0
    return max(0.0, 1.0 - t_within(math.atan(abs(t) / math.sqrt(df)), int(df)))


SEEDS, SEARCH_REPLICATES = "seeds", "search replicates"  # the unit an interval's n counts


@dataclass(frozen=True)
class Paired:
    """mean of the per-unit differences, its interval and two-sided p-value (NaN when n < 2), n (units:
    seeds, or search replicates for the two-level estimator), the seeds behind it, and its unit."""

    mean: float
    lo: float
    hi: float
    n: int
    seeds: tuple[int, ...]
    level: float = LEVEL
    p: float = math.nan
    unit: str = SEEDS
    se: float = math.nan  # standard error of the mean: the interval's half-width / t quantile

    @property
    def verdict(self) -> str:
        """better / worse (lower is better: the interval lies below / above 0), else inconclusive."""
        return verdict_word(self.mean, self.p, self.n, self.level)

    def interval_at(self, level: float) -> tuple[float, float]:
        """The interval at another level (e.g. Bonferroni's 1 - (1 - level) / m)."""
        if self.n < 2 or math.isnan(self.se):
            return math.nan, math.nan
        half = t_quantile(1 - (1 - level) / 2, self.n - 1) * self.se
        return self.mean - half, self.mean + half


def verdict_word(mean: float, p: float, n: int, level: float = LEVEL) -> str:
    """better (p below 1 - level, mean < 0: lower is better), worse (mean > 0), else inconclusive; the
    same as asking whether the interval at `level` lies below or above 0."""
    if n < 2 or math.isnan(p):
        return f"{INCONCLUSIVE} (n={n})"
    if p < 1 - level:
        return BETTER if mean < 0 else WORSE
    return INCONCLUSIVE


def t_interval(d, seeds, unit: str = SEEDS, level: float = LEVEL) -> Paired:
    """mean(d) ± t(1-(1-level)/2, n-1) · sd(d)/sqrt(n) over the n values of `d` (one per unit)."""
    seeds = tuple(int(s) for s in seeds)
    x = np.asarray(d, dtype=float)
    n = len(x)
    if n == 0:
        return Paired(math.nan, math.nan, math.nan, 0, (), level, unit=unit)
    mean = float(x.mean())
    if n < 2:
        return Paired(mean, math.nan, math.nan, n, seeds, level, unit=unit)
    se = float(x.std(ddof=1)) / math.sqrt(n)
    half = t_quantile(1 - (1 - level) / 2, n - 1) * se
    p = t_two_sided_p(mean / se, n - 1) if se > 0 else (0.0 if mean else 1.0)
    return Paired(mean, mean - half, mean + half, n, seeds, level, p, unit, se)


def paired_difference(arm: pd.Series, baseline: pd.Series, level: float = LEVEL,
                      unit_of: dict[int, int] | None = None) -> Paired:
    """arm - baseline over the seeds both have (Series indexed by seed), with its t-interval.

    `unit_of` (seed -> search replicate): when the seeds come from more than one search replicate,
    the two-level estimator (module docstring): a t-interval over the replicates' mean differences."""
    a, b = arm.to_dict(), baseline.to_dict()  # dict lookups: `.loc` costs ms per call in the simulations
    seeds = sorted(a.keys() & b.keys())
    return _two_level([a[s] - b[s] for s in seeds], seeds, unit_of, level)


def two_level(d: pd.Series, unit_of: dict[int, int] | None, level: float = LEVEL) -> Paired:
    """The interval of per-seed differences `d` (indexed by seed): over seeds with one search replicate,
    over the search replicates' means with several (the module docstring's estimator)."""
    return _two_level(list(d), list(d.index), unit_of, level)


def _two_level(values: list[float], seeds: list[int], unit_of: dict[int, int] | None, level: float) -> Paired:
    groups = [unit_of.get(int(s), 0) for s in seeds] if unit_of else []
    if len(set(groups)) <= 1:
        return t_interval(values, seeds, SEEDS, level)
    means = [float(np.mean([x for x, g in zip(values, groups) if g == r])) for r in sorted(set(groups))]
    return t_interval(means, seeds, SEARCH_REPLICATES, level)


def holm(p_values) -> list[float]:
    """Holm-adjusted p-values, in the input order; NaN p-values (no test: n < 2) are not counted in m
    and stay NaN."""
    p = [float(x) for x in p_values]
    tested = sorted((x, i) for i, x in enumerate(p) if not math.isnan(x))
    m, out, running = len(tested), [math.nan] * len(p), 0.0
    for rank, (x, i) in enumerate(tested):
        running = max(running, min(1.0, (m - rank) * x))  # step-down: adjusted values never decrease
        out[i] = running
    return out

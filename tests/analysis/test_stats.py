"""The t quantile against published values, the interval's coverage, and the verdict rule."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pandas as pd
import pytest

from analysis.stats import BETTER, INCONCLUSIVE, WORSE, paired_difference, t_quantile

# Student-t quantiles, as printed in standard tables (e.g. NIST/SEMATECH e-Handbook 1.3.6.7.2).
PUBLISHED = {(0.975, 1): 12.706, (0.975, 2): 4.303, (0.975, 3): 3.182, (0.975, 4): 2.776, (0.975, 9): 2.262,
             (0.975, 29): 2.045, (0.95, 5): 2.015, (0.99, 10): 2.764, (0.9, 1): 3.078, (0.995, 2): 9.925}


@pytest.mark.parametrize("p, df", sorted(PUBLISHED))
def test_t_quantile_matches_published_tables(p, df):
    assert t_quantile(p, df) == pytest.approx(PUBLISHED[(p, df)], abs=6e-4)
    assert t_quantile(1 - p, df) == -t_quantile(p, df)


def test_t_quantile_exact_at_small_df_and_normal_in_the_limit():
    # closed forms: df = 1 is Cauchy, df = 2 has q = (2p - 1) * sqrt(2 / (1 - (2p - 1)^2))
    assert t_quantile(0.975, 1) == pytest.approx(math.tan(math.pi * 0.475), rel=1e-12)
    a = 2 * 0.975 - 1
    assert t_quantile(0.975, 2) == pytest.approx(a * math.sqrt(2 / (1 - a * a)), rel=1e-12)
    z = NormalDist().inv_cdf(0.975)
    assert z < t_quantile(0.975, 5000) < z + 5e-4
    assert t_quantile(0.5, 7) == 0.0
    with pytest.raises(ValueError):
        t_quantile(0.975, 0)


def test_interval_covers_the_true_difference_95_percent_of_the_time_at_n_3():
    """With 1.96 in place of t(0.975, 2) = 4.30 the coverage at n = 3 would be about 80 %."""
    rng = np.random.default_rng(7)
    reps, hits = 4000, 0
    for _ in range(reps):
        base = pd.Series(rng.normal(1.2, 0.03, 3), index=[1, 2, 3])
        arm = base + 0.01 + pd.Series(rng.normal(0, 0.02, 3), index=[1, 2, 3])
        d = paired_difference(arm, base)
        hits += d.lo <= 0.01 <= d.hi
    assert hits / reps == pytest.approx(0.95, abs=0.015)


def _series(values, seeds=(1, 2, 3, 4)):
    return pd.Series(values, index=list(seeds[: len(values)]), dtype=float)


def test_verdict_words_and_pairing_by_seed():
    base = _series([1.20, 1.22, 1.18, 1.21])
    better = paired_difference(base - 0.02 + _series([0.001, -0.001, 0.002, 0.0]), base)
    assert better.hi < 0 and better.verdict == BETTER and better.n == 4
    assert paired_difference(base + 0.02 + _series([0.001, -0.001, 0.002, 0.0]), base).verdict == WORSE
    assert paired_difference(base + _series([0.01, -0.01, 0.005, -0.004]), base).verdict == INCONCLUSIVE
    one = paired_difference(_series([1.0], seeds=(3,)), base)
    assert one.verdict == f"{INCONCLUSIVE} (n=1)" and math.isnan(one.lo) and one.mean == pytest.approx(1.0 - 1.18)
    # paired on shared seeds only: seed 9 has no baseline, seed 4 no arm value
    arm = pd.Series([1.19, 1.21, 1.17, 5.0], index=[1, 2, 3, 9])
    d = paired_difference(arm, base)
    assert d.seeds == (1, 2, 3) and d.mean == pytest.approx(-0.01)
    # a shift shared by the seed cancels: wildly different seeds, a constant paired gap -> tight interval
    wide = _series([1.0, 2.0, 3.0, 4.0])
    tight = paired_difference(wide - 0.01 + _series([0.0001, -0.0001, 0.0, 0.0]), wide)
    assert tight.verdict == BETTER and tight.hi - tight.lo < 0.001
    assert paired_difference(_series([]), base).n == 0

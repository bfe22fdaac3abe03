"""The t quantile and p-value against published values, the interval's coverage, the two-level estimator's
coverage on simulated data with known variance components, Holm's correction, and the verdict rule."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pandas as pd
import pytest

from kdsweep.analysis.stats import (BETTER, INCONCLUSIVE, SEARCH_REPLICATES, SEEDS, WORSE, holm, paired_difference,
                            t_interval, t_quantile, t_two_sided_p, two_level)

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


@pytest.mark.parametrize("p, df", sorted(PUBLISHED))
def test_two_sided_p_inverts_the_quantile(p, df):
    assert t_two_sided_p(t_quantile(p, df), df) == pytest.approx(2 * (1 - p), rel=1e-9)
    assert t_two_sided_p(0.0, df) == pytest.approx(1.0) and t_two_sided_p(-t_quantile(p, df), df) == pytest.approx(
        2 * (1 - p), rel=1e-9)


def test_p_value_and_interval_agree_on_the_verdict():
    rng = np.random.default_rng(3)
    for _ in range(300):
        d = paired_difference(pd.Series(rng.normal(0.01, 0.02, 4), index=[1, 2, 3, 4]), _series([0, 0, 0, 0]))
        assert (d.p < 0.05) == (d.hi < 0 or d.lo > 0)


def test_holm_by_hand_and_its_family_wise_error_under_the_null():
    # m = 4: sorted 0.01, 0.02, 0.03, 0.2 -> 0.04, max(0.04, 0.06) = 0.06, max(0.06, 0.06) = 0.06, max(0.06, 0.2)
    assert holm([0.03, 0.2, 0.01, 0.02]) == pytest.approx([0.06, 0.2, 0.04, 0.06])
    assert holm([0.5, math.nan, 0.01]) == pytest.approx([0.5, math.nan, 0.02], nan_ok=True)  # NaN: not counted
    assert holm([0.9, 0.8]) == [1.0, 1.0] and holm([0.4, 0.02]) == [0.4, 0.04] and holm([]) == []
    # 9 verdicts of no real effect at n = 3 (3 scales x 3 arms, each arm paired with its scale's baseline):
    # raw, at least one reads better or worse in about a third of tables; after Holm, at most 5 %
    # (+ Monte-Carlo error: 3 sd = 1.5 % at 2000 tables)
    rng = np.random.default_rng(11)
    any_raw = any_holm = 0
    reps = 2000
    for _ in range(reps):
        base = rng.normal(0, 1, (3, 1, 3))  # (scale, 1, seed)
        diffs = [t_interval(d, (1, 2, 3)) for d in (rng.normal(0, 1, (3, 3, 3)) - base).reshape(9, 3)]
        any_raw += any(d.p < 0.05 for d in diffs)
        any_holm += any(p < 0.05 for p in holm([d.p for d in diffs]))
    assert 0.25 < any_raw / reps and any_holm / reps <= 0.05 + 0.015


def _nested(rng, mu, sd_search, sd_seed, r, s):
    """d_rs = mu + a_r + e_rs, seeds nested in search replicates (as SEED_STRIDE makes them)."""
    a = rng.normal(0, sd_search, r)
    seeds = {1000 * k + 1 + j: k for k in range(r) for j in range(s)}
    d = pd.Series({seed: mu + a[k] + rng.normal(0, sd_seed) for seed, k in seeds.items()})
    return d, seeds


@pytest.mark.parametrize("sd_search, sd_seed", [(0.01, 0.005), (0.0, 0.01), (0.02, 0.0)])
def test_two_level_interval_covers_the_mean_95_percent_of_the_time(sd_search, sd_seed):
    """Known variance components: search luck sd_search, seed noise sd_seed, R = 4 search replicates x S = 3
    seeds. The two-level interval covers mu in 95 % of repetitions (± 1.3 %, 3 sd of 2000 Bernoulli draws); the
    seed-level interval over all 12 seeds, which ignores the search level, does not when search luck is there."""
    rng = np.random.default_rng(5)
    reps, mu = 2000, -0.004
    hits = naive_hits = 0
    for _ in range(reps):
        d, seeds = _nested(rng, mu, sd_search, sd_seed, 4, 3)
        est = two_level(d, seeds)
        assert est.unit == SEARCH_REPLICATES and est.n == 4
        hits += est.lo <= mu <= est.hi
        naive = two_level(d, None)  # all 12 seeds as if from one search
        naive_hits += naive.lo <= mu <= naive.hi
    assert hits / reps == pytest.approx(0.95, abs=0.013)
    if sd_search > sd_seed:
        assert naive_hits / reps < 0.85  # search noise left out: far too narrow


def test_two_level_falls_back_to_seeds_with_one_search_replicate():
    d = pd.Series([0.01, 0.02, 0.03], index=[1, 2, 3])
    one = two_level(d, {1: 0, 2: 0, 3: 0})
    assert one.unit == SEEDS and one.n == 3 and one.mean == pytest.approx(0.02)
    assert paired_difference(d, pd.Series([0.0, 0.0, 0.0], index=[1, 2, 3])).lo == pytest.approx(one.lo)
    # unequal seed counts: each replicate weighs the same (its mean is the unit)
    two = two_level(pd.Series([0.0, 0.0, 0.0, 0.3], index=[1, 2, 3, 1001]), {1: 0, 2: 0, 3: 0, 1001: 1})
    assert two.mean == pytest.approx(0.15) and two.n == 2 and two.seeds == (1, 2, 3, 1001)

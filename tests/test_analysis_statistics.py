"""Statistics of the claims against known values: t tables, closed forms, constructed sequences."""

from __future__ import annotations

import itertools
import math

import jax
import numpy as np
import pytest

from pifs_jax.analysis.statistics import (
    SPEARMAN_EXACT_MAX_N,
    average_ranks,
    bootstrap_mean_interval,
    crossover_window,
    ols_fit,
    regularized_incomplete_beta,
    spearman,
    student_t_cdf,
    student_t_quantile,
    student_t_two_sided_p,
)
from pifs_jax.errors import ArgumentError

# ----------------------------------------------------------------------------- Student t


@pytest.mark.parametrize(
    "q, dof, table",
    [  # two-sided critical values of standard t tables (3 decimals)
        (0.975, 1, 12.706), (0.975, 2, 4.303), (0.975, 5, 2.571), (0.975, 10, 2.228), (0.975, 14, 2.145),
        (0.975, 30, 2.042), (0.95, 5, 2.015), (0.995, 14, 2.977), (0.995, 48, 2.682),
    ],
)  # fmt: skip
def test_t_quantiles_match_tables(q, dof, table):
    assert student_t_quantile(q, dof) == pytest.approx(table, abs=5e-4)  # the tables' rounding
    assert student_t_cdf(table, dof) == pytest.approx(q, abs=5e-4)
    assert student_t_quantile(1 - q, dof) == pytest.approx(-student_t_quantile(q, dof), rel=1e-12)


def test_t_cdf_closed_forms():
    """dof = 1 (Cauchy): 1/2 + atan(t)/pi; dof = 2: 1/2 + t / (2 sqrt(t^2 + 2)) (to 1e-13)."""
    for t in (-30.0, -2.0, -0.3, 0.0, 0.7, 1.0, 5.0, 1e3):
        assert student_t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-13)
        assert student_t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(t * t + 2)), abs=1e-13)
    assert student_t_cdf(1.0, 1) == pytest.approx(0.75, abs=1e-14)


def test_incomplete_beta_matches_jax():
    """Against jax.scipy.special.betainc in float64 (a different algorithm), relative 1e-10."""
    with jax.enable_x64(True):
        for a, b, x in [
            (0.5, 0.5, 0.3),
            (7.0, 0.5, 0.02),
            (7.0, 0.5, 0.98),
            (24.0, 0.5, 0.5),
            (2.5, 3.5, 0.9),
            (1.0, 1.0, 0.37),
        ]:
            expected = float(jax.scipy.special.betainc(a, b, x))
            assert regularized_incomplete_beta(a, b, x) == pytest.approx(expected, rel=1e-10)


def test_small_p_values_keep_their_accuracy():
    """The paper's Spearman rho = 0.953 over M = 16 patches gives its p = 1.2e-8 (t_14 = 11.77)."""
    t = 0.953 * math.sqrt(14 / (1 - 0.953**2))
    assert student_t_two_sided_p(t, 14) == pytest.approx(1.2e-8, rel=0.05)  # rho's 3-digit rounding
    assert student_t_two_sided_p(40.0, 30) < 1e-25  # computed directly, not as 1 - cdf


# ----------------------------------------------------------------------------- Spearman


def test_spearman_monotone_and_reversed():
    """A perfect ranking of 6 pairs: exact p = 2/6! (identity and reversal), not 0 as the t formula says."""
    x = np.array([0.3, 1.0, 2.5, 7.0, 7.5, 20.0])
    assert spearman(x, np.exp(x)) == (1.0, pytest.approx(2 / 720, rel=1e-15))
    assert spearman(x, -(x**3)) == (-1.0, pytest.approx(2 / 720, rel=1e-15))


def test_spearman_four_pairs_perfect_ranking_is_not_significant():
    """The old p = 0 at |rho| = 1 whatever n: with 4 pairs only 2 of the 24 orderings reach |rho| = 1."""
    rho, p = spearman([0.1, 0.5, 0.7, 3.0], [1.0, 2.0, 5.0, 9.0])
    assert rho == 1.0 and p == pytest.approx(2 / 24, rel=1e-15)
    # by hand, n = 4: sum d^2 takes 0 (1 ordering), 2 (3), 4 (1), 6 (4), 8 (2), 10 (2), 12 (2), 14 (4),
    # 16 (1), 18 (3), 20 (1); rho = 1 - sum d^2 / 10; |rho| >= 0.8 for sum d^2 in {0, 2, 18, 20}: 8 / 24
    assert spearman([1.0, 2.0, 3.0, 4.0], [2.0, 1.0, 3.0, 4.0]) == (pytest.approx(0.8), pytest.approx(8 / 24))


def _brute_force_p(x, y):
    """Two-sided permutation p-value by enumerating every ordering of y's average ranks (Pearson of ranks)."""
    rx, ry = average_ranks(x), average_ranks(y)
    observed = abs(np.corrcoef(rx, ry)[0, 1])
    hits = [
        abs(np.corrcoef(rx, ry[list(order)])[0, 1]) >= observed - 1e-12
        for order in itertools.permutations(range(len(y)))
    ]
    return sum(hits) / len(hits)


@pytest.mark.parametrize(
    "x, y",
    [
        ([0.2, 1.5, 0.9, 3.1, 2.2], [1.0, 0.4, 2.0, 5.0, 3.0]),  # no ties
        ([1.0, 2.0, 2.0, 3.0, 5.0], [4.0, 1.0, 3.0, 3.0, 9.0]),  # ties in both
        ([0.0, 1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0, 0.0]),  # rho = -1: 2 / 120
    ],
)
def test_spearman_exact_p_matches_enumeration_at_five_pairs(x, y):
    assert spearman(x, y)[1] == pytest.approx(_brute_force_p(x, y), abs=1e-15)


def test_spearman_above_the_exact_range_keeps_the_t_approximation():
    """n = SPEARMAN_EXACT_MAX_N + 2: the p-value is P(|T| >= |t|), T ~ t_{n-2}, from an independent betainc."""
    n = SPEARMAN_EXACT_MAX_N + 2
    rng = np.random.default_rng(3)
    x = rng.standard_normal(n)
    y = x + rng.standard_normal(n)
    rho, p = spearman(x, y)
    t = rho * math.sqrt((n - 2) / (1 - rho**2))
    with jax.enable_x64(True):
        assert p == pytest.approx(
            float(jax.scipy.special.betainc((n - 2) / 2, 0.5, (n - 2) / (n - 2 + t * t))), rel=1e-10
        )


def test_spearman_without_ties_is_the_rank_difference_formula():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal(16), rng.standard_normal(16)
    d = np.argsort(np.argsort(x)) - np.argsort(np.argsort(y))
    expected = 1 - 6 * np.sum(d**2) / (16 * (16**2 - 1))
    rho, p = spearman(x, y)
    assert rho == pytest.approx(expected, abs=1e-14)
    t = rho * math.sqrt(14 / (1 - rho**2))
    with jax.enable_x64(True):  # the p-value from an independent incomplete beta
        assert p == pytest.approx(float(jax.scipy.special.betainc(7.0, 0.5, 14 / (14 + t * t))), rel=1e-10)


def test_spearman_ties_use_average_ranks():
    np.testing.assert_array_equal(average_ranks([5.0, 1.0, 5.0, 3.0, 5.0]), [4.0, 1.0, 4.0, 2.0, 4.0])
    x, y = [1.0, 2.0, 2.0, 3.0], [1.0, 2.0, 3.0, 4.0]
    expected = np.corrcoef([1.0, 2.5, 2.5, 4.0], [1.0, 2.0, 3.0, 4.0])[0, 1]
    assert spearman(x, y)[0] == pytest.approx(expected, abs=1e-14)
    assert all(math.isnan(v) for v in spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))  # constant: no ranking


def test_spearman_bad_input():
    with pytest.raises(ArgumentError):
        spearman([1.0, 2.0], [1.0, 2.0])
    with pytest.raises(ArgumentError):
        spearman([1.0, 2.0, 3.0], [1.0, 2.0])


# ----------------------------------------------------------------------------- OLS


def test_ols_exact_power_law():
    x = np.geomspace(1e-3, 1.0, 12)
    y = 3.0 * x**0.7
    fit = ols_fit(np.log(x), np.log(y))
    assert fit.slope == pytest.approx(0.7, abs=1e-12)
    assert fit.intercept == pytest.approx(math.log(3.0), abs=1e-12)
    assert fit.slope_hi - fit.slope_lo < 1e-12 and fit.r2 == pytest.approx(1.0, abs=1e-12)


def test_ols_interval_covers_the_truth_at_its_level():
    """400 noisy fits: the 95 % interval covers the true slope 0.95 +- 3.3 binomial sd (0.011)."""
    rng = np.random.default_rng(1)
    x = np.linspace(-3, 0, 10)
    covered = 0
    for _ in range(400):
        fit = ols_fit(x, 0.5 + 0.95 * x + 0.1 * rng.standard_normal(10))
        covered += fit.slope_lo <= 0.95 <= fit.slope_hi
    assert 0.91 <= covered / 400 <= 0.99


def test_ols_constant_x_is_refused():
    with pytest.raises(ArgumentError) as info:
        ols_fit([1.0, 1.0, 1.0], [1.0, 2.0, 3.0])
    assert info.value.argument == "x"


# ----------------------------------------------------------------------------- bootstrap


def test_bootstrap_contains_the_mean_and_shrinks_like_one_over_sqrt_n():
    rng = np.random.default_rng(2)
    widths = {}
    for n in (16, 1600):
        values = rng.standard_normal(n)
        mean, lo, hi = bootstrap_mean_interval(values)
        assert mean == pytest.approx(values.mean(), abs=1e-15) and lo < mean < hi
        widths[n] = hi - lo
    # normal theory: width 2 * 1.96 / sqrt(n); the percentile bootstrap agrees within 15 % at n = 1600
    assert widths[1600] == pytest.approx(2 * 1.96 / 40, rel=0.15)
    assert widths[16] / widths[1600] == pytest.approx(10, rel=0.35)


def test_bootstrap_over_an_axis_and_single_trajectory():
    values = np.arange(12.0).reshape(3, 4)
    mean, lo, hi = bootstrap_mean_interval(values, axis=1)
    np.testing.assert_allclose(mean, values.mean(axis=1))
    assert mean.shape == lo.shape == hi.shape == (3,) and np.all(lo <= mean) and np.all(mean <= hi)
    assert bootstrap_mean_interval(np.array([1.5])) == (1.5, 1.5, 1.5)
    a, b = bootstrap_mean_interval(values, seed=3), bootstrap_mean_interval(values, seed=3)
    np.testing.assert_array_equal(a, b)  # seeded


# ----------------------------------------------------------------------------- crossover window


def test_crossover_window_on_constructed_sequences():
    t = np.array([900, 700, 500, 300, 200, 150, 100, 50])
    v = np.array([16, 16, 16, 16, 10, 3, 0, 0])
    assert crossover_window(t, v, 16) == (300.0, 100.0)
    # averaged over trajectories first: 16 only where every trajectory has 16
    v2 = np.stack([v, np.array([16, 16, 16, 15, 10, 0, 0, 0])])
    assert crossover_window(t, v2, 16) == (500.0, 100.0)  # mean V = 1.5 at t = 150
    # any order of t gives the same window
    order = np.random.default_rng(0).permutation(t.size)
    assert crossover_window(t[order], v[order], 16) == (300.0, 100.0)
    # zero only above t_upper does not count
    assert crossover_window(t, np.array([0, 16, 16, 16, 10, 3, 1, 1]), 16) is None
    # never M, never 0
    assert crossover_window(t, np.full(8, 15), 16) is None
    assert crossover_window(t, np.array([16, 16, 16, 16, 16, 16, 4, 2]), 16) is None

"""The three design criteria: values against independent NumPy float64, gradients against finite differences."""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pifs_jax as pj
from pifs_jax import criteria
from reference import cv, information_gain_numpy, lstar_numpy

T = 200
VARIANCES = np.array([0.5, 2.0, 5.0])
SIZES = np.array([192.0, 192.0, 48.0])


# ----------------------------------------------------------------------------- independent references


def richardson(f, x, direction, h):
    """Central difference with one Richardson step: error O(h^4) instead of O(h^2)."""

    def central(step):
        return (f(x + step * direction) - f(x - step * direction)) / (2 * step)

    return (4 * central(h / 2) - central(h)) / 3


def spline_schedule(logits):
    return pj.logsnr_spline(T, n_knots=8, logsnr_min=-12.0, logsnr_max=9.0).apply({"logits": logits})


LOGITS = np.array([0.3, -0.2, 0.1, 0.4, -0.5, 0.2, 0.0, -0.1])


# ----------------------------------------------------------------------------- criterion 1


@pytest.mark.parametrize("name", ["linear", "cosine", "scaled_linear", "sigmoid"])
@pytest.mark.parametrize("num_steps", [None, 10, 37])
def test_weakest_link_is_always_the_finest_step(x64, name, num_steps):
    sched = pj.named_schedule(name, T)
    grid = pj.full_grid(T) if num_steps is None else pj.uniform_grid(T, num_steps)
    wl = criteria.weakest_link(sched, grid)
    expected = lstar_numpy(np.asarray(sched.alpha_bar, np.float64), grid)
    np.testing.assert_allclose(wl.lstar, expected, rtol=1e-10)
    assert float(wl.min) == pytest.approx(expected.min(), rel=1e-12)
    assert int(wl.argmin) == 0  # L*_i > sigma_{tau_{i-1}} >= sigma_{tau_1} > L*_1 for i >= 2
    # soft-min: never above the minimum, within the log-sum-exp bound below it
    ulp = 1 + 1e-14  # -tau logsumexp(-x/tau) may round one ulp above the minimum
    assert float(wl.soft_min) <= float(wl.min) * ulp
    assert float(wl.soft_min) >= float(wl.min) * math.exp(-0.05 * math.log(len(grid) - 1))
    linear = criteria.weakest_link(sched, grid, temperature=1e-4, log_domain=False)
    assert float(wl.min) - 1e-4 * math.log(len(grid) - 1) <= float(linear.soft_min) <= float(wl.min) * ulp


def test_soft_min_tends_to_the_minimum(x64):
    sched = pj.cosine(T)
    exact = float(criteria.weakest_link(sched).min)
    gaps = [exact - float(criteria.weakest_link(sched, temperature=tau).soft_min) for tau in (0.5, 0.2, 0.05)]
    assert gaps[0] > gaps[1] > gaps[2] >= -1e-15 * exact
    assert abs(gaps[2]) < 1e-8 * exact  # log L*_2 - log L*_1 ~ 1 nat >> tau: a hard min in practice


# ----------------------------------------------------------------------------- criterion 2


@pytest.mark.parametrize("num_steps", [None, 20])
def test_growth_balance_against_numpy(x64, num_steps):
    sched = pj.linear(T)
    grid = pj.full_grid(T) if num_steps is None else pj.uniform_grid(T, num_steps)
    gb = criteria.growth_balance(sched, VARIANCES, SIZES, grid)
    ig = information_gain_numpy(np.asarray(sched.alpha_bar, np.float64), grid, VARIANCES, SIZES)[1:]
    np.testing.assert_allclose(gb.information, ig, rtol=1e-9)
    assert float(gb.cv_information) == pytest.approx(cv(ig), rel=1e-9)
    assert float(gb.var_information) == pytest.approx(np.var(ig), rel=1e-9)
    growth = np.asarray(pj.dimension_growth(sched, VARIANCES, SIZES, grid))[1:]
    np.testing.assert_allclose(gb.growth, growth, rtol=1e-12)
    assert float(gb.cv_growth) == pytest.approx(cv(growth), rel=1e-10)
    assert float(gb.cv_abs_growth) == pytest.approx(cv(np.abs(growth)), rel=1e-10)
    assert np.all(np.isfinite(np.asarray(gb.information)))  # the infinite finest step is left out


def test_growth_cv_does_not_depend_on_the_normalisation(x64):
    # CV(Delta d) equals the CV of the raw numerator sum_{expanding k} n_k log f_t(lambda_k)
    sched = pj.cosine(T)
    gb = criteria.growth_balance(sched, VARIANCES, SIZES)
    log_f = np.asarray(pj.log_expansion_factor(sched, VARIANCES))
    expanding = np.asarray(pj.lyapunov_exponents(sched, VARIANCES)) > 0
    numerator = (log_f[:, expanding] * SIZES[expanding]).sum(axis=1)[1:]
    assert float(gb.cv_growth) == pytest.approx(cv(numerator), rel=1e-10)


def test_no_expanding_patch_gives_zero_growth_cv(x64):
    gb = criteria.growth_balance(pj.cosine(T), np.array([0.1, 0.2]))
    assert float(gb.cv_growth) == 0.0
    assert float(gb.cv_information) > 0


# ----------------------------------------------------------------------------- criterion 3


def test_workload_on_integer_grids_is_the_sum_of_inverse_thresholds(x64):
    sched = pj.scaled_linear(T)
    ab = np.asarray(sched.alpha_bar, np.float64)
    density = 1 / lstar_numpy(ab, np.arange(T + 1))
    grid = np.array([0, 3, 17, 60, 121, 200])
    wk = criteria.workload(sched, grid)
    expected = np.array([density[s:t].sum() for s, t in itertools.pairwise(grid)])
    np.testing.assert_allclose(wk.work, expected, rtol=1e-11)
    assert float(wk.cv) == pytest.approx(cv(expected), rel=1e-10)
    assert float(wk.max_ratio) == pytest.approx(expected.max() / expected.min(), rel=1e-10)
    # the relaxation at integer times equals the discrete criterion
    np.testing.assert_allclose(criteria.step_work(sched, grid.astype(np.float64)), expected, rtol=1e-11)
    # the relaxation is linear inside a training step
    half = criteria.step_work(sched, np.array([0.0, 2.5]))
    assert float(half[0]) == pytest.approx(density[0] + density[1] + 0.5 * density[2], rel=1e-12)


def test_score_coefficient_work_is_artanh_sigma_in_the_continuum(x64):
    # sum_u |b_u| over (s, t] -> artanh(sigma_t) - artanh(sigma_s) for a fine chain
    sched = pj.cosine(1000, s=0.008)
    cumulative = np.asarray(criteria.cumulative_work(sched, kind="score_coefficient"))
    sigma = np.asarray(sched.sigma, np.float64)
    for s, t in [(0, 100), (100, 500), (500, 900)]:
        assert cumulative[t] - cumulative[s] == pytest.approx(np.arctanh(sigma[t]) - np.arctanh(sigma[s]), rel=5e-3)


@pytest.mark.parametrize("kind", criteria.WORK_KINDS)
@pytest.mark.parametrize("last", [None, 150])
def test_equal_work_times_balance_the_work(x64, kind, last):
    sched = pj.scaled_linear(T)
    times = criteria.equal_work_times(sched, 7, last=last, kind=kind)
    assert float(times[0]) == 0 and float(times[-1]) == (last or T)
    assert np.all(np.diff(np.asarray(times)) > 0)
    assert float(criteria.workload(sched, times, kind=kind).cv) < 1e-10


def three_criteria(sched, grid):
    return jnp.stack(
        [
            criteria.weakest_link(sched, grid).soft_min,
            criteria.growth_balance(sched, VARIANCES, SIZES, grid).cv_growth,
            criteria.growth_balance(sched, VARIANCES, SIZES, grid).cv_information,
            criteria.workload(sched, grid).cv,
        ]
    )


def test_float32_agrees_with_float64(x32):
    grid = jnp.asarray(pj.uniform_grid(1000, 25))
    fn = jax.jit(three_criteria)
    with jax.enable_x64(True):
        reference = np.asarray(fn(pj.cosine(1000), grid))
    single = fn(pj.cosine(1000), grid)
    assert single.dtype == jnp.float32
    np.testing.assert_allclose(single, reference, rtol=1e-4)


def test_information_gain_is_geometry_s_without_the_finest_step(x64):
    sched = pj.cosine(T)
    np.testing.assert_allclose(
        criteria.growth_balance(sched, VARIANCES, SIZES).information,
        pj.information_gain(sched, VARIANCES, SIZES)[1:],
        rtol=1e-13,
    )


# ----------------------------------------------------------------------------- gradients


GRID = pj.uniform_grid(T, 20)
SCALARS = (
    "weakest_link",
    "weakest_link_linear",
    "cv_growth",
    "var_information",
    "var_growth",
    "cv_information",
    "workload",
    "workload_score",
)


def all_scalars(sched):
    """Every criterion scalar in one vector (one compilation for all the gradient checks)."""
    full = criteria.growth_balance(sched, VARIANCES, SIZES)
    sub = criteria.growth_balance(sched, VARIANCES, SIZES, GRID)
    return jnp.stack(
        [
            criteria.weakest_link(sched).soft_min,
            criteria.weakest_link(sched, GRID, temperature=2e-3, log_domain=False).soft_min,
            full.cv_growth,
            full.var_information,
            sub.var_growth,
            sub.cv_information,
            criteria.workload(sched, GRID).cv,
            criteria.workload(sched, GRID, kind="score_coefficient").cv,
        ]
    )


COSINE_SCALARS = ("weakest_link", "cv_growth", "cv_information", "workload")


def both_families(x):
    """Criteria of the spline schedule (``x[:8]`` = logits) and of the cosine schedule (``x[8]`` = offset)."""
    cos = pj.cosine(T, s=x[8])
    gb = criteria.growth_balance(cos, VARIANCES, SIZES, GRID)
    cosine_values = [
        criteria.weakest_link(cos).soft_min,
        gb.cv_growth,
        gb.cv_information,
        criteria.workload(cos, GRID).cv,
    ]
    return jnp.concatenate([all_scalars(spline_schedule(x[:8])), jnp.stack(cosine_values)])


@pytest.mark.slow
def test_gradients_match_finite_differences(x64):
    """Every criterion, differentiated w.r.t. spline logits and the cosine offset, against
    Richardson-extrapolated central differences (float64). Forward mode along the two directions
    in one compilation; reverse mode is its transpose (JAX derives both from one linearisation) and
    is what the optimiser tests exercise."""
    x = jnp.concatenate([jnp.asarray(LOGITS), jnp.asarray([0.008])])
    spline_direction = jnp.concatenate([jnp.asarray(np.random.default_rng(3).normal(size=8)), jnp.zeros(1)])
    offset_direction = jnp.zeros(9).at[8].set(1.0)
    values = jax.jit(both_families)
    tangents = jax.jit(jax.vmap(lambda d: jax.jvp(both_families, (x,), (d,))[1]))(
        jnp.stack([spline_direction, offset_direction])
    )
    primal = np.asarray(values(x))
    tangents = np.asarray(tangents)
    assert np.all(np.isfinite(tangents))
    n = len(SCALARS)
    checks = [
        ("spline logits", spline_direction, 1e-3, 0, slice(0, n), SCALARS),
        ("cosine offset", offset_direction, 1e-4, 1, slice(n, None), COSINE_SCALARS),
    ]
    for label, direction, h, row, part, names in checks:
        numeric = np.asarray(richardson(values, x, direction, h))[part]
        for name, a, num, v in zip(names, tangents[row][part], numeric, primal[part], strict=True):
            assert a == pytest.approx(num, rel=1e-6, abs=1e-12 * max(1.0, abs(v))), f"{name} w.r.t. {label}"


def test_gradient_wrt_continuous_grid_times(x64):
    sched = pj.scaled_linear(T)
    times = jnp.asarray([0.0, 4.3, 15.7, 41.2, 90.6, 140.1, 200.0])  # away from integers
    fn = jax.jit(lambda t: criteria.workload(sched, t).cv)
    direction = jnp.asarray([0.0, 1.0, -0.5, 0.7, 0.2, -1.0, 0.0])
    analytic = float(jnp.vdot(jax.grad(fn)(times), direction))
    numeric = float(richardson(fn, times, direction, 1e-2))  # W is linear between integers: exact
    assert analytic == pytest.approx(numeric, rel=1e-9)


# ----------------------------------------------------------------------------- bad input


def test_bad_input():
    sched = pj.cosine(T)
    with pytest.raises(ValueError, match="temperature"):
        criteria.weakest_link(sched, temperature=0.0)
    with pytest.raises(ValueError, match="sched"):
        criteria.weakest_link(np.ones(5))
    with pytest.raises(ValueError, match="grid"):
        criteria.growth_balance(sched, VARIANCES, SIZES, np.array([0, 10, 20]))
    with pytest.raises(ValueError, match="variances"):
        criteria.growth_balance(sched, np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="kind"):
        criteria.workload(sched, np.array([0, 10, 200]), kind="joules")
    with pytest.raises(ValueError, match="times"):
        criteria.workload(sched, np.array([1.0, 10.0, 200.0]))
    with pytest.raises(ValueError, match="times"):
        criteria.workload(sched, np.array([0.0, 10.0, 10.0]))
    with pytest.raises(ValueError, match="times"):
        criteria.workload(sched, np.array([0.0, 10.0, 250.0]))
    with pytest.raises(ValueError, match="times"):
        criteria.step_work(sched, np.array([0.0, np.inf]))
    with pytest.raises(ValueError, match="last"):
        criteria.equal_work_times(sched, 5, last=T + 1)
    with pytest.raises(ValueError, match="num_steps"):
        criteria.equal_work_times(sched, 0)

"""The fixed sampling grids (pifs_jax.grid_design.fixed), each checked against its published formula.

The reference values are computed here from the schedule's ``alpha_bar`` table in float64 (logSNR
interpolated linearly in t between integers, the module's stated convention), not through the
module's helpers, except where a test is about the helper itself.
"""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest

from pifs_jax.errors import ArgumentError
from pifs_jax.grid_design import FIXED_GRIDS, fixed_grid
from pifs_jax.grid_design.fixed import SCHEDULE_GRIDS, log_snr_at_times, schedule_grid_times, times_at_log_snr
from pifs_jax.grids import diffusers_grid, uniform_grid
from pifs_jax.schedules import cosine, linear

T = 1000
SCHEDULES = {"linear": linear(T), "cosine": cosine(T)}
STEPS = (1, 2, 5, 10, 20)


def reference_log_snr(sched) -> np.ndarray:
    """logSNR_t = log(alpha_bar / (1 - alpha_bar)) for t = 1..T in float64, from the stored log alpha_bar.

    (The float32 ``sched.alpha_bar`` would lose ``1 - alpha_bar`` near t = 1 to ~1e-3 relative.)
    """
    ab = np.exp(np.asarray(sched.log_alpha_bar, dtype=np.float64))[1:]
    return np.log(ab) - np.log1p(-ab)


def reference_log_snr_at(sched, times) -> np.ndarray:
    """logSNR at real times in [1, T], linear in t between integers (independent of the module's helper)."""
    return np.interp(times, np.arange(1, sched.T + 1, dtype=np.float64), reference_log_snr(sched))


def edm_sigma(log_snr):
    """EDM's s = sqrt((1 - alpha_bar) / alpha_bar) = exp(-logSNR / 2)."""
    return np.exp(-np.asarray(log_snr) / 2)


# ----------------------------------------------------------------------------- shape and endpoints


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("kind", FIXED_GRIDS)
def test_every_kind_is_an_increasing_int64_grid_from_0(name, kind):
    sched = SCHEDULES[name]
    for n in STEPS:
        grid = fixed_grid(sched, n, kind)
        assert grid.dtype == np.int64
        assert grid.shape == (n + 1,)
        assert grid[0] == 0
        assert np.all(np.diff(grid) > 0)
        if kind == "leading":  # diffusers' own end: (N - 1) (T // N) + 1
            assert grid[-1] == (n - 1) * (T // n) + 1
        elif kind == "quadratic":  # DDIM's own end: floor(0.8 T) + 1 (a single step: [0, 1])
            assert grid[-1] == (801 if n > 1 else 1)
        elif kind == "linspace":  # diffusers' linspace(0, T - 1, 1) is [0]: a single step is [0, 1]
            assert grid[-1] == (T if n > 1 else 1)
        else:
            assert grid[-1] == T
        if kind in SCHEDULE_GRIDS:
            assert grid[1] == (1 if n > 1 else T)


@pytest.mark.parametrize("kind", SCHEDULE_GRIDS)
def test_schedule_grids_hold_t_min_and_give_0_T_for_one_step(kind):
    sched = SCHEDULES["linear"]
    assert fixed_grid(sched, 1, kind).tolist() == [0, T]
    for n, t_min in ((2, 7), (10, 30), (20, T - 19)):
        grid = fixed_grid(sched, n, kind, t_min=t_min)
        assert grid[1] == t_min and grid[-1] == T and len(grid) == n + 1
        times = schedule_grid_times(sched, n, kind, t_min=t_min)
        assert times[0] == 0.0 and times[1] == t_min and times[-1] == T


# ----------------------------------------------------------------------------- the interpolation helpers


@pytest.mark.parametrize("name", SCHEDULES)
def test_log_snr_helpers_interpolate_and_invert_each_other(name):
    sched = SCHEDULES[name]
    table = reference_log_snr(sched)
    ints = np.arange(1, T + 1, dtype=np.float64)
    # at integers the table itself, to float64 rounding of 1 - alpha_bar near t = 1 (1e-10 absolute)
    np.testing.assert_allclose(log_snr_at_times(sched, ints), table, rtol=0, atol=1e-10)
    assert log_snr_at_times(sched, 0.0) == np.inf and times_at_log_snr(sched, np.inf) == 0.0
    # half-way between integers: the mean of the neighbours (linear in t), 1e-10 absolute
    np.testing.assert_allclose(log_snr_at_times(sched, ints[:-1] + 0.5), (table[:-1] + table[1:]) / 2, atol=1e-10)
    # round trip through the inverse: times back to 1e-9 (absolute, in steps)
    times = np.linspace(1.0, T, 777)
    np.testing.assert_allclose(times_at_log_snr(sched, log_snr_at_times(sched, times)), times, rtol=0, atol=1e-9)


# ----------------------------------------------------------------------------- logsnr_uniform


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("n", (5, 10, 20))
def test_logsnr_uniform_real_times_are_equally_spaced_in_log_snr(name, n):
    sched = SCHEDULES[name]
    table = reference_log_snr(sched)
    times = schedule_grid_times(sched, n, "logsnr_uniform")
    lam = reference_log_snr_at(sched, times[1:])
    expected = table[0] + np.arange(n) / (n - 1) * (table[-1] - table[0])  # from logSNR(1) to logSNR(T)
    # the real times invert the piecewise-linear logSNR exactly up to float64 round-off: 1e-9 absolute
    np.testing.assert_allclose(lam, expected, rtol=0, atol=1e-9)
    np.testing.assert_allclose(np.diff(lam), np.diff(lam)[0], rtol=0, atol=1e-9)


@pytest.mark.parametrize("n", (5, 10, 20))
def test_logsnr_uniform_rounded_grid_is_within_one_integer_of_equal_steps(n):
    sched = SCHEDULES["linear"]  # no collisions on this schedule: every point is its real time rounded
    table = np.concatenate([[np.inf], reference_log_snr(sched)])  # index t = 0..T
    times = schedule_grid_times(sched, n, "logsnr_uniform")
    grid = fixed_grid(sched, n, "logsnr_uniform")
    assert np.all(np.abs(grid - times) <= 0.5)
    target = reference_log_snr_at(sched, times[1:])
    # bound: rounding moves t by <= 1/2, so logSNR moves by <= 1/2 of the largest integer step next to t
    k = grid[1:]
    local = np.maximum(np.abs(table[np.clip(k - 1, 1, T)] - table[k]), np.abs(table[k] - table[np.clip(k + 1, 1, T)]))
    error = np.abs(table[k] - target)
    assert np.all(error <= 0.5 * local + 1e-12)
    steps, expected_step = np.diff(table[k]), np.diff(target)
    assert np.all(np.abs(steps - expected_step) <= error[1:] + error[:-1] + 1e-12)


# ----------------------------------------------------------------------------- edm


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("n", (2, 5, 10, 20))
def test_edm_sigmas_follow_karras_rho_7(name, n):
    sched = SCHEDULES[name]
    table = reference_log_snr(sched)
    s_max, s_min = edm_sigma(table[-1]), edm_sigma(table[0])
    i = np.arange(n)
    rho = 7.0
    expected = (s_max ** (1 / rho) + i / (n - 1) * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
    times = schedule_grid_times(sched, n, "edm")
    sigmas = edm_sigma(reference_log_snr_at(sched, times[1:]))[::-1]  # i = 0 at tau_N
    # closed form, 1e-9 relative (float64 round-off through the interpolation is ~1e-13)
    np.testing.assert_allclose(sigmas, expected, rtol=1e-9)


def test_edm_with_rho_1_spaces_sigmas_uniformly():
    sched = SCHEDULES["linear"]
    times = schedule_grid_times(sched, 10, "edm", rho=1)
    sigmas = edm_sigma(reference_log_snr_at(sched, times[1:]))
    steps = np.diff(sigmas)
    np.testing.assert_allclose(steps, steps[0], rtol=1e-9)  # uniform, 1e-9 relative
    assert fixed_grid(sched, 10, "edm", rho=1.0).tolist() == np.rint(times).astype(np.int64).tolist()


# ----------------------------------------------------------------------------- kl_optimal


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("n", (2, 5, 10, 20))
def test_kl_optimal_atan_sigma_is_uniform(name, n):
    sched = SCHEDULES[name]
    times = schedule_grid_times(sched, n, "kl_optimal")
    angles = np.arctan(edm_sigma(reference_log_snr_at(sched, times[1:])))
    # atan(s) linear in i, 1e-9 absolute (angles are in (0, pi/2))
    np.testing.assert_allclose(np.diff(angles), (angles[-1] - angles[0]) / (n - 1), rtol=0, atol=1e-9)


@pytest.mark.parametrize("name", SCHEDULES)
def test_kl_optimal_matches_a_transcription_of_align_your_steps(name):
    # Sabour et al. 2024, theorem 3.1: sigma_i = tan(u_i atan(sigma_min) + (1 - u_i) atan(sigma_max)),
    # u_i = i / (N - 1), with sigma the schedule's own EDM noise levels sqrt((1 - alpha_bar) / alpha_bar).
    sched = SCHEDULES[name]
    ab = np.exp(np.asarray(sched.log_alpha_bar, dtype=np.float64))
    sig = np.sqrt((1 - ab) / ab)
    n = 10
    u = np.arange(n) / (n - 1)
    expected = np.tan(u * np.arctan(sig[1]) + (1 - u) * np.arctan(sig[T]))
    times = schedule_grid_times(sched, n, "kl_optimal")
    got = edm_sigma(reference_log_snr_at(sched, times[1:]))[::-1]
    np.testing.assert_allclose(got, expected, rtol=1e-9)  # 1e-9 relative


# ----------------------------------------------------------------------------- the formula-only kinds


def test_quadratic_is_ddims_cifar10_spacing():
    # DDIM (ermongroup/ddim, runners/diffusion.py): seq = int((i sqrt(0.8 T) / (N - 1))^2) = floor(800 i^2 / 81)
    # for T = 1000, N = 10, in exact integer arithmetic; this package's grid is [0] + (seq + 1).
    seq = [(800 * i * i) // 81 for i in range(10)]
    assert seq == [0, 9, 39, 88, 158, 246, 355, 483, 632, 800]
    expected = [0] + [k + 1 for k in seq]
    assert fixed_grid(SCHEDULES["linear"], 10, "quadratic").tolist() == expected
    assert fixed_grid(SCHEDULES["cosine"], 10, "quadratic").tolist() == expected  # schedule-independent


def test_quadratic_with_more_steps_than_its_range_stays_strictly_increasing():
    grid = fixed_grid(SCHEDULES["linear"], 900, "quadratic")  # 900 > floor(0.8 T) + 1 = 801
    assert grid.tolist() == list(range(901))


@pytest.mark.parametrize("spacing", ("leading", "trailing", "linspace"))
def test_diffusers_spacings_equal_diffusers_grid(spacing):
    for n in (*STEPS, 50, 1000):
        np.testing.assert_array_equal(
            fixed_grid(SCHEDULES["linear"], n, spacing), diffusers_grid(T, n, spacing=spacing)
        )


def test_time_uniform_equals_uniform_grid():
    for n in (*STEPS, 7, 333, 1000):
        np.testing.assert_array_equal(fixed_grid(SCHEDULES["cosine"], n, "time_uniform"), uniform_grid(T, n))


# ----------------------------------------------------------------------------- refusals


def refused(argument, fn, *args, **kwargs):
    with pytest.raises(ArgumentError) as info:
        fn(*args, **kwargs)
    assert info.value.argument == argument
    assert str(info.value).startswith(f"{argument}: ")
    return str(info.value)


def test_bad_inputs_are_refused_naming_the_argument():
    sched = SCHEDULES["linear"]
    refused("num_steps", fixed_grid, sched, 0, "edm")
    refused("num_steps", fixed_grid, sched, T + 1, "time_uniform")
    refused("num_steps", fixed_grid, sched, 2.0, "edm")
    message = refused("kind", fixed_grid, sched, 10, "karras")
    assert all(kind in message for kind in FIXED_GRIDS)
    refused("t_min", fixed_grid, sched, 10, "logsnr_uniform", t_min=0)
    refused("t_min", fixed_grid, sched, 10, "logsnr_uniform", t_min=T - 10 + 2)
    refused("t_min", fixed_grid, sched, 10, "time_uniform", t_min=5)  # only the schedule-designed kinds take it
    refused("sched", fixed_grid, np.linspace(1.0, 0.1, T + 1), 10, "edm")
    refused("sched", fixed_grid, None, 10, "time_uniform")
    refused("rho", fixed_grid, sched, 10, "kl_optimal", rho=7.0)
    refused("rho", fixed_grid, sched, 10, "edm", rho=0.0)
    refused("rho", fixed_grid, sched, 10, "edm", rho=math.inf)
    refused("kind", schedule_grid_times, sched, 10, "quadratic")
    refused("times", log_snr_at_times, sched, [0.5])
    refused("times", log_snr_at_times, sched, [T + 1.0])
    refused("log_snr", times_at_log_snr, sched, [100.0])
    refused("log_snr", times_at_log_snr, sched, [np.nan])


def test_a_traced_schedule_is_refused():
    def design(s):
        fixed_grid(s, 10, "edm")
        return s.log_alpha_bar

    with pytest.raises(ArgumentError) as info:
        jax.jit(design)(SCHEDULES["linear"])
    assert info.value.argument == "sched"

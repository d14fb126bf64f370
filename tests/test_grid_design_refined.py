"""The refined grid (the default of ``design_grid``) and the fractional moves it searches with.

Against independent values: a grid one known move away from a target grid is recovered exactly
(the target's samples are those of that grid, so its error is exactly zero); the network
evaluations are counted by enumerating, independently of the search, the distinct grids it must
score; the DDIM target is the measured fine chain, equal to running DDIM on the fine grid.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pifs_jax as pj
from pifs_jax.errors import ArgumentError
from pifs_jax.grid_design import (
    coordinate_search,
    design_grid,
    fixed_grid,
    geometric_grid,
    mean_grid_error,
    measure_geometry,
    refined_grid,
    run_grid,
    trimmed_mean,
)
from pifs_jax.samplers import DDIM, DPMSolverPP2M

C = 0.3  # variance of the scalar Gaussian data N(0, C)


def gaussian_eps(sched):
    """Exact eps of N(0, C I) data: ``eps(x, t) = sigma_t x / (ab_t C + sigma_t^2)``."""
    ab, sig2 = sched.alpha_bar, sched.sigma2
    return lambda x, t: jnp.sqrt(sig2[t]) * x / (ab[t] * C + sig2[t])


def mixture_eps(sched):
    """A two-component mixture: its flow is nonlinear, so grids differ in their errors."""
    means = jnp.stack([jnp.full(4, 0.6), jnp.full(4, -0.4)])
    return pj.gaussian_mixture_denoiser(sched, jnp.array([0.5, 0.5]), means, jnp.stack([0.02 * jnp.eye(4)] * 2))


def test_fractional_moves_recover_a_grid_one_move_away():
    sched = pj.linear(1000)
    eps_fn = mixture_eps(sched)
    x_T = jax.random.normal(jax.random.PRNGKey(0), (4, 4))
    target_grid = np.array([0, 400, 600, 800, 1000])
    target = run_grid(eps_fn, sched, target_grid, x_T)
    init = np.array([0, 200, 600, 800, 1000])  # tau_1 + (600 - 200) / 2 = 400: one move with f = 1/2
    res = coordinate_search(eps_fn, sched, x_T, target, init, max_sweeps=3, fractions=(0.25, 0.5))
    assert res.grid.tolist() == target_grid.tolist() and res.history[-1] == pytest.approx(0.0, abs=1e-6)
    # count the distinct grids scored: the start, point 1's four moves from 200 (gaps 200 and 400),
    # then from 400 onward every point's moves (a second sweep finds nothing and stops)
    seen = {tuple(init)}
    grid = init.copy()
    for i, moves in ((1, (150, 100, 300, 400)),):
        for c in moves:
            seen.add(tuple(np.where(np.arange(5) == i, c, grid)))
    grid = target_grid.copy()
    for _sweep in range(2):  # the rest of sweep 1 and all of sweep 2 from the target grid
        for i in (1, 2, 3) if _sweep else (2, 3):
            below, above = grid[i] - grid[i - 1], grid[i + 1] - grid[i]
            for c in (grid[i] - round(0.25 * below), grid[i] - round(0.5 * below),
                      grid[i] + round(0.25 * above), grid[i] + round(0.5 * above)):  # fmt: skip
                seen.add(tuple(np.where(np.arange(5) == i, c, grid)))
    assert res.network_evaluations == len(seen) * 4 * 4  # NFE 4 x 4 seeds per distinct grid
    with pytest.raises(ArgumentError, match="fractions"):
        coordinate_search(eps_fn, sched, x_T, target, init, fractions=(0.5, 1.0))


def test_refined_grid_improves_on_its_start_and_counts_every_evaluation():
    sched = pj.linear(1000)
    eps_fn = mixture_eps(sched)
    x_T = jax.random.normal(jax.random.PRNGKey(1), (6, 4))
    res = refined_grid(eps_fn, sched, x_T, 5, fine_steps=40, orders=(0.5, 1.0, 2.0), fixed=())
    m = res.measurement
    # the refined grid's measurement uses one probe per trajectory (the geometric grid's: 2): R M (1 + 2)
    assert m.network_evaluations == 6 * 40 * (1 + 2 * 1)
    # DDIM's target is the measured fine chain: DDIM run on the fine grid (float32 chains: 1e-5)
    np.testing.assert_allclose(m.fine_solution, run_grid(eps_fn, sched, m.times, x_T), atol=1e-5)
    # the start is the best of the orders' grids, p = 1 being the geometric grid
    assert res.start_scores["order 1"] == pytest.approx(mean_grid_error(eps_fn, sched, geometric_grid(m, 5), x_T,
                                                                  m.fine_solution), rel=1e-6)  # fmt: skip
    assert res.start_scores[res.start_name] == min(res.start_scores.values())
    assert res.start_name == f"order {res.start_order:g}"
    assert res.start.tolist() == geometric_grid(m, 5, order=res.start_order).tolist()
    assert res.history[0] == pytest.approx(min(res.start_scores.values())) and res.history[-1] <= res.history[0]
    assert mean_grid_error(eps_fn, sched, res.grid, x_T, m.fine_solution) == pytest.approx(res.history[-1])
    assert res.grid[0] == 0 and res.grid[-1] == 1000 and np.all(np.diff(res.grid) > 0)
    distinct_starts = len({tuple(geometric_grid(m, 5, order=p)) for p in (0.5, 1.0, 2.0)})
    search = coordinate_search(eps_fn, sched, x_T, m.fine_solution, res.start, max_sweeps=1,
                               fractions=(0.125, 0.25, 0.5))  # fmt: skip
    # the search re-scores its start here; refined_grid had it from the starts' scores
    assert res.network_evaluations == m.network_evaluations + 6 * 5 * distinct_starts + search.network_evaluations - 30
    # a second-order solver: its target is its own fine solution, whose evaluations are counted
    dpm = refined_grid(eps_fn, sched, x_T, 5, sampler=DPMSolverPP2M(), fine_steps=40, orders=(1.0,), fixed=())
    assert dpm.start_order == 1.0 and dpm.start.tolist() == geometric_grid(m, 5).tolist()
    assert dpm.network_evaluations >= m.network_evaluations + 6 * 40 + 6 * 5


def test_fixed_grids_compete_for_the_start_and_win_when_they_are_better():
    """With the field's fixed grids among the starts, the start is the best of all by the same score.

    Scores are recomputed independently with ``mean_grid_error`` against the DDIM target; a fixed
    kind that does not exist is refused by name.
    """
    sched = pj.linear(1000)
    eps_fn = mixture_eps(sched)
    x_T = jax.random.normal(jax.random.PRNGKey(3), (6, 4))
    kinds = ("time_uniform", "quadratic_to_T", "logsnr_uniform")
    res = refined_grid(eps_fn, sched, x_T, 4, fine_steps=40, orders=(1.0,), fixed=kinds)
    target = res.measurement.fine_solution
    for kind in kinds:
        assert res.start_scores[kind] == pytest.approx(
            mean_grid_error(eps_fn, sched, fixed_grid(sched, 4, kind), x_T, target), rel=1e-6
        )
    assert set(res.start_scores) == {"order 1", *kinds}
    assert res.start_scores[res.start_name] == min(res.start_scores.values())
    expected = fixed_grid(sched, 4, res.start_name) if res.start_name in kinds else geometric_grid(res.measurement, 4)
    assert res.start.tolist() == expected.tolist()
    assert (res.start_order is None) == (res.start_name in kinds)
    with pytest.raises(ArgumentError, match="fixed"):
        refined_grid(eps_fn, sched, x_T, 4, fine_steps=40, fixed=("cosine_spacing",))
    with pytest.raises(ArgumentError, match=r"fixed.*string 'edm'"):
        refined_grid(eps_fn, sched, x_T, 4, fine_steps=40, fixed="edm")


def test_design_grid_default_is_the_refined_grid_and_refuses_bad_orders():
    sched = pj.linear(1000)
    eps_fn = gaussian_eps(sched)
    x_T = jax.random.normal(jax.random.PRNGKey(2), (4, 2))
    d = design_grid(eps_fn, sched, 4, x_T=x_T, options={"fine_steps": 40, "orders": (1.0, 2.0)})
    direct = refined_grid(eps_fn, sched, x_T, 4, sampler=DDIM(), fine_steps=40, orders=(1.0, 2.0))
    assert d.method == "refined" and d.grid.tolist() == direct.grid.tolist()
    assert d.network_evaluations == direct.network_evaluations and d.record["start_order"] == direct.start_order
    with pytest.raises(ArgumentError, match="orders"):
        refined_grid(eps_fn, sched, x_T, 4, fine_steps=40, orders=(1.0, -1.0))
    with pytest.raises(ArgumentError, match="orders"):
        refined_grid(eps_fn, sched, x_T, 4, fine_steps=40, orders=())
    with pytest.raises(ArgumentError, match="order"):
        geometric_grid(measure_geometry(eps_fn, sched, x_T, fine_steps=40), 4, order=0.0)


def test_measure_seeds_measures_a_prefix_and_targets_every_seed():
    """``measure_seeds = m``: the geometry of the first ``m`` noises, DDIM targets for all ``R``.

    Independent values: the measurement equals ``measure_geometry`` of the prefix; the search's
    objective is recomputed with ``mean_grid_error`` against DDIM run on the fine grid from all
    ``R`` noises; the evaluations add ``R - m`` fine DDIM chains to the measurement's; more
    measured seeds than noises, or none, are refused by name.
    """
    sched = pj.linear(1000)
    eps_fn = mixture_eps(sched)
    x_T = jax.random.normal(jax.random.PRNGKey(5), (6, 4))
    res = refined_grid(eps_fn, sched, x_T, 4, fine_steps=40, orders=(1.0,), fixed=(), measure_seeds=2)
    prefix = measure_geometry(eps_fn, sched, x_T[:2], fine_steps=40, probes=1)
    m = res.measurement
    assert m.network_evaluations == prefix.network_evaluations == 2 * 40 * 3
    np.testing.assert_allclose(m.fine_solution, prefix.fine_solution, atol=1e-6)
    assert res.start.tolist() == geometric_grid(prefix, 4).tolist()
    target = run_grid(eps_fn, sched, m.times, x_T)  # every seed's DDIM target on the fine grid
    assert res.history[-1] == pytest.approx(mean_grid_error(eps_fn, sched, res.grid, x_T, target), rel=1e-5)
    search = coordinate_search(eps_fn, sched, x_T, target, res.start, max_sweeps=1, fractions=(0.125, 0.25, 0.5))
    assert res.grid.tolist() == search.grid.tolist()
    # measurement + 4 more fine chains of 40 steps + the searched grids (its start counted once)
    assert res.network_evaluations == m.network_evaluations + 4 * 40 + search.network_evaluations
    for bad, message in ((7, "at most the 6 noises"), (0, "measure_seeds")):
        with pytest.raises(ArgumentError, match=message):
            refined_grid(eps_fn, sched, x_T, 4, fine_steps=40, measure_seeds=bad)


def test_trimmed_mean_leaves_out_the_largest_errors():
    """Against values computed by hand: ``floor(trim B)`` largest entries left out, whatever their order."""
    errors = np.random.default_rng(0).permutation(np.arange(1.0, 17.0))  # 1..16, shuffled
    assert trimmed_mean(errors) == pytest.approx(8.5)  # trim 0: the plain mean
    assert trimmed_mean(errors, 1 / 8) == pytest.approx(7.5)  # 1..14
    assert trimmed_mean(errors, 0.5) == pytest.approx(4.5)  # 1..8
    assert trimmed_mean(np.arange(1.0, 8.0), 1 / 8) == pytest.approx(4.0)  # floor(7 / 8) = 0: nothing left out
    assert trimmed_mean([3.0], 0.9) == 3.0  # one seed is always kept
    for trim in (1.0, -0.1, float("nan"), True, "0.1"):
        with pytest.raises(ArgumentError, match="trim"):
            trimmed_mean(errors, trim)  # type: ignore[arg-type]
    for bad in ([], np.ones((2, 2))):
        with pytest.raises(ArgumentError, match="errors"):
            trimmed_mean(bad, 0.1)


def test_trimmed_scores_in_the_search_and_the_refined_grid():
    """``trim`` reaches every score: the refined grid's starts and search, recomputed independently.

    A seed whose target is far from every grid's result (its target shifted by 5) dominates the
    plain mean; with ``trim = 1/8`` of 8 seeds exactly that seed is left out of each score.
    """
    sched = pj.linear(1000)
    eps_fn = mixture_eps(sched)
    x_T = jax.random.normal(jax.random.PRNGKey(4), (8, 4))
    grid = np.array([0, 200, 500, 1000])
    target = np.asarray(run_grid(eps_fn, sched, np.array([0, 100, 300, 600, 1000]), x_T))
    target[3] += 5.0
    per_seed = np.sqrt(np.mean((np.asarray(run_grid(eps_fn, sched, grid, x_T)) - target) ** 2, axis=1))
    assert np.argmax(per_seed) == 3
    assert mean_grid_error(eps_fn, sched, grid, x_T, target, trim=1 / 8) == pytest.approx(
        np.mean(np.delete(per_seed, 3)), rel=1e-9
    )
    search = coordinate_search(eps_fn, sched, x_T, target, grid, max_sweeps=1, fractions=(0.5,), trim=1 / 8)
    assert search.history[-1] == pytest.approx(mean_grid_error(eps_fn, sched, search.grid, x_T, target, trim=1 / 8))
    res = refined_grid(eps_fn, sched, x_T, 4, fine_steps=40, orders=(1.0,), fixed=("time_uniform",), trim=1 / 8)
    fine = res.measurement.fine_solution
    assert res.start_scores["time_uniform"] == pytest.approx(
        mean_grid_error(eps_fn, sched, fixed_grid(sched, 4, "time_uniform"), x_T, fine, trim=1 / 8), rel=1e-6
    )
    assert mean_grid_error(eps_fn, sched, res.grid, x_T, fine, trim=1 / 8) == pytest.approx(res.history[-1])
    # through design_grid's options, and refused by name before anything is measured
    d = design_grid(eps_fn, sched, 4, x_T=x_T, options={"fine_steps": 40, "orders": (1.0,), "fixed": ("time_uniform",),
                                                        "trim": 1 / 8})  # fmt: skip
    assert d.grid.tolist() == res.grid.tolist()
    with pytest.raises(ArgumentError, match="trim"):
        refined_grid(eps_fn, sched, x_T, 4, trim=1.0)
    with pytest.raises(ArgumentError, match="trim"):
        mean_grid_error(eps_fn, sched, grid, x_T, target, trim=-0.5)
    with pytest.raises(ArgumentError, match="trim"):
        coordinate_search(eps_fn, sched, x_T, target, grid, trim=2.0)

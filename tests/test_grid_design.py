"""Grid design: the evaluation metric, GITS's programme, the geometric measurement and placement, the gradient.

Each against an independent value: NumPy formulas, brute-force enumeration, closed forms of a
scalar Gaussian chain, finite differences. Float64 where a tolerance below 1e-6 is claimed.
"""

from __future__ import annotations

import functools
import itertools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pifs_jax as pj
from pifs_jax.errors import ArgumentError
from pifs_jax.grid_design import (
    GeometryMeasurement,
    StepCorrections,
    corrected_denoiser,
    correction_loss,
    design_grid,
    fit_step_corrections,
    geometric_grid,
    grid_errors,
    mean_grid_error,
    measure_geometry,
    paired_gain,
    reference_solution,
)
from pifs_jax.grid_design.gradient import grid_times_from_logits, logits_from_grid
from pifs_jax.grid_design.search import gits_grid
from pifs_jax.samplers import DDIM, DPMSolverPP2M, chain_from_tables, continuous_step_tables, ddim_tables, step_tables

C = 0.3  # variance of the scalar Gaussian data N(0, C)


def scalar_gaussian_eps(sched):
    """Exact eps of N(0, C) data: ``eps(x, t) = sigma_t x / (ab_t C + sigma_t^2)``."""
    ab = sched.alpha_bar
    sig2 = sched.sigma2

    def eps_fn(x, t):
        return jnp.sqrt(sig2[t]) * x / (ab[t] * C + sig2[t])

    return eps_fn


def test_grid_errors_and_paired_gain_against_numpy():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(50, 3, 4))
    a = ref + 0.2 * rng.normal(size=ref.shape)
    b = ref + 0.1 * rng.normal(size=ref.shape)
    ea, eb = grid_errors(a, ref), grid_errors(b, ref)
    np.testing.assert_allclose(ea, [np.sqrt(np.mean((a[i] - ref[i]) ** 2)) for i in range(50)], rtol=1e-12)
    g = paired_gain(ea, eb, resamples=500)
    assert g.gain == pytest.approx(1 - eb.mean() / ea.mean(), rel=1e-12)
    assert g.lo < g.gain < g.hi and g.gain > 0.3  # b has half the noise: gain about 0.5
    with pytest.raises(ArgumentError, match="reference"):
        grid_errors(a, ref[:10])
    with pytest.raises(ArgumentError, match="errors_b"):
        paired_gain(ea, eb[:5])


def test_gits_programme_is_the_brute_force_optimum():
    # the dynamic programme with coeff = 1 is the exact shortest path with N - 1 costed steps:
    # enumerate every path on a small random upper-triangular cost matrix
    from pifs_jax.grid_design import search  # the programme itself is module-level

    rng = np.random.default_rng(3)
    m = 9
    cost = np.triu(rng.uniform(0.1, 1.0, size=(m, m)), 1)
    cost[np.tril_indices(m)] = np.inf
    for num_steps in (2, 3, 4, 5):
        path, value = search.__dict__["_dynamic_programme"](cost, num_steps, 1.0)
        best = min(
            sum(cost[p, q] for p, q in itertools.pairwise((0, *inner, m - 1)))
            for inner in itertools.combinations(range(1, m - 1), num_steps - 2)
        )
        assert value == pytest.approx(best, rel=1e-12)
        assert sum(cost[p, q] for p, q in itertools.pairwise(path)) == pytest.approx(best, rel=1e-12)
        assert len(path) == num_steps and path[0] == 0 and path[-1] == m - 1


def test_gits_grid_shape_and_cost():
    sched = pj.linear(1000)
    x_T = jax.random.normal(jax.random.PRNGKey(0), (8, 1))
    res = gits_grid(scalar_gaussian_eps(sched), sched, 5, x_T, teacher_steps=50)
    assert res.grid[0] == 0 and res.grid[-1] == 1000 and len(res.grid) == 6
    assert np.all(np.diff(res.grid) > 0) and res.grid[1] == 20  # the teacher's smallest non-zero time
    assert res.network_evaluations == 8 * 50
    with pytest.raises(ArgumentError, match="teacher_steps"):
        gits_grid(scalar_gaussian_eps(sched), sched, 5, x_T, teacher_steps=3)
    for bad in (0, -1.0, float("inf"), True):
        with pytest.raises(ArgumentError, match="coeff"):
            gits_grid(scalar_gaussian_eps(sched), sched, 5, x_T, teacher_steps=50, coeff=bad)


def test_geometric_placement_is_uniform_in_lambda_for_constant_work():
    # constant g and a last-step error that only allows the smallest tau_1: equal work = uniform lambda
    times = np.arange(0, 1001, 10)
    lam = np.linspace(5.0, -5.0, 100)  # decreasing in t, k = 1..M
    last = np.where(np.arange(100) == 0, 0.0, 1e6)
    m = GeometryMeasurement(times, lam, np.ones(100), np.ones(100), last, 1, 0.5, 0, 0.0)
    grid = geometric_grid(m, 5)
    assert grid[0] == 0 and grid[1] == 10 and grid[-1] == 1000
    # the interior times are uniform in lambda between t_1 (lambda 5) and T (lambda -5), linear in t
    expected = np.interp(np.linspace(5.0, -5.0, 5)[1:-1], lam[::-1], times[1:][::-1].astype(float))
    np.testing.assert_allclose(grid[2:-1], np.rint(expected), atol=1)
    assert geometric_grid(m, 1).tolist() == [0, 1000]


def test_first_step_rules():
    # W(t_k) = (M - k) * 0.1 for k = 1..M (g = 1 on a uniform lambda grid of spacing 0.1); e_last grows with k.
    # equal_share: the largest k with e_last(k) <= (W(k) / (N - 1))^2; min_sum: argmin e_last + W^2 / (N - 1)
    times = np.arange(0, 1001, 10)
    lam = 0.1 * np.arange(100)[::-1]
    last = 1e-4 * np.arange(100) ** 2
    m = GeometryMeasurement(times, lam, np.ones(100), np.ones(100), last, 1, 0.5, 0, 0.0)
    work = 0.1 * (99 - np.arange(100))
    k_share = np.flatnonzero(last <= (work / 4) ** 2)[-1]
    k_sum = np.argmin(last + work**2 / 4)
    assert geometric_grid(m, 5)[1] == times[1:][k_share]
    assert geometric_grid(m, 5, first_step="min_sum")[1] == times[1:][k_sum]
    assert k_sum > k_share  # the sum weights the other steps N - 1 times more: the first rule jumps from higher up
    with pytest.raises(ArgumentError, match="first_step"):
        geometric_grid(m, 5, first_step="nope")


def test_measurement_on_the_scalar_gaussian_chain_against_closed_forms():
    # data N(0, C): the DDIM chain is linear, x_{k-1} = f_k x_k; D_k = alpha_k C x_k / (ab_k C + sigma_k^2);
    # J_{k->0} = prod_{j <= k} f_j. local_error and propagated are compared with the same quantities
    # from the closed forms on the same fine grid (finite differences in lambda as the method
    # does); propagated uses random probes: 256 probes x 64 trajectories give a chi-square
    # mean with relative standard deviation sqrt(2 / 16384) ~ 1 %, so 6 % is five sigmas.
    with jax.enable_x64(True):
        sched = pj.linear(1000, dtype=jnp.float64)
        x_T = jax.random.normal(jax.random.PRNGKey(1), (64, 1), jnp.float64)
        m = measure_geometry(scalar_gaussian_eps(sched), sched, x_T, fine_steps=60, probes=256)
        times = m.times
        tab = step_tables(sched, times)
        log_ab = np.asarray(sched.log_alpha_bar, np.float64)[times[1:]]
        ab, sig2 = np.exp(log_ab), -np.expm1(log_ab)
        f = np.asarray(tab.a) + np.asarray(tab.b) * np.sqrt(sig2) / (ab * C + sig2)  # step k -> k-1, k = 1..M
        x = np.asarray(x_T)[:, 0]
        states = np.zeros((64, 60))
        states[:, -1] = x
        for k in range(59, 0, -1):
            states[:, k - 1] = f[k] * states[:, k]
        d = np.sqrt(ab) * C * states / (ab * C + sig2)
        lam = np.log(np.sqrt(ab / sig2))
        np.testing.assert_allclose(m.half_log_snr, lam, rtol=1e-12)
        e = 0.5 * np.sqrt(ab) * np.gradient(d, lam, axis=1)
        np.testing.assert_allclose(m.local_error, np.sqrt(np.mean(e**2, axis=0)), rtol=1e-8)
        jac = np.cumprod(f)  # J_{k->0} = f_1 ... f_k
        expected = np.sqrt(np.mean((jac[:-1] * e[:, :-1]) ** 2, axis=0))
        np.testing.assert_allclose(m.propagated[:-1], expected, rtol=0.06)
        x0 = f[0] * states[:, 0]
        np.testing.assert_allclose(
            m.last_step_error, np.sqrt(np.mean((d - x0[:, None]) ** 2, axis=0)), rtol=1e-8, atol=1e-14
        )


def test_continuous_tables_equal_the_integer_tables_at_integer_times():
    with jax.enable_x64(True):
        sched = pj.linear(1000, dtype=jnp.float64)
        grid = np.array([0, 1, 37, 200, 650, 1000])
        a, b = step_tables(sched, grid), continuous_step_tables(sched, grid.astype(np.float64))
        for field in a._fields:
            x, y = np.asarray(getattr(a, field)), np.asarray(getattr(b, field))
            finite = np.isfinite(x)
            np.testing.assert_array_equal(finite, np.isfinite(y))
            np.testing.assert_allclose(y[finite], x[finite], rtol=1e-12, atol=1e-13)  # G: a difference, not a sum


def test_gradient_through_the_chain_matches_finite_differences():
    with jax.enable_x64(True):
        sched = pj.linear(1000, dtype=jnp.float64)
        eps_fn = scalar_gaussian_eps(sched)
        x_T = jnp.array([[0.7], [-1.3]], jnp.float64)
        # times between integers: log alpha_bar is piecewise linear in t, with kinks at the integers
        logits = jnp.asarray(logits_from_grid([0, 20.3, 150.4, 500.2, 1000], 1000))

        def loss(z):
            tables = DDIM().tables_from(continuous_step_tables(sched, grid_times_from_logits(z, 1000)))
            out = jax.vmap(lambda x: chain_from_tables(eps_fn, tables, x, sampler=DDIM(), remat=True))(x_T)
            return jnp.sum(out**2)

        # compiled (eagerly, the gradient and the 8 evaluations took 10 s of dispatch on a 2-core CPU)
        grad = np.asarray(jax.jit(jax.grad(loss))(logits))
        h = 1e-6  # moves the times by far less than the distance to a rounding boundary of the network's t
        compiled_loss = jax.jit(loss)
        fd = [(compiled_loss(logits.at[i].add(h)) - compiled_loss(logits.at[i].add(-h))) / (2 * h) for i in range(4)]
        np.testing.assert_allclose(grad, np.asarray(fd), rtol=1e-5, atol=1e-10)
        times = np.asarray(grid_times_from_logits(logits, 1000))
        np.testing.assert_allclose(times, [0, 20.3, 150.4, 500.2, 1000], rtol=1e-9)


def test_design_grid_methods_and_bad_input():
    sched = pj.linear(1000)
    eps_fn = scalar_gaussian_eps(sched)
    x_T = jax.random.normal(jax.random.PRNGKey(2), (8, 1))
    for method in ("time_uniform", "edm", "geometric", "geometric_local", "gits"):
        d = design_grid(eps_fn, sched, 4, method=method, x_T=x_T, options={"fine_steps": 40} if "geo" in method else {})
        assert d.grid[0] == 0 and d.grid[-1] == 1000 and len(d.grid) == 5 and np.all(np.diff(d.grid) > 0)
        assert d.nfe == 4 and d.method == method
    oracle = design_grid(eps_fn, sched, 3, method="oracle", x_T=x_T, options={"max_sweeps": 1})
    assert oracle.record["history"][-1] <= oracle.record["history"][0]
    assert oracle.network_evaluations > 8 * 1000  # the reference's T evaluations per seed are counted
    with pytest.raises(ArgumentError, match="method"):
        design_grid(eps_fn, sched, 4, method="nope", x_T=x_T)
    with pytest.raises(ArgumentError, match="steps"):
        design_grid(eps_fn, sched, 1001, x_T=x_T)
    with pytest.raises(ArgumentError, match="x_T"):
        design_grid(eps_fn, sched, 4)
    with pytest.raises(ArgumentError, match="sampler"):
        design_grid(eps_fn, sched, 4, x_T=x_T, sampler="ddim")
    with pytest.raises(ArgumentError, match="data"):
        design_grid(eps_fn, sched, 4, x_T=x_T, method="ays")  # Align Your Steps needs training images
    # a misspelt or foreign option is refused by name before any work, for every method
    for method, bad in (("refined", "sweep"), ("geometric", "fine_step"), ("gradient", "iteration"), ("corrected", "lr"),
                        ("oracle", "sweeps"), ("gits", "teacher"), ("ays", "samples"), ("edm", "rh0"),
                        ("corrected", "sampler")):  # fmt: skip
        with pytest.raises(ArgumentError, match=rf"^options: unknown options \['{bad}'\] for '{method}'"):
            design_grid(eps_fn, sched, 4, x_T=x_T, method=method, options={bad: 1})
    with pytest.raises(ArgumentError, match=r"^options: expected a dict"):
        design_grid(eps_fn, sched, 4, x_T=x_T, options=[("fine_steps", 40)])  # type: ignore[arg-type]
    with pytest.raises(ArgumentError, match="x_T"):
        design_grid(eps_fn, sched, 4, x_T=jnp.zeros((8, 1), jnp.int32))


def test_geometric_error_model_is_first_order_for_every_solver_unless_asked():
    """By default the geometric grid of DPM-Solver++(2M) is placed by DDIM's first-order local error
    (the same grid as DDIM's, from the same measurement); ``error_model="solver"`` uses the solver's
    own order, the grid of ``measure_geometry(..., sampler=DPMSolverPP2M())``."""
    sched = pj.linear(1000)
    eps_fn = scalar_gaussian_eps(sched)
    x_T = jax.random.normal(jax.random.PRNGKey(3), (4, 1))
    options = {"fine_steps": 40}
    ddim = design_grid(eps_fn, sched, 5, method="geometric", x_T=x_T, options=options)
    dpm = design_grid(eps_fn, sched, 5, sampler=DPMSolverPP2M(), method="geometric", x_T=x_T, options=options)
    assert dpm.grid.tolist() == ddim.grid.tolist() and dpm.nfe == 5
    own = design_grid(eps_fn, sched, 5, sampler=DPMSolverPP2M(), method="geometric", x_T=x_T,
                      options={**options, "error_model": "solver"})  # fmt: skip
    expected = geometric_grid(measure_geometry(eps_fn, sched, x_T, sampler=DPMSolverPP2M(), fine_steps=40), 5)
    assert own.grid.tolist() == expected.tolist() and own.grid.tolist() != ddim.grid.tolist()
    with pytest.raises(ArgumentError, match=r"^options: error_model"):
        design_grid(eps_fn, sched, 5, method="geometric", x_T=x_T, options={"error_model": "second"})


def test_corrected_denoiser_is_the_stated_formula_and_plain_off_its_grid():
    """``g_i eps(s_i x, t) + c_i x`` at the steps of its grid (checked against the formula), ``eps`` elsewhere."""
    sched = pj.linear(1000)
    eps_fn = scalar_gaussian_eps(sched)
    corrections = StepCorrections(np.array([100, 400, 1000]), np.array([1.1, 0.9, 1.3]), np.array([0.8, 1.2, 1.0]),
                                  np.array([0.05, -0.02, 0.0]))  # fmt: skip
    corrected = corrected_denoiser(eps_fn, corrections)
    x = jnp.array([0.7, -1.3])
    for k, t in enumerate((100, 400, 1000)):
        g, s, c = corrections.gain[k], corrections.scale[k], corrections.shift[k]
        np.testing.assert_allclose(corrected(x, t), g * eps_fn(s * x, t) + c * x, rtol=1e-6)
    np.testing.assert_allclose(corrected(x, 250), eps_fn(x, 250), rtol=1e-7)  # not a step of its grid
    # inside the chain: the DDIM step x_s = a x + b eps'(x) with the grid's own (a, b)
    grid = np.array([0, 100, 400, 1000])
    x_T = jnp.array([0.7, -1.3])
    _, states = pj.sample_chain(corrected, sched, x_T, grid=grid, return_trajectory=True)
    tables = ddim_tables(sched, grid)
    x_prev = x_T
    for i in (3, 2, 1):
        x_prev = tables.a[i - 1] * x_prev + tables.b[i - 1] * corrected(x_prev, int(grid[i]))
        np.testing.assert_allclose(states[4 - i], x_prev, rtol=1e-5, atol=1e-6)
    with pytest.raises(ArgumentError, match="corrections"):
        corrected_denoiser(eps_fn, corrections._replace(gain=np.array([1.0, -1.0, 1.0])))
    with pytest.raises(ArgumentError, match="corrections"):
        corrected_denoiser(eps_fn, corrections._replace(shift=np.zeros(2)))


@pytest.mark.parametrize("sampler", [DDIM(), DPMSolverPP2M()], ids=["ddim", "dpm"])
def test_fitted_corrections_recover_the_exact_flow_of_a_gaussian(x64, sampler):
    """On Gaussian data the probability-flow map is linear, ``x_s = sqrt(v_s / v_t) x_t`` with ``v = ab C + sigma^2``,
    and a corrected step of either solver (linear in ``x`` and its history) can equal it: fitted to that
    closed-form reference (not to any chain), a 3-step corrected solver must cut the plain 3-step error by
    more than 95 % (Adam, 300 steps: the loss is a smooth function of 9 scalars whose minimum is zero)."""
    sched = pj.linear(1000, dtype=jnp.float64)
    eps_fn = scalar_gaussian_eps(sched)
    grid = np.array([0, 150, 500, 1000])
    x_T = jax.random.normal(jax.random.PRNGKey(0), (32, 1), jnp.float64)
    v_T = float(sched.alpha_bar[1000] * C + sched.sigma2[1000])
    exact = np.sqrt(C / v_T) * np.asarray(x_T)  # x_0 of the flow from x_T (v_0 = C)
    plain = pj.grid_design.run_grid(eps_fn, sched, grid, x_T, sampler=sampler)
    fit = fit_step_corrections(eps_fn, sched, grid, x_T, exact, sampler=sampler, iterations=300, learning_rate=0.05)
    corrected = pj.grid_design.run_grid(corrected_denoiser(eps_fn, fit.corrections), sched, grid, x_T, sampler=sampler)
    plain_error, corrected_error = grid_errors(plain, exact).mean(), grid_errors(corrected, exact).mean()
    assert plain_error > 1e-3  # there is an error to remove
    assert corrected_error < 0.05 * plain_error
    assert fit.losses[0] == pytest.approx(np.mean((plain - exact) ** 2), rel=1e-6)  # iteration 0: the plain solver
    assert fit.network_evaluations == 3 * 300 * 3 * 32
    with pytest.raises(ArgumentError, match="reference"):
        fit_step_corrections(eps_fn, sched, grid, x_T, exact[:5])
    for bad in (0.0, float("nan"), True):
        with pytest.raises(ArgumentError, match="learning_rate"):
            fit_step_corrections(eps_fn, sched, grid, x_T, exact, learning_rate=bad)


def test_correction_losses_against_numpy_and_the_rmse_fit(x64):
    """``"mse"`` and ``"rmse"`` equal their NumPy forms; a fit on ``"rmse"`` starts at the plain solver's mean RMSE.

    Independent values: the mean squared error, and the mean over seeds of each seed's RMSE, in NumPy.
    A seed matched exactly contributes nothing and keeps the gradient finite. The Gaussian fit of
    ``test_fitted_corrections_recover_the_exact_flow_of_a_gaussian`` with the per-seed RMSE as its loss:
    its first loss is ``grid_errors(plain).mean()`` (to 1e-9 relative), and it removes over 95 % of it.
    """
    x_0 = jax.random.normal(jax.random.PRNGKey(1), (5, 3, 4), jnp.float64)
    reference = jnp.asarray(np.asarray(x_0) + np.arange(5)[:, None, None] * 0.1)  # seed 0 matched exactly
    per_seed = np.sqrt(np.mean((np.asarray(x_0) - np.asarray(reference)) ** 2, axis=(1, 2)))
    assert float(correction_loss(x_0, reference, "mse")) == pytest.approx(np.mean(per_seed**2), rel=1e-12)
    assert float(correction_loss(x_0, reference, "rmse")) == pytest.approx(np.mean(per_seed), rel=1e-12)
    gradient = jax.grad(lambda x: correction_loss(x, reference, "rmse"))(x_0)
    assert np.all(np.isfinite(np.asarray(gradient))) and np.all(np.asarray(gradient)[0] == 0)

    sched = pj.linear(1000, dtype=jnp.float64)
    eps_fn = scalar_gaussian_eps(sched)
    grid = np.array([0, 150, 500, 1000])
    x_T = jax.random.normal(jax.random.PRNGKey(0), (32, 1), jnp.float64)
    v_T = float(sched.alpha_bar[1000] * C + sched.sigma2[1000])
    exact = np.sqrt(C / v_T) * np.asarray(x_T)
    plain = pj.grid_design.run_grid(eps_fn, sched, grid, x_T)
    fit = fit_step_corrections(eps_fn, sched, grid, x_T, exact, iterations=300, learning_rate=0.05, loss="rmse")
    assert fit.losses[0] == pytest.approx(float(grid_errors(plain, exact).mean()), rel=1e-9)
    corrected = pj.grid_design.run_grid(corrected_denoiser(eps_fn, fit.corrections), sched, grid, x_T)
    assert grid_errors(corrected, exact).mean() < 0.05 * grid_errors(plain, exact).mean()
    with pytest.raises(ArgumentError, match=r"^loss:"):
        fit_step_corrections(eps_fn, sched, grid, x_T, exact, loss="mae")


def test_design_grid_corrected_keeps_the_best_candidate_on_held_out_design_seeds(monkeypatch):
    """Of 8 design seeds the last 2 are held out; the fits see the first 6. The kept candidate is the
    one with the lowest held-out RMSE, recomputed here from the returned grid and corrections (the
    exactly correctable scalar Gaussian: a fit wins). With fits made bad on purpose (gains tripled),
    the uncorrected best fixed grid is kept, with corrections that change nothing."""
    import pifs_jax.grid_design.design as design_module

    sched = pj.linear(1000)
    eps_fn = scalar_gaussian_eps(sched)
    x_T = jax.random.normal(jax.random.PRNGKey(2), (8, 1))
    d = design_grid(eps_fn, sched, 3, method="corrected", x_T=x_T, options={"iterations": 20})
    record = d.record
    assert set(record["starts"]) == {"geometric", "best_fixed"} and record["held_out_seeds"] == 2
    assert set(record["held_out_rmse"]) == {"geometric", "best_fixed", "best_fixed_plain"}
    assert record["kept"] == min(record["held_out_rmse"], key=record["held_out_rmse"].__getitem__)
    assert record["kept"] != "best_fixed_plain"  # the Gaussian is exactly correctable
    held_reference = reference_solution(eps_fn, sched, x_T[6:])
    rmse = mean_grid_error(corrected_denoiser(eps_fn, d.corrections), sched, d.grid, x_T[6:], held_reference)
    assert rmse == pytest.approx(record["held_out_rmse"][record["kept"]], rel=1e-6)
    assert all(s["design_loss"] <= s["plain_loss"] for s in record["starts"].values())
    assert d.corrections is not None and d.corrections.times.tolist() == d.grid[1:].tolist()
    # the reference (8 x 1000), both fits on 6 seeds (3 per call, 20 iterations, 3 calls) and the
    # held-out scoring (3 candidates x 3 calls x 2 seeds) are counted, and the starts on top of them
    assert d.network_evaluations > 8 * 1000 + 2 * 3 * 20 * 3 * 6 + 3 * 3 * 2

    real_fit = design_module.fit_step_corrections

    @functools.wraps(real_fit)  # keeps its signature: design_grid reads the allowed options from it
    def bad_fit(*args, **kwargs):
        result = real_fit(*args, **kwargs)
        return result._replace(corrections=result.corrections._replace(gain=3.0 * result.corrections.gain))

    monkeypatch.setattr(design_module, "fit_step_corrections", bad_fit)
    worse = design_grid(eps_fn, sched, 3, method="corrected", x_T=x_T, options={"iterations": 20})
    assert worse.record["kept"] == "best_fixed_plain"
    assert worse.grid.tolist() == worse.record["starts"]["best_fixed"]["grid"]
    np.testing.assert_array_equal(worse.corrections.gain, 1.0)
    np.testing.assert_array_equal(worse.corrections.scale, 1.0)
    np.testing.assert_array_equal(worse.corrections.shift, 0.0)


def test_design_grid_command_writes_the_grid_and_the_diffusers_list(tmp_path, capsys):
    import json

    from pifs_jax import cli

    out = tmp_path / "g"
    argv = ["design-grid", "--pretrained", "dit-digits", "--steps", "7", "--method", "edm", "--out", str(out)]
    assert cli.main(argv) == 0
    record = json.loads((out / "grid.json").read_text())["results"]
    assert record["grid"] == pj.fixed_grid(pj.linear(1000), 7, "edm").tolist()
    assert record["diffusers_timesteps"] == [t - 1 for t in record["grid"][1:]][::-1]  # ours t = diffusers' t + 1
    assert (out / "grid.png").is_file() and "NFE 7" in capsys.readouterr().out
    assert cli.main(["design-grid", "--pretrained", "dit-digits", "--steps", "1001", "--out", str(tmp_path / "h")]) == 2
    assert "--steps" in capsys.readouterr().err
    assert cli.main(["design-grid", "--pretrained", "nope", "--steps", "5", "--out", str(tmp_path / "i")]) == 2
    assert "--pretrained" in capsys.readouterr().err


def test_grid_design_experiment_tables_are_consistent(tmp_path):
    """The experiment's computation on a tiny configuration: every method judged on the same seeds, gains paired."""
    from pifs_jax import reproduce

    module = reproduce.load_experiment(reproduce.discover_experiments()["grid_design"])
    cfg = dict(models=["mixture"], steps=[3], samplers=["ddim", "dpm"], design=8, evaluate=16, oracle_sweeps=1,
               gradient_iterations=2, methods=("geometric", "oracle"))  # fmt: skip
    results = module.compute(cfg, progress=False)
    run = results["models"]["mixture"]["runs"][0]
    for models in (["mixture", "dit-digitz"], []):  # refused before anything is computed
        with pytest.raises(ArgumentError, match="^models: .*dit-digitz" if models else "^models:"):
            module.run(tmp_path / "refused", tables=True, models=models)
    for methods in (["refined", "orakel"], []):
        with pytest.raises(ArgumentError, match="^methods: .*orakel" if methods else "^methods:"):
            module.run(tmp_path / "refused", tables=True, methods=methods)
    for evaluate in (1, 0, 2.5, True):
        with pytest.raises(ArgumentError, match=r"^evaluate: expected an integer >= 2"):
            module.run(tmp_path / "refused", full=True, evaluate=evaluate)
    assert not (tmp_path / "refused").exists()
    # the transfer: each designed grid run by the other solver, against a direct run of that grid
    transfer = results["models"]["mixture"]["transfer"]
    assert {(t["method"], t["designed_for"], t["run_by"]) for t in transfer} == {
        (m, a, b) for m in ("geometric", "oracle") for a, b in (("ddim", "dpmpp2m"), ("dpmpp2m", "ddim"))
    }
    eps_fn, sched, shape, _ = module.mixture_model()
    evaluate = jax.random.normal(jax.random.PRNGKey(module.SEED_EVAL), (16, *shape))
    reference = pj.grid_design.reference_solution(eps_fn, sched, evaluate)
    ddim_run, dpm_run = results["models"]["mixture"]["runs"]
    row = next(t for t in transfer if t["method"] == "geometric" and t["designed_for"] == "ddim")
    direct = pj.grid_design.run_grid(eps_fn, sched, ddim_run["methods"]["geometric"]["grid"], evaluate,
                                     sampler=DPMSolverPP2M())  # fmt: skip
    assert row["rmse"] == pytest.approx(grid_errors(direct, reference).mean(), rel=1e-6)
    assert row["native_rmse"] == dpm_run["methods"]["geometric"]["rmse"]
    assert "designed for -> run by" in module.render_markdown(results)
    rows = run["methods"]
    assert set(rows) == {*module.FIXED, "geometric", "oracle"} and run["nfe"] == 3
    best = run["best_fixed"]
    assert rows[best]["rmse"] == min(rows[m]["rmse"] for m in module.FIXED)
    for row in rows.values():
        assert row["gain_vs_best_fixed"]["gain"] == pytest.approx(1 - row["rmse"] / rows[best]["rmse"], rel=1e-9)
    assert "| geometric |" in module.render_markdown(results)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an empty panel warns "No artists with labels found to put in legend"
        files = module.draw_figures(results, tmp_path)
    assert files == ["error_vs_nfe_mixture.png"] and (tmp_path / files[0]).is_file()

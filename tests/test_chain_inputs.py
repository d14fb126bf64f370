"""Bad inputs at the chain's entry points: integer states, real-valued grids, eta, non-finite results.

Each case feeds the input that used to give a silent wrong answer (or an error from deep inside
JAX) and asserts the error names the argument, or that the documented conversion is exact:

- states must be floating: an integer ``x_T`` is refused everywhere a state enters (it used to
  run the chain in integer arithmetic and return ``[1 1 1]``);
- a grid of integer-valued floats (``np.linspace(0, 1000, 51)``) is converted exactly; a
  fractional one is refused by name (it used to raise a ``TypeError`` from JAX's indexing);
- ``eta`` must lie in ``[0, 1]``;
- eager chains and spectra raise :class:`pifs_jax.errors.NonFiniteError` (a ``ValueError`` and a
  ``FloatingPointError``) for a non-finite result, naming the step; under ``jax.jit`` /
  ``jax.grad`` nothing is checked and nothing is retraced.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pifs_jax as pj
from pifs_jax.ddim import ddim_step, locate_nonfinite
from pifs_jax.errors import ArgumentError, NonFiniteError
from pifs_jax.grids import as_grid

SCHED = pj.cosine(100)
GRID = np.arange(0, 101, 10)  # 10 steps, executed t = 100 -> 90, ..., 10 -> 0


def shrink(x, t):
    """A finite linear denoiser."""
    return 0.1 * x


def blows_up(x, t):
    """Infinite output from t = 30 down: the first non-finite step is t = 30 -> 20, step 8 of 10."""
    return jnp.where(t < 40, jnp.inf, 0.0) * x


# ----------------------------------------------------------------------------- A: integer states

IMAGE = (4, 4, 1)
C = pj.step_coefficients(SCHED, GRID)
STATE_ENTRY_POINTS = {
    "ddim_step": ("x", lambda x: ddim_step(shrink, x, 30, 1.0, -0.5)),
    "ddim_chain": ("x_T", lambda x: pj.ddim_chain(shrink, SCHED, x, grid=GRID)),
    "ddim_sample": ("x_T", lambda x: pj.ddim_sample(shrink, SCHED, x[None], grid=GRID)),
    "sharded_ddim_sample": ("x_T_batch", lambda x: pj.sharded_ddim_sample(shrink, SCHED, x[None], grid=GRID)),
    "step_jacobian": ("x", lambda x: pj.step_jacobian(shrink, x, t=30, a=1.0, b=-0.5)),
    "ddim_step_jacobian": ("x", lambda x: pj.ddim_step_jacobian(shrink, SCHED, x, grid=GRID, step=3)),
    "chain_jacobian": ("x_T", lambda x: pj.chain_jacobian(shrink, SCHED, x, grid=GRID)),
    "step_jvp": ("x", lambda x: pj.step_jvp(shrink, x, jnp.ones(x.shape), t=30, a=1.0, b=-0.5)),
    "step_vjp": ("x", lambda x: pj.step_vjp(shrink, x, jnp.ones(x.shape), t=30, a=1.0, b=-0.5)),
    "chain_lyapunov_spectrum": ("x_T", lambda x: pj.chain_lyapunov_spectrum(shrink, SCHED, x, grid=GRID)),
    "block_norms_matrix_free": (
        "x",
        lambda x: pj.block_norms_matrix_free(lambda y: 0.5 * y, x, IMAGE, 2, key=jax.random.key(0)),
    ),
    "suppression_field": (
        "x",
        lambda x: pj.suppression_field(
            shrink, shrink, x, t=30, b=-0.5, image_shape=IMAGE, patch_size=2, leading_vectors=jnp.ones((4, 4)) / 2
        ),
    ),
}


@pytest.mark.parametrize("entry", sorted(STATE_ENTRY_POINTS))
@pytest.mark.parametrize("dtype", [jnp.int32, jnp.uint8, jnp.bool_])
def test_integer_states_are_refused_by_name(entry, dtype):
    argument, call = STATE_ENTRY_POINTS[entry]
    with pytest.raises(ArgumentError) as info:
        call(jnp.ones(IMAGE, dtype))
    assert info.value.argument == argument
    assert "floating" in info.value.detail and jnp.dtype(dtype).name in info.value.detail


def test_the_reported_integer_chain_is_refused_and_its_float_twin_runs():
    """``x_T = [1, 1, 1]`` (int32) used to return int32 ``[1 1 1]``; the float input is a real chain."""
    with pytest.raises(ArgumentError, match=r"^x_T: expected a floating array .* got dtype int32"):
        pj.ddim_chain(shrink, SCHED, jnp.ones(3, jnp.int32), grid=GRID)
    x_0 = pj.ddim_chain(shrink, SCHED, jnp.ones(3), grid=GRID)
    steps = pj.chain_steps(SCHED, GRID)
    expected = np.prod(np.asarray(steps.a, np.float64) + 0.1 * np.asarray(steps.b, np.float64))  # linear chain
    assert x_0.dtype == jnp.float32
    np.testing.assert_allclose(x_0, expected, rtol=1e-5)  # float32 product of 10 factors


def test_integer_states_are_refused_under_jit_too():
    """The dtype is static: a traced integer state is refused while tracing."""
    with pytest.raises(ArgumentError, match=r"^x:"):
        jax.jit(lambda x: ddim_step(shrink, x, 30, 1.0, -0.5))(jnp.ones(3, jnp.int32))
    with pytest.raises(ArgumentError, match=r"^x_T:"):
        jax.jit(lambda x: pj.ddim_chain(shrink, SCHED, x, grid=GRID))(jnp.ones(3, jnp.int32))


def test_autonomous_maps_still_promote_an_integer_start():
    """``lyapunov_spectrum`` takes a point of an arbitrary map: integers are converted (documented)."""
    spec = pj.lyapunov_spectrum(lambda v: 0.5 * v, jnp.ones(2, jnp.int32), n_steps=10)
    np.testing.assert_allclose(spec.exponents, np.log(0.5), rtol=1e-6)


# ----------------------------------------------------------------------------- B: real-valued grids


def test_integer_valued_float_grids_are_converted_exactly():
    floats = np.linspace(0, 1000, 51)  # the reported input: 0., 20., ..., 1000.
    converted = as_grid(floats, 1000)
    assert converted.dtype == np.int64
    np.testing.assert_array_equal(converted, np.arange(0, 1001, 20))
    sched = pj.cosine(1000)
    x_T = jnp.array([1.0, -2.0, 0.5])
    np.testing.assert_array_equal(
        pj.ddim_chain(shrink, sched, x_T, grid=floats),
        pj.ddim_chain(shrink, sched, x_T, grid=pj.uniform_grid(1000, 50)),
    )
    np.testing.assert_array_equal(
        pj.chain_lyapunov_spectrum(shrink, SCHED, x_T, grid=GRID.astype(float)).exponents,
        pj.chain_lyapunov_spectrum(shrink, SCHED, x_T, grid=GRID).exponents,
    )
    for as_floats in (GRID.astype(np.float32), jnp.asarray(GRID, jnp.float32), [float(g) for g in GRID]):
        np.testing.assert_array_equal(pj.chain_steps(SCHED, as_floats).a, pj.chain_steps(SCHED, GRID).a)
        np.testing.assert_array_equal(pj.step_coefficients(SCHED, as_floats).b, pj.step_coefficients(SCHED, GRID).b)


@pytest.mark.parametrize(
    "grid, match",
    [
        ([0, 10.5], r"tau_1 = 10.5 "),
        ([0.0, 20.000000000000004, 40.0], r"tau_1 = 20.000000000000004 "),  # 0.02 * 1000 in floating point
        ([0.0, np.nan], r"tau_1 = nan "),
        ([0.0, np.inf], r"tau_1 = inf "),
        ([False, True], "dtype bool"),
        (["0", "10"], "dtype <U2"),
        ([0, 1j], "dtype complex128"),
    ],
)
def test_fractional_and_non_real_grids_are_refused_by_name(grid, match):
    for call in (
        lambda: pj.ddim_chain(shrink, SCHED, jnp.ones(3), grid=np.asarray(grid)),
        lambda: pj.chain_steps(SCHED, np.asarray(grid)),
        lambda: pj.ddim_step_jacobian(shrink, SCHED, jnp.ones(3), grid=np.asarray(grid), step=1),
    ):
        with pytest.raises(ArgumentError, match=match) as info:
            call()
        assert info.value.argument == "grid"


def test_traced_grids_need_an_integer_dtype():
    run = jax.jit(lambda g: pj.ddim_chain(shrink, SCHED, jnp.ones(3), grid=g))
    with pytest.raises(ArgumentError, match=r"^grid: a traced grid must have an integer dtype, got float32"):
        run(jnp.asarray(GRID, jnp.float32))
    np.testing.assert_allclose(run(jnp.asarray(GRID)), pj.ddim_chain(shrink, SCHED, jnp.ones(3), grid=GRID), rtol=1e-6)


# ----------------------------------------------------------------------------- C: eta


@pytest.mark.parametrize("eta", [-0.1, 1.5, -1e-12, np.nan, np.inf, True, 0.5j, np.array([0.0, 0.5])])
def test_eta_outside_the_unit_interval_is_refused(eta):
    key = jax.random.key(0)
    for call in (
        lambda: pj.chain_steps(SCHED, GRID, eta=eta),
        lambda: pj.ddim_chain(shrink, SCHED, jnp.ones(3), grid=GRID, eta=eta, key=key),
        lambda: pj.ddim_sample(shrink, SCHED, jnp.ones((2, 3)), grid=GRID, eta=eta, key=key),
    ):
        with pytest.raises(ArgumentError, match=r"^eta: expected a (real )?number in \[0, 1\]"):
            call()


def test_eta_end_points_are_accepted():
    steps_ddim, steps_ddpm = pj.chain_steps(SCHED, GRID, eta=0.0), pj.chain_steps(SCHED, GRID, eta=1.0)
    np.testing.assert_array_equal(steps_ddim.noise_scale, 0.0)
    assert np.all(np.asarray(steps_ddpm.noise_scale)[:-1] > 0)  # the last step lands on alpha_bar = 1
    out = pj.ddim_chain(shrink, SCHED, jnp.ones(3), grid=GRID, eta=1.0, key=jax.random.key(0))
    assert np.all(np.isfinite(out))


# ----------------------------------------------------------------------------- D: non-finite results


def test_a_chain_that_turns_non_finite_raises_by_default():
    for kwargs in ({}, {"return_trajectory": True}, {"eta": 0.5, "key": jax.random.key(1)}):
        with pytest.raises(NonFiniteError) as info:
            pj.ddim_chain(blows_up, SCHED, jnp.ones(3), grid=GRID, **kwargs)
        error = info.value
        assert isinstance(error, FloatingPointError) and isinstance(error, ValueError)
        assert error.argument == "eps_fn"
        assert "after sampling step 8 of 10 (t = 30 -> s = 20), in 3 of the state's 3 values" in str(error)
        assert "the denoiser's output at t = 30 has 3 non-finite values" in str(error)


def test_check_finite_false_and_traced_calls_return_non_finite_silently():
    silent = pj.ddim_chain(blows_up, SCHED, jnp.ones(3), grid=GRID, check_finite=False)
    assert np.all(~np.isfinite(silent))
    jitted = jax.jit(lambda x: pj.ddim_chain(blows_up, SCHED, x, grid=GRID))(jnp.ones(3))
    assert np.all(~np.isfinite(jitted))
    batch = jax.jit(lambda x: pj.ddim_sample(blows_up, SCHED, x, grid=GRID))(jnp.ones((2, 3)))
    assert np.all(~np.isfinite(batch))
    grad = jax.grad(lambda x: jnp.sum(pj.ddim_chain(blows_up, SCHED, x, grid=GRID)))(jnp.ones(3))
    assert grad.shape == (3,)


def test_non_finite_blame_goes_to_the_initial_state_the_schedule_or_the_denoiser():
    with pytest.raises(NonFiniteError, match=r"^x_T: the initial state has 1 non-finite of its 3 values"):
        pj.ddim_chain(shrink, SCHED, jnp.array([1.0, jnp.nan, 2.0]), grid=GRID)
    # alpha_bar_10 = e^-200: a_t = sqrt(alpha_bar_0 / alpha_bar_10) = e^100 overflows float32 (max 3.4e38)
    tiny_end = pj.from_log_alpha_bar(np.linspace(0.0, -200.0, 11), dtype=jnp.float32)
    with pytest.raises(NonFiniteError, match=r"^sched: .*step 1 of 1 \(t = 10 -> s = 0\).*alpha_bar_t = 1.38e-87 "):
        pj.ddim_chain(shrink, tiny_end, jnp.ones(3), grid=[0, 10])
    # a finite denoiser output whose step overflows: |b_t| * 3e38 > float32 max in the single step 100 -> 0
    with pytest.raises(NonFiniteError, match=r"^eps_fn: .*\(t = 100 -> s = 0\).*output at t = 100 is finite"):
        pj.ddim_chain(lambda x, t: jnp.full_like(x, 3e38), SCHED, jnp.ones(3), grid=[0, 100])
    assert locate_nonfinite(shrink, SCHED, jnp.ones(3), grid=GRID) is None


def first_bad_from_sample_two(x, t):
    """Infinite from t = 30 down, for samples whose first coordinate is positive (rows 2 and 3 below)."""
    return jnp.where((t < 40) & (x[0] > 0.5), jnp.inf, 0.0) * jnp.ones_like(x)


@pytest.mark.parametrize("sampler", [pj.ddim_sample, pj.sharded_ddim_sample])
def test_batches_name_the_first_non_finite_sample_and_step(sampler):
    x_T = jnp.array([[0.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, 0.0]])
    for return_trajectory in (False, True):
        with pytest.raises(NonFiniteError, match=r"^eps_fn: sample 2 of 4: .* step 8 of 10 \(t = 30 -> s = 20\)"):
            sampler(first_bad_from_sample_two, SCHED, x_T, grid=GRID, return_trajectory=return_trajectory)
    out = sampler(first_bad_from_sample_two, SCHED, x_T, grid=GRID, check_finite=False)
    np.testing.assert_array_equal(np.isfinite(out).all(axis=1), [True, True, False, False])


def test_spectra_raise_non_finite_error_with_the_step():
    for k in (None, 2):
        with pytest.raises(
            NonFiniteError,
            match=r"^eps_fn: a non-finite state first appears at sampling step 8 of 10 "
            r"\(t = 30 -> s = 20\), in 3 of the state's 3 values",
        ):
            pj.chain_lyapunov_spectrum(blows_up, SCHED, jnp.ones(3), grid=GRID, k=k)
    silent = pj.chain_lyapunov_spectrum(blows_up, SCHED, jnp.ones(3), grid=GRID, check_finite=False)
    assert not np.all(np.isfinite(silent.exponents))
    with pytest.raises(NonFiniteError, match=r"^map_fn: a non-finite state first appears at measured iterate 1 of 5"):
        pj.lyapunov_spectrum(lambda v: v * jnp.inf, jnp.ones(2), n_steps=5)
    silent = pj.lyapunov_spectrum(lambda v: v * jnp.inf, jnp.ones(2), n_steps=5, check_finite=False)
    assert not np.all(np.isfinite(silent.exponents))


def test_spectrum_gradient_with_a_traced_parameter_is_not_checked():
    """A concrete ``x_T`` with a traced denoiser parameter: the result is traced, so nothing is read."""

    def top(c):
        return pj.chain_lyapunov_spectrum(lambda x, t: c * x, SCHED, jnp.ones(3), grid=GRID, k=1).exponents[0]

    assert np.isfinite(float(jax.grad(top)(0.1)))


def test_the_finite_check_does_not_retrace_the_spectrum():
    """The check reads the concrete output: calls with ``check_finite`` on and off share one trace.

    Every eager call evaluates the denoiser's shape once (``check_denoiser``); any further trace of
    ``eps_fn`` would be a new compilation of the spectrum.
    """
    traces = []

    def counted(x, t):
        traces.append(None)
        return 0.1 * x

    x_T = jnp.ones(3)
    pj.chain_lyapunov_spectrum(counted, SCHED, x_T, grid=GRID, k=2)  # compiles
    before = len(traces)
    pj.check_denoiser(counted, x_T)
    per_call = len(traces) - before
    for check_finite in (False, True, False):
        before = len(traces)
        pj.chain_lyapunov_spectrum(counted, SCHED, x_T, grid=GRID, k=2, check_finite=check_finite)
        assert len(traces) - before == per_call

"""Lyapunov spectra: the DDIM chain against the closed form, autonomous maps against known values.

Chain spectra are per step, ``(1/N) log sigma_j(J_N ... J_1)``. The Gaussian denoiser is built
here, inline, with a covariance whose eigenvectors are a random orthogonal ``U`` (not the
coordinate axes): ``eps_t(x) = sigma_t U diag(1/(ab_t lambda_i + sigma_t^2)) U^T x``.
"""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pifs_jax as pj
from pifs_jax.lyapunov import Spectrum, chain_lyapunov_spectrum, lyapunov_spectrum
from pifs_jax.orthogonalization import householder_qr, qr_2x2
from reference import random_orthogonal

N_DIM = 16
GRID = pj.uniform_grid(1000, 50)
VARIANCES = np.logspace(-2, 1, N_DIM)  # straddle lambda** ~ 1.05 of the 50-step cosine chain


def gaussian_eps(sched, variances, basis):
    """Optimal noise predictor of zero-mean Gaussian data with covariance ``U diag(lambda) U^T``."""
    lam = jnp.asarray(variances)
    u = jnp.asarray(basis)

    def eps_fn(x, t):
        log_ab = sched.log_alpha_bar[t].astype(x.dtype)
        alpha_bar, sigma2 = jnp.exp(log_ab), -jnp.expm1(log_ab)
        gain = (jnp.sqrt(sigma2) / (alpha_bar * lam.astype(x.dtype) + sigma2)).astype(x.dtype)
        u_x = u.astype(x.dtype)
        return (u_x @ (gain * (u_x.T @ x.reshape(-1)))).reshape(x.shape)

    return eps_fn


def nonlinear_eps(sched, variances, basis):
    """Gaussian predictor plus a state-dependent term: the step Jacobian varies along the trajectory."""
    gaussian = gaussian_eps(sched, variances, basis)

    def eps_fn(x, t):
        sigma = jnp.sqrt(-jnp.expm1(sched.log_alpha_bar[t])).astype(x.dtype)
        return gaussian(x, t) + 0.3 * sigma * jnp.tanh(x)

    return eps_fn


def _x_T(dtype, seed=1, shape=(N_DIM,)):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), dtype)


def _analytic(sched):
    """Descending analytic per-step exponents (1/N) sum_t log f_t(lambda_i)."""
    return np.sort(np.asarray(pj.lyapunov_exponents(sched, VARIANCES, GRID), np.float64))[::-1]


# ----------------------------------------------------------------------------- Gaussian chain, float64


@pytest.fixture(scope="module")
def gaussian64():
    with jax.enable_x64(True):
        sched = pj.cosine(1000)
        eps_fn = gaussian_eps(sched, VARIANCES, random_orthogonal(N_DIM))
        x_T = _x_T(jnp.float64)
        full = chain_lyapunov_spectrum(eps_fn, sched, x_T, grid=GRID, return_history=True)
        benettin = chain_lyapunov_spectrum(eps_fn, sched, x_T, grid=GRID, method="benettin")
        yield dict(sched=sched, eps_fn=eps_fn, x_T=x_T, full=full, benettin=benettin, analytic=_analytic(sched))


def test_full_chain_spectrum_equals_the_closed_form(x64, gaussian64):
    spec, analytic = gaussian64["full"], gaussian64["analytic"]
    assert isinstance(spec, Spectrum) and spec.per == "step" and spec.n_steps == 50
    assert spec.exponents.dtype == jnp.float64
    chex.assert_shape([spec.exponents, spec.history], [(N_DIM,), (50, N_DIM)])
    np.testing.assert_allclose(spec.exponents, analytic, rtol=1e-8, atol=1e-8)
    assert np.all(np.diff(np.asarray(spec.exponents)) <= 0)
    # the variances straddle lambda**: both signs occur, and the dimension is fractional
    assert analytic[0] > 0 > analytic[-1]
    expected_dim = float(pj.analytic_kaplan_yorke(gaussian64["sched"], VARIANCES, grid=GRID))
    assert float(spec.dimension) == pytest.approx(expected_dim, rel=1e-8)
    assert 0 < expected_dim < N_DIM and expected_dim != round(expected_dim)


def test_benettin_sum_is_visibly_off_for_50_steps(x64, gaussian64):
    """From the identity basis Benettin's sum is not the finite-time spectrum (O(1/N) error)."""
    exact, benettin = gaussian64["full"].exponents, gaussian64["benettin"].exponents
    error = float(np.max(np.abs(np.asarray(benettin) - gaussian64["analytic"])))
    assert error > 1e-3  # ~0.016 per step here; the exact method is 1e-8 away
    assert float(np.max(np.abs(np.asarray(exact) - gaussian64["analytic"]))) < 1e-8
    # the product of all diagonal factors is the determinant either way: the sums agree
    assert float(jnp.sum(benettin)) == pytest.approx(float(jnp.sum(exact)), rel=1e-10, abs=1e-12)


@pytest.mark.slow
def test_leading_k_chain_spectrum_equals_the_closed_form(x64, gaussian64):
    analytic = gaussian64["analytic"]
    args = (gaussian64["eps_fn"], gaussian64["sched"], gaussian64["x_T"])
    spec = chain_lyapunov_spectrum(*args, grid=GRID, k=4, return_history=True)
    np.testing.assert_allclose(spec.exponents, analytic[:4], rtol=1e-8, atol=1e-8)
    assert math.isnan(float(spec.dimension))  # partial sums of 4 exponents stay positive: k too small
    assert spec.vectors.shape == (4, N_DIM)
    history = np.asarray(spec.history)
    done = ~np.isnan(history[:, 0])
    assert 1 < done.sum() < history.shape[0]  # converged before the iteration limit
    np.testing.assert_allclose(history[done][-1], analytic[:4], atol=1e-8)
    # the right singular vectors are U's columns for the top variances (up to sign)
    basis = random_orthogonal(N_DIM)[:, ::-1][:, :4]
    overlap = np.abs(np.asarray(spec.vectors) @ basis)
    np.testing.assert_allclose(overlap, np.eye(4), atol=1e-6)

    # with enough exponents to make the partial sums negative, the dimension is reported
    k = int(np.argmax(np.cumsum(analytic) < 0)) + 1
    spec_k = chain_lyapunov_spectrum(*args, grid=GRID, k=k, oversample=2)
    np.testing.assert_allclose(spec_k.exponents, analytic[:k], rtol=1e-8, atol=1e-8)
    assert float(spec_k.dimension) == pytest.approx(float(gaussian64["full"].dimension), rel=1e-8)

    benettin = chain_lyapunov_spectrum(*args, grid=GRID, k=4, method="benettin")
    assert float(np.max(np.abs(np.asarray(benettin.exponents) - analytic[:4]))) > 1e-3


# ----------------------------------------------------------------------------- Gaussian chain, float32


@pytest.mark.slow
def test_float32_chain_spectrum(x32):
    """float32 state and schedule against the float64 closed form.

    Tolerance 2e-5 per step (observed: 3e-6). The float32 schedule itself is accurate (its
    analytic exponents agree with float64 to 5e-9); the error is the chain's rounding: every
    step rounds the tangent block and its QR at eps_32 = 6e-8 relative, amplified by up to ~n,
    and the N = 50 steps add up in ``log sigma`` before the division by N, i.e. ~n eps_32 ~ 1e-6
    per step.
    """
    sched = pj.cosine(1000)
    eps_fn = gaussian_eps(sched, VARIANCES, random_orthogonal(N_DIM))
    x_T = _x_T(jnp.float32)
    full = chain_lyapunov_spectrum(eps_fn, sched, x_T, grid=GRID)
    leading = chain_lyapunov_spectrum(eps_fn, sched, x_T, grid=GRID, k=4)
    assert full.exponents.dtype == jnp.float32 and leading.exponents.dtype == jnp.float32
    with jax.enable_x64(True):
        analytic = _analytic(pj.cosine(1000))
    np.testing.assert_allclose(full.exponents, analytic, rtol=0, atol=2e-5)
    np.testing.assert_allclose(leading.exponents, analytic[:4], rtol=0, atol=2e-5)


# ----------------------------------------------------------------------------- exactness at large ranges


def _diagonal_step_eps(sched, basis, log_factors):
    """A denoiser whose DDIM step is exactly ``U diag(exp(c_i)) U^T`` at every step of GRID."""
    steps = pj.chain_steps(sched, GRID)
    a = jnp.zeros(sched.T + 1).at[steps.t].set(steps.a)
    b = jnp.ones(sched.T + 1).at[steps.t].set(steps.b)
    u = jnp.asarray(basis)
    factors = jnp.exp(jnp.asarray(log_factors))

    def eps_fn(x, t):
        target = u @ (factors * (u.T @ x))
        return (target - a[t] * x) / b[t]

    return eps_fn


@pytest.mark.slow
def test_exact_spectrum_spanning_hundreds_of_nats(x64):
    """Per-step factors exp(+-4): the chain's singular values span ~e^400, beyond any explicit product.

    The graded triangular product keeps every exponent exact (a close pair included), where a
    plain product of the Jacobians would overflow and its SVD would lose all the small ones.
    """
    sched = pj.cosine(1000)
    log_factors = np.array([4.0, 2.5, 1.0, 0.2, 0.19, -0.5, -2.0, -4.0])
    n = log_factors.size
    eps_fn = _diagonal_step_eps(sched, random_orthogonal(n, seed=3), log_factors)
    x_T = _x_T(jnp.float64, shape=(n,)) * 1e-90  # keeps x_0 = M x_T finite
    spec = chain_lyapunov_spectrum(eps_fn, sched, x_T, grid=GRID)
    np.testing.assert_allclose(spec.exponents, log_factors, rtol=1e-10, atol=1e-10)
    leading = chain_lyapunov_spectrum(eps_fn, sched, x_T, grid=GRID, k=3)
    np.testing.assert_allclose(leading.exponents, log_factors[:3], rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------- autonomous maps


def test_linear_map_has_log_abs_eigenvalues(x64):
    matrix = jnp.array([[2.0, 1.0, 0.5], [0.0, -0.5, 1.0], [0.0, 0.0, 0.25]])
    expected = np.log([2.0, 0.5, 0.25])
    n_steps = 2000
    spec = lyapunov_spectrum(lambda x: matrix @ x, jnp.zeros(3), n_steps=n_steps, return_history=True)
    # the O(1/N) transient of the basis: log of the alignment factors (~1) divided by N
    np.testing.assert_allclose(spec.exponents, expected, atol=5 / n_steps)
    assert spec.per == "iterate" and spec.n_steps == n_steps
    assert spec.history.shape == (n_steps, 3)
    np.testing.assert_allclose(spec.history[-1], spec.exponents, rtol=1e-12)
    early, late = np.abs(spec.history[9] - expected), np.abs(spec.history[-1] - expected)
    assert np.all(late < early)
    assert float(spec.dimension) == pytest.approx(float(pj.kaplan_yorke_dimension(expected)), abs=1e-2)
    leading = lyapunov_spectrum(lambda x: matrix @ x, jnp.zeros(3), n_steps=n_steps, k=2)
    np.testing.assert_allclose(leading.exponents, expected[:2], atol=5 / n_steps)
    assert math.isnan(float(leading.dimension))  # log 2 + log 0.5 = 0: partial sums stay >= 0


def henon(v):
    return jnp.stack([1 - 1.4 * v[0] ** 2 + v[1], 0.3 * v[0]])


@pytest.mark.slow
def test_henon_map(x64):
    """Published values (Sprott, "Chaos and Time-Series Analysis"): 0.41922, -1.62319, D_KY 1.2583.

    A finite-time estimate over N iterates fluctuates by ~0.35/sqrt(N) (measured over initial
    conditions): 1.1e-3 for N = 1e5; averaging 8 orbits brings it to ~4e-4, so 2e-3 is a 5-sigma
    bound. ``lambda_1 + lambda_2 = ln 0.3`` holds per iterate (|det J| = 0.3) up to round-off.
    """
    x0 = jnp.asarray(np.random.default_rng(0).uniform(-0.1, 0.1, size=(8, 2)))
    run = jax.jit(jax.vmap(lambda x: lyapunov_spectrum(henon, x, n_steps=100_000, n_transient=1000)))
    spec = run(x0)
    assert spec.exponents.shape == (8, 2)
    mean = np.asarray(spec.exponents).mean(axis=0)
    assert mean[0] == pytest.approx(0.41922, abs=2e-3)
    assert mean[1] == pytest.approx(-1.62319, abs=2e-3)
    np.testing.assert_allclose(np.sum(spec.exponents, axis=1), math.log(0.3), rtol=0, atol=1e-11)
    assert float(np.mean(spec.dimension)) == pytest.approx(1.2583, abs=2e-3)
    # vmap/jit equal the plain call
    plain = lyapunov_spectrum(henon, x0[0], n_steps=100_000, n_transient=1000)
    np.testing.assert_allclose(spec.exponents[0], plain.exponents, rtol=1e-12)
    # one tangent vector (JVPs) finds the same leading exponent
    leading = lyapunov_spectrum(henon, x0[0], n_steps=100_000, n_transient=1000, k=1)
    assert float(leading.exponents[0]) == pytest.approx(float(plain.exponents[0]), abs=1e-4)


def generic_henon_sums(x0, n_steps):
    """Benettin's sums ``sum_i log diag R_i`` for the Henon map by the generic path: a ``jax.jacfwd``
    Jacobian and a LAPACK Householder QR at every step (one ``lax.scan``)."""

    def body(carry, _):
        x, q, sums = carry
        q, r = householder_qr(jax.jacfwd(henon)(x) @ q)
        return (henon(x), q, sums + jnp.log(jnp.diagonal(r))), None

    (_, _, sums), _ = jax.lax.scan(body, (x0, jnp.eye(2, dtype=x0.dtype), jnp.zeros(2, x0.dtype)), None, length=n_steps)
    return sums


def test_planar_maps_use_the_closed_form_qr_and_match_the_generic_path(x64):
    """The 2-D map's tangent block is factored by ``qr_2x2`` (Gram-Schmidt of two 2-vectors): the
    factors equal Householder's to rounding, and the Henon spectrum the generic path's to 1e-12."""
    ys = jax.random.normal(jax.random.PRNGKey(0), (500, 2, 2))
    q, r = jax.vmap(qr_2x2)(ys)
    q_ref, r_ref = jax.vmap(householder_qr)(ys)
    np.testing.assert_allclose(q, q_ref, rtol=0, atol=1e-14)
    np.testing.assert_allclose(r, r_ref, rtol=0, atol=1e-14)
    assert np.all(np.asarray(r[:, [0, 1], [0, 1]]) >= 0) and np.all(np.asarray(r[:, 1, 0]) == 0)
    q0, r0 = qr_2x2(jnp.array([[0.0, 1.0], [0.0, 2.0]]))  # a zero first column: q_1 = e_1
    np.testing.assert_allclose(q0 @ r0, [[0.0, 1.0], [0.0, 2.0]], atol=1e-15)
    x0, n_steps = jnp.array([0.05, -0.02]), 20_000
    spec = lyapunov_spectrum(henon, x0, n_steps=n_steps)
    expected = np.sort(np.asarray(jax.jit(generic_henon_sums, static_argnums=1)(x0, n_steps)))[::-1] / n_steps
    np.testing.assert_allclose(spec.exponents, expected, rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------- transforms


@pytest.fixture(scope="module")
def nonlinear64():
    with jax.enable_x64(True):
        sched = pj.cosine(1000)
        yield sched, nonlinear_eps(sched, VARIANCES, random_orthogonal(N_DIM)), _x_T(jnp.float64, shape=(3, N_DIM))


@pytest.mark.slow
def test_jit_and_vmap_equal_plain(x64, nonlinear64):
    sched, eps_fn, x_batch = nonlinear64
    plain_full = [chain_lyapunov_spectrum(eps_fn, sched, x, grid=GRID) for x in x_batch]
    plain_k = [chain_lyapunov_spectrum(eps_fn, sched, x, grid=GRID, k=3) for x in x_batch]
    # the Jacobians vary along the trajectory: the spectra depend on x_T
    assert float(jnp.max(jnp.abs(plain_full[0].exponents - plain_full[1].exponents))) > 1e-6

    batched = jax.jit(jax.vmap(lambda x: chain_lyapunov_spectrum(eps_fn, sched, x, grid=GRID)))(x_batch)
    assert isinstance(batched, Spectrum) and batched.n_steps == 50 and batched.per == "step"
    np.testing.assert_allclose(batched.exponents, np.stack([s.exponents for s in plain_full]), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(batched.dimension, [s.dimension for s in plain_full], rtol=1e-10)
    batched_k = jax.vmap(lambda x: chain_lyapunov_spectrum(eps_fn, sched, x, grid=GRID, k=3).exponents)(x_batch)
    np.testing.assert_allclose(batched_k, np.stack([s.exponents for s in plain_k]), rtol=1e-10, atol=1e-12)
    # full and leading-k agree on the leading exponents for a non-linear chain too
    np.testing.assert_allclose(plain_k[0].exponents, plain_full[0].exponents[:3], rtol=1e-8, atol=1e-10)


def _central_difference(fn, value, h):
    return (fn(value + h) - fn(value - h)) / (2 * h)


@pytest.mark.slow
def test_gradient_of_ddim_chain_wrt_cosine_offset(x64):
    """Reverse mode against central differences; the values come from the same compiled
    ``value_and_grad`` program (its primal outputs: one compilation instead of two)."""
    x_T = _x_T(jnp.float64)
    weights = jnp.asarray(np.random.default_rng(5).normal(size=N_DIM))

    def loss(s):
        sched = pj.cosine(1000, s=s)
        x_0 = pj.ddim_chain(gaussian_eps(sched, VARIANCES, random_orthogonal(N_DIM)), sched, x_T, grid=GRID)
        return jnp.dot(weights, x_0)

    value_and_grad = jax.jit(jax.value_and_grad(loss))
    grad = float(value_and_grad(0.008)[1])
    fd = float(_central_difference(lambda s: value_and_grad(s)[0], 0.008, 1e-5))
    assert grad == pytest.approx(fd, rel=1e-6)
    assert abs(grad) > 1e-3


@pytest.mark.slow
def test_gradient_of_leading_exponents_wrt_logsnr_shift(x64, nonlinear64):
    """Reverse mode through the converged subspace (Hellmann-Feynman) against central differences.

    The values come from the same compiled ``value_and_grad`` program (its primal outputs): one
    compilation instead of two.
    """
    base, _, x_batch = nonlinear64
    weights = jnp.array([1.0, -0.5, 0.25])

    def objective(shift):
        sched = pj.shift_log_snr(base, shift)
        eps_fn = nonlinear_eps(sched, VARIANCES, random_orthogonal(N_DIM))
        spec = chain_lyapunov_spectrum(eps_fn, sched, x_batch[0], grid=GRID, k=3)
        return jnp.dot(weights, spec.exponents)

    value_and_grad = jax.jit(jax.value_and_grad(objective))
    grad = float(value_and_grad(0.3)[1])
    h = 1e-4
    plus, minus = (value_and_grad(0.3 + sign * h)[0] for sign in (1, -1))
    fd = float((plus - minus) / (2 * h))
    assert abs(grad) > 1e-4  # ~2.3e-4: per-step exponents move little with a logSNR shift
    assert grad == pytest.approx(fd, rel=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("qr_every", [5, 7])
def test_fewer_qrs_give_the_same_spectrum(x64, gaussian64, qr_every):
    """One QR per m steps (7 does not divide 50: a last, shorter block) equals the closed form, full and leading-k.

    The block products here have condition numbers below exp(7 * 0.07), far inside float64's
    range, so the 1e-8 tolerance of the per-step method holds (observed ~1e-14).
    """
    spec = chain_lyapunov_spectrum(
        gaussian64["eps_fn"], gaussian64["sched"], gaussian64["x_T"], grid=GRID, qr_every=qr_every,
        return_history=True,
    )  # fmt: skip
    np.testing.assert_allclose(spec.exponents, gaussian64["analytic"], rtol=1e-8, atol=1e-8)
    # the running history is defined where a QR happened (every m-th step and the last), NaN between
    factored = (np.arange(1, 51) % qr_every == 0) | (np.arange(1, 51) == 50)
    history = np.asarray(spec.history)
    assert np.all(np.isfinite(history[factored])) and np.all(np.isnan(history[~factored]))
    every_step = chain_lyapunov_spectrum(
        gaussian64["eps_fn"], gaussian64["sched"], gaussian64["x_T"], grid=GRID, qr_every=1, return_history=True
    )  # the default re-orthonormalises adaptively: its history is NaN between its own QRs
    np.testing.assert_allclose(history[factored], np.asarray(every_step.history)[factored], rtol=1e-9, atol=1e-12)

    # leading-k: the forward and transposed passes with one thin QR per m steps, same closed form
    lead = chain_lyapunov_spectrum(
        gaussian64["eps_fn"], gaussian64["sched"], gaussian64["x_T"], grid=GRID, k=4, oversample=2, qr_every=qr_every
    )  # fmt: skip
    np.testing.assert_allclose(lead.exponents, gaussian64["analytic"][:4], rtol=1e-8, atol=1e-8)


# ----------------------------------------------------------------------------- bad input


def test_bad_input_names_the_argument(x64, gaussian64):
    eps_fn, sched, x_T = gaussian64["eps_fn"], gaussian64["sched"], gaussian64["x_T"]
    for k in (0, N_DIM + 1, 2.5, True):
        with pytest.raises(ValueError, match=r"^k:"):
            chain_lyapunov_spectrum(eps_fn, sched, x_T, grid=GRID, k=k)
    with pytest.raises(ValueError, match=r"^method:"):
        chain_lyapunov_spectrum(eps_fn, sched, x_T, grid=GRID, method="qr")
    with pytest.raises(ValueError, match=r"^eps_fn:.*shape"):
        chain_lyapunov_spectrum(lambda x, t: x[:-1], sched, x_T, grid=GRID)
    with pytest.raises(ValueError, match=r"^x_T:.*non-finite"):
        chain_lyapunov_spectrum(eps_fn, sched, x_T.at[2].set(jnp.nan), grid=GRID)
    with pytest.raises(ValueError, match=r"^grid:"):
        chain_lyapunov_spectrum(eps_fn, sched, x_T, grid=np.array([0, 500, 2000]))
    with pytest.raises(ValueError, match=r"^sched:"):
        chain_lyapunov_spectrum(eps_fn, np.ones(10), x_T, grid=GRID)
    with pytest.raises(ValueError, match=r"^mesh:"):
        chain_lyapunov_spectrum(eps_fn, sched, x_T, grid=GRID, mesh=object())
    with pytest.raises(ValueError, match=r"^iters:"):
        chain_lyapunov_spectrum(eps_fn, sched, x_T, grid=GRID, k=2, iters=0)
    with pytest.raises(ValueError, match=r"^qr_every:"):
        chain_lyapunov_spectrum(eps_fn, sched, x_T, grid=GRID, qr_every=0)

    def blows_up(x, t):  # non-finite from t = 400 down
        return jnp.where(t <= 400, jnp.inf, 1.0) * eps_fn(x, t)

    for k in (None, 2):
        with pytest.raises(
            ValueError, match=r"^eps_fn: a non-finite state first appears at sampling step 31 of 50 \(t = 400"
        ):
            chain_lyapunov_spectrum(blows_up, sched, x_T, grid=GRID, k=k)

    with pytest.raises(ValueError, match=r"^n_steps:"):
        lyapunov_spectrum(henon, jnp.zeros(2), n_steps=0)
    with pytest.raises(ValueError, match=r"^k:"):
        lyapunov_spectrum(henon, jnp.zeros(2), n_steps=10, k=3)
    with pytest.raises(ValueError, match=r"^map_fn:.*shape"):
        lyapunov_spectrum(lambda v: v[:1], jnp.zeros(2), n_steps=10)
    with pytest.raises(ValueError, match=r"^map_fn: a non-finite state first appears at measured iterate 2 "):
        lyapunov_spectrum(lambda v: v * 1e200, jnp.ones(2), n_steps=10)

"""Samplers against independent references.

For Gaussian data ``N(0, Sigma)``, ``Sigma = U diag(lambda) U^T``, the exact denoiser is linear,
``eps_t(x) = U diag(e_t) U^T x`` with ``e_t = sigma_t / (ab_t lambda + sigma_t^2)``, so every
sampler's chain is linear in ``x_T`` (and in its history): in the eigenbasis each coordinate is
multiplied by a known product of scalars (DPM-Solver++(2M): of 2x2 matrices acting on ``(x,
d_prev)``). The references below are written in NumPy from the papers' formulas, in float64,
from ``alpha_bar`` alone (not from the package's tables), so they check the package's
coefficients, chain, Jacobians and spectra at once; tolerance 1e-10 (float64 round-off of a few
dozen products, far above 1e-16 but far below any formula error, which would be O(step size)).

Heun is also compared with a transcription of EDM's algorithm 1 in sigma space (the scaled state
``x~ = x / alpha``), a second, different derivation.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pifs_jax as pj
from pifs_jax.samplers import DDIM, DPMSolverPP2M, Heun, check_sampler, sample_batch, sample_chain
from reference import random_orthogonal

T = 1000
N_DIM = 6
LAMBDAS = np.array([0.02, 0.1, 0.5, 1.0, 3.0, 9.0])
GRIDS = {
    "uniform5": np.arange(0, T + 1, 200),
    "uneven7": np.array([0, 3, 40, 150, 400, 640, 870, 999]),
}


def _alpha_bar(sched) -> np.ndarray:
    return np.exp(np.asarray(sched.log_alpha_bar, np.float64))


def _e(ab: float) -> np.ndarray:
    """``e_t`` of the linear Gaussian denoiser in the eigenbasis."""
    sigma = np.sqrt(1.0 - ab)
    return sigma / (ab * LAMBDAS + sigma**2)


def ddim_factors(ab: np.ndarray, grid: np.ndarray) -> list[np.ndarray]:
    """Per-step multipliers (execution order) of DDIM: ``a + b e_t`` (Song et al. 2021, eq. 12, eta = 0)."""
    out = []
    for i in range(len(grid) - 1, 0, -1):
        at, as_ = ab[grid[i]], ab[grid[i - 1]]
        a = np.sqrt(as_ / at)
        b = np.sqrt(1 - as_) - a * np.sqrt(1 - at)
        out.append(a + b * _e(at))
    return out


def heun_factors(ab: np.ndarray, grid: np.ndarray) -> list[np.ndarray]:
    """EDM's Heun (Karras et al. 2022, algorithm 1) in VP variables: ``a + (b/2)(e_t + e_s (a + b e_t))``."""
    out = []
    for i in range(len(grid) - 1, 0, -1):
        at, as_ = ab[grid[i]], ab[grid[i - 1]]
        a = np.sqrt(as_ / at)
        b = np.sqrt(1 - as_) - a * np.sqrt(1 - at)
        euler = a + b * _e(at)
        out.append(euler if grid[i - 1] == 0 else a + b / 2 * (_e(at) + _e(as_) * euler))
    return out


def dpm_matrices(ab: np.ndarray, grid: np.ndarray) -> list[np.ndarray]:
    """DPM-Solver++(2M) (Lu et al. 2022, algorithm 2) as per-coordinate 2x2 maps of ``(x, d_prev)``.

    ``d = c_t x`` with ``c_t = (1 - sigma_t e_t) / alpha_t``; ``x_s = (sigma_s/sigma_t) x +
    alpha_s (1 - exp(-h)) ((1 + k) d - k d_prev)``, ``k = h / (2 h_prev)`` except on the first and
    the last step (``k = 0``). Returned shape ``(n, 2, 2)`` per step, execution order.
    """
    lam = lambda ab_: 0.5 * np.log(ab_ / (1 - ab_)) if ab_ < 1 else np.inf  # noqa: E731
    out, h_prev = [], None
    n = len(grid) - 1
    for j, i in enumerate(range(n, 0, -1)):
        at, as_ = ab[grid[i]], ab[grid[i - 1]]
        h = lam(as_) - lam(at)
        alpha_t, alpha_s, sigma_t, sigma_s = np.sqrt(at), np.sqrt(as_), np.sqrt(1 - at), np.sqrt(1 - as_)
        c = (1 - sigma_t * _e(at)) / alpha_t
        k = 0.0 if j == 0 or i == 1 else h / (2 * h_prev)
        g = alpha_s * (1 - np.exp(-h))
        m = np.zeros((N_DIM, 2, 2))
        m[:, 0, 0] = sigma_s / sigma_t + g * (1 + k) * c
        m[:, 0, 1] = -g * k
        m[:, 1, 0] = c
        out.append(m)
        h_prev = h
    return out


def closed_form_chain(sampler_name: str, ab: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """The chain's multiplier per eigen-coordinate, ``d x_0 / d x_T`` in the eigenbasis (diagonal)."""
    if sampler_name == "dpmpp2m":
        total = np.tile(np.eye(2), (N_DIM, 1, 1))
        for m in dpm_matrices(ab, grid):
            total = m @ total
        return total[:, 0, 0]  # P = [1 0], E = [1; 0]
    factors = ddim_factors(ab, grid) if sampler_name == "ddim" else heun_factors(ab, grid)
    return np.prod(factors, axis=0)


SAMPLERS = {"ddim": DDIM(), "heun": Heun(), "dpmpp2m": DPMSolverPP2M()}


@pytest.fixture(scope="module")
def gaussian_setup():
    with jax.enable_x64(True):
        sched = pj.cosine(T)
        u = random_orthogonal(N_DIM, seed=3)
        cov = u @ np.diag(LAMBDAS) @ u.T
        eps_fn = pj.gaussian_denoiser(sched, jnp.zeros((2, 3)), jnp.asarray(cov))
        x_T = np.random.default_rng(0).standard_normal((2, 3))
        yield sched, u, eps_fn, x_T


@pytest.mark.parametrize("grid_name", sorted(GRIDS))
@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_chain_jacobian_and_sample_match_closed_form(x64, gaussian_setup, name, grid_name):
    sched, u, eps_fn, x_T = gaussian_setup
    grid = GRIDS[grid_name]
    m = closed_form_chain(name, _alpha_bar(sched), grid)
    expected = u @ np.diag(m) @ u.T
    jac = np.asarray(pj.chain_jacobian(eps_fn, sched, jnp.asarray(x_T), grid=grid, sampler=SAMPLERS[name]))
    np.testing.assert_allclose(jac, expected, rtol=0, atol=1e-10 * np.max(np.abs(expected)))
    x_0 = np.asarray(sample_chain(eps_fn, sched, jnp.asarray(x_T), grid=grid, sampler=SAMPLERS[name]))
    want = expected @ x_T.reshape(-1)  # components can cancel: the tolerance is relative to the vector's size
    np.testing.assert_allclose(x_0.reshape(-1), want, rtol=0, atol=1e-10 * np.max(np.abs(want)))


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_full_and_leading_spectra_match_closed_form(x64, gaussian_setup, name):
    """Full spectra of every sampler; leading-k and Benettin through the embedding of a multistep state.

    (DDIM's and Heun's states are the image, so their leading-k path is DDIM's, tested in
    tests/test_lyapunov.py; DPM-Solver++(2M) adds ``E`` and ``P`` to both passes.)
    """
    sched, _, eps_fn, x_T = gaussian_setup
    grid = GRIDS["uneven7"]
    n_steps = len(grid) - 1
    m = closed_form_chain(name, _alpha_bar(sched), grid)
    expected = np.sort(np.log(np.abs(m)))[::-1] / n_steps
    sampler = SAMPLERS[name]
    full = pj.chain_lyapunov_spectrum(eps_fn, sched, jnp.asarray(x_T), grid=grid, sampler=sampler)
    np.testing.assert_allclose(np.asarray(full.exponents), expected, rtol=0, atol=1e-10)
    if name != "dpmpp2m":
        return
    leading = pj.chain_lyapunov_spectrum(eps_fn, sched, jnp.asarray(x_T), grid=grid, sampler=sampler, k=3)
    np.testing.assert_allclose(np.asarray(leading.exponents), expected[:3], rtol=0, atol=1e-10)
    # Benettin's sum from a random 3-column block is not the finite-time spectrum, but its sum of
    # all n exponents is: log |det| is basis independent
    benettin = pj.chain_lyapunov_spectrum(
        eps_fn, sched, jnp.asarray(x_T), grid=grid, sampler=sampler, method="benettin", qr_every=1
    )
    np.testing.assert_allclose(float(jnp.sum(benettin.exponents)), expected.sum(), rtol=0, atol=1e-10)


def test_batched_spectra_of_a_multistep_sampler_equal_single(x64, gaussian_setup):
    sched, _, eps_fn, x_T = gaussian_setup
    grid = GRIDS["uniform5"]
    batch = jnp.stack([jnp.asarray(x_T), -2.0 * jnp.asarray(x_T)])
    spectra = pj.chain_lyapunov_spectra(eps_fn, sched, batch, grid=grid, sampler=DPMSolverPP2M(), qr_every=1)
    for s in range(2):
        one = pj.chain_lyapunov_spectrum(eps_fn, sched, batch[s], grid=grid, sampler=DPMSolverPP2M(), qr_every=1)
        np.testing.assert_allclose(np.asarray(spectra.exponents[s]), np.asarray(one.exponents), atol=1e-12)


def edm_heun_reference(ab: np.ndarray, grid: np.ndarray, x_T: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Karras et al. (2022) algorithm 1 (deterministic), transcribed in sigma space.

    ``sigma_i = sqrt((1 - ab) / ab)``, ``x~ = x / sqrt(ab)``, ``D(x~; sigma) = U diag(lambda /
    (lambda + sigma^2)) U^T x~`` (Gaussian data), ``d = (x~ - D) / sigma``.
    """
    sigmas = np.sqrt((1 - ab[grid[::-1]]) / ab[grid[::-1]])  # sigma_N > ... > sigma_0 = 0
    denoise = lambda x, s: u @ ((LAMBDAS / (LAMBDAS + s**2)) * (u.T @ x))  # noqa: E731
    x = x_T.reshape(-1) / np.sqrt(ab[grid[-1]])
    for sig, sig_next in itertools.pairwise(sigmas):
        d = (x - denoise(x, sig)) / sig
        x_next = x + (sig_next - sig) * d
        if sig_next != 0:
            d_next = (x_next - denoise(x_next, sig_next)) / sig_next
            x_next = x + (sig_next - sig) * (d + d_next) / 2
        x = x_next
    return x  # alpha_bar_0 = 1: the scaled and the VP state agree


def test_heun_equals_edm_algorithm_in_sigma_space(x64, gaussian_setup):
    sched, u, eps_fn, x_T = gaussian_setup
    for grid in GRIDS.values():
        expected = edm_heun_reference(_alpha_bar(sched), grid, x_T, u)
        x_0 = np.asarray(sample_chain(eps_fn, sched, jnp.asarray(x_T), grid=grid, sampler=Heun()))
        np.testing.assert_allclose(x_0.reshape(-1), expected, rtol=0, atol=1e-10 * np.max(np.abs(expected)))


def test_ddim_sampler_is_ddim_chain_bit_for_bit(gaussian_setup):
    sched, _, eps_fn, x_T = gaussian_setup
    x = jnp.asarray(x_T, jnp.float32)
    grid = GRIDS["uneven7"]
    np.testing.assert_array_equal(
        np.asarray(sample_chain(eps_fn, sched, x, grid=grid, sampler=DDIM())),
        np.asarray(pj.ddim_chain(eps_fn, sched, x, grid=grid)),
    )
    key = jax.random.PRNGKey(4)
    np.testing.assert_array_equal(
        np.asarray(sample_batch(eps_fn, sched, x[None], grid=grid, sampler=DDIM(eta=0.5), key=key)),
        np.asarray(pj.ddim_sample(eps_fn, sched, x[None], grid=grid, eta=0.5, key=key)),
    )


def test_second_order_samplers_converge_faster_than_ddim(x64, gaussian_setup):
    """Error to the exact flow map when the steps double: order about 1 for DDIM, about 2 for the others.

    Measured at 40 -> 80 steps (linear schedule, this problem): DDIM 0.98, Heun 1.69,
    DPM-Solver++(2M) 2.36 (the integer grid and the step onto sigma = 0 keep them off exactly 1
    and 2); the bounds separate first from second order with that margin.
    """
    _, u, _, x_T = gaussian_setup
    sched_lin = pj.linear(T)
    eps_lin = pj.gaussian_denoiser(sched_lin, jnp.zeros((2, 3)), jnp.asarray(u @ np.diag(LAMBDAS) @ u.T))
    ab = _alpha_bar(sched_lin)
    exact = u @ (np.sqrt(LAMBDAS / (ab[T] * LAMBDAS + 1 - ab[T])) * (u.T @ x_T.reshape(-1)))
    errors = {}
    for name, sampler in SAMPLERS.items():
        errors[name] = [
            float(np.max(np.abs(np.asarray(sample_chain(eps_lin, sched_lin, jnp.asarray(x_T), grid=pj.uniform_grid(T, n), sampler=sampler)).reshape(-1) - exact)))
            for n in (40, 80)
        ]  # fmt: skip
    orders = {name: np.log2(e[0] / e[1]) for name, e in errors.items()}
    assert 0.8 < orders["ddim"] < 1.3, orders
    assert orders["heun"] > 1.6 and orders["dpmpp2m"] > 1.6, orders


def test_nfe():
    assert DDIM().nfe(10) == 10
    assert DPMSolverPP2M().nfe(10) == 10
    assert Heun().nfe(10) == 19
    assert Heun().nfe(1) == 1


def test_bad_sampler_and_key_are_refused(gaussian_setup):
    sched, _, eps_fn, x_T = gaussian_setup
    x = jnp.asarray(x_T, jnp.float32)
    with pytest.raises(pj.ArgumentError, match="sampler") as err:
        sample_chain(eps_fn, sched, x, grid=GRIDS["uniform5"], sampler=DDIM)
    assert "instance" in str(err.value)
    with pytest.raises(pj.ArgumentError, match="sampler"):
        check_sampler("ddim")
    with pytest.raises(pj.ArgumentError, match="eta"):
        sample_chain(eps_fn, sched, x, grid=GRIDS["uniform5"], sampler=DDIM(eta=1.5))
    with pytest.raises(pj.ArgumentError, match="key"):
        sample_chain(eps_fn, sched, x, grid=GRIDS["uniform5"], sampler=DDIM(eta=0.5))
    with pytest.raises(pj.ArgumentError, match="not a spectrum option"):
        pj.chain_lyapunov_spectrum(eps_fn, sched, x, grid=GRIDS["uniform5"], qr_evry=2)


def test_every_sampler_compiles_once_per_architecture(x64):
    """A second parameter set of a pytree denoiser compiles nothing new, for every sampler.

    The chain, the batch, the chain Jacobian and the full and leading-k spectra of
    DPM-Solver++(2M), whose state and tables differ from DDIM's (DDIM's are covered by
    tests/test_compile_once.py; Heun's programs have DDIM's structure), counted with JAX's
    lowering and compilation events.
    """
    from test_compile_once import IMAGE_SHAPE, counted_compilations, mlp_params

    from reference import tanh_mlp

    sched = pj.cosine(T)
    grid = GRIDS["uniform5"]
    x = jnp.asarray(np.random.default_rng(1).standard_normal(IMAGE_SHAPE))

    def run_all(params):
        eps_fn = jax.tree_util.Partial(tanh_mlp, params)
        out = []
        for sampler in (DPMSolverPP2M(),):
            out.append(sample_chain(eps_fn, sched, x, grid=grid, sampler=sampler))
            out.append(sample_batch(eps_fn, sched, jnp.stack([x, -x]), grid=grid, sampler=sampler))
            out.append(pj.chain_jacobian(eps_fn, sched, x, grid=grid, sampler=sampler))
            out.append(pj.chain_lyapunov_spectrum(eps_fn, sched, x, grid=grid, sampler=sampler).exponents)
            out.append(pj.chain_lyapunov_spectrum(eps_fn, sched, x, grid=grid, sampler=sampler, k=2, iters=5).exponents)
        return out

    first = run_all(mlp_params(1))
    with counted_compilations() as events:
        second = run_all(mlp_params(2))
    assert events == [], f"{len(events)} lowering/compilation event(s) for a second parameter set"
    assert not any(np.allclose(a, b) for a, b in zip(first, second, strict=True))


def test_gradient_through_a_multistep_chain_matches_finite_differences(x64, gaussian_setup):
    """``jax.grad`` of ``sum(x_0^2)`` through DPM-Solver++(2M) with respect to ``x_T`` and the cosine offset.

    Central differences with ``h = 1e-6`` (truncation ``O(h^2)``, round-off ``O(eps/h) ~ 1e-10``),
    relative tolerance 1e-6. The loss values come from the primal outputs of the same compiled
    ``value_and_grad`` program as the gradient: one compilation, where each eager call of ``loss``
    (a fresh ``gaussian_denoiser`` closure) compiled its chain again.
    """
    _, u, _, x_T = gaussian_setup
    cov = jnp.asarray(u @ np.diag(LAMBDAS) @ u.T)
    grid = GRIDS["uneven7"]

    def loss(offset, x):
        sched = pj.cosine(T, s=offset)
        eps_fn = pj.gaussian_denoiser(sched, jnp.zeros((2, 3)), cov)
        return jnp.sum(sample_chain(eps_fn, sched, x, grid=grid, sampler=DPMSolverPP2M(), check_finite=False) ** 2)

    value_and_grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))

    def value(offset, x):
        return float(value_and_grad(offset, x)[0])

    x = jnp.asarray(x_T)
    g_offset, g_x = value_and_grad(0.008, x)[1]
    h = 1e-6
    fd = (value(0.008 + h, x) - value(0.008 - h, x)) / (2 * h)
    np.testing.assert_allclose(float(g_offset), fd, rtol=1e-6)
    d = jnp.asarray(np.random.default_rng(2).standard_normal(x.shape))
    fd_x = (value(0.008, x + h * d) - value(0.008, x - h * d)) / (2 * h)
    np.testing.assert_allclose(float(jnp.vdot(g_x, d)), fd_x, rtol=1e-6)

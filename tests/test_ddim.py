"""The DDIM chain: Gaussian closed form, stochastic steps, batching, compile-once, bad input."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pifs_jax as pj
from pifs_jax.ddim import ddim_step
from reference import expansion_factors


def _diagonal_gaussian_eps(sched, lam):
    """eps^G_t(x) = sigma_t x / (alpha_bar_t lambda + sigma_t^2) for zero-mean diagonal data."""

    def eps(x, t):
        ab, s2 = sched.alpha_bar[t], sched.sigma2[t]
        return jnp.sqrt(s2) * x / (ab * lam + s2)

    return eps


@pytest.mark.parametrize("grid", [None, np.arange(0, 1001, 20), pj.align_your_steps_grid()])
def test_gaussian_chain_is_the_product_of_expansion_factors(x64, grid):
    sched = pj.cosine(1000)
    lam = jnp.array([0.3, 1.0, 4.0])
    x_T = jnp.array([1.0, -2.0, 0.5])
    x_0, traj = pj.ddim_chain(_diagonal_gaussian_eps(sched, lam), sched, x_T, grid=grid, return_trajectory=True)
    expected = x_T * jnp.exp(pj.moran_function(sched, lam, grid))
    np.testing.assert_allclose(x_0, expected, rtol=1e-10)
    n = sched.T if grid is None else len(grid) - 1
    assert traj.shape == (n + 1, 3)
    np.testing.assert_array_equal(traj[0], x_T)
    np.testing.assert_array_equal(traj[-1], x_0)


class TestDDIMStepJittedAndNot(chex.TestCase):
    """One DDIM step under the Gaussian denoiser, with and without ``jax.jit`` (chex variants)."""

    @chex.variants(with_jit=True, without_jit=True)
    def test_gaussian_step_scales_by_the_expansion_factor(self):
        """``Phi_t(x) = a_t x + b_t eps^G_t(x) = f_t(lambda) x`` coordinate-wise, for every step of a 20-step grid."""
        grid = np.arange(0, 1001, 50)
        lam = np.array([0.05, 0.3, 1.0, 4.0, 50.0])
        x = np.random.default_rng(4).standard_normal(lam.size)
        with jax.enable_x64(True):
            sched = pj.cosine(1000)
            coeff = pj.step_coefficients(sched, grid)
            eps = _diagonal_gaussian_eps(sched, jnp.asarray(lam))
            step = self.variant(lambda x, t, a, b: ddim_step(eps, x, t, a, b))
            out = jnp.stack([step(jnp.asarray(x), grid[i + 1], coeff.a[i], coeff.b[i]) for i in range(len(grid) - 1)])
            alpha_bar = np.exp(np.asarray(sched.log_alpha_bar, np.float64))
        chex.assert_shape(out, (20, lam.size))
        # a_t + b_t sigma_t / (ab_t lambda + sigma_t^2) = f_t adds terms of opposite sign (b_t < 0),
        # so a few ulps of a_t become ~1e-13 of f_t (observed 2e-13): 1e-11 relative
        np.testing.assert_allclose(out, expansion_factors(alpha_bar, grid, lam) * x, rtol=1e-11)


def test_stochastic_step_is_the_ddim_eta_family(x64):
    """Coefficients against Song et al. (2021) eq. 12-16 in naive float64, and the noise in one step."""
    sched, grid = pj.cosine(1000), np.arange(0, 1001, 100)
    for eta in (0.0, 0.5, 1.0):
        steps = pj.chain_steps(sched, grid, eta=eta)
        ab = np.asarray(sched.alpha_bar)
        t = np.asarray(steps.t)
        s = np.asarray(grid[:-1])[::-1]
        ab_t, ab_s = ab[t], ab[s]
        c = eta * np.sqrt((1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s))
        b = np.sqrt(1 - ab_s - c**2) - np.sqrt(ab_s / ab_t) * np.sqrt(1 - ab_t)
        np.testing.assert_allclose(steps.noise_scale, c, rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(steps.b, b, rtol=1e-9)
    # eta = 1: the injected noise of one step has the DDPM posterior variance (1-ab_s)/(1-ab_t)(1-ab_t/ab_s)
    one = np.array([0, 500])
    x_T = jnp.zeros((20000, 1))
    out = pj.ddim_sample(lambda x, t: jnp.zeros_like(x), sched, x_T, grid=one, eta=1.0, key=jax.random.key(3))
    ab_t, ab_s = float(sched.alpha_bar[500]), 1.0
    expected = (1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s)
    assert float(jnp.var(out)) == pytest.approx(expected, abs=1e-12)  # lands on alpha_bar = 1: no noise
    one = np.array([0, 300, 500])
    out = pj.ddim_sample(lambda x, t: jnp.zeros_like(x), sched, x_T, grid=one, eta=1.0, key=jax.random.key(3))
    ab_t, ab_s = float(sched.alpha_bar[500]), float(sched.alpha_bar[300])
    # after two steps with eps = 0 the first step's noise is scaled by the second step's a = sqrt(1/ab_300)
    expected = (1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s) / ab_s
    # 20000 draws: relative standard error of a variance sqrt(2/20000) = 1%; allow 5 sigma
    assert float(jnp.var(out)) == pytest.approx(expected, rel=0.05)


def test_batch_jit_and_vmap_agree(x64):
    sched = pj.linear(200)
    lam = jnp.array([0.5, 2.0])
    eps = _diagonal_gaussian_eps(sched, lam)
    xs = jax.random.normal(jax.random.key(2), (5, 2))
    batch = pj.ddim_sample(eps, sched, xs)
    one_by_one = jnp.stack([pj.ddim_chain(eps, sched, x) for x in xs])
    jitted = jax.jit(lambda s, x: pj.ddim_sample(eps, s, x))(sched, xs)
    np.testing.assert_allclose(batch, one_by_one, rtol=1e-13)
    np.testing.assert_allclose(jitted, one_by_one, rtol=1e-13)


def test_compiles_once_per_shape():
    lam = jnp.array([0.5, 2.0])

    def run(sched, x, grid):
        eps = _diagonal_gaussian_eps(sched, lam)
        return pj.ddim_chain(eps, sched, x, grid=grid)

    jitted = jax.jit(run)
    grid = jnp.arange(0, 1001, 20)
    jitted(pj.cosine(1000), jnp.ones(2), grid)
    jitted(pj.linear(1000), jnp.ones(2), grid)
    jitted(pj.cosine(1000, s=0.0), jnp.ones(2), grid + jnp.concatenate([jnp.zeros(50, int), jnp.zeros(1, int)]))
    assert jitted._cache_size() == 1


def test_gradient_through_the_chain(x64):
    lam = jnp.array([0.5, 2.0])
    grid = np.arange(0, 1001, 50)

    def loss(s):
        sched = pj.cosine(1000, s=s)
        return jnp.sum(pj.ddim_chain(_diagonal_gaussian_eps(sched, lam), sched, jnp.array([1.0, 1.0]), grid=grid) ** 2)

    def closed_form(s):
        sched = pj.cosine(1000, s=s)
        return jnp.sum(jnp.exp(2 * pj.moran_function(sched, lam, grid)))

    grad = float(jax.grad(loss)(0.008))

    # The chain forms f_t - 1 ~ 1e-3 as a_t + b_t eps - 1, so its value carries ~1e-13 relative
    # rounding that varies with s, which a tiny h would amplify; the cosine's steep s-dependence
    # makes the plain central difference's h^2 truncation 3e-5 at h = 1e-4. Richardson
    # extrapolation of two central differences removes the h^2 term (residual ~h^4).
    def central(h):
        return (loss(0.008 + h) - loss(0.008 - h)) / (2 * h)

    fd = (4 * central(1e-4) - central(2e-4)) / 3
    assert grad == pytest.approx(float(fd), rel=1e-6)
    # and it is exactly the derivative of the closed form (same function, cancellation-free)
    assert grad == pytest.approx(float(jax.grad(closed_form)(0.008)), rel=1e-9)


def test_bad_input():
    sched = pj.cosine(100)
    with pytest.raises(ValueError, match="input's shape"):
        pj.ddim_chain(lambda x, t: x[:1], sched, jnp.ones(3))
    with pytest.raises(ValueError, match="key"):
        pj.ddim_chain(lambda x, t: x, sched, jnp.ones(3), eta=0.5)
    with pytest.raises(ValueError, match="grid"):
        pj.ddim_chain(lambda x, t: x, sched, jnp.ones(3), grid=np.array([0, 50, 200]))

    def explodes(x, t):
        return jnp.where(t < 40, jnp.inf, 0.0) * x

    with pytest.raises(ValueError, match=r"step \d+ of 10 \(t = 30"):
        pj.ddim_chain(explodes, sched, jnp.ones(3), grid=np.arange(0, 101, 10), check_finite=True)

"""Exact denoisers: Gaussian (full, eigen, patch), Gaussian mixture, empirical-optimal attention."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pifs_jax as pj
from pifs_jax.denoisers import (
    empirical_attention,
    empirical_denoiser,
    gaussian_denoiser,
    gaussian_denoiser_eig,
    gaussian_denoiser_patches,
    gaussian_mixture_denoiser,
)
from pifs_jax.jacobians import ddim_step_jacobian
from pifs_jax.patches import patch_permutation
from reference import random_covariance

GRID = pj.uniform_grid(1000, 50)


def numpy_gaussian_eps(sched, t, mean, cov, x):
    ab = float(np.exp(np.float64(sched.log_alpha_bar[t])))
    sigma2 = 1 - ab
    n = cov.shape[0]
    return np.sqrt(sigma2) * np.linalg.solve(
        ab * cov + sigma2 * np.eye(n), x.reshape(-1) - np.sqrt(ab) * mean.reshape(-1)
    )


def numpy_mixture_eps(sched, t, weights, means, covs, x):
    ab = float(np.exp(np.float64(sched.log_alpha_bar[t])))
    sigma2 = 1 - ab
    n = covs.shape[1]
    logits, eps = [], []
    for w, mu, cov in zip(weights, means.reshape(len(weights), -1), covs, strict=True):
        c = ab * cov + sigma2 * np.eye(n)
        d = x.reshape(-1) - np.sqrt(ab) * mu
        sol = np.linalg.solve(c, d)
        logits.append(np.log(w) - 0.5 * d @ sol - 0.5 * np.linalg.slogdet(c)[1])
        eps.append(np.sqrt(sigma2) * sol)
    logits = np.array(logits)
    r = np.exp(logits - logits.max())
    r /= r.sum()
    return r @ np.array(eps)


def numpy_empirical(sched, t, data, x):
    ab = float(np.exp(np.float64(sched.log_alpha_bar[t])))
    sigma2 = 1 - ab
    flat = data.reshape(len(data), -1)
    logits = -np.sum((x.reshape(-1) - np.sqrt(ab) * flat) ** 2, axis=1) / (2 * sigma2)
    w = np.exp(logits - logits.max())
    w /= w.sum()
    eps = (x.reshape(-1) - np.sqrt(ab) * (w @ flat)) / np.sqrt(sigma2)
    entropy = -np.sum(w[w > 0] * np.log(w[w > 0]))
    return eps.reshape(x.shape), w, entropy


# ----------------------------------------------------------------------------- Gaussian


@pytest.mark.parametrize("step", [1, 2, 25, 50])
def test_gaussian_step_jacobian_is_u_diag_f_ut(x64, step):
    """The DDIM step with eps^G is U diag(f_t(lambda)) U^T in a non-axis-aligned eigenbasis."""
    rng = np.random.default_rng(1)
    lam = np.array([0.02, 0.4, 0.95, 1.1, 2.5, 7.0, 30.0, 1e-3])  # straddles lambda* ~ 1
    cov, u = random_covariance(rng, lam)
    assert np.max(np.abs(u - np.eye(8) * np.diag(u))) > 0.1  # genuinely rotated
    sched = pj.cosine(1000)
    mean = rng.standard_normal((2, 2, 2))
    eps_fn = gaussian_denoiser(sched, mean, cov)
    x = rng.standard_normal((2, 2, 2))
    jac = np.asarray(ddim_step_jacobian(eps_fn, sched, x, grid=GRID, step=step))
    f = np.asarray(pj.expansion_factor(sched, lam, GRID))[step - 1]
    np.testing.assert_allclose(jac, u @ np.diag(f) @ u.T, rtol=0, atol=1e-10)


def test_gaussian_matches_direct_solve(x64):
    rng = np.random.default_rng(2)
    cov, _ = random_covariance(rng, rng.uniform(0.0, 3.0, 6))
    mean = rng.standard_normal(6)
    sched = pj.linear(1000)
    eps_fn = jax.jit(gaussian_denoiser(sched, mean, cov))
    for t in (1, 7, 300, 1000):
        x = rng.standard_normal(6)
        np.testing.assert_allclose(eps_fn(x, t), numpy_gaussian_eps(sched, t, mean, cov, x), rtol=1e-11, atol=1e-12)


def test_gaussian_t0_is_zero_and_finite(x64):
    """sigma_0 = 0: eps is exactly 0 even with a zero eigenvalue (no 0/0), gradients finite."""
    rng = np.random.default_rng(3)
    cov, _ = random_covariance(rng, np.array([0.0, 0.5, 2.0]))
    eps_fn = gaussian_denoiser(pj.linear(1000), np.zeros(3), cov)
    x = rng.standard_normal(3)
    np.testing.assert_array_equal(eps_fn(x, 0), np.zeros(3))
    assert np.all(np.isfinite(jax.jacfwd(eps_fn)(x, 0)))
    mix = gaussian_mixture_denoiser(pj.linear(1000), jnp.ones(2), np.zeros((2, 3)), np.stack([cov, 0 * cov]))
    np.testing.assert_array_equal(mix(x, 0), np.zeros(3))


def test_gaussian_eig_and_patches_match_full(x64):
    rng = np.random.default_rng(4)
    shape, p = (4, 4, 2), 2
    m, nk = 4, 8
    lam = rng.uniform(0.01, 5.0, (m, nk))
    blocks, _vecs = zip(*(random_covariance(rng, lam_k) for lam_k in lam), strict=True)
    patch_covs = np.stack(blocks)
    # block-diagonal covariance in patch order, brought back to the row-major image order
    inv = np.argsort(patch_permutation(shape, p))
    full_patch_order = np.zeros((m * nk, m * nk))
    for k in range(m):
        full_patch_order[k * nk : (k + 1) * nk, k * nk : (k + 1) * nk] = patch_covs[k]
    full = full_patch_order[inv][:, inv]
    mean = rng.standard_normal(shape)
    sched = pj.cosine(1000)
    eps_full = gaussian_denoiser(sched, mean, full)
    eps_patch = jax.jit(gaussian_denoiser_patches(sched, mean, patch_covs, p))
    eigvals, eigvecs = np.linalg.eigh(full)
    eps_eig = gaussian_denoiser_eig(sched, mean, eigvals, eigvecs)
    x = rng.standard_normal(shape)
    for t in (1, 200, 999):
        reference = eps_full(x, t)
        assert reference.shape == shape
        np.testing.assert_allclose(eps_patch(x, t), reference, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(eps_eig(x, t), reference, rtol=1e-10, atol=1e-12)
    # a shared (n_k, n_k) covariance broadcasts to every patch
    shared = gaussian_denoiser_patches(sched, mean, patch_covs[0], p)
    np.testing.assert_allclose(
        shared(x, 50), gaussian_denoiser_patches(sched, mean, np.stack([patch_covs[0]] * m), p)(x, 50)
    )


def test_gaussian_float32_matches_float64(x32):
    rng = np.random.default_rng(5)
    cov, _ = random_covariance(rng, np.array([0.05, 0.5, 1.0, 4.0]))
    mean = rng.standard_normal(4)
    x = rng.standard_normal(4)
    eps32 = gaussian_denoiser(pj.linear(1000), mean.astype(np.float32), cov.astype(np.float32))
    for t in (1, 500, 1000):
        out = eps32(x.astype(np.float32), t)
        assert out.dtype == jnp.float32
        reference = numpy_gaussian_eps(pj.linear(1000), t, mean, cov, x)
        np.testing.assert_allclose(out, reference, rtol=2e-4, atol=2e-5 * np.abs(reference).max())


# ----------------------------------------------------------------------------- Gaussian mixture


def test_mixture_one_component_equals_gaussian(x64):
    rng = np.random.default_rng(6)
    cov, _ = random_covariance(rng, np.array([0.1, 1.0, 3.0, 0.3, 2.0, 0.7]))
    mean = rng.standard_normal((3, 2))
    sched = pj.cosine(1000)
    mix = gaussian_mixture_denoiser(sched, np.array([0.7]), mean[None], cov[None])
    gauss = gaussian_denoiser(sched, mean, cov)
    x = rng.standard_normal((3, 2))
    for t in (1, 400, 1000):
        np.testing.assert_allclose(mix(x, t), gauss(x, t), rtol=1e-11, atol=1e-13)


def test_mixture_matches_numpy(x64):
    rng = np.random.default_rng(7)
    k, n = 3, 5
    covs = np.stack([random_covariance(rng, rng.uniform(0.05, 2.0, n))[0] for _ in range(k)])
    means = 2 * rng.standard_normal((k, n))
    weights = np.array([0.2, 0.5, 0.3])
    sched = pj.linear(1000)
    eps_fn = jax.jit(gaussian_mixture_denoiser(sched, weights, means, covs))
    for t in (3, 100, 600, 1000):
        x = np.sqrt(float(sched.alpha_bar[t])) * means[1] + rng.standard_normal(n)
        np.testing.assert_allclose(
            eps_fn(x, t), numpy_mixture_eps(sched, t, weights, means, covs, x), rtol=1e-9, atol=1e-11
        )


def test_mixture_with_zero_covariances_is_empirical(x64):
    rng = np.random.default_rng(8)
    data = rng.standard_normal((7, 3, 2))
    sched = pj.cosine(1000)
    mix = gaussian_mixture_denoiser(sched, np.ones(7), data, np.zeros((7, 6, 6)))
    emp = empirical_denoiser(sched, data)
    for t in (1, 100, 700):
        x = rng.standard_normal((3, 2))
        np.testing.assert_allclose(mix(x, t), emp(x, t), rtol=1e-10, atol=1e-12)


def test_mixture_far_away_is_finite(x32):
    rng = np.random.default_rng(9)
    covs = np.stack([random_covariance(rng, rng.uniform(0.1, 1.0, 4))[0] for _ in range(2)]).astype(np.float32)
    eps_fn = gaussian_mixture_denoiser(pj.linear(1000), np.array([0.5, 0.5]), np.zeros((2, 4)), covs)
    out = eps_fn(jnp.full((4,), 1e6), 5)
    assert np.all(np.isfinite(out))


# ----------------------------------------------------------------------------- empirical


def test_empirical_matches_numpy(x64):
    rng = np.random.default_rng(10)
    data = rng.standard_normal((9, 4, 4, 1))
    sched = pj.cosine(1000)
    eps_fn = empirical_denoiser(sched, data, return_weights=True)
    plain = empirical_denoiser(sched, data)
    attention = empirical_attention(sched, data)
    for t in (1, 50, 300, 1000):
        x = np.sqrt(float(sched.alpha_bar[t])) * data[2] + float(sched.sigma[t]) * rng.standard_normal((4, 4, 1))
        eps, w, h = numpy_empirical(sched, t, data, x)
        out = eps_fn(x, t)
        np.testing.assert_allclose(out.eps, eps, rtol=1e-9, atol=1e-10)
        np.testing.assert_allclose(out.weights, w, rtol=1e-9, atol=1e-14)
        np.testing.assert_allclose(out.entropy, h, rtol=1e-8, atol=1e-12)
        np.testing.assert_allclose(plain(x, t), out.eps, rtol=0, atol=0)
        att = attention(x, t)
        np.testing.assert_allclose(att.weights, out.weights, rtol=0, atol=0)
        np.testing.assert_allclose(float(jnp.sum(att.weights)), 1.0, rtol=0, atol=1e-12)
        assert 0.0 <= float(att.entropy) <= np.log(len(data)) + 1e-12


def test_empirical_small_sigma_returns_nearest_datum_eps(x64):
    rng = np.random.default_rng(11)
    data = rng.standard_normal((6, 8))
    sched = pj.linear(1000)  # sigma_1 = 0.01
    z = rng.standard_normal(8)
    x = np.sqrt(float(sched.alpha_bar[1])) * data[4] + float(sched.sigma[1]) * z
    out = empirical_denoiser(sched, data, return_weights=True)(x, 1)
    np.testing.assert_allclose(out.eps, z, rtol=1e-9, atol=1e-9)
    assert float(out.weights[4]) > 1 - 1e-12
    assert float(out.entropy) < 1e-9
    # t = 0: eps 0, attention one-hot on the nearest datum, no NaN
    att = empirical_attention(sched, data)(data[3] + 1e-3, 0)
    np.testing.assert_array_equal(att.weights, np.eye(6)[3])
    assert float(att.entropy) == 0.0
    np.testing.assert_array_equal(empirical_denoiser(sched, data)(x, 0), np.zeros(8))


def test_empirical_far_away_and_high_noise(x32):
    rng = np.random.default_rng(12)
    data = rng.standard_normal((5, 3, 3, 1)).astype(np.float32)
    sched = pj.linear(1000)
    far = jnp.full((3, 3, 1), 1e6, jnp.float32)
    out = empirical_denoiser(sched, data, return_weights=True)(far, 1)
    assert np.all(np.isfinite(out.eps)) and np.all(np.isfinite(out.weights)) and np.isfinite(out.entropy)
    np.testing.assert_allclose(float(jnp.sum(out.weights)), 1.0, atol=1e-6)
    # near-identical data at the highest noise: attention diffuse, entropy ~ log M
    close = np.float32(1e-3) * data
    att = empirical_attention(sched, close)(jnp.zeros((3, 3, 1)), 1000)
    np.testing.assert_allclose(float(att.entropy), np.log(5), rtol=1e-5)


def test_empirical_float32_matches_float64():
    rng = np.random.default_rng(13)
    data = rng.standard_normal((10, 16))
    x = rng.standard_normal(16)
    with jax.enable_x64(True):
        sched64 = pj.linear(1000)
        reference = {t: np.asarray(empirical_denoiser(sched64, data)(x, t)) for t in (5, 200, 900)}
    with jax.enable_x64(False):
        eps32 = empirical_denoiser(pj.linear(1000), data.astype(np.float32))
        for t, ref in reference.items():
            np.testing.assert_allclose(eps32(x.astype(np.float32), t), ref, rtol=1e-3, atol=1e-4 * np.abs(ref).max())


def test_jit_and_vmap_agree_with_plain(x64):
    rng = np.random.default_rng(14)
    data = rng.standard_normal((8, 4, 4, 1))
    sched = pj.cosine(1000)
    cov, _ = random_covariance(rng, rng.uniform(0.1, 3.0, 16))
    xs = rng.standard_normal((5, 4, 4, 1))
    ts = np.array([1, 20, 200, 600, 1000])
    for eps_fn in (empirical_denoiser(sched, data), gaussian_denoiser(sched, np.zeros((4, 4, 1)), cov)):
        plain = np.stack([eps_fn(x, t) for x, t in zip(xs, ts, strict=True)])
        np.testing.assert_allclose(jax.vmap(eps_fn)(xs, ts), plain, rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(jax.jit(jax.vmap(eps_fn))(xs, ts), plain, rtol=1e-12, atol=1e-13)


def test_gradient_with_respect_to_schedule_matches_finite_differences(x64):
    """Denoisers are differentiable in the schedule (here a logSNR shift), through the chain's t."""
    rng = np.random.default_rng(15)
    data = rng.standard_normal((6, 4))
    cov, _ = random_covariance(rng, np.array([0.1, 0.5, 2.0, 4.0]))
    x, w = rng.standard_normal(4), rng.standard_normal(4)
    base = pj.linear(1000)
    for make in (lambda s: empirical_denoiser(s, data), lambda s: gaussian_denoiser(s, np.zeros(4), cov)):
        loss = jax.jit(lambda shift: jnp.dot(w, make(pj.shift_log_snr(base, shift))(x, 300)))  # noqa: B023
        h = 1e-5
        fd = (loss(0.3 + h) - loss(0.3 - h)) / (2 * h)
        np.testing.assert_allclose(jax.jit(jax.grad(loss))(0.3), fd, rtol=1e-6)


# ----------------------------------------------------------------------------- bad input


def test_bad_covariances():
    sched = pj.linear(1000)
    good = np.eye(3)
    with pytest.raises(ValueError, match=r"cov.*\(3, 3\)"):
        gaussian_denoiser(sched, np.zeros(3), np.eye(4))
    with pytest.raises(ValueError, match=r"cov.*symmetric"):
        gaussian_denoiser(sched, np.zeros(3), good + np.triu(np.ones((3, 3)), 1))
    with pytest.raises(ValueError, match=r"cov.*positive semi-definite"):
        gaussian_denoiser(sched, np.zeros(3), np.diag([1.0, -0.5, 1.0]))
    with pytest.raises(ValueError, match=r"cov.*finite"):
        gaussian_denoiser(sched, np.zeros(3), np.diag([1.0, np.nan, 1.0]))
    with pytest.raises(ValueError, match="sched"):
        gaussian_denoiser(np.ones(10), np.zeros(3), good)
    with pytest.raises(ValueError, match="eigvals"):
        gaussian_denoiser_eig(sched, np.zeros(3), np.array([1.0, -1.0, 1.0]), good)
    with pytest.raises(ValueError, match="eigvals"):
        gaussian_denoiser_eig(sched, np.zeros(3), np.ones(2), good)
    with pytest.raises(ValueError, match=r"eigvecs.*orthogonal"):
        gaussian_denoiser_eig(sched, np.zeros(3), np.ones(3), good + 0.1)
    with pytest.raises(ValueError, match="x"):
        gaussian_denoiser(sched, np.zeros(3), good)(jnp.zeros(4), 3)


def test_bad_patch_and_mixture_inputs():
    sched = pj.linear(1000)
    with pytest.raises(ValueError, match=r"patch_size.*\(6, 6, 1\)"):
        gaussian_denoiser_patches(sched, np.zeros((6, 6, 1)), np.eye(16), 4)
    with pytest.raises(ValueError, match="patch_covs"):
        gaussian_denoiser_patches(sched, np.zeros((4, 4, 1)), np.stack([np.eye(4)] * 3), 2)
    with pytest.raises(ValueError, match="patch_covs"):
        gaussian_denoiser_patches(sched, np.zeros((4, 4, 1)), np.eye(5), 2)
    with pytest.raises(ValueError, match="x"):
        gaussian_denoiser_patches(sched, np.zeros((4, 4, 1)), np.eye(4), 2)(jnp.zeros((16,)), 5)
    with pytest.raises(ValueError, match="weights"):
        gaussian_mixture_denoiser(sched, np.array([0.5, -0.5]), np.zeros((2, 3)), np.stack([np.eye(3)] * 2))
    with pytest.raises(ValueError, match="means"):
        gaussian_mixture_denoiser(sched, np.array([0.5, 0.5]), np.zeros((3, 3)), np.stack([np.eye(3)] * 2))
    with pytest.raises(ValueError, match="covs"):
        gaussian_mixture_denoiser(sched, np.array([0.5, 0.5]), np.zeros((2, 3)), np.stack([np.eye(3)] * 3))
    with pytest.raises(ValueError, match="data"):
        empirical_denoiser(sched, np.zeros(5))
    with pytest.raises(ValueError, match="data"):
        empirical_attention(sched, np.array([[0.0, np.inf]]))
    with pytest.raises(ValueError, match="x"):
        empirical_denoiser(sched, np.zeros((4, 3)))(jnp.zeros(5), 5)
    # a wrong-shaped x is caught by the chain's own check, naming the denoiser
    with pytest.raises(ValueError, match="eps_fn"):
        pj.ddim.check_denoiser(empirical_denoiser(sched, np.zeros((4, 3))), jnp.zeros(5))

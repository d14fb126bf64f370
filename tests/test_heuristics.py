"""pifs_jax.heuristics against NumPy float64 formulas, closed forms and exact identities."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pifs_jax as pj
from pifs_jax import heuristics as h
from reference import cosine_beta_1

GRID50 = np.arange(0, 1001, 20)


def _alpha_bar(sched) -> np.ndarray:
    return np.exp(np.asarray(sched.log_alpha_bar, dtype=np.float64))


def _snr(sched) -> np.ndarray:
    ab = _alpha_bar(sched)
    with np.errstate(divide="ignore"):
        return ab / (1 - ab)


# ----------------------------------------------------------------------------- Min-SNR-gamma


@pytest.mark.parametrize("gamma", [0.5, 5.0, 50.0])
@pytest.mark.parametrize("grid", [None, GRID50])
def test_min_snr_weights_equal_min_snr_gamma_over_snr(x64, gamma, grid):
    for sched in (pj.linear(1000), pj.cosine(1000), pj.scaled_linear(1000)):
        g = np.arange(1001) if grid is None else grid
        snr = _snr(sched)[g[1:]]
        expected = np.minimum(snr, gamma) / snr
        w = h.min_snr_weights(sched, gamma=gamma, grid=grid)
        assert w.shape == (len(g) - 1,)
        np.testing.assert_allclose(w, expected, rtol=1e-12)


def test_min_snr_weights_float32_jit_and_training_table(x32):
    from pifs_jax.models.training import weight_table

    sched = pj.cosine(1000)
    w = jax.jit(lambda g: h.min_snr_weights(sched, gamma=g))(5.0)
    assert w.dtype == jnp.float32 and bool(jnp.all((w > 0) & (w <= 1)))
    with jax.enable_x64(True):
        ref = np.minimum(1.0, 5.0 / _snr(pj.cosine(1000))[1:])
    np.testing.assert_allclose(w, ref, rtol=1e-5)
    # the training module's table holds the same weights (entry t = timestep t)
    np.testing.assert_allclose(w, weight_table(sched, weighting="min_snr", gamma=5.0)[1:], rtol=1e-6)
    # gradient with respect to gamma: d/dgamma min(1, gamma/SNR) = 1/SNR where SNR > gamma, else 0
    grad = jax.grad(lambda g: jnp.sum(h.min_snr_weights(sched, gamma=g)))(5.0)
    np.testing.assert_allclose(grad, np.sum(np.where(ref < 1, ref / 5.0, 0.0)), rtol=1e-4)


def test_min_snr_weights_bad_input():
    with pytest.raises(ValueError, match="gamma"):
        h.min_snr_weights(pj.cosine(100), gamma=0.0)
    with pytest.raises(ValueError, match="gamma"):
        h.min_snr_weights(pj.cosine(100), gamma=float("nan"))
    with pytest.raises(ValueError, match="sched"):
        h.min_snr_weights(np.ones(5))


# ----------------------------------------------------------------------------- cosine offset


def test_cosine_offset_limit_meets_the_pixel_bin(x64):
    s_max = h.cosine_offset_limit(1000)
    # the package's own schedule and an independent closed form both sit on the bin
    assert abs(math.sqrt(float(pj.cosine(1000, s=s_max).betas[0])) - 1 / 127.5) < 1e-10
    assert abs(math.sqrt(cosine_beta_1(1000, s_max)) - 1 / 127.5) < 1e-10
    # and it is the largest admissible offset
    assert (
        math.sqrt(cosine_beta_1(1000, s_max * (1 - 1e-6)))
        < 1 / 127.5
        < math.sqrt(cosine_beta_1(1000, s_max * (1 + 1e-6)))
    )
    assert 0.008 < s_max < 0.013  # Nichol & Dhariwal's 0.008 is admissible, "slightly" below the limit


def test_cosine_offset_limit_other_bins_and_lengths(x64):
    s = h.cosine_offset_limit(4000, bin_width=0.01)
    assert math.sqrt(cosine_beta_1(4000, s)) == pytest.approx(0.01, rel=1e-10)
    assert h.cosine_offset_limit(1000, bin_width=0.02) > h.cosine_offset_limit(1000)


def test_cosine_offset_limit_bad_input():
    with pytest.raises(ValueError, match="bin_width"):
        h.cosine_offset_limit(1000, bin_width=1.5)
    with pytest.raises(ValueError, match="bin_width"):
        h.cosine_offset_limit(10, bin_width=1e-3)  # even s = 0 gives sqrt(beta_1) = sin(pi/20) > 1e-3
    with pytest.raises(ValueError, match="T"):
        h.cosine_offset_limit(0)


# ----------------------------------------------------------------------------- resolution shift invariance


@pytest.mark.parametrize("grid", [None, GRID50])
@pytest.mark.parametrize("c", [0.25, 64.0])
def test_variance_scaling_with_log_snr_shift_identity(x64, grid, c):
    sched = pj.cosine(1000)
    lam = np.geomspace(1e-4, 1e3, 25)
    shifted = pj.shift_log_snr(sched, -math.log(c))
    # the exponents move rigidly by the offset, to round-off
    offset = float(h.scaling_exponent_offset(sched, c, grid=grid))
    diff = np.asarray(pj.lyapunov_exponents(shifted, c * lam, grid)) - np.asarray(
        pj.lyapunov_exponents(sched, lam, grid)
    )
    np.testing.assert_allclose(diff, offset, rtol=0, atol=1e-15)
    # independent value of the offset: log(alpha_bar_T + c sigma_T^2) / (2N)
    ab_T = _alpha_bar(sched)[-1]
    n = 1000 if grid is None else len(grid) - 1
    assert offset == pytest.approx(math.log(ab_T + c * (1 - ab_T)) / (2 * n), rel=1e-12)
    # what is exactly invariant: f_t / a_t and the information gain
    a, a_c = pj.step_coefficients(sched, grid).a, pj.step_coefficients(shifted, grid).a
    g = np.asarray(pj.expansion_factor(sched, lam, grid)) / np.asarray(a)[:, None]
    g_c = np.asarray(pj.expansion_factor(shifted, c * lam, grid)) / np.asarray(a_c)[:, None]
    np.testing.assert_allclose(g_c, g, rtol=1e-13)
    ig = np.asarray(pj.information_gain(sched, lam, grid=grid))[1:]
    np.testing.assert_allclose(np.asarray(pj.information_gain(shifted, c * lam, grid=grid))[1:], ig, rtol=1e-13)
    # and lambda** does not scale with c: it stays near 1, far from c lambda**
    lam_ss, lam_ss_c = float(pj.moran_threshold(sched, grid)), float(pj.moran_threshold(shifted, grid))
    assert abs(math.log(lam_ss_c)) < math.log(1.5)
    assert abs(math.log(lam_ss_c / (c * lam_ss))) > 1.0


def test_scaling_exponent_offset_bad_input_and_jit(x64):
    with pytest.raises(ValueError, match="scale"):
        h.scaling_exponent_offset(pj.cosine(100), -1.0)
    sched = pj.cosine(1000)
    jitted = jax.jit(lambda c: h.scaling_exponent_offset(sched, c))(4.0)
    assert float(jitted) == pytest.approx(float(h.scaling_exponent_offset(sched, 4.0)), rel=1e-14)
    assert float(h.scaling_exponent_offset(sched, 1.0)) == 0.0


# ----------------------------------------------------------------------------- Gaussian per-step quantities


def test_marginal_entropy_gain_formula_telescoping_and_cauchy_schwarz(x64):
    sched = pj.linear(1000)
    lam = np.array([0.01, 0.5, 2.0, 30.0])
    sizes = np.array([3.0, 1.0, 2.0, 5.0])
    ab = _alpha_bar(sched)
    v = ab[:, None] * lam[None, :] + (1 - ab)[:, None]
    naive = 0.5 * np.sum(sizes * np.log(v[:-1] / v[1:]), axis=1)
    H = np.asarray(h.marginal_entropy_gain(sched, lam, sizes))
    np.testing.assert_allclose(H, naive, rtol=1e-7, atol=1e-13)
    # the steps telescope: sum_t H_t = 1/2 sum_k n_k log(lambda_k / v_T(lambda_k))
    assert H.sum() == pytest.approx(0.5 * np.sum(sizes * np.log(lam / v[-1])), rel=1e-12)
    # Cauchy-Schwarz: log f_t(lambda) <= 1/2 log(v_s / v_t), per direction
    for k, _lam_k in enumerate(lam):
        bound = np.asarray(h.marginal_entropy_gain(sched, lam[k : k + 1]))
        assert np.all(np.asarray(pj.log_expansion_factor(sched, lam[k : k + 1]))[:, 0] <= bound + 1e-15)


def test_optimal_eps_loss_formula_and_i_mmse(x64):
    sched = pj.cosine(1000)
    lam = np.array([1e-3, 0.2, 5.0])
    snr = _snr(sched)[1:]
    expected = np.sum(snr[:, None] * lam / (1 + snr[:, None] * lam), axis=1)
    loss = np.asarray(h.optimal_eps_loss(sched, lam))
    np.testing.assert_allclose(loss, expected, rtol=1e-12)
    # I-MMSE: IG_t = integral of loss/2 over the step's logSNR interval (trapezoid, steps 2..T
    # whose logSNR step is small; the clipped last cosine steps jump by several nats)
    log_snr = np.log(snr)
    step = log_snr[:-1] - log_snr[1:]
    trapezoid = 0.25 * (loss[1:] + loss[:-1]) * step
    ig = np.asarray(pj.information_gain(sched, lam))[1:]
    small = step < 0.05
    assert small.sum() > 900
    np.testing.assert_allclose(trapezoid[small], ig[small], rtol=2e-3)


# ----------------------------------------------------------------------------- measured patch variances


def test_patch_variances_of_block_constant_image_are_known_exactly(x64):
    rng = np.random.default_rng(0)
    p, blocks = 4, 6
    z = rng.normal(size=(blocks, blocks))
    image = np.repeat(np.repeat(z, p, axis=0), p, axis=1)[..., None] * np.ones(3)  # (24, 24, 3)
    spec = h.measured_patch_variances(image, p)  # non-overlapping: each window is one constant block
    var = z.var(ddof=1)
    assert spec.num_windows == blocks * blocks
    assert spec.mean_variance == pytest.approx(var, rel=1e-12)
    assert spec.leading == pytest.approx(p * p * 3 * var, rel=1e-12)  # all variance in the window mean
    np.testing.assert_allclose(spec.eigenvalues[1:], 0.0, atol=1e-12)


def test_patch_variances_of_white_noise(x64):
    rng = np.random.default_rng(1)
    sigma2 = 0.3
    image = rng.normal(scale=math.sqrt(sigma2), size=(128, 128, 3))
    spec = h.measured_patch_variances(image, 4)
    assert spec.eigenvalues.shape == (48,)
    # mean of 48 * 1024 squared N(0, sigma2) values: relative standard error sqrt(2 / 49152)
    assert abs(spec.mean_variance / sigma2 - 1) < 4 * math.sqrt(2 / (48 * 1024))
    assert np.all(np.diff(spec.eigenvalues) <= 0)


def test_patch_variances_agree_with_data_patch_stats_and_pool_images(x64):
    from pifs_jax.data import patch_stats

    rng = np.random.default_rng(2)
    images = rng.uniform(-1, 1, size=(3, 16, 16, 3))
    spec = h.measured_patch_variances(images, 8)  # 3 images x 4 windows
    windows = np.concatenate([np.asarray(pj.patchify(im, 8)) for im in images]).reshape(-1, 8, 8, 3)
    ref = patch_stats(windows, patch_size=8)
    np.testing.assert_allclose(spec.eigenvalues, np.asarray(ref.eigenvalues[0]), atol=1e-12)
    assert spec.num_windows == 12
    # images of different sizes pool; stride 1 counts every position
    spec2 = h.measured_patch_variances([images[0], images[1, :12]], 4, stride=1)
    assert spec2.num_windows == 13 * 13 + 9 * 13


def test_patch_variances_bad_input():
    with pytest.raises(ValueError, match="patch_size"):
        h.measured_patch_variances(np.zeros((8, 8, 3)), 9)
    with pytest.raises(ValueError, match="images"):
        h.measured_patch_variances(np.full((8, 8, 3), np.nan), 2)
    with pytest.raises(ValueError, match="images"):
        h.measured_patch_variances([np.zeros((8, 8, 3)), np.zeros((8, 8, 1))], 2)
    with pytest.raises(ValueError, match="stride"):
        h.measured_patch_variances(np.zeros((8, 8, 3)), 2, stride=0)
    with pytest.raises(ValueError, match="images"):
        h.measured_patch_variances(np.zeros((4, 4, 3)), 4)  # a single window


def test_photo_patch_spectrum(x64):
    from pifs_jax import data

    spec = h.photo_patch_spectrum(downsample=16, patch_size=2, stride=1)
    ref = h.measured_patch_variances([data.load_photo(n, 16) for n in data.PHOTO_NAMES], 2, stride=1)
    np.testing.assert_array_equal(spec.eigenvalues, ref.eigenvalues)
    assert spec.eigenvalues.shape == (12,)
    assert 0.1 < spec.mean_variance < 0.4  # photographs on [-1, 1]
    assert spec.leading > 6 * spec.mean_variance  # neighbouring pixels are strongly correlated
    with pytest.raises(ValueError, match="photos"):
        h.photo_patch_spectrum(downsample=16, patch_size=2, photos=["lena"])


def test_power_law_variances():
    lam = h.power_law_variances(192, exponent=2.0, mean_variance=0.25)
    assert lam.mean() == pytest.approx(0.25, rel=1e-14)
    assert lam[0] / lam[9] == pytest.approx(100.0, rel=1e-12)
    with pytest.raises(ValueError, match="exponent"):
        h.power_law_variances(10, exponent=-1.0)
    with pytest.raises(ValueError, match="mean_variance"):
        h.power_law_variances(10, exponent=1.0, mean_variance=0.0)


# ----------------------------------------------------------------------------- Spearman


def test_spearman_correlation_against_scipy_and_properties():
    rng = np.random.default_rng(3)
    x = rng.normal(size=200)
    y = x + rng.normal(size=200)
    x_ties, y_ties = np.round(x), np.round(y * 2) / 2
    assert h.spearman_correlation(x, np.exp(x)) == pytest.approx(1.0, abs=1e-15)  # any increasing map
    assert h.spearman_correlation(x, -(x**3)) == pytest.approx(-1.0, abs=1e-15)
    assert h.spearman_correlation([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(0.9486832980505138, rel=1e-14)
    stats = pytest.importorskip("scipy.stats")
    for a, b in ((x, y), (x_ties, y_ties)):
        assert h.spearman_correlation(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, rel=1e-12)


def test_spearman_correlation_bad_input():
    with pytest.raises(ValueError, match="x"):
        h.spearman_correlation([1.0, 1.0, 1.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="y"):
        h.spearman_correlation([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="x"):
        h.spearman_correlation([1.0, np.inf], [1.0, 2.0])

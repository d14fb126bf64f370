"""Schedules: closed forms against independent NumPy float64 implementations, edge cases, bad input."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pifs_jax as pj
from reference import cosine_alpha_bar, lin_zero_snr_alphas_cumprod


def _sigmoid_reference(T, start=-3.0, end=3.0, tau=1.0, clip_min=1e-9):
    def sig(x):
        return 1 / (1 + np.exp(-x))

    u = np.arange(1, T + 1) / T
    v_start, v_end = sig(start / tau), sig(end / tau)
    out = (v_end - sig((u * (end - start) + start) / tau)) / (v_end - v_start)
    return np.concatenate([[1.0], np.clip(out, clip_min, 1.0)])


def test_named_schedules_have_the_contract_shape(x64):
    for name in pj.SCHEDULE_NAMES:
        sched = pj.named_schedule(name, 200)
        ab = np.asarray(sched.alpha_bar)
        assert ab.shape == (201,)
        assert ab[0] == 1.0
        assert np.all(np.diff(ab) < 0), name
        assert np.all(ab[1:] > 0) and np.all(ab[1:] < 1), name


def test_linear_and_scaled_linear_match_cumprod(x64):
    T = 1000
    ref = np.concatenate([[1.0], np.cumprod(1 - np.linspace(1e-4, 0.02, T))])
    np.testing.assert_allclose(pj.linear(T).alpha_bar, ref, rtol=1e-12)
    betas = np.linspace(np.sqrt(0.00085), np.sqrt(0.012), T) ** 2
    ref = np.concatenate([[1.0], np.cumprod(1 - betas)])
    np.testing.assert_allclose(pj.scaled_linear(T).alpha_bar, ref, rtol=1e-12)
    np.testing.assert_allclose(pj.linear(T).betas, np.linspace(1e-4, 0.02, T), rtol=1e-10)


@pytest.mark.parametrize("s", [0.0, 0.008, 0.05])
def test_cosine_matches_the_recipe(x64, s):
    # cumprod in the reference accumulates ~T ulps; 1e-11 relative is well above that.
    np.testing.assert_allclose(pj.cosine(1000, s=s).alpha_bar, cosine_alpha_bar(1000, s), rtol=1e-11)


def test_cosine_last_beta_is_clipped_and_finite(x64):
    sched = pj.cosine(1000, s=0.008)
    betas = np.asarray(sched.betas)
    assert betas[-1] == pytest.approx(0.999, rel=1e-12)
    assert np.all(betas[:-1] < 0.999)
    for x in (sched.alpha_bar, sched.sigma, sched.log_snr[1:], sched.betas):
        assert np.all(np.isfinite(np.asarray(x)))


def test_sigmoid_and_logsnr_cosine_closed_forms(x64):
    np.testing.assert_allclose(pj.sigmoid(1000).alpha_bar, _sigmoid_reference(1000), rtol=1e-9)
    np.testing.assert_allclose(
        pj.sigmoid(500, start=0.0, end=3.0, tau=0.7).alpha_bar,
        _sigmoid_reference(500, 0.0, 3.0, 0.7),
        rtol=1e-9,
    )
    T, lo, hi = 1000, -15.0, 15.0
    b = math.atan(math.exp(-hi / 2))
    a = math.atan(math.exp(-lo / 2)) - b
    u = np.arange(1, T + 1) / T
    np.testing.assert_allclose(pj.logsnr_cosine(T).log_snr[1:], -2 * np.log(np.tan(a * u + b)), rtol=1e-10, atol=1e-10)
    assert float(pj.logsnr_cosine(T).log_snr[-1]) == pytest.approx(lo, abs=1e-9)


def test_log_snr_shift_and_resolution_rule(x64):
    base = pj.cosine(1000)
    shifted = pj.shift_log_snr(base, 1.5)
    np.testing.assert_allclose(shifted.log_snr[1:], base.log_snr[1:] + 1.5, rtol=1e-12, atol=1e-9)
    assert float(shifted.alpha_bar[0]) == 1.0
    assert pj.resolution_shift(64) == 0.0
    assert pj.resolution_shift(128) == pytest.approx(2 * math.log(0.5))
    assert pj.resolution_shift(256, base_resolution=64) == pytest.approx(-2 * math.log(4))


def test_zero_terminal_snr_against_lin_et_al(x64):
    for base in (pj.linear(1000), pj.scaled_linear(1000)):
        ref = lin_zero_snr_alphas_cumprod(np.asarray(base.alpha_bar[1:]))
        out = pj.zero_terminal_snr(base)
        np.testing.assert_allclose(out.alpha_bar[1:-1], ref[:-1], rtol=1e-10)
        assert float(out.alpha_bar[1]) == pytest.approx(float(base.alpha_bar[1]), rel=1e-14)
        assert float(out.log_snr[-1]) == pytest.approx(-20.0, abs=1e-9)
        # sigma^2 near t = 1 is formed without cancellation
        np.testing.assert_allclose(out.sigma2[1:4], 1 - ref[:3], rtol=1e-7)


def test_zero_terminal_snr_rejects_a_terminal_value_that_breaks_monotonicity():
    with pytest.raises(ValueError, match="terminal_log_snr"):
        pj.zero_terminal_snr(pj.linear(1000), terminal_log_snr=5.0)


def test_edm_sigmas_and_karras(x64):
    sigmas = np.array([0.01, 0.1, 1.0, 10.0])
    sched = pj.from_edm_sigmas(sigmas)
    np.testing.assert_allclose(sched.alpha_bar[1:], 1 / (1 + sigmas**2), rtol=1e-14)
    np.testing.assert_allclose(sched.log_snr[1:], -2 * np.log(sigmas), rtol=1e-12)
    k = pj.karras(40)
    edm = np.sqrt(np.asarray(k.sigma2[1:] / k.alpha_bar[1:]))
    assert edm[0] == pytest.approx(0.002, rel=1e-10) and edm[-1] == pytest.approx(80.0, rel=1e-10)
    ramp = np.linspace(0.002 ** (1 / 7), 80 ** (1 / 7), 40) ** 7
    np.testing.assert_allclose(edm, ramp, rtol=1e-10)


def test_constructors_round_trip(x64):
    sched = pj.cosine(300)
    np.testing.assert_allclose(pj.from_betas(sched.betas).alpha_bar, sched.alpha_bar, rtol=1e-12)
    np.testing.assert_allclose(pj.from_alpha_bar(sched.alpha_bar).log_alpha_bar, sched.log_alpha_bar, rtol=1e-12)
    np.testing.assert_allclose(pj.from_alphas_cumprod(sched.alpha_bar[1:]).alpha_bar, sched.alpha_bar, rtol=1e-14)
    np.testing.assert_allclose(pj.from_log_snr(sched.log_snr[1:]).alpha_bar, sched.alpha_bar, rtol=1e-12)


def test_schedule_is_a_pytree_that_jit_accepts():
    sched = pj.cosine(100)
    leaves, _treedef = jax.tree_util.tree_flatten(sched)
    assert len(leaves) == 2  # log_alpha_bar and gaps
    out = jax.jit(lambda s: s.sigma)(sched)
    np.testing.assert_allclose(out, sched.sigma, rtol=1e-6)
    assert "Schedule(T=100" in repr(sched)


def test_no_nan_gradient_through_end_points(x64):
    def loss(s):
        sched = pj.cosine(1000, s=s)
        return jnp.sum(sched.sigma) + jnp.sum(sched.log_snr[1:]) + jnp.sum(sched.betas)

    for s in (0.0, 0.008):
        assert np.isfinite(float(jax.grad(loss)(s)))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: pj.from_alpha_bar([1.0, 0.5, 0.7]), "strictly decreasing"),
        (lambda: pj.from_alpha_bar([0.99, 0.5, 0.1]), r"alpha_bar\[0\] must be exactly 1"),
        (lambda: pj.from_alpha_bar([1.0, 1.2, 0.1]), r"\(0, 1\]"),
        (lambda: pj.from_alpha_bar([1.0, 0.5, 0.0]), r"\(0, 1\]"),
        (lambda: pj.from_alpha_bar([[1.0, 0.5]]), "shape"),
        (lambda: pj.from_alpha_bar([1.0, 0.5, np.nan]), r"\(0, 1\]"),
        (lambda: pj.from_betas([0.1, 1.0]), "betas"),
        (lambda: pj.from_betas([-0.1, 0.2]), "betas"),
        (lambda: pj.from_alphas_cumprod([0.9, 0.95]), "strictly decreasing"),
        (lambda: pj.from_log_snr([1.0, 2.0]), "log_snr"),
        (lambda: pj.from_edm_sigmas([1.0, 0.5]), "sigmas"),
        (lambda: pj.cosine(100, s=-0.1), "s:"),
        (lambda: pj.cosine(0), "T:"),
        (lambda: pj.named_schedule("quadratic"), "unknown schedule"),
        (lambda: pj.sigmoid(10, start=1.0, end=0.0), "end"),
        (lambda: pj.logsnr_cosine(10, logsnr_min=5.0, logsnr_max=1.0), "logsnr_max"),
        (lambda: pj.shift_log_snr(pj.cosine(10), float("nan")), "shift"),
        (lambda: pj.resolution_shift(0), "resolution"),
    ],
)
def test_bad_input_names_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()

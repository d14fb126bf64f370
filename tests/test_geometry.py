"""Model-free geometry against closed forms, naive float64 formulas, finite differences and a
second root finder; float32 against float64."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pifs_jax as pj
from reference import expansion_factors, lstar_numpy, moran_root_numpy

GRID50 = np.arange(0, 1001, 20)


def _naive(sched, grid):
    """Textbook (cancellation-prone) forms in float64 NumPy, for comparison away from round-off."""
    ab = np.exp(np.asarray(sched.log_alpha_bar, dtype=np.float64))
    ab_t, ab_s = ab[grid[1:]], ab[grid[:-1]]
    sig_t, sig_s = np.sqrt(1 - ab_t), np.sqrt(1 - ab_s)
    a = np.sqrt(ab_s / ab_t)
    b = sig_s - a * sig_t
    return ab_t, ab_s, sig_t, sig_s, a, b


def _naive_f(sched, grid, lam):
    ab = np.exp(np.asarray(sched.log_alpha_bar, dtype=np.float64))
    return expansion_factors(ab, np.asarray(grid), lam)


@pytest.mark.parametrize("grid", [None, GRID50])
def test_step_coefficients_and_both_forms_of_lstar(x64, grid):
    sched = pj.cosine(1000)
    g = np.arange(1001) if grid is None else grid
    _, _, _sig_t, _sig_s, a, b = _naive(sched, g)
    c = pj.step_coefficients(sched, grid)
    np.testing.assert_allclose(c.a, a, rtol=1e-13)
    np.testing.assert_allclose(c.b, b, rtol=1e-8)  # the naive b loses ~8 digits at t = 1
    lstar = pj.contraction_threshold(sched, grid)
    assert lstar.shape == (len(g) - 1,)
    np.testing.assert_allclose(lstar, c.a_minus_1 / np.abs(c.b), rtol=1e-12)
    # finest step: L*_1 = a sigma_1 / (1 + a) ~ sigma_1 / 2
    assert float(lstar[0]) == pytest.approx(float(c.sigma_t[0]) / 2, rel=float(c.a[0] - 1))


class TestCoreFormulasJittedAndNot(chex.TestCase):
    """``contraction_threshold`` and ``expansion_factor`` with and without ``jax.jit`` (chex variants)
    against the NumPy float64 definitions of tests/reference.py."""

    @chex.variants(with_jit=True, without_jit=True)
    def test_contraction_threshold(self):
        with jax.enable_x64(True):
            sched = pj.cosine(1000)
            lstar = self.variant(pj.contraction_threshold)(sched, GRID50)
            alpha_bar = np.exp(np.asarray(sched.log_alpha_bar, np.float64))
        chex.assert_shape(lstar, (50,))
        # (sigma_s + a sigma_t)/(1 + a) is a sum of positive terms: no cancellation (observed 1e-14)
        np.testing.assert_allclose(lstar, lstar_numpy(alpha_bar, GRID50), rtol=1e-12)

    @chex.variants(with_jit=True, without_jit=True)
    def test_expansion_factor(self):
        lam = np.logspace(-3, 3, 13)
        with jax.enable_x64(True):
            sched = pj.linear(1000)
            f = self.variant(pj.expansion_factor)(sched, lam, GRID50)
            alpha_bar = np.exp(np.asarray(sched.log_alpha_bar, np.float64))
        chex.assert_shape(f, (50, 13))
        np.testing.assert_allclose(f, expansion_factors(alpha_bar, GRID50, lam), rtol=1e-12)


def test_expansion_factor_closed_forms(x64):
    sched, grid = pj.linear(1000), GRID50
    c = pj.step_coefficients(sched, grid)
    f0 = pj.expansion_factor(sched, jnp.array(0.0), grid)
    np.testing.assert_allclose(f0, c.sigma_s / c.sigma_t, rtol=1e-12, atol=1e-300)
    assert float(f0[0]) == 0.0  # the finest step lands on sigma = 0
    f_inf = pj.expansion_factor(sched, jnp.array(1e14), grid)
    np.testing.assert_allclose(f_inf, c.a, rtol=1e-9)
    lam_star = pj.expansion_threshold(sched, grid)
    np.testing.assert_allclose(pj.expansion_factor(sched, lam_star[:, None], grid).diagonal(), 1.0, rtol=1e-13)
    # f_t agrees with the textbook formula, shape (N,) + lam.shape
    lam = np.logspace(-3, 3, 13)
    f = pj.expansion_factor(sched, lam, grid)
    assert f.shape == (50, 13)
    np.testing.assert_allclose(f, _naive_f(sched, grid, lam), rtol=1e-12)
    assert pj.expansion_factor(sched, np.ones((2, 3)), grid).shape == (50, 2, 3)
    # increasing in lambda
    assert np.all(np.diff(np.asarray(f), axis=1) > 0)


def test_lambda_star_against_its_definition(x64):
    sched, grid = pj.cosine(1000), GRID50
    ab_t, ab_s, sig_t, sig_s, _, _ = _naive(sched, grid)
    definition = sig_t * (sig_t - sig_s) / (np.sqrt(ab_t) * (np.sqrt(ab_s) - np.sqrt(ab_t)))
    lam_star = np.asarray(pj.expansion_threshold(sched, grid))
    np.testing.assert_allclose(lam_star, definition, rtol=1e-9)
    assert lam_star[0] == pytest.approx(2.0, abs=0.05)  # about 2 at the finest step
    assert np.median(lam_star) == pytest.approx(1.0, abs=0.05)  # about 1 mid-chain


@pytest.mark.parametrize(
    "make, grid",
    [
        (lambda: pj.cosine(1000, s=0.0), None),
        (pj.linear, None),
        (lambda: pj.cosine(1000, s=0.0), GRID50),
        (pj.scaled_linear, pj.align_your_steps_grid()),
    ],
)
def test_moran_threshold_is_the_root(x64, make, grid):
    sched = make()
    root = float(pj.moran_threshold(sched, grid))
    assert abs(float(pj.moran_function(sched, jnp.array(root), grid))) < 1e-10
    g = np.arange(sched.T + 1) if grid is None else np.asarray(grid)
    alpha_bar = np.exp(np.asarray(sched.log_alpha_bar, dtype=np.float64))
    assert root == pytest.approx(moran_root_numpy(alpha_bar, g, lo=1e-3, hi=1e3), rel=1e-9)


def test_moran_threshold_paper_value(x64):
    # Paper: lambda** = 1.0024 for its 1000-step chain; the cosine chain gives 1.00247.
    assert float(pj.moran_threshold(pj.cosine(1000, s=0.0))) == pytest.approx(1.0024, abs=1e-4)


def test_moran_threshold_of_a_one_step_chain(x64):
    sched = pj.cosine(10)
    root = pj.moran_threshold(sched, np.array([0, 10]))
    np.testing.assert_allclose(root, pj.expansion_threshold(sched, np.array([0, 10]))[0], rtol=1e-12)


def test_lyapunov_exponents_and_kaplan_yorke(x64):
    sched, grid = pj.cosine(1000), GRID50
    lam = jnp.array([0.2, 0.9, 1.2, 5.0])
    expo = pj.lyapunov_exponents(sched, lam, grid)
    np.testing.assert_allclose(expo, np.mean(np.log(_naive_f(sched, grid, lam)), axis=0), rtol=1e-10)
    root = pj.moran_threshold(sched, grid)
    assert np.all((np.asarray(expo) > 0) == (np.asarray(lam) > float(root)))
    sizes = jnp.array([48.0, 48.0, 48.0, 48.0])
    d = pj.analytic_kaplan_yorke(sched, lam, sizes, grid)
    np.testing.assert_allclose(d, pj.kaplan_yorke_dimension(jnp.repeat(expo, 48)), rtol=1e-12)


def test_information_gain_telescopes(x64):
    sched, grid = pj.cosine(1000), GRID50
    lam, n = jnp.array([0.1, 1.0, 10.0]), jnp.array([3.0, 2.0, 1.0])
    ig = np.asarray(pj.information_gain(sched, lam, n, grid))
    assert np.isinf(ig[0]) and np.all(ig[1:] > 0)
    snr = np.asarray(jnp.exp(sched.log_snr))
    total = 0.5 * np.sum(np.asarray(n) * np.log((1 + snr[grid[1]] * lam) / (1 + snr[grid[-1]] * lam)))
    assert np.sum(ig[1:]) == pytest.approx(total, rel=1e-10)


def test_dimension_growth_sums_to_the_patch_form_fraction(x64):
    sched, grid = pj.cosine(1000), GRID50
    lam, n = jnp.array([0.3, 0.8, 1.3, 2.0]), jnp.array([10.0, 10.0, 2.0, 1.0])
    growth = pj.dimension_growth(sched, lam, n, grid)
    expo = pj.lyapunov_exponents(sched, lam, grid)
    patch_form = pj.kaplan_yorke_patch_form(expo, n)
    n_plus = float(jnp.sum(jnp.where(expo > 0, n, 0)))
    assert float(jnp.sum(growth)) == pytest.approx(float(patch_form) - n_plus, rel=1e-10)
    # here the fraction is below n_{k*}, so the patch form equals the general rule
    np.testing.assert_allclose(patch_form, pj.kaplan_yorke_dimension(expo, n), rtol=1e-12)


def _all_quantities(sched, grid, lam):
    c = pj.step_coefficients(sched, grid)
    return {
        "alpha_bar": sched.alpha_bar,
        "sigma2": sched.sigma2[1:],
        "a_minus_1": c.a_minus_1,
        "b": c.b,
        "lstar": pj.contraction_threshold(sched, grid),
        "lambda_star": pj.expansion_threshold(sched, grid),
        "f": pj.expansion_factor(sched, lam, grid),
        "log_f": pj.log_expansion_factor(sched, lam, grid)[1:],
        "lambda_2star": pj.moran_threshold(sched, grid),
        "exponents": pj.lyapunov_exponents(sched, lam, grid),
        "information_gain": pj.information_gain(sched, lam, None, grid)[1:],
    }


SCHEDULE_FACTORIES = {
    "linear": lambda dt: pj.linear(1000, dtype=dt),
    "scaled_linear": lambda dt: pj.scaled_linear(1000, dtype=dt),
    "cosine_s0": lambda dt: pj.cosine(1000, s=0.0, dtype=dt),
    "cosine": lambda dt: pj.cosine(1000, dtype=dt),
    "sigmoid": lambda dt: pj.sigmoid(1000, dtype=dt),  # logSNR down to -20.7 (clip 1e-9)
    "logsnr_cosine_20": lambda dt: pj.logsnr_cosine(1000, logsnr_min=-20.0, logsnr_max=20.0, dtype=dt),
    # shift -1.39: logSNR_T = -21.2 (near -22 a float32 logSNR alone carries 22 * 6e-8 = 1.3e-6 per rounding)
    "shifted": lambda dt: pj.shift_log_snr(pj.cosine(1000, dtype=dt), pj.resolution_shift(128)),
    "zero_snr": lambda dt: pj.zero_terminal_snr(pj.scaled_linear(1000, dtype=dt)),
    "karras": lambda dt: pj.karras(1000).astype(dt),
}


@pytest.mark.parametrize("name", sorted(SCHEDULE_FACTORIES))
@pytest.mark.parametrize("grid", [None, GRID50])
def test_float32_agrees_with_float64(name, grid):
    """Every quantity to 1e-5 relative (float32 eps is 1.2e-7: the margin covers sums of 1000 terms)."""
    lam = np.array([0.05, 0.5, 1.0, 2.0, 50.0])
    with jax.enable_x64(True):
        ref = {
            k: np.asarray(v, np.float64)
            for k, v in _all_quantities(SCHEDULE_FACTORIES[name](jnp.float64), grid, lam).items()
        }
    with jax.enable_x64(False):
        sched32 = SCHEDULE_FACTORIES[name](jnp.float32)
        assert sched32.dtype == jnp.float32
        out = {k: np.asarray(v, np.float64) for k, v in _all_quantities(sched32, grid, lam).items()}
    # log f_t(lambda) = log1p(ab_t (a_t - 1)(lambda - lambda*_t) / ...) crosses zero at lambda*_t, where
    # it is ill-conditioned in lambda*_t itself; there the error is measured against the size of
    # the step's own factor, (a_t - 1) (absolute), instead of relative to a value near zero.
    log_f_scale = ref["a_minus_1"][1:, None]
    for key in ref:
        assert np.all(np.isfinite(out[key])), (name, key)
        atol = 1e-5 * log_f_scale if key == "log_f" else 0.0
        excess = np.abs(out[key] - ref[key]) - (1e-5 * np.abs(ref[key]) + atol)
        assert np.all(excess <= 0), (name, key, float(np.max(excess)))


def _fd(fn, x, h=1e-6):
    return (fn(x + h) - fn(x - h)) / (2 * h)


@pytest.mark.slow
@pytest.mark.parametrize("grid", [None, GRID50])
def test_gradients_match_finite_differences(x64, grid):
    criteria = {
        "moran": lambda s: pj.moran_threshold(s, grid),
        "mean_lstar": lambda s: jnp.mean(pj.contraction_threshold(s, grid)),
        "min_lstar": lambda s: jnp.min(pj.contraction_threshold(s, grid)),
    }
    families = {
        "cosine_offset": (lambda p: pj.cosine(1000, s=p), 0.008),
        "logsnr_shift": (lambda p: pj.shift_log_snr(pj.cosine(1000), p), 0.3),
    }
    for cname, crit in criteria.items():
        for fname, (family, p0) in families.items():

            def fn(p, crit=crit, family=family):
                return crit(family(p))

            grad = float(jax.jit(jax.grad(fn))(p0))
            fd = float(_fd(fn, p0))
            assert grad == pytest.approx(fd, rel=1e-5, abs=1e-10), (cname, fname, grad, fd)


@pytest.mark.slow
def test_gradients_of_learnable_parameters(x64):
    fam = pj.logsnr_spline(1000, n_knots=6)
    params = {"logits": jnp.array([0.3, -0.2, 0.1, 0.0, 0.5, -0.4])}
    direction = {"logits": jnp.array([1.0, -0.5, 0.25, 0.0, -1.0, 0.5])}
    for crit in (lambda s: pj.moran_threshold(s, GRID50), lambda s: jnp.min(pj.contraction_threshold(s))):
        fn = jax.jit(lambda p, crit=crit: crit(fam.apply(p)))  # compiled once for the gradient and both shifts
        g = jax.jit(jax.grad(fn))(params)
        directional = float(jnp.vdot(g["logits"], direction["logits"]))

        def shift(h, fn=fn):
            return fn({"logits": params["logits"] + h * direction["logits"]})

        assert directional == pytest.approx(float(_fd(shift, 0.0)), rel=1e-5)


def test_jit_gives_the_same_numbers(x64):
    sched = pj.cosine(1000)
    for fn in (pj.contraction_threshold, pj.expansion_threshold, pj.moran_threshold):
        np.testing.assert_allclose(jax.jit(fn)(sched, GRID50), fn(sched, GRID50), rtol=1e-14)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: pj.expansion_factor(pj.cosine(100), jnp.array([-1.0, 1.0])), "variances"),
        (lambda: pj.expansion_factor(pj.cosine(100), jnp.array([np.inf])), "variances"),
        (lambda: pj.contraction_threshold(np.linspace(1, 0.1, 10)), "sched"),
        (
            lambda: pj.contraction_threshold(pj.Schedule(jnp.array([0.0, -0.1, -0.05]), jnp.array([0.1, -0.05]))),
            "strictly decreasing",
        ),
        (
            lambda: pj.contraction_threshold(pj.Schedule(jnp.array([0.1, -0.1, -0.5]), jnp.array([0.2, 0.4]))),
            r"alpha_bar\[0\]",
        ),
        (
            lambda: pj.contraction_threshold(pj.Schedule(jnp.array([0.0, -0.1, -0.5]), jnp.array([0.1, 0.1]))),
            "inconsistent",
        ),
        (
            lambda: pj.contraction_threshold(pj.Schedule(jnp.array([0.0, -0.1, -0.5]), jnp.array([0.1]))),
            "gaps must have shape",
        ),
        (lambda: pj.information_gain(pj.cosine(100), jnp.ones(3), jnp.ones(2)), "sizes"),
    ],
)
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()

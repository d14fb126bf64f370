"""Learnable schedule families: monotone for any parameters, fixed end points, fit, gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pifs_jax as pj
from pifs_jax._validation import check_gaps, check_log_alpha_bar


@pytest.mark.parametrize("family", [pj.logsnr_spline(200, n_knots=8), pj.monotone_network(200, hidden=16)])
def test_any_parameters_give_a_valid_schedule(x64, family):
    params = family.init(jax.random.key(0))
    for seed in range(5):
        leaves, treedef = jax.tree_util.tree_flatten(params)
        keys = jax.random.split(jax.random.key(seed), len(leaves))
        noisy = treedef.unflatten(
            [3 * jax.random.normal(k, leaf.shape, leaf.dtype) for k, leaf in zip(keys, leaves, strict=True)]
        )
        sched = family.apply(noisy)
        check_log_alpha_bar(sched.log_alpha_bar)  # raises if not monotone / out of range
        check_gaps(sched.log_alpha_bar, sched.gaps)
        assert float(sched.log_snr[-1]) == pytest.approx(-20.0, abs=1e-9)  # fixed end point


def test_spline_knots_and_fit(x64):
    fam = pj.logsnr_spline(1000, n_knots=4, logsnr_min=-10.0, logsnr_max=10.0)
    sched = fam.apply(fam.init())
    # zero logits: logSNR linear in u from 10 to -10
    u = np.arange(1, 1001) / 1000
    np.testing.assert_allclose(sched.log_snr[1:], 10 - 20 * u, atol=1e-9)
    target = pj.cosine(1000)
    fam = pj.logsnr_spline(1000, n_knots=32, logsnr_min=float(target.log_snr[-1]), logsnr_max=12.0)
    assert fam.fit is not None
    fitted = fam.apply(fam.fit(target))
    # a 32-knot linear spline reproduces the cosine logSNR to within 0.15 in the interior
    mid = slice(50, 950)
    assert np.max(np.abs(np.asarray(fitted.log_snr[1:])[mid] - np.asarray(target.log_snr[1:])[mid])) < 0.15


def test_network_gradient_matches_finite_differences(x64):
    fam = pj.monotone_network(500, hidden=8)
    params = fam.init(jax.random.key(1))
    # one compilation for the value and one for the gradient (eager root finding dispatches op by op)
    loss = jax.jit(lambda p: pj.moran_threshold(fam.apply(p), pj.uniform_grid(500, 25)))
    grads = jax.jit(jax.grad(loss))(params)
    h = 1e-6
    for name in ("w1", "w3"):
        direction = jnp.ones_like(params[name])
        plus = dict(params, **{name: params[name] + h * direction})
        minus = dict(params, **{name: params[name] - h * direction})
        fd = (loss(plus) - loss(minus)) / (2 * h)
        assert float(jnp.vdot(grads[name], direction)) == pytest.approx(float(fd), rel=1e-5, abs=1e-11)


def test_bad_hyper_parameters():
    with pytest.raises(ValueError, match="logsnr_min"):
        pj.logsnr_spline(100, logsnr_min=5.0, logsnr_max=1.0)
    with pytest.raises(ValueError, match="n_knots"):
        pj.logsnr_spline(100, n_knots=0)
    fit = pj.logsnr_spline(100).fit
    assert fit is not None
    with pytest.raises(ValueError, match="sched"):
        fit(pj.cosine(50))


def test_families_are_registered_frozen_objects():
    """One object per family: its settings are fields, schedule(params) its map, initial_params its start."""
    import dataclasses

    from pifs_jax.optimize import families

    assert pj.FAMILIES == ("spline", "network", "cosine_offset", "logsnr_shift")
    cosine_family = families.CosineOffsetFamily(100, s=0.02)
    assert cosine_family == families.CosineOffsetFamily(100, s=0.02) and hash(cosine_family)
    sched = cosine_family.schedule(cosine_family.initial_params())
    np.testing.assert_allclose(sched.log_alpha_bar, pj.cosine(100, s=0.02).log_alpha_bar, rtol=1e-6)
    assert cosine_family.build() is families.CosineOffsetFamily(100, s=0.02).build()  # compiled updates reused
    spline = families.SplineFamily(100, n_knots=4)
    assert spline.build() is families.SplineFamily(100, n_knots=4).build()
    with pytest.raises(dataclasses.FrozenInstanceError):
        spline.n_knots = 5  # type: ignore[misc]
    with pytest.raises(ValueError, match=r"^family: expected a new, non-empty NAME"):
        families.register_family(type("Again", (families.SplineFamily,), {}))

"""``analyze_chain`` and ``sharded_sample`` for every sampler (DDIM, DPM-Solver++(2M), Heun).

- On the linear Gaussian denoiser ``eps_t(x) = E_t x``, ``E_t = sigma_t (ab_t Sigma + sigma_t^2
  I)^{-1}`` (zero mean, full covariance), every step's map on the image is linear, and the
  measured block norms equal those of the closed-form ``x -> x`` Jacobian (history held fixed),
  reduced by NumPy's SVD: DDIM ``a I + b E_t``; Heun ``a I + (b/2)(E_t + E_s (a I + b E_t))``
  (DDIM's on the last step); DPM-Solver++(2M) ``rho I + alpha_s (1 - e^{-h})(1 + kappa) C_t``,
  ``C_t = (I - sigma_t E_t) / alpha_t``, ``kappa = h / (2 h_prev)`` on second-order steps, 0 on the
  first and the last. Coefficients from :func:`pifs_jax.samplers.step_tables`.
- DDIM's model-free predictions (suppression field, ``f_t``, predicted exponents) are NaN and
  named in ``not_applicable`` for the other samplers, and the claims on them are not tested.
- ``sharded_sample`` on 4 forced CPU devices (a subprocess, as in tests/test_sharding.py) equals
  ``sample_batch`` for every sampler, including a padded batch and a stochastic DDIM.

Images 4x4x1 in patches of 2 (``M = 4`` patches of ``n_k = 4``), 5 steps, float64.
"""

from __future__ import annotations

import textwrap

import jax.numpy as jnp
import numpy as np
import pytest
from test_sharding import run_on_four_host_devices

import pifs_jax as pj
from pifs_jax.analysis import analyze_chain, evaluate_claims, per_patch_exponents
from pifs_jax.analysis.chain_analysis import DDIM_PREDICTIONS
from pifs_jax.data import patch_stats
from pifs_jax.errors import ArgumentError
from pifs_jax.samplers import DDIM, DPMSolverPP2M, Heun, sample_batch, step_tables
from pifs_jax.sharding import sharded_sample

SHAPE = (4, 4, 1)
P = 2
M, NK, N = 4, 4, 16
T = 1000
GRID = np.array([0, 120, 300, 520, 760, 950])


def covariance(seed=0):
    """A full (rotated, anisotropic) covariance of the 16 pixels."""
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.standard_normal((N, N)))
    u = q * np.sign(np.diag(r))
    return (u * np.logspace(-2, 1, N)) @ u.T


def noise(seed, batch=None):
    shape = SHAPE if batch is None else (batch, *SHAPE)
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape))


def eps_matrix(sched, cov, t):
    """``E_t = sigma_t (ab_t Sigma + sigma_t^2 I)^{-1}`` in NumPy float64."""
    alpha_bar = np.exp(float(sched.log_alpha_bar[t]))
    sigma2 = 1.0 - alpha_bar
    return np.sqrt(sigma2) * np.linalg.inv(alpha_bar * cov + sigma2 * np.eye(N))


def closed_form_jacobians(sampler, sched, cov):
    """The ``x -> x`` block of every step's Jacobian, in chain order (``i = N, ..., 1``)."""
    tab = {name: np.asarray(value, np.float64) for name, value in step_tables(sched, GRID)._asdict().items()}
    n_steps = GRID.shape[0] - 1
    eye = np.eye(N)
    out = []
    for i in range(n_steps, 0, -1):
        r = i - 1
        t, s, a, b = int(tab["t"][r]), int(tab["s"][r]), tab["a"][r], tab["b"][r]
        e_t = eps_matrix(sched, cov, t)
        if isinstance(sampler, DDIM) or (isinstance(sampler, Heun) and s == 0):
            jac = a * eye + b * e_t
        elif isinstance(sampler, Heun):
            jac = a * eye + (b / 2) * (e_t + eps_matrix(sched, cov, s) @ (a * eye + b * e_t))
        else:  # DPM-Solver++(2M)
            alpha_t = np.exp(tab["log_alpha_bar_t"][r] / 2)
            alpha_s = np.exp(tab["log_alpha_bar_s"][r] / 2)
            c_t = (eye - tab["sigma_t"][r] * e_t) / alpha_t
            kappa = tab["h"][r] / (2 * tab["h"][i]) if 1 < i < n_steps else 0.0  # tab["h"][i]: step i+1 -> i
            jac = tab["sigma_ratio"][r] * eye + alpha_s * -np.expm1(-tab["h"][r]) * (1 + kappa) * c_t
        out.append(jac)
    return out


def block_norms_numpy(jac):
    """``N_kj`` of a 16 x 16 Jacobian of the flattened 4x4x1 image: rows/columns in patch order, SVD."""
    index = np.arange(N).reshape(SHAPE)
    order = index.reshape(2, P, 2, P, 1).transpose(0, 2, 1, 3, 4).reshape(-1)
    blocks = jac[order][:, order].reshape(M, NK, M, NK).transpose(0, 2, 1, 3)
    return np.linalg.svd(blocks, compute_uv=False)[..., 0]


SAMPLERS = {"ddim": DDIM(), "dpmpp2m": DPMSolverPP2M(), "heun": Heun()}


@pytest.mark.parametrize("name", ["dpmpp2m", "heun", "ddim"])
def test_block_norms_are_the_closed_form_image_blocks(x64, name):
    sampler = SAMPLERS[name]
    sched = pj.cosine(T)
    cov = covariance()
    eps_fn = pj.gaussian_denoiser(sched, np.zeros(SHAPE), cov)
    analysis = analyze_chain(eps_fn, sched, noise(1), grid=GRID, patch_size=P, sampler=sampler, method="exact")
    np.testing.assert_array_equal(analysis.t, GRID[1:][::-1])
    for i, jac in enumerate(closed_form_jacobians(sampler, sched, cov)):
        norms = block_norms_numpy(jac)
        kappa = np.diag(norms)
        delta = norms.sum(axis=1) - kappa
        np.testing.assert_allclose(analysis.kappa_diag_per_patch[i], kappa, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(analysis.delta_cross_per_patch[i], delta, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(analysis.margin_per_patch[i], 1 - kappa - delta, rtol=1e-10, atol=1e-12)
    assert analysis.sampler == repr(sampler)
    assert analysis.model_free == (name == "ddim")


def test_matrix_free_multistep_blocks_equal_exact(x64):
    """Golub-Kahan-Lanczos on the DPM-Solver++(2M) image map (history held fixed) equals the exact blocks."""
    sched = pj.cosine(T)
    cov = covariance(2)
    eps_fn = pj.gaussian_denoiser(sched, np.zeros(SHAPE), cov)
    free = analyze_chain(
        eps_fn, sched, noise(3), grid=GRID, patch_size=P, sampler=DPMSolverPP2M(), method="matrix_free", krylov_iters=NK
    )
    assert free.method == "matrix_free"
    for i, jac in enumerate(closed_form_jacobians(DPMSolverPP2M(), sched, cov)):
        norms = block_norms_numpy(jac)
        np.testing.assert_allclose(free.kappa_diag_per_patch[i], np.diag(norms), rtol=1e-9, atol=1e-12)


def test_ddim_predictions_are_marked_not_applicable(x64):
    """Another sampler: suppression, f_t and the predicted exponents are NaN, named, and not tested."""
    sched = pj.cosine(T)
    cov = covariance()
    eps_fn = pj.gaussian_denoiser(sched, np.zeros(SHAPE), cov)
    data = np.random.default_rng(4).multivariate_normal(np.zeros(N), cov, size=256).reshape(-1, *SHAPE)
    baseline = patch_stats(jnp.asarray(data), patch_size=P)
    x_T = noise(5, batch=2)
    heun = analyze_chain(eps_fn, sched, x_T, grid=GRID, patch_size=P, sampler=Heun(), baseline=baseline)
    assert heun.not_applicable == DDIM_PREDICTIONS and not heun.model_free
    assert heun.suppression is not None and heun.expansion_along_leading is not None and heun.deviation_norm is not None
    assert np.all(np.isnan(heun.suppression)) and np.shape(heun.suppression) == (2, 5, M)
    assert np.all(np.isnan(heun.expansion_along_leading))
    assert np.all(np.isfinite(heun.deviation_norm)) and np.all(np.isfinite(heun.kappa_diag_per_patch))
    predicted, measured = per_patch_exponents(heun)
    assert np.all(np.isnan(predicted)) and np.all(np.isfinite(measured))
    claims = {c.name: c for c in evaluate_claims(heun, patch_eigenvalues=baseline.leading_eigenvalue, num_timesteps=T)}
    for name in ("suppression_ordered_by_variance", "corrected_exponents_predict_signs"):
        assert claims[name].verdict == "not tested" and "not applicable to Heun" in claims[name].ours
    ddim = analyze_chain(eps_fn, sched, x_T, grid=GRID, patch_size=P, baseline=baseline)
    assert ddim.not_applicable == () and ddim.model_free and ddim.suppression is not None
    assert np.all(np.isfinite(ddim.suppression))
    # stochastic DDIM: the chain runs (noise from the key), but the model-free predictions are DDIM(eta=0)'s
    noisy = analyze_chain(eps_fn, sched, x_T, grid=GRID, patch_size=P, sampler=DDIM(0.5), baseline=baseline)
    assert noisy.not_applicable == DDIM_PREDICTIONS and np.all(np.isfinite(noisy.kappa_diag_per_patch))


def test_sampler_must_be_a_sampler(x64):
    sched = pj.cosine(T)
    eps_fn = pj.gaussian_denoiser(sched, np.zeros(SHAPE), covariance())
    with pytest.raises(ArgumentError) as info:
        analyze_chain(eps_fn, sched, noise(1), grid=GRID, patch_size=P, sampler=Heun)  # pyright: ignore[reportArgumentType]
    assert info.value.argument == "sampler"
    with pytest.raises(ArgumentError) as info:
        sharded_sample(eps_fn, sched, noise(1, batch=2), grid=GRID, sampler="heun")  # pyright: ignore[reportArgumentType]
    assert info.value.argument == "sampler"


@pytest.mark.parametrize("name", ["dpmpp2m", "heun"])
def test_one_device_sharded_sample_equals_sample_batch(x64, name):
    sched = pj.cosine(T)
    eps_fn = pj.gaussian_denoiser(sched, np.zeros(SHAPE), covariance())
    x_T = noise(6, batch=3)
    sampler = SAMPLERS[name]
    expected = sample_batch(eps_fn, sched, x_T, grid=GRID, sampler=sampler)
    got = sharded_sample(eps_fn, sched, x_T, grid=GRID, sampler=sampler)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


SCRIPT = textwrap.dedent(
    """
    import jax
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpy as np
    import pifs_jax as pj
    from pifs_jax.analysis import analyze_chain
    from pifs_jax.samplers import DDIM, DPMSolverPP2M, Heun, sample_batch
    from pifs_jax.sharding import batch_mesh, sharded_sample

    assert jax.device_count() == 4, jax.devices()
    sched = pj.cosine(1000)
    grid = np.array([0, 120, 300, 520, 760, 950])
    rng = np.random.default_rng(0)
    q, r = np.linalg.qr(rng.standard_normal((16, 16)))
    cov = (q * np.logspace(-2, 1, 16)) @ q.T
    eps_fn = pj.gaussian_denoiser(sched, np.zeros((4, 4, 1)), cov)
    x_T = jnp.asarray(rng.standard_normal((8, 4, 4, 1)))
    key = jax.random.PRNGKey(3)
    for sampler in (DDIM(), DDIM(0.5), DPMSolverPP2M(), Heun()):
        k = key if sampler.needs_key else None
        for batch in (8, 6):  # 6: padded to 8 and trimmed
            expected = sample_batch(eps_fn, sched, x_T[:batch], grid=grid, sampler=sampler, key=k)
            got, trajectory = sharded_sample(
                eps_fn, sched, x_T[:batch], grid=grid, sampler=sampler, key=k, return_trajectory=True
            )
            np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12, err_msg=repr(sampler))
            assert trajectory.shape == (batch, 6, 4, 4, 1)
            if batch == 8:
                assert len(got.sharding.device_set) == 4, got.sharding
                assert got.sharding.spec == jax.sharding.PartitionSpec("batch"), got.sharding
    # the alias
    np.testing.assert_allclose(
        pj.sharded_ddim_sample(eps_fn, sched, x_T, grid=grid), sample_batch(eps_fn, sched, x_T, grid=grid),
        rtol=1e-10, atol=1e-12,
    )
    # analyze_chain of a multistep sampler, trajectories split over the devices
    one = analyze_chain(eps_fn, sched, x_T[:4], grid=grid, patch_size=2, sampler=DPMSolverPP2M())
    split = analyze_chain(eps_fn, sched, x_T[:4], grid=grid, patch_size=2, sampler=DPMSolverPP2M(), mesh=batch_mesh())
    np.testing.assert_allclose(split.kappa_diag_per_patch, one.kappa_diag_per_patch, rtol=1e-10)
    assert len(split.kappa_diag_per_patch.sharding.device_set) == 4
    print("SAMPLER-SHARDING-OK")
    """
)


@pytest.mark.slow
def test_four_host_devices_sharded_sample_equals_sample_batch():
    run_on_four_host_devices(SCRIPT, "SAMPLER-SHARDING-OK")

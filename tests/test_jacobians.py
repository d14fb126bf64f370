"""Step/chain Jacobians, patch blocks, matrix-free block norms, suppression field."""

import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pifs_jax as pj
from pifs_jax.ddim import ddim_step
from pifs_jax.denoisers import empirical_denoiser, gaussian_denoiser, gaussian_denoiser_patches
from pifs_jax.jacobians import (
    block_norms,
    block_norms_matrix_free,
    chain_jacobian,
    ddim_step_jacobian,
    forward_jacobian,
    forward_products,
    leading_eigenvectors,
    patch_blocks,
    projected_coupling,
    step_jacobian,
    step_jvp,
    step_vjp,
    summarize_block_norms,
    suppression_field,
)
from pifs_jax.patches import patchify, unpatchify
from reference import random_covariance

GRID = pj.uniform_grid(1000, 50)


@pytest.mark.parametrize("chunk", [1, 7, 64, 200])
def test_forward_jacobian_equals_jacfwd_for_any_tangent_batch(x64, chunk):
    """Batched tangents (a partial last batch included: n = 30) give ``jax.jacfwd``'s matrix, under vmap and grad too.

    Same arithmetic per column, so equal to rounding (1e-14 in float64).
    """
    w = jax.random.normal(jax.random.PRNGKey(0), (30, 30))

    def fn(x):
        return jnp.tanh(w @ x) * x[::-1]

    xs = jax.random.normal(jax.random.PRNGKey(1), (3, 30))
    expected = jax.vmap(jax.jacfwd(fn))(xs)
    got = jax.vmap(lambda x: forward_jacobian(fn, x, chunk=chunk))(xs)
    np.testing.assert_allclose(got, expected, rtol=1e-14, atol=1e-14)

    def loss(x, jac):
        return jnp.sum(jnp.sin(jac(fn, x)))

    np.testing.assert_allclose(
        jax.grad(loss)(xs[0], lambda f, x: forward_jacobian(f, x, chunk=chunk)),
        jax.grad(loss)(xs[0], lambda f, x: jax.jacfwd(f)(x)),
        rtol=1e-12,
        atol=1e-12,
    )


@pytest.mark.parametrize("chunk", [None, 1, 7, 64])
def test_forward_products_return_value_and_pushed_block(x64, chunk):
    """``forward_products(fn, x, V) = (fn(x), J V)``: ``jax.jacfwd(fn)(x) @ V`` to rounding, under vmap too.

    ``chunk=None`` (batches sized from the linear map) included; ``p = 11`` leaves a partial batch.
    """
    w = jax.random.normal(jax.random.PRNGKey(0), (30, 30))

    def fn(x):
        return jnp.tanh(w @ x) * x[::-1]

    xs = jax.random.normal(jax.random.PRNGKey(1), (3, 30))
    v = jax.random.normal(jax.random.PRNGKey(2), (30, 11))
    value, pushed = jax.vmap(lambda x: forward_products(fn, x, v, chunk=chunk))(xs)
    np.testing.assert_allclose(value, jax.vmap(fn)(xs), rtol=1e-15, atol=1e-15)
    np.testing.assert_allclose(pushed, jax.vmap(jax.jacfwd(fn))(xs) @ v, rtol=1e-13, atol=1e-13)


def coefficients(sched, step):
    """``(t, a, b)`` of sampling step ``step`` of GRID."""
    c = pj.step_coefficients(sched, GRID)
    return int(GRID[step]), c.a[step - 1], c.b[step - 1]


def patch_model(rng, image_shape, p):
    """A Gaussian patch model with spread eigenvalues (straddling lambda* ~ 1) and its denoiser."""
    h, w, ch = image_shape
    m, nk = (h // p) * (w // p), p * p * ch
    lam = np.exp(rng.uniform(np.log(0.02), np.log(20.0), (m, nk)))
    covs, vecs = zip(*(random_covariance(rng, lam_k) for lam_k in lam), strict=True)
    return np.stack(covs), np.stack(vecs), lam


def empirical_setup(rng, image_shape, sched, t, n_data=12):
    data = 0.5 * rng.standard_normal((n_data, *image_shape))
    x = np.sqrt(float(sched.alpha_bar[t])) * data.mean(0) + float(sched.sigma[t]) * rng.standard_normal(image_shape)
    return data, x


# ----------------------------------------------------------------------------- dense Jacobians


def test_chain_jacobian_gaussian_is_u_diag_prod_f(x64):
    """50-step chain under eps^G: J_1 ... J_50 = U diag(prod_t f_t(lambda)) U^T (non-axis eigenbasis)."""
    rng = np.random.default_rng(0)
    lam = np.array([0.01, 0.2, 0.9, 1.0, 1.3, 6.0])
    cov, u = random_covariance(rng, lam)
    sched = pj.cosine(1000)
    eps_fn = gaussian_denoiser(sched, rng.standard_normal((3, 2, 1)), cov)
    jac = np.asarray(chain_jacobian(eps_fn, sched, rng.standard_normal((3, 2, 1)), grid=GRID))
    prod_f = np.exp(np.sum(np.asarray(pj.log_expansion_factor(sched, lam, GRID)), axis=0))
    np.testing.assert_allclose(jac, u @ np.diag(prod_f) @ u.T, rtol=0, atol=1e-10 * prod_f.max())


def test_chain_jacobian_patch_gaussian_is_block_diagonal(x64):
    rng = np.random.default_rng(1)
    shape, p = (8, 8, 1), 4
    covs, vecs, lam = patch_model(rng, shape, p)
    sched = pj.cosine(1000)
    eps_fn = gaussian_denoiser_patches(sched, np.zeros(shape), covs, p)
    jac = jax.jit(lambda x: chain_jacobian(eps_fn, sched, x, grid=GRID))(rng.standard_normal(shape))
    prod_f = np.exp(np.sum(np.asarray(pj.log_expansion_factor(sched, lam, GRID)), axis=0))  # (M, n_k)
    blocks = np.asarray(patch_blocks(jac, shape, p))
    for k in range(len(lam)):
        for j in range(len(lam)):
            expected = vecs[k] @ np.diag(prod_f[k]) @ vecs[k].T if j == k else np.zeros((16, 16))
            np.testing.assert_allclose(blocks[k, j], expected, rtol=0, atol=1e-10 * prod_f.max())


def test_step_jvp_vjp_and_patch_blocks_match_dense(x64):
    rng = np.random.default_rng(2)
    shape, p = (8, 8, 1), 4
    sched = pj.cosine(1000)
    data, x = empirical_setup(rng, shape, sched, 600)
    eps_fn = empirical_denoiser(sched, data)
    t, a, b = coefficients(sched, 30)
    v, u = rng.standard_normal(shape), rng.standard_normal(shape)

    @jax.jit  # one compilation for the whole comparison
    def compute(x, v, u):
        jac = step_jacobian(eps_fn, x, t=t, a=a, b=b)
        y, jv = step_jvp(eps_fn, x, v, t=t, a=a, b=b)
        y2, jtu = step_vjp(eps_fn, x, u, t=t, a=a, b=b)
        # patch blocks = derivative of output patch k with respect to input patch j
        step_on_patches = lambda q: patchify(ddim_step(eps_fn, unpatchify(q, shape, p), t, a, b), p)  # noqa: E731
        direct = jax.jacfwd(step_on_patches)(patchify(x, p)).transpose(0, 2, 1, 3)  # (M, M, n_k, n_k)
        return jac, y, jv, y2, jtu, patch_blocks(jac, shape, p), direct, ddim_step(eps_fn, x, t, a, b)

    jac, y, jv, y2, jtu, blocks, direct, step = (np.asarray(r) for r in compute(x, v, u))
    np.testing.assert_allclose(y, step, rtol=1e-13)
    np.testing.assert_allclose(y2, y, rtol=1e-13)
    np.testing.assert_allclose(jv.reshape(-1), jac @ v.reshape(-1), rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(jtu.reshape(-1), jac.T @ u.reshape(-1), rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(blocks, direct, rtol=1e-12, atol=1e-14)


@pytest.mark.slow
def test_jit_and_vmap_agree_with_plain(x64):
    rng = np.random.default_rng(3)
    shape, p = (8, 8, 1), 4
    sched = pj.cosine(1000)
    data, _ = empirical_setup(rng, shape, sched, 500)
    eps_fn = empirical_denoiser(sched, data)
    xs = rng.standard_normal((3, *shape))
    t, a, b = coefficients(sched, 25)
    plain = np.stack([step_jacobian(eps_fn, x, t=t, a=a, b=b) for x in xs])
    jac_fn = lambda x: step_jacobian(eps_fn, x, t=t, a=a, b=b)  # noqa: E731
    np.testing.assert_allclose(jax.vmap(jac_fn)(xs), plain, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(jax.jit(jax.vmap(jac_fn))(xs), plain, rtol=1e-12, atol=1e-14)
    norms_plain = block_norms(plain[0], shape, p)
    norms_jit = jax.jit(lambda jac: block_norms(jac, shape, p))(plain[0])
    chex.assert_trees_all_close(norms_jit, norms_plain, rtol=1e-12, atol=1e-14)  # every field of the NamedTuple
    # the step index may be traced
    traced = jax.jit(lambda x, i: ddim_step_jacobian(eps_fn, sched, x, grid=GRID, step=i))(xs[0], 25)
    np.testing.assert_allclose(traced, plain[0], rtol=1e-12, atol=1e-14)


# ----------------------------------------------------------------------------- block norms


def test_block_norms_gaussian_patches_analytic(x64):
    """Under eps^G by patch: [J]_kj = 0 (k != j), ||[J]_kk|| = max_i f_t(lambda_{k,i})."""
    rng = np.random.default_rng(4)
    shape, p = (8, 8, 1), 4
    covs, _, lam = patch_model(rng, shape, p)
    sched = pj.cosine(1000)
    eps_fn = gaussian_denoiser_patches(sched, np.zeros(shape), covs, p)
    step = 20
    jac = ddim_step_jacobian(eps_fn, sched, rng.standard_normal(shape), grid=GRID, step=step)
    norms = block_norms(jac, shape, p)
    f = np.asarray(pj.expansion_factor(sched, lam, GRID))[step - 1]  # (M, n_k)
    np.testing.assert_allclose(norms.kappa_diag_per_patch, f.max(axis=1), rtol=1e-12)
    np.testing.assert_allclose(norms.delta_cross_per_patch, 0.0, atol=1e-15)
    np.testing.assert_allclose(norms.margin_per_patch, 1 - f.max(axis=1), rtol=1e-12)
    np.testing.assert_allclose(norms.pc_bound, f.max(), rtol=1e-12)


def test_summarize_block_norms_definitions():
    norms = np.array([[0.9, 0.1, 0.05], [0.2, 0.7, 0.0], [0.3, 0.3, 1.1]])
    s = summarize_block_norms(norms)
    np.testing.assert_allclose(s.kappa_diag_per_patch, [0.9, 0.7, 1.1], rtol=1e-6)
    np.testing.assert_allclose(s.delta_cross_per_patch, [0.15, 0.2, 0.6], rtol=1e-6)
    np.testing.assert_allclose(s.kappa_diag, 1.1, rtol=1e-6)
    np.testing.assert_allclose(s.delta_cross, 0.6, rtol=1e-6)
    np.testing.assert_allclose(s.pc_bound, 1.7, rtol=1e-6)
    np.testing.assert_allclose(s.margin_per_patch, [-0.05, 0.1, -0.7], rtol=1e-5)
    np.testing.assert_allclose(s.margin, -0.7, rtol=1e-6)
    np.testing.assert_allclose(s.kappa_diag_mean, 0.9, rtol=1e-6)
    np.testing.assert_allclose(s.delta_cross_mean, 0.95 / 3, rtol=1e-6)
    np.testing.assert_allclose(s.margin_mean, -0.65 / 3, rtol=1e-5)
    assert float(s.margin) >= 1 - float(s.pc_bound)


@pytest.mark.slow
@pytest.mark.parametrize(
    "model, image_shape",
    # the empirical denoiser on (8, 8, 1) is covered in float32 by the jitted test below
    [("gaussian_patches", (8, 8, 1)), ("gaussian_patches", (8, 8, 3)), ("empirical", (8, 8, 3))],
)
def test_block_norms_matrix_free_matches_exact(x64, model, image_shape):
    rng = np.random.default_rng(5)
    p = 4
    sched = pj.cosine(1000)
    step = 40  # t = 800: diffuse attention, every block non-trivial for the empirical denoiser
    t, a, b = coefficients(sched, step)
    if model == "gaussian_patches":
        covs, _, _ = patch_model(rng, image_shape, p)
        eps_fn = gaussian_denoiser_patches(sched, np.zeros(image_shape), covs, p)
        x = rng.standard_normal(image_shape)
    else:
        data, x = empirical_setup(rng, image_shape, sched, t)
        eps_fn = empirical_denoiser(sched, data)
    exact = block_norms(step_jacobian(eps_fn, x, t=t, a=a, b=b), image_shape, p)
    estimate = block_norms_matrix_free(
        lambda y: ddim_step(eps_fn, y, t, a, b), x, image_shape, p, key=jax.random.key(0), iters=32
    )
    scale = float(np.max(exact.norms))
    np.testing.assert_allclose(estimate.norms, exact.norms, rtol=1e-6, atol=1e-12 * scale)
    for field in ("kappa_diag", "delta_cross", "pc_bound", "margin", "margin_mean"):
        np.testing.assert_allclose(getattr(estimate, field), getattr(exact, field), rtol=1e-6, atol=1e-12)
    if model == "empirical":
        assert np.min(exact.norms) > 1e-4 * scale  # the comparison covered genuine cross-patch blocks


@pytest.mark.slow
def test_block_norms_matrix_free_jitted_float32():
    """Under jax.jit, in float32: within 2e-4 of the float64 exact norms."""
    shape, p = (8, 8, 1), 4
    rng = np.random.default_rng(6)
    with jax.enable_x64(True):
        sched = pj.cosine(1000)
        t, a, b = coefficients(sched, 35)
        data, x = empirical_setup(rng, shape, sched, t)
        exact = np.asarray(
            block_norms(step_jacobian(empirical_denoiser(sched, data), x, t=t, a=a, b=b), shape, p).norms
        )
        t, a, b = int(t), float(a), float(b)
    with jax.enable_x64(False):
        eps32 = empirical_denoiser(sched.astype(jnp.float32), data.astype(np.float32))
        step_fn = lambda y: ddim_step(eps32, y, t, jnp.float32(a), jnp.float32(b))  # noqa: E731
        est32 = jax.jit(lambda y, key: block_norms_matrix_free(step_fn, y, shape, p, key=key, iters=16))(
            x.astype(np.float32), jax.random.key(1)
        )
        assert est32.norms.dtype == jnp.float32
        np.testing.assert_allclose(est32.norms, exact, rtol=2e-4, atol=1e-5 * exact.max())
        assert exact.min() > 1e-4 * exact.max()  # genuine cross-patch blocks


def test_block_norms_matrix_free_ritz_values_grow_to_the_exact_norms(x64):
    """Nested Krylov spaces (one key): the Ritz values never decrease with ``iters``, stay below ``||B||_2``, reach it at ``n_k``.

    A linear map with a known dense matrix; ``iters = 1`` (one JVP, no VJP) through ``n_k = 4``
    (exact to 1e-12: the bidiagonal matrix then holds all of the block's singular values).
    """
    shape, p = (4, 4, 1), 2
    A = jnp.asarray(np.random.default_rng(7).standard_normal((16, 16)))
    step_fn = lambda y: (A @ y.reshape(-1)).reshape(shape)  # noqa: E731
    x = jnp.zeros(shape)
    exact = np.asarray(block_norms(A, shape, p).norms)
    estimates = [
        np.asarray(block_norms_matrix_free(step_fn, x, shape, p, key=jax.random.key(3), iters=m).norms)
        for m in (1, 2, 3, 4)
    ]
    for low, high in itertools.pairwise(estimates):
        assert np.all(high >= low - 1e-12)
    assert np.all(estimates[0] > 0) and np.all(estimates[2] <= exact + 1e-12)
    np.testing.assert_allclose(estimates[-1], exact, rtol=1e-12)


def test_block_norms_matrix_free_of_a_nonfinite_jacobian_are_nan():
    """d/dx sqrt(|x - x|) = inf * 0 = NaN: the exact norms are NaN, and so are the Krylov ones (once a silent 0)."""
    shape, p = (4, 4, 1), 2
    step_fn = lambda y: 0.3 * y + jnp.sqrt(jnp.abs(y - y))  # noqa: E731
    x = jnp.asarray(np.random.default_rng(0).standard_normal(shape), jnp.float32)
    dense = jax.jacfwd(lambda v: step_fn(v.reshape(shape)).reshape(-1))(x.reshape(-1))
    assert np.all(np.isnan(block_norms(dense, shape, p).norms))
    estimate = block_norms_matrix_free(step_fn, x, shape, p, key=jax.random.key(0), iters=4)
    assert np.all(np.isnan(estimate.norms))
    finite = block_norms_matrix_free(lambda y: 0.3 * y, x, shape, p, key=jax.random.key(0), iters=4)
    np.testing.assert_allclose(finite.norms, 0.3 * np.eye(4), atol=1e-6)  # and a finite one is unchanged


# ----------------------------------------------------------------------------- suppression field


@pytest.mark.slow
def test_suppression_field(x64):
    rng = np.random.default_rng(7)
    shape, p = (8, 8, 1), 4
    sched = pj.cosine(1000)
    t, a, b = coefficients(sched, 30)
    data, x = empirical_setup(rng, shape, sched, t)
    # Gaussian baseline fitted to the data, patch by patch
    patches = jax.vmap(lambda d: patchify(d, p))(data)  # (N, M, n_k)
    centred = patches - patches.mean(0)
    covs = np.einsum("nmi,nmj->mij", centred, centred) / len(data)
    baseline = gaussian_denoiser_patches(sched, data.mean(0), covs, p)
    eps_fn = empirical_denoiser(sched, data)
    v = leading_eigenvectors(covs)
    top = np.linalg.eigh(covs)[1][:, :, -1]
    np.testing.assert_allclose(np.abs(np.sum(np.asarray(v) * top, axis=1)), 1.0, rtol=1e-12)
    s = suppression_field(eps_fn, baseline, x, t=t, b=b, image_shape=shape, patch_size=p, leading_vectors=v)
    chex.assert_shape(s, (4,))
    # reference from the dense Jacobian of Delta = eps - eps^G
    delta = lambda y: (eps_fn(y.reshape(shape), t) - baseline(y.reshape(shape), t)).reshape(-1)  # noqa: E731
    blocks = np.asarray(patch_blocks(jax.jacfwd(delta)(x.reshape(-1)), shape, p))
    reference = abs(float(b)) * np.einsum("mi,mij,mj->m", v, blocks[np.arange(4), np.arange(4)], v)
    np.testing.assert_allclose(s, reference, rtol=1e-10, atol=1e-12)
    # <v_k, [J Phi]_kk v_k> = f_t(lambda_k) - S_k  (b < 0)
    jac_blocks = np.asarray(patch_blocks(step_jacobian(eps_fn, x, t=t, a=a, b=b), shape, p))
    diagonal = np.einsum("mi,mij,mj->m", v, jac_blocks[np.arange(4), np.arange(4)], v)
    lam_top = np.linalg.eigvalsh(covs)[:, -1]
    f_top = np.asarray(pj.expansion_factor(sched, lam_top, GRID))[29]
    np.testing.assert_allclose(diagonal, f_top - np.asarray(s), rtol=1e-10, atol=1e-12)
    # the step on the leading directions, P_kj = <v_k, [J Phi]_kj v_j>: every block of the dense
    # Jacobian against the M JVPs (jitted); its diagonal is the quotient above
    step = lambda y: ddim_step(eps_fn, y, t, a, b)  # noqa: E731
    projected = jax.jit(lambda y: projected_coupling(step, y, image_shape=shape, patch_size=p, leading_vectors=v))(x)
    chex.assert_shape(projected, (4, 4))
    np.testing.assert_allclose(projected, np.einsum("ki,kjil,jl->kj", v, jac_blocks, v), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(np.diagonal(projected), f_top - np.asarray(s), rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match=r"leading_vectors.*\(4, 16\)"):
        projected_coupling(step, x, image_shape=shape, patch_size=p, leading_vectors=v[:, :-1])
    # the baseline suppresses nothing relative to itself (jitted)
    zero = jax.jit(
        lambda y: suppression_field(baseline, baseline, y, t=t, b=b, image_shape=shape, patch_size=p, leading_vectors=v)
    )(x)
    np.testing.assert_array_equal(zero, np.zeros(4))


# ----------------------------------------------------------------------------- bad input


def test_bad_inputs():
    shape = (8, 8, 1)
    x = jnp.zeros(shape)
    good = lambda y, t: y  # noqa: E731
    bad = lambda y, t: y[:-1]  # noqa: E731
    sched = pj.linear(1000)
    with pytest.raises(ValueError, match="eps_fn"):
        step_jacobian(bad, x, t=5, a=1.0, b=-0.1)
    with pytest.raises(ValueError, match="eps_fn"):
        chain_jacobian(bad, sched, x, grid=GRID)
    with pytest.raises(ValueError, match="step"):
        ddim_step_jacobian(good, sched, x, grid=GRID, step=51)
    with pytest.raises(ValueError, match="step"):
        ddim_step_jacobian(good, sched, x, grid=GRID, step=0)
    with pytest.raises(ValueError, match="grid"):
        ddim_step_jacobian(good, sched, x, grid=np.array([0, 10, 2000]), step=1)
    with pytest.raises(ValueError, match="v"):
        step_jvp(good, x, jnp.zeros((8, 8)), t=5, a=1.0, b=-0.1)
    with pytest.raises(ValueError, match="u"):
        step_vjp(good, x, jnp.zeros((64,)), t=5, a=1.0, b=-0.1)
    with pytest.raises(ValueError, match=r"patch_size.*\(8, 8, 1\)"):
        block_norms(jnp.eye(64), shape, 3)
    with pytest.raises(ValueError, match="J"):
        patch_blocks(jnp.eye(63), shape, 4)
    with pytest.raises(ValueError, match="step_fn"):
        block_norms_matrix_free(lambda y: y[:-1], x, shape, 4, key=jax.random.key(0))
    with pytest.raises(ValueError, match="patch_size"):
        block_norms_matrix_free(lambda y: y, x, shape, 5, key=jax.random.key(0))
    with pytest.raises(ValueError, match="iters"):
        block_norms_matrix_free(lambda y: y, x, shape, 4, key=jax.random.key(0), iters=0)
    with pytest.raises(ValueError, match="x"):
        block_norms_matrix_free(lambda y: y, jnp.zeros(10), shape, 4, key=jax.random.key(0))
    with pytest.raises(ValueError, match="leading_vectors"):
        suppression_field(
            good, good, x, t=5, b=-0.1, image_shape=shape, patch_size=4, leading_vectors=jnp.zeros((4, 8))
        )
    with pytest.raises(ValueError, match="baseline_eps_fn"):
        suppression_field(
            good, bad, x, t=5, b=-0.1, image_shape=shape, patch_size=4, leading_vectors=jnp.zeros((4, 16))
        )
    with pytest.raises(ValueError, match="patch_size"):
        suppression_field(
            good, good, x, t=5, b=-0.1, image_shape=shape, patch_size=3, leading_vectors=jnp.zeros((4, 16))
        )
    with pytest.raises(ValueError, match="patch_covs"):
        leading_eigenvectors(jnp.zeros((4, 16)))
    with pytest.raises(ValueError, match="norms"):
        summarize_block_norms(jnp.zeros((3, 4)))

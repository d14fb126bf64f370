"""``analyze_chain``: every per-step quantity checked against an independent computation.

- the block-diagonal Gaussian denoiser (closed form): ``delta_k = 0`` and ``kappa_k = max_i
  f_t(lambda_{k,i})`` (the step's Jacobian is ``U_k diag(f_t(lambda_k)) U_k^T`` per patch), and
  the deviation and suppression vanish when the denoiser is the baseline itself;
- a small MLP (coupling every patch): the per-step block norms equal a ``jax.jacfwd`` of our own
  step map along the trajectory of ``ddim_chain``, split into blocks and reduced by NumPy's SVD;
- the matrix-free estimate equals the exact one, batches equal single trajectories, float32
  agrees with float64, attention entropies equal a direct evaluation, one compilation per
  architecture, and bad input raises named errors.

Images are 8x8x3 with 4x4 patches (``M = 4`` patches of ``n_k = 48``, ``n = 192``), 4 steps.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_compile_once import counted_compilations

import pifs_jax as pj
from pifs_jax.analysis import analyze_chain, module_attention_fn, per_patch_exponents
from pifs_jax.data import patch_stats
from pifs_jax.denoisers import empirical_attention, gaussian_denoiser_patches
from pifs_jax.errors import ArgumentError, NonFiniteError
from pifs_jax.models import as_eps_fn, attention_entropy, init_params, make_model
from pifs_jax.patches import unpatchify
from reference import cosine_alpha_bar, expansion_factors, tanh_mlp, tanh_mlp_params

SHAPE = (8, 8, 3)
P = 4
M, NK = 4, 48
GRID = np.array([0, 100, 350, 600, 800])  # cosine alpha_bar from 1 to 0.095: the MLP does not saturate
T = 1000


def mlp_params(seed, dtype=np.float64):
    return tanh_mlp_params(seed, int(np.prod(SHAPE)), out_scale=2.0, dtype=dtype)


def mlp_eps(seed=0, dtype=np.float64):
    return jax.tree_util.Partial(tanh_mlp, mlp_params(seed, dtype=dtype))


def noise(seed, batch=None, dtype=np.float64):
    shape = SHAPE if batch is None else (batch, *SHAPE)
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype)


def training_data(seed=0, dtype=np.float64, n=512):
    """``n`` images whose 4 patches have variances 0.02, 0.1, 1 and 4: some patches expand, some contract."""
    rng = np.random.default_rng(seed)
    scale = np.ones(SHAPE)
    for k, variance in enumerate((0.02, 0.1, 1.0, 4.0)):
        row, col = divmod(k, SHAPE[1] // P)
        scale[row * P : (row + 1) * P, col * P : (col + 1) * P] = np.sqrt(variance)
    return jnp.asarray(rng.standard_normal((n, *SHAPE)) * scale, dtype)


def patches_numpy(x):
    """(M, n_k) patches of an (H, W, C) array, row-major patches, (row, col, channel) inside: NumPy only."""
    h, w, c = x.shape
    return x.reshape(h // P, P, w // P, P, c).transpose(0, 2, 1, 3, 4).reshape(-1, P * P * c)


def block_norms_numpy(J):
    """``N_kj`` of ``J`` (n x n) by NumPy's SVD: J's rows and columns reordered into patch order."""
    order = patches_numpy(np.arange(int(np.prod(SHAPE))).reshape(SHAPE)).reshape(-1)
    Jp = np.asarray(J)[order][:, order].reshape(M, NK, M, NK).transpose(0, 2, 1, 3)
    return np.linalg.svd(Jp, compute_uv=False)[..., 0]


# ----------------------------------------------------------------------------- closed forms


def test_gaussian_blocks_are_the_expansion_factors(x64):
    """Block-diagonal Gaussian: delta_k = 0, kappa_k = max_i f_t(lambda_{k,i}); Delta = 0, S = 0."""
    sched = pj.cosine(T)
    stats = patch_stats(training_data(), patch_size=P)
    gaussian = gaussian_denoiser_patches(sched, unpatchify(stats.mean, SHAPE, P), stats.covariance, P)
    analysis = analyze_chain(gaussian, sched, noise(1), grid=GRID, patch_size=P, baseline=stats)

    eigenvalues = np.asarray(stats.eigenvalues)  # (M, n_k)
    f = expansion_factors(cosine_alpha_bar(T), GRID, eigenvalues.reshape(-1))[::-1].reshape(-1, M, NK)  # chain order
    np.testing.assert_array_equal(analysis.t, GRID[1:][::-1])
    # off-diagonal blocks of a block-diagonal Jacobian are exactly zero
    np.testing.assert_array_equal(np.asarray(analysis.delta_cross_per_patch), 0.0)
    # norms of symmetric blocks U diag(f) U^T: float64 round-off of a 48x48 SVD and eigh, and of
    # a_t I + b_t J_eps (entries ~ 1/sigma_t) against the closed form f_t (seen: 6e-12 at t = T = 1000)
    np.testing.assert_allclose(analysis.kappa_diag_per_patch, f.max(axis=-1), rtol=1e-10)
    np.testing.assert_allclose(analysis.kappa_diag, f.max(axis=(-2, -1)), rtol=1e-10)
    np.testing.assert_allclose(analysis.margin_per_patch, 1 - f.max(axis=-1), rtol=1e-9, atol=1e-10)
    np.testing.assert_array_equal(analysis.violations, np.sum(f.max(axis=-1) > 1, axis=-1))
    assert np.asarray(analysis.violations).max() > 0 and np.asarray(analysis.violations).min() < M  # both kinds occur
    # the leading eigenvalue gives the largest factor (f_t increasing)
    np.testing.assert_allclose(analysis.expansion_along_leading, f.max(axis=-1), rtol=1e-10)
    # the denoiser is the baseline: no deviation, no suppression (round-off of two eigendecompositions
    # of the same covariances, NumPy's for the denoiser and XLA's for the traced baseline; S = O(1) otherwise)
    np.testing.assert_allclose(analysis.deviation_norm, 0.0, atol=1e-10)
    np.testing.assert_allclose(analysis.suppression, 0.0, atol=1e-10)
    logsnr = np.log(cosine_alpha_bar(T)[analysis.t] / (1 - cosine_alpha_bar(T)[analysis.t]))
    np.testing.assert_allclose(analysis.logsnr, logsnr, rtol=1e-9)
    # predicted = measured exponents for the Gaussian (S = 0 and kappa_k = f_t(lambda_k))
    predicted, measured = per_patch_exponents(analysis)
    np.testing.assert_allclose(predicted, np.mean(np.log(f.max(axis=-1)), axis=0), rtol=1e-9)
    np.testing.assert_allclose(measured, predicted, rtol=1e-9)


def test_mlp_blocks_equal_a_direct_jacobian(x64):
    """Per-step block norms equal jacfwd of our own step map + NumPy SVD along the same trajectory."""
    sched = pj.cosine(T)
    eps_fn = mlp_eps()
    x_T = noise(2)
    analysis = analyze_chain(eps_fn, sched, x_T, grid=GRID, patch_size=P)
    assert analysis.method == "exact"
    _, trajectory = pj.ddim_chain(eps_fn, sched, x_T, grid=GRID, return_trajectory=True)
    ab = cosine_alpha_bar(T)
    for i, (t, s) in enumerate(zip(GRID[1:][::-1], GRID[:-1][::-1], strict=True)):
        a = np.sqrt(ab[s] / ab[t])
        b = np.sqrt(1 - ab[s]) - a * np.sqrt(1 - ab[t])
        x = trajectory[i]
        J = jax.jacfwd(lambda y, a=a, b=b, t=t: a * y + b * tanh_mlp(eps_fn.args[0], y.reshape(SHAPE), t).reshape(-1))(
            x.reshape(-1)
        )
        norms = block_norms_numpy(J)
        kappa = np.diagonal(norms)
        delta = norms.sum(axis=1) - kappa
        # float64 round-off of two SVD routines on 48x48 blocks (and of b_t's two formulas)
        np.testing.assert_allclose(analysis.kappa_diag_per_patch[i], kappa, rtol=1e-10)
        np.testing.assert_allclose(analysis.delta_cross_per_patch[i], delta, rtol=1e-10)
        np.testing.assert_allclose(analysis.kappa_diag_mean[i], kappa.mean(), rtol=1e-10)
        np.testing.assert_allclose(analysis.delta_cross[i], delta.max(), rtol=1e-10)
        np.testing.assert_allclose(analysis.margin_mean[i], np.mean(1 - kappa - delta), rtol=1e-10)
        assert analysis.violations[i] == np.sum(1 - kappa - delta < 0)
    assert np.all(np.asarray(analysis.delta_cross) > 1e-3)  # the MLP couples the patches


def test_matrix_free_equals_exact(x64):
    """J = a I + b (rank <= 8): every block's B^T B has <= 17 distinct eigenvalues, so 32 Krylov
    steps are exact to round-off (1e-9 relative)."""
    sched = pj.cosine(T)
    eps_fn, x_T = mlp_eps(), noise(3)
    exact = analyze_chain(eps_fn, sched, x_T, grid=GRID, patch_size=P, method="exact")
    free = analyze_chain(eps_fn, sched, x_T, grid=GRID, patch_size=P, method="matrix_free", key=jax.random.PRNGKey(5))
    assert free.method == "matrix_free"
    np.testing.assert_allclose(free.kappa_diag_per_patch, exact.kappa_diag_per_patch, rtol=1e-9)
    np.testing.assert_allclose(free.delta_cross_per_patch, exact.delta_cross_per_patch, rtol=1e-9)
    auto = analyze_chain(eps_fn, sched, x_T, grid=GRID, patch_size=P, exact_max_n=100)  # n = 192 > 100
    assert auto.method == "matrix_free"


@pytest.mark.slow
def test_batch_equals_single_trajectories(x64):
    sched = pj.cosine(T)
    eps_fn, x_T = mlp_eps(), noise(4, batch=2)
    stats = patch_stats(training_data(), patch_size=P)
    batch = analyze_chain(eps_fn, sched, x_T, grid=GRID, patch_size=P, baseline=stats)
    assert batch.batched and batch.kappa_diag_per_patch.shape == (2, 4, M) and batch.t.shape == (4,)
    for s in range(2):
        one = analyze_chain(eps_fn, sched, x_T[s], grid=GRID, patch_size=P, baseline=stats)
        for field in ("kappa_diag_per_patch", "delta_cross_per_patch", "violations", "suppression", "deviation_norm"):
            np.testing.assert_allclose(
                getattr(batch, field)[s], getattr(one, field), rtol=1e-10, atol=1e-14, err_msg=field
            )
    # sharded over a (one-device) mesh: the same numbers
    sharded = analyze_chain(eps_fn, sched, x_T, grid=GRID, patch_size=P, mesh=pj.batch_mesh())
    np.testing.assert_allclose(sharded.kappa_diag_per_patch, batch.kappa_diag_per_patch, rtol=1e-10)


def test_suppression_and_deviation_match_direct_jvps(x64):
    """S_{k,t} = |b_t| <v_k, [J Delta]_kk v_k> and ||Delta|| recomputed from the trajectory."""
    sched = pj.cosine(T)
    eps_fn, x_T = mlp_eps(), noise(5)
    stats = patch_stats(training_data(), patch_size=P)
    analysis = analyze_chain(eps_fn, sched, x_T, grid=GRID, patch_size=P, baseline=stats)
    gaussian = gaussian_denoiser_patches(sched, unpatchify(stats.mean, SHAPE, P), stats.covariance, P)
    _, trajectory = pj.ddim_chain(eps_fn, sched, x_T, grid=GRID, return_trajectory=True)
    ab = cosine_alpha_bar(T)
    v = np.asarray(stats.leading_eigenvector)
    for i, (t, s) in enumerate(zip(GRID[1:][::-1], GRID[:-1][::-1], strict=True)):
        a = np.sqrt(ab[s] / ab[t])
        b = np.sqrt(1 - ab[s]) - a * np.sqrt(1 - ab[t])
        x = trajectory[i]

        def delta(y, t=t):
            return (eps_fn(y.reshape(SHAPE), t) - gaussian(y.reshape(SHAPE), t)).reshape(-1)

        J = np.asarray(jax.jacfwd(delta)(x.reshape(-1)))
        order = patches_numpy(np.arange(J.shape[0]).reshape(SHAPE))
        expected = [abs(b) * v[k] @ J[np.ix_(order[k], order[k])] @ v[k] for k in range(M)]
        np.testing.assert_allclose(analysis.suppression[i], expected, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(analysis.deviation_norm[i], np.linalg.norm(delta(x)), rtol=1e-12)


@pytest.mark.slow
def test_float32_agrees_with_float64():
    """Same MLP and noise in both precisions: block norms within float32 round-off (rtol 1e-4)."""
    with jax.enable_x64(True):
        sched64 = pj.cosine(T)
        result64 = analyze_chain(mlp_eps(dtype=np.float64), sched64, noise(6), grid=GRID, patch_size=P)
        kappa64, delta64 = np.asarray(result64.kappa_diag_per_patch), np.asarray(result64.delta_cross_per_patch)
    with jax.enable_x64(False):
        result32 = analyze_chain(
            mlp_eps(dtype=np.float32), pj.cosine(T), noise(6, dtype=np.float32), grid=GRID, patch_size=P
        )
        assert result32.kappa_diag_per_patch.dtype == jnp.float32
        np.testing.assert_allclose(result32.kappa_diag_per_patch, kappa64, rtol=1e-4)
        np.testing.assert_allclose(result32.delta_cross_per_patch, delta64, rtol=1e-4)


def test_empirical_attention_entropy(x64):
    """pj.empirical_attention's weights are adapted to one layer "data" whose entropy is theirs."""
    sched = pj.cosine(T)
    data = training_data()[:16]
    eps_fn, x_T = mlp_eps(), noise(7)
    attention = empirical_attention(sched, data)
    analysis = analyze_chain(eps_fn, sched, x_T, grid=GRID, patch_size=P, attention_fn=attention)
    assert set(analysis.attention_entropy) == {"data"} and analysis.attention_keys == {"data": 16}
    _, trajectory = pj.ddim_chain(eps_fn, sched, x_T, grid=GRID, return_trajectory=True)
    expected = [float(attention(trajectory[i], t).entropy) for i, t in enumerate(analysis.t)]
    np.testing.assert_allclose(analysis.attention_entropy["data"], expected, rtol=1e-10, atol=1e-12)


def test_compiles_once_per_architecture(x64):
    """A second parameter set of the same MLP lowers and compiles nothing new."""
    sched = pj.cosine(T)
    stats = patch_stats(training_data(), patch_size=P)
    x_T = noise(8, batch=2)
    first = analyze_chain(mlp_eps(0), sched, x_T, grid=GRID, patch_size=P, baseline=stats)
    with counted_compilations() as events:
        second = analyze_chain(mlp_eps(1), sched, x_T, grid=GRID, patch_size=P, baseline=stats)
    assert events == [], f"{len(events)} lowering/compilation event(s) for a second parameter set"
    assert not np.allclose(first.kappa_diag_per_patch, second.kappa_diag_per_patch)


@pytest.mark.slow
def test_network_attention_and_compile_once(x64):
    """A tiny DiT: module_attention_fn's entropies equal a direct apply; new params compile nothing."""
    sched = pj.cosine(T)
    module, _ = make_model("dit", image_shape=SHAPE, patch_size=P, hidden=16, depth=1, num_heads=2, mlp_ratio=2)
    params = [init_params(module, jax.random.PRNGKey(seed)) for seed in (0, 1)]
    x_T = noise(9, dtype=np.float32)
    analysis = analyze_chain(as_eps_fn(module, params[0]), sched, x_T, grid=GRID, patch_size=P,
                             attention_fn=module_attention_fn(module, params[0]))  # fmt: skip
    _, trajectory = pj.ddim_chain(as_eps_fn(module, params[0]), sched, x_T, grid=GRID, return_trajectory=True)
    for i, t in enumerate(analysis.t):
        _, weights = module.apply({"params": params[0]}, trajectory[i][None], jnp.array([t]), return_attention=True)
        for name, value in attention_entropy(weights).items():
            np.testing.assert_allclose(analysis.attention_entropy[name][i], value, rtol=1e-5)
    with counted_compilations() as events:
        analyze_chain(as_eps_fn(module, params[1]), sched, x_T, grid=GRID, patch_size=P,
                      attention_fn=module_attention_fn(module, params[1]))  # fmt: skip
    assert events == []


# ----------------------------------------------------------------------------- bad input


def test_nonfinite_chain_is_located(x64):
    blow_up = jax.tree_util.Partial(lambda scale, x, t: scale * jnp.exp(x * 1e3), jnp.asarray(1e300))
    with pytest.raises(NonFiniteError) as info:
        analyze_chain(blow_up, pj.cosine(T), noise(10), grid=GRID, patch_size=P)
    assert info.value.argument in ("eps_fn", "sched")


@pytest.mark.parametrize("method", ["exact", "matrix_free"])
def test_nonfinite_jacobian_of_a_finite_chain_is_named(x64, method):
    """eps = 0.3 x + sqrt(|x - x|) is finite, its Jacobian NaN (sqrt' = inf at 0, times 0): once gave NaN norms."""
    eps = jax.tree_util.Partial(lambda scale, x, t: scale * x + jnp.sqrt(jnp.abs(x - x)), jnp.asarray(0.3))
    x_T = noise(11, batch=2)
    with pytest.raises(NonFiniteError, match=r"^eps_fn: trajectory 0 of 2: .*Jacobian of step 1 of 4 \(t = 800"):
        analyze_chain(eps, pj.cosine(T), x_T, grid=GRID, patch_size=P, method=method)
    unchecked = analyze_chain(eps, pj.cosine(T), x_T, grid=GRID, patch_size=P, method=method, check_finite=False)
    assert np.isnan(np.asarray(unchecked.kappa_diag_per_patch)).any()
    assert np.all(np.isfinite(np.asarray(analyze_chain(mlp_eps(), pj.cosine(T), x_T, grid=GRID, patch_size=P,
                                                        method=method).kappa_diag_per_patch)))  # fmt: skip


@pytest.mark.parametrize(
    "change, argument",
    [
        (dict(patch_size=3), "patch_size"),
        (dict(attention_fn=lambda x, t: {}), "attention_fn"),
        (dict(attention_fn=lambda x, t: {"layer": jnp.ones(3)}), "attention_fn"),
        (dict(x_T=jnp.zeros((8, 24))), "x_T"),
        (dict(x_T=jnp.zeros((1, 1, *SHAPE))), "x_T"),
        (dict(x_T=jnp.zeros(SHAPE, jnp.int32)), "x_T"),
        (dict(method="svd"), "method"),
        (dict(krylov_iters=0), "krylov_iters"),
        (dict(baseline="stats"), "baseline"),
        (dict(mesh="mesh"), "mesh"),
    ],
)
def test_bad_input_names_the_argument(change, argument):
    kwargs = dict(x_T=noise(0, dtype=np.float32), grid=GRID, patch_size=P)
    kwargs.update(change)
    x_T = kwargs.pop("x_T")
    with pytest.raises(ArgumentError) as info:
        analyze_chain(mlp_eps(dtype=np.float32), pj.cosine(T), x_T, **kwargs)
    assert info.value.argument == argument


def test_baseline_of_another_image_shape():
    other = patch_stats(
        jnp.asarray(np.random.default_rng(0).standard_normal((8, 16, 16, 3)), jnp.float32), patch_size=P
    )
    with pytest.raises(ArgumentError, match="16") as info:
        analyze_chain(
            mlp_eps(dtype=np.float32), pj.cosine(T), noise(0, dtype=np.float32), grid=GRID, patch_size=P, baseline=other
        )
    assert info.value.argument == "baseline"


def test_exponents_need_a_baseline():
    analysis = analyze_chain(
        mlp_eps(dtype=np.float32), pj.cosine(T), noise(0, dtype=np.float32), grid=GRID, patch_size=P
    )
    assert analysis.suppression is None and analysis.attention_entropy is None and analysis.deviation_norm is None
    with pytest.raises(ArgumentError) as info:
        per_patch_exponents(analysis)
    assert info.value.argument == "analysis"


@pytest.mark.slow
def test_chunks_are_bit_identical_to_one_call(capsys):
    """``chunk`` trajectories per compiled call (a smaller last chunk included) give the one-call
    results bit for bit on a CPU, where the trajectories run one at a time in any case; the
    progress display (stderr) states the cost first and extrapolates the first chunk's time."""
    sched = pj.cosine(T)
    eps_fn, x_T = mlp_eps(dtype=np.float32), noise(9, batch=3, dtype=np.float32)
    whole = analyze_chain(eps_fn, sched, x_T, grid=GRID, patch_size=P)
    chunked = analyze_chain(eps_fn, sched, x_T, grid=GRID, patch_size=P, chunk=2, progress=True)  # 2, then 1
    for field, value in whole._asdict().items():
        if isinstance(value, jax.Array | np.ndarray):
            np.testing.assert_array_equal(np.asarray(getattr(chunked, field)), np.asarray(value), err_msg=field)
    err = capsys.readouterr().err
    assert "analyze: 3 trajectories, 4 DDIM" in err
    assert "exact Jacobians (192 JVP columns per step); 2 chunks of 2" in err
    assert "analyze: the first 2 of 3 trajectories took " in err and "s for the other 1" in err
    with pytest.raises(ArgumentError, match=r"^chunk: expected an integer >= 1"):
        analyze_chain(eps_fn, sched, x_T, grid=GRID, patch_size=P, chunk=0)


def test_ctrl_c_stops_between_chunks(capsys, default_sigint):
    """Ctrl-C was ignored until the whole compiled analysis ended. Now the trajectories run in chunks and
    Ctrl-C (SIGINT, here sent during the first chunk) stops the analysis after the running chunk."""
    import signal

    sched = pj.cosine(T)
    eps_fn, x_T = mlp_eps(dtype=np.float32), noise(10, batch=3, dtype=np.float32)
    done = []

    def press_ctrl_c(finished, total):
        done.append(finished)
        if len(done) == 1:
            # raise_signal, not os.kill(getpid()): a process-directed signal may land on one of XLA's
            # threads, and on a loaded machine the main thread saw it only after the last chunk (a
            # flaky CI failure); a terminal's Ctrl-C is stopped at whichever safe point follows it
            signal.raise_signal(signal.SIGINT)

    with pytest.raises(KeyboardInterrupt, match=r"^after 1 of 3 trajectories$"):
        analyze_chain(eps_fn, sched, x_T, grid=GRID, patch_size=P, chunk=1, on_chunk=press_ctrl_c)
    assert done == [1]  # no second chunk was started
    assert "stopping after the running chunk" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is restored

"""Adaptive re-orthonormalisation (``qr_every="auto"``, the default) and CholeskyQR2.

The chain: a linear denoiser whose DDIM step is ``J_t = a_t I + A`` with ``A = U diag(mu) U^T``
(``U`` a random rotation, so the tangent block is not aligned with the coordinate axes), built as
``eps(x, t) = A x / b_t``. The steps commute, so the chain Jacobian is
``U diag(prod_t (a_t + mu_i)) U^T`` and the spectrum has the closed form
``Lambda_i = (1/N) sum_t log |a_t + mu_i|``, with ``a_t = sqrt(ab_s / ab_t)`` taken here from the
reference cosine schedule (tests/reference.py). ``mu_i = exp(-8 i / (n - 1)) - 1``: per step the
directions separate by up to ~5 nats in the middle of the chain (``a_t`` is far above 1 at its
start), so a block of 10 steps spans ~50 nats, more than float64's 36: a fixed ``qr_every=10``
loses every digit of the weakest directions, while a QR per step loses none.

Why not a Gaussian chain here: with the exact Gaussian denoiser the small-variance directions
contract almost entirely in the last step (``sigma_1 -> sqrt(lambda)``) and the others by at most
``log(1/sqrt(alpha_bar_T))`` over the whole chain, so no 10-step block of a 1000-step chain spans
more than ~15 nats, even for variances from 1e-16 to 1e4 (checked: fixed blocks of 1, 5, 10 and 50
steps give the same error there, set by the Jacobian's own rounding).
"""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pifs_jax as pj
from pifs_jax.lyapunov import chain_lyapunov_spectrum
from pifs_jax.orthogonalization import (
    AdaptiveBlocks,
    cholesky_qr2,
    digit_loss_budget,
    gram_probe,
    householder_qr,
    positive_qr,
    positive_r,
    preferred_qr_method,
    qr_2x2,
)
from pifs_jax.tangent_qr import qr_pass
from reference import cosine_alpha_bar, random_orthogonal

N_DIM = 8
N_STEPS = 1000
GRID = pj.uniform_grid(1000, N_STEPS)
MU = np.exp(-8.0 * np.arange(N_DIM) / (N_DIM - 1)) - 1.0


def _linear_chain(dtype):
    """``(eps_fn, sched, x_T, closed form)`` of the commuting chain ``J_t = a_t I + A``."""
    sched = pj.cosine(1000)
    steps = pj.chain_steps(sched, jnp.asarray(GRID))
    b_of_t = np.ones(1001)
    b_of_t[np.asarray(steps.t)] = np.asarray(steps.b, np.float64)
    basis = random_orthogonal(N_DIM, seed=3)
    a_matrix = jnp.asarray(basis @ np.diag(MU) @ basis.T)
    inverse_b = jnp.asarray(1.0 / b_of_t)

    def eps_fn(x, t):
        return ((a_matrix.astype(x.dtype) @ x.reshape(-1)) * inverse_b[t].astype(x.dtype)).reshape(x.shape)

    alpha_bar = cosine_alpha_bar(1000)
    grid = np.asarray(GRID)
    a = np.sqrt(alpha_bar[grid[:-1]] / alpha_bar[grid[1:]])  # a_t of each step t = grid[i+1] -> s = grid[i]
    closed = np.sort(np.mean(np.log(np.abs(a[:, None] + MU[None, :])), axis=0))[::-1]
    x_T = jnp.asarray(np.random.default_rng(1).normal(size=N_DIM), dtype)
    return eps_fn, sched, x_T, closed


@pytest.fixture(scope="module")
def hard_chain64():
    with jax.enable_x64(True):
        eps_fn, sched, x_T, closed = _linear_chain(jnp.float64)
        auto = chain_lyapunov_spectrum(eps_fn, sched, x_T, grid=GRID, return_history=True)
        fixed = chain_lyapunov_spectrum(eps_fn, sched, x_T, grid=GRID, qr_every=10)
        yield dict(eps_fn=eps_fn, sched=sched, x_T=x_T, closed=closed, auto=auto, fixed=fixed)


def test_default_is_auto():
    assert pj.SpectrumOptions().qr_every == "auto"
    assert "options" in inspect.signature(chain_lyapunov_spectrum).parameters


def test_default_is_exact_where_ten_step_blocks_lose_digits(x64, hard_chain64):
    """Closed form to 1e-12 per step by default; ``qr_every=10`` is off by more than 1e-8 (observed ~8e-3).

    1e-12: each block loses at most ``B = log(1/eps)/4`` = 9 nats, i.e. a relative error of
    ``eps e^9 = 2e-12`` on a block's ``log R_jj``, then averaged over 1000 steps (observed ~1.4e-13).
    """
    closed = hard_chain64["closed"]
    auto, fixed = hard_chain64["auto"], hard_chain64["fixed"]
    assert np.max(np.abs(np.asarray(fixed.exponents) - closed)) > 1e-8
    np.testing.assert_allclose(auto.exponents, closed, rtol=0, atol=1e-12)
    # far fewer QRs than steps: the history is finite exactly where the block was factored
    factored = np.isfinite(np.asarray(auto.history)[:, 0])
    assert factored[0] and factored[-1]  # the first block is one step; the last step is always factored
    assert 20 < factored.sum() < N_STEPS // 2


def test_leading_k_default_matches_the_closed_form(x64, hard_chain64):
    lead = chain_lyapunov_spectrum(
        hard_chain64["eps_fn"], hard_chain64["sched"], hard_chain64["x_T"], grid=GRID, k=3, oversample=2
    )
    np.testing.assert_allclose(lead.exponents, hard_chain64["closed"][:3], rtol=0, atol=1e-12)


def test_float32_auto_agrees_with_a_qr_per_step(x32):
    """float32: the default agrees with one QR per step (same Jacobians) to 1e-5; 10-step blocks do not.

    The closed form is not the reference in float32: forming ``a_t + mu`` for ``mu ~ -1`` costs
    the weakest factor ``eps a_t / e^-8 ~ 4e-4`` relative per step, the same for every method.
    1e-5: a block loses at most 4 nats, ``eps e^4 = 7e-6`` relative per block.
    """
    eps_fn, sched, x_T, _ = _linear_chain(jnp.float32)
    every = np.asarray(chain_lyapunov_spectrum(eps_fn, sched, x_T, grid=GRID, qr_every=1).exponents)
    auto = np.asarray(chain_lyapunov_spectrum(eps_fn, sched, x_T, grid=GRID).exponents)
    fixed = np.asarray(chain_lyapunov_spectrum(eps_fn, sched, x_T, grid=GRID, qr_every=10).exponents)
    assert auto.dtype == np.float32
    np.testing.assert_allclose(auto, every, rtol=0, atol=1e-5)
    assert np.max(np.abs(fixed - every)) > 1e-3


def test_digit_loss_budget_is_a_quarter_of_the_digits():
    assert digit_loss_budget(jnp.float64) == pytest.approx(np.log(2.0**52) / 4)
    assert digit_loss_budget(jnp.float32) == pytest.approx(np.log(2.0**23) / 4)


def test_blocks_grow_on_an_aligned_chain_and_measure_the_loss(x64):
    """Diagonal steps (no coupling, ``c_j = 0``, no loss): one-step first block, then each block 4x the last.

    After a QR, ``rates`` are ``log R_jj / m``: here exactly the per-step log factors.
    """
    factors = jnp.asarray(np.exp(-0.1 * np.arange(4)))
    budget = digit_loss_budget(jnp.float64)
    blocks = AdaptiveBlocks.start(4, jnp.float64)
    y = jnp.eye(4, dtype=jnp.float64)
    lengths = []
    for _ in range(22):
        y = factors[:, None] * y
        due, blocks = blocks.observe(jnp.log(jnp.linalg.norm(y, axis=0)), budget)
        if due:
            lengths.append(int(blocks.since) + 1)
            y, r = positive_qr(y)
            blocks = blocks.after_qr(r, budget)
            np.testing.assert_allclose(blocks.rates, np.log(np.asarray(factors)), rtol=1e-12)
        else:
            blocks = blocks.postponed()
    assert lengths == [1, 4, 16]


def coupled_chain():
    """``(J, Y_0)``: a 6x6 step with ``c ~ 1`` coupling and 5 nats of spread per step, a random orthonormal start."""
    basis = random_orthogonal(6, seed=1)
    jac = jnp.asarray(basis @ np.diag(np.exp(-5.0 * np.arange(6) / 5)) @ basis.T @ random_orthogonal(6, seed=2))
    return jac, jnp.asarray(np.linalg.qr(np.random.default_rng(0).normal(size=(6, 6)))[0])


def test_a_coupled_block_is_factored_early(x64):
    """A block with ``c ~ 1`` coupling and 5 nats of spread per step must not run past ``B`` = 9 nats of loss."""
    jac, y = coupled_chain()
    budget = digit_loss_budget(jnp.float64)
    blocks = AdaptiveBlocks.start(6, jnp.float64)
    worst = 0.0
    for _ in range(20):
        y = jac @ y
        norms = jnp.linalg.norm(y, axis=0)
        due, blocks = blocks.observe(jnp.log(norms), budget)
        if due:
            y, r = householder_qr(y)
            worst = max(worst, float(jnp.max(jnp.log(norms) - jnp.log(jnp.diagonal(r)))))
            blocks = blocks.after_qr(r, budget)
        else:
            blocks = blocks.postponed()
    assert worst <= budget + 5.0  # at most one step past the budget, from the unseen first coupling


# ----------------------------------------------------------------------------- CholeskyQR2


def _graded_matrix(dtype, n=96, p=64, condition=1e3, seed=0):
    rng = np.random.default_rng(seed)
    u = np.linalg.qr(rng.normal(size=(n, p)))[0]
    v = np.linalg.qr(rng.normal(size=(p, p)))[0]
    return jnp.asarray(u @ np.diag(np.logspace(0, -np.log10(condition), p)) @ v.T * 7.0, dtype)


@pytest.mark.parametrize("dtype, tol", [(jnp.float64, 1e-13), (jnp.float32, 2e-5)])
def test_cholesky_qr2_is_a_qr_factorisation(dtype, tol):
    """``Q^T Q = I`` and ``Q R = Y`` to ``O(eps)``; ``R`` equals Householder's (unique with ``diag R > 0``).

    ``kappa = 1e3`` is below ``eps^(-1/2)`` in both dtypes (float32: 2900), where CholeskyQR2 is
    stable. ``R`` agrees to ``eps kappa`` relative (the perturbation bound of the R factor).
    """
    with jax.enable_x64(dtype == jnp.float64):
        y = _graded_matrix(dtype)
        q, r = cholesky_qr2(y)
        assert q.dtype == dtype and r.dtype == dtype
        eps = float(jnp.finfo(dtype).eps)
        np.testing.assert_allclose(q.T @ q, np.eye(64), rtol=0, atol=tol)
        np.testing.assert_allclose(q @ r, y, rtol=0, atol=tol * 7.0)
        assert np.all(np.tril(np.asarray(r), -1) == 0) and np.all(np.diagonal(np.asarray(r)) > 0)
        _, r_householder = householder_qr(y)
        np.testing.assert_allclose(r, r_householder, rtol=0, atol=100 * eps * 1e3 * 7.0)


def test_cholesky_qr2_falls_back_to_householder_when_ill_conditioned(x64):
    """``kappa = 1e12 > eps^(-1/2)``: the Gram matrix loses the small directions, Householder is used."""
    y = _graded_matrix(jnp.float64, condition=1e12)
    q, r = cholesky_qr2(y)
    _q_h, r_h = householder_qr(y)
    np.testing.assert_array_equal(np.asarray(r), np.asarray(r_h))
    np.testing.assert_allclose(q.T @ q, np.eye(64), rtol=0, atol=1e-13)


@pytest.mark.parametrize("method", ["householder", "cholesky_qr2"])
def test_positive_r_is_the_r_of_the_positive_qr(x64, method):
    """``R`` alone (``geqrf`` without ``Q`` for Householder) equals :func:`positive_qr`'s ``R`` to rounding.

    Both are the unique ``R`` with a positive diagonal of the same ``Y`` (kappa 1e3): 1e-12 relative to
    ``|Y| = 7`` allows ``eps kappa`` with a factor 50 of slack for the two LAPACK paths. A ``2 x 2``
    block takes the closed form, exactly :func:`qr_2x2`'s ``R``.
    """
    y = _graded_matrix(jnp.float64)
    r = positive_r(y, method)
    assert np.all(np.tril(np.asarray(r), -1) == 0) and np.all(np.diagonal(np.asarray(r)) > 0)
    np.testing.assert_allclose(r, positive_qr(y, method)[1], rtol=0, atol=1e-12 * 7.0)
    planar = jnp.asarray([[0.3, -2.0], [-1.5, 0.7]])
    np.testing.assert_array_equal(np.asarray(positive_r(planar, method)), np.asarray(qr_2x2(planar)[1]))
    with pytest.raises(ValueError, match=r"^method:"):
        positive_r(y, method="gram-schmidt")


@pytest.mark.parametrize("qr_every", [1, 3, "auto"])
def test_a_pass_without_its_final_basis_accumulates_the_same_product(x64, qr_every):
    """``final_basis=False`` (the last step factored as ``R`` alone) leaves ``(l, W)`` and the history unchanged.

    The same 6-dimensional coupled chain pushed 7 steps with and without the final basis: the
    accumulated product and the per-step ``log diag R`` agree to 1e-12 (the two factorisations of
    the same last block differ only by rounding); the returned block is then the last, unfactored
    ``J Q`` rather than an orthonormal basis.
    """
    jac, q0 = coupled_chain()

    def step(x, _):
        return jac @ x

    x0 = jnp.ones((6,), jnp.float64)
    runs = [
        qr_pass(step, x0, q0, None, length=7, full=True, graded=True, qr_every=qr_every, final_basis=final)
        for final in (True, False)
    ]
    with_basis, without = runs
    np.testing.assert_allclose(without.log_diag, with_basis.log_diag, rtol=0, atol=1e-12)
    np.testing.assert_allclose(without.w, with_basis.w, rtol=0, atol=1e-12)
    np.testing.assert_allclose(without.log_r, with_basis.log_r, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(np.asarray(without.due), np.asarray(with_basis.due))
    np.testing.assert_allclose(with_basis.q.T @ with_basis.q, np.eye(6), rtol=0, atol=1e-13)
    assert not np.allclose(np.asarray(without.q).T @ np.asarray(without.q), np.eye(6), atol=1e-3)


def test_preferred_method_on_cpu_is_householder():
    assert preferred_qr_method("cpu") == "householder"
    with pytest.raises(ValueError, match=r"^method:"):
        positive_qr(jnp.eye(3), method="gram-schmidt")


def test_qr_every_accepts_auto_and_names_bad_values(x64, hard_chain64):
    with pytest.raises(ValueError, match=r"^qr_every:"):
        chain_lyapunov_spectrum(
            hard_chain64["eps_fn"], hard_chain64["sched"], hard_chain64["x_T"], grid=GRID, qr_every="often"
        )
    with pytest.raises(ValueError, match=r"^qr_every:"):
        chain_lyapunov_spectrum(
            hard_chain64["eps_fn"], hard_chain64["sched"], hard_chain64["x_T"], grid=GRID, qr_every=0
        )


# ----------------------------------------------------------------------------- the Gram probe


@pytest.mark.parametrize("dtype, condition, tol", [(jnp.float64, 1e3, 5e-11), (jnp.float32, 50.0, 1e-4)])
def test_gram_probe_measures_householder_r(dtype, condition, tol):
    """``log R_jj``, the loss ``log(|y_j| / R_jj)`` and ``log c_j`` equal Householder's on a well-conditioned block.

    Tolerance (nats): the scaled Gram matrix's rounding, ``n eps`` per entry, moves
    ``L_jj^2 = R_jj^2 / |y_j|^2`` by about that much, so ``log R_jj`` by up to
    ``n eps kappa^2 / 2`` (float64, ``kappa = 1e3``: 1e-8; float32, ``kappa = 50``, the probe's
    regime -- largest loss 2 nats, below the 4-nat budget: 1.4e-2). Observed: 3.4e-12 and 9.3e-6;
    the tolerances are about 10x those.
    """
    with jax.enable_x64(dtype == jnp.float64):
        y = _graded_matrix(dtype, condition=condition)
        probe = gram_probe(y)
        _, r = householder_qr(y)
        log_r = np.log(np.diagonal(np.asarray(r, np.float64)))
        loss = np.log(np.linalg.norm(np.asarray(y, np.float64), axis=0)) - log_r
        assert bool(probe.ok)
        np.testing.assert_allclose(probe.log_r, log_r, rtol=0, atol=tol)
        np.testing.assert_allclose(probe.loss, loss, rtol=0, atol=tol)
        # couplings: c_j^2 = expm1(2 loss_j), where resolved (above n eps)
        resolved = np.asarray(probe.resolved)
        assert resolved.sum() > 32
        log_c = 0.5 * np.log(np.expm1(2 * loss))
        np.testing.assert_allclose(np.asarray(probe.log_coupling)[resolved], log_c[resolved], rtol=0, atol=10 * tol)


def test_gram_probe_reports_the_resolution_for_an_orthogonal_block(x64):
    """Orthonormal columns: no coupling, zero loss; ``c_j`` is reported at the resolution ``sqrt(n eps)``."""
    q = jnp.asarray(random_orthogonal(12, seed=4))[:, :5] * jnp.arange(1.0, 6.0)
    probe = gram_probe(q)
    np.testing.assert_allclose(probe.loss, 0.0, atol=1e-14)
    np.testing.assert_allclose(probe.log_r, np.log(np.arange(1.0, 6.0)), rtol=0, atol=1e-14)
    assert not np.any(np.asarray(probe.resolved))
    np.testing.assert_allclose(probe.log_coupling, 0.5 * np.log(12 * np.finfo(np.float64).eps), rtol=1e-12)


def test_a_failed_probe_calls_for_a_qr(x64):
    """A rank-deficient block (or a non-finite one): Cholesky fails, ``ok`` is False, the loss infinite, a QR due."""
    y = jnp.asarray(np.random.default_rng(0).normal(size=(10, 4)))
    budget = digit_loss_budget(jnp.float64)
    blocks = AdaptiveBlocks.start(4, jnp.float64).after_qr(jnp.eye(4), budget)
    for bad in (y.at[:, 3].set(y[:, 0]), y.at[0, 0].set(jnp.nan)):
        probe = gram_probe(bad)
        assert not bool(probe.ok) and np.all(np.isinf(np.asarray(probe.loss)))
        due, _ = blocks.probed(probe, budget)
        assert bool(due)
    due, _ = blocks.probed(gram_probe(y), budget)  # the same block without the defect: no QR
    assert not bool(due)


def test_probes_replace_the_model_qrs_on_an_aligned_chain(x64):
    """Diagonal steps: after the one-step first block, probes (at 4 and 16 steps) find no loss: one block to the end.

    Same chain as ``test_blocks_grow_on_an_aligned_chain_and_measure_the_loss``, where every
    model-called QR is taken (blocks of 1, 4, 16): through :meth:`AdaptiveBlocks.decide` only the
    first step and the last (step 22) are factored.
    """
    factors = jnp.asarray(np.exp(-0.1 * np.arange(4)))
    budget = digit_loss_budget(jnp.float64)
    blocks = AdaptiveBlocks.start(4, jnp.float64)
    y = jnp.eye(4, dtype=jnp.float64)
    factored, probed = [], []

    def factor(state, y):
        q, r = positive_qr(y)
        return q, state.after_qr(r, budget)

    def carry_on(state, y):
        return y, state.postponed()

    for step in range(1, 23):
        y = factors[:, None] * y
        log_norms = jnp.log(jnp.linalg.norm(y, axis=0))
        check, _ = blocks.observe(log_norms, budget)
        if bool(check & blocks.probing):
            probed.append(step)
        due, (y, blocks) = blocks.decide(log_norms, budget, jnp.asarray(step == 22), factor, carry_on, y)
        if due:
            factored.append(step)
    assert factored == [1, 22]
    assert probed == [5, 17]
    np.testing.assert_allclose(blocks.rates, np.log(np.asarray(factors)), rtol=1e-12)


def test_probes_keep_a_coupled_block_within_budget(x64):
    """Through :meth:`AdaptiveBlocks.decide`: a block with ``c ~ 1`` and 5 nats of spread per step stays within ``B``.

    As ``test_a_coupled_block_is_factored_early``, whose bound (one step past the budget, from
    the unseen first coupling) this keeps.
    """
    jac, y = coupled_chain()
    budget = digit_loss_budget(jnp.float64)
    blocks = AdaptiveBlocks.start(6, jnp.float64)
    worst, qrs = 0.0, 0

    def factor(state, y):
        q, r = householder_qr(y)
        loss = jnp.max(jnp.log(jnp.linalg.norm(y, axis=0)) - jnp.log(jnp.diagonal(r)))
        return q, state.after_qr(r, budget), loss

    def carry_on(state, y):
        return y, state.postponed(), jnp.zeros((), y.dtype)

    for _step in range(40):
        y = jac @ y
        due, (y, blocks, loss) = blocks.decide(
            jnp.log(jnp.linalg.norm(y, axis=0)), budget, jnp.asarray(False), factor, carry_on, y
        )
        worst, qrs = max(worst, float(loss)), qrs + int(due)
    assert worst <= budget + 5.0
    assert qrs >= 40 // 3  # spread of 5 nats per step, budget 9: blocks of at most a few steps

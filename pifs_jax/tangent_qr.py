"""Tangent blocks pushed along a map with QR re-orthonormalisation: the engine of every Lyapunov spectrum.

- :func:`qr_pass`: push an orthonormal block ``Q_0`` along the orbit of a step map,
  ``Q_i R_i = J_i Q_{i-1}`` with ``diag R_i >= 0`` (every step, every ``m`` steps, or when
  :class:`pifs_jax.orthogonalization.AdaptiveBlocks` says so), accumulating ``R_N ... R_1``
  either as Benettin's sums ``sum log diag R_i`` or as the graded product ``diag(exp(l)) W``.
- :func:`transposed_qr_pass`: the same backwards with transposed Jacobians (VJPs).
- :func:`graded_update`, :func:`graded_log_singular_values`: the graded product and its singular
  values without overflow (docs/numerics.md section 5).

Generic over the step: ``step(x, inputs_i) -> x_next`` on flat states. The chain spectra of every
sampler (:mod:`pifs_jax.lyapunov`) and the autonomous maps use it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from pifs_jax.jacobians import forward_products
from pifs_jax.orthogonalization import (
    AdaptiveBlocks,
    batch_cond,
    column_log_norms,
    digit_loss_budget,
    positive_qr,
    positive_r,
    qr_2x2,
)

__all__ = [
    "QRPass",
    "graded_log_singular_values",
    "graded_update",
    "identity_constraint",
    "orthonormal_block",
    "qr_pass",
    "qr_positive",
    "safe_diagonal",
    "transposed_qr_pass",
]


# ----------------------------------------------------------------------------- linear algebra


def qr_positive(y: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Reduced QR with ``diag(R) >= 0`` (signs moved into ``Q``), so ``log diag R`` is real.

    The factorisation is the backend's preferred one (:func:`pifs_jax.orthogonalization.preferred_qr_method`);
    a ``2 x 2`` block (a planar map's full tangent block) is factored in closed form
    (:func:`pifs_jax.orthogonalization.qr_2x2`).

    Args:
      y: the block, shape ``(n, p)`` with ``n >= p``.

    Returns:
      ``(Q, R)``: ``Q`` of shape ``(n, p)`` with orthonormal columns and upper-triangular ``R`` of
      shape ``(p, p)`` with a non-negative diagonal.
    """
    if y.shape == (2, 2):
        return qr_2x2(y)
    return positive_qr(y)


def safe_diagonal(r: jax.Array) -> jax.Array:
    """``diag(R)`` clamped at the smallest normal number: a singular step gives ``log(tiny)``, not ``-inf``.

    Args:
      r: a square matrix, shape ``(p, p)``, floating dtype.

    Returns:
      its diagonal, shape ``(p,)``, each entry at least the dtype's ``tiny``.
    """
    return jnp.maximum(jnp.diagonal(r), jnp.finfo(r.dtype).tiny)


def graded_update(log_diag: jax.Array, w: jax.Array, r: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``R diag(e^l) W = diag(r e^l) (I + E) W`` with ``E_jk = (R_jk / r_j) exp(l_k - l_j)``, ``j < k``.

    ``exp`` is only evaluated where ``R_jk != 0``, so exactly decoupled directions never produce
    ``0 * inf``.

    Args:
      log_diag: ``l``, the log-diagonal of the product so far, shape ``(p,)``.
      w: ``W``, its unit upper triangular factor, shape ``(p, p)``.
      r: the new upper-triangular factor ``R``, shape ``(p, p)``, ``diag(R) >= 0``.

    Returns:
      the new ``(l, W)``: ``l + log r`` (``r = diag R``, clamped by :func:`safe_diagonal`) and
      ``(I + E) W`` (``W`` stays unit upper triangular).
    """
    d = safe_diagonal(r)
    unit = r / d[:, None]
    upper = jnp.triu(jnp.ones(r.shape, bool), 1) & (unit != 0)
    gap = log_diag[None, :] - log_diag[:, None]
    e = jnp.where(upper, unit * jnp.exp(jnp.where(upper, gap, 0.0)), 0.0)
    return log_diag + jnp.log(d), w + e @ w


def graded_log_singular_values(
    log_diag: jax.Array, w: jax.Array, *, sweeps: int, window: int = 32, axis_name: str | None = None
) -> jax.Array:
    """``log sigma(diag(exp(l)) W)``, descending, for a unit upper triangular ``W``; no overflow.

    Where the ``l`` span at most ``log(1/eps)/4`` nats (a crowded spectrum, as for the MLP chains
    of BENCHMARKS.md), the singular values are those of the whole rescaled product
    ``diag(exp(l - max l)) W``, taken at once: relative accuracy ``eps exp(span) <= eps^(3/4)``,
    and none of the windowed reading below, which is approximate inside a cluster longer than
    ``window``. Otherwise :func:`_graded_cluster_log_singular_values`. ``axis_name``: an enclosing
    ``vmap``'s axis name; the choice is then made once for the batch
    (:func:`pifs_jax.orthogonalization.batch_cond`: a reading is computed only where some member
    needs it, each member keeping its own).

    Args:
      log_diag: ``l``, shape ``(p,)``.
      w: ``W``, unit upper triangular, shape ``(p, p)``.
      sweeps: the number of graded zero-shift QR sweeps of the clustered reading.
      window: the largest cluster read whole (default 32).
      axis_name: the name of an enclosing ``vmap`` axis, or ``None`` (default).

    Returns:
      the ``p`` log singular values, in descending order.
    """
    span = jnp.max(log_diag) - jnp.min(log_diag)
    crowded = span <= -float(np.log(np.finfo(w.dtype).eps)) / 4

    def whole(log_diag, w):
        ref = jnp.max(log_diag)
        sv = jnp.linalg.svd(jnp.exp(log_diag - ref)[:, None] * w, compute_uv=False)
        positive = sv > 0
        return jnp.where(positive, jnp.log(jnp.where(positive, sv, 1.0)) + ref, -jnp.inf)

    def graded(log_diag, w):
        return _graded_cluster_log_singular_values(log_diag, w, sweeps=sweeps, window=window)

    return -jnp.sort(-batch_cond(crowded, whole, graded, log_diag, w, axis_name=axis_name))


def _graded_cluster_log_singular_values(
    log_diag: jax.Array, w: jax.Array, *, sweeps: int, window: int = 32
) -> jax.Array:
    """``log sigma(diag(exp(l)) W)``, descending, for a unit upper triangular ``W``, by graded sweeps.

    1. ``sweeps`` graded zero-shift QR steps (``P^T = Q R``, ``P <- R``, kept as ``(l, W)``). Each
       multiplies the coupling ``W_jk`` of two directions by about ``exp(-2 |l_j - l_k|)`` and
       orders ``l``, so directions whose ``l`` differ by more than
       ``g = log(1/eps) / (2 sweeps)`` end up decoupled to rounding.
    2. Splitting the (ordered) ``l`` at gaps larger than ``g`` leaves clusters whose singular
       values are those of their diagonal blocks of ``P``. Each block is rescaled by its own
       largest ``exp(l)`` (no over- or underflow across the clusters) and its singular values
       taken explicitly. Clusters longer than ``window`` are read through a window of that size
       centred on each index (``n`` SVDs of ``window x window``, cost ``O(n window^3)``).

    A singleton cluster gives back ``l_j`` itself; one cluster (a spectrum spanning less than a
    few nats per gap, as for the Gaussian chain) gives the SVD of the whole rescaled product.
    """
    n = w.shape[0]
    dtype = w.dtype
    eye = jnp.eye(n, dtype=dtype)

    def sweep(carry, _):
        log_d, w_ = carry
        _, r = qr_positive(w_.T)
        return graded_update(log_d, eye, r), None

    if sweeps > 0:
        (log_diag, w), _ = jax.lax.scan(sweep, (log_diag, w), None, length=sweeps)
        split_gap = -jnp.log(jnp.finfo(dtype).eps) / (2 * sweeps)
        cluster = jnp.concatenate([jnp.zeros((1,), int), jnp.cumsum(jnp.abs(jnp.diff(log_diag)) > split_gap)])
    else:
        cluster = jnp.zeros((n,), int)
    size = min(n, window)
    index = jnp.arange(n)
    starts = jnp.clip(index - size // 2, 0, n - size)

    def one(j, start):
        rows = start + jnp.arange(size)
        inside = cluster[rows] == cluster[j]
        l_block = log_diag[rows]
        ref = jnp.max(jnp.where(inside, l_block, -jnp.inf))
        scale = jnp.where(inside, jnp.exp(jnp.where(inside, l_block - ref, 0.0)), 0.0)
        block = scale[:, None] * jax.lax.dynamic_slice(w, (start, start), (size, size)) * inside[None, :]
        sv = jnp.linalg.svd(block, compute_uv=False)[jnp.sum(inside & (rows < j))]
        positive = sv > 0  # underflow inside a cluster spanning > 700 (float32: 87) nats
        return jnp.where(positive, jnp.log(jnp.where(positive, sv, 1.0)) + ref, log_diag[j])

    return -jnp.sort(-jax.vmap(one)(index, starts))


def orthonormal_block(key: jax.Array, n: int, p: int, dtype) -> jax.Array:
    """A random ``n x p`` matrix with orthonormal columns (Haar-distributed span).

    Args:
      key: PRNG key.
      n: the number of rows.
      p: the number of columns, ``p <= n``.
      dtype: a floating dtype.

    Returns:
      the matrix, shape ``(n, p)``, of ``dtype``: the ``Q`` of :func:`qr_positive` of a standard
      normal matrix.
    """
    q, _ = qr_positive(jax.random.normal(key, (n, p), dtype))
    return q


# ----------------------------------------------------------------------------- the QR pass


class QRPass(NamedTuple):
    q: jax.Array
    """Final orthonormal basis ``Q_N``, shape ``(n, p)`` (with ``final_basis=False``, the last unfactored block)."""
    log_diag: jax.Array
    """``l = sum_i log diag R_i``, shape ``(p,)`` (Benettin's sums)."""
    w: jax.Array
    """Unit upper triangular factor of ``R_N ... R_1 = diag(exp(l)) W`` (empty if not graded)."""
    log_r: jax.Array
    """Per-step ``log diag R_i``, shape ``(length, p)``."""
    finite: tuple
    """Per-step counts of non-finite values ``(in the next state, in the pushed tangent block)``,
    each shape ``(length,)``: zero where the step is finite."""
    states: jax.Array
    """The state before each step, shape ``(length, n)``."""
    due: jax.Array
    """Per-step flags, shape ``(length,)``: ``True`` where the block was factored after the step."""
    final: jax.Array
    """The state after the last step, shape ``(n,)``."""


def identity_constraint(block: jax.Array, rows: bool = False) -> jax.Array:
    """The ``constrain`` of an unsharded pass: ``block`` unchanged.

    Args:
      block: a tangent block.
      rows: ignored (the signature of the ``constrain`` of
        :func:`pifs_jax.sharding.tangent_block_constraint`).

    Returns:
      ``block`` itself.
    """
    return block


def qr_pass(
    step: Callable,
    x0: jax.Array,
    q0: jax.Array,
    inputs: Any,
    *,
    length: int,
    full: bool,
    graded: bool,
    constrain: Callable = identity_constraint,
    qr_every: int | str = 1,
    start: tuple[jax.Array, jax.Array] | None = None,
    axis_name: str | None = None,
    final_basis: bool = True,
) -> QRPass:
    """Push the basis ``q0`` along the orbit of ``step`` with QR re-orthonormalisation.

    ``step(x, inputs_i) -> x_next`` on flat states; ``Q_i R_i = J_i Q_{i-1}`` with ``diag R_i >= 0``.
    Full without ``constrain``: ``J Q`` by :func:`pifs_jax.jacobians.forward_products` (one
    ``jax.linearize``, which also gives ``x_next``, and the ``n`` columns of ``Q`` pushed as JVPs in
    cache-sized batches; ``J`` is never formed, which saves the ``2 n^3`` product ``J Q`` of forming
    it first); otherwise (leading-``k``, or a full spectrum given ``constrain``) ``J Q`` by
    ``jax.linearize`` + ``vmap`` over the columns of ``Q`` (JVPs; ``constrain`` may shard them, the
    QR then gathers the block).
    With ``graded``, the product ``R_N ... R_1`` is accumulated as ``(l, W)``
    (:func:`graded_update`).

    ``qr_every = m > 1``: the block is multiplied by ``m`` step Jacobians before one QR (and one
    graded update), ``Q' R = J_{i+m} ... J_{i+1} Q``, and after the last step. By uniqueness of
    the QR factorisation with positive diagonal, ``R`` is the product of the ``m`` per-step
    factors, so the result is the same in exact arithmetic; ``log_r`` is zero on the steps
    without a QR (their log-diagonal is carried into the next QR's row). ``qr_every = "auto"``:
    the block is factored when :meth:`pifs_jax.orthogonalization.AdaptiveBlocks.decide` says so
    (at most a quarter of the dtype's digits lost per block; where its model is unsure, a Gram
    probe of the block decides), and after the last step.

    ``start = (l_0, W_0)`` continues an accumulated product (e.g. the ``R_0`` of an embedding
    ``E = Q_0 R_0`` taken before the pass); default ``l = 0``, ``W = I``.

    ``axis_name``: the name of an enclosing ``vmap`` over trajectories (``"auto"`` only): the probes
    and QRs are then decided once for the batch and paid only at steps where some trajectory needs
    them, each trajectory keeping its own decisions (:meth:`AdaptiveBlocks.decide`).

    ``final_basis=False``: the caller needs the accumulated product but not the basis after the last
    step, so that step's factorisation computes ``R`` alone
    (:func:`pifs_jax.orthogonalization.positive_r`, no ``Q``) and :attr:`QRPass.q` is the last,
    unfactored block ``J_N ... Q``.

    Args:
      step: the step map, ``step(x, inputs_i) -> x_next`` on flat states of shape ``(n,)``.
      x0: the initial state, shape ``(n,)``.
      q0: the initial orthonormal basis, shape ``(n, p)``.
      inputs: the per-step inputs, a pytree whose leaves have a leading axis of length ``length``.
      length: ``N``, the number of steps.
      full: whether the whole spectrum is computed (as opposed to the leading ``k``), which with
        the default ``constrain`` selects :func:`pifs_jax.jacobians.forward_products` for ``J Q``.
      graded: accumulate ``R_N ... R_1`` as ``(l, W)`` (else ``W`` is empty).
      constrain: ``constrain(block)``, applied to ``Q`` before its JVPs (e.g. a sharding
        constraint, :func:`pifs_jax.sharding.tangent_block_constraint`); default: none.
      qr_every: ``1`` (default: every step), an integer ``m > 1``, or ``"auto"``.
      start: ``(l_0, W_0)``, shapes ``(p,)`` and ``(p, p)``; ``None``: ``l = 0``, ``W = I``.
      axis_name: the name of an enclosing ``vmap`` over trajectories (``"auto"`` only), or ``None``.
      final_basis: whether the basis after the last step is needed (default); ``False`` skips
        forming it.

    Returns:
      :class:`QRPass`: the final basis, the log-diagonal sums, ``W``, the per-step ``log diag R_i``,
      non-finite counts, states and QR flags, and the final state.
    """
    p = q0.shape[1]
    dtype = q0.dtype
    adaptive = qr_every == "auto"
    budget = digit_loss_budget(dtype)

    def last_r(y):
        return y, positive_r(y)

    def reorthonormalise(blocks, y, log_diag, w, last):
        if final_basis:
            q_next, r = qr_positive(y)
        else:
            q_next, r = batch_cond(last, last_r, qr_positive, y, axis_name=axis_name)
        log_r = jnp.log(safe_diagonal(r))
        if graded:
            log_diag, w = graded_update(log_diag, w, r)
        else:
            log_diag = log_diag + log_r
        if adaptive:
            blocks = blocks.after_qr(r, budget)
        return q_next, log_diag, w, log_r, blocks

    def postpone(blocks, y, log_diag, w, last):
        if adaptive:
            blocks = blocks.postponed()
        return y, log_diag, w, jnp.zeros((p,), dtype), blocks

    def body(carry, inp):
        x, q, log_diag, w, blocks = carry
        i, inp = inp
        if full and constrain is identity_constraint:
            x_next, y = forward_products(lambda v: step(v, inp), x, q, chunk=None)
        else:
            x_next, tangent = jax.linearize(lambda v: step(v, inp), x)
            y = jax.vmap(tangent, in_axes=1, out_axes=1)(constrain(q))
        last = i == length - 1
        if qr_every == 1:
            due = jnp.asarray(True)
            q_next, log_diag, w, log_r, blocks = reorthonormalise(blocks, y, log_diag, w, last)
        elif adaptive:
            due, (q_next, log_diag, w, log_r, blocks) = blocks.decide(
                column_log_norms(y), budget, last, reorthonormalise, postpone, y, log_diag, w, last,
                axis_name=axis_name,
            )  # fmt: skip
        else:
            due = ((i + 1) % qr_every == 0) | last
            q_next, log_diag, w, log_r, blocks = jax.lax.cond(
                due, reorthonormalise, postpone, blocks, y, log_diag, w, last
            )
        flags = (jnp.sum(~jnp.isfinite(x_next)), jnp.sum(~jnp.isfinite(y)))
        return (x_next, q_next, log_diag, w, blocks), (log_r, flags, x, due)

    if start is None:
        start = (jnp.zeros((p,), dtype), jnp.eye(p, dtype=dtype) if graded else jnp.zeros((0, 0), dtype))
    blocks0 = AdaptiveBlocks.start(p, dtype) if adaptive else None
    init = (x0, q0, start[0], start[1], blocks0)
    scanned = (jnp.arange(length), inputs)
    (final, q, log_diag, w, _), (log_r, finite, states, due) = jax.lax.scan(body, init, scanned, length=length)
    return QRPass(q, log_diag, w, log_r, finite, states, due, final)


def transposed_qr_pass(
    step: Callable,
    states: jax.Array,
    inputs: Any,
    q: jax.Array,
    *,
    constrain: Callable,
    qr_every: int | str = 1,
    axis_name: str | None = None,
) -> jax.Array:
    """Pull the basis ``q`` back through the steps with transposed Jacobians (VJPs) and QR.

    ``Q'_{i-1} R'_i = J_i^T Q'_i`` from ``i = N`` down to 1; returns ``Q'_0``. With ``qr_every = m``
    the QR is taken on steps ``i - 1 = 0 (mod m)`` only (always on the last, ``i = 1``); with
    ``"auto"`` where :class:`pifs_jax.orthogonalization.AdaptiveBlocks` says so (and on the last);
    ``axis_name`` as in :func:`qr_pass`.

    Args:
      step: the step map, ``step(x, inputs_i) -> x_next`` on flat states of shape ``(n,)``.
      states: the state before each step, shape ``(N, n)`` (:attr:`QRPass.states`).
      inputs: the per-step inputs, a pytree whose leaves have a leading axis of length ``N``.
      q: the basis ``Q'_N`` to pull back, shape ``(n, p)``.
      constrain: ``constrain(block)``, applied to the basis before its VJPs
        (:func:`identity_constraint` for none).
      qr_every: ``1`` (default: every step), an integer ``m > 1``, or ``"auto"``.
      axis_name: the name of an enclosing ``vmap`` over trajectories (``"auto"`` only), or ``None``.

    Returns:
      ``Q'_0``, shape ``(n, p)``.
    """
    adaptive = qr_every == "auto"
    budget = digit_loss_budget(q.dtype)

    def factor(blocks, z):
        q_next, r = qr_positive(z)
        if adaptive:
            blocks = blocks.after_qr(r, budget)
        return q_next, blocks

    def postpone(blocks, z):
        return z, (blocks.postponed() if adaptive else blocks)

    def body(carry, inp):
        q_, blocks = carry
        i, x, s = inp
        _, pullback = jax.vjp(lambda v: step(v, s), x)
        z = jax.vmap(lambda c: pullback(c)[0], in_axes=1, out_axes=1)(constrain(q_))
        if qr_every == 1:
            return (qr_positive(z)[0], blocks), None
        if adaptive:
            return blocks.decide(column_log_norms(z), budget, i == 0, factor, postpone, z, axis_name=axis_name)[1], None
        return jax.lax.cond(i % qr_every == 0, factor, postpone, blocks, z), None

    blocks0 = AdaptiveBlocks.start(q.shape[1], q.dtype) if adaptive else None
    (q0, _), _ = jax.lax.scan(body, (q, blocks0), (jnp.arange(states.shape[0]), states, inputs), reverse=True)
    return q0

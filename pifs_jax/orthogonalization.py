"""QR factorisations with a positive diagonal, and the adaptive re-orthonormalisation rule.

Used by :mod:`pifs_jax.lyapunov` to push a tangent block ``Y`` along a chain of step Jacobians.

- :func:`positive_qr`: ``Y = Q R`` with ``diag(R) >= 0`` (so ``log diag R`` is real), by LAPACK
  Householder QR or by :func:`cholesky_qr2`; :func:`preferred_qr_method` names the one used on a
  backend (docs/numerics.md section 5.5 gives the measurements behind the choice).
- :class:`AdaptiveBlocks`: decides, from what the block shows, when the accumulated product
  ``Y = J_{i+m} ... J_{i+1} Q`` must be re-orthonormalised so that it never loses more than
  :func:`digit_loss_budget` nats (a quarter of the dtype's digits); where its model says a QR
  may be due, :func:`gram_probe` measures the block's loss exactly (one Gram product and a
  Cholesky factorisation, no ``Q``) and the QR is taken only if the measurement says so.

The loss of a block: Householder QR is column-wise backward stable, so the computed ``R_jj`` of
column ``y_j`` carries a relative error of about ``eps |y_j| / R_jj`` (``R_jj`` is the part of
``y_j`` orthogonal to the earlier columns). ``log |y_j| - log R_jj >= 0`` is therefore the number
of nats the block has cost direction ``j``; its maximum over ``j`` is the block's loss.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import solve_triangular

from pifs_jax.errors import ArgumentError

__all__ = [
    "QR_METHODS",
    "AdaptiveBlocks",
    "GramProbe",
    "batch_cond",
    "cholesky_qr2",
    "column_log_norms",
    "digit_loss_budget",
    "gram_probe",
    "householder_qr",
    "positive_qr",
    "positive_r",
    "preferred_qr_method",
    "qr_2x2",
]

#: The QR factorisations the spectra can use.
QR_METHODS = ("householder", "cholesky_qr2")

PREFERRED_QR_METHOD = {"cpu": "householder"}
"""Measured choice per ``jax.default_backend()``; backends not listed use Householder (unmeasured).

On the 2-core CPU machine of BENCHMARKS.md (float32, one OpenBLAS thread), a square ``n x n`` QR
(``python benchmarks/chain_spectrum.py``, case ``qr``): ``n = 768``: Householder 23 ms, CholeskyQR2
56 ms; ``n = 3072``: 1.84 s against 3.16 s."""


def _diagonal_signs(r: jax.Array) -> jax.Array:
    """``S = sign(diag R)``, with ``+1`` for a zero pivot."""
    return jnp.where(jnp.diagonal(r) < 0, -1.0, 1.0).astype(r.dtype)


def _positive_diagonal(q: jax.Array, r: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Move the signs of ``diag(R)`` into ``Q``: ``Q S, S R`` with ``S = sign(diag R)``."""
    sign = _diagonal_signs(r)
    return q * sign[None, :], r * sign[:, None]


def householder_qr(y: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Reduced QR of ``y`` (``n x p``, ``n >= p``) by LAPACK Householder reflections, ``diag(R) >= 0``.

    Args:
      y: the block, shape ``(n, p)`` with ``n >= p``.

    Returns:
      ``(Q, R)``: ``Q`` of shape ``(n, p)`` with orthonormal columns and upper-triangular ``R`` of
      shape ``(p, p)`` with a non-negative diagonal.
    """
    return _positive_diagonal(*jnp.linalg.qr(y))


def qr_2x2(y: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``Y = Q R`` of a ``2 x 2`` block in closed form (Gram-Schmidt of its two columns), ``diag(R) >= 0``.

    ``R_11 = |y_1|`` (``hypot``: no overflow), ``q_1 = y_1 / R_11``, ``R_12 = q_1 . y_2``; in the plane
    the second direction is ``q_1`` turned by a right angle, ``q_2 = s (-q_12, q_11)``, and
    ``R_22 = |det Y| / R_11`` with ``s = sign(det Y)``: ``R_22 = |q_11 y_22 - q_12 y_21|`` is read
    from the cross product, without the cancellation of ``y_2 - R_12 q_1``. A zero first column
    gives ``q_1 = e_1``. The same factors as :func:`householder_qr` (QR with a positive diagonal is
    unique), to rounding; no LAPACK call, so a long scan of a planar map stays in fused code.

    Args:
      y: the block, shape ``(2, 2)``.

    Returns:
      ``(Q, R)``, each of shape ``(2, 2)`` and ``y``'s dtype: ``Q`` orthogonal, ``R`` upper-triangular
      with ``diag(R) >= 0``.
    """
    r11 = jnp.hypot(y[0, 0], y[1, 0])
    nonzero = r11 > 0
    safe = jnp.where(nonzero, r11, 1.0)
    q11 = jnp.where(nonzero, y[0, 0] / safe, 1.0)
    q21 = jnp.where(nonzero, y[1, 0] / safe, 0.0)
    r12 = q11 * y[0, 1] + q21 * y[1, 1]
    cross = q11 * y[1, 1] - q21 * y[0, 1]
    sign = jnp.where(cross < 0, -1.0, 1.0).astype(y.dtype)
    q = jnp.stack([jnp.stack([q11, -sign * q21]), jnp.stack([q21, sign * q11])])
    zero = jnp.zeros((), y.dtype)
    r = jnp.stack([jnp.stack([r11, r12]), jnp.stack([zero, jnp.abs(cross)])])
    return q.astype(y.dtype), r.astype(y.dtype)


def _scaled_cholesky_qr(y: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One CholeskyQR of the column-scaled ``y``: ``Y D^-1 = Q L^T`` with ``L L^T = D^-1 Y^T Y D^-1``.

    ``D = diag |y_j|`` (scaling makes the Gram matrix's condition the scaled one). Returns
    ``(Q, L^T D)``; ``R`` has a positive diagonal by construction.
    """
    norms = jnp.linalg.norm(y, axis=0)
    norms = jnp.where(norms > 0, norms, 1.0)
    scaled = y / norms[None, :]
    chol = jnp.linalg.cholesky(scaled.T @ scaled)
    q = solve_triangular(chol, scaled.T, lower=True).T
    return q, chol.T * norms[None, :]


def cholesky_qr2(y: jax.Array) -> tuple[jax.Array, jax.Array]:
    """CholeskyQR2 (Yamamoto et al. 2015): two column-scaled CholeskyQR passes, Householder fallback.

    ``G = Y^T Y = L L^T``, ``Q_1 = Y L^-T``; the second pass on ``Q_1`` restores orthogonality
    to rounding (``|Q^T Q - I| = O(eps)``) when ``kappa(Y D^-1) < eps^(-1/2)``; ``R = R_2 R_1``.
    Where the scaled Gram matrix is too ill-conditioned for that (its Cholesky factor has a
    diagonal entry below ``eps^(1/4)`` -- i.e. ``kappa^2`` beyond about ``eps^(-1/2)`` -- or is not
    finite) the block is factored by :func:`householder_qr` instead. ``diag(R) > 0``.
    Cost: two Gram products, two Cholesky factorisations and two triangular solves (all BLAS-3).

    Args:
      y: the block, shape ``(n, p)`` with ``n >= p``.

    Returns:
      ``(Q, R)``: ``Q`` of shape ``(n, p)`` with orthonormal columns and upper-triangular ``R`` of
      shape ``(p, p)`` with a positive diagonal.
    """
    q1, r1 = _scaled_cholesky_qr(y)
    pivots = jnp.diagonal(r1) / jnp.maximum(jnp.linalg.norm(y, axis=0), jnp.finfo(y.dtype).tiny)
    well_conditioned = jnp.all(jnp.isfinite(q1)) & (jnp.min(pivots) > jnp.finfo(y.dtype).eps ** 0.25)

    def second_pass(_):
        q2, r2 = _scaled_cholesky_qr(q1)
        return q2, r2 @ r1

    return jax.lax.cond(well_conditioned, second_pass, lambda _: householder_qr(y), None)


def batch_cond(
    pred: jax.Array, true_fn: Callable, false_fn: Callable, *operands: Any, axis_name: str | None = None
) -> Any:
    """``jax.lax.cond(pred, true_fn, false_fn, *operands)``, decided once for a named ``vmap`` batch.

    Under ``jax.vmap`` a predicate that differs between the batch's members turns ``lax.cond``
    into a select that evaluates both branches for every member, at every call. Given the name
    of the enclosing ``vmap`` axis (``jax.vmap(..., axis_name=axis_name)``), the members are
    counted instead, ``c = psum(pred, axis_name)`` (the same for the whole batch of ``B``), and
    ``lax.switch`` runs: ``false_fn`` alone where ``c = 0``, ``true_fn`` alone where ``c = B``, and
    otherwise both, each member taking ``where(pred, true_fn(...), false_fn(...))``. Every
    member's result is the one its own predicate selects, exactly as without ``vmap``; a branch
    is paid only where some member takes it. ``axis_name=None``: plain ``lax.cond``.

    Args:
      pred: the boolean scalar predicate (of one batch member under ``vmap``).
      true_fn: the branch taken where ``pred`` is true.
      false_fn: the branch taken where ``pred`` is false; both branches take ``*operands`` and
        return pytrees of the same structure, shapes and dtypes.
      *operands: the branches' arguments.
      axis_name: the name of the enclosing ``vmap`` axis, or ``None`` (default).

    Returns:
      the result of the branch ``pred`` selects, ``true_fn(*operands)`` or ``false_fn(*operands)``.
    """
    if axis_name is None:
        return jax.lax.cond(pred, true_fn, false_fn, *operands)
    count = jax.lax.psum(jnp.asarray(pred, jnp.int32), axis_name)
    size = jax.lax.psum(1, axis_name)

    def both(*args):
        return jax.tree_util.tree_map(lambda a, b: jnp.where(pred, a, b), true_fn(*args), false_fn(*args))

    branch = jnp.where(count == 0, 0, jnp.where(count == size, 2, 1))
    return jax.lax.switch(branch, (false_fn, both, true_fn), *operands)


class GramProbe(NamedTuple):
    """What :func:`gram_probe` measures of a block ``Y = Q R`` without forming ``Q``."""

    log_r: jax.Array
    """``log R_jj``, shape ``(p,)``."""
    loss: jax.Array
    """``log(|y_j| / R_jj) = 1/2 log(1 + c_j^2)`` nats, shape ``(p,)``; ``inf`` where not measured."""
    log_coupling: jax.Array
    """``log c_j``, at least ``1/2 log(n eps)`` (the Gram matrix's resolution), shape ``(p,)``."""
    resolved: jax.Array
    """``True`` where ``c_j^2`` is above the resolution ``n eps``, shape ``(p,)``."""
    ok: jax.Array
    """``True`` where the Cholesky factorisation succeeded (every pivot finite and positive)."""


def _after(y: jax.Array, probe: GramProbe) -> jax.Array:
    """``y`` unchanged, made to depend on ``probe``'s result (``y + 0 * s`` with a finite ``s``).

    XLA's CPU runtime orders work by the buffers it reads and writes and drops an
    ``optimization_barrier`` that copies nothing; a factorisation of ``y`` could then run beside the
    probe's Cholesky factorisation. Multiplying by zero is not folded for floats (``0 * inf`` is
    NaN), so the dependency stays; ``s`` is made finite so that the sum is exactly ``y``.
    """
    total = jnp.sum(probe.log_r)
    return y + jnp.where(jnp.isfinite(total), total, 0).astype(y.dtype) * 0


def _unmeasured_probe(y: jax.Array) -> GramProbe:
    """A :class:`GramProbe` of ``y``'s shapes that measured nothing (where no probe is due)."""
    zeros = jnp.zeros(y.shape[1:], y.dtype)
    return GramProbe(zeros, jnp.full_like(zeros, jnp.inf), zeros, zeros > 0, jnp.asarray(True))


def gram_probe(y: jax.Array) -> GramProbe:
    """``R`` of ``Y = Q R`` (its diagonal and the couplings) from the Gram matrix, without ``Q``.

    With ``D = diag |y_j|``, the scaled Gram matrix ``G = D^-1 Y^T Y D^-1 = L L^T`` has the
    Cholesky factor ``L^T = R D^-1``, so its pivots are ``L_jj = R_jj / |y_j| = (1 + c_j^2)^(-1/2)``,
    with ``c_j = |R_{<j,j}| / R_jj``: ``log R_jj = log |y_j| + log L_jj`` and the QR's loss on column
    ``j`` is ``-log L_jj`` nats (see :class:`AdaptiveBlocks`). Cost: one ``p x n @ n x p`` product
    and one ``p x p`` Cholesky factorisation.

    Accuracy: the scaled Gram matrix is formed with an error of at most about ``n eps`` per entry
    (unit diagonal), so ``L_jj^2 = 1/(1 + c_j^2)`` carries an absolute error of that order: the
    loss is exact to ``n eps e^(2 loss) / 2`` nats (float32, ``n = 768``, at a loss of 4 nats:
    0.14 nats at worst), and couplings ``c_j^2`` below ``n eps`` are not resolved -- they are
    reported as ``c_j^2 = n eps``. Where the block is too ill-conditioned for the Gram matrix
    (``kappa(Y D^-1)^2`` beyond ``1/eps``) the factorisation fails (``ok`` is ``False``, the loss
    ``inf``): a QR is then due in any case.

    Args:
      y: the block, shape ``(n, p)``.

    Returns:
      :class:`GramProbe` with fields of shape ``(p,)`` (``ok`` a boolean scalar).
    """
    n = y.shape[0]
    dtype = y.dtype
    tiny = jnp.finfo(dtype).tiny
    norms = jnp.linalg.norm(y, axis=0)
    safe = jnp.where(norms > 0, norms, 1.0)
    scaled = y / safe[None, :]
    pivots = jnp.diagonal(jnp.linalg.cholesky(scaled.T @ scaled))
    ok = jnp.all(jnp.isfinite(pivots) & (pivots > 0))
    pivots = jnp.where(ok, jnp.minimum(pivots, 1.0), 0.0)
    loss = -jnp.log(jnp.maximum(pivots, tiny))
    loss = jnp.where(ok, loss, jnp.inf)
    floor = float(np.log(n * np.finfo(dtype).eps))
    log_c2 = jnp.log(jnp.maximum(jnp.expm1(2 * loss), tiny))  # c^2 = expm1(2 loss); inf where the probe failed
    log_r = jnp.log(jnp.maximum(norms, tiny)) + jnp.log(jnp.maximum(pivots, tiny))
    return GramProbe(log_r, loss, 0.5 * jnp.maximum(log_c2, floor), log_c2 > floor, ok)


def preferred_qr_method(backend: str | None = None) -> str:
    """The QR used on ``backend`` (default ``jax.default_backend()``): see ``PREFERRED_QR_METHOD``.

    Args:
      backend: a JAX backend name (e.g. ``"cpu"``, ``"gpu"``), or ``None`` for the default backend.

    Returns:
      one of :data:`QR_METHODS`; ``"householder"`` for a backend without a measured choice.
    """
    return PREFERRED_QR_METHOD.get(backend or jax.default_backend(), "householder")


def positive_qr(y: jax.Array, method: str | None = None) -> tuple[jax.Array, jax.Array]:
    """Reduced ``Y = Q R``, ``diag(R) >= 0``, by ``method`` (one of :data:`QR_METHODS`; ``None``: preferred).

    Args:
      y: the block, shape ``(n, p)`` with ``n >= p``.
      method: ``"householder"`` (:func:`householder_qr`), ``"cholesky_qr2"`` (:func:`cholesky_qr2`) or
        ``None`` for :func:`preferred_qr_method` of the default backend.

    Returns:
      ``(Q, R)``: ``Q`` of shape ``(n, p)`` with orthonormal columns and upper-triangular ``R`` of
      shape ``(p, p)`` with a non-negative diagonal.

    Raises:
      ArgumentError: naming ``method`` when it is not one of :data:`QR_METHODS` or ``None``.
    """
    method = preferred_qr_method() if method is None else method
    if method == "householder":
        return householder_qr(y)
    if method == "cholesky_qr2":
        return cholesky_qr2(y)
    raise ArgumentError("method", f"expected one of {QR_METHODS} or None, got {method!r}")


def positive_r(y: jax.Array, method: str | None = None) -> jax.Array:
    """``R`` of the reduced ``Y = Q R`` with ``diag(R) >= 0``, without forming ``Q`` where that is cheaper.

    The same ``R`` as :func:`positive_qr` (uniqueness of the factorisation with a positive diagonal):
    Householder takes LAPACK's ``geqrf`` alone (``S R`` with ``S = sign(diag R)``; at ``n = p = 768``,
    float32, one thread: 9 ms against 19 ms with ``Q``); a ``2 x 2`` block uses :func:`qr_2x2`, and
    CholeskyQR2 needs its ``Q`` on the way to ``R``.

    Args:
      y: the block, shape ``(n, p)`` with ``n >= p``.
      method: as for :func:`positive_qr`.

    Returns:
      upper-triangular ``R``, shape ``(p, p)``, with a non-negative diagonal.

    Raises:
      ArgumentError: naming ``method`` when it is not one of :data:`QR_METHODS` or ``None``.
    """
    method = preferred_qr_method() if method is None else method
    if y.shape == (2, 2):
        return qr_2x2(y)[1]
    if method == "householder":
        r = jnp.linalg.qr(y, mode="r")
        return r * _diagonal_signs(r)[:, None]
    return positive_qr(y, method)[1]


def digit_loss_budget(dtype) -> float:
    """``log(1/eps) / 4`` nats: a block may cost at most a quarter of the dtype's digits.

    float32: 3.97 nats (1.7 of 6.9 digits), float64: 9.01 nats (3.9 of 15.7 digits).

    Args:
      dtype: a floating dtype (its machine epsilon ``eps`` is used).

    Returns:
      the budget in nats, a Python float.
    """
    return float(-np.log(np.finfo(dtype).eps)) / 4


def column_log_norms(y: jax.Array) -> jax.Array:
    """``log |y_j|`` per column, at least ``log(tiny)`` (a zero column gives a finite value).

    Args:
      y: the block, shape ``(n, p)``.

    Returns:
      the column log-norms, shape ``(p,)``, of ``y``'s dtype (``tiny``: its smallest normal number).
    """
    norms = jnp.linalg.norm(y, axis=0)
    return jnp.log(jnp.maximum(norms, jnp.finfo(y.dtype).tiny))


class AdaptiveBlocks(NamedTuple):
    """When to re-orthonormalise a tangent block pushed through a chain of step Jacobians.

    After ``s`` steps since the last QR, the block is ``Y = J_{i+s} ... J_{i+1} Q = Q' R``.
    Column ``j`` is ``y_j = R_jj q'_j + sum_{i<j} R_ij q'_i``; with ``c_j = |R_{<j,j}| / R_jj`` (its
    part along the earlier, faster directions relative to its own), the QR loses
    ``log(|y_j| / R_jj) = 1/2 log(1 + c_j^2)`` nats on ``R_jj`` (Householder QR is column-wise
    backward stable: relative error ``eps |y_j| / R_jj``). The model, per column:
    ``log c_j(s) = log c0_j + S_j(s)`` with

    - ``S_j(s) = max(s (rate_max - rate_j), max_i log |y_i| - log |y_j|)``: the spread between the
      fastest direction and column ``j`` accumulated in the block, from the per-step rates
      ``rate_j = log R_jj / m`` measured at the last QR, or as observed in the column norms
      (which follow the spread while ``c_j < 1``, so a chain whose spread grows is caught);
    - ``log c0_j = max(log eps, log c_j - S_j(m))``, learnt at each QR from the exact ``c_j`` of
      ``R`` (rounding alone seeds the faster directions at ``eps``). The first block starts from
      an arbitrary basis and is one step long.

    A QR is due when one step more could take some column's loss past the budget ``B``
    (:func:`digit_loss_budget`): ``max_j (log c_j(s) + a_j) > 1/2 log(expm1(2 B))``, with the
    look-ahead ``a_j`` the larger of ``rate_max - rate_j`` and the last step's increase of the
    observed spread; or when the block reaches ``allowed`` steps. After a QR the block's loss
    ``L = max_j 1/2 log(1 + c_j^2)`` is known exactly, and the next block may be ``4 m`` steps
    long (``m`` = this block's) if ``L <= B/4``, ``2 m`` if ``L <= B/2``, ``m`` if ``L <= B``, else
    ``max(1, floor(m B / (2 L)))``: a chain whose exponent spread changes is caught within a block.

    **Probes** (:meth:`decide`). Once a first QR has ordered the basis, a QR the model calls due
    (by its loss or by the length cap) is first checked by :func:`gram_probe`, which measures the
    block's ``log R_jj`` and ``c_j`` at step ``s`` exactly (to the Gram matrix's resolution) at
    the cost of one Gram product: the QR is taken only if ``~ok`` (the Cholesky factorisation
    failed) or ``max_j (log c_j + a_j) > 1/2 log(expm1(2 B))`` with ``a_j = rate_max - rate_j``
    the rates ``log R_jj / s`` of the block so far. Otherwise the block goes on, and the model is
    re-fitted to the measurement (:meth:`probed`): the rates, the spread ``S_j(s)``, the coupling
    ``log c0_j = log c_j - S_j(s)`` (where ``c_j`` is below the probe's resolution, the smaller of
    the previous ``log c0_j`` and the value at the resolution), and the cap, which moves to
    ``4 s`` steps if the measured loss ``L <= B/4``, ``2 s`` if ``L <= B/2``, else ``s + 1``.

    Cost per step: the column norms, ``O(n p)``; per probe, ``O(n p^2)`` (a Gram product); per
    QR, the QR itself plus ``O(p^2)``.
    """

    since: jax.Array
    """Steps multiplied into the block since the last QR (int32 scalar)."""
    allowed: jax.Array
    """The longest the block may grow (int32 scalar)."""
    rates: jax.Array
    """Per-step ``log R_jj`` of the last block, shape ``(p,)``."""
    log_coupling: jax.Array
    """``log c0_j``, shape ``(p,)``."""
    spread: jax.Array
    """``S_j(s)`` after the last step, shape ``(p,)``."""
    observed: jax.Array
    """Observed spread ``max_i log |y_i| - log |y_j|`` after the last step, shape ``(p,)``."""
    probing: jax.Array
    """Whether a QR has been taken, so that :meth:`decide` may probe instead (bool scalar)."""

    @classmethod
    def start(cls, p: int, dtype) -> AdaptiveBlocks:
        """State before the first step: an arbitrary basis (``c0 = 1``), a one-step first block."""
        zeros = jnp.zeros((p,), dtype)
        return cls(jnp.asarray(0, jnp.int32), jnp.asarray(1, jnp.int32), zeros, zeros, zeros, zeros, jnp.asarray(False))

    def observe(self, log_norms: jax.Array, budget: float) -> tuple[jax.Array, AdaptiveBlocks]:
        """``(qr_due, state)`` after a step that left the block with column log-norms ``log_norms``."""
        dtype = log_norms.dtype
        steps = (self.since + 1).astype(dtype)
        behind = jnp.max(self.rates) - self.rates
        observed = jnp.max(log_norms) - log_norms
        spread = jnp.maximum(steps * behind, observed)
        ahead = jnp.maximum(behind, observed - self.observed)
        limit = 0.5 * float(np.log(np.expm1(2 * budget)))
        due = (self.since + 1 >= self.allowed) | (jnp.max(self.log_coupling + spread + ahead) > limit)
        return due, self._replace(spread=spread, observed=observed)

    def after_qr(self, r: jax.Array, budget: float) -> AdaptiveBlocks:
        """State after factoring the block as ``Q R`` (``diag R > 0``): coupling, rates, next length."""
        block = self.since + 1
        dtype = r.dtype
        tiny = jnp.finfo(dtype).tiny
        diag = jnp.maximum(jnp.diagonal(r), tiny)
        off = jnp.linalg.norm(jnp.triu(r, 1), axis=0)
        log_c = jnp.log(jnp.maximum(off, tiny)) - jnp.log(diag)
        loss = jnp.max(0.5 * jnp.logaddexp(0.0, 2 * log_c))  # 1/2 log(1 + c^2), no overflow
        coupling = jnp.maximum(log_c - self.spread, float(np.log(np.finfo(dtype).eps)))
        shrunk = jnp.maximum(jnp.floor(block.astype(dtype) * budget / (2 * jnp.maximum(loss, budget))), 1)
        allowed = jnp.where(
            loss <= budget / 4, 4 * block,
            jnp.where(loss <= budget / 2, 2 * block, jnp.where(loss <= budget, block, shrunk.astype(jnp.int32))),
        )  # fmt: skip
        rates = jnp.log(diag) / block.astype(dtype)
        zeros = jnp.zeros_like(rates)
        return AdaptiveBlocks(
            jnp.zeros_like(self.since), allowed.astype(jnp.int32), rates, coupling, zeros, zeros, jnp.asarray(True)
        )

    def probed(self, probe: GramProbe, budget: float) -> tuple[jax.Array, AdaptiveBlocks]:
        """``(qr_due, state)`` after :meth:`observe` and a :func:`gram_probe` of the block at step ``s = since + 1``.

        ``qr_due = ~ok | max_j (log c_j + rate_max - rate_j) > 1/2 log(expm1(2 B))``, the rates
        ``log R_jj / s`` measured by the probe. The returned state holds the re-fitted model
        (rates, spread, coupling) and the next cap (``4 s``, ``2 s`` or ``s + 1``, from the loss).
        """
        dtype = probe.log_r.dtype
        steps = self.since + 1
        rates = probe.log_r / steps.astype(dtype)
        behind = jnp.max(rates) - rates
        spread = jnp.maximum(steps.astype(dtype) * behind, self.observed)
        limit = 0.5 * float(np.log(np.expm1(2 * budget)))
        due = ~probe.ok | (jnp.max(probe.log_coupling + behind) > limit)
        fitted = probe.log_coupling - spread
        coupling = jnp.where(probe.resolved, fitted, jnp.minimum(self.log_coupling, fitted))
        coupling = jnp.maximum(coupling, float(np.log(np.finfo(dtype).eps)))
        loss = jnp.max(probe.loss)
        allowed = jnp.where(loss <= budget / 4, 4 * steps, jnp.where(loss <= budget / 2, 2 * steps, steps + 1))
        state = self._replace(allowed=allowed.astype(jnp.int32), rates=rates, log_coupling=coupling, spread=spread)
        return due, state

    def decide(
        self,
        log_norms: jax.Array,
        budget: float,
        last: jax.Array,
        factor: Callable,
        carry_on: Callable,
        y: jax.Array,
        *rest: Any,
        axis_name: str | None = None,
    ) -> tuple[jax.Array, Any]:
        """``(qr_due, factor(state, y, *rest))`` or ``(False, carry_on(state, y, *rest))`` after a step.

        ``y`` is the block the step left (column log-norms ``log_norms``), ``state`` this rule's
        state after :meth:`observe`. Where :meth:`observe` calls a QR due after the first QR (and not
        on the ``last`` step, always factored), :func:`gram_probe` and :meth:`probed` decide
        instead. Two ``jax.lax.cond``: the probe (only where one is due), then the factorisation;
        a step without either costs only the column norms.

        The factorisation's input waits for the probe (a data dependency, :func:`_after`), and
        there is one factorisation call per step. Under ``vmap`` both ``cond`` become selects that compute
        both sides, and two batched LAPACK calls left independent may run at once; jaxlib's CPU
        kernels (0.10) split their batch over the same small thread pool and were seen to deadlock
        on a 2-core machine that way (a Cholesky beside a QR).

        ``axis_name``: the name of an enclosing ``vmap`` over trajectories; both ``cond`` then decide
        once for the batch (:func:`batch_cond`): the probe, or the factorisation, runs (batched) where
        some trajectory needs it, and each trajectory keeps its own decision (a select), so the
        results are those of the trajectories run one by one.
        """
        check, state = self.observe(log_norms, budget)
        probing = check & state.probing & ~last
        factoring = last | (check & ~state.probing)
        probe = batch_cond(probing, gram_probe, _unmeasured_probe, y, axis_name=axis_name)
        probe_due, probed_state = state.probed(probe, budget)
        state = jax.tree_util.tree_map(lambda a, b: jnp.where(probing, a, b), probed_state, state)
        due = factoring | (probing & probe_due)
        return due, batch_cond(due, factor, carry_on, state, _after(y, probe), *rest, axis_name=axis_name)

    def postponed(self) -> AdaptiveBlocks:
        """State after a step without a QR."""
        return self._replace(since=self.since + 1)

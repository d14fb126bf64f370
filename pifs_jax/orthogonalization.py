"""QR factorisations with a positive diagonal, and the adaptive re-orthonormalisation rule.

Used by :mod:`pifs_jax.lyapunov` to push a tangent block ``Y`` along a chain of step Jacobians.

- :func:`positive_qr`: ``Y = Q R`` with ``diag(R) >= 0`` (so ``log diag R`` is real), by LAPACK
  Householder QR or by :func:`cholesky_qr2`; :func:`preferred_qr_method` names the one used on a
  backend (docs/numerics.md section 5.5 gives the measurements behind the choice).
- :class:`AdaptiveBlocks`: decides, from what the block shows, when the accumulated product
  ``Y = J_{i+m} ... J_{i+1} Q`` must be re-orthonormalised so that it never loses more than
  :func:`digit_loss_budget` nats (a quarter of the dtype's digits).

The loss of a block: Householder QR is column-wise backward stable, so the computed ``R_jj`` of
column ``y_j`` carries a relative error of about ``eps |y_j| / R_jj`` (``R_jj`` is the part of
``y_j`` orthogonal to the earlier columns). ``log |y_j| - log R_jj >= 0`` is therefore the number
of nats the block has cost direction ``j``; its maximum over ``j`` is the block's loss.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import solve_triangular

from pifs_jax.errors import ArgumentError

__all__ = [
    "QR_METHODS",
    "AdaptiveBlocks",
    "cholesky_qr2",
    "column_log_norms",
    "digit_loss_budget",
    "householder_qr",
    "positive_qr",
    "preferred_qr_method",
]

QR_METHODS = ("householder", "cholesky_qr2")

PREFERRED_QR_METHOD = {"cpu": "householder"}
"""Measured choice per ``jax.default_backend()``; backends not listed use Householder (unmeasured).

On the 2-core CPU machine of BENCHMARKS.md (float32, one OpenBLAS thread), a square ``n x n`` QR
(``python benchmarks/chain_spectrum.py``, case ``qr``): ``n = 768``: Householder 21 ms, CholeskyQR2
49 ms; ``n = 3072``: 1.12 s against 1.70 s."""


def _positive_diagonal(q: jax.Array, r: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Move the signs of ``diag(R)`` into ``Q``: ``Q S, S R`` with ``S = sign(diag R)``."""
    sign = jnp.where(jnp.diagonal(r) < 0, -1.0, 1.0).astype(r.dtype)
    return q * sign[None, :], r * sign[:, None]


def householder_qr(y: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Reduced QR of ``y`` (``n x p``, ``n >= p``) by LAPACK Householder reflections, ``diag(R) >= 0``."""
    return _positive_diagonal(*jnp.linalg.qr(y))


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
    """
    q1, r1 = _scaled_cholesky_qr(y)
    pivots = jnp.diagonal(r1) / jnp.maximum(jnp.linalg.norm(y, axis=0), jnp.finfo(y.dtype).tiny)
    well_conditioned = jnp.all(jnp.isfinite(q1)) & (jnp.min(pivots) > jnp.finfo(y.dtype).eps ** 0.25)

    def second_pass(_):
        q2, r2 = _scaled_cholesky_qr(q1)
        return q2, r2 @ r1

    return jax.lax.cond(well_conditioned, second_pass, lambda _: householder_qr(y), None)


def preferred_qr_method(backend: str | None = None) -> str:
    """The QR used on ``backend`` (default ``jax.default_backend()``): see :data:`PREFERRED_QR_METHOD`."""
    return PREFERRED_QR_METHOD.get(backend or jax.default_backend(), "householder")


def positive_qr(y: jax.Array, method: str | None = None) -> tuple[jax.Array, jax.Array]:
    """Reduced ``Y = Q R``, ``diag(R) >= 0``, by ``method`` (one of :data:`QR_METHODS`; ``None``: preferred)."""
    method = preferred_qr_method() if method is None else method
    if method == "householder":
        return householder_qr(y)
    if method == "cholesky_qr2":
        return cholesky_qr2(y)
    raise ArgumentError("method", f"expected one of {QR_METHODS} or None, got {method!r}")


def digit_loss_budget(dtype) -> float:
    """``log(1/eps) / 4`` nats: a block may cost at most a quarter of the dtype's digits.

    float32: 3.97 nats (1.7 of 6.9 digits), float64: 9.01 nats (3.9 of 15.7 digits).
    """
    return float(-np.log(np.finfo(dtype).eps)) / 4


def column_log_norms(y: jax.Array) -> jax.Array:
    """``log |y_j|`` per column, at least ``log(tiny)`` (a zero column gives a finite value)."""
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
    ``max(1, floor(m B / (2 L)))``: a chain whose exponent spread changes is caught within a block. Cost per step: the column
    norms, ``O(n p)``; per QR, ``O(p^2)``.
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

    @classmethod
    def start(cls, p: int, dtype) -> "AdaptiveBlocks":
        """State before the first step: an arbitrary basis (``c0 = 1``), a one-step first block."""
        zeros = jnp.zeros((p,), dtype)
        return cls(jnp.asarray(0, jnp.int32), jnp.asarray(1, jnp.int32), zeros, zeros, zeros, zeros)

    def observe(self, log_norms: jax.Array, budget: float) -> tuple[jax.Array, "AdaptiveBlocks"]:
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

    def after_qr(self, r: jax.Array, budget: float) -> "AdaptiveBlocks":
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
        return AdaptiveBlocks(jnp.zeros_like(self.since), allowed.astype(jnp.int32), rates, coupling, zeros, zeros)

    def postponed(self) -> "AdaptiveBlocks":
        """State after a step without a QR."""
        return self._replace(since=self.since + 1)

"""Learnable monotone schedule families whose parameters are a pytree.

Each family is a :class:`LearnableSchedule` ``(init, apply)`` pair in the optax style:
``params = family.init(key)`` and ``sched = family.apply(params)``; ``apply`` is pure,
jittable and differentiable, and monotone by construction for *any* parameter values, so an
unconstrained optimiser can never produce an invalid schedule. Both families parameterise
``logSNR(u)`` on ``u = t/T`` (``t = 1..T``) with the end points ``logSNR(0) = logsnr_max`` and
``logSNR(1) = logsnr_min`` held fixed (``alpha_bar_0 = 1`` by convention regardless), following
VDM (Kingma et al. 2021), which writes ``gamma(u) = -logSNR(u)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from pifs_jax._validation import check_positive_int
from pifs_jax.errors import ArgumentError
from pifs_jax.schedules import Schedule, from_log_snr

__all__ = ["LearnableSchedule", "logsnr_spline", "monotone_network"]


class LearnableSchedule(NamedTuple):
    """A learnable schedule family: ``init(key) -> params``, ``apply(params) -> Schedule``."""

    init: Callable[..., Any]
    """``init(key, *, dtype=None) -> params``: initial parameters (a pytree of arrays)."""
    apply: Callable[[Any], Schedule]
    """``apply(params) -> Schedule``: pure, jittable, differentiable, monotone for any ``params``."""
    fit: Callable[[Schedule], Any] | None = None
    """``fit(sched) -> params`` (``None`` where not provided): parameters that reproduce an existing
    schedule as closely as the family allows, for optimisation started from, e.g., cosine."""


def _check_range(logsnr_min: float, logsnr_max: float) -> None:
    if not (np.isfinite(logsnr_min) and np.isfinite(logsnr_max) and logsnr_max > logsnr_min):
        raise ArgumentError(
            "logsnr_min, logsnr_max", f"need finite logsnr_max > logsnr_min, got {logsnr_min!r}, {logsnr_max!r}"
        )


def logsnr_spline(
    T: int = 1000, *, n_knots: int = 16, logsnr_min: float = -20.0, logsnr_max: float = 10.0
) -> LearnableSchedule:
    """Monotone piecewise-linear spline in logSNR with fixed end points.

    Knots at ``u_k = k/K`` (``k = 0..K``) carry
    ``logSNR(u_k) = logsnr_max - (logsnr_max - logsnr_min) * sum_{j<k} softmax(logits)_j``;
    the softmax makes every decrement positive, so ``logSNR`` strictly decreases for any
    ``logits``. Between knots ``logSNR`` is linear in ``u``. ``params = {"logits": (K,)}``;
    zero logits give logSNR linear in ``u``.

    Args:
      T: number of training steps.
      n_knots: ``K``, the number of spline segments.
      logsnr_min: ``logSNR(1)``, held fixed.
      logsnr_max: ``logSNR(0)``, held fixed; must exceed ``logsnr_min``.

    Returns:
      :class:`LearnableSchedule` with ``init`` (zero logits), ``apply`` and ``fit`` (which raises
      :class:`~pifs_jax.errors.ArgumentError` naming ``sched`` for a schedule of another ``T``).

    Raises:
      ArgumentError: naming ``T`` or ``n_knots`` (not an integer >= 1), or
        ``logsnr_min, logsnr_max`` (not finite with ``logsnr_max > logsnr_min``).

    Example:
      >>> fam = logsnr_spline(1000, n_knots=8)
      >>> sched = fam.apply(fam.fit(cosine(1000)))   # start from (a clipped) cosine
    """
    T = check_positive_int(T, name="T")
    n_knots = check_positive_int(n_knots, name="n_knots")
    _check_range(logsnr_min, logsnr_max)
    knots = np.linspace(0.0, 1.0, n_knots + 1)
    span = logsnr_max - logsnr_min

    def init(key: Any = None, *, dtype=None) -> dict:
        del key
        return {"logits": jnp.zeros((n_knots,), dtype=dtype or jnp.result_type(float))}

    def apply(params: dict) -> Schedule:
        logits = params["logits"]
        dtype = logits.dtype
        fractions = jnp.concatenate([jnp.zeros((1,), dtype), jnp.cumsum(jax.nn.softmax(logits))])
        values = logsnr_max - span * fractions
        u = jnp.arange(1, T + 1, dtype=dtype) / T
        return from_log_snr(jnp.interp(u, jnp.asarray(knots, dtype), values), validate=False)

    def fit(sched: Schedule) -> dict:
        if sched.T != T:
            raise ArgumentError("sched", f"expected T = {T} to match the family, got T = {sched.T}")
        log_snr = np.array(sched.log_snr, dtype=np.float64)  # a writable copy
        u_grid = np.arange(T + 1) / T
        log_snr[0] = logsnr_max  # t = 0 is +inf; the family fixes logSNR(0) = logsnr_max
        at_knots = np.clip(np.interp(knots, u_grid, log_snr), logsnr_min, logsnr_max)
        at_knots[0], at_knots[-1] = logsnr_max, logsnr_min
        drops = np.maximum(-np.diff(at_knots), 1e-6 * span)
        return {"logits": jnp.asarray(np.log(drops / drops.sum()), dtype=sched.dtype)}

    return LearnableSchedule(init, apply, fit)


def monotone_network(
    T: int = 1000, *, hidden: int = 64, logsnr_min: float = -20.0, logsnr_max: float = 10.0
) -> LearnableSchedule:
    """VDM-style monotone network for ``gamma(u) = -logSNR(u)`` with fixed end points.

    ``g(u) = l1(u) + l3(sigmoid(l2(l1(u))))`` with every weight made positive by ``softplus``
    (``l1: 1 -> 1``, ``l2: 1 -> hidden``, ``l3: hidden -> 1``), so ``g`` strictly increases;
    then ``gamma(u) = -logsnr_max + (logsnr_max - logsnr_min) (g(u) - g(0)) / (g(1) - g(0))``.
    ``params`` is a dict of arrays (``w1, b1, w2, b2, w3``).

    Args:
      T: number of training steps.
      hidden: the width of ``l2``.
      logsnr_min: ``logSNR(1)``, held fixed.
      logsnr_max: ``logSNR(0)``, held fixed; must exceed ``logsnr_min``.

    Returns:
      :class:`LearnableSchedule` with ``init`` (random ``w2``, ``w3`` from the key) and ``apply``;
      ``fit`` is ``None``.

    Raises:
      ArgumentError: naming ``T`` or ``hidden`` (not an integer >= 1), or
        ``logsnr_min, logsnr_max`` (not finite with ``logsnr_max > logsnr_min``).
    """
    T = check_positive_int(T, name="T")
    hidden = check_positive_int(hidden, name="hidden")
    _check_range(logsnr_min, logsnr_max)

    def init(key: Any, *, dtype=None) -> dict:
        dtype = dtype or jnp.result_type(float)
        k2, k3 = jax.random.split(key)
        return {
            "w1": jnp.zeros((), dtype),
            "b1": jnp.zeros((), dtype),
            "w2": jax.random.normal(k2, (hidden,), dtype),
            "b2": jnp.zeros((hidden,), dtype),
            "w3": jax.random.normal(k3, (hidden,), dtype) - 2.0,
        }

    def g(params: dict, u: jax.Array) -> jax.Array:
        h = jax.nn.softplus(params["w1"]) * u + params["b1"]
        inner = jax.nn.sigmoid(jax.nn.softplus(params["w2"]) * h[..., None] + params["b2"])
        return h + inner @ jax.nn.softplus(params["w3"]) / hidden

    def apply(params: dict) -> Schedule:
        dtype = params["w1"].dtype
        u = jnp.arange(1, T + 1, dtype=dtype) / T
        g0 = g(params, jnp.zeros((), dtype))
        g1 = g(params, jnp.ones((), dtype))
        fraction = (g(params, u) - g0) / (g1 - g0)
        return from_log_snr(logsnr_max - (logsnr_max - logsnr_min) * fraction, validate=False)

    return LearnableSchedule(init, apply, None)

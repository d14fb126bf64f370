"""Grids by gradient descent through the solver (in the manner of LD3, Tong et al. 2025).

The ``N`` step times are real and monotone by construction,
``t_i = t_min + (T - t_min) sum_{j <= i} softmax(z)_j`` for ``i = 1..N`` (so ``t_N = T``, ``t_1 > t_min``),
the chain runs on :func:`pifs_jax.samplers.continuous_step_tables` of those times (coefficients move
continuously; the network is called at the nearest integer time, a straight-through reading of its
time input), and the loss is the mean squared distance of the ``N``-step result to the reference
solution on the design seeds, minimised with Adam (optax) through ``jax.grad`` of the whole chain
(each step under ``jax.checkpoint``). The iterate is rounded to integers every ``check_every`` steps
and the rounded grid with the lowest design loss is returned (selection on the design seeds only).
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from pifs_jax._validation import check_positive_float, check_positive_int
from pifs_jax.errors import ArgumentError
from pifs_jax.grid_design.evaluation import DEFAULT_CHUNK, mean_grid_error
from pifs_jax.grids import round_grid
from pifs_jax.optimize.engine import default_optimizer
from pifs_jax.samplers import DDIM, Sampler, chain_from_tables, continuous_step_tables
from pifs_jax.schedules import Schedule
from pifs_jax.typing import EpsFn

__all__ = ["GradientResult", "gradient_grid", "grid_times_from_logits", "logits_from_grid"]


class GradientResult(NamedTuple):
    """The rounded grid with the lowest design loss, and the run's record."""

    grid: np.ndarray
    losses: list[float]
    """Design loss (mean squared error) of the real-time iterate, per iteration."""
    rounded_losses: list[float]
    """Mean RMSE of each rounded check-point grid on the design seeds."""
    network_evaluations: int
    seconds: float


def grid_times_from_logits(logits: jax.Array, T: int, t_min: float = 1.0) -> jax.Array:
    """``(0, t_1, ..., t_N)`` with ``t_i = t_min + (T - t_min) cumsum(softmax(logits))_i`` (monotone, ``t_N = T``).

    Args:
      logits: ``z``, one per step, shape ``(N,)``.
      T: the schedule's number of training steps (the last time).
      t_min: where the cumulative sum starts (``t_1 > t_min``); default 1.

    Returns:
      the real times ``(0, t_1, ..., t_N)``, a JAX array of shape ``(N+1,)`` (differentiable in ``logits``).
    """
    inner = t_min + (T - t_min) * jnp.cumsum(jax.nn.softmax(logits))
    return jnp.concatenate([jnp.zeros((1,), inner.dtype), inner])


def logits_from_grid(grid: Any, T: int, t_min: float = 1.0) -> np.ndarray:
    """Logits whose :func:`grid_times_from_logits` is ``grid`` (its ``tau_1`` nudged above ``t_min``).

    Args:
      grid: the grid ``0 = tau_0 < ... < tau_N``, ending at ``T`` for the round trip.
      T: the schedule's number of training steps; not read (the softmax of :func:`grid_times_from_logits`
        normalises the increments, which end at ``grid``'s last point).
      t_min: as for :func:`grid_times_from_logits`; points below ``t_min + 0.5`` are raised to ``t_min + 0.5``;
        default 1.

    Returns:
      float64 NumPy array of shape ``(N,)``: the log of each increment ``tau_i - tau_{i-1}`` (from ``t_min``
      for ``i = 1``), each increment taken as at least ``1e-3``.
    """
    g = np.asarray(grid, np.float64)
    inner = np.maximum(g[1:], t_min + 0.5)
    increments = np.diff(np.concatenate([[t_min], inner]))
    return np.log(np.maximum(increments, 1e-3))


def _loss(logits, eps_fn, sampler, sched, x_T, reference, T):
    times = grid_times_from_logits(logits, T)
    tables = sampler.tables_from(continuous_step_tables(sched, times))
    x_0 = jax.vmap(lambda x: chain_from_tables(eps_fn, tables, x, sampler=sampler, remat=True))(x_T)
    return jnp.mean((x_0 - reference) ** 2)


@eqx.filter_jit
def _update(logits, opt_state, eps_fn, sampler, sched, x_T, reference, optimizer, T):
    loss, grad = jax.value_and_grad(_loss)(logits, eps_fn, sampler, sched, x_T, reference, T)
    updates, opt_state = optimizer.update(grad, opt_state, logits)
    return jnp.asarray(optax.apply_updates(logits, updates)), opt_state, loss


def gradient_grid(
    eps_fn: EpsFn,
    sched: Schedule,
    x_T: Any,
    reference: Any,
    init: Any,
    *,
    sampler: Sampler | None = None,
    iterations: int = 60,
    learning_rate: float = 0.05,
    check_every: int = 10,
    chunk: int = DEFAULT_CHUNK,
) -> GradientResult:
    """Descend the design loss from the grid ``init`` (module docstring).

    Args:
      x_T: design noises ``(R,) + shape``; ``reference``: their reference solutions.
      init: the starting integer grid (its length fixes ``N``).
      iterations: Adam steps; ``learning_rate`` on the logits.
      check_every: rounding-and-scoring interval.

    Cost: about 3 NFE-equivalents per network call per iteration (forward, recomputation, reverse).
    """
    sampler = DDIM() if sampler is None else sampler
    iterations = check_positive_int(iterations, name="iterations")
    check_every = check_positive_int(check_every, name="check_every")
    learning_rate = check_positive_float(learning_rate, name="learning_rate")
    init = np.asarray(init, np.int64)
    T = int(init[-1])
    if T != sched.T:
        raise ArgumentError("init", f"the grid must end at T = {sched.T} (tau_N), got {T}")
    x_T = jnp.asarray(x_T)
    reference = jnp.asarray(reference, x_T.dtype)
    start = time.perf_counter()
    n_samples = int(x_T.shape[0])
    nfe = sampler.nfe(init.shape[0] - 1)
    logits = jnp.asarray(logits_from_grid(init, T), x_T.dtype)
    optimizer, _ = default_optimizer(None, learning_rate)  # one Adam per rate: a second fit compiles nothing
    opt_state = optimizer.init(logits)
    ref_host = np.asarray(reference, np.float64)

    def score(g: np.ndarray) -> float:
        return mean_grid_error(eps_fn, sched, g, x_T, ref_host, sampler=sampler, chunk=chunk)

    best_grid, best = init, score(init)
    losses: list[float] = []
    rounded = [best]
    evaluations = nfe * n_samples
    for it in range(1, iterations + 1):
        logits, opt_state, loss = _update(logits, opt_state, eps_fn, sampler, sched, x_T, reference, optimizer, T)
        losses.append(float(loss))
        evaluations += 3 * nfe * n_samples
        if it % check_every == 0 or it == iterations:
            g = round_grid(np.asarray(grid_times_from_logits(logits, T), np.float64), last=T)
            value = score(g)
            evaluations += nfe * n_samples
            rounded.append(value)
            if value < best:
                best, best_grid = value, g
    return GradientResult(np.asarray(best_grid, np.int64), losses, rounded, evaluations, time.perf_counter() - start)

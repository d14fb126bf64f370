"""Criterion 3 over the sampling grid (docs/theory.md section 8): :func:`optimize_grid`.

The grid is relaxed to real times ``t_i = last * sum_{j <= i} softmax(logits)_j`` (monotone by
construction, ``t_0 = 0``, ``t_N = last``), ``CV(W)^2`` is minimised from the uniform grid with
:func:`~pifs_jax.optimize.engine.run_optimization`, and the result is rounded
(:func:`pifs_jax.grids.round_grid`) and polished by +-1 moves that lower the discrete imbalance.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from pifs_jax._validation import check_positive_int
from pifs_jax.criteria import WORK_KINDS, cumulative_work, workload
from pifs_jax.errors import ArgumentError
from pifs_jax.grids import grid_to_diffusers_timesteps, round_grid
from pifs_jax.optimize.engine import OptimizerState, default_optimizer, run_optimization
from pifs_jax.schedules import Schedule

__all__ = ["GridResult", "optimize_grid"]


class _GridLoss(NamedTuple):
    """``loss(logits, sched) = CV(W)^2`` of the relaxed grid; hashable (static settings only)."""

    last: int
    kind: str

    def __call__(self, logits: jax.Array, sched: Schedule):
        times = _grid_times(logits, self.last)
        cv = workload(sched, times, kind=self.kind).cv
        return cv**2, ({"loss": cv**2, "workload": cv}, times)


class GridResult(NamedTuple):
    """Outcome of :func:`optimize_grid`.

    Attributes:
      grid: integer timesteps ``0 = tau_0 < ... < tau_N = last`` (this package's indexing).
      diffusers_timesteps: the same steps as diffusers' descending list (``tau - 1``).
      times: the optimised continuous times before rounding, shape ``(N+1,)``.
      relaxed_cv: the relaxed criterion at ``times``.
      cv: the discrete criterion ``CV(W)`` of ``grid``.
      work: per-step work of ``grid``, shape ``(N,)``.
      initial_cv: ``CV(W)`` of the uniform starting grid ``uniform_grid(last, N)``.
      history: per iteration: ``loss`` (``CV^2``) and ``workload`` (``CV``).
      state: the final :class:`OptimizerState`.
    """

    grid: np.ndarray
    diffusers_timesteps: np.ndarray
    times: np.ndarray
    relaxed_cv: float
    cv: float
    work: np.ndarray
    initial_cv: float
    history: dict[str, np.ndarray]
    state: OptimizerState


def _grid_times(logits: jax.Array, last: int) -> jax.Array:
    fractions = jnp.cumsum(jax.nn.softmax(logits))
    return jnp.concatenate([jnp.zeros((1,), logits.dtype), last * fractions]).at[-1].set(last)


def _digest(sched: Schedule) -> str:
    """A short fingerprint of a concrete schedule's values (for the checkpoint's config)."""
    data = np.ascontiguousarray(np.asarray(sched.log_alpha_bar, np.float64)).tobytes()
    return hashlib.sha256(data).hexdigest()[:16]


def _polish(cumulative: np.ndarray, grid: np.ndarray, max_sweeps: int = 50) -> np.ndarray:
    """Coordinate descent on the discrete ``CV(W)``: move interior points by +-1 while it drops.

    ``cumulative`` is ``W(t)`` at ``t = 0..T`` (float64); the end points stay fixed.
    """

    def cv(g):
        w = np.diff(cumulative[g])
        return np.std(w) / np.mean(w)

    grid = grid.copy()
    best = cv(grid)
    for _ in range(max_sweeps):
        improved = False
        for i in range(1, len(grid) - 1):
            for move in (-1, 1):
                candidate = grid[i] + move
                if grid[i - 1] < candidate < grid[i + 1]:
                    trial = grid.copy()
                    trial[i] = candidate
                    value = cv(trial)
                    if value < best:
                        grid, best, improved = trial, value, True
        if not improved:
            break
    return grid


def optimize_grid(
    sched: Schedule,
    num_steps: int,
    *,
    last: int | None = None,
    kind: str = "inverse_threshold",
    iterations: int = 300,
    learning_rate: float = 0.1,
    optimizer: optax.GradientTransformation | None = None,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 100,
    resume: bool = False,
    progress: bool = False,
    run_config: Any = None,
) -> GridResult:
    """Criterion 3 over the sampling grid: integer timesteps that balance the contraction work.

    Minimises ``CV(W)^2`` (:func:`pifs_jax.criteria.workload`) over real times
    ``t_i = last * sum_{j<=i} softmax(logits)_j`` (``t_0 = 0``, ``t_N = last``, increasing by
    construction) with optax from the uniform grid, then rounds (:func:`round_grid`) and polishes
    the integers by +-1 moves that lower the discrete ``CV(W)``. The continuous optimum is
    :func:`~pifs_jax.criteria.equal_work_times`.

    Args:
      sched: the schedule (fixed).
      num_steps: ``N``, at most ``last``.
      last: ``tau_N`` (default ``T``; diffusers' 999 is our 1000).
      kind: work definition, one of :data:`~pifs_jax.criteria.WORK_KINDS`.
      iterations: optimisation steps, as in :func:`optimize_schedule`.
      learning_rate: as in :func:`optimize_schedule`.
      optimizer: as in :func:`optimize_schedule`.
      checkpoint_dir: as in :func:`optimize_schedule`.
      checkpoint_every: as in :func:`optimize_schedule`.
      resume: as in :func:`optimize_schedule`.
      progress: as in :func:`optimize_schedule`.
      run_config: as in :func:`optimize_schedule` (stored only when given).

    Returns:
      :class:`GridResult` with ``grid`` strictly increasing ``int64`` in ``[0, last]``.
    """
    if not isinstance(sched, Schedule):
        raise ArgumentError("sched", f"expected a pifs_jax Schedule, got {type(sched).__name__}")
    num_steps = check_positive_int(num_steps, name="num_steps")
    last = sched.T if last is None else check_positive_int(last, name="last")
    if last > sched.T:
        raise ArgumentError("last", f"must not exceed the schedule's T = {sched.T}, got {last}")
    if num_steps > last:
        raise ArgumentError(
            "num_steps", f"cannot exceed the {last} training steps up to last = {last}, got {num_steps}"
        )
    if kind not in WORK_KINDS:
        raise ArgumentError("kind", f"unknown work definition {kind!r}; expected one of {', '.join(WORK_KINDS)}")
    optimizer, optimizer_config = default_optimizer(optimizer, learning_rate)
    config = {
        "num_steps": num_steps,
        "last": last,
        "kind": kind,
        "T": sched.T,
        "schedule": _digest(sched),
        "optimizer": optimizer_config,
    }
    if run_config is not None:
        config["run_config"] = run_config
    outcome = run_optimization(
        _GridLoss(last, kind),
        jnp.zeros((num_steps,), sched.dtype),
        sched,
        optimizer=optimizer,
        iterations=iterations,
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=checkpoint_every,
        resume=resume,
        progress=progress,
        callback=None,
        config=config,
        description="optimize grid",
    )
    (initial, _), (final, times) = outcome.initial, outcome.final
    cumulative = np.asarray(jax.jit(cumulative_work, static_argnames="kind")(sched, kind=kind), np.float64)
    grid = _polish(cumulative, round_grid(np.asarray(times, np.float64), last=last))
    work = np.diff(cumulative[grid])
    return GridResult(
        grid,
        grid_to_diffusers_timesteps(grid),
        np.asarray(times, np.float64),
        final["workload"],
        float(np.std(work) / np.mean(work)),
        work,
        initial["workload"],
        outcome.history,
        outcome.state,
    )

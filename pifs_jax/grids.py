"""Sampling grids ``0 = tau_0 < tau_1 < ... < tau_N <= T`` in this package's indexing.

Sampling step ``i`` maps ``x_{tau_i}`` to ``x_{tau_{i-1}}``; ``tau_0 = 0`` is clean data
(``alpha_bar = 1``). Steps are always taken between explicit grid points, never by stride
arithmetic.

diffusers numbers its timesteps ``k = 0..T-1`` with ``alphas_cumprod[k] = alpha_bar[k+1]``; a
diffusers timestep ``k`` is this package's ``k + 1``. Its DDIM sampler finishes on
``alpha_bar = 1`` (``set_alpha_to_one=True``), our ``tau_0 = 0``. Note that diffusers' DDIM step
finds the previous timestep as ``k - T // N`` (stride arithmetic), which for the ``linspace`` and
``trailing`` spacings is not the next timestep in its own list; here the grid is the list.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from pifs_jax._validation import check_grid, check_positive_int, describe, is_concrete
from pifs_jax.errors import ArgumentError
from pifs_jax.typing import GridLike

__all__ = [
    "AYS_SD15",
    "AYS_SDXL",
    "TIMESTEP_SPACINGS",
    "align_your_steps_grid",
    "as_grid",
    "diffusers_grid",
    "diffusers_timesteps",
    "full_grid",
    "grid_from_diffusers_timesteps",
    "grid_to_diffusers_timesteps",
    "round_grid",
    "uniform_grid",
]

#: Align Your Steps (Sabour et al. 2024), 10 steps, diffusers indexing, Stable Diffusion 1.5.
AYS_SD15 = (999, 850, 736, 645, 545, 455, 343, 233, 124, 24)
#: Align Your Steps (Sabour et al. 2024), 10 steps, diffusers indexing, SDXL.
AYS_SDXL = (999, 845, 730, 587, 443, 310, 193, 116, 53, 13)

#: diffusers' ``timestep_spacing`` values (:func:`diffusers_timesteps`).
TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")


def full_grid(T: int) -> np.ndarray:
    """Every training step: ``tau_i = i`` for ``i = 0..T``.

    Args:
      T: number of training steps.

    Returns:
      The grid ``0, 1, ..., T``, shape ``(T+1,)``.

    Raises:
      ArgumentError: naming ``T``, not an integer >= 1.
    """
    T = check_positive_int(T, name="T")
    return np.arange(T + 1)


def uniform_grid(T: int, num_steps: int) -> np.ndarray:
    """``N`` evenly spaced steps ending at ``T``: ``tau_i = round(i T / N)``, ``i = 0..N``.

    ``uniform_grid(1000, 50)`` is ``tau_i = 20 i``.

    Args:
      T: number of training steps.
      num_steps: the number of sampling steps ``N``.

    Returns:
      The ``int64`` grid, shape ``(N+1,)``.

    Raises:
      ArgumentError: (``T``) not an integer >= 1; (``num_steps``) not an integer in ``1..T``
        (the command line's ``--steps``).
    """
    T = check_positive_int(T, name="T")
    num_steps = check_positive_int(num_steps, name="num_steps")
    if num_steps > T:
        raise ArgumentError("num_steps", f"cannot exceed T = {T}, got {num_steps}")
    return np.round(np.arange(num_steps + 1) * (T / num_steps)).astype(np.int64)


def diffusers_timesteps(T: int, num_steps: int, *, spacing: str = "leading", steps_offset: int = 0) -> np.ndarray:
    """The descending timestep list diffusers' DDIM ``set_timesteps`` produces (diffusers indexing).

    - ``linspace``: ``round(linspace(0, T-1, N))``
    - ``leading``: ``arange(N) * (T // N) + steps_offset``
    - ``trailing``: ``round(arange(T, 0, -T/N)) - 1``

    Args:
      T: diffusers' ``num_train_timesteps``.
      num_steps: the number of inference steps ``N``.
      spacing: diffusers' ``timestep_spacing``, one of :data:`TIMESTEP_SPACINGS`.
      steps_offset: diffusers' ``steps_offset``, added to the ``leading`` timesteps only.

    Returns:
      The ``N`` timesteps, descending, in diffusers indexing (``0..T-1``).

    Raises:
      ArgumentError: (``T``) not an integer >= 1; (``num_steps``) not an integer in ``1..T``;
        (``spacing``) not one of :data:`TIMESTEP_SPACINGS`.
    """
    T = check_positive_int(T, name="T")
    num_steps = check_positive_int(num_steps, name="num_steps")
    if num_steps > T:
        raise ArgumentError("num_steps", f"cannot exceed num_train_timesteps = {T}, got {num_steps}")
    if spacing == "linspace":
        steps = np.linspace(0, T - 1, num_steps).round()[::-1].astype(np.int64)
    elif spacing == "leading":
        ratio = T // num_steps
        steps = (np.arange(num_steps) * ratio).round()[::-1].astype(np.int64) + steps_offset
    elif spacing == "trailing":
        ratio = T / num_steps
        steps = np.round(np.arange(T, 0, -ratio)).astype(np.int64) - 1
    else:
        raise ArgumentError("spacing", f"unknown timestep_spacing {spacing!r}; expected one of {TIMESTEP_SPACINGS}")
    return steps


def grid_from_diffusers_timesteps(timesteps: Any, *, T: int | None = None) -> np.ndarray:
    """Convert a diffusers timestep list (any order, values ``0..T-1``) to this package's grid.

    Args:
      timesteps: diffusers timesteps, integers ``0..T-1``, in any order.
      T: the number of training steps; when given, the grid is checked against it.

    Returns:
      The grid ``[0] + sorted(k + 1)`` (the chain ends on ``alpha_bar = 1``).

    Raises:
      ValueError: naming ``timesteps`` (message ``"timesteps: ..."``), for an empty or not 1-D
        list, non-integer values, a negative value or duplicates.
      ArgumentError: naming ``timesteps``, for a grid that does not fit ``T`` (``T`` given).
    """
    ts = np.asarray(timesteps)
    if ts.ndim != 1 or ts.size == 0:
        raise ValueError(f"timesteps: expected a non-empty 1-D list, got shape {ts.shape}")
    if not np.all(np.equal(np.round(ts), ts)):
        raise ValueError(f"timesteps: must be integers, got {ts.tolist()}")
    ts = np.sort(ts.astype(np.int64))
    if ts[0] < 0:
        raise ValueError(f"timesteps: diffusers timesteps are >= 0, got {ts[0]}")
    if np.any(np.diff(ts) == 0):
        raise ValueError(f"timesteps: contain duplicates: {ts.tolist()}")
    grid = np.concatenate([[0], ts + 1])
    if T is not None:
        check_grid(grid, T, name="timesteps")
    return grid


def round_grid(times: Any, *, last: int | None = None) -> np.ndarray:
    """Round real grid times to strictly increasing integers ``0 = tau_0 < ... < tau_N = last``.

    Each ``t_i`` is rounded to the nearest integer, then collisions are pushed apart: upwards
    (``tau_i >= tau_{i-1} + 1``) and then downwards from ``tau_N = last`` (``tau_i <= tau_{i+1} - 1``),
    which always succeeds when ``N <= last``. E.g. the continuous optimum of
    :func:`pifs_jax.optimize.optimize_grid` or :func:`pifs_jax.criteria.equal_work_times`.

    Args:
      times: shape ``(N+1,)``, increasing, ``t_0 = 0``.
      last: ``tau_N`` (default ``round(t_N)``).

    Returns:
      ``int64`` array of shape ``(N+1,)``.

    Raises:
      ArgumentError: naming ``times`` (not finite, or not of shape ``(N+1,)`` with ``N >= 1``) or
        ``num_steps`` (``N > last``: the steps cannot fit).
    """
    t = np.asarray(times, dtype=np.float64)
    if t.ndim != 1 or t.shape[0] < 2 or not np.all(np.isfinite(t)):
        raise ArgumentError("times", f"expected finite times of shape (N+1,) with N >= 1, got {describe(t)}")
    n = t.shape[0] - 1
    last = round(float(t[-1])) if last is None else int(last)
    if n > last:
        raise ArgumentError("num_steps", f"{n} steps cannot fit strictly increasing integers in 0..{last}")
    tau = np.rint(t).astype(np.int64)
    tau[0], tau[-1] = 0, last
    for i in range(1, n):
        tau[i] = max(tau[i], tau[i - 1] + 1)
    for i in range(n - 1, 0, -1):
        tau[i] = min(tau[i], tau[i + 1] - 1)
    return tau


def grid_to_diffusers_timesteps(grid: GridLike) -> np.ndarray:
    """This package's grid ``0 = tau_0 < ... < tau_N`` as diffusers' descending timestep list.

    diffusers' timestep ``k`` is this package's ``k + 1`` (and its final step lands on
    ``alpha_bar = 1``, our ``tau_0``): the list is ``tau_N - 1, ..., tau_1 - 1``. The inverse of
    :func:`pifs_jax.grids.grid_from_diffusers_timesteps`.

    Args:
      grid: increasing integer timesteps ``0 = tau_0 < ... < tau_N``.

    Returns:
      The ``int64`` timesteps ``tau_N - 1, ..., tau_1 - 1``, shape ``(N,)``.

    Raises:
      ArgumentError: naming ``grid``, unless it is 1-D, starts at 0 and strictly increases.
    """
    g = np.asarray(grid)
    if g.ndim != 1 or g.shape[0] < 2 or g[0] != 0 or np.any(np.diff(g) <= 0):
        raise ArgumentError("grid", f"expected 0 = tau_0 < tau_1 < ... < tau_N, got {describe(g)}")
    return (g[1:] - 1)[::-1].astype(np.int64)


def diffusers_grid(T: int, num_steps: int, *, spacing: str = "leading", steps_offset: int = 0) -> np.ndarray:
    """:func:`diffusers_timesteps` converted with :func:`grid_from_diffusers_timesteps`.

    Args:
      T: diffusers' ``num_train_timesteps`` (this package's ``T``).
      num_steps: the number of inference steps ``N``.
      spacing: diffusers' ``timestep_spacing``, one of :data:`TIMESTEP_SPACINGS`.
      steps_offset: diffusers' ``steps_offset`` (``leading`` spacing only).

    Returns:
      The grid ``0 = tau_0 < ... < tau_N <= T``, shape ``(N+1,)``.

    Raises:
      ArgumentError: as :func:`diffusers_timesteps` (naming ``T``, ``num_steps`` or ``spacing``),
        or naming ``timesteps`` for timesteps beyond ``T``.
      ValueError: naming ``timesteps``, for duplicate or negative timesteps (as
        :func:`grid_from_diffusers_timesteps`).
    """
    return grid_from_diffusers_timesteps(
        diffusers_timesteps(T, num_steps, spacing=spacing, steps_offset=steps_offset), T=T
    )


def align_your_steps_grid(model: str = "sd15") -> np.ndarray:
    """The published 10-step Align Your Steps timesteps (``"sd15"`` or ``"sdxl"``) as a grid on T = 1000.

    Args:
      model: ``"sd15"`` (:data:`AYS_SD15`) or ``"sdxl"`` (:data:`AYS_SDXL`).

    Returns:
      The grid, shape ``(11,)``.

    Raises:
      ValueError: naming ``model`` (message ``"model: ..."``), for another value.
    """
    table = {"sd15": AYS_SD15, "sdxl": AYS_SDXL}
    if model not in table:
        raise ValueError(f"model: expected 'sd15' or 'sdxl', got {model!r}")
    return grid_from_diffusers_timesteps(table[model], T=1000)


def as_grid(grid: GridLike, T: int) -> np.ndarray | jax.Array:
    """``None`` -> every step ``0..T``; otherwise validated and returned with an integer dtype.

    Every function that takes a grid passes it through here. A concrete array of integer dtype
    is returned as is (an integer sequence as a NumPy array); a real-valued one whose entries are all integers (``np.linspace(0, 1000,
    51)``) is converted exactly to ``int64``; fractional values are refused
    (:func:`pifs_jax._validation.check_grid`). A traced grid (a jit argument) passes through,
    its dtype checked to be integer.

    Args:
      grid: the sampling grid ``0 = tau_0 < tau_1 < ... < tau_N <= T`` (an array or a sequence of
        integers, possibly traced), or ``None``.
      T: the schedule's number of training steps.

    Returns:
      the grid with an integer dtype: ``np.arange(T + 1)`` for ``None``, a NumPy or JAX array
      otherwise.

    Raises:
      ArgumentError: naming ``grid`` for an invalid grid (not increasing integers from 0 to at most
        ``T``, or fractional values).
    """
    if grid is None:
        return np.arange(T + 1)
    check_grid(grid, T)
    if is_concrete(grid) and not np.issubdtype(np.asarray(grid).dtype, np.integer):
        return np.asarray(grid).astype(np.int64)  # integer-valued floats (checked above): exact
    return grid if isinstance(grid, np.ndarray | jax.Array) else np.asarray(grid)  # a sequence: as an array

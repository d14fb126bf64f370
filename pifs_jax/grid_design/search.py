"""Grids by search: GITS's dynamic programme and the oracle coordinate search on the final error.

**GITS** (Chen et al. 2024, "On the Trajectory Regularity of ODE-based Diffusion Sampling"): a
fine teacher grid of ``M`` steps (here time-uniform, as the authors' diffusers path sets it with
``set_timesteps``), teacher trajectories of the first-order solver on it from ``R`` noises, and the
cost of one coarse step from teacher point ``i`` to teacher point ``j``,
``C[i, j] = mean_r ||Phi_{t_i -> t_j}(x_i^r) - x_j^r||_2`` (one denoiser call at ``x_i`` serves every
``j``: the DDIM step is affine in the prediction). A dynamic programme picks the ``N - 1`` coarse
steps from ``t_M = T`` down to the teacher's smallest non-zero time minimising
``C[i_1, i_2] + c C[i_2, i_3] + c^2 ...`` (the authors' recursion
``V[j][k] = min_i C[j, i] + c V[i][k - 1]``, ``V[i][1] = C[i, last]``); the final step onto
``sigma = 0`` is not costed. ``c`` is the authors' ``coeff`` (their code writes grids for
``0.8 .. 1.2``); the package's default is ``1.0`` (plain sum of one-step errors) and the record
states it. For a second-order solver the same (first-order) grid is used, as the authors do.

**Oracle** (:func:`coordinate_search`): the upper bound of what a grid can do on the evaluation
metric itself: starting from a grid, each interior point in turn is moved to the best of a set of
candidate integers between its neighbours (evenly spaced ones and local moves ``+-1, 2, 4, ...``),
judged by the mean RMSE to the reference on the design seeds; sweeps repeat until none improves.
Every candidate costs ``NFE x R`` network evaluations, all counted. With ``fractions`` the
candidates are instead the moves of each point toward either neighbour by those fractions of the
gap (scale-free local moves: the refinement of :mod:`pifs_jax.grid_design.refined`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from pifs_jax._validation import check_fraction, check_positive_float, check_positive_int
from pifs_jax.errors import ArgumentError
from pifs_jax.grid_design.evaluation import DEFAULT_CHUNK, mean_grid_error
from pifs_jax.grid_design.fixed import fixed_grid
from pifs_jax.grid_design.geometric import recorded_ddim_chain
from pifs_jax.samplers import DDIM, Sampler, step_tables
from pifs_jax.schedules import Schedule
from pifs_jax.typing import EpsFn

__all__ = ["SearchResult", "coordinate_search", "gits_grid"]


class SearchResult(NamedTuple):
    """A searched grid and what it cost."""

    grid: np.ndarray
    history: list[float]
    """The objective after each sweep (oracle) or the DP's optimal cost (GITS)."""
    network_evaluations: int
    seconds: float


@eqx.filter_jit
def _teacher(eps_fn: EpsFn, a: jax.Array, b: jax.Array, t: jax.Array, x_T: jax.Array):
    """Teacher states and predictions at fine points ``M, ..., 1``, batched over ``x_T``."""
    deltas = jnp.zeros((a.shape[0], *x_T.shape[1:]), x_T.dtype)
    return jax.vmap(lambda x: recorded_ddim_chain(eps_fn, a, b, t, x, deltas))(x_T)


def gits_grid(
    eps_fn: EpsFn,
    sched: Schedule,
    num_steps: int,
    x_T: Any,
    *,
    teacher_steps: int = 100,
    coeff: float = 1.0,
) -> SearchResult:
    """GITS's grid (module docstring) from teacher trajectories started at the noises ``x_T`` ``(R,) + shape``.

    Args:
      eps_fn: the denoiser of one sample.
      sched: its schedule.
      num_steps: ``N``, the steps of the grid.
      x_T: the noises of the ``R`` teacher trajectories, shape ``(R,) + sample_shape``.
      teacher_steps: ``M``, the steps of the time-uniform teacher grid, in ``[num_steps, T]``; default 100.
      coeff: the authors' ``c`` (positive); default 1.0.

    Returns:
      :class:`SearchResult`: the int64 grid of shape ``(N+1,)`` (``tau_0 = 0`` and ``N`` teacher times,
      ``tau_N = T``), the dynamic programme's optimal cost as the one entry of ``history``, ``R M`` network
      evaluations and the seconds taken.

    Raises:
      ArgumentError: naming ``num_steps``, ``teacher_steps``, ``coeff`` or ``x_T`` (fewer than two axes).
    """
    num_steps = check_positive_int(num_steps, name="num_steps")
    teacher_steps = check_positive_int(teacher_steps, name="teacher_steps")
    if not num_steps <= teacher_steps <= sched.T:
        raise ArgumentError(
            "teacher_steps", f"expected num_steps = {num_steps} <= teacher_steps <= T = {sched.T}, got {teacher_steps}"
        )
    coeff = check_positive_float(coeff, name="coeff")
    x_T = jnp.asarray(x_T)
    if x_T.ndim < 2:
        raise ArgumentError("x_T", f"expected a batch of noises (R, ...), got shape {x_T.shape}")
    start = time.perf_counter()
    teacher = fixed_grid(sched, teacher_steps, "time_uniform")
    tab = step_tables(sched, teacher)
    a, b, t = (jnp.asarray(v[::-1]) for v in (tab.a, tab.b, tab.t))
    _, (states, eps) = _teacher(eps_fn, a.astype(x_T.dtype), b.astype(x_T.dtype), t.astype(jnp.int32), x_T)
    # order points from t_M = T (index 0) down to t_1 (index M - 1), as the authors do
    states = np.asarray(states, np.float64).reshape(x_T.shape[0], teacher_steps, -1)
    eps = np.asarray(eps, np.float64).reshape(x_T.shape[0], teacher_steps, -1)
    times = teacher[1:][::-1]
    log_ab = np.asarray(sched.log_alpha_bar, np.float64)
    m = teacher_steps
    sigma = np.sqrt(-np.expm1(log_ab[times]))
    cost = np.full((m, m), np.inf)
    for i in range(m - 1):  # one row: the DDIM step from teacher point i to every later point j at once
        j = np.arange(i + 1, m)
        ratio = np.exp((log_ab[times[j]] - log_ab[times[i]]) / 2)[None, :, None]  # a = sqrt(ab_s / ab_t)
        coeff_b = (sigma[j] - np.exp((log_ab[times[j]] - log_ab[times[i]]) / 2) * sigma[i])[None, :, None]
        x_next = ratio * states[:, i : i + 1] + coeff_b * eps[:, i : i + 1]
        cost[i, j] = np.mean(np.linalg.norm(x_next - states[:, j], axis=2), axis=0)
    path, best = _dynamic_programme(cost, num_steps, float(coeff))
    grid = np.concatenate([[0], np.sort(times[path])]).astype(np.int64)
    return SearchResult(grid, [best], int(x_T.shape[0] * m), time.perf_counter() - start)


def _dynamic_programme(cost: np.ndarray, num_steps: int, coeff: float) -> tuple[list[int], float]:
    """The authors' recursion: ``num_steps`` points from index 0 to the last index (``num_steps - 1`` costed steps)."""
    m = cost.shape[0]
    last = m - 1
    if num_steps == 1:
        return [0], 0.0
    k_max = num_steps - 1
    value = np.full((m, k_max + 1), np.inf)
    value[:, 1] = cost[:, last]
    value[last, 1] = np.inf
    for k in range(2, k_max + 1):
        for j in range(m - 1):
            candidates = cost[j, j + 1 : last] + coeff * value[j + 1 : last, k - 1]
            if candidates.size:
                value[j, k] = np.min(candidates)
    path, w = [0], 0
    for k in range(k_max, 1, -1):
        nxt = w + 1 + int(np.argmin(cost[w, w + 1 : last] + coeff * value[w + 1 : last, k - 1]))
        path.append(nxt)
        w = nxt
    path.append(last)
    return path, float(value[0, k_max])


def coordinate_search(
    eps_fn: EpsFn,
    sched: Schedule,
    x_T: Any,
    reference: Any,
    init: Any,
    *,
    sampler: Sampler | None = None,
    max_sweeps: int = 4,
    spread: int = 8,
    fractions: Sequence[float] | None = None,
    known_scores: dict[tuple[int, ...], float] | None = None,
    chunk: int = DEFAULT_CHUNK,
    progress: Callable[[str], Any] | None = None,
    trim: float = 0.0,
) -> SearchResult:
    """Coordinate search of the integer grid on the mean RMSE to ``reference`` (module docstring).

    Args:
      x_T: noises ``(R,) + shape``; ``reference``: their target solutions.
      init: the starting integer grid (its length fixes ``N``).
      max_sweeps: sweeps over the interior points (stops early when a sweep improves nothing).
      spread: evenly spaced candidates between the neighbours (the oracle's set, with the local
        moves ``+-1, 2, 4, 8, 16``).
      fractions: instead of the oracle's set, move point ``i`` toward ``tau_{i-1}`` by
        ``round(f (tau_i - tau_{i-1}))`` and toward ``tau_{i+1}`` by ``round(f (tau_{i+1} - tau_i))``
        (at least 1) for each ``f`` in ``fractions`` (each in ``(0, 1)``).
      known_scores: grid (tuple of ints) -> objective already computed on these noises and this
        reference; read and extended in place, their evaluations not counted again.
      trim: score each grid by the mean without this fraction of its largest per-seed errors
        (:func:`~pifs_jax.grid_design.trimmed_mean`); default 0, the plain mean.

    Returns:
      :class:`SearchResult`: the grid, the objective after each sweep, and the network evaluations
      of the grids scored here.
    """
    sampler = DDIM() if sampler is None else sampler
    max_sweeps = check_positive_int(max_sweeps, name="max_sweeps")
    spread = check_positive_int(spread, name="spread")
    trim = check_fraction(trim, name="trim")
    if fractions is not None:
        fractions = tuple(float(f) for f in fractions)
        if not fractions or not all(0.0 < f < 1.0 for f in fractions):
            raise ArgumentError("fractions", f"expected fractions of a gap in (0, 1), got {fractions}")
    grid = np.asarray(init, np.int64).copy()
    reference = np.asarray(reference, np.float64)
    start = time.perf_counter()
    evaluations = 0
    nfe = sampler.nfe(grid.shape[0] - 1)
    cache: dict[tuple[int, ...], float] = {} if known_scores is None else known_scores

    def objective(g: np.ndarray) -> float:
        nonlocal evaluations
        key = tuple(int(v) for v in g)
        if key not in cache:
            cache[key] = mean_grid_error(eps_fn, sched, g, x_T, reference, sampler=sampler, chunk=chunk, trim=trim)
            evaluations += nfe * int(np.shape(x_T)[0])
        return cache[key]

    best = objective(grid)
    history = [best]
    for sweep in range(max_sweeps):
        improved = False
        for i in range(1, grid.shape[0] - 1):
            lo, hi = int(grid[i - 1]) + 1, int(grid[i + 1]) - 1
            if hi <= lo:
                continue
            here = int(grid[i])
            if fractions is None:
                local = {here + d for r in (1, 2, 4, 8, 16) for d in (-r, r)}
                moves = local | set(np.unique(np.round(np.linspace(lo, hi, spread)).astype(int)).tolist())
            else:
                below, above = here - int(grid[i - 1]), int(grid[i + 1]) - here
                moves = {here - max(1, round(f * below)) for f in fractions}
                moves |= {here + max(1, round(f * above)) for f in fractions}
            for c in sorted(v for v in moves if lo <= v <= hi and v != here):
                trial = grid.copy()
                trial[i] = c
                value = objective(trial)
                if value < best - 1e-12:
                    best, grid, improved = value, trial, True
        history.append(best)
        if progress is not None:
            progress(f"sweep {sweep + 1}: mean RMSE {best:.5f}")
        if not improved:
            break
    return SearchResult(grid, history, evaluations, time.perf_counter() - start)

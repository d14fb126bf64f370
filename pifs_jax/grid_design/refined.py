"""The default designed grid: the measured geometry's grid, refined at a small cost (docs/theory.md section 12).

The geometric grid (:mod:`pifs_jax.grid_design.geometric`) places steps by a local-error model
whose order is an assumption: along a trained model's trajectory the effective order of a solver is
not known beforehand (DPM-Solver++(2M)'s second differences are too noisy to measure it). The
refined grid keeps everything the measurement gives and settles the rest on the design seeds,
with no reference solution beyond what the measurement already computed:

1. measure the geometry along ``R_m`` fine DDIM trajectories, the first ``R_m`` of the ``R`` design
   seeds (``R_m M (1 + 2P)`` network evaluations, ``P = 1`` probe by default: :data:`DEFAULT_PROBES`;
   ``R_m = R`` unless ``measure_seeds`` says otherwise);
2. the **target** of each design seed is the design solver's own solution on the same fine grid
   (for DDIM on the measured seeds that is the measured chain itself, at no cost; otherwise
   ``NFE(M)`` evaluations per seed): a solution far more accurate than any ``N``-step one, made by
   the solver the grid is for;
3. the **start** is the best, by mean RMSE to the target, of the measured-density grids of
   effective orders ``p`` in ``orders`` (``g^(1/(p+1))``; ``p = 1`` is the geometric grid) and
   of the field's fixed grids in ``fixed`` (:func:`pifs_jax.grid_design.fixed_grid`): where one of
   those is already close to the best a grid can do (DPM-Solver++(2M) on the 8x8 digits model
   with the quadratic spacing), the refinement starts from it instead of a worse measured grid;
4. one sweep of scale-free local moves (each interior point toward either neighbour by ``1/8``,
   ``1/4``, ``1/2`` of the gap, :func:`pifs_jax.grid_design.coordinate_search` with ``fractions``),
   kept only where the mean RMSE to the target drops.

Every scored grid costs ``NFE(N) x R`` evaluations, all counted (no grid is scored twice).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from pifs_jax._validation import check_fraction, check_positive_float, check_positive_int
from pifs_jax.errors import ArgumentError
from pifs_jax.grid_design.evaluation import mean_grid_error, run_grid
from pifs_jax.grid_design.fixed import FIXED_GRIDS, fixed_grid
from pifs_jax.grid_design.geometric import GeometryMeasurement, geometric_grid, measure_geometry
from pifs_jax.grid_design.search import coordinate_search
from pifs_jax.samplers import DDIM, Sampler
from pifs_jax.schedules import Schedule
from pifs_jax.typing import EpsFn

__all__ = [
    "DEFAULT_FIXED_STARTS",
    "DEFAULT_FRACTIONS",
    "DEFAULT_ORDERS",
    "DEFAULT_PROBES",
    "RefinedResult",
    "refined_grid",
]

#: Effective orders whose measured-density grids compete for the start (``p = 1``: the geometric grid).
DEFAULT_ORDERS = (0.5, 1.0, 1.5, 2.0, 3.0)
#: The field's fixed grids that compete for the start beside them (:func:`pifs_jax.grid_design.fixed_grid` kinds).
DEFAULT_FIXED_STARTS = ("time_uniform", "quadratic_to_T", "logsnr_uniform", "edm", "kl_optimal")
#: Random probes per trajectory of the refined grid's measurement (the geometric grid's own default is 2):
#: the probes only shape the measured-density starts, which the design seeds then judge; one probe
#: costs ``R M`` evaluations less (theory section 12: settled on prototype seeds 99).
DEFAULT_PROBES = 1
#: Local moves of the refinement, as fractions of the gap to each neighbour.
DEFAULT_FRACTIONS = (0.125, 0.25, 0.5)


class RefinedResult(NamedTuple):
    """The refined grid and how it was reached."""

    grid: np.ndarray
    start: np.ndarray
    """The grid the refinement started from (the best competing start)."""
    start_name: str
    """The name of that start, ``"order p"`` for a measured-density grid or else a fixed grid's kind."""
    start_order: float | None
    """The effective order ``p`` of that start (``None`` when a fixed grid won)."""
    start_scores: dict[str, float]
    """Mean RMSE to the target of each competing start on the design seeds, by name."""
    history: list[float]
    """Mean RMSE to the target after each sweep, the start first."""
    measurement: GeometryMeasurement
    network_evaluations: int
    seconds: float


def refined_grid(
    eps_fn: EpsFn,
    sched: Schedule,
    x_T: Any,
    num_steps: int,
    *,
    sampler: Sampler | None = None,
    fine_steps: int = 100,
    probes: int = DEFAULT_PROBES,
    key: jax.Array | None = None,
    orders: Sequence[float] = DEFAULT_ORDERS,
    fixed: Sequence[str] = DEFAULT_FIXED_STARTS,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    sweeps: int = 1,
    measure_seeds: int | None = None,
    trim: float = 0.0,
) -> RefinedResult:
    """The refined grid of ``num_steps`` steps for ``sampler`` (module docstring).

    Args:
      eps_fn: the denoiser of one sample.
      sched: its schedule.
      x_T: design noises ``(R,) + sample_shape`` (16 is the package's choice: the measurement is a
        mean, the refinement a comparison of grids on the same seeds).
      num_steps: ``N``.
      sampler: the solver the grid is for; default ``DDIM()``.
      fine_steps, probes, key: of :func:`~pifs_jax.grid_design.measure_geometry` (``probes``: default
        :data:`DEFAULT_PROBES`, one fewer than the geometric grid's).
      orders: effective orders of the competing measured-density starts (each > 0; at least one).
      fixed: kinds of :func:`~pifs_jax.grid_design.fixed_grid` competing for the start too (may be empty).
      fractions: local moves of the refinement (each in ``(0, 1)``).
      sweeps: sweeps of local moves (stops early when one improves nothing).
      measure_seeds: measure the geometry on the first ``measure_seeds`` noises of ``x_T`` only (at
        most ``R``; default all), to spend design seeds on the search rather than on the
        measurement; the other noises' DDIM targets then cost ``NFE(M)`` evaluations each. (Theory
        section 12: 32 seeds measured on 8 helped the UNet with DPM-Solver++ at 5 steps and hurt the
        DiTs, so it is not the default.)
      trim: score every grid (the starts and the search) by the mean RMSE to the target without
        this fraction of its largest per-seed errors (:func:`~pifs_jax.grid_design.trimmed_mean`;
        ``floor(trim R)`` seeds left out); default 0, the plain mean. (Theory section 12:
        ``trim = 1/8`` mended a search decided by one outlying seed, lost 7-13 % with
        DPM-Solver++(2M) at 20 steps, and is not the default.)

    Returns:
      :class:`RefinedResult`.
    """
    sampler = DDIM() if sampler is None else sampler
    num_steps = check_positive_int(num_steps, name="num_steps")
    sweeps = check_positive_int(sweeps, name="sweeps")
    trim = check_fraction(trim, name="trim")
    orders = tuple(check_positive_float(p, name="orders") for p in orders)
    if not orders:
        raise ArgumentError("orders", "expected at least one effective order")
    if isinstance(fixed, str):
        raise ArgumentError("fixed", f"expected a sequence of fixed_grid kinds, got the string {fixed!r}")
    fixed = tuple(fixed)
    unknown = [kind for kind in fixed if kind not in FIXED_GRIDS]
    if unknown:
        raise ArgumentError("fixed", f"expected kinds of fixed_grid ({', '.join(FIXED_GRIDS)}), got {unknown}")
    start_time = time.perf_counter()
    x_T = jnp.asarray(x_T)
    seeds = int(x_T.shape[0]) if x_T.ndim else 0
    measured = seeds if measure_seeds is None else check_positive_int(measure_seeds, name="measure_seeds")
    if measured > seeds:
        raise ArgumentError("measure_seeds", f"expected at most the {seeds} noises of x_T, got {measured}")
    measurement = measure_geometry(eps_fn, sched, x_T[:measured], fine_steps=fine_steps, probes=probes, key=key)
    evaluations = measurement.network_evaluations
    fine_nfe = sampler.nfe(len(measurement.times) - 1)
    if isinstance(sampler, DDIM) and not sampler.stochastic and measurement.fine_solution is not None:
        target = measurement.fine_solution  # the measured chain itself: free for the measured seeds
        if measured < seeds:
            rest = run_grid(eps_fn, sched, measurement.times, x_T[measured:], sampler=sampler)
            target = np.concatenate([target, np.asarray(rest, target.dtype)])
            evaluations += (seeds - measured) * fine_nfe
    else:
        target = run_grid(eps_fn, sched, measurement.times, x_T, sampler=sampler)
        evaluations += seeds * fine_nfe
    scores: dict[tuple[int, ...], float] = {}  # every grid scored here, shared with the search
    candidates = {f"order {p:g}": geometric_grid(measurement, num_steps, order=p) for p in orders}
    candidates |= {kind: fixed_grid(sched, num_steps, kind) for kind in fixed}
    start_scores: dict[str, float] = {}
    for name, candidate in candidates.items():
        grid_key = tuple(int(v) for v in candidate)
        if grid_key not in scores:
            scores[grid_key] = mean_grid_error(eps_fn, sched, candidate, x_T, target, sampler=sampler, trim=trim)
            evaluations += int(x_T.shape[0]) * sampler.nfe(num_steps)
        start_scores[name] = scores[grid_key]
    start_name = min(candidates, key=start_scores.__getitem__)  # the first listed on a tie: an order
    start = candidates[start_name]
    start_order = next((p for p in orders if f"order {p:g}" == start_name), None)
    search = coordinate_search(
        eps_fn, sched, x_T, target, start, sampler=sampler, max_sweeps=sweeps, fractions=fractions,
        known_scores=scores, trim=trim,
    )  # fmt: skip
    evaluations += search.network_evaluations
    return RefinedResult(
        np.asarray(search.grid, np.int64), np.asarray(start, np.int64), start_name, start_order, start_scores,
        search.history,
        measurement, int(evaluations), time.perf_counter() - start_time,
    )  # fmt: skip

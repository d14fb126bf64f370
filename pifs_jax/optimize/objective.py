"""The three design criteria (docs/theory.md section 8) as one loss: :func:`schedule_objective`.

``loss = w_1 (-log softmin_t L*_t) + w_2 CV(Delta d)^2 + w_3 CV(W)^2``: criterion 1 in nats
(scale-free, so it mixes with the others), criterion 2 as ``CV(Delta d)^2`` (or ``CV(IG)^2``),
criterion 3 as ``CV(W)^2`` on a ``num_steps``-step uniform grid.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from pifs_jax._validation import check_positive_int, describe
from pifs_jax.criteria import WORK_KINDS, growth_balance, weakest_link, workload
from pifs_jax.errors import ArgumentError
from pifs_jax.grids import uniform_grid
from pifs_jax.schedules import Schedule
from pifs_jax.typing import GridLike

__all__ = [
    "CRITERIA",
    "DEFAULT_SIZES",
    "DEFAULT_VARIANCES",
    "GROWTH_MEASURES",
    "ScheduleObjective",
    "criterion_name",
    "schedule_objective",
]

#: The three design criteria (docs/theory.md section 8), as accepted by :func:`schedule_objective`.
CRITERIA = ("weakest_link", "balanced_growth", "workload")
#: What criterion 2 balances, ``Delta d_t`` (``"growth"``) or ``IG_t`` (``"information"``).
GROWTH_MEASURES = ("growth", "information")

#: Default patch variances and sizes for criterion 2 (one contracting, one expanding 8x8x3 patch).
DEFAULT_VARIANCES = (0.5, 2.0)
DEFAULT_SIZES = (192.0, 192.0)


def criterion_name(name: str) -> str:
    """Canonical criterion name: ``"weakest-link"`` and ``"weakest_link"`` both give ``"weakest_link"``.

    Args:
      name: a criterion's name, in any case, with hyphens or underscores (surrounding spaces ignored).

    Returns:
      the name in :data:`CRITERIA` (lower case, underscores).

    Raises:
      ArgumentError: naming ``criterion`` for an unknown name.
    """
    canonical = str(name).strip().lower().replace("-", "_")
    if canonical not in CRITERIA:
        raise ArgumentError(
            "criterion",
            f"unknown criterion {name!r}; expected one of {', '.join(c.replace('_', '-') for c in CRITERIA)}",
        )
    return canonical


def schedule_objective(
    weights: Mapping[str, float],
    *,
    grid: GridLike = None,
    variances: Any = DEFAULT_VARIANCES,
    sizes: Any = DEFAULT_SIZES,
    temperature: float = 0.05,
    growth_measure: str = "growth",
    num_steps: int = 10,
    work_kind: str = "inverse_threshold",
) -> ScheduleObjective:
    """A weighted combination of the criteria as a loss to minimise: ``objective(sched) -> (loss, metrics)``.

    ``loss = w_1 (-log softmin_t L*_t) + w_2 CV(Delta d)^2 + w_3 CV(W)^2`` for the criteria named in
    ``weights`` (:data:`CRITERIA`; ``"weakest-link"`` spelling accepted). ``metrics`` holds ``loss``
    and each criterion's readable value: ``weakest_link`` (soft-min ``L*``), ``min_lstar`` (exact
    minimum), ``balanced_growth`` (the CV), ``workload`` (the CV).

    Args:
      weights: criterion -> non-negative finite weight (at least one positive).
      grid: sampling grid for criteria 1 and 2 (``None`` = every training step).
      variances, sizes: patch variances and sizes for criterion 2.
      temperature: soft-min temperature of criterion 1 (nats of ``L*``).
      growth_measure: ``"growth"`` (``Delta d``) or ``"information"`` (``IG``) for criterion 2.
      num_steps: criterion 3 is evaluated on ``uniform_grid(T, num_steps)``.
      work_kind: one of :data:`~pifs_jax.criteria.WORK_KINDS`.

    Returns:
      A :class:`ScheduleObjective`: pure, jittable ``objective(sched)``, equal to any other built
      with the same settings.
    """
    if not isinstance(weights, Mapping) or not weights:
        raise ArgumentError("weights", f"expected a non-empty mapping criterion -> weight, got {weights!r}")
    canonical: dict[str, float] = {}
    for key, value in weights.items():
        name = criterion_name(key)
        value = float(value)
        if not (math.isfinite(value) and value >= 0):
            raise ArgumentError("weights", f"weight of {name!r} must be finite and >= 0, got {value!r}")
        canonical[name] = canonical.get(name, 0.0) + value
    if not any(v > 0 for v in canonical.values()):
        raise ArgumentError("weights", f"at least one weight must be > 0, got {weights!r}")
    if growth_measure not in GROWTH_MEASURES:
        raise ArgumentError("growth_measure", f"expected one of {', '.join(GROWTH_MEASURES)}, got {growth_measure!r}")
    if work_kind not in WORK_KINDS:
        raise ArgumentError("work_kind", f"expected one of {', '.join(WORK_KINDS)}, got {work_kind!r}")
    if not (np.isfinite(temperature) and temperature > 0):
        raise ArgumentError("temperature", f"must be finite and > 0, got {temperature!r}")
    num_steps = check_positive_int(num_steps, name="num_steps")
    if "balanced_growth" in canonical:
        lam = np.asarray(variances, dtype=np.float64)
        n = np.asarray(sizes, dtype=np.float64)
        if lam.ndim != 1 or lam.size == 0 or not np.all(np.isfinite(lam)) or np.any(lam < 0):
            raise ArgumentError(
                "variances", f"expected finite non-negative patch variances of shape (m,), got {describe(lam)}"
            )
        if n.shape != lam.shape or not np.all(np.isfinite(n)) or np.any(n <= 0):
            raise ArgumentError("sizes", f"expected positive patch sizes of shape {lam.shape}, got {describe(n)}")
        variances, sizes = tuple(lam.tolist()), tuple(n.tolist())

    if grid is not None:
        grid = tuple(int(v) for v in np.asarray(grid).tolist())
    return ScheduleObjective(
        tuple(canonical.items()),
        grid,
        tuple(float(v) for v in np.ravel(variances)),
        tuple(float(v) for v in np.ravel(sizes)),
        float(temperature),
        growth_measure,
        num_steps,
        work_kind,
    )


class ScheduleObjective(NamedTuple):
    """The weighted criteria of :func:`schedule_objective` as a value: ``objective(sched) -> (loss, metrics)``.

    A NamedTuple of plain settings, so two objectives built with the same settings compare (and
    hash) equal: the optimiser's compiled update is then reused across runs in one process.
    """

    weights: tuple[tuple[str, float], ...]
    """``(criterion, weight)`` pairs."""
    grid: tuple[int, ...] | None
    """Sampling grid for criteria 1 and 2 (``None`` = every training step)."""
    variances: tuple[float, ...]
    """Patch variances for criterion 2."""
    sizes: tuple[float, ...]
    """Patch sizes for criterion 2."""
    temperature: float
    """Soft-min temperature of criterion 1 (nats of ``L*``)."""
    growth_measure: str
    """``"growth"`` (``Delta d``) or ``"information"`` (``IG``) for criterion 2."""
    num_steps: int
    """Criterion 3 is evaluated on ``uniform_grid(T, num_steps)``."""
    work_kind: str
    """One of :data:`~pifs_jax.criteria.WORK_KINDS`."""

    def __call__(self, sched: Schedule) -> tuple[jax.Array, dict[str, jax.Array]]:
        weights = dict(self.weights)
        grid = None if self.grid is None else np.asarray(self.grid)
        loss = jnp.zeros((), sched.dtype)
        metrics: dict[str, jax.Array] = {}
        if "weakest_link" in weights:
            wl = weakest_link(sched, grid, temperature=self.temperature)
            loss = loss + weights["weakest_link"] * -jnp.log(wl.soft_min)
            metrics["weakest_link"] = wl.soft_min
            metrics["min_lstar"] = wl.min
        if "balanced_growth" in weights:
            lam = jnp.asarray(self.variances, sched.dtype)
            gb = growth_balance(sched, lam, jnp.asarray(self.sizes, sched.dtype), grid)
            cv = gb.cv_growth if self.growth_measure == "growth" else gb.cv_information
            loss = loss + weights["balanced_growth"] * cv**2
            metrics["balanced_growth"] = cv
        if "workload" in weights:
            wk = workload(sched, uniform_grid(sched.T, self.num_steps), kind=self.work_kind)
            loss = loss + weights["workload"] * wk.cv**2
            metrics["workload"] = wk.cv
        metrics["loss"] = loss
        return loss, metrics

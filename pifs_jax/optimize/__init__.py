"""Schedule and sampling-grid design by gradient descent on the criteria of :mod:`pifs_jax.criteria`.

Modules, in the optax style (factories return callables, states are NamedTuples):

- :mod:`~pifs_jax.optimize.families`: :func:`schedule_family`, a constrained learnable family
  and the parameters that start it from an existing schedule; :func:`fit_to_schedule`.
- :mod:`~pifs_jax.optimize.objective`: :func:`schedule_objective`, the weighted criteria as
  ``objective(sched) -> (loss, metrics)`` (a :class:`ScheduleObjective` value).
- :mod:`~pifs_jax.optimize.schedule_optimizer`: :func:`optimize_schedule`.
- :mod:`~pifs_jax.optimize.grid_optimizer`: :func:`optimize_grid` (criterion 3 over the grid).
- :mod:`~pifs_jax.optimize.diagnostics`: :func:`schedule_warnings`, the degeneracy test of a
  result (:func:`stalled_fraction`), and :func:`fit_error` of a family's starting point.
- :mod:`~pifs_jax.optimize.engine`: the compiled update, the optimiser's checkpoints
  (``<checkpoint_dir>/checkpoint.msgpack``, :mod:`pifs_jax.checkpoint`) and the run
  (:func:`pifs_jax.loop.run_loop`); a resumed run reproduces the uninterrupted one bit for bit.

:func:`round_grid` and :func:`grid_to_diffusers_timesteps` live in :mod:`pifs_jax.grids`.

Example:
  >>> family, params = schedule_family("spline", 1000, start=cosine(1000))
  >>> objective = schedule_objective({"weakest_link": 1.0, "balanced_growth": 1.0})
  >>> result = optimize_schedule(family, params, objective, iterations=500, checkpoint_dir="ckpt")
  >>> result.schedule, result.history["loss"][-1]
"""

from pifs_jax.grids import grid_to_diffusers_timesteps, round_grid
from pifs_jax.optimize.diagnostics import (
    MAX_STALLED_FRACTION,
    STALL_TOLERANCE,
    fit_error,
    schedule_warnings,
    stalled_fraction,
)
from pifs_jax.optimize.engine import (
    CHECKPOINT_FILE,
    Diverged,
    OptimizerState,
    check_checkpoint_dir,
    compiled_update_count,
    load_checkpoint,
    save_checkpoint,
)
from pifs_jax.optimize.families import FAMILIES, fit_to_schedule, schedule_family
from pifs_jax.optimize.grid_optimizer import GridResult, optimize_grid
from pifs_jax.optimize.objective import (
    CRITERIA,
    DEFAULT_SIZES,
    DEFAULT_VARIANCES,
    GROWTH_MEASURES,
    ScheduleObjective,
    criterion_name,
    schedule_objective,
)
from pifs_jax.optimize.schedule_optimizer import OptimizeResult, optimize_schedule

__all__ = [
    "CHECKPOINT_FILE",
    "CRITERIA",
    "DEFAULT_SIZES",
    "DEFAULT_VARIANCES",
    "FAMILIES",
    "GROWTH_MEASURES",
    "MAX_STALLED_FRACTION",
    "STALL_TOLERANCE",
    "Diverged",
    "GridResult",
    "OptimizeResult",
    "OptimizerState",
    "ScheduleObjective",
    "check_checkpoint_dir",
    "compiled_update_count",
    "criterion_name",
    "fit_error",
    "fit_to_schedule",
    "grid_to_diffusers_timesteps",
    "load_checkpoint",
    "optimize_grid",
    "optimize_schedule",
    "round_grid",
    "save_checkpoint",
    "schedule_family",
    "schedule_objective",
    "schedule_warnings",
    "stalled_fraction",
]

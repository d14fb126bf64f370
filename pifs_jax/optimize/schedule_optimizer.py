"""Schedule design: minimise a criteria objective over a learnable family's parameters with optax.

:func:`optimize_schedule` runs :func:`~pifs_jax.optimize.engine.run_optimization` on
``objective(family.apply(params))``; checkpoints, resume and compilation as described there.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from pifs_jax.errors import ArgumentError
from pifs_jax.learnable import LearnableSchedule
from pifs_jax.optimize.engine import OptimizerState, default_optimizer, run_optimization
from pifs_jax.optimize.objective import ScheduleObjective
from pifs_jax.schedules import Schedule

__all__ = ["OptimizeResult", "optimize_schedule"]


class _ScheduleLoss(NamedTuple):
    """``loss(params, _) = objective(apply(params))``, hashable by its two functions' identities.

    The loss is NaN where the schedule is not a valid one (a non-finite ``log alpha_bar`` or gap,
    or a gap ``g_t <= 0``, i.e. a ``beta_t`` outside ``(0, 1)``): the optimiser then reports a
    divergence instead of returning a schedule that cannot be exported.
    """

    apply: Callable
    objective: Callable

    def __call__(self, params: Any, data: Any):
        del data
        sched = self.apply(params)
        loss, metrics = self.objective(sched)
        valid = jnp.all(jnp.isfinite(sched.log_alpha_bar)) & jnp.all(jnp.isfinite(sched.gaps)) & jnp.all(sched.gaps > 0)
        loss = jnp.where(valid, loss, jnp.nan)
        return loss, ({**metrics, "loss": loss}, sched)


class OptimizeResult(NamedTuple):
    """Outcome of :func:`optimize_schedule`.

    Attributes:
      schedule: the optimised schedule ``family.apply(params)``.
      params: the optimised parameters.
      initial_schedule: ``family.apply`` of the starting parameters.
      initial: the objective's metrics at the start (floats).
      final: the objective's metrics at the end (floats).
      history: per iteration (before its update): ``loss`` and each metric, arrays of shape ``(iterations,)``.
      state: the final :class:`OptimizerState` (what the checkpoint holds).
      resumed_from: the step the run resumed from (0 for a fresh run).
    """

    schedule: Schedule
    params: Any
    initial_schedule: Schedule
    initial: dict[str, float]
    final: dict[str, float]
    history: dict[str, np.ndarray]
    state: OptimizerState
    resumed_from: int


def optimize_schedule(
    family: LearnableSchedule,
    params: Any,
    objective: Callable[[Schedule], tuple[jax.Array, dict[str, jax.Array]]],
    *,
    iterations: int = 500,
    learning_rate: float = 1e-2,
    optimizer: optax.GradientTransformation | None = None,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 100,
    resume: bool = False,
    progress: bool = True,
    callback: Callable[[int, dict[str, float]], Any] | None = None,
    run_config: Any = None,
) -> OptimizeResult:
    """Minimise ``objective(family.apply(params))`` over ``params`` with optax.

    Args:
      family: a :class:`~pifs_jax.learnable.LearnableSchedule` (:func:`schedule_family`).
      params: starting parameters (finite floats).
      objective: ``objective(sched) -> (loss, metrics)`` (:func:`schedule_objective`).
      iterations: total number of updates (a resumed run continues up to it).
      learning_rate: Adam's step size (ignored when ``optimizer`` is given). Not part of the
        run's identity: a resume may use another rate.
      optimizer: any optax ``GradientTransformation`` (default ``optax.adam(learning_rate)``).
      checkpoint_dir: folder for the checkpoint ``checkpoint.msgpack`` (``None``: no checkpoints).
      checkpoint_every: write it every this many updates, and at the end.
      resume: continue from the checkpoint in ``checkpoint_dir`` if there is one.
      progress: show a tqdm progress bar with the current loss.
      callback: ``callback(step, metrics)`` after every update (forces a device sync per step).
      run_config: JSON-able description of the run, stored in the checkpoint with the objective's
        settings and the optimiser (:func:`pifs_jax.checkpoint.save_checkpoint`); a resume with
        another is refused, naming the fields that differ (e.g. ``run_config.temperature``).

    Returns:
      :class:`OptimizeResult`.

    Raises:
      ArgumentError: non-finite ``params``, a non-finite objective at the start, bad
        ``iterations``/``learning_rate``/``checkpoint_every``, a missing, truncated, corrupted or
        incompatible checkpoint (``resume``; names the file and the problem), a ``checkpoint_dir``
        that is a file (checked before any iteration), or divergence (a
        :class:`~pifs_jax.optimize.engine.Diverged` naming ``learning_rate``, the iteration and the
        last finite objective; the checkpoint then holds that last finite iterate, so a resume
        with a smaller ``learning_rate`` continues from it).
    """
    if not isinstance(family, LearnableSchedule):
        raise ArgumentError(
            "family", f"expected a LearnableSchedule (see schedule_family), got {type(family).__name__}"
        )
    optimizer, optimizer_config = default_optimizer(optimizer, learning_rate)
    outcome = run_optimization(
        _ScheduleLoss(family.apply, objective),
        params,
        None,
        optimizer=optimizer,
        iterations=iterations,
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=checkpoint_every,
        resume=resume,
        progress=progress,
        callback=callback,
        config={
            "run_config": run_config,
            "objective": objective._asdict() if isinstance(objective, ScheduleObjective) else None,
            "optimizer": optimizer_config,
        },
        description="optimize schedule",
    )
    (initial, initial_schedule), (final, schedule) = outcome.initial, outcome.final
    return OptimizeResult(
        schedule,
        outcome.state.params,
        initial_schedule,
        initial,
        final,
        outcome.history,
        outcome.state,
        outcome.start,
    )

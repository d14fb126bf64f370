"""Checks of an optimised schedule before it is used: degeneracy (steps that waste the noise range).

An optimiser can satisfy a criterion with a schedule no one should sample with: weakest-link
alone (docs/theory.md section 8) drives the logSNR to its terminal value within the first few
percent of the steps and keeps it there, so most steps barely change the noise level.
:func:`stalled_fraction` measures this and :func:`schedule_warnings` turns it into a message.

The test, precisely: with ``lambda_t = logSNR_t`` for ``t = 1..T`` (monotone decreasing) and its
range ``R = lambda_1 - lambda_T``, step ``t`` is *stalled* when ``lambda_t`` lies within
``tolerance * R`` of an end value (``lambda_1 - lambda_t < tolerance R`` or
``lambda_t - lambda_T < tolerance R``). A schedule is *degenerate* when more than
``max_fraction`` of its ``T`` steps are stalled (defaults: ``tolerance = 0.05``,
``max_fraction = 0.25``). At ``T = 1000`` the stalled fractions are 0.004 (cosine), 0.052
(linear) and 0.055 (scaled linear); weakest-link alone from cosine gives about 0.94.
"""

from __future__ import annotations

import numpy as np

from pifs_jax.errors import ArgumentError
from pifs_jax.schedules import Schedule

__all__ = ["MAX_STALLED_FRACTION", "STALL_TOLERANCE", "fit_error", "schedule_warnings", "stalled_fraction"]

#: Fraction of the logSNR range within which a step counts as stalled at an end value.
STALL_TOLERANCE = 0.05
#: A schedule with more stalled steps than this fraction of ``T`` is degenerate.
MAX_STALLED_FRACTION = 0.25


def _check_schedule(sched: Schedule) -> np.ndarray:
    if not isinstance(sched, Schedule):
        raise ArgumentError("sched", f"expected a pifs_jax Schedule, got {type(sched).__name__}")
    return np.asarray(sched.log_snr, dtype=np.float64)[1:]


def stalled_fraction(sched: Schedule, *, tolerance: float = STALL_TOLERANCE) -> float:
    """Fraction of the steps ``t = 1..T`` whose logSNR lies within ``tolerance * R`` of an end value.

    ``R = logSNR_1 - logSNR_T``; step ``t`` is stalled when ``logSNR_1 - logSNR_t < tolerance R``
    or ``logSNR_t - logSNR_T < tolerance R`` (see the module docstring).

    Args:
      sched: a concrete schedule.
      tolerance: in ``(0, 0.5)``.

    Returns:
      The fraction in ``[0, 1]``.
    """
    if not (0 < tolerance < 0.5):
        raise ArgumentError("tolerance", f"must lie in (0, 0.5), got {tolerance!r}")
    log_snr = _check_schedule(sched)
    span = log_snr[0] - log_snr[-1]
    if not (np.isfinite(span) and span > 0):
        return 1.0
    stalled = (log_snr[0] - log_snr < tolerance * span) | (log_snr - log_snr[-1] < tolerance * span)
    return float(np.mean(stalled))


def schedule_warnings(
    sched: Schedule, *, tolerance: float = STALL_TOLERANCE, max_fraction: float = MAX_STALLED_FRACTION
) -> list[str]:
    """Messages for a schedule that is degenerate by the stalled-steps test (empty list: none).

    Args:
      sched: a concrete schedule.
      tolerance: see :func:`stalled_fraction`.
      max_fraction: the largest stalled fraction that is not degenerate.

    Returns:
      A list of one-line warnings.
    """
    fraction = stalled_fraction(sched, tolerance=tolerance)
    if fraction <= max_fraction:
        return []
    log_snr = _check_schedule(sched)
    T = len(log_snr)
    ends = f"logSNR_1 = {log_snr[0]:.3g}, logSNR_T = {log_snr[-1]:.3g}"
    at = {t: log_snr[t - 1] for t in sorted({max(1, T // 20), max(1, T // 10), max(1, T // 2)})}
    shown = ", ".join(f"logSNR_{t} = {v:.3g}" for t, v in at.items())
    return [
        f"degenerate schedule: {100 * fraction:.0f}% of the {T} steps have a logSNR within "
        f"{100 * tolerance:g}% of the range of an end value ({ends}; {shown}), more than the "
        f"{100 * max_fraction:g}% allowed; those steps barely change the noise level. Use a one-parameter "
        "family (cosine-offset, logsnr-shift) or weight the criterion with another"
    ]


def fit_error(fitted: Schedule, target: Schedule) -> float:
    """``max_t |logSNR_t(fitted) - logSNR_t(target)|`` over ``t = 1..T`` (nats).

    How far a learnable family's starting point is from the schedule it was fitted to.

    Args:
      fitted: the fitted schedule (concrete).
      target: the schedule it was fitted to, with the same ``T``.

    Returns:
      the largest absolute logSNR difference, in nats.

    Raises:
      ArgumentError: naming ``sched`` when either is not a pifs_jax schedule, ``target`` when the
        two have different ``T``.
    """
    a, b = _check_schedule(fitted), _check_schedule(target)
    if a.shape != b.shape:
        raise ArgumentError("target", f"has T = {b.shape[0]}, but fitted has T = {a.shape[0]}")
    return float(np.max(np.abs(a - b)))

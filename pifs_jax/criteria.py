"""The paper's three schedule-design criteria as differentiable objectives (docs/theory.md section 8).

Every function here is pure, runs under ``jax.jit`` and is differentiable with respect to the
schedule's leaves (and, for criterion 3, the continuous grid positions); inputs are validated at
the boundary when they are concrete.

1. **Weakest link** (:func:`weakest_link`): maximise ``min_t L*_t``. The exact minimum is
   reported beside a smooth soft-min that gradients go through. Note (exact, from the closed
   form): ``L*_i = (sigma_s + a_i sigma_t)/(1 + a_i)`` is a weighted mean of ``sigma_s`` and
   ``sigma_t``, so ``L*_i > sigma_{tau_{i-1}} >= sigma_{tau_1} > L*_1`` for every ``i >= 2``: the
   minimum *always* sits at the finest step, on every grid. Criterion 1 alone therefore only asks
   for noise early (a large ``sigma_{tau_1}``); within a family with fixed logSNR end points it
   pushes the schedule's whole early drop into the first training steps, and it is meant to be
   combined with another criterion (criteria 1 and 2 conflict, docs/theory.md section 8).
2. **Balanced dimension growth** (:func:`growth_balance`): the spread over steps of the per-step
   Kaplan-Yorke growth ``Delta d_t`` and of the information gain ``IG_t``
   (:func:`pifs_jax.geometry.dimension_growth`, :func:`pifs_jax.geometry.information_gain`).
3. **Balanced sampling workload** (:func:`workload`): the imbalance of the contraction work done
   by the steps of a sampling grid, defined on a continuous relaxation of the grid.

Definitions the paper leaves OPEN, and the choices made here (reasons in docs/theory.md section 8):

- *Soft-min* (criterion 1): ``softmin = -tau logsumexp(-x/tau)`` taken on ``x = log L*_t`` by
  default (``log_domain=True``), i.e. ``exp(softmin) = (sum_t L*_t^(-1/tau))^(-tau)``, a power mean
  that tends to ``min L*`` as ``tau -> 0`` and never exceeds it. ``L*`` spans three decades (about
  1e-3 at the finest step, about 1 at the end of the chain), so a temperature on the linear scale
  is either far below the minimum (a hard min) or blurs it with hundreds of steps (a biased
  min); in log space ``tau`` is relative (a step whose ``L*`` is ``e^(k tau)`` times the minimum
  has weight ``e^-k``). ``log_domain=False`` gives the literal ``-tau logsumexp(-L*/tau)``.
- *Spread* (criterion 2): the population coefficient of variation ``std/|mean|`` (scale-free,
  comparable across schedules) and the variance, over steps ``2..N``. The step landing on
  ``alpha_bar = 1`` is left out of both ``Delta d`` and ``IG``: its ``IG`` is infinite (it
  recovers continuous data exactly), and leaving it out of both keeps the two series over the
  same steps. ``CV(Delta d)`` does not depend on ``Delta d``'s normalisation
  ``1/(N |Lambda_{k*}|)`` (a common factor), so it is a smooth function of ``log f_t`` as long as
  the set of expanding patches does not change. ``CV(|Delta d|)`` (the paper's table) is reported
  too; the objective uses signed ``Delta d`` (``|.|`` has a kink at 0).
- *Contraction work* (criterion 3, :data:`WORK_KINDS`): each training step ``u = 1..T`` carries a
  work density ``w_u``; a sampling step ``tau_{i-1} -> tau_i`` does the work of the training steps
  it replaces, ``W_i = sum_{tau_{i-1} < u <= tau_i} w_u``. Default ``"inverse_threshold"``:
  ``w_u = 1/L*_u`` (the one-step thresholds of the full chain), i.e. ``W_i = integral of dt/L*(t)``
  over the step. Why: docs/theory.md asks for steps placed "where ``L*_t`` is smallest so each does an
  equal share of the contraction work (a step density governed by ``sigma_t``)"; a training step
  is the harder to contract the smaller its threshold (the denoiser must be ``1/L*_u``-times
  smoother than a unit-Lipschitz one), so ``1/L*_u ~ 1/sigma_u`` is its difficulty, and equal
  ``W_i`` gives exactly the step density ``1/L*(t) ~ 1/sigma_t``. It is measured in the training
  index ``t``, the time axis the network was trained on. Alternative ``"score_coefficient"``:
  ``w_u = |b_u| = (a_u - 1)/L*_u``, the score coefficient the full chain spends on the interval;
  it does not depend on how ``t`` is labelled (``sum_u |b_u| -> artanh(sigma_t) - artanh(sigma_s)``
  in the continuum) but puts most steps at high noise, against the theory's "where ``L*`` is
  smallest". The imbalance is the coefficient of variation of ``(W_1, ..., W_N)``.
- *Continuous relaxation* (criterion 3): grid positions are real times ``0 = t_0 < t_1 < ... <
  t_N <= T`` and the cumulative work ``W(t) = sum_{u <= t} w_u`` is interpolated linearly between
  integers (each training step's work spread evenly over its unit interval), so
  ``W_i = W(t_i) - W(t_{i-1})``. At integer times this *is* the discrete criterion (no
  relaxation gap), it is differentiable in both the schedule and the ``t_i``, and the balanced
  grid has a closed form, ``t_i = W^{-1}(i W(t_N)/N)`` (:func:`equal_work_times`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from pifs_jax._validation import check_finite, check_instance, check_positive_int, is_concrete
from pifs_jax.errors import ArgumentError
from pifs_jax.geometry import contraction_threshold, dimension_growth, information_gain, step_coefficients
from pifs_jax.grids import as_grid
from pifs_jax.schedules import Schedule
from pifs_jax.typing import GridLike

__all__ = [
    "WORK_KINDS",
    "GrowthBalance",
    "WeakestLink",
    "Workload",
    "coefficient_of_variation",
    "cumulative_work",
    "equal_work_times",
    "growth_balance",
    "step_work",
    "weakest_link",
    "work_density",
    "workload",
]

#: Definitions of the per-training-step contraction work ``w_u`` (criterion 3).
WORK_KINDS = ("inverse_threshold", "score_coefficient")


def coefficient_of_variation(x: Any, axis: int = -1) -> jax.Array:
    """Population coefficient of variation ``std(x) / |mean(x)|`` along ``axis``.

    Args:
      x: the values.
      axis: the axis to reduce.

    Returns:
      ``std(x) / |mean(x)|``, ``x``'s shape without ``axis``; 0 (not NaN) where every entry is 0,
      so that a degenerate series cannot poison a gradient (the derivative is that of
      ``std/|mean|`` elsewhere).
    """
    x = jnp.asarray(x)
    mean = jnp.mean(x, axis=axis)
    std = jnp.std(x, axis=axis)
    scale = jnp.abs(mean)
    safe = jnp.where(scale > 0, scale, 1.0)
    return jnp.where(scale > 0, std / safe, 0.0)


# ----------------------------------------------------------------------------- criterion 1


class WeakestLink(NamedTuple):
    """Criterion 1: the chain's weakest contraction threshold.

    Attributes:
      soft_min: the smooth minimum of ``L*_t`` that gradients go through (``<= min``).
      min: the exact ``min_t L*_t``.
      argmin: its step index (0 = the finest step; always 0, see the module notes).
      lstar: the per-step thresholds ``L*_t``, shape ``(N,)``.
    """

    soft_min: jax.Array
    min: jax.Array
    argmin: jax.Array
    lstar: jax.Array


def weakest_link(
    sched: Schedule, grid: GridLike = None, *, temperature: float = 0.05, log_domain: bool = True
) -> WeakestLink:
    """Criterion 1, weakest link: a smooth maximin objective over ``L*_t``.

    ``soft_min = -tau logsumexp(-x_t/tau)`` with ``x_t = log L*_t`` (``log_domain=True``, the value
    returned is ``exp`` of it, ``(sum_t L*_t^(-1/tau))^(-tau)``) or ``x_t = L*_t``
    (``log_domain=False``). Both satisfy ``min - tau log N <= soft_min <= min`` in their own scale
    and tend to ``min_t L*_t`` as ``tau -> 0``. Maximise ``soft_min`` (or minimise
    ``-log soft_min``, scale-free) to raise the weakest link.

    Args:
      sched: the schedule.
      grid: sampling grid (``None`` = every training step).
      temperature: ``tau > 0``; in nats of ``L*`` when ``log_domain`` (default 0.05: steps more
        than ~20 % above the minimum carry weight below ``e^-4``), in units of ``L*`` otherwise.
      log_domain: take the soft-min of ``log L*`` (default) or of ``L*``.

    Returns:
      :class:`WeakestLink`.

    Raises:
      ArgumentError: naming ``sched`` (not a :class:`~pifs_jax.schedules.Schedule`),
        ``temperature`` (a concrete value that is not finite and ``> 0``) or ``grid``.

    Example:
      >>> wl = weakest_link(cosine(1000))
      >>> float(wl.min), float(wl.soft_min)      # both 3.2e-3 (float32), at the finest step
    """
    check_instance(sched, Schedule, name="sched", what="pifs_jax Schedule")
    if is_concrete(temperature) and not (np.isfinite(float(temperature)) and float(temperature) > 0):
        raise ArgumentError("temperature", f"must be finite and > 0, got {temperature!r}")
    lstar = contraction_threshold(sched, grid)
    x = jnp.log(lstar) if log_domain else lstar
    soft = -temperature * jax.nn.logsumexp(-x / temperature)
    soft_min = jnp.exp(soft) if log_domain else soft
    return WeakestLink(soft_min, jnp.min(lstar), jnp.argmin(lstar), lstar)


# ----------------------------------------------------------------------------- criterion 2


class GrowthBalance(NamedTuple):
    """Criterion 2: spread of per-step dimension growth and information gain (steps ``2..N``).

    Attributes:
      cv_growth: ``std(Delta d)/|mean(Delta d)|`` (population), the objective's default.
      var_growth: ``var(Delta d)``.
      cv_abs_growth: ``CV(|Delta d|)``, the paper's table entry.
      cv_information: ``CV(IG)``.
      var_information: ``var(IG)`` (nats^2).
      growth: ``Delta d_t``, shape ``(N-1,)`` (the finest step left out).
      information: ``IG_t``, shape ``(N-1,)``.
    """

    cv_growth: jax.Array
    var_growth: jax.Array
    cv_abs_growth: jax.Array
    cv_information: jax.Array
    var_information: jax.Array
    growth: jax.Array
    information: jax.Array


def _information_gain_after_finest(sched: Schedule, variances: Any, sizes: Any | None, grid: GridLike) -> jax.Array:
    """``IG_t`` of steps ``2..N``, shape ``(N-1,)``: :func:`pifs_jax.geometry.information_gain` without entry 0.

    Only entry 0 can land on ``alpha_bar = 1`` (infinite gain); it is dropped here. The geometry
    function keeps that infinity out of the backward pass, so the gradient of the rest is finite.
    """
    lam = jnp.asarray(variances)
    n = jnp.ones_like(lam) if sizes is None else jnp.asarray(sizes)
    if lam.ndim != 1 or n.shape != lam.shape:
        raise ArgumentError("variances, sizes", f"expected two arrays of shape (m,), got {lam.shape} and {n.shape}")
    return information_gain(sched, variances, sizes, grid)[1:]


def growth_balance(sched: Schedule, variances: Any, sizes: Any | None = None, grid: GridLike = None) -> GrowthBalance:
    """Criterion 2, balanced dimension growth: how unevenly the steps add dimension / information.

    With ``Delta d_t`` (:func:`~pifs_jax.geometry.dimension_growth`, the step's share of the
    Kaplan-Yorke numerator) and ``IG_t = 1/2 sum_k n_k log((1 + SNR_s lambda_k)/(1 + SNR_t lambda_k))``
    (:func:`~pifs_jax.geometry.information_gain`), both over steps ``2..N`` (the step landing on
    ``alpha_bar = 1`` has infinite ``IG`` and is left out of both):
    ``CV(x) = std(x)/|mean(x)|`` (population) and ``var(x)``. Uniform growth means ``CV = 0``.

    Args:
      sched: the schedule.
      variances: patch (covariance) variances ``lambda_k``, shape ``(m,)``.
      sizes: coordinates per patch ``n_k``, shape ``(m,)`` (default 1 each).
      grid: sampling grid with at least 3 steps (``None`` = every training step).

    Returns:
      :class:`GrowthBalance`. If no patch expands (every ``lambda_k <= lambda**``) ``Delta d = 0``
      and its CV is reported as 0.

    Raises:
      ArgumentError: naming ``sched`` (not a :class:`~pifs_jax.schedules.Schedule`), ``grid``
        (invalid, or fewer than 3 sampling steps) or ``variances, sizes`` (not two arrays of
        shape ``(m,)``).
    """
    check_instance(sched, Schedule, name="sched", what="pifs_jax Schedule")
    g = as_grid(grid, sched.T)
    if np.shape(g)[0] < 4:
        raise ArgumentError(
            "grid", f"criterion 2 needs at least 3 sampling steps (the finest is left out), got {np.shape(g)[0] - 1}"
        )
    growth = dimension_growth(sched, variances, sizes, g)[1:]
    information = _information_gain_after_finest(sched, variances, sizes, g)
    return GrowthBalance(
        coefficient_of_variation(growth),
        jnp.var(growth),
        coefficient_of_variation(jnp.abs(growth)),
        coefficient_of_variation(information),
        jnp.var(information),
        growth,
        information,
    )


# ----------------------------------------------------------------------------- criterion 3


def _check_kind(kind: str) -> None:
    if kind not in WORK_KINDS:
        raise ArgumentError("kind", f"unknown work definition {kind!r}; expected one of {', '.join(WORK_KINDS)}")


def work_density(sched: Schedule, *, kind: str = "inverse_threshold") -> jax.Array:
    """Contraction work ``w_u`` of each training step ``u = 1..T``, shape ``(T,)``.

    - ``"inverse_threshold"`` (default): ``w_u = 1/L*_u``, the one-step threshold of the full chain
      (``L*_u = (sigma_{u-1} + a_u sigma_u)/(1 + a_u) ~ sigma_u``).
    - ``"score_coefficient"``: ``w_u = |b_u| = (a_u - 1)/L*_u``.

    See the module notes for why (docs/theory.md leaves the workload objective open).

    Args:
      sched: the schedule.
      kind: one of :data:`WORK_KINDS`.

    Returns:
      ``w_u`` for ``u = 1..T``, shape ``(T,)``.

    Raises:
      ArgumentError: naming ``sched`` (not a :class:`~pifs_jax.schedules.Schedule`) or ``kind``
        (not one of :data:`WORK_KINDS`).
    """
    check_instance(sched, Schedule, name="sched", what="pifs_jax Schedule")
    _check_kind(kind)
    lstar = contraction_threshold(sched)
    if kind == "inverse_threshold":
        return 1.0 / lstar
    return -step_coefficients(sched).b


def cumulative_work(sched: Schedule, *, kind: str = "inverse_threshold") -> jax.Array:
    """``W(t) = sum_{u <= t} w_u`` at ``t = 0..T``, shape ``(T+1,)``, ``W(0) = 0``, increasing.

    Args:
      sched: the schedule.
      kind: one of :data:`WORK_KINDS` (the definition of ``w_u``, :func:`work_density`).

    Returns:
      ``W(0..T)``, shape ``(T+1,)``.

    Raises:
      ArgumentError: naming ``sched`` or ``kind``, as :func:`work_density`.
    """
    w = work_density(sched, kind=kind)
    return jnp.concatenate([jnp.zeros((1,), w.dtype), jnp.cumsum(w)])


def _check_times(times: Any, T: int) -> None:
    if not is_concrete(times):
        return
    arr = np.asarray(times, dtype=np.float64)
    if arr.ndim != 1 or arr.shape[0] < 2:
        raise ArgumentError(
            "times", f"expected a 1-D array 0 = t_0 < ... < t_N <= T with N >= 1, got shape {arr.shape}"
        )
    check_finite(arr, "times")
    if arr[0] != 0:
        raise ArgumentError("times", f"must start at t_0 = 0 (alpha_bar = 1), got t_0 = {arr[0]:.6g}")
    if np.any(np.diff(arr) <= 0):
        bad = int(np.flatnonzero(np.diff(arr) <= 0)[0]) + 1
        raise ArgumentError(
            "times", f"must strictly increase, but t_{bad} = {arr[bad]:.6g} <= t_{bad - 1} = {arr[bad - 1]:.6g}"
        )
    if arr[-1] > T:
        raise ArgumentError("times", f"last time t_N = {arr[-1]:.6g} exceeds the schedule's T = {T}")


def step_work(sched: Schedule, times: Any, *, kind: str = "inverse_threshold") -> jax.Array:
    """Work of each sampling step on the continuous relaxation, shape ``(N,)``.

    ``W_i = W(t_i) - W(t_{i-1})`` with ``W`` the cumulative work (:func:`cumulative_work`)
    interpolated linearly between integer times. ``times`` may be an integer grid (then ``W_i`` is
    the exact sum of ``w_u`` over the training steps the sampling step replaces) or real times.
    Differentiable in the schedule and in ``times``.

    Args:
      sched: the schedule.
      times: grid ``0 = t_0 < ... < t_N <= T``, integers or reals.
      kind: one of :data:`WORK_KINDS`.

    Returns:
      ``W_i`` for ``i = 1..N``, shape ``(N,)`` (entry 0: the finest step).

    Raises:
      ArgumentError: naming ``sched`` (not a :class:`~pifs_jax.schedules.Schedule`), ``times``
        (concrete times that are not a finite 1-D array ``0 = t_0 < ... < t_N <= T`` with
        ``N >= 1``) or ``kind``.
    """
    check_instance(sched, Schedule, name="sched", what="pifs_jax Schedule")
    _check_times(times, sched.T)
    cumulative = cumulative_work(sched, kind=kind)
    t = jnp.asarray(times, dtype=cumulative.dtype)
    knots = jnp.arange(sched.T + 1, dtype=cumulative.dtype)
    return jnp.diff(jnp.interp(t, knots, cumulative))


class Workload(NamedTuple):
    """Criterion 3: how evenly the steps of a sampling grid share the contraction work.

    Attributes:
      cv: coefficient of variation of the per-step work (0 = perfectly balanced), the objective.
      max_ratio: ``max_i W_i / min_i W_i`` (1 = balanced), for reading.
      work: ``W_i``, shape ``(N,)`` (entry 0: the finest step).
    """

    cv: jax.Array
    max_ratio: jax.Array
    work: jax.Array


def workload(sched: Schedule, times: Any, *, kind: str = "inverse_threshold") -> Workload:
    """Criterion 3, balanced sampling workload: imbalance of the per-step contraction work.

    ``cv = std(W)/mean(W)`` with ``W_i = integral_{t_{i-1}}^{t_i} w(t) dt`` (:func:`step_work`;
    default ``w = 1/L*``, the module notes say why). ``mean(W) = W(t_N)/N`` is fixed by the end
    time, so minimising ``cv`` over the positions equalises the work; the minimiser is
    :func:`equal_work_times`.

    Args:
      sched: the schedule.
      times: grid ``0 = t_0 < ... < t_N <= T``, integers or reals (the continuous relaxation).
      kind: one of :data:`WORK_KINDS`.

    Returns:
      :class:`Workload`.

    Raises:
      ArgumentError: naming ``sched``, ``times`` or ``kind``, as :func:`step_work`.
    """
    work = step_work(sched, times, kind=kind)
    return Workload(coefficient_of_variation(work), jnp.max(work) / jnp.min(work), work)


def equal_work_times(
    sched: Schedule, num_steps: int, *, last: int | None = None, kind: str = "inverse_threshold"
) -> jax.Array:
    """The balanced continuous grid: ``t_i = W^{-1}(i W(last)/N)``, shape ``(N+1,)``.

    Closed-form minimiser of :func:`workload` on the relaxation (``cv = 0``); ``W`` is strictly
    increasing and piecewise linear, so the inverse is a linear interpolation. Round with
    :func:`pifs_jax.optimize.round_grid` for integer timesteps.

    Args:
      sched: the schedule.
      num_steps: ``N``.
      last: ``t_N`` (default ``T``).
      kind: one of :data:`WORK_KINDS`.

    Returns:
      The real times ``0 = t_0 < ... < t_N = last``, shape ``(N+1,)``.

    Raises:
      ArgumentError: naming ``sched`` (not a :class:`~pifs_jax.schedules.Schedule`),
        ``num_steps`` (not an integer >= 1), ``last`` (not an integer in ``1..T``) or ``kind``.
    """
    check_instance(sched, Schedule, name="sched", what="pifs_jax Schedule")
    num_steps = check_positive_int(num_steps, name="num_steps")
    last = sched.T if last is None else check_positive_int(last, name="last")
    if last > sched.T:
        raise ArgumentError("last", f"must not exceed the schedule's T = {sched.T}, got {last}")
    cumulative = cumulative_work(sched, kind=kind)
    dtype = cumulative.dtype
    targets = jnp.arange(num_steps + 1, dtype=dtype) / num_steps * cumulative[last]
    times = jnp.interp(targets, cumulative[: last + 1], jnp.arange(last + 1, dtype=dtype))
    return times.at[0].set(0.0).at[-1].set(last)

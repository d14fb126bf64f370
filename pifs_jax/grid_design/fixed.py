"""The fixed sampling grids the field uses, by their published formulas, in this package's indexing.

A grid is ``0 = tau_0 < tau_1 < ... < tau_N <= T`` (``int64``); step ``i`` maps ``x_{tau_i}`` to
``x_{tau_{i-1}}`` and ``tau_0 = 0`` is clean data (:mod:`pifs_jax.grids`). :func:`fixed_grid` builds
one of :data:`FIXED_GRIDS`:

- ``"time_uniform"``: ``tau_i = round(i T / N)`` (:func:`pifs_jax.grids.uniform_grid`).
- ``"leading"``, ``"trailing"``, ``"linspace"``: diffusers' ``timestep_spacing`` options
  (:func:`pifs_jax.grids.diffusers_grid`, ``steps_offset = 0``).
- ``"quadratic"``: DDIM's CIFAR-10 setting (Song et al. 2021).
- ``"logsnr_uniform"``, ``"edm"``, ``"kl_optimal"`` (:data:`SCHEDULE_GRIDS`): designed on the
  schedule's noise levels, uniform in logSNR (DPM-Solver), Karras et al.'s ``rho = 7`` sigmas (EDM),
  and Align Your Steps' KL-optimal sigmas. Their real-valued times are :func:`schedule_grid_times`.

Real times. Between integer timesteps the schedule's logSNR is interpolated linearly in ``t``
(:func:`log_snr_at_times`); the inverse, from logSNR values to real times, is
:func:`times_at_log_snr`. Every noise level used here is a function of logSNR alone
(``sigma_t = sqrt(sigmoid(-logSNR))``, EDM's ``s_t = sqrt((1 - alpha_bar_t) / alpha_bar_t) =
exp(-logSNR / 2)``), so this one interpolation is the only inversion of the schedule in the module.
Everything is float64 NumPy on the host: these are designs, not traced computations.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from pifs_jax._validation import check_instance, check_positive_int, describe, is_concrete
from pifs_jax.errors import ArgumentError
from pifs_jax.grids import diffusers_grid, round_grid, uniform_grid
from pifs_jax.schedules import Schedule

__all__ = [
    "EDM_RHO",
    "FIXED_GRIDS",
    "SCHEDULE_GRIDS",
    "fixed_grid",
    "log_snr_at_times",
    "schedule_grid_times",
    "times_at_log_snr",
]

#: The kinds :func:`fixed_grid` builds.
FIXED_GRIDS = (
    "time_uniform",
    "leading",
    "trailing",
    "linspace",
    "quadratic",
    "quadratic_to_T",
    "logsnr_uniform",
    "edm",
    "kl_optimal",
)
#: The kinds designed on the schedule's noise levels (endpoints ``tau_1 = t_min``, ``tau_N = T``).
SCHEDULE_GRIDS = ("logsnr_uniform", "edm", "kl_optimal")
#: Karras et al. 2022's default ``rho`` for the ``"edm"`` grid.
EDM_RHO = 7.0

# logSNR values this far (absolute) outside the schedule's range [logSNR_T, logSNR_1] are clipped to it:
# endpoints recomputed through a closed form (s_max ** (1/rho)) ** rho come back a few ulps off.
_LOG_SNR_SLACK = 1e-9


def _schedule_log_snr(sched: Any) -> np.ndarray:
    """``logSNR_t`` for ``t = 0..T`` in float64 (``+inf`` at ``t = 0``), after checking ``sched``."""
    check_instance(sched, Schedule, name="sched", what="pifs_jax Schedule (pifs_jax.schedules)")
    if not is_concrete(sched):
        raise ArgumentError(
            "sched", "a grid is designed on a concrete schedule, got a traced one (call it outside jit)"
        )
    log_ab = np.asarray(sched.log_alpha_bar, dtype=np.float64)
    with np.errstate(divide="ignore"):
        log_snr = log_ab - np.log(-np.expm1(log_ab))  # log alpha_bar - log(1 - alpha_bar); +inf at t = 0
    rest = log_snr[1:]
    if not np.all(np.isfinite(rest)) or np.any(np.diff(rest) >= 0):
        raise ArgumentError(
            "sched", f"logSNR must be finite and strictly decreasing for t = 1..T, got {describe(rest)}"
        )
    return log_snr


def log_snr_at_times(sched: Schedule, times: Any) -> np.ndarray:
    """The schedule's logSNR at real times, linear in ``t`` between integers.

    ``logSNR(t) = logSNR_k + (t - k) (logSNR_{k+1} - logSNR_k)`` for ``k <= t <= k + 1``, ``1 <= t <= T``;
    ``logSNR(0) = +inf`` (clean data). The inverse of :func:`times_at_log_snr`.

    Args:
      sched: the schedule.
      times: real times of any shape, each ``0`` or in ``[1, T]``.

    Returns:
      float64 array of ``times``' shape.
    """
    log_snr = _schedule_log_snr(sched)
    T = log_snr.shape[0] - 1
    t = np.asarray(times, dtype=np.float64)
    inside = (t >= 1) & (t <= T)
    if not np.all(inside | (t == 0)):
        raise ArgumentError("times", f"expected times equal to 0 or in [1, T] = [1, {T}], got {describe(t)}")
    values = np.interp(np.where(inside, t, 1.0), np.arange(1, T + 1, dtype=np.float64), log_snr[1:])
    return np.where(inside, values, np.inf)


def times_at_log_snr(sched: Schedule, log_snr: Any) -> np.ndarray:
    """Real times at which the schedule reaches the given logSNR values (linear interpolation).

    The inverse of :func:`log_snr_at_times`: between consecutive integers ``k, k + 1`` with
    ``logSNR_{k+1} <= v <= logSNR_k``, ``t = k + (logSNR_k - v) / (logSNR_k - logSNR_{k+1})``;
    ``v = +inf`` gives ``t = 0``. The schedule's logSNR strictly decreases in ``t``, so the time is unique.

    Args:
      sched: the schedule.
      log_snr: logSNR values of any shape, each ``+inf`` or in ``[logSNR_T, logSNR_1]`` (values up to
        1e-9 outside that range are clipped to it).

    Returns:
      float64 array of ``log_snr``'s shape.
    """
    table = _schedule_log_snr(sched)
    T = table.shape[0] - 1
    v = np.asarray(log_snr, dtype=np.float64)
    clean = v == np.inf
    inside = (v >= table[T] - _LOG_SNR_SLACK) & (v <= table[1] + _LOG_SNR_SLACK)
    if not np.all(inside | clean):
        raise ArgumentError(
            "log_snr",
            f"expected +inf or values in [logSNR_T, logSNR_1] = [{table[T]:.6g}, {table[1]:.6g}], got {describe(v)}",
        )
    # np.interp needs increasing abscissae: -logSNR increases with t. It clamps the slack to the ends.
    times = np.interp(-np.where(clean, table[1], v), -table[1:], np.arange(1, T + 1, dtype=np.float64))
    return np.where(clean, 0.0, times)


def _check_kind(kind: Any) -> str:
    if not isinstance(kind, str) or kind not in FIXED_GRIDS:
        raise ArgumentError("kind", f"unknown grid kind {kind!r}; expected one of {', '.join(FIXED_GRIDS)}")
    return kind


def _check_rho(rho: Any, kind: str) -> float:
    """``rho`` for ``"edm"`` (default :data:`EDM_RHO`); refused for every other kind."""
    if kind != "edm":
        if rho is not None:
            raise ArgumentError("rho", f"only kind 'edm' takes rho, got rho={rho!r} with kind {kind!r}")
        return EDM_RHO
    if rho is None:
        return EDM_RHO
    if isinstance(rho, bool) or not isinstance(rho, (int, float, np.integer, np.floating)):
        raise ArgumentError("rho", f"expected a real number > 0, got {rho!r}")
    if not (math.isfinite(float(rho)) and rho > 0):
        raise ArgumentError("rho", f"expected a finite real number > 0, got {rho!r}")
    return float(rho)


def _check_steps(sched: Any, num_steps: Any, t_min: Any) -> tuple[np.ndarray, int, int, int]:
    """``(logSNR table, T, N, t_min)`` after the checks shared by every kind."""
    log_snr = _schedule_log_snr(sched)
    T = log_snr.shape[0] - 1
    num_steps = check_positive_int(num_steps, name="num_steps")
    if num_steps > T:
        raise ArgumentError("num_steps", f"cannot exceed the schedule's T = {T}, got {num_steps}")
    t_min = check_positive_int(t_min, name="t_min")
    if t_min > T - num_steps + 1:
        raise ArgumentError(
            "t_min",
            f"expected an integer in [1, T - num_steps + 1] = [1, {T - num_steps + 1}] (room for "
            f"{num_steps} steps up to T = {T}), got {t_min}",
        )
    return log_snr, T, num_steps, t_min


def _design_log_snr(table: np.ndarray, num_steps: int, kind: str, t_min: int, rho: float) -> np.ndarray:
    """logSNR targets ``l_1 = logSNR(t_min) > ... > l_N = logSNR(T)`` of a schedule-designed grid (N >= 2)."""
    N = num_steps
    l_hi, l_lo = float(table[t_min]), float(table[-1])
    u = np.arange(N, dtype=np.float64) / (N - 1)  # u = 0 at t_min, 1 at T
    if kind == "logsnr_uniform":
        values = l_hi + u * (l_lo - l_hi)
    elif kind == "edm":
        # s = exp(-logSNR / 2); i = N - j runs from s_max (j = N) to s_min (j = 1), so with i/(N-1) = 1 - u:
        # s_j^(1/rho) = s_max^(1/rho) + (1 - u) (s_min^(1/rho) - s_max^(1/rho)).
        root_max, root_min = math.exp(-l_lo / (2 * rho)), math.exp(-l_hi / (2 * rho))
        values = -2.0 * rho * np.log(root_max + (1.0 - u) * (root_min - root_max))
    else:  # kl_optimal: s_j = tan((1 - u) atan(s_min) + u atan(s_max))
        angle = (1.0 - u) * math.atan(math.exp(-l_hi / 2)) + u * math.atan(math.exp(-l_lo / 2))
        values = -2.0 * np.log(np.tan(angle))
    values[0], values[-1] = l_hi, l_lo  # the endpoints exactly, whatever the closed form's round-off
    return values


def schedule_grid_times(
    sched: Schedule, num_steps: int, kind: str, *, t_min: int = 1, rho: float | None = None
) -> np.ndarray:
    """The real-valued times of a schedule-designed grid (one of :data:`SCHEDULE_GRIDS`), before rounding.

    ``t_0 = 0``, ``t_1 = t_min``, ``t_N = T``; the ``N - 1`` intervals between ``t_min`` and ``T`` are
    spaced by ``kind`` (see :func:`fixed_grid`), each target noise level mapped to its time by
    :func:`times_at_log_snr`. For ``N = 1`` the times are ``[0, T]``. :func:`fixed_grid` rounds them.

    Args:
      sched: the schedule (its logSNR is read).
      num_steps: ``N``, in ``1..T``.
      kind: one of :data:`SCHEDULE_GRIDS`.
      t_min: ``t_1``, an integer in ``[1, T - N + 1]``; default 1.
      rho: ``"edm"``'s exponent (default :data:`EDM_RHO`); refused for the other kinds.

    Returns:
      float64 array of shape ``(N+1,)``.

    Raises:
      ArgumentError: naming ``sched``, ``num_steps``, ``kind`` (also for a kind of :data:`FIXED_GRIDS` that
        is not schedule-designed), ``t_min`` or ``rho``.
    """
    table, T, N, t_min = _check_steps(sched, num_steps, t_min)
    kind = _check_kind(kind)
    if kind not in SCHEDULE_GRIDS:
        raise ArgumentError(
            "kind", f"real-valued times exist for {', '.join(SCHEDULE_GRIDS)}; got {kind!r} (use fixed_grid)"
        )
    rho = _check_rho(rho, kind)
    if N == 1:
        return np.array([0.0, float(T)])
    times = times_at_log_snr(sched, _design_log_snr(table, N, kind, t_min, rho))
    times[0], times[-1] = float(t_min), float(T)
    return np.concatenate([[0.0], times])


def fixed_grid(sched: Schedule, num_steps: int, kind: str, *, t_min: int = 1, rho: float | None = None) -> np.ndarray:
    """A sampling grid with ``N = num_steps`` steps by one of the field's fixed formulas.

    Kinds (:data:`FIXED_GRIDS`):

    - ``"time_uniform"``: ``tau_i = round(i T / N)``, ``i = 0..N`` (:func:`pifs_jax.grids.uniform_grid`).
    - ``"leading"``, ``"trailing"``, ``"linspace"``: diffusers' DDIM / DPM-Solver ``timestep_spacing``
      with ``steps_offset = 0``, converted to this indexing (``tau = k + 1``, plus ``tau_0 = 0``):
      leading ``k_j = j (T // N)``; trailing ``k = round(arange(T, 0, -T/N)) - 1``; linspace
      ``k = round(linspace(0, T - 1, N))`` (:func:`pifs_jax.grids.diffusers_grid`). ``"leading"`` ends at
      ``tau_N = (N - 1)(T // N) + 1 < T``; ``"leading"`` and ``"linspace"`` give ``[0, 1]`` for ``N = 1``, as
      in diffusers.
    - ``"quadratic"``: DDIM's CIFAR-10 spacing (Song et al. 2021). Its code (``ermongroup/ddim``,
      ``runners/diffusion.py``, ``sample_image``, ``skip_type == "quad"``) takes
      ``seq = [int(s) for s in np.linspace(0, np.sqrt(num_timesteps * 0.8), timesteps) ** 2]``
      (diffusers-style indices ``0..T-1``) and pairs each with the one before (``-1`` after the first),
      so here ``tau = [0] + (seq + 1)``: ``tau_j = floor(((j-1) sqrt(0.8 T) / (N-1))^2) + 1``, ``j = 1..N``.
      It ends at ``tau_N = floor(0.8 T) + 1`` (801 for ``T = 1000``), not ``T``, and is ``[0, 1]`` for
      ``N = 1``, as DDIM's. Where the truncation makes two points equal (many steps) they are pushed apart
      by :func:`pifs_jax.grids.round_grid`; when ``N > floor(0.8 T) + 1``, ``tau_N`` is raised to ``N``.
    - ``"quadratic_to_T"``: the same quadratic spacing with the endpoints every other kind shares,
      ``tau_i = round(T (i / N)^2)``, ``i = 0..N`` (collisions pushed apart by ``round_grid``): the form
      in which comparisons at equal endpoints use it.
    - ``"logsnr_uniform"`` (DPM-Solver's "logSNR" spacing): ``lambda = logSNR / 2`` uniform,
      ``lambda_j = lambda(t_min) + (j-1)/(N-1) (lambda(T) - lambda(t_min))``, ``j = 1..N``.
    - ``"edm"`` (Karras et al. 2022): EDM sigmas ``s = sqrt((1 - alpha_bar) / alpha_bar) = exp(-logSNR/2)``,
      ``s_i = (s_max^(1/rho) + i/(N-1) (s_min^(1/rho) - s_max^(1/rho)))^rho``, ``i = 0..N-1`` (at
      ``tau_{N-i}``), ``s_max = s(T)``, ``s_min = s(t_min)``, ``rho = 7`` by default.
    - ``"kl_optimal"`` (Align Your Steps, Sabour et al. 2024, theorem 3.1: KL-optimal for isotropic
      Gaussian data): ``s_i = tan(u_i atan(s_min) + (1 - u_i) atan(s_max))``, ``u_i = i/(N-1)``, at ``tau_{N-i}``.

    The last three (:data:`SCHEDULE_GRIDS`) share their endpoints: ``tau_N = T``, ``tau_1 = t_min``,
    ``tau_0 = 0`` (the last step goes to sigma 0), so ``N`` steps take ``N`` network calls with DDIM; for
    ``N = 1`` they are ``[0, T]``. Their real times (:func:`schedule_grid_times`, logSNR interpolated
    linearly in ``t``) are rounded to the nearest integers, collisions pushed apart by
    :func:`pifs_jax.grids.round_grid` with ``tau_1 = t_min`` and ``tau_N = T`` kept.

    Args:
      sched: the schedule (its ``T``; the schedule-designed kinds also read its logSNR).
      num_steps: ``N``, in ``1..T``.
      kind: one of :data:`FIXED_GRIDS`.
      t_min: ``tau_1`` of the schedule-designed kinds, in ``[1, T - N + 1]``; the other kinds fix their own
        ``tau_1`` and refuse any value but 1.
      rho: ``"edm"``'s exponent (default :data:`EDM_RHO`); refused for the other kinds.

    Returns:
      ``int64`` array ``0 = tau_0 < ... < tau_N <= T`` of shape ``(N+1,)``.

    Raises:
      ArgumentError: naming ``sched``, ``num_steps``, ``kind``, ``t_min`` or ``rho``.
    """
    _, T, N, t_min = _check_steps(sched, num_steps, t_min)
    kind = _check_kind(kind)
    rho = _check_rho(rho, kind)
    if kind in SCHEDULE_GRIDS:
        return round_grid(schedule_grid_times(sched, N, kind, t_min=t_min, rho=None if kind != "edm" else rho), last=T)
    if t_min != 1:
        raise ArgumentError(
            "t_min", f"only the kinds {', '.join(SCHEDULE_GRIDS)} take t_min; {kind!r} fixes its own tau_1, got {t_min}"
        )
    if kind == "time_uniform":
        return uniform_grid(T, N).astype(np.int64)
    if kind == "quadratic_to_T":
        return round_grid(T * (np.arange(N + 1) / N) ** 2, last=T)
    if kind == "quadratic":
        seq = np.floor(np.linspace(0.0, np.sqrt(T * 0.8), N) ** 2)  # DDIM's int(): truncation of values >= 0
        return round_grid(np.concatenate([[0.0], seq + 1.0]), last=max(int(seq[-1]) + 1, N))
    return diffusers_grid(T, N, spacing=kind).astype(np.int64)

"""Learnable schedule families with their constraints, started from an existing schedule.

Each family is one frozen object whose fields are its settings (:class:`ScheduleFamily`:
``schedule(params)``, ``initial_params(start)``, ``build()``), registered once by name
(:func:`register_family`; :data:`FAMILIES` lists them). :func:`schedule_family` chooses the
settings that start a family at a given schedule.

``"spline"`` (:func:`~pifs_jax.learnable.logsnr_spline`) and ``"network"``
(:func:`~pifs_jax.learnable.monotone_network`) hold both logSNR end points fixed and are monotone
for any parameters (so ``alpha_bar_T`` can be fixed exactly through ``logsnr_min``);
``"cosine_offset"`` (the offset ``s = exp(log_s) > 0``) and ``"logsnr_shift"`` (a constant shift
of a base schedule's logSNR) are the two classic one-parameter families. ``T`` is static, so the
number of training steps is always kept.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, ClassVar, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
import optax

from pifs_jax._validation import check_positive_int
from pifs_jax.errors import ArgumentError
from pifs_jax.learnable import LearnableSchedule, logsnr_spline, monotone_network
from pifs_jax.schedules import Schedule, cosine, shift_log_snr

__all__ = [
    "FAMILIES",
    "CosineOffsetFamily",
    "LogSNRShiftFamily",
    "NetworkFamily",
    "ScheduleFamily",
    "SplineFamily",
    "fit_to_schedule",
    "register_family",
    "schedule_family",
]


def _logit(p: float) -> float:
    return math.log(p) - math.log1p(-p)


def fit_to_schedule(
    family: LearnableSchedule, params: Any, target: Schedule, *, iterations: int = 400, learning_rate: float = 0.05
) -> Any:
    """Parameters of ``family`` whose logSNR is closest to ``target``'s (least squares, Adam).

    ``family.fit`` is used when the family has one; otherwise (the monotone network) ``params`` is
    the starting point of ``iterations`` Adam steps on ``mean_t (logSNR_t - logSNR*_t)^2``,
    ``t = 1..T`` (one jitted scan).

    Args:
      family: the :class:`~pifs_jax.learnable.LearnableSchedule`.
      params: the starting parameters (unused when the family has ``fit``).
      target: the schedule to reproduce.
      iterations: the number of Adam steps.
      learning_rate: Adam's learning rate.

    Returns:
      The fitted parameters (a pytree like ``params``).

    Raises:
      ArgumentError: naming ``iterations`` (not an integer >= 1, family without ``fit``), or the
        family's ``fit`` errors (``sched``, for a target of another ``T``).
    """
    if family.fit is not None:
        return family.fit(target)
    iterations = check_positive_int(iterations, name="iterations")
    goal = jnp.asarray(target.log_snr[1:])
    optimizer = optax.adam(learning_rate)

    def loss(p):
        return jnp.mean((family.apply(p).log_snr[1:] - goal) ** 2)

    def body(carry, _):
        p, state = carry
        grads = jax.grad(loss)(p)
        updates, state = optimizer.update(grads, state, p)
        return (optax.apply_updates(p, updates), state), None

    @jax.jit
    def run(p):
        (p, _), _ = jax.lax.scan(body, (p, optimizer.init(p)), None, length=iterations)
        return p

    return run(params)


@functools.lru_cache(maxsize=32)
def _cached_spline(T: int, n_knots: int, lo: float, hi: float) -> LearnableSchedule:
    """One spline family object per setting, so the optimiser's compiled update is reused."""
    return logsnr_spline(T, n_knots=n_knots, logsnr_min=lo, logsnr_max=hi)


@dataclasses.dataclass(frozen=True)
class ScheduleFamily:
    """A learnable schedule family: one frozen object whose fields are the family's settings.

    Contract of a subclass (registered once with :func:`register_family` under ``NAME``):

    - :meth:`schedule` ``(params) -> Schedule``: pure, jittable and differentiable in ``params``;
    - :meth:`initial_params` ``(start, dtype)``: the parameters that start the family at the
      schedule ``start`` (or at its own default without one);
    - :meth:`build`: the optax-style :class:`~pifs_jax.learnable.LearnableSchedule` the
      optimiser takes, one object per family value (cached), so its compiled update is reused.

    ``ALPHA_BAR_T_FIXED``: whether the family can hold ``alpha_bar_T`` fixed.
    """

    NAME: ClassVar[str] = ""
    ALPHA_BAR_T_FIXED: ClassVar[bool] = False

    T: int = 1000

    def schedule(self, params: Any) -> Schedule:
        """The schedule of ``params``."""
        raise NotImplementedError

    def initial_params(self, start: Schedule | None = None, dtype: Any = None) -> Any:
        """Parameters that start the family at ``start`` (its own default without one)."""
        raise NotImplementedError

    def build(self) -> LearnableSchedule:
        """``LearnableSchedule(init, schedule)`` (cached per family value)."""
        return _learnable(self)


@functools.lru_cache(maxsize=32)
def _learnable(family: ScheduleFamily) -> LearnableSchedule:
    return LearnableSchedule(lambda key=None, **kwargs: family.initial_params(**kwargs), family.schedule)


_REGISTRY: dict[str, type[ScheduleFamily]] = {}


_Family = TypeVar("_Family", bound=ScheduleFamily)


def register_family(cls: type[_Family]) -> type[_Family]:
    """Register a family class under ``cls.NAME`` (a class decorator); a taken name is refused.

    Args:
      cls: a :class:`ScheduleFamily` subclass with a non-empty ``NAME`` (registering the same class
        again is allowed).

    Returns:
      ``cls`` itself.

    Raises:
      ArgumentError: naming ``family`` when ``cls.NAME`` is empty or registered to another class.
    """
    old = _REGISTRY.get(cls.NAME)
    if not cls.NAME or (old is not None and old is not cls):
        raise ArgumentError("family", f"expected a new, non-empty NAME for {cls.__name__}, got {cls.NAME!r}")
    _REGISTRY[cls.NAME] = cls
    return cls


@register_family
@dataclasses.dataclass(frozen=True)
class SplineFamily(ScheduleFamily):
    """:func:`~pifs_jax.learnable.logsnr_spline` with its fixed end points as fields; starts at a knot fit of ``start``."""

    NAME: ClassVar[str] = "spline"
    ALPHA_BAR_T_FIXED: ClassVar[bool] = True

    n_knots: int = 16
    logsnr_min: float = -20.0
    logsnr_max: float = 10.0

    def _spline(self) -> LearnableSchedule:
        return _cached_spline(self.T, self.n_knots, self.logsnr_min, self.logsnr_max)

    def schedule(self, params: Any) -> Schedule:
        return self._spline().apply(params)

    def initial_params(self, start: Schedule | None = None, dtype: Any = None) -> Any:
        spline = self._spline()
        return spline.init(dtype=dtype) if start is None or spline.fit is None else spline.fit(start)

    def build(self) -> LearnableSchedule:
        return self._spline()


@register_family
@dataclasses.dataclass(frozen=True)
class NetworkFamily(ScheduleFamily):
    """:func:`~pifs_jax.learnable.monotone_network` (fixed end points); starts at a least-squares fit of ``start``."""

    NAME: ClassVar[str] = "network"
    ALPHA_BAR_T_FIXED: ClassVar[bool] = True

    hidden: int = 16
    logsnr_min: float = -20.0
    logsnr_max: float = 10.0
    seed: int = 0

    def _network(self) -> LearnableSchedule:
        return monotone_network(self.T, hidden=self.hidden, logsnr_min=self.logsnr_min, logsnr_max=self.logsnr_max)

    def schedule(self, params: Any) -> Schedule:
        return self.build().apply(params)

    def initial_params(self, start: Schedule | None = None, dtype: Any = None) -> Any:
        network = self.build()
        params = network.init(jax.random.key(self.seed), dtype=dtype)
        return params if start is None else fit_to_schedule(network, params, start)

    def build(self) -> LearnableSchedule:
        return _cached_network(self)


@functools.lru_cache(maxsize=32)
def _cached_network(family: NetworkFamily) -> LearnableSchedule:
    return family._network()


@register_family
@dataclasses.dataclass(frozen=True)
class CosineOffsetFamily(ScheduleFamily):
    """``cosine(T, s, max_beta)`` (:func:`pifs_jax.schedules.cosine`) with the offset learnable.

    ``params = {"log_s": log s}`` (so ``s = exp(log_s) > 0``); starts at the field ``s``
    (0.008, Nichol & Dhariwal). The named schedule ``cosine(T, s)`` is this family at its start.
    """

    NAME: ClassVar[str] = "cosine_offset"

    s: float = 0.008
    max_beta: float = 0.999

    def schedule(self, params: Any) -> Schedule:
        return cosine(self.T, s=jnp.exp(params["log_s"]), max_beta=self.max_beta)

    def initial_params(self, start: Schedule | None = None, dtype: Any = None) -> Any:
        return {"log_s": jnp.asarray(math.log(self.s), dtype or jnp.result_type(float))}


@register_family
@dataclasses.dataclass(frozen=True, eq=False)
class LogSNRShiftFamily(ScheduleFamily):
    """``shift_log_snr(base, params["shift"])`` (:func:`pifs_jax.schedules.shift_log_snr`); starts at 0.

    ``base`` defaults to ``cosine(T)``. Compared by identity (the base is an array pytree).
    """

    NAME: ClassVar[str] = "logsnr_shift"

    base: Schedule | None = None

    def schedule(self, params: Any) -> Schedule:
        base = self.base if self.base is not None else cosine(self.T, dtype=params["shift"].dtype)
        return shift_log_snr(base, params["shift"])

    def initial_params(self, start: Schedule | None = None, dtype: Any = None) -> Any:
        return {"shift": jnp.zeros((), dtype or jnp.result_type(float))}


#: Learnable families of :func:`schedule_family` (the registered names).
FAMILIES = tuple(_REGISTRY)


def schedule_family(
    name: str,
    T: int = 1000,
    *,
    start: Schedule | None = None,
    alpha_bar_T: float | None = None,
    logsnr_max: float | None = None,
    n_knots: int = 16,
    hidden: int = 16,
    seed: int = 0,
    dtype=None,
) -> tuple[LearnableSchedule, Any]:
    """A constrained learnable family and the parameters that start it at ``start``.

    Constraints, all by construction (an unconstrained optimiser cannot break them):

    - ``"spline"``, ``"network"``: ``logSNR(0) = logsnr_max`` and ``logSNR(1) = logsnr_min`` fixed,
      monotone. ``logsnr_min = logit(alpha_bar_T)`` when ``alpha_bar_T`` is given (then
      ``alpha_bar_T`` is kept exactly), else ``start``'s terminal logSNR (else -20).
      ``logsnr_max`` defaults to the value that makes the family's first step equal ``start``'s:
      for the spline, the line through ``start``'s logSNR at ``t = 1`` and at the first knot
      (so ``alpha_bar_1``, hence ``L*_1``, is ``start``'s); for the network, the linear
      extrapolation ``2 logSNR_1 - logSNR_2``; without ``start``, 10.
    - ``"cosine_offset"``: ``cosine(T, s)`` with ``s = exp(params["log_s"]) > 0``; starts at ``s = 0.008``.
    - ``"logsnr_shift"``: ``shift_log_snr(start, params["shift"])``; starts at 0 (``start``
      defaults to ``cosine(T)``). Moves both end points; ``alpha_bar_T`` cannot be fixed.

    Args:
      name: one of :data:`FAMILIES`.
      T: number of training steps (kept fixed).
      start: schedule to start from (``spline``: knot fit, ``network``: least-squares fit,
        ``logsnr_shift``: the base); must have ``T`` steps.
      alpha_bar_T: fixed terminal ``alpha_bar_T`` in ``(0, 1)`` (``spline``, ``network`` only).
      logsnr_max: fixed ``logSNR`` at ``t = 0`` (``spline``, ``network``).
      n_knots: spline knots. hidden: network width. seed: network initialisation.
      dtype: parameter dtype (default: ``start``'s, else JAX's default float).

    Returns:
      ``(family, params)``.

    Raises:
      ArgumentError: unknown ``name``; ``start`` with another ``T``; ``alpha_bar_T`` outside ``(0, 1)``,
        outside the family's range (``logit(alpha_bar_T) >= logsnr_max``) or with a family that
        cannot fix it.
    """
    if name not in FAMILIES:
        raise ArgumentError("name", f"unknown family {name!r}; expected one of {', '.join(FAMILIES)}")
    T = check_positive_int(T, name="T", minimum=2)
    if start is not None:
        if not isinstance(start, Schedule):
            raise ArgumentError("start", f"expected a pifs_jax Schedule, got {type(start).__name__}")
        if start.T != T:
            raise ArgumentError("start", f"has T = {start.T}, but the family has T = {T}")
    dtype = dtype or (start.dtype if start is not None else jnp.result_type(float))
    if alpha_bar_T is not None:
        if not _REGISTRY[name].ALPHA_BAR_T_FIXED:
            raise ArgumentError(
                "alpha_bar_T",
                f"cannot be fixed in the {name!r} family (its terminal value moves with the "
                "parameter); use family 'spline' or 'network'",
            )
        if not (np.isfinite(alpha_bar_T) and 0 < alpha_bar_T < 1):
            raise ArgumentError("alpha_bar_T", f"must lie in (0, 1), got {alpha_bar_T!r}")

    family: ScheduleFamily
    if name == "cosine_offset":
        family = CosineOffsetFamily(T)
        return family.build(), family.initial_params(dtype=dtype)
    if name == "logsnr_shift":
        family = LogSNRShiftFamily(T, base=start)
        return family.build(), family.initial_params(dtype=dtype)

    start_log_snr = None if start is None else np.asarray(start.log_snr, dtype=np.float64)
    if alpha_bar_T is not None:
        lo = _logit(float(alpha_bar_T))
    elif start_log_snr is not None:
        lo = float(start_log_snr[-1])
    else:
        lo = -20.0
    if logsnr_max is not None:
        hi = float(logsnr_max)
    elif start_log_snr is not None and name == "spline" and n_knots < T:
        # the first knot interval is linear from logSNR(0) = hi to the start's value at u = 1/K;
        # choose hi so that it passes through the start's logSNR_1 (same first step, same L*_1)
        ratio = n_knots / T
        at_knot = float(np.interp(1.0 / n_knots, np.arange(1, T + 1) / T, start_log_snr[1:]))
        hi = (float(start_log_snr[1]) - ratio * at_knot) / (1.0 - ratio)
    elif start_log_snr is not None:
        hi = float(2 * start_log_snr[1] - start_log_snr[2])
    else:
        hi = 10.0
    if not (np.isfinite(hi) and hi > lo):
        culprit = "alpha_bar_T" if alpha_bar_T is not None else "logsnr_max"
        raise ArgumentError(
            culprit,
            f"the family needs logSNR_T = {lo:.6g} below logsnr_max = {hi:.6g} "
            f"(alpha_bar_T = {1 / (1 + math.exp(-lo)):.6g} is outside the family's range)",
        )
    if name == "spline":
        family = SplineFamily(T, n_knots=n_knots, logsnr_min=lo, logsnr_max=hi)
    else:
        family = NetworkFamily(T, hidden=hidden, logsnr_min=lo, logsnr_max=hi, seed=seed)
    params = family.initial_params(start, dtype=dtype)
    return family.build(), jax.tree_util.tree_map(lambda v: jnp.asarray(v, dtype), params)

"""The sampler protocol: what every reverse-time solver of the package provides.

A sampler is a frozen pytree (an :class:`equinox.Module`; its hyperparameters are fields) with

- ``tables(sched, grid) -> tables``: the chain's constants, computed once outside the loop from
  the schedule and the grid ``0 = tau_0 < ... < tau_N``: a pytree of arrays whose leading axis
  has length ``N``, entry ``i - 1`` belonging to the step ``tau_i -> tau_{i-1}`` (the package's
  per-step convention). :func:`step_tables` gives the common ones.
- ``init(eps_fn, tables, x_T) -> state``: the state at ``tau_N``. For a one-step solver the state
  is the image ``x`` itself; a multistep solver adds its history (DPM-Solver++(2M): the previous
  data prediction).
- ``step(eps_fn, tables, state, i, key) -> state``: step ``i`` of the grid, from ``tau_i`` to
  ``tau_{i-1}``; the chain runs ``i = N, N-1, ..., 1``. ``key`` is a PRNG key for stochastic
  samplers (``needs_key``), else ``None``.
- ``output(state) -> x`` (the projection onto the image) and ``embed(state, x) -> state`` (the
  state with its image replaced, the history kept): together they say which part of the state is
  the image, so that a per-step Jacobian can be read on the image (``analyze_chain``) while the
  chain's Jacobian is the total derivative ``d x_0 / d x_T = P J_N ... J_1 E`` with ``E = d
  init / d x_T`` and ``P = d output / d state`` (history included through its dependence on
  ``x_T``).
- ``nfe(num_steps) -> int``: the number of denoiser evaluations a chain of ``num_steps`` steps
  costs, so that grids are compared at equal cost.

The design follows optax's ``GradientTransformation`` and diffrax's ``AbstractSolver``: a
sampler holds no arrays of its own beyond its hyperparameters, every method is pure and
jittable, and the chain (:func:`pifs_jax.samplers.sample_chain`), the Jacobians, the Lyapunov
spectra and ``analyze_chain`` are written once against this protocol.
docs/guides/samplers.md shows a sampler written in one file.
"""

from __future__ import annotations

import abc
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp

from pifs_jax.errors import ArgumentError
from pifs_jax.geometry import StepCoefficients, coefficients_from_log_alpha_bar, step_coefficients
from pifs_jax.grids import as_grid
from pifs_jax.schedules import Schedule, safe_sqrt
from pifs_jax.typing import EpsFn

__all__ = [
    "Sampler",
    "StepTables",
    "check_denoiser",
    "check_sampler",
    "continuous_step_tables",
    "step_tables",
    "table_row",
    "tables_from_coefficients",
]


class StepTables(NamedTuple):
    """Per-step schedule quantities, each shape ``(N,)``, entry ``i - 1`` for the step ``tau_i -> tau_{i-1}``.

    All in the cancellation-free forms of :func:`pifs_jax.geometry.step_coefficients`
    (docs/numerics.md): ``log_ratio = log alpha_bar_s - log alpha_bar_t`` is summed from the
    schedule's gaps, and ``h = lambda_s - lambda_t`` (``lambda = log(alpha / sigma)``, half the
    logSNR) is ``(G - log1p(-q)) / 2`` with ``q = alpha_bar_t expm1(G) / sigma_t^2 = 1 - sigma_s^2 /
    sigma_t^2``, so neither has a difference of nearly equal numbers; ``h = inf`` on the step that
    lands on ``alpha_bar = 1``.
    """

    t: jax.Array
    """Integer timestep the step starts from (``tau_i``), int32."""
    s: jax.Array
    """Integer timestep the step lands on (``tau_{i-1}``), int32."""
    log_alpha_bar_t: jax.Array
    """``log alpha_bar`` at ``tau_i``."""
    log_alpha_bar_s: jax.Array
    """``log alpha_bar`` at ``tau_{i-1}``."""
    sigma_t: jax.Array
    """``sqrt(1 - alpha_bar_t)``."""
    sigma_s: jax.Array
    """``sqrt(1 - alpha_bar_s)`` (0 on the step landing on ``alpha_bar = 1``)."""
    log_ratio: jax.Array
    """``G = log alpha_bar_s - log alpha_bar_t > 0``."""
    a: jax.Array
    """DDIM's ``a_t = sqrt(alpha_bar_s / alpha_bar_t)``."""
    b: jax.Array
    """DDIM's ``b_t = sigma_s - a_t sigma_t = (1 - a_t^2) / (sigma_s + a_t sigma_t)`` (negative)."""
    h: jax.Array
    """``lambda_s - lambda_t > 0`` (``inf`` when ``alpha_bar_s = 1``)."""
    sigma_ratio: jax.Array
    """``sigma_s / sigma_t = sqrt(1 - q) = exp(-h) a_t``, in ``[0, 1)``."""


def step_tables(sched: Schedule, grid: Any = None) -> StepTables:
    """The common per-step quantities of ``grid`` (``None`` = every training step), see :class:`StepTables`.

    Args:
      sched: the schedule.
      grid: sampling grid ``0 = tau_0 < ... < tau_N <= T``; ``None`` = every training step.

    Returns:
      :class:`StepTables` with arrays of shape ``(N,)``.

    Raises:
      ArgumentError: naming ``grid``, for a grid that is not valid for ``sched``.
    """
    grid = jnp.asarray(as_grid(grid, sched.T))
    return tables_from_coefficients(grid[1:], grid[:-1], step_coefficients(sched, grid))


def tables_from_coefficients(t: jax.Array, s: jax.Array, c: StepCoefficients) -> StepTables:
    """:class:`StepTables` of steps ``t -> s`` from their :class:`~pifs_jax.geometry.StepCoefficients`.

    ``q = alpha_bar_t expm1(G) / sigma_t^2 = 1 - sigma_s^2 / sigma_t^2``, ``h = (G - log1p(-q)) / 2``,
    ``sigma_s / sigma_t = sqrt(1 - q)``; the step onto ``sigma_s = 0`` gets ``h = inf`` and ratio 0.
    ``t`` is what the denoiser is called with (cast to int32).

    Args:
      t: the timesteps the steps start from, shape ``(N,)`` (cast to int32).
      s: the timesteps the steps land on, shape ``(N,)`` (cast to int32).
      c: the steps' coefficients, each field of shape ``(N,)``.

    Returns:
      :class:`StepTables` with arrays of shape ``(N,)``.
    """
    # q = 1 - sigma_s^2 / sigma_t^2 = alpha_bar_t expm1(G) / sigma_t^2, in (0, 1]
    q = jnp.exp(c.log_alpha_bar_t) * jnp.expm1(c.log_ratio) / c.sigma_t**2
    # the step onto alpha_bar_s = 1 (sigma_s = 0, lambda_s = inf): decided on sigma_s itself, since q
    # computed in float32 can round a few ulps below 1 there
    lands = (c.sigma_s == 0) | (q >= 1.0)
    q = jnp.where(lands, 0.5, q)  # a finite stand-in, so that no derivative is inf * 0
    h = jnp.where(lands, jnp.inf, (c.log_ratio - jnp.log1p(-q)) / 2)
    sigma_ratio = jnp.where(lands, 0.0, jnp.sqrt(1.0 - q))
    return StepTables(
        jnp.asarray(t).astype(jnp.int32), jnp.asarray(s).astype(jnp.int32),
        c.log_alpha_bar_t, c.log_alpha_bar_s, c.sigma_t, c.sigma_s, c.log_ratio, c.a, c.b, h, sigma_ratio,
    )  # fmt: skip


def continuous_step_tables(sched: Schedule, times: Any) -> StepTables:
    """:class:`StepTables` of a grid of REAL times ``0 = t_0 < t_1 < ... < t_N <= T`` (differentiable in them).

    ``log alpha_bar`` is interpolated linearly between the schedule's integer timesteps (the
    schedule's own piecewise-constant-``beta`` reading of a discrete chain: ``log alpha_bar`` is a sum
    of per-step gaps), ``G = log_s - log_t`` is the difference of the interpolated values and
    ``sigma = sqrt(-expm1(log alpha_bar))``. The denoiser is called at the NEAREST INTEGER time
    (``StepTables.t = round(t_i)``): the network sees the timesteps it was trained on while the
    coefficients move continuously, so ``jax.grad`` with respect to the times flows through the
    solver's coefficients only (a straight-through reading of the network's time input). At
    integer times the tables equal :func:`step_tables`' up to the rounding of ``G`` (a difference
    instead of a sum of gaps).

    Args:
      sched: the schedule.
      times: real times ``0 = t_0 < t_1 < ... < t_N <= T``, shape ``(N+1,)`` (cast to the
        schedule's dtype).

    Returns:
      :class:`StepTables` with arrays of shape ``(N,)``, ``t`` and ``s`` the rounded times.

    Raises:
      ArgumentError: naming ``times`` when it is not one-dimensional with at least two entries.
    """
    times = jnp.asarray(times)
    if times.ndim != 1 or times.shape[0] < 2:
        raise ArgumentError("times", f"expected real times of shape (N+1,) with N >= 1, got shape {times.shape}")
    dtype = sched.log_alpha_bar.dtype
    times = times.astype(dtype)
    log_ab = jnp.interp(times, jnp.arange(sched.T + 1, dtype=dtype), sched.log_alpha_bar)
    sigma = safe_sqrt(-jnp.expm1(log_ab))
    c = coefficients_from_log_alpha_bar(log_ab[1:], log_ab[:-1], sigma[1:], sigma[:-1], log_ab[:-1] - log_ab[1:])
    return tables_from_coefficients(jnp.round(times[1:]), jnp.round(times[:-1]), c)


def table_row(tables: Any, i: Any) -> Any:
    """Entry ``i - 1`` of every array of ``tables`` (the quantities of the step ``tau_i -> tau_{i-1}``).

    Args:
      tables: a pytree of arrays with leading axis of length ``N`` (a sampler's tables).
      i: the step index, ``1 <= i <= N`` (may be traced).

    Returns:
      a pytree of ``tables``' structure, each leaf its entry ``i - 1``.
    """
    return jax.tree_util.tree_map(lambda leaf: leaf[i - 1], tables)


class Sampler(eqx.Module):
    """A reverse-time solver of the diffusion ODE (or SDE): the protocol of the module docstring.

    Subclasses implement :meth:`step` and :meth:`nfe`, and :meth:`tables`, :meth:`init`,
    :meth:`output`, :meth:`embed` where the defaults (the :class:`StepTables`; a state that is the
    image itself) do not fit. Fields are the hyperparameters; keep them Python scalars (static:
    one compilation per value) or arrays (traced).
    """

    @property
    def needs_key(self) -> bool:
        """Whether :meth:`step` draws noise (a PRNG key is then required)."""
        return False

    def tables(self, sched: Schedule, grid: jax.Array) -> Any:
        """The chain's per-step constants: :meth:`tables_from` of :func:`step_tables`."""
        return self.tables_from(step_tables(sched, grid))

    def tables_from(self, steps: StepTables) -> Any:
        """The chain's per-step constants from the common :class:`StepTables` (default: those themselves).

        Also how a chain on real times is built (:func:`continuous_step_tables`).
        """
        return steps

    def init(self, eps_fn: EpsFn, tables: Any, x_T: jax.Array) -> Any:
        """The state at ``tau_N`` (default: the image ``x_T`` itself)."""
        return x_T

    @abc.abstractmethod
    def step(self, eps_fn: EpsFn, tables: Any, state: Any, i: jax.Array, key: jax.Array | None) -> Any:
        """Step ``i`` of the grid, ``tau_i -> tau_{i-1}`` (``i = N, ..., 1``)."""

    def output(self, state: Any) -> jax.Array:
        """The image of a state (default: the state is the image)."""
        return state

    def embed(self, state: Any, x: jax.Array) -> Any:
        """``state`` with its image replaced by ``x`` (default: the state is the image)."""
        return x

    @abc.abstractmethod
    def nfe(self, num_steps: int) -> int:
        """Denoiser evaluations of a chain of ``num_steps`` steps."""

    def check(self) -> None:
        """Raise :class:`pifs_jax.errors.ArgumentError` for invalid hyperparameters (default: none)."""


def check_sampler(sampler: Any, *, name: str = "sampler") -> Sampler:
    """Require a :class:`Sampler` instance with valid hyperparameters.

    Args:
      sampler: the value to check.
      name: the argument named in the error (default ``sampler``).

    Returns:
      ``sampler`` itself.

    Raises:
      ArgumentError: naming ``name`` when ``sampler`` is not a :class:`Sampler` instance (a class is
        refused with a hint); or the error of its :meth:`Sampler.check` for invalid hyperparameters.
    """
    if not isinstance(sampler, Sampler):
        hint = " (pass an instance, e.g. DDIM())" if isinstance(sampler, type) else ""
        raise ArgumentError(
            name, f"expected a pifs_jax Sampler (DDIM, DPMSolverPP2M, Heun, ...){hint}, got {sampler!r}"
        )
    sampler.check()
    return sampler


def check_denoiser(eps_fn: EpsFn, x: Any, t: int = 1, *, name: str = "eps_fn") -> None:
    """Raise ``ArgumentError`` if ``eps_fn(x, t)`` does not return an array of ``x``'s shape.

    Uses ``equinox.filter_eval_shape``: nothing is computed.

    Args:
      eps_fn: the denoiser.
      x: a sample (only its shape and dtype are used).
      t: unused: the call is traced with an abstract int32 scalar timestep.
      name: the argument named in the error.

    Raises:
      ArgumentError: naming ``name`` (default ``eps_fn``), when the call fails or does not return
        an array of ``x``'s shape.
    """
    x = jnp.asarray(x)
    try:  # the denoiser's own array leaves (parameters) are abstract too
        out = eqx.filter_eval_shape(eps_fn, jax.ShapeDtypeStruct(x.shape, x.dtype), jax.ShapeDtypeStruct((), jnp.int32))
    except Exception as err:  # surface the model's own error with context
        raise ArgumentError(name, f"calling eps_fn(x, t) with x of shape {x.shape} failed: {err}") from err
    if not hasattr(out, "shape") or out.shape != x.shape:
        got = getattr(out, "shape", type(out).__name__)
        raise ArgumentError(name, f"the denoiser must return an array of the input's shape {x.shape}, got {got}")

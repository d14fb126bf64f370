"""DDIM (Song et al. 2021): the deterministic chain the theory is about, and its stochastic family.

One step ``t = tau_i -> s = tau_{i-1}`` (docs/theory.md section 3):

``x_s = a_t x_t + b_t epshat(x_t, t)``  (``eta = 0``), with the coefficients of
:func:`pifs_jax.geometry.step_coefficients`. With ``eta > 0`` (Song et al. 2021, eq. 12):

``x_s = a_t x_t + b_t^eta epshat + c_t z``, ``c_t = eta sqrt(sigma_s^2/sigma_t^2 (1 - ab_t/ab_s))``,
``b_t^eta = sqrt(sigma_s^2 - c_t^2) - a_t sigma_t = ((1 - a_t^2) - c_t^2) / (sqrt(sigma_s^2 - c_t^2) + a_t sigma_t)``,
``z ~ N(0, I)``; ``eta = 1`` is the DDPM posterior sample. At fixed noise ``z`` the step's
Jacobian is still ``a_t I + b_t^eta d epshat / dx``.

The model-free theory of the package (``L*_t``, ``f_t``, ``lambda**``, the suppression field
weighted by ``|b_t|``) is the theory of this map; other samplers have other per-step maps.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from pifs_jax._validation import check_floating, is_concrete
from pifs_jax.errors import ArgumentError
from pifs_jax.geometry import StepCoefficients, step_coefficients
from pifs_jax.grids import as_grid
from pifs_jax.samplers.base import Sampler, StepTables, table_row
from pifs_jax.schedules import Schedule, safe_sqrt
from pifs_jax.typing import EpsFn

__all__ = ["DDIM", "ChainSteps", "chain_steps", "check_eta", "ddim_step", "ddim_tables", "ddim_tables_from"]


class ChainSteps(NamedTuple):
    """Per-step DDIM coefficients ``(t, a_t, b_t^eta, c_t)``, each field shape ``(N,)``."""

    t: jax.Array
    """Integer timestep the step starts from (``tau_i``), passed to ``eps_fn``."""
    a: jax.Array
    """``a_t = sqrt(alpha_bar_s / alpha_bar_t)``."""
    b: jax.Array
    """``b_t^eta`` (``b_t`` of the deterministic step when ``eta = 0``; negative)."""
    noise_scale: jax.Array
    """``c_t`` of the stochastic step (zeros when ``eta = 0``)."""


def check_eta(eta: Any) -> None:
    """``eta`` must be a real scalar in ``[0, 1]`` (its value is checked when concrete).

    Args:
      eta: the DDIM stochasticity: a Python number or a scalar array (possibly traced).

    Raises:
      ArgumentError: naming ``eta`` when it is not a real (non-boolean) scalar, or when a concrete
        value lies outside ``[0, 1]``.
    """
    dtype = np.dtype(eta.dtype) if hasattr(eta, "dtype") else np.asarray(eta).dtype
    real = dtype.kind != "b" and (dtype.kind in "iuf" or jnp.issubdtype(dtype, jnp.floating))  # bfloat16: kind "V"
    if not real or jnp.ndim(eta) != 0:
        raise ArgumentError("eta", f"expected a real number in [0, 1], got {eta!r}")
    if is_concrete(eta) and not 0.0 <= float(eta) <= 1.0:
        raise ArgumentError(
            "eta", f"expected a number in [0, 1] (0 = deterministic DDIM, 1 = DDPM posterior), got {float(eta)!r}"
        )


def ddim_tables(sched: Schedule, grid: Any = None, *, eta: Any = 0.0) -> ChainSteps:
    """Per-step ``(t, a_t, b_t^eta, c_t)`` in grid order: entry ``i - 1`` is the step ``tau_i -> tau_{i-1}``.

    Args:
      sched: the schedule.
      grid: sampling grid ``0 = tau_0 < ... < tau_N <= T``; ``None`` = every training step.
      eta: a real scalar in ``[0, 1]``.

    Returns:
      :class:`ChainSteps`, each field of shape ``(N,)``.

    Raises:
      ArgumentError: naming ``grid`` or ``eta`` (outside ``[0, 1]``).
    """
    check_eta(eta)
    grid = jnp.asarray(as_grid(grid, sched.T))
    return ddim_tables_from(grid[1:], step_coefficients(sched, grid), eta=eta)


def ddim_tables_from(t: jax.Array, c: StepCoefficients | StepTables, *, eta: Any = 0.0) -> ChainSteps:
    """:class:`ChainSteps` of the steps from ``t`` with coefficients ``c`` (fields ``sigma_t``, ``sigma_s``, ``log_ratio``, ``a``).

    ``c_t^2 = eta^2 sigma_s^2 / sigma_t^2 (1 - alpha_bar_t / alpha_bar_s)`` (capped at ``sigma_s^2``),
    ``b_t^eta = (1 - a_t^2 - c_t^2) / (sqrt(sigma_s^2 - c_t^2) + a_t sigma_t)``.

    Args:
      t: the integer timesteps the steps start from, shape ``(N,)`` (stored as given).
      c: the steps' coefficients (:class:`~pifs_jax.geometry.StepCoefficients` or
        :class:`~pifs_jax.samplers.base.StepTables`), each field of shape ``(N,)``.
      eta: a real scalar in ``[0, 1]`` (not checked here: see :func:`check_eta`).

    Returns:
      :class:`ChainSteps`, each field of shape ``(N,)``.
    """
    eta = jnp.asarray(eta, c.a.dtype)
    sigma2_t, sigma2_s = c.sigma_t**2, c.sigma_s**2
    # c_t^2 = eta^2 sigma_s^2 / sigma_t^2 * (1 - ab_t / ab_s)
    noise2 = eta**2 * sigma2_s / sigma2_t * -jnp.expm1(-c.log_ratio)
    noise2 = jnp.minimum(noise2, sigma2_s)
    b = (-jnp.expm1(c.log_ratio) - noise2) / (safe_sqrt(sigma2_s - noise2) + c.a * c.sigma_t)
    return ChainSteps(t, c.a, b, safe_sqrt(noise2))


def chain_steps(sched: Schedule, grid: Any = None, *, eta: Any = 0.0) -> ChainSteps:
    """:func:`ddim_tables` in execution order ``tau_N -> ... -> tau_0`` (coarsest step first).

    Args:
      sched: the schedule.
      grid: sampling grid ``0 = tau_0 < ... < tau_N <= T``; ``None`` = every training step.
      eta: a real scalar in ``[0, 1]``.

    Returns:
      :class:`ChainSteps`, each field of shape ``(N,)``, entry 0 the coarsest step
      ``tau_N -> tau_{N-1}``.

    Raises:
      ArgumentError: naming ``grid`` or ``eta`` (not a real scalar in ``[0, 1]``).
    """
    return jax.tree_util.tree_map(lambda v: v[::-1], ddim_tables(sched, grid, eta=eta))


def ddim_step(eps_fn: EpsFn, x: jax.Array, t: Any, a: Any, b: Any) -> jax.Array:
    """One deterministic DDIM step ``Phi_t(x) = a_t x + b_t epshat(x, t)``.

    Args:
      eps_fn: ``eps_fn(x, t)`` returning an array of ``x``'s shape.
      x: the sample at ``t``, floating dtype.
      t: integer timestep passed to ``eps_fn``.
      a: ``a_t`` of the step.
      b: ``b_t`` of the step.

    Returns:
      ``Phi_t(x)``, of ``x``'s shape.

    Raises:
      ArgumentError: naming ``x`` if its dtype is not floating (checked under ``jax.jit`` too).
    """
    check_floating(x, name="x")
    return a * x + b * eps_fn(x, t)


class DDIM(Sampler):
    """DDIM with stochasticity ``eta`` in ``[0, 1]``: ``0`` (default) is the deterministic PIFS map, ``1`` DDPM.

    The state is the image. One denoiser evaluation per step.

    Attributes:
      eta: the stochasticity, a real scalar in ``[0, 1]``: a static Python float (one compilation
        per value) or a traced scalar; any ``eta`` other than a concrete ``0`` makes the chain
        stochastic (a PRNG key is required, one normal draw per step).
    """

    eta: Any = 0.0

    @property
    def stochastic(self) -> bool:
        """False only for a concrete ``eta == 0``."""
        return not (is_concrete(self.eta) and float(self.eta) == 0.0)

    @property
    def needs_key(self) -> bool:
        return self.stochastic

    def check(self) -> None:
        check_eta(self.eta)

    def tables_from(self, steps: StepTables) -> ChainSteps:
        return ddim_tables_from(steps.t, steps, eta=self.eta)

    def step(
        self, eps_fn: EpsFn, tables: ChainSteps, state: jax.Array, i: jax.Array, key: jax.Array | None
    ) -> jax.Array:
        row = table_row(tables, i)
        x = state
        x_next = ddim_step(eps_fn, x, row.t, row.a.astype(x.dtype), row.b.astype(x.dtype))
        if self.stochastic and key is not None:
            x_next = x_next + row.noise_scale.astype(x.dtype) * jax.random.normal(key, x.shape, x.dtype)
        return x_next

    def nfe(self, num_steps: int) -> int:
        return int(num_steps)

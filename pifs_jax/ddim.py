"""The DDIM reverse chain as a pure, jitted JAX program.

One step ``t = tau_i -> s = tau_{i-1}`` (docs/theory.md section 3):

``x_s = a_t x_t + b_t epshat(x_t, t)``  (deterministic, ``eta = 0``), with the coefficients of
:func:`pifs_jax.geometry.step_coefficients`. With ``eta > 0`` (Song et al. 2021, eq. 12):

``x_s = a_t x_t + b_t^eta epshat + c_t z``, ``c_t = eta sqrt(sigma_s^2/sigma_t^2 (1 - ab_t/ab_s))``,
``b_t^eta = sqrt(sigma_s^2 - c_t^2) - a_t sigma_t = ((1 - a_t^2) - c_t^2) / (sqrt(sigma_s^2 - c_t^2) + a_t sigma_t)``,
``z ~ N(0, I)``; ``eta = 1`` is the DDPM posterior sample.

A denoiser is any function ``eps_fn(x, t)`` of one sample ``x`` (any shape) and the integer
timestep ``t`` of this package's convention (``alpha_bar[t]``), returning an array of ``x``'s
shape. Model parameters travel by closure: ``jax.grad(lambda p: loss(ddim_chain(partial(net, p),
...)))`` differentiates through the whole chain with respect to ``p`` (and the schedule).
Batches come from :func:`ddim_sample` (``jax.vmap``).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from pifs_jax._validation import is_concrete
from pifs_jax.geometry import StepCoefficients, step_coefficients
from pifs_jax.grids import as_grid
from pifs_jax.schedules import Schedule, safe_sqrt
from pifs_jax.errors import ArgumentError

__all__ = ["ddim_step", "ddim_chain", "ddim_sample", "check_denoiser", "chain_steps", "ChainSteps"]

EpsFn = Callable[[jax.Array, jax.Array], jax.Array]


class ChainSteps(NamedTuple):
    """The chain's steps in execution order (coarsest first), each field shape ``(N,)``."""

    t: jax.Array
    """Integer timestep the step starts from (``tau_i``), passed to ``eps_fn``."""
    a: jax.Array
    b: jax.Array
    noise_scale: jax.Array
    """``c_t`` of the stochastic step (zeros when ``eta = 0``)."""


def chain_steps(sched: Schedule, grid: Any = None, *, eta: Any = 0.0) -> ChainSteps:
    """Per-step ``(t, a_t, b_t^eta, c_t)`` in execution order ``tau_N -> ... -> tau_0``."""
    grid = jnp.asarray(as_grid(grid, sched.T))
    c: StepCoefficients = step_coefficients(sched, grid)
    eta = jnp.asarray(eta, c.a.dtype)
    sigma2_t, sigma2_s = c.sigma_t**2, c.sigma_s**2
    # c_t^2 = eta^2 sigma_s^2 / sigma_t^2 * (1 - ab_t / ab_s)
    noise2 = eta**2 * sigma2_s / sigma2_t * -jnp.expm1(-c.log_ratio)
    noise2 = jnp.minimum(noise2, sigma2_s)
    b = (-jnp.expm1(c.log_ratio) - noise2) / (
        safe_sqrt(sigma2_s - noise2) + c.a * c.sigma_t
    )
    steps = ChainSteps(grid[1:], c.a, b, safe_sqrt(noise2))
    return jax.tree_util.tree_map(lambda v: v[::-1], steps)


def ddim_step(eps_fn: EpsFn, x: jax.Array, t: Any, a: Any, b: Any) -> jax.Array:
    """One deterministic DDIM step ``Phi_t(x) = a_t x + b_t epshat(x, t)``."""
    return a * x + b * eps_fn(x, t)


def check_denoiser(eps_fn: EpsFn, x: Any, t: int = 1, *, name: str = "eps_fn") -> None:
    """Raise ``ValueError`` if ``eps_fn(x, t)`` does not return an array of ``x``'s shape.

    Uses ``jax.eval_shape``: nothing is computed.
    """
    x = jnp.asarray(x)
    try:
        out = jax.eval_shape(eps_fn, jax.ShapeDtypeStruct(x.shape, x.dtype), jax.ShapeDtypeStruct((), jnp.int32))
    except Exception as err:  # surface the model's own error with context
        raise ArgumentError(name, f"calling eps_fn(x, t) with x of shape {x.shape} failed: {err}") from err
    if not hasattr(out, "shape") or out.shape != x.shape:
        got = getattr(out, "shape", type(out).__name__)
        raise ArgumentError(name, f"the denoiser must return an array of the input's shape {x.shape}, got {got}")


def _first_nonfinite_step(trajectory: jax.Array) -> int | None:
    finite = np.asarray(jnp.all(jnp.isfinite(trajectory.reshape(trajectory.shape[0], -1)), axis=1))
    bad = np.flatnonzero(~finite)
    return None if bad.size == 0 else int(bad[0])


def ddim_chain(
    eps_fn: EpsFn,
    sched: Schedule,
    x_T: jax.Array,
    *,
    grid: Any = None,
    return_trajectory: bool = False,
    eta: Any = 0.0,
    key: jax.Array | None = None,
    check_finite: bool = False,
):
    """Run the DDIM reverse chain from ``x_T`` (at ``tau_N``) down to ``x_0`` (at ``tau_0 = 0``).

    A ``lax.scan`` over the grid's explicit ``(alpha_bar_t, alpha_bar_s)`` pairs, coarsest first.

    Args:
      eps_fn: ``eps_fn(x, t) -> array of x's shape``; ``t`` is an int32 scalar (traced).
      sched: the schedule.
      x_T: one sample, any shape. Use :func:`ddim_sample` (or ``jax.vmap``) for batches.
      grid: sampling grid ``0 = tau_0 < ... < tau_N <= T``; ``None`` = every training step.
      return_trajectory: also return all states, shape ``(N+1,) + x.shape``, ordered
        ``x_{tau_N}, ..., x_{tau_0}``.
      eta: stochasticity (0 = deterministic DDIM, 1 = DDPM posterior); ``key`` required if > 0.
      key: PRNG key for ``eta > 0``.
      check_finite: (eager use only) raise ``ValueError`` naming the first step that produced a
        non-finite value.

    Returns:
      ``x_0``, or ``(x_0, trajectory)`` with ``return_trajectory=True``.
    """
    x_T = jnp.asarray(x_T)
    concrete = is_concrete(x_T, sched, grid)
    if concrete:
        check_denoiser(eps_fn, x_T)
    stochastic = not (is_concrete(eta) and float(eta) == 0.0)
    if stochastic and key is None:
        raise ArgumentError("key", "a PRNG key is required when eta > 0 (stochastic DDIM steps)")
    steps = chain_steps(sched, grid, eta=eta)
    n_steps = steps.t.shape[0]
    noise_keys = jax.random.split(key, n_steps) if stochastic else jnp.zeros((n_steps,), jnp.uint32)

    def body(x, inputs):
        step, step_key = inputs
        x_next = ddim_step(eps_fn, x, step.t, step.a.astype(x.dtype), step.b.astype(x.dtype))
        if stochastic:
            x_next = x_next + step.noise_scale.astype(x.dtype) * jax.random.normal(step_key, x.shape, x.dtype)
        return x_next, x_next

    want_trajectory = return_trajectory or (check_finite and concrete)
    x_0, states = jax.lax.scan(body, x_T, (steps, noise_keys))
    if not want_trajectory:
        return x_0
    trajectory = jnp.concatenate([x_T[None], states], axis=0)
    if check_finite and concrete:
        bad = _first_nonfinite_step(trajectory)
        if bad is not None:
            t_values = np.asarray(steps.t)
            if bad == 0:
                raise ArgumentError("x_T", "the initial state contains non-finite values")
            raise ArgumentError("ddim_chain", f"non-finite values first appear after sampling step {bad} of {n_steps} "
                f"(t = {int(t_values[bad - 1])} -> the next grid point); check the denoiser at that timestep"
            )
    return (x_0, trajectory) if return_trajectory else x_0


def ddim_sample(
    eps_fn: EpsFn,
    sched: Schedule,
    x_T: jax.Array,
    *,
    grid: Any = None,
    return_trajectory: bool = False,
    eta: Any = 0.0,
    key: jax.Array | None = None,
):
    """:func:`ddim_chain` over a batch ``x_T`` of shape ``(B,) + sample_shape`` via ``jax.vmap``.

    With ``eta > 0`` each sample gets its own key (``jax.random.split(key, B)``).
    """
    x_T = jnp.asarray(x_T)
    if x_T.ndim < 1:
        raise ArgumentError("x_T", f"expected a batch with a leading axis, got shape {x_T.shape}")
    if is_concrete(x_T):
        check_denoiser(eps_fn, x_T[0])
    stochastic = not (is_concrete(eta) and float(eta) == 0.0)
    if stochastic and key is None:
        raise ArgumentError("key", "a PRNG key is required when eta > 0 (stochastic DDIM steps)")
    keys = jax.random.split(key, x_T.shape[0]) if stochastic else None

    def one(x, k):
        return ddim_chain(eps_fn, sched, x, grid=grid, return_trajectory=return_trajectory, eta=eta, key=k)

    if keys is None:
        return jax.vmap(lambda x: one(x, None))(x_T)
    return jax.vmap(one)(x_T, keys)

"""The DDIM reverse chain as a pure, jitted JAX program.

One step ``t = tau_i -> s = tau_{i-1}`` (docs/theory.md section 3):

``x_s = a_t x_t + b_t epshat(x_t, t)``  (deterministic, ``eta = 0``), with the coefficients of
:func:`pifs_jax.geometry.step_coefficients`. With ``eta > 0`` (Song et al. 2021, eq. 12):

``x_s = a_t x_t + b_t^eta epshat + c_t z``, ``c_t = eta sqrt(sigma_s^2/sigma_t^2 (1 - ab_t/ab_s))``,
``b_t^eta = sqrt(sigma_s^2 - c_t^2) - a_t sigma_t = ((1 - a_t^2) - c_t^2) / (sqrt(sigma_s^2 - c_t^2) + a_t sigma_t)``,
``z ~ N(0, I)``; ``eta = 1`` is the DDPM posterior sample.

A denoiser is any function ``eps_fn(x, t)`` of one sample ``x`` (any shape) and the integer
timestep ``t`` of this package's convention (``alpha_bar[t]``), returning an array of ``x``'s
shape. Pass model parameters inside a pytree callable, ``jax.tree_util.Partial(apply_one, params)``
(what :func:`pifs_jax.models.as_eps_fn` returns): the chain is compiled with ``equinox.filter_jit``,
which traces the denoiser's array leaves as arguments and keeps everything else static, so a
second parameter set of the same architecture compiles nothing new and no compiled program holds
the parameters. A plain closure works too, compiled once per closure object (its captured arrays
are constants of that program). ``jax.grad(lambda p: loss(ddim_chain(Partial(apply_one, p),
...)))`` differentiates through the whole chain with respect to ``p`` (and the schedule).
Batches come from :func:`ddim_sample` (``jax.vmap``).

Inputs and results (docs/guides/chain-dynamics.md): states must have a floating dtype (an
integer ``x_T`` is refused, never promoted: a ``uint8`` image in 0..255 is not a state of the
chain); ``0 <= eta <= 1``; and an eager call checks its result with one reduction, raising
:class:`pifs_jax.errors.NonFiniteError` that names the first non-finite step
(``check_finite=False`` skips it; under ``jax.jit`` / ``jax.grad`` nothing is checked).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from pifs_jax._validation import check_floating, is_concrete
from pifs_jax.errors import ArgumentError, NonFiniteError
from pifs_jax.geometry import StepCoefficients, step_coefficients
from pifs_jax.grids import as_grid
from pifs_jax.schedules import Schedule, safe_sqrt

__all__ = [
    "ChainSteps",
    "chain_steps",
    "check_denoiser",
    "ddim_chain",
    "ddim_sample",
    "ddim_step",
    "locate_nonfinite",
]

EpsFn = Callable[[jax.Array, jax.Array], jax.Array]


class ChainSteps(NamedTuple):
    """The chain's steps in execution order (coarsest first), each field shape ``(N,)``."""

    t: jax.Array
    """Integer timestep the step starts from (``tau_i``), passed to ``eps_fn``."""
    a: jax.Array
    b: jax.Array
    noise_scale: jax.Array
    """``c_t`` of the stochastic step (zeros when ``eta = 0``)."""


def _check_eta(eta: Any) -> None:
    """``eta`` must be a real scalar in ``[0, 1]`` (its value is checked when concrete)."""
    dtype = np.dtype(eta.dtype) if hasattr(eta, "dtype") else np.asarray(eta).dtype
    real = dtype != bool and (dtype.kind in "iuf" or jnp.issubdtype(dtype, jnp.floating))  # bfloat16: kind "V"
    if not real or jnp.ndim(eta) != 0:
        raise ArgumentError("eta", f"expected a real number in [0, 1], got {eta!r}")
    if is_concrete(eta) and not 0.0 <= float(eta) <= 1.0:
        raise ArgumentError(
            "eta", f"expected a number in [0, 1] (0 = deterministic DDIM, 1 = DDPM posterior), got {float(eta)!r}"
        )


def chain_steps(sched: Schedule, grid: Any = None, *, eta: Any = 0.0) -> ChainSteps:
    """Per-step ``(t, a_t, b_t^eta, c_t)`` in execution order ``tau_N -> ... -> tau_0``.

    Raises:
      ValueError: naming ``grid`` or ``eta`` (outside ``[0, 1]``).
    """
    _check_eta(eta)
    grid = jnp.asarray(as_grid(grid, sched.T))
    c: StepCoefficients = step_coefficients(sched, grid)
    eta = jnp.asarray(eta, c.a.dtype)
    sigma2_t, sigma2_s = c.sigma_t**2, c.sigma_s**2
    # c_t^2 = eta^2 sigma_s^2 / sigma_t^2 * (1 - ab_t / ab_s)
    noise2 = eta**2 * sigma2_s / sigma2_t * -jnp.expm1(-c.log_ratio)
    noise2 = jnp.minimum(noise2, sigma2_s)
    b = (-jnp.expm1(c.log_ratio) - noise2) / (safe_sqrt(sigma2_s - noise2) + c.a * c.sigma_t)
    steps = ChainSteps(grid[1:], c.a, b, safe_sqrt(noise2))
    return jax.tree_util.tree_map(lambda v: v[::-1], steps)


def ddim_step(eps_fn: EpsFn, x: jax.Array, t: Any, a: Any, b: Any) -> jax.Array:
    """One deterministic DDIM step ``Phi_t(x) = a_t x + b_t epshat(x, t)``.

    Raises:
      ValueError: naming ``x`` if its dtype is not floating (checked under ``jax.jit`` too).
    """
    check_floating(x, name="x")
    return a * x + b * eps_fn(x, t)


def check_denoiser(eps_fn: EpsFn, x: Any, t: int = 1, *, name: str = "eps_fn") -> None:
    """Raise ``ValueError`` if ``eps_fn(x, t)`` does not return an array of ``x``'s shape.

    Uses ``jax.eval_shape``: nothing is computed.
    """
    x = jnp.asarray(x)
    try:  # the denoiser's own array leaves (parameters) are abstract too
        out = eqx.filter_eval_shape(eps_fn, jax.ShapeDtypeStruct(x.shape, x.dtype), jax.ShapeDtypeStruct((), jnp.int32))
    except Exception as err:  # surface the model's own error with context
        raise ArgumentError(name, f"calling eps_fn(x, t) with x of shape {x.shape} failed: {err}") from err
    if not hasattr(out, "shape") or out.shape != x.shape:
        got = getattr(out, "shape", type(out).__name__)
        raise ArgumentError(name, f"the denoiser must return an array of the input's shape {x.shape}, got {got}")


def locate_nonfinite(
    eps_fn: EpsFn,
    sched: Schedule,
    x_T: Any,
    *,
    grid: Any = None,
    eta: Any = 0.0,
    key: jax.Array | None = None,
    trajectory: Any = None,
    context: str = "",
) -> NonFiniteError | None:
    """The error describing where the chain from ``x_T`` first turns non-finite, or ``None``.

    Finds the first state ``x^(j)`` (after ``j`` steps, ``x^(0) = x_T``) with a NaN or infinite
    entry, from ``trajectory`` (shape ``(N+1,) + x_T.shape``, as :func:`ddim_chain` returns it)
    or, without one, by running the chain again eagerly (same ``eta`` and ``key``: the same
    numbers). The error's ``.argument`` says what to blame:

    - ``x_T`` when the initial state itself is non-finite;
    - ``sched`` when the step's coefficients ``a_t``, ``b_t`` (or ``c_t``) are not finite in the
      state's dtype (a schedule end point ``alpha_bar_T`` so small that ``a_t = sqrt(ab_s/ab_t)``
      overflows);
    - ``eps_fn`` otherwise, saying whether the denoiser's output at that step was non-finite.

    Args:
      eps_fn, sched, x_T, grid, eta, key: as for :func:`ddim_chain` (one sample).
      trajectory: the chain's states if already computed.
      context: prefix of the message (e.g. which sample of a batch).

    Returns:
      A :class:`pifs_jax.errors.NonFiniteError` to raise, or ``None`` if every state is finite.
    """
    x_T = jnp.asarray(x_T)
    if trajectory is None:
        _, trajectory = ddim_chain(
            eps_fn, sched, x_T, grid=grid, eta=eta, key=key, return_trajectory=True, check_finite=False
        )
    trajectory = jnp.asarray(trajectory)
    counts = np.asarray(jnp.sum(~jnp.isfinite(trajectory.reshape(trajectory.shape[0], -1)), axis=1))
    bad = np.flatnonzero(counts)
    if bad.size == 0:
        return None
    j, size = int(bad[0]), x_T.size
    if j == 0:
        return NonFiniteError("x_T", f"{context}the initial state has {counts[0]} non-finite of its {size} values")
    g = np.asarray(as_grid(grid, sched.T))
    n_steps = g.shape[0] - 1
    t, s = int(g[n_steps - j + 1]), int(g[n_steps - j])
    where = (
        f"{context}non-finite values first appear after sampling step {j} of {n_steps} (t = {t} -> s = {s}), "
        f"in {counts[j]} of the state's {size} values"
    )
    steps = chain_steps(sched, g, eta=eta)
    coefficients = jnp.stack([steps.a[j - 1], steps.b[j - 1], steps.noise_scale[j - 1]])  # execution order
    if not bool(jnp.all(jnp.isfinite(coefficients.astype(x_T.dtype)))):
        return NonFiniteError(
            "sched",
            f"{where}; the step's coefficients (a_t, b_t, c_t) = {tuple(np.asarray(coefficients).tolist())} are not "
            f"finite in {x_T.dtype}: the schedule's alpha_bar_t = {np.exp(float(sched.log_alpha_bar[t])):.3g} is too small "
            "(check the schedule's end point alpha_bar_T, or use float64)",
        )
    eps = np.asarray(eps_fn(trajectory[j - 1], jnp.asarray(t, jnp.int32)))
    eps_bad = int(np.sum(~np.isfinite(eps)))
    if eps_bad:
        hint = f"the denoiser's output at t = {t} has {eps_bad} non-finite values; check eps_fn at that timestep"
    else:
        hint = (
            f"the denoiser's output at t = {t} is finite (max |eps| = {float(np.max(np.abs(eps))):.3g}), so "
            f"a_t x + b_t eps overflowed {x_T.dtype}; check the denoiser's output scale and the schedule's end point"
        )
    return NonFiniteError("eps_fn", f"{where}; {hint}")


def _chain_scan(eps_fn: EpsFn, steps: ChainSteps, x_T: jax.Array, key: Any, *, stochastic: bool, keep_states: bool):
    """``(x_0, states after each step or None)``: the ``lax.scan`` of the chain over ``steps`` (one sample)."""
    n_steps = steps.t.shape[0]
    noise_keys = jax.random.split(key, n_steps) if stochastic else jnp.zeros((n_steps,), jnp.uint32)

    def body(x, inputs):
        step, step_key = inputs
        x_next = ddim_step(eps_fn, x, step.t, step.a.astype(x.dtype), step.b.astype(x.dtype))
        if stochastic:
            x_next = x_next + step.noise_scale.astype(x.dtype) * jax.random.normal(step_key, x.shape, x.dtype)
        return x_next, x_next if keep_states else None

    return jax.lax.scan(body, x_T, (steps, noise_keys))


# The denoiser is an argument: its array leaves (parameters) are traced, the rest is static.
_compiled_chain = eqx.filter_jit(_chain_scan)


@eqx.filter_jit
def _compiled_batch(
    eps_fn: EpsFn, steps: ChainSteps, x_T: jax.Array, keys: Any, *, stochastic: bool, keep_states: bool
):
    """:func:`_chain_scan` over a batch ``x_T`` (``keys``: one PRNG key per sample, or ``None``)."""
    if keys is None:
        return jax.vmap(lambda x: _chain_scan(eps_fn, steps, x, None, stochastic=False, keep_states=keep_states))(x_T)
    chain = functools.partial(_chain_scan, eps_fn, steps, stochastic=stochastic, keep_states=keep_states)
    return jax.vmap(chain)(x_T, keys)


def ddim_chain(
    eps_fn: EpsFn,
    sched: Schedule,
    x_T: jax.Array,
    *,
    grid: Any = None,
    return_trajectory: bool = False,
    eta: Any = 0.0,
    key: jax.Array | None = None,
    check_finite: bool = True,
):
    """Run the DDIM reverse chain from ``x_T`` (at ``tau_N``) down to ``x_0`` (at ``tau_0 = 0``).

    A ``lax.scan`` over the grid's explicit ``(alpha_bar_t, alpha_bar_s)`` pairs, coarsest first.

    Args:
      eps_fn: ``eps_fn(x, t) -> array of x's shape``; ``t`` is an int32 scalar (traced).
      sched: the schedule.
      x_T: one sample, any shape, floating dtype (integers are refused, not promoted). Use
        :func:`ddim_sample` (or ``jax.vmap``) for batches.
      grid: sampling grid ``0 = tau_0 < ... < tau_N <= T``; ``None`` = every training step.
        Integer-valued floats are converted exactly; fractional values are refused.
      return_trajectory: also return all states, shape ``(N+1,) + x.shape``, ordered
        ``x_{tau_N}, ..., x_{tau_0}``.
      eta: stochasticity in ``[0, 1]`` (0 = deterministic DDIM, 1 = DDPM posterior); ``key``
        required if > 0.
      key: PRNG key for ``eta > 0``.
      check_finite: when the result is concrete (an eager call; under ``jax.jit`` / ``jax.grad``
        it is traced and nothing is checked), test it with one reduction and raise
        :class:`pifs_jax.errors.NonFiniteError` if it is not finite, naming the first step
        (``t -> s``) that produced a non-finite value (found from the trajectory, or by running
        the chain again). ``False`` returns NaN/inf results silently.

    Returns:
      ``x_0``, or ``(x_0, trajectory)`` with ``return_trajectory=True``.

    Raises:
      ValueError: naming ``x_T`` (not floating), ``eta`` (outside ``[0, 1]``), ``key``, ``grid``,
        ``eps_fn`` (output shape); :class:`~pifs_jax.errors.NonFiniteError` (a ``ValueError`` and a
        ``FloatingPointError``) for a non-finite result (see :func:`locate_nonfinite`).
    """
    x_T = jnp.asarray(x_T)
    check_floating(x_T, name="x_T")
    _check_eta(eta)
    if is_concrete(x_T, sched, grid):
        check_denoiser(eps_fn, x_T)
    stochastic = not (is_concrete(eta) and float(eta) == 0.0)
    if stochastic and key is None:
        raise ArgumentError("key", "a PRNG key is required when eta > 0 (stochastic DDIM steps)")
    steps = chain_steps(sched, grid, eta=eta)
    x_0, states = _compiled_chain(eps_fn, steps, x_T, key, stochastic=stochastic, keep_states=bool(return_trajectory))
    trajectory = jnp.concatenate([x_T[None], states], axis=0) if return_trajectory else None
    if check_finite and is_concrete(x_0) and not bool(jnp.all(jnp.isfinite(x_0))):
        error = locate_nonfinite(eps_fn, sched, x_T, grid=grid, eta=eta, key=key, trajectory=trajectory)
        raise error or NonFiniteError("eps_fn", "the chain's result is not finite")
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
    check_finite: bool = True,
):
    """:func:`ddim_chain` over a batch ``x_T`` of shape ``(B,) + sample_shape`` via ``jax.vmap``.

    With ``eta > 0`` each sample gets its own key (``jax.random.split(key, B)``).
    ``check_finite`` as for :func:`ddim_chain` (one reduction over the batch's ``x_0``); the
    error names the first non-finite sample and its first non-finite step.
    """
    x_T = jnp.asarray(x_T)
    if x_T.ndim < 1:
        raise ArgumentError("x_T", f"expected a batch with a leading axis, got shape {x_T.shape}")
    check_floating(x_T, name="x_T")
    _check_eta(eta)
    if is_concrete(x_T):
        check_denoiser(eps_fn, x_T[0])
    stochastic = not (is_concrete(eta) and float(eta) == 0.0)
    if stochastic and key is None:
        raise ArgumentError("key", "a PRNG key is required when eta > 0 (stochastic DDIM steps)")
    keys = jax.random.split(key, x_T.shape[0]) if stochastic else None
    steps = chain_steps(sched, grid, eta=eta)
    x_0, states = _compiled_batch(eps_fn, steps, x_T, keys, stochastic=stochastic, keep_states=bool(return_trajectory))
    out = (x_0, jnp.concatenate([x_T[:, None], states], axis=1)) if return_trajectory else x_0
    x_0 = out[0] if return_trajectory else out
    if check_finite and is_concrete(x_0):
        finite = np.asarray(jnp.all(jnp.isfinite(x_0.reshape(x_0.shape[0], -1)), axis=1))
        if not finite.all():
            i = int(np.flatnonzero(~finite)[0])
            error = locate_nonfinite(
                eps_fn, sched, x_T[i], grid=grid, eta=eta, key=None if keys is None else keys[i],
                trajectory=out[1][i] if return_trajectory else None, context=f"sample {i} of {x_T.shape[0]}: ",
            )  # fmt: skip
            raise error or NonFiniteError("eps_fn", f"sample {i} of {x_T.shape[0]}: the chain's result is not finite")
    return out

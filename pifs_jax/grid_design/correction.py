"""Beyond the grid: per-step corrections of the denoiser's output, fitted through the solver.

A grid chooses where the solver evaluates the network; it cannot change what the solver does with
the evaluation. A few scalars per step can. The corrected denoiser of a grid ``tau_0 < ... < tau_N``
is, at the step that starts from ``t = tau_i``,

``epshat'(x, t) = g_i epshat(s_i x, t) + c_i x``,

with a gain ``g_i = exp(u_i)``, an input scale ``s_i = exp(v_i)`` and a shift ``c_i`` per step (``3N``
numbers; ``g = s = 1, c = 0`` is the plain solver). The input scale is the one non-linear freedom:
the network sees a state rescaled toward (``s < 1``) or away from the noise level it was trained at,
the correction of exposure bias in the manner of Ning et al. 2023, fitted instead of fixed. Every solver of the package uses the network only through ``epshat``, so the same
correction applies to DDIM (whose step becomes ``x_s = (a + b c_i) x + b g_i epshat``: its two
coefficients freed, step by step) and to DPM-Solver++(2M) (its data prediction
``D = (x - sigma epshat') / alpha`` gets a free scale and a free multiple of ``x``, the history
included). The scalars are fitted as the gradient grid is (in the manner of LD3 and of Shaul et
al.'s bespoke solvers, 2023): Adam on the mean squared distance of the ``N``-step result to the
reference solutions of the design seeds (``loss="mse"``, the default; ``loss="rmse"`` takes the mean
over seeds of each seed's RMSE instead, the judged metric's own form, which weighs a seed with a
large error less than its square does), through ``jax.grad`` of the whole chain with each step
under ``jax.checkpoint``, from the plain solver (``u = v = c = 0``); the iterate with the lowest design
loss is kept (selection on the design seeds only).

The correction is tied to its grid: the wrapper matches the step's start time ``t`` against
``times = tau_1..tau_N`` and acts as the plain denoiser at any other time, so on another grid it
changes nothing. Outside the package (e.g. in diffusers), call the network as
``g[k] * unet(s[k] * x, t) + c[k] * x`` at the ``k``-th step (``times[k] == t``).
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from pifs_jax._validation import check_positive_float, check_positive_int
from pifs_jax.errors import ArgumentError
from pifs_jax.grids import as_grid
from pifs_jax.optimize.engine import default_optimizer
from pifs_jax.samplers import DDIM, Sampler, chain_from_tables
from pifs_jax.schedules import Schedule
from pifs_jax.typing import EpsFn

__all__ = [
    "CORRECTION_LOSSES",
    "CorrectedDenoiser",
    "CorrectionResult",
    "StepCorrections",
    "corrected_denoiser",
    "correction_loss",
    "fit_step_corrections",
    "plain_corrections",
]


class StepCorrections(NamedTuple):
    """The per-step scalars of a corrected denoiser, entry ``i - 1`` for the step from ``tau_i``."""

    times: np.ndarray
    """int64 ``(N,)``: ``tau_1..tau_N``, the start times the corrections belong to."""
    gain: np.ndarray
    """``(N,)``: ``g_i`` (positive)."""
    scale: np.ndarray
    """``(N,)``: ``s_i`` (positive), the scale of the network's input."""
    shift: np.ndarray
    """``(N,)``: ``c_i``."""


def plain_corrections(grid: Any, T: int) -> StepCorrections:
    """The corrections that change nothing on ``grid`` (``g = s = 1``, ``c = 0`` at every step).

    Args:
      grid: the integer grid ``0 = tau_0 < ... < tau_N <= T``; ``None`` is every step ``0..T``.
      T: the schedule's number of training steps.

    Returns:
      :class:`StepCorrections` with ``times = tau_1..tau_N`` (int64), gains and scales of one and shifts
      of zero (float64), each of shape ``(N,)``.

    Raises:
      ArgumentError: naming ``grid`` for an invalid grid (:func:`pifs_jax.grids.as_grid`).
    """
    times = np.asarray(as_grid(grid, T), np.int64)[1:]
    ones = np.ones(times.shape, np.float64)
    return StepCorrections(times, ones, ones.copy(), np.zeros(times.shape, np.float64))


class CorrectedDenoiser(eqx.Module):
    """``epshat'(x, t) = g_i epshat(s_i x, t) + c_i x`` where ``times[i] == t`` (the plain ``epshat`` elsewhere); a pytree."""

    eps_fn: EpsFn
    times: jax.Array
    gain: jax.Array
    scale: jax.Array
    shift: jax.Array

    def __call__(self, x: jax.Array, t: Any) -> jax.Array:
        match = self.times == jnp.asarray(t).astype(self.times.dtype)
        matched = jnp.any(match)
        gain = jnp.where(matched, jnp.sum(jnp.where(match, self.gain, 0.0)), 1.0).astype(x.dtype)
        scale = jnp.where(matched, jnp.sum(jnp.where(match, self.scale, 0.0)), 1.0).astype(x.dtype)
        shift = jnp.sum(jnp.where(match, self.shift, 0.0)).astype(x.dtype)
        return gain * self.eps_fn(scale * x, t) + shift * x


def corrected_denoiser(eps_fn: EpsFn, corrections: StepCorrections) -> CorrectedDenoiser:
    """The denoiser ``eps_fn`` with ``corrections`` applied (module docstring); pass it wherever an ``eps_fn`` goes.

    Args:
      eps_fn: the denoiser of one sample, ``eps_fn(x, t)``.
      corrections: the per-step scalars (the ``corrections`` of :func:`fit_step_corrections`'s result,
        or :func:`plain_corrections`): ``times``, ``gain``, ``scale`` and ``shift`` of one shape ``(N,)``.

    Returns:
      :class:`CorrectedDenoiser`: ``g_i eps_fn(s_i x, t) + c_i x`` where ``times[i] == t``, the plain
      ``eps_fn`` at any other time.

    Raises:
      ArgumentError: naming ``corrections`` when its four arrays are not of one shape ``(N,)``, when a
        gain, scale or shift is not finite, or when a gain or scale is not positive.
    """
    times = np.asarray(corrections.times)
    gain, scale, shift = (np.asarray(v, np.float64) for v in corrections[1:])
    if times.ndim != 1 or any(v.shape != times.shape for v in (gain, scale, shift)):
        shapes = [np.shape(v) for v in corrections]
        raise ArgumentError("corrections", f"expected times, gain, scale and shift of one shape (N,), got {shapes}")
    if not (np.all(np.isfinite(corrections[1:])) and np.all(gain > 0) and np.all(scale > 0)):
        raise ArgumentError("corrections", "expected finite shifts and finite positive gains and scales")
    arrays = (jnp.asarray(v) for v in (gain, scale, shift))
    return CorrectedDenoiser(eps_fn, jnp.asarray(times, jnp.int32), *arrays)


class CorrectionResult(NamedTuple):
    """The fitted corrections (the iterate with the lowest design loss) and the run's record."""

    corrections: StepCorrections
    losses: list[float]
    """Design loss (the fit's ``loss`` against the reference) per iteration, the plain solver's first."""
    network_evaluations: int
    seconds: float


def _denoiser(params, eps_fn, times):
    u, v, c = params
    return CorrectedDenoiser(eps_fn, times, jnp.exp(u), jnp.exp(v), c)


#: The design losses of :func:`fit_step_corrections`.
CORRECTION_LOSSES = ("mse", "rmse")


def correction_loss(x_0: jax.Array, reference: jax.Array, loss: str) -> jax.Array:
    """The design loss of ``R`` results ``x_0`` against their references (both ``(R,) + shape``).

    ``"mse"``: ``mean_{r, j} (x_0 - ref)_{rj}^2``. ``"rmse"``: ``mean_r sqrt(mean_j (x_0 - ref)_{rj}^2)``,
    the mean per-seed RMSE (the square root clamped at the dtype's ``tiny``, so a seed matched exactly
    contributes a zero gradient, not ``0 * inf``).
    """
    squared = jnp.mean(((x_0 - reference) ** 2).reshape(x_0.shape[0], -1), axis=1)
    if loss == "mse":
        return jnp.mean(squared)
    return jnp.mean(jnp.sqrt(jnp.maximum(squared, jnp.finfo(squared.dtype).tiny)))


def _loss(params, eps_fn, times, tables, sampler, x_T, reference, loss):
    denoiser = _denoiser(params, eps_fn, times)
    x_0 = jax.vmap(lambda x: chain_from_tables(denoiser, tables, x, sampler=sampler, remat=True))(x_T)
    return correction_loss(x_0, reference, loss)


@eqx.filter_jit
def _update(params, opt_state, eps_fn, times, tables, sampler, x_T, reference, optimizer, loss):
    loss, grad = jax.value_and_grad(_loss)(params, eps_fn, times, tables, sampler, x_T, reference, loss)
    updates, opt_state = optimizer.update(grad, opt_state, params)
    return jax.tree_util.tree_map(jnp.add, params, updates), opt_state, loss  # optax.apply_updates, typed as a tuple


def fit_step_corrections(
    eps_fn: EpsFn,
    sched: Schedule,
    grid: Any,
    x_T: Any,
    reference: Any,
    *,
    sampler: Sampler | None = None,
    iterations: int = 200,
    learning_rate: float = 0.02,
    loss: str = "mse",
) -> CorrectionResult:
    """Fit the gains, input scales and shifts of ``grid``'s steps to the design seeds (module docstring).

    Args:
      grid: the integer grid ``0 = tau_0 < ... < tau_N`` (kept fixed).
      x_T: design noises ``(R,) + shape``; ``reference``: their reference solutions, same shape.
      iterations: Adam steps on ``(u, v, c)``; ``learning_rate``: Adam's step size.
      loss: the design loss, one of :data:`CORRECTION_LOSSES` (:func:`correction_loss`).

    Cost: about 3 NFE-equivalents per network call per iteration (forward, recomputation, reverse).
    """
    sampler = DDIM() if sampler is None else sampler
    iterations = check_positive_int(iterations, name="iterations")
    learning_rate = check_positive_float(learning_rate, name="learning_rate")
    if loss not in CORRECTION_LOSSES:
        raise ArgumentError("loss", f"expected one of {CORRECTION_LOSSES}, got {loss!r}")
    grid = np.asarray(as_grid(grid, sched.T))
    x_T = jnp.asarray(x_T)
    reference = jnp.asarray(reference, x_T.dtype)
    if reference.shape != x_T.shape:
        raise ArgumentError("reference", f"expected the shape of x_T {x_T.shape}, got {reference.shape}")
    start = time.perf_counter()
    num_steps = grid.shape[0] - 1
    times = jnp.asarray(grid[1:], jnp.int32)
    tables = sampler.tables(sched, jnp.asarray(grid))
    params = tuple(jnp.zeros((num_steps,), x_T.dtype) for _ in range(3))
    optimizer, _ = default_optimizer(None, learning_rate)  # one Adam per rate: a second fit compiles nothing
    opt_state = optimizer.init(params)
    best, best_params = np.inf, params
    losses: list[float] = []
    for _ in range(iterations):
        new_params, opt_state, value = _update(
            params, opt_state, eps_fn, times, tables, sampler, x_T, reference, optimizer, loss
        )
        value = float(value)  # the loss of `params` (before this update)
        losses.append(value)
        if value < best:
            best, best_params = value, params
        params = new_params
    u, v, c = (np.asarray(p, np.float64) for p in best_params)
    evaluations = 3 * iterations * sampler.nfe(num_steps) * int(x_T.shape[0])
    corrections = StepCorrections(np.asarray(grid[1:], np.int64), np.exp(u), np.exp(v), c)
    return CorrectionResult(corrections, losses, evaluations, time.perf_counter() - start)

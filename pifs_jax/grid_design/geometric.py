"""Grids from the model's measured geometry: equal measured work per step (docs/theory.md section 12).

Along ``R`` fine reference trajectories (DDIM on ``M`` logSNR-uniform steps) the package measures,
at each fine point ``t_k`` with ``lambda_k = log(alpha_k / sigma_k)``:

- the data prediction ``D_k = (x_k - sigma_k epshat(x_k, t_k)) / alpha_k`` and its ``p``-th derivative
  along the trajectory in ``lambda`` (finite differences; ``p`` = the solver's order), so that the
  local error of a step of size ``h`` in ``lambda`` landing at ``t_k`` is ``C_p alpha_k D^(p)_k h^(p+1)``
  (``C_1 = 1/2`` for DDIM, an exponential Euler step; ``C_2 = 5/12`` for the two-step
  DPM-Solver++(2M), ``1/12`` for Heun's trapezoidal rule);
- the chain's expansion of that error to ``x_0``: ``J_{k->0} = d x_0 / d x_k`` of the rest of the
  fine chain, applied to the error's own direction. ``||J e||^2 = E_u (u^T J e)^2`` for ``u ~ N(0, I)``,
  and ``J^T u`` at every ``k`` at once is ONE reverse pass through the fine chain, so ``P`` probes
  cost ``P`` vector-Jacobian products per trajectory;
- the error of the last step from ``t_k`` (onto ``sigma = 0``, where DDIM returns ``D_k``):
  ``||D_k - x_0^fine||``.

With ``g(lambda) = RMS over samples of ||J_{k->0} C_p alpha_k D^(p)_k|| / sqrt(n)``, a step of size
``h`` adds about ``g h^(p+1)`` to the final error; minimising the sum over ``N - 1`` steps for a fixed
range gives the density ``n(lambda) ~ g^(1/(p+1))`` and every step the same share of the work
``W = integral g^(1/(p+1)) dlambda`` (equidistribution: the section-8 criterion "equal work per
step" with the work density measured on the model instead of the Gaussian proxy). The first step
``tau_1`` (the jump onto ``sigma = 0``) gets the same share of the error as every other step:
``e_last(tau_1) = (W(tau_1) / (N - 1))^(p+1)`` (``first_step="equal_share"``; the rule first fixed,
``"min_sum"``, minimised ``e_last + (N - 1)^(-p) W^(p+1)`` and is kept for comparison).
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
from pifs_jax.grid_design.fixed import fixed_grid
from pifs_jax.grids import round_grid
from pifs_jax.samplers import DDIM, DPMSolverPP2M, Heun, Sampler, step_tables
from pifs_jax.schedules import Schedule
from pifs_jax.typing import EpsFn

__all__ = [
    "FIRST_STEP_RULES",
    "LOCAL_ERROR_CONSTANTS",
    "GeometryMeasurement",
    "geometric_grid",
    "measure_geometry",
    "recorded_ddim_chain",
    "solver_order",
]

#: Leading local-error constant ``C_p`` of each solver's underlying method (in ``lambda``).
LOCAL_ERROR_CONSTANTS = {1: 0.5, 2: 5.0 / 12.0}


def solver_order(sampler: Sampler) -> tuple[int, float]:
    """``(p, C_p)``: the solver's order and its local-error constant (module docstring).

    Args:
      sampler: a :class:`~pifs_jax.samplers.DDIM`, :class:`~pifs_jax.samplers.DPMSolverPP2M` or
        :class:`~pifs_jax.samplers.Heun` instance.

    Returns:
      ``(1, 0.5)`` for DDIM, ``(2, 5/12)`` for DPM-Solver++(2M), ``(2, 1/12)`` for Heun.

    Raises:
      ArgumentError: naming ``sampler`` for any other sampler.
    """
    if isinstance(sampler, DDIM):
        return 1, 0.5
    if isinstance(sampler, DPMSolverPP2M):
        return 2, 5.0 / 12.0
    if isinstance(sampler, Heun):
        return 2, 1.0 / 12.0
    raise ArgumentError(
        "sampler", f"no local-error model for {type(sampler).__name__}; expected DDIM, DPMSolverPP2M or Heun"
    )


class GeometryMeasurement(NamedTuple):
    """What :func:`measure_geometry` measured on the fine grid ``times`` (entries ``k = 1..M``)."""

    times: np.ndarray
    """The fine grid ``0 = t_0 < ... < t_M = T`` (int64)."""
    half_log_snr: np.ndarray
    """``lambda_k`` for ``k = 1..M`` (shape ``(M,)``)."""
    local_error: np.ndarray
    """RMS over samples of ``||C_p alpha_k D^(p)_k|| / sqrt(n)``, shape ``(M,)``."""
    propagated: np.ndarray
    """``g_k``: the same error carried to ``x_0`` by the rest of the chain, shape ``(M,)``."""
    last_step_error: np.ndarray
    """RMS over samples of ``||D_k - x_0^fine|| / sqrt(n)``, shape ``(M,)``."""
    order: int
    constant: float
    network_evaluations: int
    seconds: float
    fine_solution: np.ndarray | None = None
    """``x_0^fine`` of each trajectory, shape ``(R,) + sample_shape`` (the fine chain's own result)."""


def recorded_ddim_chain(eps_fn: EpsFn, a: jax.Array, b: jax.Array, t: jax.Array, x_T: jax.Array, deltas: jax.Array):
    """DDIM from ``x_T`` over the steps ``(a, b, t)`` (execution order), ``deltas[k]`` added after step ``k``.

    Step ``k`` maps ``x`` to ``a[k] x + b[k] eps_fn(x, t[k]) + deltas[k]``. Untraced: call it inside
    ``jit``/``vmap``. With zero ``deltas`` it is the plain chain; the cotangent of ``deltas[k]`` is
    ``J_{k->0}^T u``, the expansion of a perturbation after step ``k`` to the final sample.

    Args:
      eps_fn: the denoiser of one sample, ``eps_fn(x, t)``.
      a: each step's coefficient of the state, shape ``(K,)``, in execution order.
      b: each step's coefficient of the predicted noise, shape ``(K,)``.
      t: the timestep at which each step calls ``eps_fn``, shape ``(K,)``.
      x_T: the starting state of one sample.
      deltas: what is added after each step, shape ``(K,) + x_T.shape``.

    Returns:
      ``(x_0, (states, eps))``: the final state, and the state each step starts from and the noise
      predicted there, each of shape ``(K,) + x_T.shape``, in execution order (the shape
      ``jax.vjp(..., has_aux=True)`` takes).
    """

    def body(x, inputs):
        a_k, b_k, t_k, delta = inputs
        eps = eps_fn(x, t_k)
        return a_k * x + b_k * eps + delta, (x, eps)

    return jax.lax.scan(body, x_T, (a, b, t, deltas))


def _fine_pass(eps_fn, a, b, t, x_T, probes):
    """Per sample: the fine chain (run once), and for each probe ``u`` the products ``J_{k->0}^T u`` at every point."""
    deltas = jnp.zeros((a.shape[0], *x_T.shape), x_T.dtype)
    x_0, vjp, (states, eps) = jax.vjp(lambda d: recorded_ddim_chain(eps_fn, a, b, t, x_T, d), deltas, has_aux=True)
    pulled = jax.vmap(lambda u: vjp(u)[0])(probes)  # (P, M) + shape: J_{landing point -> 0}^T u
    return x_0, states, eps, pulled


_batched_fine_pass = eqx.filter_jit(jax.vmap(_fine_pass, in_axes=(None, None, None, None, 0, 0)))


def measure_geometry(
    eps_fn: EpsFn,
    sched: Schedule,
    x_T: Any,
    *,
    sampler: Sampler | None = None,
    fine_steps: int = 100,
    probes: int = 2,
    key: jax.Array | None = None,
) -> GeometryMeasurement:
    """Measure the local error and its expansion along fine DDIM trajectories from ``x_T`` (module docstring).

    Args:
      eps_fn: the denoiser of one sample.
      sched: its schedule.
      x_T: noises, shape ``(R,) + sample_shape`` (``R`` = 8-32 is plenty: the measurement is a mean).
      sampler: the solver the grid is for (sets ``p`` and ``C_p``); default ``DDIM()``.
      fine_steps: ``M``, steps of the fine logSNR-uniform grid.
      probes: ``P``, random probes per trajectory for ``||J e||``.
      key: PRNG key of the probes (default ``PRNGKey(0)``).

    Cost: ``R M`` network evaluations forward and ``P R`` reverse passes (about ``2 P R M`` more).
    """
    sampler = DDIM() if sampler is None else sampler
    order, constant = solver_order(sampler)
    fine_steps = check_positive_int(fine_steps, name="fine_steps")
    probes = check_positive_int(probes, name="probes")
    if fine_steps < 4 or fine_steps > sched.T:
        raise ArgumentError("fine_steps", f"expected 4 <= fine_steps <= T = {sched.T}, got {fine_steps}")
    x_T = jnp.asarray(x_T)
    if x_T.ndim < 2:
        raise ArgumentError("x_T", f"expected a batch of noises (R, ...), got shape {x_T.shape}")
    key = jax.random.PRNGKey(0) if key is None else key
    start = time.perf_counter()
    times = fixed_grid(sched, fine_steps, "logsnr_uniform")
    tables = step_tables(sched, times)
    # execution order: fine points k = M, ..., 1
    a, b, t = (jnp.asarray(v[::-1], x_T.dtype) for v in (tables.a, tables.b, tables.t))
    t = t.astype(jnp.int32)
    u = jax.random.normal(key, (x_T.shape[0], probes, *x_T.shape[1:]), x_T.dtype)
    x_0, states, eps, pulled = _batched_fine_pass(eps_fn, a, b, t, x_T, u)
    # to host, fine points k = 1..M in increasing order
    x_0 = np.asarray(x_0, np.float64)
    states = np.asarray(states, np.float64)[:, ::-1]  # (R, M) + shape, index k-1
    eps = np.asarray(eps, np.float64)[:, ::-1]
    # pulled[:, :, m] is the cotangent of the delta added when LANDING on fine point M-1-m (execution
    # order): landing points k = M-1, ..., 0; reorder to k = 0..M-1
    pulled = np.asarray(pulled, np.float64)[:, :, ::-1]
    log_ab = np.asarray(sched.log_alpha_bar, np.float64)[times[1:]]
    alpha = np.exp(log_ab / 2)
    sigma = np.sqrt(-np.expm1(log_ab))
    lam = np.log(alpha / sigma)  # k = 1..M
    shape = (1, -1) + (1,) * (states.ndim - 2)
    d = (states - sigma.reshape(shape) * eps) / alpha.reshape(shape)  # data predictions, (R, M) + shape
    deriv = d
    for _ in range(order):
        deriv = np.gradient(deriv, lam, axis=1)
    n = int(np.prod(x_T.shape[1:]))
    err = constant * alpha.reshape(shape) * deriv  # local error vector per unit h^(p+1), (R, M) + shape
    flat = (x_T.shape[0], fine_steps, -1)
    local = np.sqrt(np.mean(np.sum(err.reshape(flat) ** 2, axis=2), axis=0) / n)
    # ||J_{k->0} e_k||^2 = E_u (J^T u . e_k)^2; J^T u is known for landing points k = 0..M-1 (k = 0: the
    # identity), the step landing at k = M does not exist, so the last entry repeats its neighbour
    jt_u = pulled[:, :, 1:].reshape(x_T.shape[0], probes, fine_steps - 1, -1)  # k = 1..M-1
    proj = np.einsum("rpkn,rkn->rpk", jt_u, err[:, : fine_steps - 1].reshape(x_T.shape[0], fine_steps - 1, -1))
    prop = np.sqrt(np.mean(proj**2, axis=(0, 1)) / n)
    prop = np.concatenate([prop, prop[-1:]])
    last = np.sqrt(np.mean(np.sum((d - x_0[:, None]).reshape(flat) ** 2, axis=2), axis=0) / n)
    evaluations = int(x_T.shape[0] * fine_steps * (1 + 2 * probes))
    seconds = time.perf_counter() - start
    return GeometryMeasurement(times, lam, local, prop, last, order, constant, evaluations, seconds, x_0)


#: Rules for the first step ``tau_1`` (the jump onto ``sigma = 0``), docs/theory.md section 12.
FIRST_STEP_RULES = ("equal_share", "min_sum")


def geometric_grid(
    measurement: GeometryMeasurement,
    num_steps: int,
    *,
    amplification: bool = True,
    first_step: str = "equal_share",
    order: float | None = None,
) -> np.ndarray:
    """The grid of ``num_steps`` steps with equal measured work per step (module docstring).

    Args:
      measurement: from :func:`measure_geometry`.
      num_steps: ``N``.
      amplification: weight the local error by the chain's measured expansion to ``x_0`` (the
        geometric criterion); ``False`` uses the local error alone (the ablation).
      first_step: ``"equal_share"`` (default): the last step gets the same share of the error as
        every other, ``e_last(tau_1) = (W(tau_1) / (N - 1))^(p+1)`` (the largest ``tau_1`` with
        ``e_last`` at most that share); ``"min_sum"``: ``tau_1`` minimises
        ``e_last(tau_1) + W(tau_1)^(p+1) / (N - 1)^p`` (the rule first fixed, kept for comparison).
      order: the order ``p`` of the placement (density ``g^(1/(p+1))``, last-step share to the power
        ``p + 1``); default the measurement's own. Any ``p > 0`` is accepted: the refined grid of
        :mod:`pifs_jax.grid_design.refined` tries a few, since a solver's effective order along a
        trained model's trajectory is not known beforehand.

    Returns:
      An int64 grid ``0 = tau_0 < tau_1 < ... < tau_N = T``.
    """
    m = measurement
    num_steps = check_positive_int(num_steps, name="num_steps")
    times = np.asarray(m.times)
    T = int(times[-1])
    if num_steps > T:
        raise ArgumentError("num_steps", f"cannot exceed T = {T}, got {num_steps}")
    if num_steps == 1:
        return np.array([0, T], np.int64)
    p = m.order if order is None else check_positive_float(order, name="order")
    g = np.asarray(m.propagated if amplification else m.local_error, np.float64)
    density = np.maximum(g, np.finfo(np.float64).tiny) ** (1.0 / (p + 1))
    lam = np.asarray(m.half_log_snr)  # decreasing in k: lam[0] at t_1 (largest)
    # cumulative work from the start of the chain (t_M = T, smallest lambda) to each fine point
    seg = 0.5 * (density[1:] + density[:-1]) * (lam[:-1] - lam[1:])  # work between k and k+1
    work = np.concatenate([np.cumsum(seg[::-1])[::-1], [0.0]])  # work[k-1] = W from t_M down to t_k
    steps_left = num_steps - 1
    # tau_1 must leave room for N - 1 distinct integer times above it
    allowed = times[1:] <= T - steps_left
    last = np.asarray(m.last_step_error)
    if first_step == "min_sum":
        k1 = int(np.argmin(np.where(allowed, last + work ** (p + 1) / steps_left**p, np.inf)))
    elif first_step == "equal_share":
        within = allowed & (last <= (work / steps_left) ** (p + 1))
        k1 = int(np.flatnonzero(within)[-1]) if within.any() else 0
    else:
        raise ArgumentError("first_step", f"expected one of {FIRST_STEP_RULES}, got {first_step!r}")
    targets = work[k1] * (1.0 - np.arange(1, steps_left) / steps_left)  # remaining work at tau_2..tau_{N-1}
    # invert the cumulative work (decreasing in k) to real times by linear interpolation
    real_times = np.interp(targets, work[::-1], times[1:][::-1].astype(np.float64))
    grid = np.concatenate([[0.0, float(times[1:][k1])], np.sort(real_times), [float(T)]])
    return round_grid(np.sort(grid), last=T)

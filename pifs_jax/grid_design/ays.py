"""Align Your Steps (Sabour, Fidler, Kreis 2024): sampling grids that minimise a KL upper bound (KLUB).

Source: A. Sabour, S. Fidler, K. Kreis, "Align Your Steps: Optimizing Sampling Schedules in
Diffusion Models", ICML 2024, arXiv:2404.14507. Equation, theorem and algorithm numbers below are
the paper's. Its notation: EDM noise level ``sigma(t)``, scale ``s(t)``, denoiser ``D(x, sigma)``
(the data prediction), schedule ``t_min = t_0 < t_1 < ... < t_n = t_max``.

What the paper does
-------------------
Stochastic DDIM (``eta = 1``) on ``[t_{i-1}, t_i]`` is the exact solution of the reverse SDE with
the denoiser frozen at the interval's start, ``D(x_{t_i} / s(t_i), sigma(t_i))`` (Eq. 7, against the
true learnt SDE, Eq. 6). Girsanov's theorem (Theorem 3.2, Eq. 5) bounds the KL divergence between
the two output distributions by the KLUB, which, with the model close to the ideal denoiser so that
paths follow the forward process (Eq. 9), is

    KLUB(t_{i-1}, t_i) = int_{t_{i-1}}^{t_i} s(t)^2 sigma'(t) / sigma(t)^3
                         E ||D(x_t / s(t), sigma(t)) - D(x_{t_i} / s(t_i), sigma(t_i))||^2 dt    (Eq. 10)

with ``x_t ~ p(x, t)`` and ``x_{t_i} ~ p(x_{t_i} | x_t)`` drawn from the forward process (Eq. 9); the
schedule's KLUB is the sum over intervals (Eq. 11), minimised over ``t_1..t_{n-1}`` with both ends
fixed (Eq. 12). Estimation (Sec. 3.3, Algorithm 2, ``sigma(t) = t``, ``s = 1``): draw ``x_0`` from the
data, ``t`` from an importance distribution, ``x_t = x_0 + t eps``, ``x_up = x_t + sqrt(t_up^2 - t^2) eps'``
(``t_up`` the end of ``t``'s interval), and average ``||D(x_t, t) - D(x_up, t_up)||^2 /
(1/(t^2 + c^2) - 1/(t_up^2 + c^2))``. The importance distribution is the integrand for Gaussian data
``N(0, c^2 I)`` (Eq. 15, ``c = 0.5``), ``pi(t) ~ t^-3 (1/(t^2 + c^2) - 1/(t_up^2 + c^2))``. Optimisation
(Algorithm 1): sweep ``i = 1..n-1``; for each, evaluate the KLUB of the two intervals next to ``t_i``
for candidates in a neighbourhood of ``t_i`` (11 of them, the current value among them, App. B.1, so
the KLUB never increases) and move ``t_i`` to the best; repeat until a sweep changes nothing. Early
stopping is needed (App. A.3: the KLUB-optimal schedule is not the KL-optimal one; the paper stops on
perceptual metrics or by inspection). Hierarchy (Sec. 3.3, App. B.1): optimise a 10-step schedule
(from EDM's ``rho = 7`` for continuous-time models), then twice subdivide (``t'_{2i} = t_i``,
``log t'_{2i+1} = (log t_i + log t_{i+1}) / 2``) and optimise only the new points; any other step count
is a piecewise log-linear interpolation of the 40-step schedule. 8192 data samples (App. B.1).

What is implemented here (and every deviation)
----------------------------------------------
1. **Discrete time.** The package's schedules live on integer timesteps ``t = 1..T`` (our ``t`` is
   diffusers' ``t + 1``); EDM's variables are ``sigma_t = sqrt((1 - ab_t) / ab_t)`` and
   ``s_t = sqrt(ab_t)`` (``x_edm = x_t / sqrt(ab_t)``, ``D(x_t, t) = (x_t - sqrt(1 - ab_t) eps_fn(x_t, t)) /
   sqrt(ab_t)``). The integral of Eq. 10 becomes the sum

       KLUB(a, b) = sum_{t=a+1}^{b} w_t E ||D(x_t, t) - D(x_b, b)||^2,
       w_t = (1/sigma_{t-1}^2 - 1/sigma_t^2) / 2 = int_{sigma_{t-1}}^{sigma_t} sigma^-3 dsigma,

   i.e. Eq. 10's weight ``s^2 sigma' / sigma^3 dt`` integrated exactly over each cell with the
   expectation taken at the cell's upper end. This is exactly Theorem 3.2 in discrete time: the
   KL chain rule between the ``T``-step ancestral (DDPM) chain, which calls the denoiser at every
   ``t``, and stochastic DDIM (``eta = 1``) on the grid, which is the same chain with ``x_0`` frozen at
   ``D(x_b, b)`` (each step is Gaussian with the posterior variance, and the means differ by
   ``sqrt(ab_{t-1}) beta_t / (1 - ab_t) (D - D')``, so each step's KL is ``w_t ||D - D'||^2``). The
   paper's Eq. 8 carries an extra factor 2 that Eqs. 5-7 do not give; a constant factor does not
   change the optimum, and the numbers reported here are the chain-rule values (nats).
2. **Endpoints and step count.** ``tau_N = T`` and ``tau_1 = t_min`` are fixed, ``tau_0 = 0``. The last
   step ``tau_1 -> 0`` is not part of the bound (its weight ``w`` is infinite at ``sigma = 0``; for
   ``t_min = 1`` both chains take the same final step), as in AYS, whose schedules end at
   ``sigma_min`` and whose samplers step to ``sigma = 0`` afterwards. So a grid of ``N`` steps is the
   paper's ``n = N - 1``-interval schedule ``t_0 = sigma(t_min) .. t_n = sigma(T)``, and ``klub[0]``
   (that last step) is NaN.
3. **Noise pairing** as Algorithm 2: ``x_t = x_0 + sigma_t eps``, ``x_b = x_t + sqrt(sigma_b^2 - sigma_t^2) eps'``
   in EDM units, i.e. in the VP variables ``x_t = sqrt(ab_t) x_0 + sqrt(1 - ab_t) eps`` and
   ``x_b = sqrt(ab_b / ab_t) x_t + sqrt(1 - ab_b / ab_t) eps'`` (the forward process from ``x_t``).
4. **Importance sampling over integers.** ``t`` is drawn from ``pi_t ~ w_t g_t`` on ``a < t < b`` with
   ``g_t = 1/(sigma_t^2 + c^2) - 1/(sigma_b^2 + c^2)`` (``c = proposal_c = 0.5``, Eq. 15's ``c``), and
   ``KLUB(a, b) ~= Z mean_k ||D(x_{t_k}, t_k) - D(x_b, b)||^2 / g_{t_k}``, ``Z = sum_t w_t g_t``. Two
   choices where the paper is inconsistent or silent: (i) ``g`` is *not squared*. Eqs. 13 and 15 print
   the bracket squared, but Algorithm 2 divides by the unsquared bracket, and App. A.3's own
   calculation (which we re-derived) gives, with Algorithm 2's noise pairing, ``E ||D - D'||^2 =
   c^4 d (1/(sigma_t^2 + c^2) - 1/(sigma_b^2 + c^2))``, unsquared: so the unsquared proposal is the
   one that matches the Gaussian integrand. (ii) The normaliser ``Z`` is kept: Algorithm 2 returns the
   mean "up to a constant", but ``Z`` depends on the candidate, and candidates can only be compared
   with it. The term ``t = b`` is zero (``D`` at the same point) and is not sampled.
5. **Stratified, fixed samples.** Each interval is estimated with its own ``num_samples`` draws (the
   paper draws ``t`` over the two-interval window at once: same expectation, our variance is lower),
   and the draws ``(x_0, eps, eps', u)`` (``u`` the uniform that picks ``t`` by inverse CDF) are drawn
   once from ``key`` and reused for every interval of the run (a sample-average approximation; the
   paper does not say whether it redraws). Candidates are therefore compared with common random
   numbers, every interval's estimate is a fixed function of its endpoints (cached), the total
   KLUB never increases from one sweep to the next, and Algorithm 1's "until no change" is well
   defined. :func:`estimate_klub` with the same ``key`` and ``num_samples`` reproduces the numbers.
6. **Candidates.** Integers only. The paper's "neighbourhood around ``t_i``" is not specified; here it
   is the whole open window ``(tau_{i-1}, tau_{i+1})``: ``num_candidates - 1 = 10`` points evenly spaced in
   ``log sigma`` strictly inside it, rounded to the nearest integer timestep, plus the current value
   (11 candidates, as App. B.1); duplicates are merged. A point moves only on a strict decrease.
   All candidates of one coordinate are evaluated in one batched, compiled network call (chunks of
   ``batch_size`` images, padded to one shape: one compilation for the whole run).
7. **Early stopping** is ``max_sweeps`` (the paper's perceptual criterion needs a sampler and a metric
   this function does not have); the run also stops when a sweep changes nothing (Algorithm 1). A
   run is deterministic for a given ``key``, so ``max_sweeps = k`` reproduces the first ``k`` sweeps
   of a longer run and ``history`` tells where to stop.
8. **Hierarchy.** For ``n = N - 1 <= 10`` intervals the ``n``-interval grid is optimised directly (the
   paper would interpolate its 40-step schedule instead). For ``n > 10``: optimise 10 intervals
   (``N = 11``), subdivide at the midpoint in ``log sigma`` (nearest integer strictly inside) to 20 and
   40 intervals (and on doubling while fewer than ``n``), optimising only the new points after each
   subdivision (they are non-adjacent, so all are evaluated in one batch). An interval one timestep
   wide has no integer inside and is left whole, so near ``t_min`` a level can have fewer than twice
   the intervals; subdividing stops when no interval can be split. Then the finest grid is
   interpolated piecewise linearly in ``log sigma`` against its index fraction to ``n`` intervals and
   rounded to integers (:func:`pifs_jax.grids.round_grid`), not optimised further (as in the paper).
9. **Initial grid**: EDM ``rho = 7`` in sigma between ``sigma(t_min)`` and ``sigma(T)``
   (:func:`pifs_jax.grid_design.fixed.fixed_grid` ``"edm"``), as for the paper's continuous-time models
   (for discrete-time ones the paper starts from time-uniform; pass ``init`` for that).
10. **Data**: ``num_samples`` (default 1024; the paper used 8192) images drawn without replacement
    from ``data`` when it has that many, with replacement otherwise.

Known answer (tests): for isotropic Gaussian data with the exact denoiser the KLUB is
``n_dim c^4 sum_t w_t (1/(sigma_t^2 + c^2) - 1/(sigma_b^2 + c^2))`` (App. A.3). Its optimum is not
Theorem 3.1's KL-optimal ``sigma_i = c tan((1 - u_i) atan(sigma_min / c) + u_i atan(sigma_max / c))``
in general (App. A.3, Eqs. 22 vs. 31), but the two nearly coincide when ``c`` is about ``sigma_min``.
"""

from __future__ import annotations

import math
import time
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from pifs_jax._validation import check_floating, check_grid, check_instance, check_positive_int, describe
from pifs_jax.errors import ArgumentError
from pifs_jax.grid_design.fixed import fixed_grid, times_at_log_snr
from pifs_jax.grids import round_grid
from pifs_jax.schedules import Schedule
from pifs_jax.typing import EpsFn

__all__ = ["AYS_BASE_INTERVALS", "AYSResult", "align_your_steps", "estimate_klub", "klub_integrand", "klub_weights"]

#: Intervals of the first, fully optimised stage of the hierarchy (the paper's 10-step schedule).
AYS_BASE_INTERVALS = 10


class AYSResult(NamedTuple):
    """An Align Your Steps grid and what it cost."""

    grid: np.ndarray
    """int64 ``0 = tau_0 < tau_1 = t_min < ... < tau_N = T``."""
    klub: np.ndarray
    """float64, shape ``(N,)``: entry ``i - 1`` is the estimated KLUB of step ``tau_i -> tau_{i-1}`` (nats);
    entry 0 (the final step onto sigma = 0, outside the bound) is NaN. Same draws as the search."""
    history: np.ndarray
    """The total KLUB (float64) of the grid being optimised, first for the initial grid, then after each
    sweep; the stages after a subdivision append their own initial entry and sweeps."""
    network_evaluations: int
    """``eps_fn`` calls made (two per Monte Carlo term, padding of the last chunk included)."""
    seconds: float
    """Wall-clock time of the whole design, compilation included."""


# ----------------------------------------------------------------------------- schedule quantities


class _Levels(NamedTuple):
    """Float64 host tables of the schedule, index ``t = 0..T``."""

    neg_log_ab: np.ndarray
    """``G_t = -log alpha_bar_t`` (``G_0 = 0``)."""
    cum_gaps: np.ndarray
    """``sum_{s <= t} g_s``: differences give ``log ab_t - log ab_b`` without cancellation."""
    sigma2: np.ndarray
    """EDM ``sigma_t^2 = (1 - ab_t) / ab_t = expm1(G_t)``."""
    weights: np.ndarray
    """``w_t = (1/sigma_{t-1}^2 - 1/sigma_t^2) / 2`` for ``t >= 2`` (``inf`` at ``t = 1``, NaN at 0)."""


def _levels(sched: Schedule) -> _Levels:
    neg_log_ab = -np.asarray(sched.log_alpha_bar, dtype=np.float64)
    gaps = np.asarray(sched.gaps, dtype=np.float64)
    cum_gaps = np.concatenate([[0.0], np.cumsum(gaps)])
    sigma2 = np.expm1(neg_log_ab)
    # 1/sigma_{t-1}^2 - 1/sigma_t^2 = exp(G_{t-1}) expm1(g_t) / (expm1(G_{t-1}) expm1(G_t)): no cancellation
    weights = np.full(neg_log_ab.shape, np.nan)
    weights[1] = np.inf
    prev = neg_log_ab[1:-1]
    weights[2:] = 0.5 * np.exp(prev) * np.expm1(gaps[1:]) / (np.expm1(prev) * sigma2[2:])
    return _Levels(neg_log_ab, cum_gaps, sigma2, weights)


def klub_weights(sched: Schedule) -> np.ndarray:
    """The KLUB's per-timestep weights ``w_t = (1/sigma_{t-1}^2 - 1/sigma_t^2) / 2`` (EDM sigmas), float64.

    ``w_t = int_{sigma_{t-1}}^{sigma_t} sigma^-3 dsigma`` is the discrete form of the paper's
    ``s^2 sigma' / sigma^3 dt`` (Eq. 10) and the KL of one ancestral step per unit
    ``||D - D'||^2`` (module note 1); computed from the schedule's gaps without cancellation.

    Args:
      sched: the schedule (its ``log_alpha_bar`` and ``gaps`` are read).

    Returns:
      float64 array of shape ``(T+1,)``; entry 0 is NaN and entry 1 ``inf`` (the step onto ``sigma = 0``).

    Raises:
      ArgumentError: naming ``sched`` when it is not a :class:`~pifs_jax.schedules.Schedule`.
    """
    check_instance(sched, Schedule, name="sched", what="pifs_jax Schedule")
    return _levels(sched).weights.copy()


# ----------------------------------------------------------------------------- the batched integrand


@eqx.filter_jit
def _squared_differences(
    eps_fn: EpsFn,
    x0_bank: jax.Array,
    noise_bank: jax.Array,
    noise_upper_bank: jax.Array,
    index: jax.Array,
    t: jax.Array,
    upper: jax.Array,
    coef: jax.Array,
) -> jax.Array:
    """``||D(x_t, t) - D(x_u, u)||^2`` per pair, with the network batched over both evaluations.

    ``coef`` columns (per pair, VP variables): ``sqrt(ab_t)``, ``sqrt(1 - ab_t)``, ``sqrt(ab_u / ab_t)``,
    ``sqrt(1 - ab_u / ab_t)``, ``1 / sqrt(ab_t)``, ``sqrt(1 - ab_u)``, ``1 / sqrt(ab_u)``.
    """
    x0, noise, noise_upper = x0_bank[index], noise_bank[index], noise_upper_bank[index]
    shape = (-1,) + (1,) * (x0.ndim - 1)
    c = [coef[:, j].reshape(shape) for j in range(7)]
    x_t = c[0] * x0 + c[1] * noise
    x_u = c[2] * x_t + c[3] * noise_upper
    xs = jnp.concatenate([x_t, x_u])
    ts = jnp.concatenate([t, upper])
    eps = jax.vmap(eps_fn, in_axes=(0, 0))(xs, ts)
    n = x0.shape[0]
    d_t = (x_t - c[1] * eps[:n]) * c[4]
    d_u = (x_u - c[5] * eps[n:]) * c[6]
    return jnp.sum(((d_t - d_u) ** 2).reshape(n, -1), axis=1)


def _coefficients(levels: _Levels, t: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """The seven per-pair coefficients of :func:`_squared_differences` (float64, shape ``(K, 7)``)."""
    g_t, g_u = levels.neg_log_ab[t], levels.neg_log_ab[upper]
    step = levels.cum_gaps[upper] - levels.cum_gaps[t]  # log ab_t - log ab_u >= 0, from the gaps
    return np.stack(
        [
            np.exp(-g_t / 2),
            np.sqrt(-np.expm1(-g_t)),
            np.exp(-step / 2),
            np.sqrt(-np.expm1(-step)),
            np.exp(g_t / 2),
            np.sqrt(-np.expm1(-g_u)),
            np.exp(g_u / 2),
        ],
        axis=1,
    )


def _check_timesteps(values: Any, T: int, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise ArgumentError(name, f"expected a 1-D integer array of timesteps, got {describe(arr)}")
    if arr.size and (arr.min() < 1 or arr.max() > T):
        raise ArgumentError(name, f"timesteps must lie in [1, T] = [1, {T}], got {describe(arr)}")
    return arr.astype(np.int64)


def klub_integrand(
    eps_fn: EpsFn, sched: Schedule, x0: Any, noise: Any, noise_upper: Any, t: Any, upper: Any
) -> np.ndarray:
    """The KLUB's Monte Carlo term ``||D(x_t, t) - D(x_u, u)||^2`` for given draws (paper Eq. 9, Algorithm 2).

    In EDM units ``x_t = x_0 + sigma_t noise`` and ``x_u = x_t + sqrt(sigma_u^2 - sigma_t^2) noise_upper``
    (Algorithm 2's pairing: ``x_u`` is the forward process continued from ``x_t``); the network sees
    the VP images ``sqrt(ab) x_edm`` and ``D(x, t) = (x - sqrt(1 - ab_t) eps_fn(x, t)) / sqrt(ab_t)``.

    Args:
      eps_fn: the noise predictor ``eps_fn(x, t)`` for one sample.
      sched: the schedule.
      x0, noise, noise_upper: floating arrays of shape ``(K,) + sample_shape``.
      t, upper: integer timesteps of shape ``(K,)``, ``1 <= t <= upper <= T``.

    Returns:
      float64 array of shape ``(K,)``.
    """
    check_instance(sched, Schedule, name="sched", what="pifs_jax Schedule")
    arrays = {}
    for name, value in (("x0", x0), ("noise", noise), ("noise_upper", noise_upper)):
        check_floating(value, name=name)
        arrays[name] = jnp.asarray(value)
    shape = arrays["x0"].shape
    if len(shape) < 2 or arrays["noise"].shape != shape or arrays["noise_upper"].shape != shape:
        raise ArgumentError(
            "noise",
            f"x0, noise and noise_upper must share one shape (K,) + sample_shape, got {shape}, "
            f"{arrays['noise'].shape}, {arrays['noise_upper'].shape}",
        )
    t_arr, u_arr = _check_timesteps(t, sched.T, "t"), _check_timesteps(upper, sched.T, "upper")
    if t_arr.shape != (shape[0],) or u_arr.shape != (shape[0],) or np.any(u_arr < t_arr):
        raise ArgumentError("upper", f"expected t <= upper, both of shape ({shape[0]},); got {t_arr} and {u_arr}")
    dtype = jnp.result_type(*arrays.values())
    coef = jnp.asarray(_coefficients(_levels(sched), t_arr, u_arr), dtype)
    out = _squared_differences(
        eps_fn,
        arrays["x0"].astype(dtype),
        arrays["noise"].astype(dtype),
        arrays["noise_upper"].astype(dtype),
        jnp.arange(shape[0]),
        jnp.asarray(t_arr, jnp.int32),
        jnp.asarray(u_arr, jnp.int32),
        coef,
    )
    return np.asarray(out, dtype=np.float64)


# ----------------------------------------------------------------------------- the estimator


class _Bank(NamedTuple):
    """The fixed draws of a run: ``num_samples`` data images, two noises and one uniform each."""

    x0: jax.Array
    noise: jax.Array
    noise_upper: jax.Array
    uniform: np.ndarray


def _draw_bank(data: jax.Array, key: jax.Array, num_samples: int) -> _Bank:
    k_index, k_noise, k_upper, k_uniform = jax.random.split(key, 4)
    count = data.shape[0]
    if count >= num_samples:
        index = jax.random.permutation(k_index, count)[:num_samples]
    else:
        index = jax.random.randint(k_index, (num_samples,), 0, count)
    x0 = data[index]
    noise = jax.random.normal(k_noise, x0.shape, x0.dtype)
    noise_upper = jax.random.normal(k_upper, x0.shape, x0.dtype)
    uniform = np.asarray(jax.random.uniform(k_uniform, (num_samples,)), dtype=np.float64)
    return _Bank(x0, noise, noise_upper, uniform)


class _Estimator:
    """Per-interval KLUB estimates on one bank of draws, cached by interval and batched by chunk."""

    def __init__(self, eps_fn: EpsFn, sched: Schedule, bank: _Bank, proposal_c: float, chunk: int):
        self.eps_fn = eps_fn
        self.levels = _levels(sched)
        self.bank = bank
        self.c2 = proposal_c**2
        self.chunk = chunk
        self.cache: dict[tuple[int, int], float] = {}
        self.evaluations = 0

    def _plan(self, a: int, b: int) -> tuple[np.ndarray, np.ndarray, float]:
        """Sampled timesteps and their weights ``Z / g_t`` for interval ``(a, b]`` (empty when ``b = a + 1``)."""
        ts = np.arange(a + 1, b)
        if ts.size == 0:
            return ts, np.zeros(0), 0.0
        lv = self.levels
        # g_t = 1/(s_t^2 + c^2) - 1/(s_b^2 + c^2) = (s_b^2 - s_t^2) / ((s_t^2 + c^2)(s_b^2 + c^2)),
        # s_b^2 - s_t^2 = exp(G_t) expm1(G_b - G_t): no cancellation
        spread = np.exp(lv.neg_log_ab[ts]) * np.expm1(lv.cum_gaps[b] - lv.cum_gaps[ts])
        g = spread / ((lv.sigma2[ts] + self.c2) * (lv.sigma2[b] + self.c2))
        p = lv.weights[ts] * g
        z = float(np.sum(p))
        cdf = np.cumsum(p) / z
        pick = np.minimum(np.searchsorted(cdf, self.bank.uniform, side="right"), ts.size - 1)
        return ts[pick], z / g[pick], z

    def evaluate(self, intervals: list[tuple[int, int]]) -> None:
        """Fill the cache for every interval not yet in it, all of them in batched network calls."""
        todo = [iv for iv in dict.fromkeys(intervals) if iv not in self.cache]
        plans, pairs_t, pairs_u = [], [], []
        for a, b in todo:
            t, ratio, _ = self._plan(a, b)
            plans.append(ratio)
            pairs_t.append(t)
            pairs_u.append(np.full(t.shape, b, dtype=np.int64))
        if not todo:
            return
        t_all = np.concatenate(pairs_t)
        u_all = np.concatenate(pairs_u)
        m = self.bank.uniform.shape[0]
        index_all = np.concatenate([np.arange(m) if t.size else np.zeros(0, np.int64) for t in pairs_t])
        values = self._run(index_all, t_all, u_all)
        offset = 0
        for (a, b), ratio in zip(todo, plans, strict=True):
            k = ratio.shape[0]
            self.cache[(a, b)] = float(np.mean(values[offset : offset + k] * ratio)) if k else 0.0
            offset += k

    def _run(self, index: np.ndarray, t: np.ndarray, upper: np.ndarray) -> np.ndarray:
        total = t.shape[0]
        if total == 0:
            return np.zeros(0)
        dtype = self.bank.x0.dtype
        out = np.empty(total)
        for start in range(0, total, self.chunk):
            stop = min(start + self.chunk, total)
            pad = self.chunk - (stop - start)  # pad with the chunk's first pair: one shape, one compilation
            sl = np.concatenate([np.arange(start, stop), np.full(pad, start, dtype=np.int64)])
            coef = _coefficients(self.levels, t[sl], upper[sl])
            result = _squared_differences(
                self.eps_fn,
                self.bank.x0,
                self.bank.noise,
                self.bank.noise_upper,
                jnp.asarray(index[sl], jnp.int32),
                jnp.asarray(t[sl], jnp.int32),
                jnp.asarray(upper[sl], jnp.int32),
                jnp.asarray(coef, dtype),
            )
            out[start:stop] = np.asarray(result, dtype=np.float64)[: stop - start]
            self.evaluations += 2 * self.chunk
        return out

    def per_step(self, grid: np.ndarray) -> np.ndarray:
        """KLUB of every step of ``grid`` (entry 0, the step onto sigma = 0, NaN)."""
        intervals = [(int(grid[i - 1]), int(grid[i])) for i in range(2, len(grid))]
        self.evaluate(intervals)
        return np.array([np.nan] + [self.cache[iv] for iv in intervals], dtype=np.float64)

    def total(self, grid: np.ndarray) -> float:
        return float(np.sum(self.per_step(grid)[1:]))


# ----------------------------------------------------------------------------- input checks


def _check_data(eps_fn: Any, data: Any) -> jax.Array:
    check_floating(data, name="data")
    arr = jnp.asarray(data)
    if arr.ndim < 2 or arr.shape[0] < 1:
        raise ArgumentError(
            "data", f"expected training samples of shape (B,) + sample_shape with B >= 1, got {arr.shape}"
        )
    if not bool(jnp.all(jnp.isfinite(arr))):  # on the device: no float64 copy of a large training set
        raise ArgumentError("data", "training samples must be finite, got NaN or infinity")
    sample = jax.ShapeDtypeStruct(arr.shape[1:], arr.dtype)
    try:
        out = eqx.filter_eval_shape(eps_fn, sample, jax.ShapeDtypeStruct((), jnp.int32))
    except Exception as err:  # the denoiser's own refusal of this sample shape
        raise ArgumentError(
            "data", f"eps_fn does not accept one sample of data's shape {arr.shape[1:]} (data is (B,) + sample): {err}"
        ) from err
    if getattr(out, "shape", None) != arr.shape[1:]:
        raise ArgumentError(
            "eps_fn", f"must return an array of the sample's shape {arr.shape[1:]}, got {getattr(out, 'shape', out)}"
        )
    return arr


def _check_key(key: Any) -> jax.Array:
    ok = isinstance(key, jax.Array) and (
        jnp.issubdtype(key.dtype, jax.dtypes.prng_key) or (key.dtype == jnp.uint32 and key.shape == (2,))
    )
    if not ok:
        raise ArgumentError("key", f"expected a JAX PRNG key (jax.random.key or PRNGKey), got {key!r}")
    return key


def _check_positive_float(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ArgumentError(name, f"expected a finite real number > 0, got {value!r}")
    if not (math.isfinite(float(value)) and value > 0):
        raise ArgumentError(name, f"expected a finite real number > 0, got {value!r}")
    return float(value)


def _check_steps(sched: Any, num_steps: Any, t_min: Any) -> tuple[int, int, int]:
    check_instance(sched, Schedule, name="sched", what="pifs_jax Schedule")
    T = sched.T
    num_steps = check_positive_int(num_steps, name="num_steps", minimum=2)
    if num_steps > T:
        raise ArgumentError("num_steps", f"cannot exceed the schedule's T = {T}, got {num_steps}")
    t_min = check_positive_int(t_min, name="t_min")
    if t_min > T - num_steps + 1:
        raise ArgumentError(
            "t_min", f"expected an integer in [1, T - num_steps + 1] = [1, {T - num_steps + 1}], got {t_min}"
        )
    return T, num_steps, t_min


def _check_init(init: Any, T: int, num_steps: int, t_min: int) -> np.ndarray:
    check_grid(init, T, name="init")
    grid = np.asarray(init).astype(np.int64)
    if grid.shape != (num_steps + 1,) or grid[1] != t_min or grid[-1] != T:
        raise ArgumentError(
            "init",
            f"expected a grid of num_steps + 1 = {num_steps + 1} points with tau_1 = t_min = {t_min} and "
            f"tau_N = T = {T}, got {describe(grid)}",
        )
    return grid


# ----------------------------------------------------------------------------- grids from sigmas


def _grid_at_log_sigma(sched: Schedule, log_sigma: np.ndarray, t_min: int) -> np.ndarray:
    """Integer grid ``[0, t_min, ..., T]`` nearest to increasing ``log sigma`` targets (ends kept exactly)."""
    T = sched.T
    times = times_at_log_snr(sched, -2.0 * log_sigma)
    times[0], times[-1] = float(t_min), float(T)
    return round_grid(np.concatenate([[0.0], times]), last=T)


def _subdivide(sched: Schedule, levels: _Levels, grid: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Insert the ``log sigma`` midpoint (nearest integer strictly inside) into every interval of ``tau_1..tau_N``.

    An interval with no integer inside (width 1) is left whole. Returns the new grid and the indices
    of the inserted points (empty when no interval could be split).
    """
    part = grid[1:]
    log_sigma = 0.5 * np.log(levels.sigma2[part])
    mid = np.rint(times_at_log_snr(sched, -(log_sigma[:-1] + log_sigma[1:]))).astype(np.int64)
    mid = np.clip(mid, part[:-1] + 1, part[1:] - 1)
    room = np.diff(part) >= 2
    points, inserted = [0, int(part[0])], []
    for j in range(part.size - 1):
        if room[j]:
            inserted.append(len(points))
            points.append(int(mid[j]))
        points.append(int(part[j + 1]))
    return np.asarray(points, dtype=np.int64), inserted


def _interpolate(sched: Schedule, levels: _Levels, grid: np.ndarray, intervals: int, t_min: int) -> np.ndarray:
    """``grid``'s ``tau_1..tau_N`` as a piecewise log-linear function of the index fraction, at ``intervals`` intervals."""
    log_sigma = 0.5 * np.log(levels.sigma2[grid[1:]])
    fraction = np.linspace(0.0, 1.0, log_sigma.size)
    return _grid_at_log_sigma(sched, np.interp(np.linspace(0.0, 1.0, intervals + 1), fraction, log_sigma), t_min)


def _candidates(sched: Schedule, levels: _Levels, lo: int, current: int, hi: int, count: int) -> list[int]:
    """The current point first, then ``count - 1`` points evenly spaced in ``log sigma`` inside ``(lo, hi)``."""
    if hi - lo <= count:  # no more integers inside than candidates: take them all
        return list(dict.fromkeys([current, *range(lo + 1, hi)]))
    log_lo, log_hi = 0.5 * np.log(levels.sigma2[lo]), 0.5 * np.log(levels.sigma2[hi])
    targets = log_lo + (log_hi - log_lo) * np.arange(1, count) / count
    points = np.clip(np.rint(times_at_log_snr(sched, -2.0 * targets)).astype(np.int64), lo + 1, hi - 1)
    return list(dict.fromkeys([current, *points.tolist()]))


# ----------------------------------------------------------------------------- public entry points


def estimate_klub(
    eps_fn: EpsFn,
    sched: Schedule,
    grid: Any,
    data: Any,
    *,
    key: jax.Array,
    num_samples: int = 1024,
    proposal_c: float = 0.5,
    batch_size: int = 2048,
) -> np.ndarray:
    """The estimated KLUB of every step of ``grid`` (module notes 1-5), float64 of shape ``(N,)``.

    ``KLUB(tau_{i-1}, tau_i) ~= Z mean_k ||D(x_{t_k}, t_k) - D(x_{tau_i}, tau_i)||^2 / g_{t_k}`` with
    ``t_k`` drawn from ``pi_t ~ w_t g_t`` on ``tau_{i-1} < t < tau_i``. Entry 0 (the step onto
    ``sigma = 0``) is NaN. With the same ``key``, ``num_samples`` and ``proposal_c`` the draws are those of
    :func:`align_your_steps`, so its ``klub`` and ``history`` are reproduced.

    Args:
      eps_fn: noise predictor ``eps_fn(x, t)`` for one sample.
      sched: the schedule.
      grid: ``0 = tau_0 < tau_1 < ... < tau_N <= T``.
      data: training samples ``(B,) + sample_shape``, floating.
      key: PRNG key of the draws.
      num_samples: Monte Carlo terms per interval.
      proposal_c: ``c`` of the importance distribution (Eq. 15).
      batch_size: images per network call (two per term).

    Raises:
      ArgumentError: naming ``sched``, ``grid``, ``data``, ``eps_fn``, ``key``, ``num_samples``,
        ``proposal_c`` or ``batch_size``.
    """
    check_instance(sched, Schedule, name="sched", what="pifs_jax Schedule")
    check_grid(grid, sched.T, name="grid")
    grid = np.asarray(grid).astype(np.int64)
    data = _check_data(eps_fn, data)
    key = _check_key(key)
    num_samples = check_positive_int(num_samples, name="num_samples")
    proposal_c = _check_positive_float(proposal_c, "proposal_c")
    batch_size = check_positive_int(batch_size, name="batch_size", minimum=2)
    bank = _draw_bank(data, key, num_samples)
    chunk = min(batch_size // 2, num_samples * max(len(grid) - 2, 1))
    return _Estimator(eps_fn, sched, bank, proposal_c, chunk).per_step(grid)


def align_your_steps(
    eps_fn: EpsFn,
    sched: Schedule,
    num_steps: int,
    data: Any,
    *,
    key: jax.Array,
    init: Any = None,
    num_samples: int = 1024,
    max_sweeps: int = 20,
    t_min: int = 1,
    num_candidates: int = 11,
    proposal_c: float = 0.5,
    batch_size: int = 2048,
    progress: bool = False,
) -> AYSResult:
    """Align Your Steps: a grid of ``num_steps`` steps minimising the estimated KLUB (Eqs. 10-12, Algorithms 1-2).

    The total ``sum_{i=2}^{N} KLUB(tau_{i-1}, tau_i)`` with

    ``KLUB(a, b) = sum_{t=a+1}^{b} (1/sigma_{t-1}^2 - 1/sigma_t^2)/2 E ||D(x_t, t) - D(x_b, b)||^2``

    (EDM sigmas, ``x_b`` the forward process continued from ``x_t``) is minimised by coordinate search
    over the interior points ``tau_2..tau_{N-1}`` with ``tau_1 = t_min`` and ``tau_N = T`` fixed, from
    EDM's ``rho = 7`` grid; more than 10 intervals are reached by subdivision and log-linear
    interpolation. The module docstring states the paper's method and every deviation.

    Args:
      eps_fn: noise predictor ``eps_fn(x, t)`` for one sample (a pytree callable: its array leaves
        are traced, so a new parameter set compiles nothing new).
      sched: the schedule.
      num_steps: ``N``, in ``2..T - t_min + 1``.
      data: training samples ``(B,) + sample_shape`` (e.g. images ``(B, H, W, C)``), floating.
      key: PRNG key of the fixed draws (data subset, noises, importance uniforms).
      init: starting grid of ``N + 1`` points (``tau_1 = t_min``, ``tau_N = T``); when given, all its
        interior points are optimised directly, without the subdivision stages. Default: EDM ``rho = 7``.
      num_samples: Monte Carlo terms per interval (the paper used 8192 data samples).
      max_sweeps: sweeps per stage at most (the early stopping the paper needs, App. A.3); a sweep
        with no change ends the stage sooner. ``0`` returns the initial grid with its KLUB.
      t_min: ``tau_1``, the smallest noise level of the bound.
      num_candidates: candidates per coordinate, the current value included (the paper's 11).
      proposal_c: ``c`` of the importance distribution (Eq. 15, ``0.5`` for data of standard deviation 0.5).
      batch_size: images per network call; all candidates of a coordinate go through in chunks of it.
      progress: show a tqdm bar over the sweeps.

    Returns:
      :class:`AYSResult` ``(grid, klub, history, network_evaluations, seconds)``.

    Raises:
      ArgumentError: naming ``sched``, ``num_steps``, ``t_min``, ``data`` (wrong rank, or a sample shape
        ``eps_fn`` refuses), ``eps_fn``, ``key``, ``init``, ``num_samples``, ``max_sweeps``,
        ``num_candidates``, ``proposal_c`` or ``batch_size``.
    """
    start = time.perf_counter()
    T, num_steps, t_min = _check_steps(sched, num_steps, t_min)
    data = _check_data(eps_fn, data)
    key = _check_key(key)
    num_samples = check_positive_int(num_samples, name="num_samples")
    max_sweeps = check_positive_int(max_sweeps, name="max_sweeps", minimum=0)
    num_candidates = check_positive_int(num_candidates, name="num_candidates", minimum=2)
    proposal_c = _check_positive_float(proposal_c, "proposal_c")
    batch_size = check_positive_int(batch_size, name="batch_size", minimum=2)
    intervals = num_steps - 1
    direct = init is not None or intervals <= AYS_BASE_INTERVALS
    if init is not None:
        grid = _check_init(init, T, num_steps, t_min)
    else:
        grid = fixed_grid(sched, num_steps if direct else AYS_BASE_INTERVALS + 1, "edm", t_min=t_min).astype(np.int64)

    levels = _levels(sched)
    bank = _draw_bank(data, key, num_samples)
    chunk = min(batch_size // 2, 2 * num_candidates * num_samples)
    est = _Estimator(eps_fn, sched, bank, proposal_c, chunk)
    history: list[float] = []

    with tqdm(total=None, disable=not progress, desc="AYS sweeps", unit="sweep", leave=False) as bar:

        def stage(grid: np.ndarray, coordinates: list[int], sequential: bool) -> np.ndarray:
            """Algorithm 1 on the given coordinates (indices into the grid) until no change or ``max_sweeps``."""
            history.append(est.total(grid))
            for _ in range(max_sweeps):
                changed = False
                if sequential:  # Gauss-Seidel over i, as Algorithm 1
                    for i in coordinates:
                        changed |= _move(grid, i)
                else:  # independent points (fixed neighbours): every candidate of every point in one batch
                    windows = [_window(grid, i) for i in coordinates]
                    est.evaluate([iv for lo, cands, hi in windows for m in cands for iv in ((lo, m), (m, hi))])
                    for i in coordinates:
                        changed |= _move(grid, i)
                history.append(est.total(grid))
                bar.update(1)
                bar.set_postfix(klub=f"{history[-1]:.4g}")
                if not changed:
                    break
            return grid

        def _window(grid: np.ndarray, i: int) -> tuple[int, list[int], int]:
            lo, hi = int(grid[i - 1]), int(grid[i + 1])
            return lo, _candidates(sched, levels, lo, int(grid[i]), hi, num_candidates), hi

        def _move(grid: np.ndarray, i: int) -> bool:
            lo, cands, hi = _window(grid, i)
            est.evaluate([iv for m in cands for iv in ((lo, m), (m, hi))])
            values = [est.cache[(lo, m)] + est.cache[(m, hi)] for m in cands]
            best = int(np.argmin(values))  # the current value is first: ties keep it
            if values[best] < values[0]:
                grid[i] = cands[best]
                return True
            return False

        grid = stage(grid, list(range(2, len(grid) - 1)), sequential=True)
        if not direct:
            while len(grid) - 2 < max(intervals, 4 * AYS_BASE_INTERVALS):
                finer, inserted = _subdivide(sched, levels, grid)
                if not inserted:
                    break
                grid = stage(finer, inserted, sequential=False)
            if len(grid) - 2 != intervals:
                grid = _interpolate(sched, levels, grid, intervals, t_min)

    klub = est.per_step(grid)
    return AYSResult(
        np.asarray(grid, dtype=np.int64),
        klub,
        np.asarray(history, dtype=np.float64),
        int(est.evaluations),
        time.perf_counter() - start,
    )

"""Model-free geometry of the DDIM chain: everything computed from the schedule alone.

For a sampling step ``t = tau_i -> s = tau_{i-1}`` the deterministic DDIM map is
``Phi_t(x) = a_t x + b_t epshat(x, t)`` (docs/theory.md section 3) with

- ``a_t = sqrt(alpha_bar_s / alpha_bar_t) > 1``, ``a_t - 1 = expm1((log ab_s - log ab_t)/2)``;
- ``b_t = sigma_s - a_t sigma_t = (1 - a_t^2) / (sigma_s + a_t sigma_t) < 0``.

Derived quantities (section 4), all in cancellation-free forms:

- contraction threshold ``L*_t = (a_t - 1)/|b_t| = (sigma_s + a_t sigma_t) / (1 + a_t)``;
- expansion factor for data variance ``lambda``
  ``f_t(lambda) = (sqrt(ab_s ab_t) lambda + sigma_s sigma_t) / (ab_t lambda + sigma_t^2)``,
  evaluated as ``f_t - 1 = ab_t (a_t - 1)(lambda - lambda*_t) / (ab_t lambda + sigma_t^2)``;
- per-step threshold ``lambda*_t = sigma_t (sigma_t - sigma_s) / (sqrt(ab_t)(sqrt(ab_s) - sqrt(ab_t)))
  = sigma_t (1 + a_t) / (sigma_t + sigma_s)`` (the second form is exact algebra, no differences);
- global (Moran) threshold ``lambda**``: ``sum_t log f_t(lambda**) = 0``.

Every function takes a :class:`~pifs_jax.schedules.Schedule` and an optional ``grid``
(``None`` = every training step) and returns per-step arrays of shape ``(N,)``; entry ``i-1``
belongs to the step ``tau_i -> tau_{i-1}``, so entry 0 is the finest step (landing on
``alpha_bar = 1``). All functions are jittable and differentiable with respect to the schedule.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx

from pifs_jax._validation import check_gaps, check_log_alpha_bar, check_variances, patch_variance_arrays
from pifs_jax.errors import ArgumentError
from pifs_jax.grids import as_grid
from pifs_jax.kaplan_yorke import kaplan_yorke_dimension
from pifs_jax.schedules import Schedule, safe_sqrt
from pifs_jax.typing import GridLike

__all__ = [
    "ContractionSummary",
    "StepCoefficients",
    "analytic_kaplan_yorke",
    "coefficients_from_log_alpha_bar",
    "contraction_summary",
    "contraction_threshold",
    "dimension_growth",
    "expansion_factor",
    "expansion_threshold",
    "geometry_arrays",
    "information_gain",
    "log_expansion_factor",
    "lyapunov_exponents",
    "moran_function",
    "moran_threshold",
    "step_coefficients",
    "step_gaps",
]


class StepCoefficients(NamedTuple):
    """Per-step DDIM coefficients, each of shape ``(N,)`` (entry ``i-1``: step ``tau_i -> tau_{i-1}``)."""

    log_alpha_bar_t: jax.Array
    """``log alpha_bar`` at the step's start ``t = tau_i``."""
    log_alpha_bar_s: jax.Array
    """``log alpha_bar`` at the step's end ``s = tau_{i-1}``."""
    sigma_t: jax.Array
    """``sigma_t = sqrt(1 - alpha_bar_t)``."""
    sigma_s: jax.Array
    """``sigma_s = sqrt(1 - alpha_bar_s)`` (0 on the step landing on ``alpha_bar = 1``)."""
    log_ratio: jax.Array
    """``G_t = log alpha_bar_s - log alpha_bar_t > 0``, summed from the schedule's gaps (exact)."""
    a: jax.Array
    """``a_t = sqrt(alpha_bar_s / alpha_bar_t) = exp(G_t / 2)``."""
    a_minus_1: jax.Array
    """``a_t - 1 = expm1((log ab_s - log ab_t) / 2)``, exact for tiny steps."""
    b: jax.Array
    """``b_t = (1 - a_t^2) / (sigma_s + a_t sigma_t)`` (negative)."""

    @property
    def alpha_bar_t(self) -> jax.Array:
        return jnp.exp(self.log_alpha_bar_t)


def step_gaps(sched: Schedule, grid: GridLike) -> jax.Array:
    """``log alpha_bar_s - log alpha_bar_t`` for each grid step, shape ``(N,)``.

    The sum of the training-step gaps ``g_u`` with ``s < u <= t`` (``jax.ops.segment_sum``): a
    sum of positive terms, exact where the difference of two stored logarithms would cancel.

    Args:
      sched: the schedule.
      grid: increasing integer timesteps ``0 = tau_0 < ... < tau_N <= T``; ``None`` = all ``T`` steps.

    Returns:
      The positive gaps, entry ``i - 1`` for the step ``tau_i -> tau_{i-1}``.
    """
    grid = jnp.asarray(grid)
    u = jnp.arange(1, sched.T + 1)
    step_index = jnp.searchsorted(grid, u, side="left") - 1  # u in (tau_{i-1}, tau_i] -> i - 1
    return jax.ops.segment_sum(sched.gaps, step_index, num_segments=grid.shape[0] - 1)


def step_coefficients(sched: Schedule, grid: GridLike = None) -> StepCoefficients:
    """DDIM step coefficients ``a_t``, ``b_t`` (and the sigmas) for every step of ``grid``.

    Args:
      sched: the schedule.
      grid: increasing integer timesteps ``0 = tau_0 < ... < tau_N <= T``; ``None`` = all ``T`` steps.

    Returns:
      :class:`StepCoefficients` with arrays of shape ``(N,)``.
    """
    if not isinstance(sched, Schedule):
        raise ArgumentError("sched", f"expected a pifs_jax Schedule, got {type(sched).__name__}")
    check_log_alpha_bar(sched.log_alpha_bar, name="sched")
    check_gaps(sched.log_alpha_bar, sched.gaps, name="sched")
    full = grid is None
    return _step_coefficients(sched, jnp.asarray(as_grid(grid, sched.T)), full=full)


@functools.partial(jax.jit, static_argnames=("full",))
def _step_coefficients(sched: Schedule, grid: jax.Array, *, full: bool) -> StepCoefficients:
    log_ab = sched.log_alpha_bar
    sigma2 = sched.sigma2
    log_ratio = sched.gaps if full else step_gaps(sched, grid)
    return coefficients_from_log_alpha_bar(
        log_ab[grid[1:]], log_ab[grid[:-1]], safe_sqrt(sigma2[grid[1:]]), safe_sqrt(sigma2[grid[:-1]]), log_ratio
    )


def coefficients_from_log_alpha_bar(
    log_t: jax.Array, log_s: jax.Array, sigma_t: jax.Array, sigma_s: jax.Array, log_ratio: jax.Array
) -> StepCoefficients:
    """:class:`StepCoefficients` from ``log alpha_bar`` at both ends of each step, the sigmas and ``G = log_s - log_t``.

    ``a = exp(G/2)``, ``a - 1 = expm1(G/2)``, ``b = -expm1(G) / (sigma_s + a sigma_t)``. The caller
    supplies ``G`` in its most accurate form (summed gaps on an integer grid, the difference of
    interpolated values at real times: :func:`pifs_jax.samplers.continuous_step_tables`).

    Args:
      log_t: ``log alpha_bar`` at each step's start ``t``, shape ``(N,)``.
      log_s: ``log alpha_bar`` at each step's end ``s``, shape ``(N,)``.
      sigma_t: ``sigma_t = sqrt(1 - alpha_bar_t)``, shape ``(N,)``.
      sigma_s: ``sigma_s = sqrt(1 - alpha_bar_s)``, shape ``(N,)``.
      log_ratio: ``G = log_s - log_t``, shape ``(N,)``.

    Returns:
      :class:`StepCoefficients`, each field of shape ``(N,)`` (the inputs stored as given).
    """
    a = jnp.exp(log_ratio / 2)
    a_minus_1 = jnp.expm1(log_ratio / 2)
    b = -jnp.expm1(log_ratio) / (sigma_s + a * sigma_t)
    return StepCoefficients(log_t, log_s, sigma_t, sigma_s, log_ratio, a, a_minus_1, b)


def contraction_threshold(sched: Schedule, grid: GridLike = None) -> jax.Array:
    """Per-step contraction threshold ``L*_t = (sigma_s + a_t sigma_t) / (1 + a_t)``, shape ``(N,)``.

    Equal to ``(a_t - 1)/|b_t|``: if ``epshat(., t)`` is ``L``-Lipschitz with ``L < L*_t`` the step
    is a contraction. At the finest step (``sigma_s = 0``) ``L* = a sigma_1/(1 + a) ~ sigma_1/2``.

    Args:
      sched: the schedule.
      grid: increasing integer timesteps ``0 = tau_0 < ... < tau_N <= T``; ``None`` = all ``T`` steps.

    Returns:
      ``L*_t``, entry ``i - 1`` for the step ``tau_i -> tau_{i-1}``.

    Example:
      >>> lstar = contraction_threshold(cosine(1000), grid=jnp.arange(0, 1001, 20))  # (50,)
    """
    c = step_coefficients(sched, grid)
    return (c.sigma_s + c.a * c.sigma_t) / (1 + c.a)


class ContractionSummary(NamedTuple):
    """Summary of ``L*_t`` over a chain."""

    mean: jax.Array
    """The mean of ``L*_t`` over the steps."""
    cv: jax.Array
    """Coefficient of variation, population standard deviation / mean."""
    min: jax.Array
    """The smallest ``L*_t``."""
    argmin: jax.Array
    """Index into the per-step array (0 = finest step)."""
    finest: jax.Array
    """``L*`` at the finest step (the one landing on ``alpha_bar = 1``)."""


def contraction_summary(sched: Schedule, grid: GridLike = None) -> ContractionSummary:
    """Mean, coefficient of variation (population std / mean), minimum of ``L*_t`` over the chain.

    Args:
      sched: the schedule.
      grid: increasing integer timesteps ``0 = tau_0 < ... < tau_N <= T``; ``None`` = all ``T`` steps.

    Returns:
      :class:`ContractionSummary` of :func:`contraction_threshold`'s ``(N,)`` values.
    """
    lstar = contraction_threshold(sched, grid)
    mean = jnp.mean(lstar)
    return ContractionSummary(mean, jnp.std(lstar) / mean, jnp.min(lstar), jnp.argmin(lstar), lstar[0])


def expansion_threshold(sched: Schedule, grid: GridLike = None) -> jax.Array:
    """Per-step threshold ``lambda*_t`` with ``f_t(lambda*_t) = 1``, shape ``(N,)``.

    ``lambda*_t = sigma_t (sigma_t - sigma_s) / (sqrt(ab_t)(sqrt(ab_s) - sqrt(ab_t)))``, evaluated in
    the equivalent cancellation-free form ``sigma_t (1 + a_t) / (sigma_t + sigma_s)``: about 1
    mid-chain, ``1 + a_1 ~ 2`` at the finest step. Variances above it expand in that step.

    Args:
      sched: the schedule.
      grid: increasing integer timesteps ``0 = tau_0 < ... < tau_N <= T``; ``None`` = all ``T`` steps.

    Returns:
      ``lambda*_t``, entry ``i - 1`` for the step ``tau_i -> tau_{i-1}``.
    """
    c = step_coefficients(sched, grid)
    return c.sigma_t * (1 + c.a) / (c.sigma_t + c.sigma_s)


def log_expansion_factor(sched: Schedule, variances: Any, grid: GridLike = None) -> jax.Array:
    """``log f_t(lambda)`` for every step and variance, shape ``(N,) + variances.shape``.

    ``log f_t = log1p(ab_t (a_t - 1)(lambda - lambda*_t) / (ab_t lambda + sigma_t^2))``: exact for the
    tiny per-step factors of 1000-step chains, and ``-inf`` only for ``lambda = 0`` at the finest
    step (where ``f_t(0) = sigma_s / sigma_t = 0``).

    Args:
      sched: the schedule.
      variances: data variances ``lambda >= 0``, any shape.
      grid: increasing integer timesteps ``0 = tau_0 < ... < tau_N <= T``; ``None`` = all ``T`` steps.

    Returns:
      ``log f_t(lambda)``, shape ``(N,) + variances.shape``.
    """
    check_variances(variances)
    c = step_coefficients(sched, grid)
    lam = jnp.asarray(variances, dtype=c.a.dtype)
    expand = (slice(None),) + (None,) * lam.ndim
    ab_t = c.alpha_bar_t[expand]
    lam_star = (c.sigma_t * (1 + c.a) / (c.sigma_t + c.sigma_s))[expand]
    numerator = ab_t * c.a_minus_1[expand] * (lam - lam_star)
    denominator = ab_t * lam + (c.sigma_t**2)[expand]
    # the ratio is >= -1 exactly (f_t >= 0); clamp the last rounding so f_t(0) = 0 gives -inf, not NaN
    return jnp.log1p(jnp.maximum(numerator / denominator, -1.0))


def expansion_factor(sched: Schedule, variances: Any, grid: GridLike = None) -> jax.Array:
    """Diagonal expansion function ``f_t(lambda)``, shape ``(N,) + variances.shape``.

    ``f_t(lambda) = (sqrt(ab_s ab_t) lambda + sigma_s sigma_t) / (ab_t lambda + sigma_t^2)``: the DDIM
    step's factor along a data-covariance eigendirection of variance ``lambda`` under the optimal
    Gaussian denoiser. Increasing in ``lambda``, ``f_t(0) = sigma_s/sigma_t``, ``f_t(inf) = a_t``.

    Args:
      sched: the schedule.
      variances: data variances ``lambda >= 0``, any shape.
      grid: increasing integer timesteps ``0 = tau_0 < ... < tau_N <= T``; ``None`` = all ``T`` steps.

    Returns:
      ``f_t(lambda)``, shape ``(N,) + variances.shape``.
    """
    return jnp.exp(log_expansion_factor(sched, variances, grid))


def moran_function(sched: Schedule, variances: Any, grid: GridLike = None) -> jax.Array:
    """``sum_t log f_t(lambda)`` over the chain (log of the chain's factor), shape ``variances.shape``.

    Args:
      sched: the schedule.
      variances: data variances ``lambda >= 0``, any shape.
      grid: increasing integer timesteps ``0 = tau_0 < ... < tau_N <= T``; ``None`` = all ``T`` steps.

    Returns:
      The Moran function at each variance; its root in ``lambda`` is :func:`moran_threshold`.
    """
    return jnp.sum(log_expansion_factor(sched, variances, grid), axis=0)


def _moran_residual(log_lam, coeffs):
    ab_t, a_minus_1, lam_star, sigma2_t = coeffs
    lam = jnp.exp(log_lam)
    return jnp.sum(jnp.log1p(ab_t * a_minus_1 * (lam - lam_star) / (ab_t * lam + sigma2_t)))


def moran_threshold(sched: Schedule, grid: GridLike = None) -> jax.Array:
    """Global expansion threshold ``lambda**``: the root of ``sum_t log f_t(lambda) = 0``.

    ``f_t`` increases in ``lambda``, so the root is unique and lies between ``min_t lambda*_t``
    and ``max_t lambda*_t`` (below the first every factor is < 1, above the last every factor is
    > 1); that bracket is solved by bisection in ``log lambda`` to machine precision
    (``optimistix.Bisection``). Gradients with respect to the schedule come from the implicit
    function theorem (``optimistix.ImplicitAdjoint``), not from unrolling the iterations.

    Directions whose data variance exceeds ``lambda**`` have a positive Lyapunov exponent.

    Args:
      sched: the schedule (its continuous parameters may be traced: ``jax.grad`` goes through).
      grid: increasing integer timesteps ``0 = tau_0 < ... < tau_N <= T``; ``None`` = all ``T`` steps.

    Returns:
      Scalar ``lambda**``.
    """
    c = step_coefficients(sched, grid)
    lam_star = c.sigma_t * (1 + c.a) / (c.sigma_t + c.sigma_s)
    coeffs = (c.alpha_bar_t, c.a_minus_1, lam_star, c.sigma_t**2)
    dtype = c.a.dtype
    eps = jnp.finfo(dtype).eps
    lower = jnp.log(jnp.min(lam_star))
    upper = jnp.log(jnp.max(lam_star))
    # Widen the bracket by a few ulps so that a root at an end point (one-step chains, equal
    # thresholds) is strictly inside it; the widened bracket still holds a unique root.
    pad = 8 * eps * (1 + jnp.maximum(jnp.abs(lower), jnp.abs(upper)))
    solver = optx.Bisection(rtol=0.0, atol=float(4 * eps), flip=False)
    solution = optx.root_find(
        _moran_residual,
        solver,
        (lower + upper) / 2,
        args=coeffs,
        options=dict(lower=lower - pad, upper=upper + pad),
        max_steps=256,
        throw=False,
    )
    return jnp.exp(solution.value)


def lyapunov_exponents(sched: Schedule, variances: Any, grid: GridLike = None) -> jax.Array:
    """Analytic Lyapunov exponents of the chain under Gaussian data, **per step**.

    ``Lambda(lambda) = (1/N) sum_t log f_t(lambda)`` for each covariance eigenvalue ``lambda``
    (the chain Jacobian is ``U diag(prod_t f_t(lambda_i)) U^T``). Per chain = ``N`` times this;
    signs and the Kaplan-Yorke ratio do not depend on the choice. Shape ``variances.shape``.

    Args:
      sched: the schedule.
      variances: covariance eigenvalues ``lambda >= 0``, any shape.
      grid: increasing integer timesteps ``0 = tau_0 < ... < tau_N <= T``; ``None`` = all ``T`` steps.

    Returns:
      The per-step exponent ``Lambda(lambda)`` of each variance, shape ``variances.shape``.
    """
    log_f = log_expansion_factor(sched, variances, grid)
    return jnp.mean(log_f, axis=0)


def analytic_kaplan_yorke(sched: Schedule, variances: Any, sizes: Any | None = None, grid: GridLike = None):
    """Kaplan-Yorke dimension of the Gaussian chain's attractor (general rule).

    Args:
      variances: covariance eigenvalues (or patch variances), shape ``(m,)``.
      sizes: how many coordinates share each variance (patch sizes ``n_k``), shape ``(m,)``;
        default 1 each.

    Returns:
      Scalar ``d_KY`` in ``[0, sum(sizes)]``.
    """
    return kaplan_yorke_dimension(lyapunov_exponents(sched, variances, grid), sizes)


def information_gain(sched: Schedule, variances: Any, sizes: Any | None = None, grid: GridLike = None) -> jax.Array:
    """Per-step Gaussian information gain ``IG_t`` in nats, shape ``(N,)``.

    ``IG_t = 1/2 sum_k n_k log((1 + SNR_s lambda_k) / (1 + SNR_t lambda_k))``: the increase of the
    mutual information between clean data ``x_0 ~ N(0, diag(lambda))`` and the noisy state from
    ``t`` to ``s``. Evaluated as ``log1p((SNR_s/SNR_t - 1) SNR_t lambda / (1 + SNR_t lambda))`` with
    ``SNR_s/SNR_t - 1`` from an ``expm1`` of the logSNR step (no difference of nearby logs). The step landing on ``alpha_bar = 1`` has ``SNR_s = inf``, so
    its information gain is ``+inf`` for continuous data (it recovers ``x_0`` exactly); summaries
    over steps should exclude that step (see ``grid``'s entry 0).

    Args:
      sched: the schedule.
      variances: covariance eigenvalues (or patch variances) ``lambda_k``, shape ``(m,)``.
      sizes: how many coordinates share each variance (``n_k``), shape ``(m,)``; default 1 each.
      grid: increasing integer timesteps ``0 = tau_0 < ... < tau_N <= T``; ``None`` = all ``T`` steps.

    Returns:
      ``IG_t`` in nats, entry ``i - 1`` for the step ``tau_i -> tau_{i-1}``.
    """
    check_variances(variances)
    c = step_coefficients(sched, grid)
    lam, n = patch_variance_arrays(variances, sizes, c.a.dtype)
    # logSNR_s - logSNR_t = G + log1p(ab_s (-expm1(-G)) / sigma_s^2), G = log ab_s - log ab_t
    gap = c.log_ratio
    sigma2_s, sigma2_t = c.sigma_s**2, c.sigma_t**2
    ab_s = jnp.exp(c.log_alpha_bar_s)
    lands_on_data = sigma2_s == 0  # the finest step: SNR_s = inf
    safe_sigma2_s = jnp.where(lands_on_data, 1.0, sigma2_s)
    # SNR_s / SNR_t - 1; the finest step is evaluated on a finite stand-in and replaced by +inf
    # afterwards (double where), so its infinite value never enters a backward pass as 0 * inf
    snr_gain = jnp.expm1(gap + jnp.log1p(ab_s * -jnp.expm1(-gap) / safe_sigma2_s))
    ab_t = c.alpha_bar_t[:, None]
    per_patch = jnp.log1p(snr_gain[:, None] * ab_t * lam / (sigma2_t[:, None] + ab_t * lam))
    per_patch = jnp.where(lands_on_data[:, None], jnp.inf, per_patch)
    return 0.5 * jnp.sum(n * per_patch, axis=1)


def dimension_growth(sched: Schedule, variances: Any, sizes: Any | None = None, grid: GridLike = None) -> jax.Array:
    """Per-step growth ``Delta d_t`` of the Kaplan-Yorke dimension, shape ``(N,)``.

    Definition (docs/theory.md section 8 leaves it open): the step's share of the Kaplan-Yorke numerator,
    ``Delta d_t = sum_{k: lambda_k > lambda**} n_k log f_t(lambda_k) / (N |Lambda_{k*}|)`` with
    ``Lambda_{k*}`` the per-step exponent of the least-contracting patch. Then ``sum_t Delta d_t`` is
    the fractional part of the paper's patch form ``d_KY - N+``, and ``Delta d_t`` is linear in
    ``log f_t``. If no patch contracts the denominator is taken as 1 (the fraction is then
    undefined, and the growth is the raw numerator per step).

    Args:
      sched: the schedule.
      variances: patch variances ``lambda_k``, shape ``(m,)``.
      sizes: patch sizes ``n_k``, shape ``(m,)``; default 1 each.
      grid: increasing integer timesteps ``0 = tau_0 < ... < tau_N <= T``; ``None`` = all ``T`` steps.

    Returns:
      ``Delta d_t``, entry ``i - 1`` for the step ``tau_i -> tau_{i-1}``.
    """
    check_variances(variances)
    log_f = log_expansion_factor(sched, variances, grid)
    _lam, n = patch_variance_arrays(variances, sizes, log_f.dtype)
    exponents = jnp.mean(log_f, axis=0)
    expanding = exponents > 0
    least_contracting = jnp.max(jnp.where(expanding, -jnp.inf, exponents))
    denominator = jnp.where(jnp.isfinite(least_contracting), jnp.abs(least_contracting), 1.0)
    numerator = jnp.sum(jnp.where(expanding, n * log_f, 0.0), axis=1)
    return numerator / (log_f.shape[0] * denominator)


def _geometry_values(sched: Schedule, grid: np.ndarray | jax.Array, lambdas: Any) -> dict[str, jax.Array]:
    """The JAX part of :func:`geometry_arrays` (jittable; ``grid`` may be traced)."""
    coeffs = step_coefficients(sched, grid)
    summary = contraction_summary(sched, grid)
    return {
        "alpha_bar_t": coeffs.alpha_bar_t,
        "sigma_t": coeffs.sigma_t,
        "a": coeffs.a,
        "b": coeffs.b,
        "lstar": contraction_threshold(sched, grid),
        "lambda_star": expansion_threshold(sched, grid),
        "log_snr": sched.log_snr[grid[1:]],
        "f": expansion_factor(sched, lambdas, grid),
        "lstar_mean": summary.mean,
        "lstar_cv": summary.cv,
        "lstar_min": summary.min,
        "lstar_argmin": summary.argmin,
        "lstar_finest": summary.finest,
        "lambda_star_star": moran_threshold(sched, grid),
    }


def geometry_arrays(sched: Schedule, grid: GridLike = None, *, lambdas: Any) -> dict[str, Any]:
    """Every per-step quantity of the chain, plus the summaries, as NumPy arrays / Python numbers.

    Collects :func:`step_coefficients` (``a_t``, ``b_t``), :func:`contraction_threshold`
    (``L*_t = (sigma_s + a_t sigma_t) / (1 + a_t)``), :func:`contraction_summary`,
    :func:`expansion_threshold` (``lambda*_t``), :func:`expansion_factor` (``f_t(lambda)``) and
    :func:`moran_threshold` (``lambda**``: ``sum_t log f_t(lambda**) = 0``); docs/theory.md
    sections 3 and 4. What ``pifs-jax geometry`` writes to ``geometry.json``. Not jittable (it
    returns host values); the grid and ``lambdas`` are validated here.

    Args:
      sched: the schedule.
      grid: sampling grid (``None`` = all ``T`` steps).
      lambdas: data variances for ``f_t(lambda)``, shape ``(K,)``, finite and ``>= 0``.

    Returns:
      ``{"summary": {...}, "per_step": {t, s, alpha_bar_t, sigma_t, a, b, lstar, lambda_star,
      log_snr, f}, "lambda_grid": lambdas}``; per-step arrays have shape ``(N,)`` (entry 0 = finest
      step), ``f`` has shape ``(N, K)``.
    """
    g = np.asarray(as_grid(grid, sched.T))  # validated here, outside jit
    check_variances(lambdas, name="lambdas")
    values = {k: np.asarray(v) for k, v in _geometry_values(sched, g, np.asarray(lambdas)).items()}
    per_step = {"t": g[1:], "s": g[:-1]}
    per_step.update(
        {k: values[k] for k in ("alpha_bar_t", "sigma_t", "a", "b", "lstar", "lambda_star", "log_snr", "f")}
    )
    lam_star, log_snr = values["lambda_star"], values["log_snr"]
    summaries = {
        "T": int(sched.T),
        "num_steps": int(len(g) - 1),
        "dtype": str(sched.dtype),
        "lstar_mean": float(values["lstar_mean"]),
        "lstar_cv": float(values["lstar_cv"]),
        "lstar_min": float(values["lstar_min"]),
        "lstar_argmin_t": int(g[1:][int(values["lstar_argmin"])]),
        "lstar_finest": float(values["lstar_finest"]),
        "lambda_star_star": float(values["lambda_star_star"]),
        "lambda_star_min": float(np.min(lam_star)),
        "lambda_star_max": float(np.max(lam_star)),
        "log_snr_max": float(log_snr[0]),
        "log_snr_min": float(log_snr[-1]),
    }
    return {"summary": summaries, "per_step": per_step, "lambda_grid": np.asarray(lambdas)}

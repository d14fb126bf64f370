"""Statistics of the trained-model claims (docs/theory.md section 11), in NumPy and ``math`` only.

- :func:`bootstrap_mean_interval`: percentile bootstrap interval of a mean over trajectories.
- :func:`spearman`: Spearman's rank correlation (average ranks for ties) and its two-sided
  p-value: exact (the permutation distribution) for ``n <= SPEARMAN_EXACT_MAX_N`` pairs, from
  the ``t`` distribution with ``n - 2`` degrees of freedom above.
- :func:`ols_fit`: ordinary least squares of ``y`` on ``x`` with a ``t``-interval of the slope and ``R^2``.
- :func:`crossover_window`: the (PC) crossover window of the trajectory-averaged violation counts.
- :func:`student_t_cdf`, :func:`student_t_quantile`: the Student-``t`` distribution through the
  regularized incomplete beta function ``I_x(a, b)`` (continued fraction, float64).
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import numpy as np

from pifs_jax._validation import check_positive_int
from pifs_jax.errors import ArgumentError

__all__ = [
    "SPEARMAN_EXACT_MAX_N",
    "OLSFit",
    "average_ranks",
    "bootstrap_mean_interval",
    "crossover_window",
    "ols_fit",
    "regularized_incomplete_beta",
    "spearman",
    "student_t_cdf",
    "student_t_quantile",
    "student_t_two_sided_p",
]


#: The largest number of pairs for which :func:`spearman` gives the exact permutation p-value
#: (above, the ``t`` approximation).
SPEARMAN_EXACT_MAX_N = 10

# ----------------------------------------------------------------------------- Student t


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """Continued fraction of ``I_x(a, b)`` (modified Lentz; converges fast for ``x < (a + 1)/(a + b + 2)``)."""
    tiny, tolerance = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10000):
        m2 = 2 * m
        for numerator in (
            m * (b - m) * x / ((a + m2 - 1.0) * (a + m2)),
            -(a + m) * (a + b + m) * x / ((a + m2) * (a + m2 + 1.0)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < tolerance:
            return h
    return h


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """``I_x(a, b) = B(x; a, b) / B(a, b)`` for ``a, b > 0``, ``0 <= x <= 1`` (float64).

    ``I_x = x^a (1 - x)^b / (a B(a, b)) * CF(x)`` with the continued fraction of Numerical Recipes
    section 6.4, using ``I_x(a, b) = 1 - I_{1-x}(b, a)`` where the fraction converges slowly.

    Args:
      a: the first shape parameter, ``> 0``.
      b: the second shape parameter, ``> 0``.
      x: the point, in ``[0, 1]`` (``x`` itself is returned at 0 and 1).

    Returns:
      ``I_x(a, b)`` as a Python float.

    Raises:
      ArgumentError: naming ``a`` unless ``a > 0`` and ``b > 0``, or ``x`` outside ``[0, 1]``.
    """
    if not (a > 0 and b > 0):
        raise ArgumentError("a", f"expected a > 0 and b > 0, got a = {a!r}, b = {b!r}")
    if not 0.0 <= x <= 1.0:
        raise ArgumentError("x", f"expected 0 <= x <= 1, got {x!r}")
    if x == 0.0 or x == 1.0:
        return float(x)
    log_front = a * math.log(x) + b * math.log1p(-x) + math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, 1.0 - x) / b


def _is_real_scalar(value: Any) -> bool:
    """A scalar (``np.isscalar``) and not a bool; a plain bool, so ``value`` keeps its type for ``float()``."""
    return not isinstance(value, bool) and bool(np.isscalar(value))


def _check_dof(dof: Any) -> float:
    if not _is_real_scalar(dof) or not float(dof) > 0:
        raise ArgumentError("dof", f"expected degrees of freedom > 0, got {dof!r}")
    return float(dof)


def student_t_two_sided_p(t: float, dof: float) -> float:
    """``P(|T| >= |t|)`` for ``T ~ t_dof``: ``I_{dof/(dof + t^2)}(dof/2, 1/2)`` (accurate for tiny p).

    Args:
      t: the statistic (NaN gives NaN, an infinite ``t`` gives 0).
      dof: the degrees of freedom, ``> 0``.

    Returns:
      the two-sided p-value as a Python float.

    Raises:
      ArgumentError: naming ``dof`` unless it is a real number ``> 0``.
    """
    dof = _check_dof(dof)
    t = float(t)
    if math.isnan(t):
        return math.nan
    if math.isinf(t):
        return 0.0
    return regularized_incomplete_beta(dof / 2.0, 0.5, dof / (dof + t * t))


def student_t_cdf(t: float, dof: float) -> float:
    """``P(T <= t)`` for ``T ~ t_dof``: ``1 - I_{dof/(dof+t^2)}(dof/2, 1/2) / 2`` for ``t >= 0``, symmetric.

    Args:
      t: the point.
      dof: the degrees of freedom, ``> 0``.

    Returns:
      the probability as a Python float.

    Raises:
      ArgumentError: naming ``dof`` unless it is a real number ``> 0``.
    """
    tail = student_t_two_sided_p(t, dof) / 2.0
    return 1.0 - tail if float(t) >= 0 else tail


def student_t_quantile(q: float, dof: float) -> float:
    """``t`` with ``P(T <= t) = q`` (``0 < q < 1``), by bisection on :func:`student_t_cdf` to ``1e-12``.

    Args:
      q: the probability, in ``(0, 1)``.
      dof: the degrees of freedom, ``> 0``.

    Returns:
      the quantile as a Python float (0 for ``q = 0.5``, negative below).

    Raises:
      ArgumentError: naming ``dof`` unless it is a real number ``> 0``, or ``q`` outside ``(0, 1)``.
    """
    dof = _check_dof(dof)
    if not 0.0 < q < 1.0:
        raise ArgumentError("q", f"expected a probability in (0, 1), got {q!r}")
    if q == 0.5:
        return 0.0
    if q < 0.5:
        return -student_t_quantile(1.0 - q, dof)
    low, high = 0.0, 1.0
    while student_t_cdf(high, dof) < q:
        low, high = high, 2.0 * high
    while high - low > 1e-12 * max(1.0, high):
        middle = (low + high) / 2.0
        low, high = (middle, high) if student_t_cdf(middle, dof) < q else (low, middle)
    return (low + high) / 2.0


# ----------------------------------------------------------------------------- bootstrap


def _check_level(level: Any) -> float:
    if not _is_real_scalar(level) or not 0.0 < float(level) < 1.0:
        raise ArgumentError("level", f"expected a confidence level in (0, 1), got {level!r}")
    return float(level)


def bootstrap_mean_interval(
    values: Any, *, axis: int = 0, resamples: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over ``axis`` and its percentile-bootstrap interval.

    ``resamples`` times, ``n`` indices are drawn with replacement along ``axis`` (NumPy
    ``default_rng(seed)``) and the mean taken; the interval is the ``(1 - level)/2`` and
    ``(1 + level)/2`` percentiles of those means (linear interpolation). With ``n = 1`` the
    interval is the single value.

    Args:
      values: an array-like of at least one dimension (read as float64), ``n >= 1`` values along ``axis``.
      axis: the resampled axis (negative values count from the end); default 0.
      resamples: the number of bootstrap resamples, an integer >= 1; default 2000.
      level: the confidence level, in ``(0, 1)``; default 0.95.
      seed: the seed of NumPy's ``default_rng``; default 0.

    Returns:
      ``(mean, lo, hi)``, each of ``values``' shape without ``axis`` (float64).

    Raises:
      ArgumentError: naming ``values`` (a scalar, or no value along ``axis``), ``resamples`` or ``level``.
    """
    values = np.asarray(values, np.float64)
    if values.ndim == 0:
        raise ArgumentError("values", "expected an array with the resampled axis, got a scalar")
    axis = int(axis) % values.ndim
    n = values.shape[axis]
    if n < 1:
        raise ArgumentError("values", f"expected at least one value along axis {axis}, got shape {values.shape}")
    resamples = check_positive_int(resamples, name="resamples")
    level = _check_level(level)
    moved = np.moveaxis(values, axis, 0)
    indices = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    means = moved[indices].mean(axis=1)  # (resamples,) + rest
    lo, hi = np.percentile(means, [100 * (1 - level) / 2, 100 * (1 + level) / 2], axis=0)
    return moved.mean(axis=0), lo, hi


# ----------------------------------------------------------------------------- correlation and regression


def _paired(x: Any, y: Any, minimum: int) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.ndim != 1 or y.shape != x.shape:
        raise ArgumentError("y", f"expected two 1-D arrays of one length, got shapes {x.shape} and {y.shape}")
    if x.shape[0] < minimum:
        raise ArgumentError("x", f"expected at least {minimum} pairs, got {x.shape[0]}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ArgumentError("x", "expected finite values")
    return x, y


def average_ranks(values: Any) -> np.ndarray:
    """Ranks ``1..n`` of a 1-D array, tied values sharing the average of their ranks.

    Args:
      values: a 1-D array-like of ``n`` numbers (read as float64).

    Returns:
      the ranks, float64 of shape ``(n,)``, in the order of ``values``.
    """
    values = np.asarray(values, np.float64)
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    ranks = np.empty(values.shape[0], np.float64)
    start = 0
    while start < values.shape[0]:
        stop = start + 1
        while stop < values.shape[0] and sorted_values[stop] == sorted_values[start]:
            stop += 1
        ranks[order[start:stop]] = (start + stop + 1) / 2.0  # mean of ranks start+1 .. stop
        start = stop
    return ranks


@functools.lru_cache(maxsize=64)
def _rank_product_counts(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, np.ndarray]:
    """Permutation distribution of ``C = sum_i a_i b_pi(i)`` over all ``n!`` permutations ``pi``.

    ``a``, ``b``: integer scores (sorted: the distribution does not depend on their order).
    Dynamic programming over the set of ``b``'s indices used so far (``2^n`` subsets, the
    ``i``-th ``a`` paired with one unused ``b``). Returns ``(offset, counts)`` with
    ``counts[offset + c]`` the number of permutations giving ``C = c`` (they sum to ``n!``);
    ``|C| <= offset = floor(sqrt(sum a^2 sum b^2))`` (Cauchy-Schwarz, also for every partial sum).
    """
    n = len(a)
    offset = math.isqrt(sum(v * v for v in a) * sum(v * v for v in b))
    counts = np.zeros((1 << n, 2 * offset + 1), np.int64)
    counts[0, offset] = 1
    masks = np.arange(1 << n)
    size = np.zeros(1 << n, np.int64)
    for j in range(n):
        size += (masks >> j) & 1
    for i in range(n):  # pair a[i] with each unused b[j]
        for j in range(n):
            source = masks[(size == i) & ((masks >> j) & 1 == 0)]
            shift = a[i] * b[j]
            target = counts[source | (1 << j)]
            if shift >= 0:
                target[:, shift:] += counts[source, : counts.shape[1] - shift]
            else:
                target[:, :shift] += counts[source, -shift:]
            counts[source | (1 << j)] = target
    final = counts[-1].copy()  # not a view: the 2^n table is freed
    final.flags.writeable = False  # cached
    return offset, final


def _exact_spearman_p(rx: np.ndarray, ry: np.ndarray) -> float:
    """Two-sided permutation p-value ``#{pi: |C_pi| >= |C|} / n!`` of centred average ranks ``rx``, ``ry``.

    ``2 r - (n + 1)`` of an average rank ``r`` is an integer, so ``C = sum_i a_i b_i`` of those
    scores is compared exactly; ``rho`` is ``C / sqrt(sum a^2 sum b^2)`` for every permutation.
    """
    a, b = np.rint(2 * rx).astype(np.int64), np.rint(2 * ry).astype(np.int64)
    observed = abs(int(np.sum(a * b)))
    offset, counts = _rank_product_counts(tuple(sorted(a.tolist())), tuple(sorted(b.tolist())))
    c = np.arange(-offset, offset + 1)
    return float(counts[np.abs(c) >= observed].sum()) / math.factorial(a.shape[0])


def spearman(x: Any, y: Any) -> tuple[float, float]:
    """Spearman's ``rho`` and its two-sided p-value.

    ``rho`` is Pearson's correlation of the average ranks of ``x`` and ``y``. The p-value is
    ``P(|rho_pi| >= |rho|)`` under the null hypothesis of independence:

    - ``n <= SPEARMAN_EXACT_MAX_N`` pairs: exact, over all ``n!`` permutations ``pi`` of ``y``'s
      average ranks against ``x``'s (ties keep their average ranks), e.g. ``p = 2 / n!`` for
      ``|rho| = 1`` without ties (``2/24`` for ``n = 4``);
    - larger ``n``: ``p = P(|T| >= |t|)`` with ``t = rho sqrt((n - 2) / (1 - rho^2))`` and
      ``T ~ t_{n-2}`` (``p = 0`` when ``|rho| = 1``; the exact value there is ``2 / n! < 1e-7``
      without ties).

    A constant input has no ranking: ``(nan, nan)``.

    Args:
      x: a 1-D array-like of ``n >= 3`` finite values.
      y: a 1-D array-like of ``x``'s shape, finite.

    Returns:
      ``(rho, p)`` as Python floats.

    Raises:
      ArgumentError: naming ``x`` / ``y`` for fewer than 3 pairs, unequal shapes or non-finite values.
    """
    x, y = _paired(x, y, 3)
    n = x.shape[0]
    rx, ry = average_ranks(x) - (n + 1) / 2.0, average_ranks(y) - (n + 1) / 2.0
    denominator = math.sqrt(float(np.sum(rx * rx)) * float(np.sum(ry * ry)))
    if denominator == 0.0:
        return math.nan, math.nan
    rho = max(-1.0, min(1.0, float(np.sum(rx * ry)) / denominator))
    if n <= SPEARMAN_EXACT_MAX_N:
        return rho, _exact_spearman_p(rx, ry)
    dof = n - 2
    if abs(rho) >= 1.0 - 1e-15:
        return rho, 0.0
    t = rho * math.sqrt(dof / ((1.0 - rho) * (1.0 + rho)))
    return rho, student_t_two_sided_p(t, dof)


class OLSFit(NamedTuple):
    """``y = intercept + slope x`` by least squares, with the slope's ``t``-interval."""

    slope: float
    intercept: float
    slope_lo: float
    slope_hi: float
    r2: float


def ols_fit(x: Any, y: Any, level: float = 0.95) -> OLSFit:
    """Ordinary least squares of ``y`` on ``x`` with a ``level`` confidence interval of the slope.

    ``slope = S_xy / S_xx``, ``intercept = mean(y) - slope mean(x)``, residual variance
    ``s^2 = RSS / (n - 2)``, ``se = s / sqrt(S_xx)``, interval ``slope -+ t_{n-2,(1+level)/2} se``,
    ``R^2 = 1 - RSS / S_yy`` (1 when ``S_yy = 0``).

    Args:
      x: the regressor, a 1-D array-like of ``n >= 3`` finite values (float64).
      y: the response, a 1-D array-like of ``x``'s shape, finite.
      level: the confidence level of the slope's interval, in ``(0, 1)``; default 0.95.

    Returns:
      :class:`OLSFit`, ``(slope, intercept, slope_lo, slope_hi, r2)`` as Python floats.

    Raises:
      ArgumentError: naming ``x`` for fewer than 3 points, non-finite values or a constant ``x``;
        ``y`` for shapes that are not two 1-D arrays of one length; ``level`` outside ``(0, 1)``.
    """
    x, y = _paired(x, y, 3)
    level = _check_level(level)
    dx, dy = x - x.mean(), y - y.mean()
    sxx = float(np.sum(dx * dx))
    if sxx == 0.0:
        raise ArgumentError("x", "expected at least two distinct x values")
    slope = float(np.sum(dx * dy)) / sxx
    intercept = float(y.mean()) - slope * float(x.mean())
    residual = y - (intercept + slope * x)
    rss, syy = float(np.sum(residual * residual)), float(np.sum(dy * dy))
    half_width = student_t_quantile((1 + level) / 2, x.shape[0] - 2) * math.sqrt(rss / (x.shape[0] - 2) / sxx)
    r2 = 1.0 - rss / syy if syy > 0 else 1.0
    return OLSFit(slope, intercept, slope - half_width, slope + half_width, r2)


# ----------------------------------------------------------------------------- crossover window


def crossover_window(t: Any, violations: Any, num_patches: int) -> tuple[float, float] | None:
    """The (PC) crossover window ``(t_upper, t_lower)`` of trajectory-averaged violation counts, or ``None``.

    docs/theory.md section 11: ``t_upper`` is the smallest ``t`` at which ``V_t = M`` (every patch
    violates (PC)) and ``t_lower`` the largest ``t < t_upper`` at which ``V_t = 0``. When ``V_t``
    never reaches ``M``, or never reaches 0 below ``t_upper``, there is no window (``None``). The
    width is ``t_upper - t_lower`` timesteps. Equality is tested to ``1e-9`` (an average of counts).

    Args:
      t: timesteps, shape ``(N,)``, in any order (e.g. the chain's, decreasing).
      violations: ``V_t``, shape ``(N,)`` (or ``(S, N)``: averaged over the trajectories first).
      num_patches: ``M``.
    """
    num_patches = check_positive_int(num_patches, name="num_patches")
    t = np.asarray(t, np.float64)
    counts = np.asarray(violations, np.float64)
    if counts.ndim == 2:
        counts = counts.mean(axis=0)
    if t.ndim != 1 or counts.shape != t.shape:
        raise ArgumentError(
            "violations", f"expected shape (N,) or (S, N) with N = {t.shape}, got {np.shape(violations)}"
        )
    full = np.abs(counts - num_patches) <= 1e-9
    if not full.any():
        return None
    t_upper = float(np.min(t[full]))
    below = (np.abs(counts) <= 1e-9) & (t < t_upper)
    if not below.any():
        return None
    return t_upper, float(np.max(t[below]))

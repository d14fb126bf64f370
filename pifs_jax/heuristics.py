"""The four popular schedule heuristics as computable objects (docs/theory.md section 9).

Helpers for the experiments that test the paper's claim that cosine offset, resolution logSNR
shift, Min-SNR-gamma weighting and Align Your Steps are approximate solutions of its design
criteria (Align Your Steps lives in :mod:`pifs_jax.criteria` / :mod:`pifs_jax.optimize`):

- :func:`min_snr_weights`: Hang et al. (2023) ``w_t = min(SNR_t, gamma) / SNR_t``;
- :func:`cosine_offset_limit`: the largest cosine offset ``s`` that keeps Nichol & Dhariwal's
  pixel-bin constraint ``sqrt(beta_1) <= 1/127.5``;
- :func:`scaling_exponent_offset`: the exact, variance-independent change of the Lyapunov
  exponents when data variances scale by ``c`` and logSNR shifts by ``-log c``;
- :func:`marginal_entropy_gain` and :func:`optimal_eps_loss`: per-step Gaussian quantities
  beside :func:`~pifs_jax.geometry.information_gain` (the Cauchy-Schwarz bound of
  ``log f_t``, and the eps-loss floor that the I-MMSE relation ties to information);
- :func:`measured_patch_variances` / :func:`photo_patch_spectrum`: the covariance spectrum of
  ``p x p x C`` windows of real images, pooled over positions; :func:`power_law_variances`;
- :func:`spearman_correlation`.

**The resolution shift, exactly.** With ``sigma_EDM,t^2 = 1/SNR_t`` the expansion factor splits as

    ``f_t(lambda) = a_t * (lambda + sigma_EDM,s sigma_EDM,t) / (lambda + sigma_EDM,t^2)``,

an isotropic part ``a_t = sqrt(alpha_bar_s / alpha_bar_t)`` and a part that depends on
``(lambda, SNR)`` only through ``SNR_s lambda`` and ``SNR_t lambda``. Scaling every variance by
``c`` and shifting every logSNR by ``-log c`` (:func:`~pifs_jax.schedules.shift_log_snr`) leaves
the second part, and the Gaussian information gain ``IG_t``, unchanged *exactly*; the isotropic
part telescopes over the chain to ``sum_t log a_t = -1/2 log alpha_bar_{tau_N}``, which the shift
changes to ``-1/2 log alpha_bar'_{tau_N}`` with ``alpha_bar' = alpha_bar / (alpha_bar + c sigma^2)``. Hence

    ``Lambda_shifted(c lambda) = Lambda(lambda) + log(alpha_bar_{tau_N} + c sigma_{tau_N}^2) / (2N)``

for every ``lambda`` (per-step exponents): the spectrum moves rigidly by about ``log(c)/(2N)``
and the Moran threshold does *not* scale with ``c`` (the chain still starts from unit-variance
noise; data ``c`` times larger need ``sqrt(c)`` more expansion).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx

from pifs_jax._validation import (
    check_finite,
    check_instance,
    check_positive_int,
    check_subset,
    check_variances,
    describe,
    is_concrete,
    patch_variance_arrays,
)
from pifs_jax.errors import ArgumentError
from pifs_jax.geometry import step_coefficients
from pifs_jax.grids import as_grid
from pifs_jax.schedules import Schedule, cosine
from pifs_jax.typing import GridLike

__all__ = [
    "PIXEL_BIN",
    "PatchSpectrum",
    "cosine_offset_limit",
    "marginal_entropy_gain",
    "measured_patch_variances",
    "min_snr_weights",
    "optimal_eps_loss",
    "photo_patch_spectrum",
    "power_law_variances",
    "scaling_exponent_offset",
    "spearman_correlation",
]

PIXEL_BIN = 1.0 / 127.5
"""Width of one 8-bit pixel bin on the ``[-1, 1]`` scale (``x / 127.5 - 1``)."""


# ----------------------------------------------------------------------------- Min-SNR-gamma


def min_snr_weights(sched: Schedule, *, gamma: Any = 5.0, grid: GridLike = None) -> jax.Array:
    """Min-SNR-gamma loss weights (Hang et al. 2023) for the eps-prediction loss, shape ``(N,)``.

    ``w_t = min(SNR_t, gamma) / SNR_t = min(1, gamma / SNR_t)``, evaluated as
    ``exp(min(0, log gamma - logSNR_t))`` (no overflow at high SNR). Entry ``i-1`` belongs to the
    timestep ``t = tau_i`` of ``grid`` (``None``: every training timestep ``t = 1..T``), the same
    indexing as the per-step arrays of :mod:`pifs_jax.geometry`. ``gamma -> inf`` gives the
    unweighted loss (``w = 1``); small ``gamma`` down-weights the low-noise steps as ``gamma/SNR``.

    Args:
      sched: the schedule.
      gamma: the clip, ``> 0`` (the paper's and Hang et al.'s default is 5); may be a tracer.
      grid: sampling grid (``None`` = every training step).

    Returns:
      weights in ``(0, 1]``, shape ``(N,)``.

    Raises:
      ArgumentError: naming ``sched`` (not a :class:`~pifs_jax.schedules.Schedule`), ``gamma`` (a
        concrete value that is not finite and ``> 0``) or ``grid``.

    Example:
      >>> w = min_snr_weights(cosine(1000), gamma=5.0)   # (1000,), w = 1 where SNR_t <= 5
    """
    check_instance(sched, Schedule, name="sched", what="pifs_jax Schedule")
    if is_concrete(gamma) and not (np.all(np.isfinite(np.asarray(gamma, dtype=float))) and float(gamma) > 0):
        raise ArgumentError("gamma", f"the Min-SNR clip must be finite and > 0, got {gamma!r}")
    g = jnp.asarray(as_grid(grid, sched.T))
    log_snr = sched.log_snr[g[1:]]
    return jnp.exp(jnp.minimum(0.0, jnp.log(jnp.asarray(gamma, log_snr.dtype)) - log_snr))


# ----------------------------------------------------------------------------- cosine offset


@functools.cache
def _log_first_beta_residual(T: int, max_beta: float):
    """``(s, target) -> log beta_1(s) - target`` for the cosine schedule; one function per ``(T, max_beta)``
    so that repeated root finds reuse their compilation."""

    def residual(s, target):
        return jnp.log(cosine(T, s=s, max_beta=max_beta).betas[0]) - target

    return residual


def _log_offset_residual(log_s, args):
    residual, goal = args
    return residual(jnp.exp(log_s), goal)


def cosine_offset_limit(T: int = 1000, *, bin_width: float = PIXEL_BIN, max_beta: float = 0.999) -> float:
    """Largest cosine offset ``s`` with ``sqrt(beta_1(s)) <= bin_width`` (Nichol & Dhariwal's constraint).

    Nichol & Dhariwal (2021) chose ``s = 0.008`` so that ``sqrt(beta_1)`` stays below the pixel bin
    ``1/127.5``. ``beta_1(s) = 1 - cos^2(phi_1)/cos^2(phi_0)``, ``phi_u = (u/T + s)/(1 + s) pi/2``, of
    :func:`~pifs_jax.schedules.cosine` increases with ``s``, so the admissible offsets form an
    interval ``[0, s_max]``; ``s_max`` is the root of ``log beta_1(s) = 2 log bin_width``, bracketed
    by doubling and solved by bisection in ``log s`` (``optimistix.Bisection``) to machine precision. Since
    ``L*_1 = a_1 sigma_1 / (1 + a_1)`` with ``sigma_1 = sqrt(beta_1)``, the constraint caps the weakest
    link at ``L*_1 ~ bin_width / 2``.

    Precision follows JAX's float setting: run under ``jax.enable_x64(True)`` for a float64 root
    (``sqrt(beta_1(s_max))`` equals ``bin_width`` to ~1e-13 relative); float32 gives ~1e-5.

    Args:
      T: number of training steps.
      bin_width: the bound on ``sqrt(beta_1)``, in ``(0, 1)`` (default one 8-bit pixel bin).
      max_beta: the cosine schedule's beta clip (does not act on ``beta_1`` in practice).

    Returns:
      ``s_max`` as a Python float.

    Raises:
      ArgumentError: naming ``bin_width`` if it is outside ``(0, 1)`` or already ``s = 0`` violates it
        (``T`` too small), or if no offset up to ``1e3`` reaches it.
    """
    T = check_positive_int(T, name="T")
    if not (isinstance(bin_width, (int, float, np.floating)) and 0 < float(bin_width) < 1):
        raise ArgumentError("bin_width", f"expected a number in (0, 1), got {bin_width!r}")
    target = 2.0 * math.log(float(bin_width))
    residual = _log_first_beta_residual(T, float(max_beta))
    dtype = jnp.result_type(float)
    goal = jnp.asarray(target, dtype)

    def value(s: float) -> float:
        return float(residual(jnp.asarray(s, dtype), goal))

    at_zero = value(0.0)
    if at_zero >= 0:
        raise ArgumentError(
            "bin_width",
            f"even s = 0 gives sqrt(beta_1) = {math.exp(0.5 * (at_zero + target)):.6g} >= "
            f"bin_width = {float(bin_width):.6g} for T = {T}; no offset satisfies the constraint",
        )
    upper = 1.0 / 64
    while value(upper) < 0:
        upper *= 2.0
        if upper > 1e3:
            raise ArgumentError("bin_width", f"no cosine offset s <= 1e3 reaches sqrt(beta_1) = {float(bin_width):.6g}")
    # bisection in log s (relative accuracy); below log(upper) - 60 the offset is
    # indistinguishable from 0, where the residual is negative. The tolerance bounds both the
    # bracket (in log s) and |log beta_1 - target|, whose rounding is ~eps |target|.
    solver = optx.Bisection(rtol=0.0, atol=float(16 * jnp.finfo(dtype).eps * (1 + abs(target))), flip=False)
    solution = optx.root_find(
        _log_offset_residual,
        solver,
        jnp.asarray(math.log(upper) - 1.0, dtype),
        args=(residual, goal),
        options=dict(lower=jnp.asarray(math.log(upper) - 60.0, dtype), upper=jnp.asarray(math.log(upper), dtype)),
        max_steps=256,
        throw=True,
    )
    return float(jnp.exp(solution.value))


# ----------------------------------------------------------------------------- resolution shift


def scaling_exponent_offset(sched: Schedule, scale: Any, *, grid: GridLike = None) -> jax.Array:
    """Exact change of the per-step Lyapunov exponents under ``lambda -> c lambda``, ``logSNR -> logSNR - log c``.

    ``Lambda_shifted(c lambda) - Lambda(lambda) = log(alpha_bar_{tau_N} + c sigma_{tau_N}^2) / (2N)``
    for every ``lambda``, with ``Lambda`` the per-step exponents of
    :func:`~pifs_jax.geometry.lyapunov_exponents`, ``shifted`` the schedule
    ``shift_log_snr(sched, -log c)`` and ``tau_N`` the grid's last point (see the module notes:
    only the isotropic factor ``a_t`` changes, and it telescopes). About ``log(c)/(2N)`` when
    ``alpha_bar_{tau_N}`` is small: the Moran threshold of the shifted chain is not ``c lambda**``.

    Args:
      sched: the unshifted schedule.
      scale: ``c > 0`` (may be a tracer).
      grid: sampling grid (``None`` = every training step).

    Returns:
      scalar.

    Raises:
      ArgumentError: naming ``sched`` (not a :class:`~pifs_jax.schedules.Schedule`), ``scale`` (a
        concrete value that is not finite and ``> 0``) or ``grid``.
    """
    check_instance(sched, Schedule, name="sched", what="pifs_jax Schedule")
    if is_concrete(scale) and not (np.isfinite(float(scale)) and float(scale) > 0):
        raise ArgumentError("scale", f"the variance scale c must be finite and > 0, got {scale!r}")
    g = as_grid(grid, sched.T)
    last = int(np.asarray(g)[-1]) if is_concrete(g) else jnp.asarray(g)[-1]
    log_ab = sched.log_alpha_bar[last]
    n_steps = jnp.shape(g)[0] - 1
    # log(ab + c (1 - ab)) = log(c) + log1p(ab (1 - c) / c), exact for ab -> 0 and c -> 1
    c = jnp.asarray(scale, log_ab.dtype)
    return (jnp.log(c) + jnp.log1p(jnp.exp(log_ab) * (1 - c) / c)) / (2 * n_steps)


# ----------------------------------------------------------------------------- Gaussian per-step quantities


def marginal_entropy_gain(
    sched: Schedule, variances: Any, sizes: Any | None = None, grid: GridLike = None
) -> jax.Array:
    """Per-step change of the Gaussian marginal's differential entropy, in nats, shape ``(N,)``.

    ``H_t = 1/2 sum_k n_k log(v_s(lambda_k) / v_t(lambda_k))`` with ``v_t(lambda) = alpha_bar_t lambda +
    sigma_t^2`` the variance of ``x_t`` along a data direction of variance ``lambda``; evaluated as
    ``log1p(alpha_bar_t expm1(G_t) (lambda - 1) / v_t)`` (``G_t = log alpha_bar_s - log alpha_bar_t``,
    no cancellation). Directions with ``lambda > 1`` gain entropy towards the data, ``lambda < 1`` lose it.

    Why it is here: by Cauchy-Schwarz on ``(sqrt(ab_s lambda), sigma_s) . (sqrt(ab_t lambda), sigma_t)``,
    ``f_t(lambda) <= sqrt(v_s / v_t)``, i.e. ``log f_t(lambda) <= 1/2 log(v_s / v_t)``, with near
    equality for 1000-step chains. Restricted to the expanding directions (``lambda_k > lambda**``) it
    bounds the numerator of :func:`~pifs_jax.geometry.dimension_growth` step by step, and it differs
    from the mutual-information gain :func:`~pifs_jax.geometry.information_gain` by the
    ``lambda``-independent term ``sum_k n_k log(sigma_s / sigma_t)``.

    Args:
      sched: the schedule.
      variances: ``lambda_k >= 0``, shape ``(m,)``.
      sizes: multiplicities ``n_k``, shape ``(m,)`` (default 1 each).
      grid: sampling grid (``None`` = every training step).

    Returns:
      shape ``(N,)`` (entry 0 is the finest step; ``-inf`` there only for ``lambda = 0``).

    Raises:
      ArgumentError: naming ``variances`` (concrete values that are not finite and ``>= 0``, or
        not of shape ``(m,)``), ``sizes`` (another shape), ``sched`` or ``grid``.
    """
    check_variances(variances)
    c = step_coefficients(sched, grid)
    lam, n = patch_variance_arrays(variances, sizes, c.a.dtype)
    ab_t = c.alpha_bar_t[:, None]
    v_t = ab_t * lam + (c.sigma_t**2)[:, None]
    ratio_minus_1 = ab_t * jnp.expm1(c.log_ratio)[:, None] * (lam - 1) / v_t
    return 0.5 * jnp.sum(n * jnp.log1p(jnp.maximum(ratio_minus_1, -1.0)), axis=1)


def optimal_eps_loss(sched: Schedule, variances: Any, sizes: Any | None = None, grid: GridLike = None) -> jax.Array:
    """The eps-prediction loss floor of Gaussian data at each step's start ``t = tau_i``, shape ``(N,)``.

    ``mmse_eps(t) = sum_k n_k SNR_t lambda_k / (1 + SNR_t lambda_k) = sum_k n_k ab_t lambda_k / (ab_t lambda_k + sigma_t^2)``:
    ``E ||eps - epshat||^2`` of the optimal (linear) denoiser ``eps^G_t``, i.e. the per-timestep
    training loss at the optimum. By the I-MMSE relation (Guo, Shamai and Verdu 2005) it is twice
    the information density, ``d I(x_0; x_t) / d logSNR = mmse_eps / 2``, so ``IG_t`` of
    :func:`~pifs_jax.geometry.information_gain` is its integral over the step's logSNR interval.

    Args:
      sched: the schedule.
      variances: ``lambda_k >= 0``, shape ``(m,)``.
      sizes: multiplicities ``n_k``, shape ``(m,)`` (default 1 each).
      grid: sampling grid (``None`` = every training step: ``t = 1..T``).

    Returns:
      shape ``(N,)``, entry ``i-1`` at ``t = tau_i``.

    Raises:
      ArgumentError: naming ``variances`` (concrete values that are not finite and ``>= 0``, or
        not of shape ``(m,)``), ``sizes`` (another shape), ``sched`` or ``grid``.
    """
    check_variances(variances)
    c = step_coefficients(sched, grid)
    lam, n = patch_variance_arrays(variances, sizes, c.a.dtype)
    signal = c.alpha_bar_t[:, None] * lam
    return jnp.sum(n * signal / (signal + (c.sigma_t**2)[:, None]), axis=1)


# ----------------------------------------------------------------------------- measured patch spectra


class PatchSpectrum(NamedTuple):
    """Covariance spectrum of ``p x p x C`` image windows, pooled over positions and images."""

    eigenvalues: np.ndarray
    """Eigenvalues of the pooled window covariance, decreasing, shape ``(n_k,)``, ``n_k = p^2 C``."""
    mean_variance: float
    """``tr(Sigma) / n_k``: the average pixel variance inside a window."""
    leading: float
    """``lambda_max(Sigma)`` (for natural images: close to the window-mean direction)."""
    num_windows: int
    """How many windows the estimate pooled."""


def _as_image_list(images: Any) -> list[np.ndarray]:
    if isinstance(images, (list, tuple)):
        items = [np.asarray(im) for im in images]
    else:
        arr = np.asarray(images)
        items = list(arr) if arr.ndim == 4 else [arr]
    if not items:
        raise ArgumentError("images", "expected at least one image")
    out = []
    for i, im in enumerate(items):
        if im.ndim == 2:
            im = im[..., None]
        if im.ndim != 3 or min(im.shape) < 1:
            raise ArgumentError("images", f"image {i} must have shape (H, W, C) or (H, W), got {im.shape}")
        if not np.all(np.isfinite(im)):
            raise ArgumentError("images", f"image {i} has non-finite values: {describe(im)}")
        out.append(im.astype(np.float64))
    if len({im.shape[-1] for im in out}) != 1:
        raise ArgumentError("images", f"all images need the same number of channels, got {[im.shape for im in out]}")
    return out


def measured_patch_variances(images: Any, patch_size: int, *, stride: int | None = None) -> PatchSpectrum:
    """Covariance spectrum of ``p x p x C`` windows of real images (stationary estimate).

    Every window ``x_w`` of side ``p`` whose top-left corner lies on a ``stride`` lattice of an
    image is a sample (coordinates ordered as :func:`~pifs_jax.patches.patchify` orders a patch:
    row, column, channel); windows of all images are pooled, so the estimate assumes the
    statistics do not depend on position (one covariance for every patch of the PIFS partition):

    ``Sigma = sum_w (x_w - mu)(x_w - mu)^T / (W - 1)``, ``mu`` the mean window, ``W`` the number of windows,

    i.e. :func:`pifs_jax.data.patch_stats` of the windows taken as a data set of one-patch images
    (its per-position statistics need many images; this pools positions instead). Computed in NumPy
    float64 (no compilation per window count); round-off below zero is clipped to 0. ``stride = p`` gives the non-overlapping partition,
    ``stride = 1`` every position (more, correlated, samples).

    Args:
      images: one image ``(H, W, C)``/``(H, W)``, a batch ``(B, H, W, C)``, or a sequence of images
        of different sizes but equal ``C`` (e.g. the photographs of :mod:`pifs_jax.data`).
      patch_size: ``p``, at most every image's height and width.
      stride: lattice spacing of the window corners (default ``p``).

    Returns:
      :class:`PatchSpectrum`.

    Raises:
      ArgumentError: naming ``images`` (shape, non-finite, mixed channels), ``patch_size`` (too large)
        or ``stride``; or ``images`` when fewer than two windows fit.

    Example:
      >>> spec = measured_patch_variances(np.random.default_rng(0).normal(size=(64, 64, 3)), 8, stride=1)
      >>> spec.eigenvalues.shape, round(spec.mean_variance, 1)     # ((192,), 1.0)
    """
    items = _as_image_list(images)
    p = check_positive_int(patch_size, name="patch_size")
    stride = p if stride is None else check_positive_int(stride, name="stride")
    too_small = [im.shape[:2] for im in items if im.shape[0] < p or im.shape[1] < p]
    if too_small:
        raise ArgumentError("patch_size", f"{p} x {p} windows do not fit in images of size {too_small}")
    windows = []
    for im in items:
        view = np.lib.stride_tricks.sliding_window_view(im, (p, p), axis=(0, 1))[::stride, ::stride]
        windows.append(view.transpose(0, 1, 3, 4, 2).reshape(-1, p * p * im.shape[-1]))
    windows = np.concatenate(windows)
    if windows.shape[0] < 2:
        raise ArgumentError("images", f"need at least 2 windows of size {p} (stride {stride}), got {windows.shape[0]}")
    centred = windows - windows.mean(axis=0)
    covariance = centred.T @ centred / (windows.shape[0] - 1)
    eigenvalues = np.clip(np.linalg.eigvalsh(covariance)[::-1], 0.0, None)
    return PatchSpectrum(
        eigenvalues, float(np.trace(covariance) / covariance.shape[0]), float(eigenvalues[0]), int(windows.shape[0])
    )


def photo_patch_spectrum(
    *, downsample: int, patch_size: int, stride: int | None = None, photos: Sequence[str] | None = None
) -> PatchSpectrum:
    """:func:`measured_patch_variances` of the scikit-image photographs of :mod:`pifs_jax.data`.

    Each photograph (:data:`pifs_jax.data.PHOTO_NAMES`, whole, at its own aspect ratio) is
    box-averaged over ``downsample x downsample`` pixels and scaled by ``x / 127.5 - 1`` to
    ``[-1, 1]``, exactly as :func:`pifs_jax.data.photo_crops` prepares them; box averaging by an
    integer factor keeps the mean of every image region unchanged across resolutions.

    Args:
      downsample: integer box-averaging factor ``f`` (resolution ``1/f`` of the originals, whose
        sides are 300-741 pixels; ``astronaut`` is 512 x 512).
      patch_size: window side ``p``.
      stride: window lattice spacing (default ``p``).
      photos: names from :data:`pifs_jax.data.PHOTO_NAMES` (default all five).

    Returns:
      :class:`PatchSpectrum`.

    Raises:
      ArgumentError: naming ``downsample`` (not an integer >= 1), ``photos`` (not a non-empty
        subset of :data:`pifs_jax.data.PHOTO_NAMES`), or as :func:`measured_patch_variances`
        (``images``, ``patch_size``, ``stride``).
    """
    from pifs_jax import data

    downsample = check_positive_int(downsample, name="downsample")
    names = data.PHOTO_NAMES if photos is None else check_subset(photos, data.PHOTO_NAMES, name="photos")
    return measured_patch_variances([data.load_photo(name, downsample) for name in names], patch_size, stride=stride)


def power_law_variances(n: int, *, exponent: float, mean_variance: float = 0.25) -> np.ndarray:
    """A power-law spectrum ``lambda_i = C i^(-exponent)``, ``i = 1..n``, with ``mean(lambda) = mean_variance``.

    A stand-in for natural-image patch spectra (which decay roughly as ``i^-1`` to ``i^-2``).

    Args:
      n: the number of variances.
      exponent: the decay exponent, finite and ``>= 0``.
      mean_variance: ``mean(lambda)``, the average pixel variance (about 0.2-0.25 for photographs
        on ``[-1, 1]``), finite and ``> 0``.

    Returns:
      NumPy float64 array of shape ``(n,)``, decreasing.

    Raises:
      ArgumentError: naming ``n`` (not an integer >= 1), ``exponent`` or ``mean_variance``.
    """
    n = check_positive_int(n, name="n")
    if not (np.isfinite(exponent) and exponent >= 0):
        raise ArgumentError("exponent", f"expected a finite number >= 0, got {exponent!r}")
    if not (np.isfinite(mean_variance) and mean_variance > 0):
        raise ArgumentError("mean_variance", f"expected a finite number > 0, got {mean_variance!r}")
    lam = np.arange(1, n + 1, dtype=np.float64) ** (-float(exponent))
    return lam * (mean_variance / lam.mean())


# ----------------------------------------------------------------------------- statistics


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks ``1..n``; tied values share the mean of the ranks they span."""
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    new_value = np.concatenate([[True], sorted_x[1:] != sorted_x[:-1]])
    group = np.cumsum(new_value) - 1  # group index of each sorted entry
    starts = np.flatnonzero(new_value)
    ends = np.concatenate([starts[1:], [x.size]])  # exclusive
    mean_rank = (starts + ends + 1) / 2.0  # mean of the 1-based ranks starts+1 .. ends
    ranks = np.empty(x.size, dtype=np.float64)
    ranks[order] = mean_rank[group]
    return ranks


def spearman_correlation(x: Any, y: Any) -> float:
    """Spearman's rank correlation: the Pearson correlation of the (tie-averaged) ranks of ``x`` and ``y``.

    ``rho = cov(r_x, r_y) / (std(r_x) std(r_y))`` with ``r`` the ranks ``1..n`` (ties get the mean of
    the ranks they span). Computed in NumPy float64.

    Args:
      x: 1-D array of length ``n >= 2``, finite, not constant.
      y: 1-D array of the same length, finite, not constant.

    Returns:
      ``rho`` in ``[-1, 1]`` as a Python float.

    Raises:
      ArgumentError: naming ``x`` or ``y`` (not 1-D with at least 2 entries, not finite, or
        constant), or ``y`` (not of ``x``'s shape).
    """
    xs = np.asarray(x, dtype=np.float64)
    ys = np.asarray(y, dtype=np.float64)
    for name, arr in (("x", xs), ("y", ys)):
        if arr.ndim != 1 or arr.size < 2:
            raise ArgumentError(name, f"expected a 1-D array with at least 2 entries, got shape {arr.shape}")
        check_finite(arr, name)
        if np.all(arr == arr[0]):
            raise ArgumentError(name, "is constant; the rank correlation is undefined")
    if xs.shape != ys.shape:
        raise ArgumentError("y", f"expected the shape of x, {xs.shape}, got {ys.shape}")
    rx = _average_ranks(xs) - (xs.size + 1) / 2.0
    ry = _average_ranks(ys) - (ys.size + 1) / 2.0
    return float(np.clip(np.dot(rx, ry) / math.sqrt(np.dot(rx, rx) * np.dot(ry, ry)), -1.0, 1.0))

"""Sample quality for small images: memorisation, a Frechet distance on PIFS patches, in-domain FD and KID.

Numbers a user can trust at 16x16 and 32x32, where Inception features mean nothing:

- **Nearest-neighbour distance** (memorisation): for each sample ``x`` the RMS distance to its
  closest training crop, ``d(x) = min_m ||x - x0_m||_2 / sqrt(n)`` (pixels in ``[-1, 1]``).
  A sampler that reproduces its training set has ``d = 0``; the scale of a genuinely new
  image is ``d`` of a held-out *test* crop. ``memorisation_ratio = mean d(samples) / mean d(test)``:
  about 1 for novel images, 0 for copies.
- **Frechet patch distance**: the Frechet (2-Wasserstein between Gaussians) distance between
  the distributions of the samples' and the test crops' patch features,
  ``FD = ||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a^{1/2} S_b S_a^{1/2})^{1/2})``. The features
  are the **raw non-overlapping ``p x p x C`` patch vectors** (:func:`pifs_jax.patches.patchify`,
  the PIFS range blocks; ``n_k = 48`` for 16x16 crops with ``p = 4``, 192 for 32x32 with
  ``p = 8``): every sample contributes its ``M`` patches. It compares first and second moments
  of local image statistics (colour, contrast, edges inside a patch). Aligned patches cannot
  see **seams** between patches (a patch transformer decodes each token to its own patch), so
  the same distance is also taken on the **straddling** patches: the ``p x p`` patches of the
  image cropped by ``p // 2`` on every side, each centred on a corner where four aligned
  patches meet (:func:`straddling_patch_features`). Higher-order structure is left to the
  nearest-neighbour distance and the samples grid.

- **In-domain FD and KID** (:func:`in_domain_scores`): the same Frechet distance, and the
  kernel inception distance of Binkowski et al. (2018), ``KID = mean over subsets of MMD^2_u``
  with ``k(x, y) = (x . y / d + 1)^3`` (:func:`kernel_distance_subsets`), taken on the 128
  features of a small encoder trained on the data set itself (:mod:`pifs_jax.models.encoders`:
  a digit classifier for ``digits``, a source-photograph classifier with a linear
  reconstruction term for ``photos16`` and ``photos32``; weights shipped and sha256-checked), each with a bootstrap 95 % interval
  (:func:`bootstrap_feature_distances`). Unlike the patch features they see shapes, edges
  across patches and texture: they grow with noise, blur and shuffled patches, which leaves the
  aligned patch distance unchanged (docs/guides/trained-models.md, "In-domain quality").
  :func:`quality_report` adds them (``"in_domain"``) when the images have a shipped encoder's shape.

Reference points (:func:`quality_report`): the training crops themselves (FD floor of real
images against the test crops, finite-sample and train/test-region shift included), the
empirical-optimal denoiser's samples (:func:`pifs_jax.denoisers.empirical_denoiser`: pure
memorisation, ``d ~ 0``), and pure Gaussian noise clipped to ``[-1, 1]`` (FD ceiling).

**"Useful"** (the quick configuration's target): the samples close at least
:data:`USEFUL_FD_GAP` = 99% of the Frechet gap between noise (ceiling) and the empirical
denoiser (floor), ``(FD_noise - FD_model) / (FD_noise - FD_empirical) >= 0.99``, on the aligned
*and* on the straddling patches, *and* are not copies, ``memorisation_ratio >= 0.5`` (the
empirical denoiser scores ~1e-4).

**Value range**: a sampler may leave the data range (a quick model was seen to produce values in
``[-3.24, 3.13]`` for data in ``[-1, 1]``). The scores are taken on the samples **as drawn**,
never clipped, and every score set records the samples' range and the fraction of values
outside the training data's range (:func:`value_range`). Clipping to ``[-1, 1]`` happens only to
*display* images (:func:`image_grid`, :func:`sample_figure`, whose title says so). The one
reference that is clipped by definition is the noise ceiling, ``N(0, I)`` clipped to ``[-1, 1]``.
Everything here runs in NumPy float64 on the host.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from pifs_jax.errors import ArgumentError
from pifs_jax.models.encoders import encode, encoder_for_shape, load_encoder
from pifs_jax.patches import patch_layout

__all__ = [
    "KID_SUBSET_SIZE",
    "MIN_IN_DOMAIN_SAMPLES",
    "REPORT_RESAMPLES",
    "USEFUL_FD_GAP",
    "USEFUL_MEMORISATION_RATIO",
    "bootstrap_feature_distances",
    "feature_scores",
    "frechet_distance",
    "frechet_patch_distance",
    "image_grid",
    "in_domain_scores",
    "kernel_distance",
    "kernel_distance_subsets",
    "nearest_neighbour_distances",
    "patch_features",
    "polynomial_kernel",
    "quality_report",
    "sample_figure",
    "sample_quality",
    "save_image_grid",
    "straddling_patch_features",
    "value_range",
]

#: KID's subset size in Binkowski et al. (2018), the default of :func:`kernel_distance_subsets` (capped at the set sizes).
KID_SUBSET_SIZE = 1000
_KERNEL_ROWS = 4096  # sets up to this size have their whole kernel matrices formed once (KID subsets, bootstrap)
#: The fewest samples (and reference images) :func:`in_domain_scores` scores.
MIN_IN_DOMAIN_SAMPLES = 32
#: Bootstrap resamples of the model's in-domain scores in :func:`quality_report` (the references get none).
REPORT_RESAMPLES = 100
#: A useful model closes this fraction of the Frechet patch gap between noise and memorisation.
USEFUL_FD_GAP = 0.99
#: ... and its samples sit at least this fraction of a test crop's distance from the training set.
USEFUL_MEMORISATION_RATIO = 0.5


def _images(x: Any, name: str) -> np.ndarray:
    x = np.asarray(x, np.float64)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[0] < 1:
        raise ArgumentError(name, f"expected images of shape (N, H, W, C) with N >= 1, got {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ArgumentError(name, "contains non-finite values")
    return x


def nearest_neighbour_distances(samples: Any, reference: Any, *, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """RMS distance of each sample to its nearest reference image, and that image's index.

    ``d_i = min_m ||x_i - r_m||_2 / sqrt(n)``, computed as
    ``||x||^2 - 2 <x, r> + ||r||^2`` in float64 over chunks of ``chunk`` samples.

    Args:
      samples: ``(S, H, W, C)``; reference: ``(R, H, W, C)`` of the same image shape.

    Returns:
      ``(distances (S,), indices (S,))``.
    """
    a = _images(samples, "samples")
    b = _images(reference, "reference")
    if a.shape[1:] != b.shape[1:]:
        raise ArgumentError("samples", f"image shape {a.shape[1:]} differs from the reference's {b.shape[1:]}")
    n = int(np.prod(a.shape[1:]))
    a, b = a.reshape(len(a), n), b.reshape(len(b), n)
    b2 = np.sum(b * b, axis=1)
    dists, index = np.empty(len(a)), np.empty(len(a), np.int64)
    for start in range(0, len(a), chunk):
        block = a[start : start + chunk]
        d2 = np.sum(block * block, axis=1)[:, None] - 2 * block @ b.T + b2[None, :]
        idx = np.argmin(d2, axis=1)
        index[start : start + chunk] = idx
        dists[start : start + chunk] = np.sqrt(np.maximum(d2[np.arange(len(block)), idx], 0.0) / n)
    return dists, index


def patch_features(images: Any, *, patch_size: int) -> np.ndarray:
    """Raw patch vectors of every image: ``(N, H, W, C) -> (N M, p^2 C)`` (patchify order).

    Args:
      images: ``(N, H, W, C)`` (``(N, H, W)`` for one channel), finite.
      patch_size: ``p``, which must tile the images.

    Returns:
      the patch vectors, float64 ``(N M, p^2 C)``.

    Raises:
      ArgumentError: naming ``images`` (not finite images of ``N >= 1``) or ``patch_size`` (see
        :func:`pifs_jax.patches.patch_layout`).
    """
    x = _images(images, "images")
    layout = patch_layout(x.shape[1:], patch_size)
    p = layout.patch_size
    blocks = x.reshape(len(x), layout.rows, p, layout.cols, p, layout.channels)
    return blocks.transpose(0, 1, 3, 2, 4, 5).reshape(len(x) * layout.num_patches, layout.patch_dim)


def straddling_patch_features(images: Any, *, patch_size: int) -> np.ndarray:
    """Patch vectors of the grid shifted by ``p // 2``: ``(N, H, W, C) -> (N (H/p - 1)(W/p - 1), p^2 C)``.

    The image is cropped to ``[o, H - p + o) x [o, W - p + o)``, ``o = p // 2``; its ``p x p``
    patches each cover the corner where four aligned patches meet, so discontinuities at patch
    borders change their statistics. Needs at least two patches per side.

    Args:
      images: ``(N, H, W, C)`` (``(N, H, W)`` for one channel), finite.
      patch_size: ``p``, which must tile the images in at least 2 x 2 patches.

    Returns:
      the patch vectors, float64 ``(N (H/p - 1)(W/p - 1), p^2 C)``.

    Raises:
      ArgumentError: naming ``images`` (not finite images of ``N >= 1``) or ``patch_size`` (does not
        tile the images, or fewer than 2 x 2 patches).
    """
    x = _images(images, "images")
    layout = patch_layout(x.shape[1:], patch_size)
    p, o = layout.patch_size, layout.patch_size // 2
    if layout.rows < 2 or layout.cols < 2:
        raise ArgumentError(
            "patch_size", f"straddling patches need at least 2 x 2 patches, got {layout.rows} x {layout.cols}"
        )
    return patch_features(x[:, o : o + x.shape[1] - p, o : o + x.shape[2] - p], patch_size=p)


def _sqrtm_psd(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def _frechet_from_moments(mu_a: np.ndarray, s_a: np.ndarray, mu_b: np.ndarray, s_b: np.ndarray) -> float:
    root_a = _sqrtm_psd(s_a)
    cross = np.linalg.eigvalsh(root_a @ s_b @ root_a)
    value = np.sum((mu_a - mu_b) ** 2) + np.trace(s_a) + np.trace(s_b) - 2 * np.sum(np.sqrt(np.clip(cross, 0, None)))
    return float(max(value, 0.0))


def _feature_pair(features_a: Any, features_b: Any) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(features_a, np.float64)
    b = np.asarray(features_b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ArgumentError(
            "features", f"expected two (N, d) arrays with the same d and N >= 2, got {a.shape}, {b.shape}"
        )
    return a, b


def frechet_distance(features_a: Any, features_b: Any) -> float:
    """Frechet distance between Gaussians fitted to two feature sets ``(N_a, d)``, ``(N_b, d)``.

    ``||mu_a - mu_b||^2 + tr S_a + tr S_b - 2 tr (S_a^{1/2} S_b S_a^{1/2})^{1/2}`` (symmetric
    eigen-decompositions; exact for PSD covariances, no complex ``sqrtm`` round-off).

    Args:
      features_a: the first feature set ``(N_a, d)``, ``N_a >= 2``.
      features_b: the second feature set ``(N_b, d)``, ``N_b >= 2``.

    Returns:
      the distance, a non-negative Python float.

    Raises:
      ArgumentError: naming ``features`` unless both are ``(N, d)`` arrays of one ``d`` with ``N >= 2``.
    """
    a, b = _feature_pair(features_a, features_b)
    return _frechet_from_moments(*_moments(a), *_moments(b))


def frechet_patch_distance(images_a: Any, images_b: Any, *, patch_size: int, straddling: bool = False) -> float:
    """:func:`frechet_distance` of the raw ``p x p x C`` patch vectors of two image sets.

    ``straddling=True``: of the patches across the aligned patches' borders
    (:func:`straddling_patch_features`).

    Args:
      images_a: the first image set ``(N_a, H, W, C)`` (``(N, H, W)`` for one channel).
      images_b: the second image set, of the same ``(H, W, C)``.
      patch_size: ``p``, which must tile the images.
      straddling: use the straddling patches instead of the aligned ones; default ``False``.

    Returns:
      the distance, a non-negative Python float.

    Raises:
      ArgumentError: naming ``images`` (not finite images of ``N >= 1``), ``patch_size`` (does not
        tile the images; fewer than 2 x 2 patches with ``straddling``) or ``features``.
    """
    features = straddling_patch_features if straddling else patch_features
    return frechet_distance(features(images_a, patch_size=patch_size), features(images_b, patch_size=patch_size))


def _fd_pair(images: np.ndarray, test: np.ndarray, patch_size: int) -> dict[str, float]:
    return {
        "fd_patches": frechet_patch_distance(images, test, patch_size=patch_size),
        "fd_patches_straddling": frechet_patch_distance(images, test, patch_size=patch_size, straddling=True),
    }


# ----------------------------------------------------------------------------- in-domain features


def polynomial_kernel(features_a: Any, features_b: Any) -> np.ndarray:
    """KID's kernel ``k(x, y) = (x . y / d + 1)^3`` between ``(N_a, d)`` and ``(N_b, d)``: ``(N_a, N_b)``.

    Args:
      features_a: the first feature set ``(N_a, d)``, ``N_a >= 2``.
      features_b: the second feature set ``(N_b, d)``, ``N_b >= 2``.

    Returns:
      the kernel matrix, float64 ``(N_a, N_b)``.

    Raises:
      ArgumentError: naming ``features`` unless both are ``(N, d)`` arrays of one ``d`` with ``N >= 2``.
    """
    a, b = _feature_pair(features_a, features_b)
    return (a @ b.T / a.shape[1] + 1.0) ** 3


def _mmd2_unbiased(kxx: np.ndarray, kyy: np.ndarray, kxy: np.ndarray) -> float:
    m, n = len(kxx), len(kyy)
    within_x = (np.sum(kxx) - np.trace(kxx)) / (m * (m - 1))
    within_y = (np.sum(kyy) - np.trace(kyy)) / (n * (n - 1))
    return float(within_x + within_y - 2.0 * np.mean(kxy))


def _check_subsets(subsets: Any, subset_size: Any, count: int) -> tuple[int, int]:
    if isinstance(subsets, bool) or not isinstance(subsets, (int, np.integer)) or subsets < 1:
        raise ArgumentError("subsets", f"expected a positive integer, got {subsets!r}")
    size = min(KID_SUBSET_SIZE, count) if subset_size is None else subset_size
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 2 <= size <= count:
        raise ArgumentError(
            "subset_size",
            f"expected an integer from 2 to the smaller set's size {count}, got {subset_size!r}"
            + (" (each KID subset needs two samples of each set)" if count < 2 else ""),
        )
    return int(subsets), int(size)


def kernel_distance_subsets(
    features_a: Any, features_b: Any, *, subsets: int = 100, subset_size: int | None = None, seed: int = 0
) -> np.ndarray:
    """The unbiased ``MMD^2`` of every KID subset (Binkowski et al. 2018): ``(subsets,)``.

    For each subset, ``m`` rows of each set are drawn without replacement
    (``numpy.random.default_rng(seed)``) and

    ``MMD^2_u = sum_{i != j} k(x_i, x_j) / (m (m - 1)) + sum_{i != j} k(y_i, y_j) / (m (m - 1))
    - 2 sum_{i, j} k(x_i, y_j) / m^2``

    with :func:`polynomial_kernel`; each value is an unbiased estimate of ``MMD^2`` (it can be
    negative when the two distributions are equal). ``subset_size`` ``m`` defaults to
    ``min(1000, N_a, N_b)`` (:data:`KID_SUBSET_SIZE`, the paper's); the paper uses 100 subsets.

    Args:
      features_a: the first feature set ``(N_a, d)``.
      features_b: the second feature set ``(N_b, d)``.
      subsets: the number of subsets, a positive integer; default 100.
      subset_size: ``m``, from 2 to ``min(N_a, N_b)``; ``None`` (default): ``min(1000, N_a, N_b)``.
      seed: the seed of ``numpy.random.default_rng``; default 0.

    Returns:
      the ``MMD^2_u`` of each subset, float64 ``(subsets,)``.

    Raises:
      ArgumentError: naming ``features`` (shapes, fewer than 2 rows), ``subsets`` or
        ``subset_size`` (below 2 or above the smaller set).
    """
    a, b = _feature_pair(features_a, features_b)
    subsets, m = _check_subsets(subsets, subset_size, min(len(a), len(b)))
    rng = np.random.default_rng(seed)
    draws = [(rng.choice(len(a), m, replace=False), rng.choice(len(b), m, replace=False)) for _ in range(subsets)]
    if max(len(a), len(b)) > _KERNEL_ROWS:
        values = np.empty(subsets)
        for i, (ia, ib) in enumerate(draws):
            x, y = a[ia], b[ib]
            values[i] = _mmd2_unbiased(polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y))
        return values
    # every kernel value once; a subset is a 0/1 row of weights (the same sums, as matrix products)
    ca, cb = np.zeros((subsets, len(a))), np.zeros((subsets, len(b)))
    for i, (ia, ib) in enumerate(draws):
        ca[i, ia], cb[i, ib] = 1.0, 1.0
    kxx, kyy, kxy = polynomial_kernel(a, a), polynomial_kernel(b, b), polynomial_kernel(a, b)
    cross = np.einsum("si,si->s", ca @ kxy, cb) / (m * m)
    return _weighted_within(kxx, ca) + _weighted_within(kyy, cb) - 2.0 * cross


def kernel_distance(
    features_a: Any, features_b: Any, *, subsets: int = 100, subset_size: int | None = None, seed: int = 0
) -> float:
    """KID: the mean of :func:`kernel_distance_subsets` (``MMD^2_u`` over ``subsets`` random subsets).

    Args:
      features_a: the first feature set ``(N_a, d)``.
      features_b: the second feature set ``(N_b, d)``.
      subsets: the number of subsets; default 100.
      subset_size: ``m``, the rows per subset; ``None`` (default): ``min(KID_SUBSET_SIZE, N_a, N_b)``.
      seed: the seed of ``numpy.random.default_rng``; default 0.

    Returns:
      the KID, a Python float.

    Raises:
      ArgumentError: as :func:`kernel_distance_subsets`.
    """
    return float(
        np.mean(kernel_distance_subsets(features_a, features_b, subsets=subsets, subset_size=subset_size, seed=seed))
    )


def _moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return x.mean(0), np.atleast_2d(np.cov(x, rowvar=False))


def _weighted_moments(x: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = counts.sum()
    mu = counts @ x / n
    centred = x - mu
    return mu, (centred.T * counts) @ centred / (n - 1)


def _weighted_within(k: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``sum_{i != j} c_i c_j K_ij / (n^2 - sum c_i^2)`` for each row of ``counts`` ``(B, N)``."""
    n = counts.sum(axis=1)
    same = np.sum(counts**2, axis=1)
    total = np.einsum("bi,bi->b", counts @ k, counts) - (counts**2) @ np.diag(k)
    return total / np.maximum(n**2 - same, 1.0)


def bootstrap_feature_distances(
    features_a: Any,
    features_b: Any,
    *,
    resamples: int = 200,
    level: float = 0.95,
    seed: int = 0,
    max_kernel_rows: int = _KERNEL_ROWS,
) -> dict[str, tuple[float, float]]:
    """Percentile-bootstrap intervals of the Frechet distance and of ``MMD^2_u``, over the samples.

    ``resamples`` times both sets are resampled with replacement (counts ``c ~ Multinomial(N,
    1/N)``, ``numpy.random.default_rng(seed)``) and the estimators recomputed on the resample:

    - FD of the weighted moments ``mu = sum_i c_i x_i / N``,
      ``S = sum_i c_i (x_i - mu)(x_i - mu)^T / (N - 1)``;
    - ``MMD^2_u`` on the whole (resampled) sets, its within-set sums over pairs of *different*
      original rows: ``sum_{i != j} c_i c_j k(x_i, x_j) / (N^2 - sum_i c_i^2)`` (a row drawn twice
      is not paired with itself, which would bias the estimate up), the cross term
      ``c_a^T K_ab c_b / (N_a N_b)``. Kernel matrices are formed once, on at most
      ``max_kernel_rows`` rows of each set (a random subset; memory ``O(rows^2)``).

    The KID interval is the ``(1 - level) / 2`` and ``(1 + level) / 2`` percentiles of the
    resampled values (linear interpolation). The FD is biased upward at finite ``N`` (by about
    ``tr S_a / N_a + tr S_b / N_b`` and more), and a resample, which holds fewer distinct rows,
    more so: its percentiles can lie wholly above the estimate. The FD interval is therefore
    the percentiles of ``FD* - (mean FD* - FD)``, the resampled values shifted so that their
    mean is the estimate: the estimator's spread, centred on it (its lower end clipped at 0).
    Neither interval removes the FD's own bias; compare FDs only at equal ``N``.

    Args:
      features_a: the first feature set ``(N_a, d)``, ``N_a >= 2``.
      features_b: the second feature set ``(N_b, d)``, ``N_b >= 2``.
      resamples: the number of bootstrap resamples, a positive integer; default 200.
      level: the confidence level, in ``(0, 1)``; default 0.95.
      seed: the seed of ``numpy.random.default_rng``; default 0.
      max_kernel_rows: the most rows of each set the kernel matrices are formed on; default 4096.

    Returns:
      ``{"fd": (lo, hi), "kid": (lo, hi)}``.

    Raises:
      ArgumentError: naming ``features`` (not two ``(N, d)`` arrays of one ``d`` with ``N >= 2``),
        ``resamples`` or ``level``.
    """
    a, b = _feature_pair(features_a, features_b)
    if isinstance(resamples, bool) or not isinstance(resamples, (int, np.integer)) or resamples < 1:
        raise ArgumentError("resamples", f"expected a positive integer, got {resamples!r}")
    if not 0.0 < level < 1.0:
        raise ArgumentError("level", f"expected a confidence level in (0, 1), got {level!r}")
    rng = np.random.default_rng(seed)
    fd = np.empty(resamples)
    # one BLAS thread for the many small (d x d) eigen-decompositions: threads gain nothing at this
    # size and, on a machine whose cores are busy, made each one a hundred times slower (measured)
    with threadpool_limits(limits=1, user_api="blas"):
        for r in range(resamples):
            ca = rng.multinomial(len(a), np.full(len(a), 1.0 / len(a))).astype(np.float64)
            cb = rng.multinomial(len(b), np.full(len(b), 1.0 / len(b))).astype(np.float64)
            fd[r] = _frechet_from_moments(*_weighted_moments(a, ca), *_weighted_moments(b, cb))
    ka = a[rng.choice(len(a), max_kernel_rows, replace=False)] if len(a) > max_kernel_rows else a
    kb = b[rng.choice(len(b), max_kernel_rows, replace=False)] if len(b) > max_kernel_rows else b
    kxx, kyy, kxy = polynomial_kernel(ka, ka), polynomial_kernel(kb, kb), polynomial_kernel(ka, kb)
    ca = rng.multinomial(len(ka), np.full(len(ka), 1.0 / len(ka)), size=resamples).astype(np.float64)
    cb = rng.multinomial(len(kb), np.full(len(kb), 1.0 / len(kb)), size=resamples).astype(np.float64)
    cross = np.einsum("bi,bi->b", ca @ kxy, cb) / (len(ka) * len(kb))
    kid = _weighted_within(kxx, ca) + _weighted_within(kyy, cb) - 2.0 * cross
    q = [(1.0 - level) / 2.0 * 100, (1.0 + level) / 2.0 * 100]
    fd_lo, fd_hi = np.percentile(fd - (np.mean(fd) - _frechet_from_moments(*_moments(a), *_moments(b))), q)
    fd_lo = max(fd_lo, 0.0)  # the FD is not negative
    kid_lo, kid_hi = np.percentile(kid, q)
    return {"fd": (float(fd_lo), float(fd_hi)), "kid": (float(kid_lo), float(kid_hi))}


def feature_scores(
    features_a: Any,
    features_b: Any,
    *,
    subsets: int = 100,
    subset_size: int | None = None,
    resamples: int = 200,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """FD and KID of two feature sets, each with its bootstrap interval.

    Args:
      features_a: the first feature set ``(N_a, d)`` (e.g. the samples' features).
      features_b: the second feature set ``(N_b, d)`` (e.g. the reference images' features).
      subsets: the number of KID subsets (:func:`kernel_distance_subsets`); default 100.
      subset_size: the rows per KID subset; ``None`` (default): ``min(KID_SUBSET_SIZE, N_a, N_b)``.
      resamples: the bootstrap resamples (:func:`bootstrap_feature_distances`); 0: no bootstrap;
        default 200.
      level: the confidence level of the intervals; default 0.95.
      seed: the seed of the KID subsets (the bootstrap uses ``seed + 1``); default 0.

    Returns:
      ``{"fd", "fd_lo", "fd_hi", "kid", "kid_std", "kid_lo", "kid_hi", "kid_subsets",
      "kid_subset_size", "level", "resamples", "num_a", "num_b", "dim"}``: ``fd`` is
      :func:`frechet_distance`; ``kid`` the mean and ``kid_std`` the standard deviation of
      :func:`kernel_distance_subsets`; the intervals :func:`bootstrap_feature_distances`
      (``None`` with ``resamples = 0``: no bootstrap).

    Raises:
      ArgumentError: naming ``features``, ``subsets``, ``subset_size``, ``resamples`` or ``level``
        (see :func:`kernel_distance_subsets` and :func:`bootstrap_feature_distances`).
    """
    a, b = _feature_pair(features_a, features_b)
    values = kernel_distance_subsets(a, b, subsets=subsets, subset_size=subset_size, seed=seed)
    if resamples == 0:
        intervals = {"fd": (None, None), "kid": (None, None)}
    else:
        intervals = bootstrap_feature_distances(a, b, resamples=resamples, level=level, seed=seed + 1)
    return {
        "fd": frechet_distance(a, b),
        "fd_lo": intervals["fd"][0],
        "fd_hi": intervals["fd"][1],
        "kid": float(np.mean(values)),
        "kid_std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
        "kid_lo": intervals["kid"][0],
        "kid_hi": intervals["kid"][1],
        "kid_subsets": len(values),
        "kid_subset_size": int(subset_size or min(KID_SUBSET_SIZE, len(a), len(b))),
        "level": level,
        "resamples": resamples,
        "num_a": len(a),
        "num_b": len(b),
        "dim": a.shape[1],
    }


def _finite_images(x: Any, name: str) -> np.ndarray:
    """``x`` as float64 images, refused by name (with the offending indices) when any is non-finite."""
    x = np.asarray(x, np.float64)
    if x.ndim >= 2:
        bad = np.flatnonzero(~np.all(np.isfinite(x.reshape(len(x), -1)), axis=1))
        if len(bad):
            shown = ", ".join(str(i) for i in bad[:8]) + (", ..." if len(bad) > 8 else "")
            raise ArgumentError(
                name,
                f"{len(bad)} of {len(x)} images hold non-finite values (indices [{shown}]); they are not "
                "dropped silently: remove or fix them (a diverged sampler is itself a result)",
            )
    return x


def in_domain_scores(
    samples: Any,
    *,
    data: str,
    reference: Any,
    subsets: int = 100,
    subset_size: int | None = None,
    resamples: int = 200,
    level: float = 0.95,
    seed: int = 0,
    reference_features: Any | None = None,
) -> dict[str, Any]:
    """FD and KID of ``samples`` against ``reference`` in the ``data`` set's encoder features.

    The features are the shipped encoder's 128 penultimate units
    (:func:`pifs_jax.models.encoders.encode`, weights sha256-checked); on them
    :func:`feature_scores`: ``FD = ||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a^{1/2} S_b S_a^{1/2})^{1/2})``
    and ``KID = mean over subsets of MMD^2_u`` with ``k(x, y) = (x . y / d + 1)^3``, each with a
    bootstrap ``level`` interval. The samples are scored as given (not clipped).

    Args:
      samples: ``(S, H, W, C)`` images in the data's units; ``(H, W, C)`` must be the encoder's
        (``digits`` ``(8, 8, 1)``, ``photos16`` ``(16, 16, 3)``, ``photos32`` ``(32, 32, 3)``).
      data: the data set whose encoder is used.
      reference: real images of the same shape, e.g. held-out test crops.
      subsets, subset_size: KID's subsets (:func:`kernel_distance_subsets`).
      resamples, level, seed: the bootstrap (:func:`bootstrap_feature_distances`) and the subsets' draws.
      reference_features: ``encode(reference, data=data)`` when the caller already has it (scoring
        several sample sets against one reference encodes the reference once); ``None`` (default):
        computed here. Checked against ``reference``'s length and the encoder's feature count.

    Returns:
      :func:`feature_scores`' dict plus ``"encoder"`` (the data set) and ``"encoder_sha256"``.

    Raises:
      ArgumentError: naming ``samples`` or ``reference`` (wrong image shape for the encoder, fewer
        than :data:`MIN_IN_DOMAIN_SAMPLES` images, non-finite images: their count and indices),
        ``data`` (no encoder), ``reference_features`` (not ``(len(reference), 128)``),
        ``subset_size``, ``subsets``, ``resamples`` or ``level``.
    """
    encoder = load_encoder(data)
    features = []
    for value, name in ((samples, "samples"), (reference, "reference")):
        x = _finite_images(value, name)
        if x.ndim < 1 or len(x) < MIN_IN_DOMAIN_SAMPLES:
            raise ArgumentError(
                name,
                f"expected at least {MIN_IN_DOMAIN_SAMPLES} images for FD and KID subsets, got shape {x.shape}",
            )
        if name == "reference" and reference_features is not None:
            given = np.asarray(reference_features, np.float64)
            if given.shape != (len(x), encoder.spec.features):
                raise ArgumentError(
                    "reference_features",
                    f"expected the {data!r} encoder's features of the reference, shape ({len(x)}, "
                    f"{encoder.spec.features}), got {given.shape}",
                )
            features.append(given)
        else:
            features.append(encode(x, data=data, name=name))
    scores = feature_scores(
        features[0],
        features[1],
        subsets=subsets,
        subset_size=subset_size,
        resamples=resamples,
        level=level,
        seed=seed,
    )
    return {"encoder": data, "encoder_sha256": encoder.sha256, **scores}


def value_range(samples: Any, data: Any) -> dict[str, float]:
    """The samples' value range and the fraction of their values outside the data's range.

    ``fraction_outside_data_range = #{v : v < min(data) or v > max(data)} / #values`` over every
    pixel and channel of every sample.

    Args:
      samples: ``(S, H, W, C)``; data: the training images ``(N, H, W, C)``.

    Returns:
      ``{"min", "max", "data_min", "data_max", "fraction_outside_data_range"}``.
    """
    x = _images(samples, "samples")
    data = _images(data, "data")
    low, high = float(np.min(data)), float(np.max(data))
    return {
        "min": float(np.min(x)),
        "max": float(np.max(x)),
        "data_min": low,
        "data_max": high,
        "fraction_outside_data_range": float(np.mean((x < low) | (x > high))),
    }


def sample_quality(samples: Any, *, train: Any, test: Any, patch_size: int) -> dict[str, float]:
    """Memorisation and patch-distribution scores of one set of samples, taken as drawn (not clipped).

    Args:
      samples: ``(S, H, W, C)`` (``(S, H, W)`` for one channel), finite.
      train: the training images ``(N, H, W, C)`` (nearest neighbours and the data range).
      test: the test images ``(N_test, H, W, C)`` (the Frechet patch distances).
      patch_size: ``p``, which must tile the images in at least 2 x 2 patches.

    Returns:
      ``{"nn_distance_mean", "nn_distance_median", "nn_distance_min", "fd_patches",
      "fd_patches_straddling", "min", "max", "data_min", "data_max",
      "fraction_outside_data_range"}``: nearest-training-crop RMS distances, the Frechet patch
      distances (aligned and straddling patches) to ``test``, and :func:`value_range` against ``train``.

    Raises:
      ArgumentError: for image sets that are not finite ``(N, H, W, C)`` arrays of one image shape,
        or a ``patch_size`` that does not give at least 2 x 2 patches.
    """
    x = _images(samples, "samples")
    test = _images(test, "test")
    d, _ = nearest_neighbour_distances(x, train)
    return {
        "nn_distance_mean": float(np.mean(d)),
        "nn_distance_median": float(np.median(d)),
        "nn_distance_min": float(np.min(d)),
        **_fd_pair(x, test, patch_size),
        **value_range(x, train),
    }


def quality_report(
    samples: Any,
    *,
    train: Any,
    test: Any,
    patch_size: int,
    reference_samples: Any | None = None,
    seed: int = 0,
    data: str | None = "auto",
) -> dict[str, Any]:
    """Scores of ``samples`` beside the reference points (module notes).

    Args:
      samples: the model's samples ``(S, H, W, C)``.
      train, test: training and held-out crops.
      patch_size: ``p`` of the patch features.
      reference_samples: the empirical-optimal denoiser's samples (memorisation reference), optional.
      seed: of the noise reference.
      data: the data set whose encoder gives the in-domain scores (:func:`in_domain_scores`);
        ``"auto"``: the shipped encoder whose image shape the samples have, if any; ``None``: none.

    Returns:
      ``{"model": scores, "empirical": scores | None, "train_crops": scores of S training crops,
      "test_crops": {"nn_distance_mean", ...} of the test crops to the training set,
      "noise": scores of clipped N(0, I), "memorisation_ratio": mean d(model) / mean d(test),
      "sample_range": [min, max] of the model's samples, "fraction_outside_data_range": of the
      model's sample values (:func:`value_range`; the same per score set),
      "memorisation_ratio_empirical", "useful": {"fd_gap_closed", "passes", "criterion"},
      "features": description, "num_samples": S, "in_domain": None or {"encoder", "encoder_sha256",
      "reference", "model", "empirical", "train_crops", "noise"} (each :func:`in_domain_scores`
      against the test crops, bootstrap intervals (:data:`REPORT_RESAMPLES`) for the model only; ``{"encoder", "skipped": why}`` when a set has fewer than
      :data:`MIN_IN_DOMAIN_SAMPLES` images)}``.
    """
    x = _images(samples, "samples")
    train = _images(train, "train")
    test = _images(test, "test")
    count = len(x)
    rng = np.random.default_rng(seed)
    train_subset = train[rng.choice(len(train), size=min(count, len(train)), replace=False)]
    test_subset = test[: min(len(test), max(count, 256))]
    noise = np.clip(rng.standard_normal(x.shape), -1.0, 1.0)
    test_nn, _ = nearest_neighbour_distances(test_subset, train)
    real = {
        "nn_distance_mean": float(np.mean(test_nn)),
        "nn_distance_median": float(np.median(test_nn)),
        "nn_distance_min": float(np.min(test_nn)),
    }
    report: dict[str, Any] = {
        "model": sample_quality(x, train=train, test=test, patch_size=patch_size),
        "empirical": None,
        "train_crops": _fd_pair(train_subset, test, patch_size),
        "test_crops": real,
        "noise": sample_quality(noise, train=train, test=test, patch_size=patch_size),
        "features": f"raw {patch_size}x{patch_size}x{x.shape[-1]} patch vectors (non-overlapping) of the samples "
        "as drawn (not clipped); noise reference N(0, I) clipped to [-1, 1]",
        "num_samples": count,
    }
    report["sample_range"] = [report["model"]["min"], report["model"]["max"]]
    report["data_range"] = [report["model"]["data_min"], report["model"]["data_max"]]
    report["fraction_outside_data_range"] = report["model"]["fraction_outside_data_range"]
    scale = real["nn_distance_mean"]
    report["memorisation_ratio"] = report["model"]["nn_distance_mean"] / scale
    if reference_samples is not None:
        report["empirical"] = sample_quality(reference_samples, train=train, test=test, patch_size=patch_size)
        report["memorisation_ratio_empirical"] = report["empirical"]["nn_distance_mean"] / scale
    floor_scores = report["empirical"] or report["train_crops"]

    def gap_closed(key: str) -> float:
        ceiling = report["noise"][key]
        return (ceiling - report["model"][key]) / max(ceiling - floor_scores[key], 1e-12)

    aligned, straddling = gap_closed("fd_patches"), gap_closed("fd_patches_straddling")
    closed = min(aligned, straddling)
    report["useful"] = {
        "criterion": (
            f"fd_gap_closed (the smaller of aligned and straddling patches) >= {USEFUL_FD_GAP} and "
            f"memorisation_ratio >= {USEFUL_MEMORISATION_RATIO}"
        ),
        "fd_gap_closed": closed,
        "fd_gap_closed_aligned": aligned,
        "fd_gap_closed_straddling": straddling,
        "passes": bool(closed >= USEFUL_FD_GAP and report["memorisation_ratio"] >= USEFUL_MEMORISATION_RATIO),
    }
    sets = {"model": x, "empirical": reference_samples, "train_crops": train_subset, "noise": noise}
    report["in_domain"] = _in_domain_section(sets, test, data, seed)
    return report


def _in_domain_section(sets: dict[str, Any], test: np.ndarray, data: str | None, seed: int) -> dict[str, Any] | None:
    """:func:`in_domain_scores` of each set of ``sets`` (``None`` values skipped) against ``test``."""
    if data == "auto":
        data = encoder_for_shape(test.shape[1:])
        if data is None:
            return None
    elif data is None:
        return None
    encoder = load_encoder(data)
    section: dict[str, Any] = {"encoder": data, "encoder_sha256": encoder.sha256}
    counts = {name: len(value) for name, value in sets.items() if value is not None} | {"test": len(test)}
    few = {name: count for name, count in counts.items() if count < MIN_IN_DOMAIN_SAMPLES}
    if few:
        section["skipped"] = f"fewer than {MIN_IN_DOMAIN_SAMPLES} images in {few}"
        return section
    section["reference"] = f"{len(test)} test crops"
    test_features = encode(_finite_images(test, "test"), data=data, name="test")  # once for every set
    for name, value in sets.items():
        resamples = REPORT_RESAMPLES if name == "model" else 0  # intervals for the model's scores only
        section[name] = (
            None
            if value is None
            else in_domain_scores(
                value, data=data, reference=test, seed=seed, resamples=resamples, reference_features=test_features
            )
        )
    return section


def image_grid(images: Any, *, columns: int | None = None, pad: int = 1) -> np.ndarray:
    """Tile images ``(N, H, W, C)`` into one ``uint8`` picture (white gutters), clipped to ``[-1, 1]`` for display.

    Args:
      images: ``(N, H, W, C)`` (``(N, H, W)`` for one channel), in ``[-1, 1]``.
      columns: the images per row; ``None`` (default): ``ceil(sqrt(N))``.
      pad: the gutter's width in pixels; default 1.

    Returns:
      the picture, ``uint8`` ``(rows (H + pad) + pad, columns (W + pad) + pad, C)``, without the
      channel axis when ``C = 1``.

    Raises:
      ArgumentError: naming ``images`` when they are not finite ``(N, H, W, C)`` with ``N >= 1``.
    """
    x = np.clip(_images(images, "images"), -1.0, 1.0)
    count, h, w, c = x.shape
    columns = columns or int(np.ceil(np.sqrt(count)))
    rows = int(np.ceil(count / columns))
    canvas = np.ones((rows * (h + pad) + pad, columns * (w + pad) + pad, c))
    for i in range(count):
        r, col = divmod(i, columns)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        canvas[top : top + h, left : left + w] = (x[i] + 1) / 2
    picture = np.round(canvas * 255).astype(np.uint8)
    return picture[..., 0] if c == 1 else picture


def save_image_grid(path: str | os.PathLike, images: Any, *, columns: int | None = None, scale: int = 4) -> Path:
    """Write :func:`image_grid` as a PNG (nearest-neighbour upscaled ``scale`` times), atomically.

    Args:
      path: the PNG file to write (:func:`pifs_jax.results.atomic_write_bytes`).
      images: ``(N, H, W, C)`` (``(N, H, W)`` for one channel), in ``[-1, 1]``.
      columns: the images per row; ``None`` (default): ``ceil(sqrt(N))``.
      scale: the upscaling factor (``<= 1``: none); default 4.

    Returns:
      ``path`` as a :class:`~pathlib.Path`.

    Raises:
      ArgumentError: naming ``images`` when they are not finite ``(N, H, W, C)`` with ``N >= 1``.
    """
    from PIL import Image

    from pifs_jax.results import atomic_write_bytes

    picture = image_grid(images, columns=columns)
    image = Image.fromarray(picture)
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return atomic_write_bytes(path, buffer.getvalue())


def sample_figure(samples: Any, *, title: str, data: Any | None = None, max_images: int = 64):
    """A titled figure of the first ``max_images`` samples (:func:`image_grid`, pixels shown as squares).

    The images are clipped to ``[-1, 1]`` for display only; the title says so and, with ``data``,
    gives the samples' range and the fraction of values outside the data's range
    (:func:`value_range`; the raw samples are what the scores see).

    Args:
      samples: ``(S, H, W, C)`` (``(S, H, W)`` for one channel), finite.
      title: the first line of the figure's title.
      data: the training images ``(N, H, W, C)`` for the value range; ``None`` (default): not given.
      max_images: the most samples shown; default 64.

    Returns:
      A matplotlib Figure (Agg canvas); write it with :func:`pifs_jax.plotting.save_figure` (atomic).

    Raises:
      ArgumentError: naming ``samples`` or ``data`` when they are not finite image arrays.
    """
    from pifs_jax.plotting import new_figure

    x = _images(samples, "samples")
    shown = x[:max_images]
    note = f"{len(shown)} of {len(x)} samples, clipped to [-1, 1] for display only"
    if data is not None:
        stats = value_range(x, data)
        note += (
            f"\nvalues in [{stats['min']:.3g}, {stats['max']:.3g}], "
            f"{100 * stats['fraction_outside_data_range']:.3g}% outside the data range "
            f"[{stats['data_min']:.3g}, {stats['data_max']:.3g}]"
        )
    picture = image_grid(shown)
    side = max(5.0, min(8.0, picture.shape[1] / 40))
    fig, ax = new_figure(figsize=(side, side + 0.8), dpi=150)
    ax.imshow(picture, cmap="gray" if picture.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(f"{title}\n{note}", fontsize="small")
    return fig

"""Sample quality for small images: memorisation and a Frechet distance on PIFS patches.

Two numbers a user can trust at 16x16 and 32x32, where Inception features mean nothing:

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

from pifs_jax.errors import ArgumentError
from pifs_jax.patches import patch_layout

__all__ = [
    "USEFUL_FD_GAP",
    "USEFUL_MEMORISATION_RATIO",
    "frechet_distance",
    "frechet_patch_distance",
    "image_grid",
    "nearest_neighbour_distances",
    "patch_features",
    "quality_report",
    "sample_figure",
    "sample_quality",
    "save_image_grid",
    "straddling_patch_features",
    "value_range",
]

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
    """Raw patch vectors of every image: ``(N, H, W, C) -> (N M, p^2 C)`` (patchify order)."""
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


def frechet_distance(features_a: Any, features_b: Any) -> float:
    """Frechet distance between Gaussians fitted to two feature sets ``(N_a, d)``, ``(N_b, d)``.

    ``||mu_a - mu_b||^2 + tr S_a + tr S_b - 2 tr (S_a^{1/2} S_b S_a^{1/2})^{1/2}`` (symmetric
    eigen-decompositions; exact for PSD covariances, no complex ``sqrtm`` round-off).
    """
    a = np.asarray(features_a, np.float64)
    b = np.asarray(features_b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ArgumentError(
            "features", f"expected two (N, d) arrays with the same d and N >= 2, got {a.shape}, {b.shape}"
        )
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    root_a = _sqrtm_psd(s_a)
    cross = np.linalg.eigvalsh(root_a @ s_b @ root_a)
    value = np.sum((mu_a - mu_b) ** 2) + np.trace(s_a) + np.trace(s_b) - 2 * np.sum(np.sqrt(np.clip(cross, 0, None)))
    return float(max(value, 0.0))


def frechet_patch_distance(images_a: Any, images_b: Any, *, patch_size: int, straddling: bool = False) -> float:
    """:func:`frechet_distance` of the raw ``p x p x C`` patch vectors of two image sets.

    ``straddling=True``: of the patches across the aligned patches' borders
    (:func:`straddling_patch_features`).
    """
    features = straddling_patch_features if straddling else patch_features
    return frechet_distance(features(images_a, patch_size=patch_size), features(images_b, patch_size=patch_size))


def _fd_pair(images: np.ndarray, test: np.ndarray, patch_size: int) -> dict[str, float]:
    return {
        "fd_patches": frechet_patch_distance(images, test, patch_size=patch_size),
        "fd_patches_straddling": frechet_patch_distance(images, test, patch_size=patch_size, straddling=True),
    }


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

    Returns:
      ``{"nn_distance_mean", "nn_distance_median", "nn_distance_min", "fd_patches",
      "fd_patches_straddling", "min", "max", "data_min", "data_max",
      "fraction_outside_data_range"}``: nearest-training-crop RMS distances, the Frechet patch
      distances (aligned and straddling patches) to ``test``, and :func:`value_range` against ``train``.
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
    samples: Any, *, train: Any, test: Any, patch_size: int, reference_samples: Any | None = None, seed: int = 0
) -> dict[str, Any]:
    """Scores of ``samples`` beside the reference points (module notes).

    Args:
      samples: the model's samples ``(S, H, W, C)``.
      train, test: training and held-out crops.
      patch_size: ``p`` of the patch features.
      reference_samples: the empirical-optimal denoiser's samples (memorisation reference), optional.
      seed: of the noise reference.

    Returns:
      ``{"model": scores, "empirical": scores | None, "train_crops": scores of S training crops,
      "test_crops": {"nn_distance_mean", ...} of the test crops to the training set,
      "noise": scores of clipped N(0, I), "memorisation_ratio": mean d(model) / mean d(test),
      "sample_range": [min, max] of the model's samples, "fraction_outside_data_range": of the
      model's sample values (:func:`value_range`; the same per score set),
      "memorisation_ratio_empirical", "useful": {"fd_gap_closed", "passes", "criterion"},
      "features": description, "num_samples": S}``.
    """
    x = _images(samples, "samples")
    train = _images(train, "train")
    test = _images(test, "test")
    count = len(x)
    rng = np.random.default_rng(seed)
    train_subset = train[rng.choice(len(train), size=min(count, len(train)), replace=False)]
    test_subset = test[: min(len(test), max(count, 256))]
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
        "noise": sample_quality(
            np.clip(rng.standard_normal(x.shape), -1.0, 1.0), train=train, test=test, patch_size=patch_size
        ),
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
    return report


def image_grid(images: Any, *, columns: int | None = None, pad: int = 1) -> np.ndarray:
    """Tile images ``(N, H, W, C)`` into one ``uint8`` picture (white gutters), clipped to ``[-1, 1]`` for display."""
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
    """Write :func:`image_grid` as a PNG (nearest-neighbour upscaled ``scale`` times), atomically."""
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

    Returns:
      A matplotlib Figure (Agg canvas); write it with :func:`pifs_jax.plotting.save_figure` (atomic).
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

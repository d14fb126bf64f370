"""Data for trained denoisers: real photographs, digits, synthetic Gaussians, patch statistics.

Everything here is offline and deterministic from a PRNG key.

**Photographs** (:func:`photo_crops`). The colour photographs that ship inside scikit-image
(:data:`PHOTO_NAMES`: ``astronaut`` 512x512, ``coffee`` 400x600, ``chelsea`` 300x451,
``rocket`` 427x640 and the left view of ``stereo_motorcycle`` 500x741; the other colour
samples are micrographs, astronomy, a retina or drawings) are box-averaged by an integer
factor ``f`` (``downsample``; by default ``f = max(1, 64 // size)``, so every crop covers a
64x64-pixel window of the original photograph at any crop size: ``photos16`` and ``photos32``
are the same distribution at two resolutions), scaled by ``x / 127.5 - 1`` to ``[-1, 1]`` and cut
into ``size x size x 3`` crops.

*Disjoint train/test regions.* Each downsampled photograph is tiled, from its top-left
corner, by square cells of side ``2 size`` (incomplete cells at the right and bottom edges
are unused). Cells form a checkerboard: cell ``(i, j)`` belongs to the **train** split when
``i + j`` is even and to the **test** split when it is odd. A crop lies entirely inside one
cell, at any of the ``(size + 1)^2`` integer offsets, so train and test crops never share a
pixel, while both splits sample every part of every photograph (a left/right split would give
the test split systematically different content). ``n`` crops are drawn **without
replacement** from all ``(photo, cell, offset)`` positions of the split, so no crop repeats;
``n`` larger than that number raises ``ValueError``. Defaults: 9537 train / 8959 test
positions at ``size = 16``, 35937 / 33759 at ``size = 32``.

**Digits** (:func:`load_dataset` ``"digits"``): scikit-learn's 1797 8x8 handwritten digits,
values ``0..16`` scaled by ``x / 8 - 1`` to ``[-1, 1]``, shape ``(n, 8, 8, 1)``; split by index:
the first :data:`DIGITS_TRAIN` ``= 1437`` (80 %) images are train, the remaining 360 test
(the file is roughly ordered by writer, so test digits come largely from other writers).

**Synthetic** data with known optimal denoisers (:mod:`pifs_jax.denoisers`):
:func:`gaussian_patch_data` (independent Gaussian patches with prescribed per-patch variances
or spectra: the block-diagonal model of docs/theory.md section 6, for
:func:`~pifs_jax.denoisers.gaussian_denoiser_patches`) and :func:`gaussian_mixture_data`
(for :func:`~pifs_jax.denoisers.gaussian_mixture_denoiser`).

**Patch statistics** (:func:`patch_stats`) of any data set in the PIFS partition of
:mod:`pifs_jax.patches`: per-patch mean and covariance, spectrum, leading eigenpair
``(lambda_k, v_k)`` (the directions of the suppression field), mean variance and the ranking of
patches by variance (the order in which Regime II releases suppression).

Float outputs use JAX's default float dtype (float32, or float64 under ``jax_enable_x64``)
unless ``dtype`` is given; ``dtype`` must be one of :data:`FLOAT_DTYPES` (``float16``,
``bfloat16``, ``float32``, ``float64``): an integer dtype would truncate the ``[-1, 1]`` pixels to
``{-1, 0, 1}``, so it raises ``ArgumentError`` naming ``dtype``.

**Input dtypes.** Arrays in image units that enter a function here (``data`` of
:func:`patch_stats`, ``mean`` of :func:`gaussian_patch_data`, ``means``/``covs`` of
:func:`gaussian_mixture_data`, the ``patch_variances``) must be floating and are refused
otherwise (a ``uint8`` image would be read on 0..255, not ``[-1, 1]``); the unitless mixture
``weights`` (normalised here) may be integers and are promoted. A PRNG key seeds a NumPy generator with the key's bits
(:func:`_host_rng`): the same key gives the same data, in float32 and float64 runs alike, and a
one-off host draw costs no XLA compilation (threefry sampling compiles for seconds on a CPU for
every new shape).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple, overload

import jax
import jax.numpy as jnp
import numpy as np

from pifs_jax._validation import (
    check_covariances,
    check_finite,
    check_floating,
    check_positive_int,
    check_subset,
    check_variances,
    describe,
    is_concrete,
)
from pifs_jax.errors import ArgumentError
from pifs_jax.patches import patch_layout, patch_permutation, patchify

__all__ = [
    "DATASETS",
    "DATASET_NAMES",
    "DIGITS_TEST",
    "DIGITS_TRAIN",
    "FLOAT_DTYPES",
    "PHOTO_NAMES",
    "CropPositions",
    "GaussianPatchData",
    "MixtureData",
    "PatchStats",
    "dataset_size",
    "digits_split",
    "gaussian_mixture_data",
    "gaussian_patch_data",
    "load_dataset",
    "load_photo",
    "patch_stats",
    "photo_crop_count",
    "photo_crops",
]

PHOTO_NAMES = ("astronaut", "coffee", "chelsea", "rocket", "motorcycle")
"""The colour photographs of ``skimage.data`` used for crops (``motorcycle`` = left stereo view)."""

DATASETS = {"photos16": (16, 16, 3), "photos32": (32, 32, 3), "digits": (8, 8, 1)}
"""The named data sets of :func:`load_dataset`: name -> image shape ``(H, W, C)``."""

DATASET_NAMES = tuple(DATASETS)
"""Names accepted by :func:`load_dataset`."""

DIGITS_TRAIN = 1437
"""Digits with index ``< DIGITS_TRAIN`` form the train split, the rest (:data:`DIGITS_TEST`) the test split."""

DIGITS_TEST = 1797 - DIGITS_TRAIN
"""Digits in the test split (scikit-learn holds 1797)."""

FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
"""The values a ``dtype`` argument of this module accepts (as names or dtypes)."""

_SPLITS = ("train", "test")
_WINDOW = 64  # original pixels covered by a crop under the default downsampling


def _float_dtype(dtype: Any):
    """``dtype`` checked to be one of :data:`FLOAT_DTYPES`; ``None`` is JAX's default float."""
    if dtype is None:
        return jnp.dtype(jnp.result_type(float))
    try:
        resolved = jnp.dtype(dtype)
    except (TypeError, ValueError):
        resolved = None
    if resolved is None or resolved.name not in FLOAT_DTYPES:
        got = repr(dtype) if resolved is None else str(resolved)
        raise ArgumentError("dtype", f"expected a floating dtype, one of {', '.join(FLOAT_DTYPES)}, got {got}")
    return resolved


def _host_rng(key: jax.Array) -> np.random.Generator:
    """A NumPy generator seeded with the key's bits: the same key gives the same data, split keys differ.

    Data are drawn on the host, once: no XLA compilation (threefry sampling compiles for seconds
    on a CPU for every new shape), and the draw is independent of ``jax_enable_x64``.
    """
    if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    bits = np.asarray(key)
    if bits.dtype != np.uint32 or bits.size < 1:
        raise ArgumentError("key", f"expected a JAX PRNG key (jax.random.key or PRNGKey), got {describe(bits)}")
    return np.random.default_rng(bits.ravel())


def _check_split(split: Any) -> str:
    if split not in _SPLITS:
        raise ArgumentError("split", f"expected 'train' or 'test', got {split!r}")
    return split


# ----------------------------------------------------------------------------- photographs


@functools.cache
def _photo_uint8(name: str) -> np.ndarray:
    """The photograph as shipped, ``(H, W, 3)`` uint8 (read once, cached, read-only)."""
    import skimage.data

    image = skimage.data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(skimage.data, name)()
    image = np.ascontiguousarray(image[..., :3])
    image.setflags(write=False)
    return image


@functools.lru_cache(maxsize=32)
def load_photo(name: str, factor: int = 1) -> np.ndarray:
    """One of scikit-image's colour photographs (:data:`PHOTO_NAMES`), box-averaged over
    ``factor x factor`` pixels, then ``x / 127.5 - 1``: float64 ``(H, W, 3)`` in ``[-1, 1]``, read-only.

    The images every crop of :func:`photo_crops` comes from (cached).

    Args:
      name: one of :data:`PHOTO_NAMES`.
      factor: integer box-averaging factor (default 1: the photograph as shipped); the rows and
        columns past the last whole ``factor x factor`` block are dropped.

    Returns:
      the photograph, float64 ``(H // factor, W // factor, 3)`` in ``[-1, 1]``, read-only.

    Raises:
      ArgumentError: naming ``name`` or ``factor``.
    """
    if name not in PHOTO_NAMES:
        raise ArgumentError("name", f"expected one of {', '.join(PHOTO_NAMES)}, got {name!r}")
    factor = check_positive_int(factor, name="factor")
    image = _photo_uint8(name).astype(np.float64)
    h, w = image.shape[0] // factor, image.shape[1] // factor
    image = image[: h * factor, : w * factor].reshape(h, factor, w, factor, 3).mean(axis=(1, 3))
    out = np.clip(image / 127.5 - 1.0, -1.0, 1.0)
    out.setflags(write=False)
    return out


class CropPositions(NamedTuple):
    """Where each crop of :func:`photo_crops` comes from (coordinates of the downsampled photo)."""

    photo: np.ndarray
    """Index into the ``photos`` tuple, shape ``(n,)``."""
    top: np.ndarray
    """Row of the crop's top-left pixel, shape ``(n,)``."""
    left: np.ndarray
    """Column of the crop's top-left pixel, shape ``(n,)``."""


def _resolve_downsample(size: int, downsample: Any) -> int:
    if downsample is None:
        return max(1, _WINDOW // size)
    return check_positive_int(downsample, name="downsample")


def _split_cells(shape: tuple, size: int, split: str) -> list[tuple[int, int]]:
    """Top-left corners of the checkerboard cells (side ``2 size``) of ``split`` in one photo."""
    cell = 2 * size
    parity = 0 if split == "train" else 1
    return [
        (i * cell, j * cell) for i in range(shape[0] // cell) for j in range(shape[1] // cell) if (i + j) % 2 == parity
    ]


def photo_crop_count(*, size: int, split: str = "train", downsample: int | None = None, photos=PHOTO_NAMES) -> int:
    """Number of distinct crop positions in ``split``: the largest ``n`` :func:`photo_crops` accepts.

    ``sum over photos of (cells of the split) * (size + 1)^2``.

    Args:
      size: crop side in (downsampled) pixels.
      split: ``"train"`` or ``"test"``.
      downsample: integer box-averaging factor; ``None`` = ``max(1, 64 // size)``.
      photos: which of :data:`PHOTO_NAMES` to count (default all).

    Returns:
      the number of distinct crop positions (0 when no cell fits).

    Raises:
      ArgumentError: naming ``size``, ``split``, ``downsample`` or ``photos``.
    """
    size = check_positive_int(size, name="size")
    split = _check_split(split)
    factor = _resolve_downsample(size, downsample)
    photos = check_subset(photos, PHOTO_NAMES, name="photos")
    offsets = (size + 1) ** 2
    return sum(len(_split_cells(load_photo(p, factor).shape, size, split)) * offsets for p in photos)


@overload
def photo_crops(
    key: jax.Array,
    *,
    size: int,
    n: int,
    split: str = "train",
    downsample: int | None = None,
    photos: Sequence[str] = PHOTO_NAMES,
    return_positions: Literal[False] = False,
    dtype: Any = None,
) -> jax.Array: ...


@overload
def photo_crops(
    key: jax.Array,
    *,
    size: int,
    n: int,
    split: str = "train",
    downsample: int | None = None,
    photos: Sequence[str] = PHOTO_NAMES,
    return_positions: Literal[True],
    dtype: Any = None,
) -> tuple[jax.Array, CropPositions]: ...


def photo_crops(
    key: jax.Array,
    *,
    size: int,
    n: int,
    split: str = "train",
    downsample: int | None = None,
    photos: Sequence[str] = PHOTO_NAMES,
    return_positions: bool = False,
    dtype: Any = None,
) -> jax.Array | tuple[jax.Array, CropPositions]:
    """Random ``size x size`` RGB crops of the scikit-image photographs, in ``[-1, 1]``.

    The photographs are box-averaged by ``downsample`` and scaled by ``x / 127.5 - 1``; crops are
    drawn without replacement from the checkerboard cells (side ``2 size``) of ``split``, so train
    and test crops come from disjoint regions (see the module docstring). The result depends only
    on ``key`` and the arguments.

    Args:
      key: PRNG key.
      size: crop side in (downsampled) pixels, e.g. 16 or 32.
      n: number of crops, at most :func:`photo_crop_count` for these arguments.
      split: ``"train"`` (cells with ``i + j`` even) or ``"test"`` (odd).
      downsample: integer box-averaging factor; ``None`` = ``max(1, 64 // size)`` (a crop covers
        64x64 original pixels).
      photos: which of :data:`PHOTO_NAMES` to use.
      return_positions: also return :class:`CropPositions`.
      dtype: floating dtype of the crops, one of :data:`FLOAT_DTYPES` (default: JAX's default
        float); anything else is refused.

    Returns:
      crops of shape ``(n, size, size, 3)``, or ``(crops, CropPositions)``.

    Raises:
      ArgumentError: naming ``size``, ``n``, ``split``, ``downsample``, ``photos`` or ``dtype``;
        ``n`` when it exceeds the number of distinct positions of the split.

    Example::

      train = photo_crops(jax.random.key(0), size=16, n=2048)            # (2048, 16, 16, 3)
      test = photo_crops(jax.random.key(1), size=16, n=512, split="test")
    """
    dtype = _float_dtype(dtype)
    size = check_positive_int(size, name="size")
    n = check_positive_int(n, name="n")
    split = _check_split(split)
    factor = _resolve_downsample(size, downsample)
    photos = check_subset(photos, PHOTO_NAMES, name="photos")
    images = [load_photo(p, factor) for p in photos]
    cells = [np.asarray(_split_cells(img.shape, size, split), dtype=np.int64).reshape(-1, 2) for img in images]
    per_cell = (size + 1) ** 2
    counts = np.array([len(c) * per_cell for c in cells], dtype=np.int64)
    total = int(counts.sum())
    if total == 0:
        raise ArgumentError(
            "size",
            f"no {2 * size}x{2 * size} cell (twice the crop size) fits in the photographs downsampled "
            f"by {factor}; use a smaller size or downsample",
        )
    if n > total:
        raise ArgumentError(
            "n",
            f"the {split} region holds only {total} distinct {size}x{size} crops (photos {photos}, "
            f"downsample {factor}), got n = {n}",
        )
    flat = _host_rng(key).choice(total, size=n, replace=False).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)])
    photo = np.searchsorted(starts, flat, side="right") - 1
    within = flat - starts[photo]
    cell_index, offset = np.divmod(within, per_cell)
    dy, dx = np.divmod(offset, size + 1)
    top = np.empty(n, np.int64)
    left = np.empty(n, np.int64)
    out = np.empty((n, size, size, 3), np.float64)
    for p, image in enumerate(images):
        mask = photo == p
        if not np.any(mask):
            continue
        corners = cells[p][cell_index[mask]]
        top[mask] = corners[:, 0] + dy[mask]
        left[mask] = corners[:, 1] + dx[mask]
        windows = np.lib.stride_tricks.sliding_window_view(image, (size, size), axis=(0, 1))  # (.., .., 3, s, s)
        out[mask] = windows[top[mask], left[mask]].transpose(0, 2, 3, 1)
    crops = jnp.asarray(out, dtype)
    if return_positions:
        return crops, CropPositions(photo, top, left)
    return crops


# ----------------------------------------------------------------------------- digits and named sets


@functools.cache
def _digits_scaled() -> np.ndarray:
    from sklearn.datasets import load_digits

    bunch: Any = load_digits()  # a Bunch (scikit-learn types the result as a union over return_X_y)
    images = bunch.images.astype(np.float64)  # (1797, 8, 8), values 0..16
    out = (images / 8.0 - 1.0)[..., None]
    out.setflags(write=False)
    return out


@functools.cache
def _digit_targets() -> np.ndarray:
    from sklearn.datasets import load_digits

    bunch: Any = load_digits()
    out = np.asarray(bunch.target, np.int64)
    out.setflags(write=False)
    return out


def digits_split(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """A whole digits split in file order, with its labels: ``(images (n, 8, 8, 1) float64, labels (n,) int64)``.

    Train: index ``< DIGITS_TRAIN`` (1437 images); test: the other 360. The images are those of
    :func:`load_dataset` (``x / 8 - 1``), read-only; the labels are the digits ``0..9``.

    Args:
      split: ``"train"`` (default) or ``"test"``.

    Returns:
      ``(images, labels)``: float64 images ``(n, 8, 8, 1)`` in ``[-1, 1]`` and int64 labels ``(n,)``,
      both read-only, ``n`` = 1437 (train) or 360 (test).

    Raises:
      ArgumentError: naming ``split``.
    """
    split = _check_split(split)
    part = slice(0, DIGITS_TRAIN) if split == "train" else slice(DIGITS_TRAIN, None)
    return _digits_scaled()[part], _digit_targets()[part]


def load_dataset(name: str, key: jax.Array, n: int, *, split: str = "train", dtype: Any = None) -> jax.Array:
    """``n`` images of a named data set, in ``[-1, 1]``, deterministic from ``key``.

    - ``"photos16"``: :func:`photo_crops` with ``size = 16`` (shape ``(n, 16, 16, 3)``).
    - ``"photos32"``: :func:`photo_crops` with ``size = 32`` (shape ``(n, 32, 32, 3)``).
    - ``"digits"``: scikit-learn digits ``x / 8 - 1`` (shape ``(n, 8, 8, 1)``), a random subset
      without replacement of the split (train: index ``< 1437``; test: the other 360).

    Args:
      name: one of :data:`DATASET_NAMES`.
      key: PRNG key.
      n: number of images.
      split: ``"train"`` or ``"test"``.
      dtype: floating dtype of the images, one of :data:`FLOAT_DTYPES` (default: JAX's default
        float); an integer dtype is refused (it would truncate the pixels to ``{-1, 0, 1}``).

    Returns:
      The images, shape ``(n, H, W, C)`` as listed above, of ``dtype``.

    Raises:
      ArgumentError: naming ``name``, ``n`` (more than the split holds), ``split`` or ``dtype``.
    """
    dtype = _float_dtype(dtype)
    if name not in DATASET_NAMES:
        raise ArgumentError("name", f"expected one of {DATASET_NAMES}, got {name!r}")
    n = check_positive_int(n, name="n")
    split = _check_split(split)
    if name != "digits":
        return photo_crops(key, size=DATASETS[name][0], n=n, split=split, dtype=dtype)
    digits = _digits_scaled()
    pool = digits[:DIGITS_TRAIN] if split == "train" else digits[DIGITS_TRAIN:]
    if n > pool.shape[0]:
        raise ArgumentError("n", f"the digits {split} split holds {pool.shape[0]} images, got n = {n}")
    index = _host_rng(key).choice(pool.shape[0], size=n, replace=False)
    return jnp.asarray(pool[index], dtype)


def dataset_size(name: str, *, split: str = "train") -> int:
    """The most images :func:`load_dataset` draws from ``name``'s ``split`` (its largest ``n``).

    Args:
      name: one of :data:`DATASET_NAMES`.
      split: ``"train"`` (default) or ``"test"``.

    Returns:
      :data:`DIGITS_TRAIN` or :data:`DIGITS_TEST` for ``"digits"``; for the photographs,
      :func:`photo_crop_count` at the data set's crop size (default downsampling, all photos).

    Raises:
      ArgumentError: naming ``name`` or ``split``.
    """
    if name not in DATASET_NAMES:
        raise ArgumentError("name", f"expected one of {DATASET_NAMES}, got {name!r}")
    split = _check_split(split)
    if name == "digits":
        return DIGITS_TRAIN if split == "train" else DIGITS_TEST
    return photo_crop_count(size=DATASETS[name][0], split=split)


# ----------------------------------------------------------------------------- synthetic Gaussians


class GaussianPatchData(NamedTuple):
    """Samples of independent Gaussian patches and the model they come from."""

    samples: jax.Array
    """Shape ``(n,) + image_shape``."""
    mean: jax.Array
    """``mu``, shape ``image_shape``."""
    patch_covs: jax.Array
    """``Sigma_k = U_k diag(lambda_k) U_k^T``, shape ``(M, n_k, n_k)`` in patchify order."""


def _random_orthogonal(rng: np.random.Generator, batch: int, dim: int) -> np.ndarray:
    """Haar-distributed orthogonal matrices ``(batch, dim, dim)``: QR of a Gaussian matrix,
    column signs fixed by ``diag(R)`` (Mezzadri 2007)."""
    q, r = np.linalg.qr(rng.standard_normal((batch, dim, dim)))
    return q * np.sign(np.diagonal(r, axis1=1, axis2=2))[:, None, :]


def gaussian_patch_data(
    key: jax.Array,
    *,
    n: int,
    image_shape: Any,
    patch_size: int,
    patch_variances: Any,
    mean: Any = None,
    basis: str = "random",
    dtype: Any = None,
) -> GaussianPatchData:
    """Gaussian images whose covariance is block-diagonal by ``p x p x C`` patch.

    Patch ``k`` is independent ``N(mu_k, Sigma_k)`` with ``Sigma_k = U_k diag(lambda_k) U_k^T``:

    - ``patch_variances`` of shape ``(M,)``: ``Sigma_k = v_k I_{n_k}`` (isotropic; ``basis`` is
      irrelevant);
    - shape ``(M, n_k)``: the spectrum ``lambda_k`` of each patch, in a Haar-random orthonormal
      basis ``U_k`` drawn from ``key`` (``basis="random"``) or the coordinate basis
      (``basis="identity"``). The mean variance of patch ``k`` is ``mean(lambda_k)``.

    Sampling: ``x_k = mu_k + U_k (sqrt(lambda_k) * z_k)``, ``z ~ N(0, I)``. The returned
    ``(mean, patch_covs)`` give the exact optimal denoiser
    ``gaussian_denoiser_patches(sched, data.mean, data.patch_covs, patch_size)``.

    Args:
      key: PRNG key.
      n: number of samples.
      image_shape: ``(H, W, C)`` or ``(H, W)``.
      patch_size: ``p``, tiling the image.
      patch_variances: ``(M,)`` or ``(M, n_k)``, non-negative, floating.
      mean: ``mu`` of ``image_shape`` (default zeros), floating.
      basis: ``"random"`` or ``"identity"``.
      dtype: floating dtype, one of :data:`FLOAT_DTYPES` (default: JAX's default float).

    Returns:
      :class:`GaussianPatchData` ``(samples (n,) + image_shape, mean, patch_covs (M, n_k, n_k))``.

    Raises:
      ArgumentError: naming ``n``, ``image_shape``, ``patch_size``, ``patch_variances``, ``mean``,
        ``basis`` or ``dtype`` (also for integer ``patch_variances`` or ``mean``).
    """
    dtype = _float_dtype(dtype)
    n = check_positive_int(n, name="n")
    layout = patch_layout(image_shape, patch_size)
    m, nk = layout.num_patches, layout.patch_dim
    shape = tuple(np.shape(patch_variances))
    if shape not in ((m,), (m, nk)):
        raise ArgumentError(
            "patch_variances",
            f"expected shape (M,) = ({m},) or (M, n_k) = ({m}, {nk}) for image_shape "
            f"{layout.image_shape} and patch_size {layout.patch_size}, got {shape}",
        )
    check_floating(patch_variances, name="patch_variances")
    check_variances(patch_variances, name="patch_variances")
    if basis not in ("random", "identity"):
        raise ArgumentError("basis", f"expected 'random' or 'identity', got {basis!r}")
    if mean is None:
        mean = np.zeros(layout.image_shape)
    elif tuple(np.shape(mean)) != layout.image_shape:
        raise ArgumentError("mean", f"expected shape image_shape = {layout.image_shape}, got {np.shape(mean)}")
    else:
        check_floating(mean, name="mean")
    mean = check_finite(mean, "mean")
    lam = np.asarray(patch_variances, np.float64)
    if lam.ndim == 1:
        lam = np.broadcast_to(lam[:, None], (m, nk))
    rng = _host_rng(key)
    if basis == "random" and len(shape) == 2:
        u = _random_orthogonal(rng, m, nk)
    else:
        u = np.broadcast_to(np.eye(nk), (m, nk, nk))
    z = rng.standard_normal((n, m, nk))
    noise = np.einsum("mij,bmj->bmi", u, np.sqrt(lam) * z).reshape(n, layout.size)  # patch order
    to_image = np.argsort(patch_permutation(layout.image_shape, layout.patch_size))
    samples = mean[None] + noise[:, to_image].reshape((n, *layout.image_shape))
    covs = np.einsum("mij,mj,mkj->mik", u, lam, u)
    return GaussianPatchData(jnp.asarray(samples, dtype), jnp.asarray(mean, dtype), jnp.asarray(covs, dtype))


class MixtureData(NamedTuple):
    """Samples of a Gaussian mixture with their component labels."""

    samples: jax.Array
    """Shape ``(n,) + sample_shape``."""
    labels: jax.Array
    """Component of each sample, int32 ``(n,)``."""


def gaussian_mixture_data(
    key: jax.Array, *, n: int, weights: Any, means: Any, covs: Any, dtype: Any = None
) -> MixtureData:
    """Samples of ``sum_k pi_k N(mu_k, Sigma_k)``: the data of :func:`~pifs_jax.denoisers.gaussian_mixture_denoiser`.

    ``label ~ Categorical(pi / sum pi)``, ``x = mu_label + U_label (sqrt(lambda_label) * z)`` with
    ``Sigma_k = U_k diag(lambda_k) U_k^T`` (PSD square root, so singular covariances are fine).

    Args:
      key: PRNG key.
      n: number of samples.
      weights: ``pi``, shape ``(K,)``, non-negative, not all zero (integers are promoted: the
        weights are normalised).
      means: shape ``(K,) + sample_shape``, floating.
      covs: shape ``(K, n, n)`` with ``n = prod(sample_shape)``, symmetric PSD, floating.
      dtype: floating dtype, one of :data:`FLOAT_DTYPES` (default: JAX's default float).

    Returns:
      :class:`MixtureData` ``(samples (n,) + sample_shape, labels (n,))``.

    Raises:
      ArgumentError: naming ``n``, ``weights``, ``means``, ``covs`` (also integer ``means`` or
        ``covs``) or ``dtype``.
    """
    dtype = _float_dtype(dtype)
    n = check_positive_int(n, name="n")
    if np.ndim(weights) != 1 or np.shape(weights)[0] < 1:
        raise ArgumentError("weights", f"expected a non-empty 1-D array of shape (K,), got shape {np.shape(weights)}")
    k = int(np.shape(weights)[0])
    if np.ndim(means) < 2 or np.shape(means)[0] != k:
        raise ArgumentError("means", f"expected shape (K,) + sample_shape with K = {k}, got {np.shape(means)}")
    sample_shape = tuple(np.shape(means)[1:])
    dim = int(np.prod(sample_shape))
    check_floating(means, name="means")
    check_floating(covs, name="covs")
    w = check_finite(weights, "weights")
    if np.any(w < 0) or not np.any(w > 0):
        raise ArgumentError("weights", f"must be >= 0 and not all zero, got {describe(w)}")
    mu = check_finite(means, "means").reshape(k, dim)
    check_covariances(covs, dim, name="covs", batch_shape=(k,))
    c = np.asarray(covs, np.float64)
    lam, u = np.linalg.eigh((c + np.swapaxes(c, 1, 2)) / 2)
    lam = np.maximum(lam, 0.0)  # PSD square root; round-off negatives clipped
    rng = _host_rng(key)
    labels = rng.choice(k, size=n, p=w / w.sum())
    z = rng.standard_normal((n, dim))
    samples = mu[labels] + np.einsum("bij,bj->bi", u[labels], np.sqrt(lam[labels]) * z)
    return MixtureData(jnp.asarray(samples.reshape((n, *sample_shape)), dtype), jnp.asarray(labels, jnp.int32))


# ----------------------------------------------------------------------------- patch statistics


class PatchStats(NamedTuple):
    """Second-order statistics of a data set in the PIFS patch partition (``M`` patches of ``n_k``)."""

    mean: jax.Array
    """Per-patch mean, ``(M, n_k)``."""
    covariance: jax.Array
    """Per-patch sample covariance ``Sigma_k = X_k^T X_k / (N - ddof)`` of the centred data, ``(M, n_k, n_k)``."""
    eigenvalues: jax.Array
    """Spectrum of each ``Sigma_k`` in decreasing order, ``(M, n_k)``."""
    leading_eigenvalue: jax.Array
    """``lambda_k = lambda_max(Sigma_k)``, ``(M,)``."""
    leading_eigenvector: jax.Array
    """Unit ``v_k`` with ``Sigma_k v_k = lambda_k v_k``, ``(M, n_k)``; sign: largest-magnitude entry positive."""
    variance: jax.Array
    """Mean variance ``tr(Sigma_k) / n_k``, ``(M,)``."""
    ranking: jax.Array
    """Patch indices in increasing order of ``variance`` (``ranking[0]`` the flattest patch), int ``(M,)``."""
    rank: jax.Array
    """Position of each patch in ``ranking`` (0 = lowest variance), int ``(M,)``."""


@functools.partial(jax.jit, static_argnames=("patch_size", "ddof"))
def _patch_stats(data: jax.Array, *, patch_size: int, ddof: int) -> PatchStats:
    patches = jax.vmap(lambda x: patchify(x, patch_size))(data)  # (N, M, n_k)
    mean = jnp.mean(patches, axis=0)
    centred = patches - mean
    cov = jnp.einsum("bmi,bmj->mij", centred, centred) / (data.shape[0] - ddof)
    eigvals, eigvecs = jnp.linalg.eigh(cov)
    eigvals, eigvecs = eigvals[:, ::-1], eigvecs[:, :, ::-1]
    lead = eigvecs[:, :, 0]
    biggest = jnp.take_along_axis(lead, jnp.argmax(jnp.abs(lead), axis=1)[:, None], axis=1)
    lead = lead * jnp.where(biggest < 0, -1.0, 1.0).astype(lead.dtype)
    variance = jnp.trace(cov, axis1=1, axis2=2) / cov.shape[1]
    ranking = jnp.argsort(variance)
    rank = jnp.argsort(ranking)
    return PatchStats(mean, cov, eigvals, eigvals[:, 0], lead, variance, ranking, rank)


def patch_stats(data: Any, *, patch_size: int, ddof: int = 1) -> PatchStats:
    """Per-patch covariance, spectrum, leading eigenpair and variance ranking of a data set.

    For data ``x^(1..N)`` cut into patches ``x_k`` (:func:`pifs_jax.patches.patchify`):
    ``mu_k = mean_b x_k^(b)``, ``Sigma_k = sum_b (x_k^(b) - mu_k)(x_k^(b) - mu_k)^T / (N - ddof)``
    (``np.cov`` of the patch coordinates for ``ddof = 1``), its eigenvalues in decreasing order,
    ``lambda_k`` and ``v_k`` the leading eigenpair, ``variance_k = tr(Sigma_k) / n_k``. Jitted;
    computed in the data's float dtype.

    Integer data are refused, not promoted: statistics of raw ``uint8`` pixels (0..255) are
    ``127.5^2`` times those of the same images in the package's ``[-1, 1]`` and would be compared
    with schedules and criteria on the wrong scale; convert first (``x / 127.5 - 1``).

    Args:
      data: shape ``(N, H, W, C)`` or ``(N, H, W)``, ``N > ddof``, floating.
      patch_size: ``p``, tiling ``H x W``.
      ddof: 1 (unbiased, default) or 0 (maximum likelihood).

    Returns:
      :class:`PatchStats`.

    Raises:
      ArgumentError: naming ``data`` (not floating, wrong rank, too few samples, non-finite) or
        ``patch_size``.
    """
    check_floating(data, name="data")
    data = jnp.asarray(data)
    if data.ndim not in (3, 4):
        raise ArgumentError("data", f"expected shape (N, H, W, C) or (N, H, W), got {data.shape}")
    if ddof not in (0, 1):
        raise ArgumentError("ddof", f"expected 0 or 1, got {ddof!r}")
    if data.shape[0] <= ddof:
        raise ArgumentError("data", f"need N > ddof = {ddof} samples for a covariance, got N = {data.shape[0]}")
    layout = patch_layout(data.shape[1:], patch_size)
    if is_concrete(data):
        check_finite(data, "data")
    return _patch_stats(data, patch_size=layout.patch_size, ddof=int(ddof))

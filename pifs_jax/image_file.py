"""A user's own images from a ``.npy`` file, checked against a model: :func:`load_image_file`.

The file holds one array of ``N`` images in the package's layout ``(N, H, W, C)`` or in
PyTorch's ``(N, C, H, W)`` (transposed on reading; when both read the same, the first wins),
in the models' input scale ``[-1, 1]`` (images in ``[0, 1]`` map with ``2 x - 1``, bytes
``0..255`` with ``x / 127.5 - 1``). ``pifs-jax analyze --data-file`` reads its Gaussian baseline
from such a file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pifs_jax.errors import ArgumentError

__all__ = ["MIN_IMAGES", "load_image_file"]

#: Fewest images a file may hold (patch covariances need two).
MIN_IMAGES = 2


def load_image_file(path: str | os.PathLike, image_shape: Sequence[int], *, argument: str = "path") -> np.ndarray:
    """The images of a ``.npy`` file as float32 ``(N, H, W, C)``, refused unless they fit ``image_shape``.

    Args:
      path: the ``.npy`` file (``numpy.save``; no pickled objects).
      image_shape: ``(H, W, C)`` the images must have.
      argument: the argument named in errors.

    Returns:
      The images, float32, ``(N, H, W, C)``.

    Raises:
      ArgumentError: naming ``argument`` and the file: missing or unreadable, not a ``.npy``
        array, not numeric, not 4-D of ``image_shape`` in either layout, fewer than
        :data:`MIN_IMAGES` images, values that are not finite or lie outside ``[-1, 1]``.
    """
    file = Path(path)
    height, width, channels = (int(s) for s in image_shape)
    try:
        array = np.load(file, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise ArgumentError(argument, f"file not found: {str(file)!r}") from None
    except IsADirectoryError:
        raise ArgumentError(argument, f"expected a .npy file, got the folder {str(file)!r}") from None
    except OSError as err:
        raise ArgumentError(argument, f"cannot read {str(file)!r}: {err.strerror or err}") from None
    except ValueError as err:
        raise ArgumentError(argument, f"{str(file)!r} is not a .npy array file ({err})") from None
    if not isinstance(array, np.ndarray):  # an .npz archive
        raise ArgumentError(argument, f"{str(file)!r} is an .npz archive; expected a .npy file holding one array")
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ArgumentError(argument, f"expected numbers in {str(file)!r}, got an array of dtype {array.dtype}")
    nhwc, nchw = (height, width, channels), (channels, height, width)
    if array.ndim != 4 or tuple(array.shape[1:]) not in (nhwc, nchw):
        raise ArgumentError(
            argument,
            f"expected images of the model's shape, (N, H, W, C) = (N, {height}, {width}, {channels}) or "
            f"(N, C, H, W) = (N, {channels}, {height}, {width}), in {str(file)!r}; got shape {tuple(array.shape)}",
        )
    if array.shape[0] < MIN_IMAGES:
        raise ArgumentError(argument, f"expected at least {MIN_IMAGES} images in {str(file)!r}, got {array.shape[0]}")
    images = np.asarray(array, np.float32)
    if tuple(images.shape[1:]) != nhwc:
        images = np.ascontiguousarray(images.transpose(0, 2, 3, 1))
    if not np.isfinite(images).all():
        raise ArgumentError(argument, f"{str(file)!r} holds NaN or infinite values")
    low, high = float(images.min()), float(images.max())
    if low < -1 or high > 1:
        raise ArgumentError(
            argument,
            f"expected values in [-1, 1] (the models' input scale) in {str(file)!r}, got [{low:g}, {high:g}]; "
            "images in [0, 1] map with 2 x - 1, bytes 0..255 with x / 127.5 - 1",
        )
    return images

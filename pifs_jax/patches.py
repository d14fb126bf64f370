"""Partition of an image into non-overlapping ``p x p x C`` patches (docs/theory.md section 6).

An image of shape ``(H, W, C)`` is cut into ``M = (H/p)(W/p)`` patches, numbered in row-major
order over the patch grid (patch ``k`` sits at patch-row ``k // (W/p)``, patch-column
``k % (W/p)``). Inside a patch the ``n_k = p^2 C`` coordinates are ordered row-major over
``(row, column, channel)``, i.e. exactly like the patch's own ``(p, p, C)`` array flattened.
Patches are the range/domain blocks of the PIFS picture; the step Jacobian splits into
``M x M`` blocks ``[J]_{kj}`` of shape ``(n_k, n_k)`` in these coordinates.

A 2-D image ``(H, W)`` is treated as ``(H, W, 1)`` (``n_k = p^2``).

All functions are jittable (shapes and ``patch_size`` are static) and validate at the boundary:
a patch size that does not tile the image raises ``ValueError`` naming ``patch_size`` and the
image shape.

:func:`patchify` and :func:`unpatchify` are pure reshapes: they accept any dtype (integer,
boolean or floating) and return the input's dtype unchanged, with every value moved, never
converted. Whether integer pixels are acceptable is decided by the functions that compute with
the patches (e.g. :func:`pifs_jax.data.patch_stats` refuses them).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from pifs_jax.errors import ArgumentError

__all__ = ["PatchLayout", "patch_layout", "patch_permutation", "patchify", "unpatchify"]


class PatchLayout(NamedTuple):
    """How an image of shape ``image_shape`` splits into ``p x p x C`` patches."""

    image_shape: tuple
    """The image shape as given, ``(H, W, C)`` or ``(H, W)``."""
    patch_size: int
    """``p``."""
    rows: int
    """Patches per column of the patch grid, ``H / p``."""
    cols: int
    """Patches per row of the patch grid, ``W / p``."""
    channels: int
    """``C`` (1 for a 2-D image)."""

    @property
    def num_patches(self) -> int:
        """``M = (H/p)(W/p)``."""
        return self.rows * self.cols

    @property
    def patch_dim(self) -> int:
        """``n_k = p^2 C``."""
        return self.patch_size * self.patch_size * self.channels

    @property
    def size(self) -> int:
        """``n = H W C = M n_k``."""
        return self.num_patches * self.patch_dim


def patch_layout(image_shape: Any, patch_size: Any) -> PatchLayout:
    """Validate ``(image_shape, patch_size)`` and describe the partition.

    Args:
      image_shape: ``(H, W, C)`` or ``(H, W)`` (integers).
      patch_size: ``p``, a positive integer dividing both ``H`` and ``W``.

    Returns:
      :class:`PatchLayout`.

    Raises:
      ArgumentError: naming ``image_shape`` if it is not 2-D/3-D positive integers, or
        ``patch_size`` (with the image shape) if ``p`` is not a positive integer that tiles the
        image.
    """
    try:
        shape = tuple(int(s) for s in image_shape)
    except TypeError as err:
        raise ArgumentError("image_shape", f"expected (H, W, C) or (H, W), got {image_shape!r}") from err
    if len(shape) not in (2, 3) or any(s < 1 for s in shape):
        raise ArgumentError("image_shape", f"expected (H, W, C) or (H, W) with positive sizes, got {shape}")
    if isinstance(patch_size, bool) or not isinstance(patch_size, (int, np.integer)) or patch_size < 1:
        raise ArgumentError("patch_size", f"expected a positive integer, got {patch_size!r}")
    p = int(patch_size)
    height, width = shape[0], shape[1]
    if height % p or width % p:
        raise ArgumentError(
            "patch_size",
            f"{p} x {p} patches do not tile an image of shape {shape} "
            f"(H = {height} and W = {width} must both be multiples of patch_size)",
        )
    channels = shape[2] if len(shape) == 3 else 1
    return PatchLayout(shape, p, height // p, width // p, channels)


def patchify(x: jax.Array, patch_size: int) -> jax.Array:
    """Cut an image into its patches: ``(H, W, C) -> (M, p*p*C)``.

    Row ``k`` is patch ``k`` (row-major over the patch grid) flattened row-major over
    ``(row, column, channel)``. Leading batch axes are not supported; use ``jax.vmap``.

    Args:
      x: image of shape ``(H, W, C)`` or ``(H, W)``.
      patch_size: ``p``, dividing ``H`` and ``W``.

    Returns:
      array of shape ``(M, n_k)``, ``M = HW/p^2``, ``n_k = p^2 C``, of ``x``'s dtype (any dtype:
      a pure reshape).

    Raises:
      ArgumentError: naming ``image_shape`` (``x`` is not 2-D or 3-D) or ``patch_size`` (not a
        positive integer that tiles the image), as :func:`patch_layout`.
    """
    x = jnp.asarray(x)
    layout = patch_layout(x.shape, patch_size)
    p = layout.patch_size
    blocks = x.reshape(layout.rows, p, layout.cols, p, layout.channels)
    return blocks.transpose(0, 2, 1, 3, 4).reshape(layout.num_patches, layout.patch_dim)


def unpatchify(patches: jax.Array, image_shape: Any, patch_size: int) -> jax.Array:
    """Inverse of :func:`patchify`: ``(M, p*p*C) -> image_shape``, keeping ``patches``' dtype (any).

    Args:
      patches: shape ``(M, n_k)``, rows in :func:`patchify` order.
      image_shape: ``(H, W, C)`` or ``(H, W)``.
      patch_size: ``p``, dividing ``H`` and ``W``.

    Returns:
      The image, shape ``image_shape``.

    Raises:
      ArgumentError: naming ``patches`` if its shape is not ``(M, n_k)`` for this layout, or
        ``image_shape`` / ``patch_size`` as :func:`patch_layout`.
    """
    patches = jnp.asarray(patches)
    layout = patch_layout(image_shape, patch_size)
    expected = (layout.num_patches, layout.patch_dim)
    if patches.shape != expected:
        raise ArgumentError(
            "patches",
            f"expected shape {expected} for image_shape {layout.image_shape} and "
            f"patch_size {layout.patch_size}, got {patches.shape}",
        )
    p = layout.patch_size
    blocks = patches.reshape(layout.rows, layout.cols, p, p, layout.channels)
    return blocks.transpose(0, 2, 1, 3, 4).reshape(layout.image_shape)


def patch_permutation(image_shape: Any, patch_size: int) -> np.ndarray:
    """Index array reordering a flattened image into patch-contiguous coordinates.

    ``x.reshape(-1)[perm] == patchify(x, p).reshape(-1)``: entry ``k n_k + i`` of the permuted
    vector is coordinate ``i`` of patch ``k``. For a Jacobian ``J`` of the flattened map,
    ``J[perm][:, perm]`` has the patch blocks ``[J]_{kj}`` as contiguous ``n_k x n_k`` tiles.
    The inverse permutation is ``np.argsort(perm)``.

    Args:
      image_shape: ``(H, W, C)`` or ``(H, W)``.
      patch_size: ``p``, dividing ``H`` and ``W``.

    Returns:
      ``numpy`` int array of shape ``(n,)`` (static, usable inside ``jit``).

    Raises:
      ArgumentError: naming ``image_shape`` or ``patch_size``, as :func:`patch_layout`.
    """
    layout = patch_layout(image_shape, patch_size)
    index = np.arange(layout.size).reshape(layout.image_shape)
    p = layout.patch_size
    blocks = index.reshape(layout.rows, p, layout.cols, p, layout.channels)
    return blocks.transpose(0, 2, 1, 3, 4).reshape(-1)

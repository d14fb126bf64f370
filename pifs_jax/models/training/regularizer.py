"""The PIFS regulariser: the cross-patch blocks of the denoiser's Jacobian (docs/theory.md section 7).

``R = E_{x_t, t} [ sum_k sum_{j != k} ||[J_x epshat]_{kj}||_F^2 ] / n`` (patches ``k, j`` of
:mod:`pifs_jax.patches`; the cross-patch coupling of the step Jacobian
``J Phi_t = a_t I + b_t J_x epshat``). Estimated matrix-free by :func:`cross_block_penalty`: a
Rademacher probe ``v`` supported on patch ``j``, one JVP ``u = J v``, and ``u`` restricted to the
patches ``k != j``:

``E_v ||P_{-j} J P_j v||^2 = tr(P_j J^T P_{-j} J P_j) = sum_{k != j} ||J_{kj}||_F^2``,

unbiased for every ``j``; summing ``M / P`` times over ``P`` patches drawn without replacement is
unbiased for the whole cross-block sum (``P = M``: every patch, only the signs are random).
:func:`cross_block_frobenius` is the exact value for one sample.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from pifs_jax.errors import ArgumentError
from pifs_jax.jacobians import patch_blocks
from pifs_jax.patches import patch_layout

__all__ = ["cross_block_frobenius", "cross_block_penalty"]


def _patch_index(layout) -> np.ndarray:
    """Patch number of each pixel, shape ``(H, W)`` (row-major over the patch grid)."""
    p = layout.patch_size
    rows = np.arange(layout.image_shape[0]) // p
    cols = np.arange(layout.image_shape[1]) // p
    return rows[:, None] * layout.cols + cols[None, :]


def cross_block_penalty(
    fn: Callable[[jax.Array], jax.Array], x: jax.Array, key: jax.Array, *, patch_size: int, probes: int = 1
) -> jax.Array:
    """Unbiased estimate of ``sum_k sum_{j != k} ||[J fn(x_b)]_{kj}||_F^2`` for every sample ``b``.

    For each sample, ``P = probes`` distinct patches ``j`` are drawn uniformly without
    replacement; for each, a Rademacher probe ``v`` on patch ``j``'s coordinates, one JVP
    ``u = J v``, and the squared norm of ``u`` outside patch ``j``:

    ``estimate = (M / P) sum_{j drawn} ||P_{-j} J P_j v_j||^2``,
    ``E = sum_j sum_{k != j} ||J_{kj}||_F^2`` (``E_v ||A v||^2 = ||A||_F^2`` for Rademacher ``v``).

    Its variance (for ``P = M``) is ``sum_j 2 sum_{a != c} (A_j)_{ac}^2``,
    ``A_j = sum_{k != j} J_{kj}^T J_{kj}``.

    Args:
      fn: batched map ``(B, H, W, C) -> (B, H, W, C)`` without coupling between batch entries
        (its Jacobian is block diagonal over the batch), e.g. ``lambda x: model(x, t)``.
      x: inputs, shape ``(B, H, W, C)``.
      key: PRNG key.
      patch_size: ``p``, dividing ``H`` and ``W``.
      probes: ``P``, ``1 <= P <= M``: JVPs per step (cost) against variance.

    Returns:
      estimates, shape ``(B,)``. Differentiable (``jax.grad`` goes through the JVPs).
    """
    x = jnp.asarray(x)
    if x.ndim != 4:
        raise ArgumentError("x", f"expected a batch of images (B, H, W, C), got shape {x.shape}")
    layout = patch_layout(x.shape[1:], patch_size)
    m = layout.num_patches
    if isinstance(probes, bool) or not isinstance(probes, int) or not 1 <= probes <= m:
        raise ArgumentError("probes", f"expected an integer in 1..{m} (the number of patches), got {probes!r}")
    batch = x.shape[0]
    key_patch, key_sign = jax.random.split(key)
    chosen = jax.vmap(lambda k: jax.random.permutation(k, m)[:probes])(jax.random.split(key_patch, batch))  # (B, P)
    pid = jnp.asarray(_patch_index(layout))
    inside = (pid[None, None] == chosen.T[:, :, None, None])[..., None].astype(x.dtype)  # (P, B, H, W, 1)
    signs = jax.random.rademacher(key_sign, (probes, *x.shape), dtype=x.dtype)
    tangents = signs * inside

    def outside_norm2(v, mask):
        u = jax.jvp(fn, (x,), (v,))[1]
        return jnp.sum(((1 - mask) * u) ** 2, axis=(1, 2, 3))

    per_probe = jax.vmap(outside_norm2)(tangents, inside)  # (P, B)
    return (m / probes) * jnp.sum(per_probe, axis=0)


def cross_block_frobenius(fn: Callable[[jax.Array], jax.Array], x: jax.Array, *, patch_size: int) -> jax.Array:
    """Exact ``sum_k sum_{j != k} ||[J fn(x)]_{kj}||_F^2`` for one sample ``x`` (``jax.jacfwd``).

    ``fn`` maps one image ``(H, W, C)`` to one image; cost ``n`` JVPs and ``n^2`` memory. The
    reference for :func:`cross_block_penalty` (tests, diagnostics).

    Args:
      fn: the map of one image ``(H, W, C)`` to an image of the same size.
      x: the image ``(H, W, C)``.
      patch_size: ``p``, tiling the image.

    Returns:
      the sum of the squared Frobenius norms of the off-diagonal patch blocks, a scalar ``jax.Array``.

    Raises:
      ArgumentError: naming ``image_shape`` or ``patch_size`` when ``p`` does not tile ``x``
        (:func:`pifs_jax.jacobians.patch_blocks`).
    """
    x = jnp.asarray(x)
    n = x.size
    J = jax.jacfwd(lambda flat: fn(flat.reshape(x.shape)).reshape(-1))(x.reshape(-1)).reshape(n, n)
    blocks = patch_blocks(J, x.shape, patch_size)
    norms2 = jnp.sum(blocks**2, axis=(-2, -1))
    return jnp.sum(norms2) - jnp.trace(norms2)

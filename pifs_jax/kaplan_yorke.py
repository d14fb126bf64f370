"""Kaplan-Yorke (Lyapunov) dimension from a Lyapunov spectrum.

General rule (docs/theory.md section 5): sort the exponents in descending order, let ``j`` be the
largest index with ``S_j = sum_{i<=j} Lambda_i >= 0``; then ``D = j + S_j / |Lambda_{j+1}|``,
``D = 0`` if ``Lambda_1 < 0`` and ``D = n`` if every partial sum is non-negative.

With multiplicities ``n_k`` (a patch of ``n_k`` coordinates sharing one exponent) the rule is
applied to the expanded spectrum without expanding it: if the first block whose running sum
turns negative is block ``k``, then ``D = sum_{l<k} n_l + S_{k-1} / |Lambda_k|``, which is what the
element-wise rule gives inside that block.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from pifs_jax._validation import describe, is_concrete
from pifs_jax.errors import ArgumentError

__all__ = ["kaplan_yorke_dimension", "kaplan_yorke_patch_form"]


def _sorted_blocks(exponents: Any, multiplicities: Any | None):
    exponents = jnp.asarray(exponents)
    if exponents.ndim != 1 or exponents.shape[0] == 0:
        raise ArgumentError("exponents", f"expected a non-empty 1-D array, got shape {exponents.shape}")
    if not jnp.issubdtype(exponents.dtype, jnp.floating):
        exponents = exponents.astype(jnp.result_type(float))
    if multiplicities is None:
        sizes = jnp.ones_like(exponents)
    else:
        sizes = jnp.asarray(multiplicities, dtype=exponents.dtype)
        if sizes.shape != exponents.shape:
            raise ArgumentError(
                "multiplicities", f"expected shape {exponents.shape} (one per exponent), got {sizes.shape}"
            )
        if is_concrete(sizes) and np.any(np.asarray(sizes) <= 0):
            raise ArgumentError("multiplicities", f"must be > 0, got {describe(sizes)}")
    if is_concrete(exponents) and not np.all(np.isfinite(np.asarray(exponents))):
        raise ArgumentError("exponents", f"must be finite, got {describe(exponents)}")
    order = jnp.argsort(-exponents)
    return exponents[order], sizes[order]


def kaplan_yorke_dimension(exponents: Any, multiplicities: Any | None = None) -> jax.Array:
    """Kaplan-Yorke dimension of a Lyapunov spectrum, by the general rule.

    ``D = j + S_j / |Lambda_{j+1}|`` with the exponents sorted descending and ``j`` the largest
    index whose partial sum ``S_j`` is non-negative; ``0`` if the largest exponent is negative,
    ``n = sum(multiplicities)`` if no partial sum is negative. The result does not depend on
    whether exponents are per step or per chain (a common factor cancels).

    Args:
      exponents: shape ``(m,)``, any order.
      multiplicities: optional shape ``(m,)``, how many coordinates share each exponent
        (patch sizes ``n_k``); default 1 each.

    Returns:
      Scalar dimension. Jittable and differentiable (piecewise).

    Raises:
      ArgumentError: naming ``exponents`` (not a non-empty 1-D array, or concrete values that
        are not finite) or ``multiplicities`` (another shape, or a concrete value ``<= 0``).

    Example:
      >>> float(kaplan_yorke_dimension(jnp.array([1.0, -3.0])))
      1.3333333...
    """
    lam, sizes = _sorted_blocks(exponents, multiplicities)
    block_sums = jnp.cumsum(sizes * lam)  # S_k at the end of each block
    negative = block_sums < 0
    k = jnp.argmax(negative)  # first block whose running sum turns negative
    sum_before = jnp.where(k > 0, block_sums[jnp.maximum(k - 1, 0)], 0.0)
    count_before = jnp.where(k > 0, jnp.cumsum(sizes)[jnp.maximum(k - 1, 0)], 0.0)
    safe_denominator = jnp.where(negative.any(), jnp.abs(lam[k]), 1.0)
    return jnp.where(negative.any(), count_before + sum_before / safe_denominator, jnp.sum(sizes))


def kaplan_yorke_patch_form(exponents: Any, multiplicities: Any) -> jax.Array:
    """The paper's patch form, ``d_KY = N+ + sum_{k: Lambda_k > 0} n_k Lambda_k / |Lambda^-_{k*}|``.

    ``N+`` counts the coordinates of expanding patches, ``k*`` is the least-contracting patch.
    Equal to :func:`kaplan_yorke_dimension` when the fraction is below ``n_{k*}`` (the crossing
    falls inside the least-contracting patch); kept as a cross-check, not as the definition.

    Args:
      exponents: ``Lambda_k``, shape ``(m,)``, any order.
      multiplicities: ``n_k``, shape ``(m,)``, the coordinates of each patch.

    Returns:
      Scalar ``d_KY``.

    Raises:
      ArgumentError: naming ``exponents`` (not a non-empty 1-D array, or concrete values that
        are not finite) or ``multiplicities`` (another shape, or a concrete value ``<= 0``).
    """
    lam, sizes = _sorted_blocks(exponents, multiplicities)
    expanding = lam > 0
    n_plus = jnp.sum(jnp.where(expanding, sizes, 0.0))
    numerator = jnp.sum(jnp.where(expanding, sizes * lam, 0.0))
    least_contracting = jnp.max(jnp.where(expanding, -jnp.inf, lam))
    return n_plus + numerator / jnp.abs(least_contracting)

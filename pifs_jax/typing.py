"""Named type aliases of the package's public signatures.

- ``EpsFn``: a denoiser, ``eps_fn(x, t) -> array of x's shape`` for one sample ``x`` and an integer
  timestep ``t`` (an int32 scalar, traced under ``jax.jit``) of this package's convention
  (``alpha_bar[t]``).
- ``ArrayLike``: what ``jnp.asarray`` accepts (``jax.typing.ArrayLike``: JAX and NumPy arrays,
  NumPy scalars, Python numbers); the type of array inputs that are converted on entry.
- ``GridLike``: what :func:`pifs_jax.grids.as_grid` accepts as a timestep grid: ``None`` (every
  step ``0..T``), or increasing integer timesteps ``0 = tau_0 < ... < tau_N`` as an array or a
  sequence (integer-valued floats are converted exactly).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeAlias

import jax
import jax.typing

__all__ = ["ArrayLike", "EpsFn", "GridLike"]

#: A denoiser, ``eps_fn(x, t) -> array of x's shape``.
EpsFn: TypeAlias = Callable[[jax.Array, jax.Array], jax.Array]
#: What ``jnp.asarray`` accepts (``jax.typing.ArrayLike``).
ArrayLike: TypeAlias = jax.typing.ArrayLike
#: A timestep grid, ``None`` (every step) or increasing integer timesteps.
GridLike: TypeAlias = jax.typing.ArrayLike | Sequence[float] | None

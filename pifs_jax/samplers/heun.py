"""EDM's deterministic second-order sampler (Karras et al. 2022, algorithm 1), in this package's variables.

EDM integrates ``dx~/dsigma = (x~ - D(x~; sigma)) / sigma = epshat`` in the scaled state
``x~ = x / alpha`` with ``sigma = sqrt(1 - alpha_bar) / sqrt(alpha_bar)``. Its Euler step from
``sigma_t`` to ``sigma_s``, mapped back by ``x_s = alpha_s x~_s``, is exactly the DDIM step
``a_t x_t + b_t epshat`` (``alpha_s (sigma_s - sigma_t) = b_t``). Heun's step corrects it with the
slope at the predicted point:

``x' = a_t x_t + b_t epshat(x_t, t)``,  ``x_s = a_t x_t + b_t (epshat(x_t, t) + epshat(x', s)) / 2``,

except on the last step onto ``sigma = 0`` (EDM's ``sigma_{i+1} = 0``), which is the Euler step.
The state is the image; a chain of ``N`` steps costs ``2N - 1`` denoiser evaluations.
Checked against an independent NumPy transcription of EDM's algorithm 1 in sigma space
(tests/test_samplers.py).
"""

from __future__ import annotations

import jax

from pifs_jax.samplers.base import Sampler, StepTables, table_row
from pifs_jax.typing import EpsFn

__all__ = ["Heun"]


class Heun(Sampler):
    """EDM's Heun sampler (second order, 2 evaluations per step, 1 on the last)."""

    def step(
        self, eps_fn: EpsFn, tables: StepTables, state: jax.Array, i: jax.Array, key: jax.Array | None
    ) -> jax.Array:
        row = table_row(tables, i)
        x = state
        a, b = row.a.astype(x.dtype), row.b.astype(x.dtype)
        eps = eps_fn(x, row.t)
        euler = a * x + b * eps

        def corrected(_):
            return a * x + b * ((eps + eps_fn(euler, row.s)) / 2)

        return jax.lax.cond(row.s == 0, lambda _: euler, corrected, None)

    def nfe(self, num_steps: int) -> int:
        return max(2 * int(num_steps) - 1, 0)

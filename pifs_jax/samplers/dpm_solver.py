"""DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", algorithm 2): the multistep solver in data prediction.

With ``lambda = log(alpha / sigma)`` (half the logSNR), the data prediction
``D_t = (x_t - sigma_t epshat(x_t, t)) / alpha_t`` and ``h = lambda_s - lambda_t``, one step
``t = tau_i -> s = tau_{i-1}`` is

``x_s = (sigma_s / sigma_t) x_t + alpha_s (1 - exp(-h)) Dbar``,

with ``Dbar = D_t`` (first order: the DDIM step) on the first step and on the last (the step onto
``sigma = 0``, where ``x_0 = D_t``), and otherwise ``Dbar = (1 + 1/(2r)) D_t - 1/(2r) D_prev``,
``r = h_prev / h``, where ``D_prev`` and ``h_prev`` belong to the previous step (diffusers'
``solver_type="midpoint"``, its default; its ``lower_order_final`` and ``final_sigmas_type="zero"``
make the last step first order, as here). The state is ``(x, D_prev)``: the chain's Jacobian
``d x_0 / d x_T`` includes the history through its dependence on ``x_T``. One denoiser evaluation
per step. ``h``, ``sigma_s / sigma_t`` and ``1 - exp(-h) = -expm1(-h)`` come from
:class:`pifs_jax.samplers.StepTables` (cancellation-free).

Checked against diffusers' ``DPMSolverMultistepScheduler`` with the same custom timesteps (ours
``t`` = diffusers' ``t + 1``) in tests/test_samplers_diffusers.py.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from pifs_jax.samplers.base import Sampler, StepTables, table_row
from pifs_jax.typing import EpsFn

__all__ = ["DPMSolverPP2M", "DPMState"]


class DPMState(NamedTuple):
    """The multistep state: the image ``x`` and the previous step's data prediction ``d_prev``."""

    x: jax.Array
    """The image."""
    d_prev: jax.Array
    """The previous step's data prediction ``D`` (zeros before the first step)."""


class DPMSolverPP2M(Sampler):
    """DPM-Solver++(2M): second-order multistep, first order on the first and the last step."""

    def init(self, eps_fn: EpsFn, tables: StepTables, x_T: jax.Array) -> DPMState:
        return DPMState(x_T, jnp.zeros_like(x_T))

    def step(self, eps_fn: EpsFn, tables: StepTables, state: DPMState, i: jax.Array, key: jax.Array | None) -> DPMState:
        x, d_prev = state
        num_steps = tables.t.shape[0]
        row = table_row(tables, i)
        dtype = x.dtype
        eps = eps_fn(x, row.t)
        alpha_t = jnp.exp(row.log_alpha_bar_t / 2).astype(dtype)
        d = (x - row.sigma_t.astype(dtype) * eps) / alpha_t
        # second order except on the first step (no history) and the last (onto sigma = 0)
        second = (i < num_steps) & (i > 1)
        h_prev = tables.h[jnp.minimum(i, num_steps - 1)]  # the step tau_{i+1} -> tau_i
        ratio = jnp.where(second, row.h, 1.0) / jnp.where(second, 2.0 * h_prev, 1.0)  # 1 / (2 r)
        d_bar = d + jnp.where(second, ratio, 0.0).astype(dtype) * (d - d_prev)
        alpha_s = jnp.exp(row.log_alpha_bar_s / 2)
        x_next = row.sigma_ratio.astype(dtype) * x + (alpha_s * -jnp.expm1(-row.h)).astype(dtype) * d_bar
        # onto sigma = 0, x_0 = D_t exactly: in float32 the tables' q can round a few ulps below 1, leaving
        # sigma_ratio = sqrt(1 - q) ~ 4e-4 and a finite h instead of 0 and inf
        x_next = jnp.where(row.sigma_s == 0, d_bar, x_next)
        return DPMState(x_next, d)

    def output(self, state: DPMState) -> jax.Array:
        return state.x

    def embed(self, state: DPMState, x: jax.Array) -> DPMState:
        return state._replace(x=x)

    def nfe(self, num_steps: int) -> int:
        return int(num_steps)

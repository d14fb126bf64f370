"""Samplers: one protocol, several solvers, one chain (docs/guides/samplers.md).

- :class:`Sampler`: the protocol (``tables``, ``init``, ``step``, ``output``, ``embed``, ``nfe``).
- :class:`DDIM` (``eta`` in ``[0, 1]``), :class:`DPMSolverPP2M`, :class:`Heun`.
- :func:`sample_chain` (one sample), :func:`sample_batch` (``vmap``), :func:`flat_chain` (the chain on
  flat vectors, for the Jacobians and Lyapunov spectra).
"""

from pifs_jax.samplers.base import (
    Sampler,
    StepTables,
    check_denoiser,
    check_sampler,
    continuous_step_tables,
    step_tables,
    table_row,
    tables_from_coefficients,
)
from pifs_jax.samplers.chain import (
    FlatChain,
    chain_from_tables,
    flat_chain,
    locate_nonfinite,
    sample_batch,
    sample_chain,
)
from pifs_jax.samplers.ddim import DDIM, ChainSteps, chain_steps, ddim_step, ddim_tables, ddim_tables_from
from pifs_jax.samplers.dpm_solver import DPMSolverPP2M, DPMState
from pifs_jax.samplers.heun import Heun
from pifs_jax.samplers.names import SAMPLER_NAMES, named_sampler, sampler_label, sampler_name

__all__ = [
    "DDIM",
    "SAMPLER_NAMES",
    "ChainSteps",
    "DPMSolverPP2M",
    "DPMState",
    "FlatChain",
    "Heun",
    "Sampler",
    "StepTables",
    "chain_from_tables",
    "chain_steps",
    "check_denoiser",
    "check_sampler",
    "continuous_step_tables",
    "ddim_step",
    "ddim_tables",
    "ddim_tables_from",
    "flat_chain",
    "locate_nonfinite",
    "named_sampler",
    "sample_batch",
    "sample_chain",
    "sampler_label",
    "sampler_name",
    "step_tables",
    "table_row",
    "tables_from_coefficients",
]

"""Sampling grids designed for a model, and the grids the field uses."""

from pifs_jax.grid_design.fixed import FIXED_GRIDS, fixed_grid

__all__ = ["FIXED_GRIDS", "fixed_grid"]

"""Sampling grids designed for a model, and the grids the field uses (docs/guides/sampling-grids.md)."""

from pifs_jax.grid_design.ays import AYSResult, align_your_steps
from pifs_jax.grid_design.correction import (
    CorrectedDenoiser,
    CorrectionResult,
    StepCorrections,
    corrected_denoiser,
    correction_loss,
    fit_step_corrections,
    plain_corrections,
)
from pifs_jax.grid_design.design import DESIGN_METHODS, DesignedGrid, design_grid
from pifs_jax.grid_design.evaluation import (
    PairedGain,
    grid_errors,
    mean_grid_error,
    paired_gain,
    reference_solution,
    run_grid,
    self_convergence,
    trimmed_mean,
)
from pifs_jax.grid_design.fixed import FIXED_GRIDS, fixed_grid
from pifs_jax.grid_design.geometric import GeometryMeasurement, geometric_grid, measure_geometry
from pifs_jax.grid_design.gradient import GradientResult, gradient_grid
from pifs_jax.grid_design.refined import RefinedResult, refined_grid
from pifs_jax.grid_design.search import SearchResult, coordinate_search, gits_grid

__all__ = [
    "DESIGN_METHODS",
    "FIXED_GRIDS",
    "AYSResult",
    "CorrectedDenoiser",
    "CorrectionResult",
    "DesignedGrid",
    "GeometryMeasurement",
    "GradientResult",
    "PairedGain",
    "RefinedResult",
    "SearchResult",
    "StepCorrections",
    "align_your_steps",
    "coordinate_search",
    "corrected_denoiser",
    "correction_loss",
    "design_grid",
    "fit_step_corrections",
    "fixed_grid",
    "geometric_grid",
    "gits_grid",
    "gradient_grid",
    "grid_errors",
    "mean_grid_error",
    "measure_geometry",
    "paired_gain",
    "plain_corrections",
    "reference_solution",
    "refined_grid",
    "run_grid",
    "self_convergence",
    "trimmed_mean",
]

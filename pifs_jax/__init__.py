"""pifs_jax: denoising diffusion as Partitioned Iterated Function Systems, in JAX.

Public names are re-exported flat: ``pj.cosine``, ``pj.contraction_threshold``, ...
"""

from pifs_jax.schedules import (
    SCHEDULE_NAMES,
    Schedule,
    cosine,
    from_alpha_bar,
    from_alphas_cumprod,
    from_betas,
    from_edm_sigmas,
    from_log_alpha_bar,
    from_log_snr,
    karras,
    log_snr_decrements,
    linear,
    logsnr_cosine,
    named_schedule,
    resolution_shift,
    scaled_linear,
    shift_log_snr,
    sigmoid,
    zero_terminal_snr,
)
from pifs_jax.grids import (
    AYS_SD15,
    AYS_SDXL,
    TIMESTEP_SPACINGS,
    align_your_steps_grid,
    diffusers_grid,
    diffusers_timesteps,
    full_grid,
    grid_from_diffusers_timesteps,
    uniform_grid,
)
from pifs_jax.geometry import (
    ContractionSummary,
    StepCoefficients,
    step_gaps,
    analytic_kaplan_yorke,
    contraction_summary,
    contraction_threshold,
    dimension_growth,
    expansion_factor,
    expansion_threshold,
    information_gain,
    log_expansion_factor,
    lyapunov_exponents,
    moran_function,
    moran_threshold,
    step_coefficients,
)
from pifs_jax.kaplan_yorke import kaplan_yorke_dimension, kaplan_yorke_patch_form
from pifs_jax.learnable import LearnableSchedule, logsnr_spline, monotone_network
from pifs_jax.ddim import ChainSteps, chain_steps, check_denoiser, ddim_chain, ddim_sample, ddim_step
from pifs_jax.errors import ArgumentError, NonFiniteError
from pifs_jax.results import write_result_json
from pifs_jax.interop import (
    DIFFUSERS_BETA_SCHEDULES,
    EXAMPLE_CONFIGS,
    diffusers_config_grid,
    example_config_path,
    from_diffusers_config,
    load_config,
    save_diffusers_config,
    to_diffusers_config,
)
from pifs_jax.reproduce import run_reproduction
from pifs_jax.patches import PatchLayout, patch_layout, patch_permutation, patchify, unpatchify
from pifs_jax.denoisers import (
    Attention,
    EmpiricalEps,
    empirical_attention,
    empirical_denoiser,
    gaussian_denoiser,
    gaussian_denoiser_eig,
    gaussian_denoiser_patches,
    gaussian_mixture_denoiser,
)
from pifs_jax.jacobians import (
    BlockNorms,
    block_norms,
    block_norms_matrix_free,
    chain_jacobian,
    ddim_step_jacobian,
    forward_jacobian,
    leading_eigenvectors,
    patch_blocks,
    step_jacobian,
    step_jvp,
    step_vjp,
    summarize_block_norms,
    suppression_field,
)

from pifs_jax.lyapunov import CHAIN_METHODS, Spectrum, chain_lyapunov_spectra, chain_lyapunov_spectrum, lyapunov_spectrum
from pifs_jax.sharding import batch_mesh, initialize_processes, shard_batch, sharded_ddim_sample
from pifs_jax.analysis import (
    ChainAnalysis,
    ClaimResult,
    analyze_chain,
    evaluate_claims,
    module_attention_fn,
    per_patch_exponents,
)

from pifs_jax.criteria import (
    WORK_KINDS,
    GrowthBalance,
    WeakestLink,
    Workload,
    coefficient_of_variation,
    cumulative_work,
    equal_work_times,
    growth_balance,
    step_work,
    weakest_link,
    work_density,
    workload,
)
from pifs_jax.optimize import (
    CRITERIA,
    FAMILIES,
    GridResult,
    OptimizeResult,
    OptimizerState,
    ScheduleObjective,
    fit_to_schedule,
    grid_to_diffusers_timesteps,
    optimize_grid,
    optimize_schedule,
    round_grid,
    schedule_family,
    schedule_objective,
)
from pifs_jax.heuristics import (
    PIXEL_BIN,
    PatchSpectrum,
    cosine_offset_limit,
    marginal_entropy_gain,
    measured_patch_variances,
    min_snr_weights,
    optimal_eps_loss,
    photo_patch_spectrum,
    power_law_variances,
    scaling_exponent_offset,
    spearman_correlation,
)
from pifs_jax.data import (
    DATASET_NAMES,
    PHOTO_NAMES,
    GaussianPatchData,
    MixtureData,
    PatchStats,
    gaussian_mixture_data,
    gaussian_patch_data,
    load_dataset,
    patch_stats,
    photo_crops,
)

from importlib.metadata import PackageNotFoundError as _PackageNotFoundError
from importlib.metadata import version as _distribution_version

try:  # one source for the version: pyproject.toml, through the installed metadata
    __version__ = _distribution_version("pifs_jax")
except _PackageNotFoundError:  # a source tree on PYTHONPATH that was never installed
    __version__ = "0+unknown"

#: Every public name re-exported above (tests/test_packaging.py checks the two agree).
__all__ = [
    "SCHEDULE_NAMES", "Schedule", "cosine", "from_alpha_bar", "from_alphas_cumprod",
    "from_betas", "from_edm_sigmas", "from_log_alpha_bar", "from_log_snr", "karras",
    "log_snr_decrements", "linear", "logsnr_cosine", "named_schedule", "resolution_shift",
    "scaled_linear", "shift_log_snr", "sigmoid", "zero_terminal_snr",
    "AYS_SD15", "AYS_SDXL", "TIMESTEP_SPACINGS", "align_your_steps_grid", "diffusers_grid",
    "diffusers_timesteps", "full_grid", "grid_from_diffusers_timesteps", "uniform_grid",
    "ContractionSummary", "StepCoefficients", "step_gaps", "analytic_kaplan_yorke",
    "contraction_summary", "contraction_threshold", "dimension_growth", "expansion_factor",
    "expansion_threshold", "information_gain", "log_expansion_factor", "lyapunov_exponents",
    "moran_function", "moran_threshold", "step_coefficients",
    "kaplan_yorke_dimension", "kaplan_yorke_patch_form",
    "LearnableSchedule", "logsnr_spline", "monotone_network",
    "ChainSteps", "chain_steps", "check_denoiser", "ddim_chain", "ddim_sample", "ddim_step",
    "ArgumentError", "NonFiniteError",
    "write_result_json",
    "DIFFUSERS_BETA_SCHEDULES", "EXAMPLE_CONFIGS", "diffusers_config_grid",
    "example_config_path", "from_diffusers_config", "load_config", "save_diffusers_config",
    "to_diffusers_config",
    "run_reproduction",
    "PatchLayout", "patch_layout", "patch_permutation", "patchify", "unpatchify",
    "Attention", "EmpiricalEps", "empirical_attention", "empirical_denoiser",
    "gaussian_denoiser", "gaussian_denoiser_eig", "gaussian_denoiser_patches",
    "gaussian_mixture_denoiser",
    "BlockNorms", "block_norms", "block_norms_matrix_free", "chain_jacobian",
    "ddim_step_jacobian", "forward_jacobian", "leading_eigenvectors", "patch_blocks", "step_jacobian", "step_jvp",
    "step_vjp", "summarize_block_norms", "suppression_field",
    "CHAIN_METHODS", "Spectrum", "chain_lyapunov_spectrum", "chain_lyapunov_spectra", "lyapunov_spectrum",
    "batch_mesh", "initialize_processes", "shard_batch", "sharded_ddim_sample",
    "ChainAnalysis", "ClaimResult", "analyze_chain", "evaluate_claims", "module_attention_fn", "per_patch_exponents",
    "WORK_KINDS", "GrowthBalance", "WeakestLink", "Workload", "coefficient_of_variation",
    "cumulative_work", "equal_work_times", "growth_balance", "step_work", "weakest_link",
    "work_density", "workload",
    "CRITERIA", "FAMILIES", "GridResult", "OptimizeResult", "OptimizerState",
    "ScheduleObjective", "fit_to_schedule", "grid_to_diffusers_timesteps", "optimize_grid",
    "optimize_schedule", "round_grid", "schedule_family", "schedule_objective",
    "PIXEL_BIN", "PatchSpectrum", "cosine_offset_limit", "marginal_entropy_gain",
    "measured_patch_variances", "min_snr_weights", "optimal_eps_loss", "photo_patch_spectrum",
    "power_law_variances", "scaling_exponent_offset", "spearman_correlation",
    "DATASET_NAMES", "PHOTO_NAMES", "GaussianPatchData", "MixtureData", "PatchStats",
    "gaussian_mixture_data", "gaussian_patch_data", "load_dataset", "patch_stats",
    "photo_crops",
]

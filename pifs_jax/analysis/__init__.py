"""Testing the paper's trained-model claims on any denoiser (docs/theory.md section 11).

- :mod:`pifs_jax.analysis.chain_analysis`: :func:`analyze_chain`, every per-step quantity of the
  two-regime picture (block norms of the step Jacobian, suppression field, deviation from the
  Gaussian baseline, attention entropy) along one or several DDIM trajectories, and
  :func:`per_patch_exponents` with what follows from them, the suppression-corrected Moran
  threshold and Kaplan-Yorke dimension (:func:`corrected_attractor`).
- :mod:`pifs_jax.analysis.statistics`: bootstrap intervals, Spearman correlation with its
  ``t``-distribution p-value, ordinary least squares with a ``t``-interval, the (PC) crossover
  window.
- :mod:`pifs_jax.analysis.claims`: the paper's values and the fixed verdict rules.
- :mod:`pifs_jax.analysis.report`: many trajectories of one model summarised with intervals and
  judged (:func:`~pifs_jax.analysis.report.analyze_model`), written as ``analysis.json``,
  figures (:mod:`pifs_jax.analysis.figures`) and ``analysis.md``: what ``pifs-jax analyze`` and the
  ``two_regimes`` experiment run.
"""

from __future__ import annotations

from pifs_jax.analysis.chain_analysis import (
    ChainAnalysis,
    CorrectedAttractor,
    ModuleAttention,
    analyze_chain,
    corrected_attractor,
    module_attention_fn,
    per_patch_exponents,
    suppression_corrected_margins,
)
from pifs_jax.analysis.claims import PAPER_VALUES, VERDICTS, ClaimResult, evaluate_claims
from pifs_jax.analysis.statistics import (
    OLSFit,
    bootstrap_mean_interval,
    crossover_window,
    ols_fit,
    spearman,
    student_t_cdf,
    student_t_quantile,
)

__all__ = [
    "PAPER_VALUES",
    "VERDICTS",
    "ChainAnalysis",
    "ClaimResult",
    "CorrectedAttractor",
    "ModuleAttention",
    "OLSFit",
    "analyze_chain",
    "bootstrap_mean_interval",
    "corrected_attractor",
    "crossover_window",
    "evaluate_claims",
    "module_attention_fn",
    "ols_fit",
    "per_patch_exponents",
    "spearman",
    "student_t_cdf",
    "student_t_quantile",
    "suppression_corrected_margins",
]

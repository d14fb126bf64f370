"""The paper's trained-model claims, its values, and the verdict rules of docs/theory.md section 11.

:func:`evaluate_claims` applies the fixed verdict table to the trajectory-averaged values of a
:class:`pifs_jax.analysis.ChainAnalysis`: each claim gets ``"holds"``, ``"partly"`` or
``"does not hold"``, or ``"not tested"`` when an ingredient is missing (no attention, no
baseline). Readings of the table that it leaves to the implementation:

- "at a crossover step" / "at the last 10 % of steps": at *some* step of that set (the paper
  quotes one step for each);
- the last 10 % of the chain's steps are its ``ceil(N / 10)`` final steps (at least one);
- a Spearman correlation that is undefined at a step (a constant input) counts as neither
  positive nor negative there;
- "Regime II: diagonal blocks expand at the last step": the bootstrap interval of the
  trajectory mean of ``kappa_diag_mean`` at the chain's last step (a single trajectory gives a
  zero-width interval);
- a claim whose step set is empty (no step with ``t > 0.6 T``; fewer than 3 steps with
  ``logSNR < 0``) is not tested; one whose window or crossover steps do not exist does not hold.

The p-values of the three claims that rank patches are **per step**: each is the Spearman
p-value (:func:`pifs_jax.analysis.statistics.spearman`) of one step's ranking, not corrected for
the best being taken over several steps (the maximum of ``rho(lambda, S)`` over all ``N`` steps;
*some* crossover step; *some* of the last 10 % of steps). With ``K`` steps searched, the chance
that some step reaches ``p < alpha`` under the null hypothesis is up to ``K alpha`` (Bonferroni);
the rules of docs/theory.md section 11 are stated with the per-step p-value and are applied as
stated.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from pifs_jax._validation import check_instance, check_positive_int
from pifs_jax.analysis.chain_analysis import ChainAnalysis, per_patch_exponents, suppression_corrected_margins
from pifs_jax.analysis.statistics import bootstrap_mean_interval, crossover_window, ols_fit, spearman
from pifs_jax.errors import ArgumentError

__all__ = ["CLAIM_NAMES", "PAPER_VALUES", "VERDICTS", "ClaimResult", "evaluate_claims"]

#: The verdicts a claim can receive, from best to untested.
VERDICTS = ("holds", "partly", "does not hold", "not tested")

#: The paper's values (CIFAR-10 DDPM, 50 DDIM steps, 8x8 patches, ``M = 16``; docs/theory.md sections 6 and 11).
PAPER_VALUES: dict[str, Any] = {
    # t: (kappa_diag, delta_cross, kappa_diag + delta_cross)
    "block_decomposition": {
        980: (1.0004, 0.0007, 1.0011),
        800: (1.0002, 0.0008, 1.0010),
        600: (1.0000, 0.0853, 1.0853),
        400: (1.0026, 0.1273, 1.1300),
        220: (1.0325, 0.0768, 1.1092),
        20: (1.2111, 0.1858, 1.3969),
    },
    "regime_I_diagonal_range": (0.993, 1.007),
    "regime_II_kappa_diag_t20": 1.2111,
    "entropy_coupling_spearman": -1.000,
    "crossover_window": (160, 200),
    "suppression_variance_spearman": {"rho": 0.953, "p": 1.2e-8, "t": 601},
    "crossover_variance_kappa_spearman": {"rho_sign": -1, "p_max": 0.047},
    "regime_II_variance_kappa_spearman": {"rho": 0.771, "p": 0.001, "t": 40},
    "deviation_scaling": {"slope": 0.95, "slope_lo": 0.88, "slope_hi": 1.02, "r2": 0.994},
    "exponent_sign_agreement": (16, 16),
}

#: The paper's statement of the three claims that rank patches (indexed as in :data:`CLAIM_NAMES`).
PAPER_RANK_CLAIMS = {
    5: "max over t of rho(lambda, S) = 0.953 (p = 1.2e-8) at t = 601",
    6: "rho(lambda, kappa) < 0 (p <= 0.047) in the crossover window",
    7: "rho(lambda, kappa) = +0.771 (p = 0.001) at t = 40",
}

#: The names of the paper's trained-model claims, in the order :func:`evaluate_claims` returns them.
CLAIM_NAMES = (
    "regime_I_diagonal_pinned",
    "regime_I_coupling_carries_expansion",
    "regime_II_diagonal_expands",
    "entropy_falls_as_coupling_rises",
    "narrow_crossover_window",
    "suppression_ordered_by_variance",
    "low_variance_released_first",
    "regime_II_order",
    "deviation_scales_as_sqrt_alpha_bar",
    "corrected_exponents_predict_signs",
)


class ClaimResult(NamedTuple):
    """One claim, the paper's value, ours, and the verdict of docs/theory.md section 11."""

    name: str
    """The claim, in words."""
    paper: str
    """The paper's value, in words."""
    ours: str
    """Our value in words, with its interval or p-value."""
    value: float
    """The number the verdict is read from (``nan`` when not tested)."""
    interval: tuple | None
    """``(lo, hi)`` of ``value`` (bootstrap, ``t``-interval or range), or ``None``."""
    verdict: str
    """One of :data:`VERDICTS`."""


def _mean_over_trajectories(values: Any, batched: bool) -> np.ndarray:
    values = np.asarray(values, np.float64)
    return values.mean(axis=0) if batched else values


def _not_tested(name: str, paper: str, why: str) -> ClaimResult:
    return ClaimResult(name, paper, f"not tested: {why}", math.nan, None, "not tested")


def _rank_correlations(lam: np.ndarray, per_patch: np.ndarray) -> np.ndarray:
    """``(rho, p)`` of Spearman(lambda_k, value_k) at every step, shape ``(N, 2)``."""
    return np.array([spearman(lam, row) for row in per_patch])


def _regime_I(a: ChainAnalysis, kappa: np.ndarray, delta: np.ndarray, num_timesteps: int) -> list[ClaimResult]:
    names, papers = (
        CLAIM_NAMES[:2],
        (
            "kappa_diag 0.993 to 1.007 (1.0004 at t = 980, 1.0002 at 800, 1.0000 at 600)",
            "delta_cross 0.0007 (t = 980), 0.0008 (800), 0.0853 (600) carries the expansion",
        ),
    )
    high = a.t > 0.6 * num_timesteps
    if not high.any():
        return [
            _not_tested(n, p, f"no step with t > 0.6 T = {0.6 * num_timesteps:g}")
            for n, p in zip(names, papers, strict=True)
        ]
    k = kappa[high]
    lo, hi = float(k.min()), float(k.max())
    if lo >= 0.99 and hi <= 1.01:
        verdict = "holds"
    elif lo >= 0.95 and hi <= 1.05:
        verdict = "partly"
    else:
        verdict = "does not hold"
    worst = float(k[np.argmax(np.abs(k - 1))])
    pinned = ClaimResult(names[0], papers[0], f"kappa_diag_mean in [{lo:.4f}, {hi:.4f}] over {int(high.sum())} steps with t > 0.6 T",
                         worst, (lo, hi), verdict)  # fmt: skip
    carried = delta[high] > kappa[high] - 1
    fraction = float(carried.mean())
    verdict = "holds" if carried.all() else "partly" if fraction >= 0.5 else "does not hold"
    coupling = ClaimResult(names[1], papers[1], f"delta_cross_mean > kappa_diag_mean - 1 at {int(carried.sum())} of {carried.size} steps",
                           fraction, None, verdict)  # fmt: skip
    return [pinned, coupling]


def _ddim_only(analysis: ChainAnalysis) -> str:
    """Why a model-free prediction is not tested on a chain of another sampler than deterministic DDIM."""
    return f"a model-free prediction of the deterministic DDIM step (|b_t|, f_t); not applicable to {analysis.sampler}"


def evaluate_claims(analysis: ChainAnalysis, *, patch_eigenvalues: Any, num_timesteps: int) -> list[ClaimResult]:
    """The verdicts of docs/theory.md section 11 on ``analysis``, one :class:`ClaimResult` per claim.

    Per-step values are averaged over the trajectories first (``kappa_diag_mean``,
    ``delta_cross_mean``, per-patch ``kappa_k`` and ``S_{k,t}``, ``V_t``, ``||Delta_t||``, the
    layer-averaged attention entropy); the exponent signs are compared per (patch, trajectory).
    ``V_t`` counts the patches violating (PC) under reading (D),
    :func:`~pifs_jax.analysis.chain_analysis.suppression_corrected_margins`, where it applies
    (deterministic DDIM with a baseline), else under reading (A), ``analysis.violations``; the
    crossover claim names the reading.
    The claims on the suppression field and the predicted exponents are *not tested* when they
    are in ``analysis.not_applicable`` (a chain of another sampler than deterministic DDIM).

    The p-values of the rank claims ("suppression ordered by variance", "low-variance patches
    released first", "Regime II order") are per step: that of the step picked (the maximum of
    ``rho(lambda, S)`` over all steps, or a significant step of the crossover or last-10 % set),
    without a correction for the number of steps the best is taken over (module docstring).

    Args:
      analysis: from :func:`pifs_jax.analysis.analyze_chain`.
      patch_eigenvalues: ``lambda_k``, the leading covariance eigenvalue of each patch of the
        training data (``pj.patch_stats(data, patch_size=p).leading_eigenvalue``), shape ``(M,)``.
      num_timesteps: ``T`` of the schedule (Regime I is ``t > 0.6 T``; the window width is
        compared with ``0.1 T``).

    Returns:
      :class:`ClaimResult` for each of :data:`CLAIM_NAMES`, in that order.

    Raises:
      ArgumentError: naming ``analysis``, ``patch_eigenvalues`` (not ``(M,)``) or ``num_timesteps``.
    """
    check_instance(analysis, ChainAnalysis, name="analysis", what="ChainAnalysis (pifs_jax.analyze_chain)")
    num_timesteps = check_positive_int(num_timesteps, name="num_timesteps")
    m = analysis.num_patches
    lam = np.asarray(patch_eigenvalues, np.float64)
    if lam.shape != (m,) or not np.all(np.isfinite(lam)):
        raise ArgumentError(
            "patch_eigenvalues", f"expected {m} finite leading eigenvalues (one per patch), got shape {lam.shape}"
        )
    batched = analysis.batched
    avg = lambda values: _mean_over_trajectories(values, batched)  # noqa: E731
    t = np.asarray(analysis.t, np.float64)
    n_steps = t.shape[0]
    kappa, delta = avg(analysis.kappa_diag_mean), avg(analysis.delta_cross_mean)
    kappa_k = avg(analysis.kappa_diag_per_patch)  # (N, M)
    # (PC) violations under reading (D) where it applies, else (A) (docs/theory.md section 11)
    margins_d = suppression_corrected_margins(analysis)
    reading = "A" if margins_d is None else "D"
    violations = avg(analysis.violations if margins_d is None else np.sum(margins_d < 0, axis=-1))
    results = _regime_I(analysis, kappa, delta, num_timesteps)

    # Regime II: diagonal blocks expand at the last step
    last = np.asarray(analysis.kappa_diag_mean, np.float64)[..., -1]
    mean, lo, hi = bootstrap_mean_interval(np.atleast_1d(last))
    mean, lo, hi = float(mean), float(lo), float(hi)
    verdict = "holds" if lo > 1 else "partly" if mean > 1 else "does not hold"
    results.append(ClaimResult(CLAIM_NAMES[2], "kappa_diag = 1.2111 at t = 20",
                               f"kappa_diag_mean = {mean:.4f} [{lo:.4f}, {hi:.4f}] at t = {t[-1]:g}", mean, (lo, hi), verdict))  # fmt: skip

    # entropy falls as coupling rises
    paper = "Spearman over t of (H, delta_cross) = -1.000"
    if analysis.attention_entropy is None:
        results.append(_not_tested(CLAIM_NAMES[3], paper, "the model returns no attention (attention_fn not given)"))
    else:
        layers = [avg(v) for v in analysis.attention_entropy.values()]
        entropy = np.mean(layers, axis=0)
        rho, p = spearman(entropy, delta) if n_steps >= 3 else (math.nan, math.nan)
        verdict = "holds" if rho <= -0.9 else "partly" if (rho < 0 and p < 0.05) else "does not hold"
        results.append(ClaimResult(CLAIM_NAMES[3], paper, f"rho = {rho:.3f} (p = {p:.2g}) over {n_steps} steps",
                                   rho, None, verdict))  # fmt: skip

    # the crossover window
    window = crossover_window(t, violations, m)
    paper = "window t in [160, 200] (40 of T = 1000 timesteps)"
    if window is None:
        results.append(
            ClaimResult(
                CLAIM_NAMES[4],
                paper,
                f"no window (V_t never reaches M, or never 0 below it; reading {reading})",
                math.nan,
                None,
                "does not hold",
            )
        )
    else:
        width = window[0] - window[1]
        verdict = "holds" if width <= 0.1 * num_timesteps else "partly"
        results.append(ClaimResult(CLAIM_NAMES[4], paper, f"window t in [{window[1]:g}, {window[0]:g}], width {width:g} of T = {num_timesteps} (reading {reading})",
                                   width, (window[1], window[0]), verdict))  # fmt: skip

    # suppression ordered by variance
    paper = PAPER_RANK_CLAIMS[5]
    if m < 3:
        why = f"{m} patches: a rank correlation over patches needs at least 3"
        results += [_not_tested(CLAIM_NAMES[i], PAPER_RANK_CLAIMS[i], why) for i in (5, 6, 7)]
    elif analysis.suppression is None:
        results.append(_not_tested(CLAIM_NAMES[5], paper, "no Gaussian baseline (baseline not given)"))
    elif "suppression" in analysis.not_applicable:
        results.append(_not_tested(CLAIM_NAMES[5], paper, _ddim_only(analysis)))
    else:
        corr = _rank_correlations(lam, avg(analysis.suppression))
        rho_s = np.where(np.isnan(corr[:, 0]), -np.inf, corr[:, 0])
        best = int(np.argmax(rho_s))
        rho, p = corr[best]
        positive = (corr[:, 0] > 0) & (corr[:, 1] < 0.05)
        verdict = "holds" if (rho >= 0.8 and p < 0.01) else "partly" if positive.any() else "does not hold"
        results.append(
            ClaimResult(
                CLAIM_NAMES[5],
                paper,
                f"max rho = {rho:.3f} (p = {p:.2g}) at t = {t[best]:g}",
                float(rho),
                None,
                verdict,
            )
        )

    if m >= 3:
        # low-variance patches released first: rho(lambda, kappa) < 0 at a crossover step
        paper = PAPER_RANK_CLAIMS[6]
        if window is not None:
            crossing = (t >= window[1]) & (t <= window[0])
            where = f"window t in [{window[1]:g}, {window[0]:g}]"
        else:
            crossing = (violations > 1e-9) & (violations < m - 1e-9)
            where = "steps with 0 < V_t < M"
        corr = _rank_correlations(lam, kappa_k)
        if not crossing.any():
            results.append(ClaimResult(CLAIM_NAMES[6], paper, "no crossover step", math.nan, None, "does not hold"))
        else:
            rho_c, p_c = corr[crossing, 0], corr[crossing, 1]
            significant = (rho_c < 0) & (p_c < 0.05)
            pick = (
                int(np.argmax(significant))
                if significant.any()
                else int(np.nanargmin(np.where(np.isnan(rho_c), np.inf, rho_c)))
            )
            verdict = "holds" if significant.any() else "partly" if np.any(rho_c < 0) else "does not hold"
            results.append(ClaimResult(CLAIM_NAMES[6], paper, f"rho = {rho_c[pick]:.3f} (p = {p_c[pick]:.2g}) at t = {t[crossing][pick]:g} ({where})",
                                       float(rho_c[pick]), None, verdict))  # fmt: skip

        # Regime II order: rho(lambda, kappa) > 0 at the last 10 % of steps
        paper = PAPER_RANK_CLAIMS[7]
        tail = slice(n_steps - max(1, math.ceil(0.1 * n_steps)), n_steps)
        rho_r, p_r, t_r = corr[tail, 0], corr[tail, 1], t[tail]
        significant = (rho_r > 0) & (p_r < 0.05)
        pick = (
            int(np.argmax(significant))
            if significant.any()
            else int(np.argmax(np.where(np.isnan(rho_r), -np.inf, rho_r)))
        )
        verdict = "holds" if significant.any() else "partly" if np.any(rho_r > 0) else "does not hold"
        results.append(ClaimResult(CLAIM_NAMES[7], paper, f"rho = {rho_r[pick]:.3f} (p = {p_r[pick]:.2g}) at t = {t_r[pick]:g} (last {len(t_r)} steps)",
                                   float(rho_r[pick]), None, verdict))  # fmt: skip

    # ||Delta_t|| = O(sqrt(ab_t)) at high noise
    paper = "slope 0.95, 95 % CI [0.88, 1.02], R^2 = 0.994"
    high_noise = np.asarray(analysis.logsnr) < 0
    if analysis.deviation_norm is None:
        results.append(_not_tested(CLAIM_NAMES[8], paper, "no Gaussian baseline (baseline not given)"))
    elif high_noise.sum() < 3:
        results.append(
            _not_tested(CLAIM_NAMES[8], paper, f"{int(high_noise.sum())} steps with logSNR < 0, at least 3 needed")
        )
    else:
        # log sqrt(ab_t) = -softplus(-logSNR_t) / 2 since ab_t = sigmoid(logSNR_t)
        log_sqrt_ab = -0.5 * np.logaddexp(0.0, -np.asarray(analysis.logsnr, np.float64)[high_noise])
        fit = ols_fit(log_sqrt_ab, np.log(avg(analysis.deviation_norm)[high_noise]))
        if fit.slope_lo <= 1 <= fit.slope_hi and fit.r2 >= 0.9:
            verdict = "holds"
        elif 0.75 <= fit.slope <= 1.25:
            verdict = "partly"
        else:
            verdict = "does not hold"
        results.append(ClaimResult(CLAIM_NAMES[8], paper,
                                   f"slope {fit.slope:.3f}, 95 % CI [{fit.slope_lo:.3f}, {fit.slope_hi:.3f}], R^2 = {fit.r2:.3f} "
                                   f"over {int(high_noise.sum())} steps", fit.slope, (fit.slope_lo, fit.slope_hi), verdict))  # fmt: skip

    # corrected exponents predict measured signs
    paper = "predicted exponent signs agree for 16 of 16 patches"
    if analysis.suppression is None:
        results.append(_not_tested(CLAIM_NAMES[9], paper, "no Gaussian baseline (baseline not given)"))
    elif "predicted_exponents" in analysis.not_applicable:
        results.append(_not_tested(CLAIM_NAMES[9], paper, _ddim_only(analysis)))
    else:
        predicted, measured = per_patch_exponents(analysis)
        agree = np.sign(predicted) == np.sign(measured)
        fraction = float(agree.mean())
        verdict = "holds" if fraction >= 0.9 else "partly" if fraction >= 0.7 else "does not hold"
        results.append(ClaimResult(CLAIM_NAMES[9], paper, f"signs agree for {int(agree.sum())} of {agree.size} (patch, trajectory) pairs",
                                   fraction, None, verdict))  # fmt: skip
    return results

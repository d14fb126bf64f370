"""Figures of a chain analysis (:func:`pifs_jax.analysis.analyze_chain` over several trajectories).

Every function takes the per-step summary of :func:`pifs_jax.analysis.report.summarize_analysis`
(trajectory means with bootstrap 95 % intervals, the patches' leading eigenvalues, per-step
Spearman correlations), draws on a new Agg figure (no pyplot state, like :mod:`pifs_jax.plotting`)
and returns it; write it with :func:`pifs_jax.plotting.save_figure`. The horizontal axis is the
timestep ``t`` a step starts from, drawn decreasing (the order the chain runs).

- :func:`plot_block_norms`: ``kappa_diag`` and ``delta_cross`` (patch means) over ``t`` with bands,
  the (PC) line ``kappa + delta = 1`` and the crossover window shaded;
- :func:`plot_entropy_coupling`: attention entropy against ``delta_cross``, one point per step;
- :func:`plot_release_map`: ``kappa_k(t) - 1`` per patch, patches ordered by variance ``lambda_k``
  (the order in which suppression is released reads off as a staircase);
- :func:`plot_deviation_fit`: ``||Delta_t||`` against ``sqrt(ab_t)`` (log-log) with the OLS line;
- :func:`plot_exponent_signs`: measured against predicted per-patch exponents.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from matplotlib.colors import CenteredNorm
from matplotlib.figure import Figure

from pifs_jax.plotting import new_figure

__all__ = [
    "plot_block_norms",
    "plot_deviation_fit",
    "plot_entropy_coupling",
    "plot_exponent_signs",
    "plot_release_map",
]


def _band(ax, t, stats: Mapping[str, Any], label: str, color: str) -> None:
    ax.plot(t, stats["mean"], color=color, label=label)
    ax.fill_between(t, stats["lo"], stats["hi"], color=color, alpha=0.25, linewidth=0)


def _decreasing_t(ax) -> None:
    ax.set_xlabel("t (step start; the chain runs right to left)")
    left, right = ax.get_xlim()
    if left < right:
        ax.invert_xaxis()


def plot_block_norms(summary: Mapping[str, Any], *, title: str = "") -> Figure:
    """``kappa_diag`` (mean over patches), ``delta_cross`` and their sum over ``t``, 95 % bands.

    The (PC) boundary 1 is drawn dashed and the crossover window, when there is one, shaded; log scale.

    Args:
      summary: the summary of :func:`~pifs_jax.analysis.report.summarize_analysis` (its ``"t"``,
        ``"steps"`` and ``"crossover_window"``).
      title: the axes' title; default ``""``: "Block decomposition of the step Jacobian".

    Returns:
      the new matplotlib ``Figure``.
    """
    fig, ax = new_figure(figsize=(6.8, 4.2))
    t = np.asarray(summary["t"])
    steps = summary["steps"]
    _band(ax, t, steps["kappa_diag_mean"], "kappa_diag (patch mean)", "C0")
    _band(ax, t, steps["delta_cross_mean"], "delta_cross (patch mean)", "C1")
    _band(ax, t, steps["pc_sum_mean"], "kappa + delta (patch mean)", "C2")
    ax.axhline(1.0, color="k", linewidth=0.8, linestyle="--", label="(PC) boundary")
    window = summary.get("crossover_window")
    if window:
        ax.axvspan(window["t_lower"], window["t_upper"], color="0.85", label="crossover window")
    ax.set_yscale("log")  # norms are positive; an exactly zero delta_cross (block-diagonal) is not drawn
    ax.set_ylabel("block norm")
    _decreasing_t(ax)
    ax.legend(fontsize=8)
    ax.set_title(title or "Block decomposition of the step Jacobian")
    return fig


def plot_entropy_coupling(summary: Mapping[str, Any], *, title: str = "") -> Figure:
    """Mean attention entropy (nats) against ``delta_cross`` (patch mean), coloured by ``t``.

    Without attention layers (no ``attention_entropy``) the figure says "not tested".

    Args:
      summary: the summary of :func:`~pifs_jax.analysis.report.summarize_analysis` (its ``"t"`` and
        ``"steps"``).
      title: the axes' title (not set on a "not tested" figure); default ``""``: "Attention entropy
        against cross-patch coupling".

    Returns:
      the new matplotlib ``Figure``.
    """
    fig, ax = new_figure(figsize=(5.6, 4.2))
    steps = summary["steps"]
    entropy = steps.get("attention_entropy")
    if entropy is None:
        ax.text(0.5, 0.5, "no attention layers: not tested", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return fig
    points = ax.scatter(steps["delta_cross_mean"]["mean"], entropy["mean"], c=np.asarray(summary["t"]), cmap="viridis")
    fig.colorbar(points, ax=ax, label="t")
    ax.set_xscale("log")
    ax.set_xlabel("delta_cross (patch mean)")
    ax.set_ylabel("attention entropy H(A_t) (nats)")
    ax.set_title(title or "Attention entropy against cross-patch coupling")
    return fig


def plot_release_map(summary: Mapping[str, Any], *, title: str = "") -> Figure:
    """Heat map of ``kappa_k(t) - 1`` (trajectory mean), rows = patches by increasing variance.

    Args:
      summary: the summary of :func:`~pifs_jax.analysis.report.summarize_analysis` (its ``"t"``,
        ``"per_patch"`` ``kappa_diag`` ``(N, M)`` and ``"patch_eigenvalues"``).
      title: the axes' title; default ``""``: "Release of suppression, patch by patch".

    Returns:
      the new matplotlib ``Figure``.
    """
    fig, ax = new_figure(figsize=(6.8, 4.2))
    t = np.asarray(summary["t"])
    kappa = np.asarray(summary["per_patch"]["kappa_diag"])  # (N, M)
    order = np.argsort(np.asarray(summary["patch_eigenvalues"]))
    image = ax.imshow(
        (kappa[:, order] - 1.0).T,
        aspect="auto",
        cmap="RdBu_r",
        norm=CenteredNorm(),
        extent=(t[0], t[-1], len(order) - 0.5, -0.5),
        interpolation="nearest",
    )
    fig.colorbar(image, ax=ax, label="kappa_k - 1 (red: the patch's diagonal block expands)")
    ax.set_ylabel("patch, by increasing leading variance lambda_k")
    _decreasing_t(ax)
    ax.set_title(title or "Release of suppression, patch by patch")
    return fig


def plot_deviation_fit(summary: Mapping[str, Any], *, title: str = "") -> Figure:
    """``||Delta_t||`` against ``sqrt(ab_t)`` on log-log axes, the high-noise OLS fit drawn.

    Without a Gaussian baseline (no ``deviation_norm``) the figure says "not tested".

    Args:
      summary: the summary of :func:`~pifs_jax.analysis.report.summarize_analysis` (its ``"alpha_bar"``,
        ``"steps"`` and ``"deviation_fit"``).
      title: the axes' title (not set on a "not tested" figure); default ``""``: "Deviation from the
        Gaussian baseline".

    Returns:
      the new matplotlib ``Figure``.
    """
    fig, ax = new_figure(figsize=(5.6, 4.2))
    deviation = summary["steps"].get("deviation_norm")
    if deviation is None:
        ax.text(0.5, 0.5, "no Gaussian baseline: not tested", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return fig
    root = np.sqrt(np.asarray(summary["alpha_bar"]))
    ax.errorbar(
        root,
        deviation["mean"],
        yerr=[np.asarray(deviation["mean"]) - deviation["lo"], np.asarray(deviation["hi"]) - deviation["mean"]],
        fmt="o",
        markersize=3,
        label="||Delta_t|| (trajectory mean, 95 %)",
    )
    fit = summary.get("deviation_fit")
    if fit:
        x = np.asarray(fit["x_range"])
        ax.plot(
            x,
            np.exp(fit["intercept"]) * x ** fit["slope"],
            "k--",
            label=f"high-noise OLS: slope {fit['slope']:.2f} [{fit['slope_lo']:.2f}, {fit['slope_hi']:.2f}]",
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("sqrt(alpha_bar_t)")
    ax.set_ylabel("||eps_model - eps_Gaussian||")
    ax.legend(fontsize=8)
    ax.set_title(title or "Deviation from the Gaussian baseline")
    return fig


def plot_exponent_signs(summary: Mapping[str, Any], *, title: str = "") -> Figure:
    """Measured (``mean log kappa_k``) against predicted (suppression-corrected) per-patch exponents.

    Without a Gaussian baseline (no ``exponents``) the figure says "not tested".

    Args:
      summary: the summary of :func:`~pifs_jax.analysis.report.summarize_analysis` (its ``"exponents"``).
      title: the axes' title (not set on a "not tested" figure); default ``""``: the percentage of
        (patch, trajectory) pairs whose signs agree.

    Returns:
      the new matplotlib ``Figure``.
    """
    fig, ax = new_figure(figsize=(5.2, 4.6))
    exponents = summary.get("exponents")
    if exponents is None:
        ax.text(0.5, 0.5, "no Gaussian baseline: not tested", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return fig
    predicted = np.asarray(exponents["predicted"], dtype=float).ravel()
    measured = np.asarray(exponents["measured"], dtype=float).ravel()
    finite = np.isfinite(predicted)
    agree = np.sign(predicted) == np.sign(measured)
    ax.scatter(predicted[finite & agree], measured[finite & agree], s=10, label="signs agree")
    ax.scatter(predicted[finite & ~agree], measured[finite & ~agree], s=10, color="C3", label="signs differ")
    ax.axhline(0, color="k", linewidth=0.6)
    ax.axvline(0, color="k", linewidth=0.6)
    ax.set_xlabel("predicted Lambda_eff,k (per step)")
    ax.set_ylabel("measured Lambda_meas,k (per step)")
    ax.legend(fontsize=8)
    ax.set_title(title or f"Per-patch exponents: signs agree for {100 * np.mean(agree):.0f} %")
    return fig

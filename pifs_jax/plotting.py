"""Figures of a schedule's model-free geometry (matplotlib, Agg canvas, no pyplot state).

Four views of the quantities of :mod:`pifs_jax.geometry`, each plotted over the timestep ``t``
a sampling step starts from (``t = tau_i`` for the step ``tau_i -> tau_{i-1}``):

- :func:`plot_contraction_threshold`: ``L*_t = (sigma_s + a_t sigma_t) / (1 + a_t)``, one curve per
  chain, log scale (the finest step's ``L*_1 ~ sigma_1/2`` is orders of magnitude below the rest);
- :func:`plot_expansion_heatmap`: ``f_t(lambda)`` over ``t`` and ``log lambda``, a diverging colour
  map centred at ``f = 1`` (red expands, blue contracts), with the per-step threshold
  ``lambda*(t)`` (where ``f_t = 1``) and the Moran threshold ``lambda**`` overlaid;
- :func:`plot_expansion_threshold`: ``lambda*(t)`` with ``lambda**`` as a horizontal line;
- :func:`plot_log_snr`: ``logSNR_t = log(alpha_bar_t / sigma_t^2)``.

Every function accepts either one :class:`~pifs_jax.schedules.Schedule` (with ``grid``), or a
mapping ``label -> Schedule`` or ``label -> (Schedule, grid)`` to overlay several chains, and
an optional matplotlib ``ax`` to draw into. Without ``ax`` a new :class:`~matplotlib.figure.Figure`
is created on an Agg canvas, without ``pyplot``: no global figure registry, no GUI backend, safe
in scripts, tests and threads (and still displayed by Jupyter when it is a cell's value).
Write figures with :func:`save_figure`, which is atomic.

Example:
  >>> import pifs_jax as pj
  >>> from pifs_jax import plotting
  >>> fig = plotting.plot_contraction_threshold({"linear": pj.linear(), "cosine": pj.cosine()})
  >>> plotting.save_figure(fig, "results/lstar.png")
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import CenteredNorm
from matplotlib.figure import Figure

from pifs_jax.errors import ArgumentError
from pifs_jax.geometry import (
    contraction_threshold,
    expansion_factor,
    expansion_threshold,
    moran_threshold,
)
from pifs_jax.grids import as_grid
from pifs_jax.results import atomic_write_bytes
from pifs_jax.schedules import Schedule
from pifs_jax.typing import GridLike

__all__ = [
    "lambda_grid",
    "new_figure",
    "plot_contraction_threshold",
    "plot_expansion_heatmap",
    "plot_expansion_threshold",
    "plot_log_snr",
    "save_figure",
]


def new_figure(*, figsize: tuple[float, float] = (6.4, 4.0), dpi: int = 120) -> tuple[Figure, Axes]:
    """A new Figure on an Agg canvas with one Axes (no pyplot involved).

    Args:
      figsize: width and height in inches.
      dpi: resolution used when the figure is saved.

    Returns:
      ``(fig, ax)``.
    """
    fig = Figure(figsize=figsize, dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def save_figure(fig: Figure, path: str | os.PathLike, *, dpi: int | None = None) -> Path:
    """Save ``fig`` to ``path`` atomically (render to memory, then temporary file + rename).

    The format follows the file suffix (``.png``, ``.pdf``, ``.svg``); a reader never sees a
    half-written image.

    Args:
      fig: the figure.
      path: destination; parent folders are created.
      dpi: resolution override (default: the figure's own).

    Returns:
      The path written.
    """
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower()
    if not fmt:
        raise ArgumentError("path", f"needs a file suffix that names the image format (e.g. .png), got {str(path)!r}")
    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt, dpi=dpi if dpi is not None else "figure")
    return atomic_write_bytes(path, buffer.getvalue())


def lambda_grid(lambda_range: tuple[float, float] = (1e-2, 1e2), num: int = 121) -> np.ndarray:
    """Log-spaced data variances ``lambda`` for :func:`plot_expansion_heatmap`, shape ``(num,)``.

    Args:
      lambda_range: ``(min, max)`` with ``0 < min < max``.
      num: number of points, ``>= 2``.
    """
    lo, hi = (float(v) for v in lambda_range)
    if not (np.isfinite(lo) and np.isfinite(hi) and 0 < lo < hi):
        raise ArgumentError("lambda_range", f"expected (min, max) with 0 < min < max, got {tuple(lambda_range)!r}")
    if int(num) < 2:
        raise ArgumentError("num", f"expected at least 2 points, got {num!r}")
    return np.geomspace(lo, hi, int(num))


# ----------------------------------------------------------------------------- helpers


def _chains(schedules: Any, grid: GridLike) -> list[tuple[str | None, Schedule, np.ndarray]]:
    """Normalise the ``schedules`` argument to ``[(label, schedule, grid)]``."""
    if isinstance(schedules, Schedule):
        return [(None, schedules, np.asarray(as_grid(grid, schedules.T)))]
    if isinstance(schedules, Mapping):
        if grid is not None:
            raise ArgumentError("grid", "pass per-chain grids as label -> (Schedule, grid) when schedules is a mapping")
        chains = []
        for label, value in schedules.items():
            sched, sub_grid = value if isinstance(value, tuple) else (value, None)
            if not isinstance(sched, Schedule):
                raise ArgumentError(
                    "schedules", f"entry {label!r} must be a Schedule or (Schedule, grid), got {type(sched).__name__}"
                )
            chains.append((str(label), sched, np.asarray(as_grid(sub_grid, sched.T))))
        if not chains:
            raise ArgumentError("schedules", "the mapping is empty")
        return chains
    raise ArgumentError(
        "schedules",
        f"expected a Schedule or a mapping label -> Schedule | (Schedule, grid), got {type(schedules).__name__}",
    )


def _target(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    if ax is None:
        return new_figure(figsize=figsize)
    return ax.figure, ax  # pyright: ignore[reportReturnType]  # a SubFigure's Axes gives the SubFigure


def _finish(ax: Axes, labelled: bool, title: str | None) -> None:
    if labelled:
        ax.legend(frameon=False, fontsize="small")
    if title:
        ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)


# ----------------------------------------------------------------------------- figures


def plot_contraction_threshold(
    schedules: Any,
    grid: GridLike = None,
    *,
    ax: Axes | None = None,
    log_scale: bool = True,
    title: str | None = "Contraction threshold $L^*_t$",
) -> Figure:
    """``L*_t = (sigma_s + a_t sigma_t)/(1 + a_t)`` against the step's start ``t = tau_i``.

    A step contracts when the noise predictor's Lipschitz constant is below ``L*_t``. The finest
    step (``t = tau_1``) has ``L* ~ sigma_1/2``, far below the rest, hence the log scale.

    Args:
      schedules: a Schedule, or a mapping ``label -> Schedule | (Schedule, grid)``.
      grid: the sampling grid for a single Schedule (``None`` = every training step).
      ax: draw into this Axes instead of a new figure.
      log_scale: logarithmic ``L*`` axis.
      title: axes title (``None`` for none).

    Returns:
      The Figure.
    """
    chains = _chains(schedules, grid)
    fig, ax = _target(ax, (6.4, 4.0))
    for label, sched, g in chains:
        lstar = np.asarray(contraction_threshold(sched, g), dtype=np.float64)
        ax.plot(g[1:], lstar, label=label, lw=1.4, marker="." if len(g) <= 101 else None)
    if log_scale:
        ax.set_yscale("log")
    ax.set_xlabel("timestep $t = \\tau_i$ (step $\\tau_i \\to \\tau_{i-1}$)")
    ax.set_ylabel("$L^*_t$")
    _finish(ax, chains[0][0] is not None, title)
    return fig


def plot_expansion_heatmap(
    sched: Schedule,
    grid: GridLike = None,
    *,
    lambda_range: tuple[float, float] = (1e-2, 1e2),
    num_lambdas: int = 121,
    ax: Axes | None = None,
    cmap: str = "RdBu_r",
    title: str | None = "Expansion factor $f_t(\\lambda)$",
) -> Figure:
    """Heat map of ``f_t(lambda)`` over the step's start ``t`` and ``log lambda``.

    ``f_t(lambda) = (sqrt(ab_s ab_t) lambda + sigma_s sigma_t) / (ab_t lambda + sigma_t^2)`` is the
    factor by which step ``t`` stretches a data direction of variance ``lambda`` under the optimal
    Gaussian denoiser. Colours diverge around ``f = 1`` (red: expands, blue: contracts); the
    colour range is symmetric, ``1 +- h`` with ``h`` the 99th percentile of ``|f - 1|``, so the
    finest step (where ``f_1(0) = 0``) does not wash out the rest of the chain (values beyond are
    clipped, shown by the colour bar's arrows). Overlaid: the per-step threshold ``lambda*(t)``
    (the contour ``f_t = 1``) and the Moran threshold ``lambda**`` (``prod_t f_t = 1``).

    Args:
      sched: the schedule.
      grid: sampling grid (``None`` = every training step).
      lambda_range: ``(min, max)`` data variances, log-spaced.
      num_lambdas: number of variances.
      ax: draw into this Axes instead of a new figure.
      cmap: a diverging colour map.
      title: axes title.

    Returns:
      The Figure.
    """
    if not isinstance(sched, Schedule):
        raise ArgumentError("sched", f"expected a pifs_jax Schedule, got {type(sched).__name__}")
    g = np.asarray(as_grid(grid, sched.T))
    lam = lambda_grid(lambda_range, num_lambdas)
    f = np.asarray(expansion_factor(sched, lam, g), dtype=np.float64)  # (N, num_lambdas)
    lam_star = np.asarray(expansion_threshold(sched, g), dtype=np.float64)
    lam_star_star = float(moran_threshold(sched, g))
    t = g[1:]

    deviation = np.abs(f - 1.0)
    half_range = float(np.nanpercentile(deviation, 99.0)) or float(np.nanmax(deviation)) or 1e-12
    fig, ax = _target(ax, (7.0, 4.4))
    mesh = ax.pcolormesh(
        t, lam, f.T, cmap=cmap, norm=CenteredNorm(vcenter=1.0, halfrange=half_range), shading="nearest"
    )
    ax.set_yscale("log")
    ax.plot(t, lam_star, color="black", lw=1.3, label="$\\lambda^*(t)$: $f_t = 1$")
    ax.axhline(lam_star_star, color="black", ls="--", lw=1.0, label=f"$\\lambda^{{**}} = {lam_star_star:.5g}$")
    ax.set_ylim(lam[0], lam[-1])
    ax.set_xlabel("timestep $t = \\tau_i$")
    ax.set_ylabel("data variance $\\lambda$")
    cbar = fig.colorbar(mesh, ax=ax, extend="both")
    cbar.set_label("$f_t(\\lambda)$ (centred at 1)")
    ax.legend(frameon=True, fontsize="small", loc="upper right")
    if title:
        ax.set_title(title)
    return fig


def plot_expansion_threshold(
    schedules: Any,
    grid: GridLike = None,
    *,
    ax: Axes | None = None,
    show_moran: bool = True,
    log_scale: bool = True,
    title: str | None = "Per-step expansion threshold $\\lambda^*(t)$",
) -> Figure:
    """``lambda*(t) = sigma_t (1 + a_t)/(sigma_t + sigma_s)`` against ``t``, with ``lambda**``.

    Directions whose variance exceeds ``lambda*(t)`` expand in step ``t``; about 1 mid-chain and
    ``1 + a_1 ~ 2`` at the finest step. The dashed line is the chain's Moran threshold ``lambda**``.

    Args:
      schedules: a Schedule, or a mapping ``label -> Schedule | (Schedule, grid)``.
      grid: the sampling grid for a single Schedule.
      ax: draw into this Axes instead of a new figure.
      show_moran: draw ``lambda**`` for each chain.
      log_scale: logarithmic ``lambda*`` axis (a clipped last cosine beta gives ``lambda* ~ 16``).
      title: axes title.

    Returns:
      The Figure.
    """
    chains = _chains(schedules, grid)
    fig, ax = _target(ax, (6.4, 4.0))
    for label, sched, g in chains:
        lam_star = np.asarray(expansion_threshold(sched, g), dtype=np.float64)
        (line,) = ax.plot(g[1:], lam_star, label=label, lw=1.4)
        if show_moran:
            value = float(moran_threshold(sched, g))
            prefix = f"{label}: " if label is not None else ""
            ax.axhline(value, color=line.get_color(), ls="--", lw=0.9, label=f"{prefix}$\\lambda^{{**}} = {value:.5g}$")
    if log_scale:
        ax.set_yscale("log")
    ax.set_xlabel("timestep $t = \\tau_i$")
    ax.set_ylabel("$\\lambda^*(t)$")
    _finish(ax, True, title)
    return fig


def plot_log_snr(
    schedules: Any,
    grid: GridLike = None,
    *,
    ax: Axes | None = None,
    title: str | None = "$\\log \\mathrm{SNR}_t$",
) -> Figure:
    """``logSNR_t = log(alpha_bar_t / (1 - alpha_bar_t))`` at the grid points ``t = tau_1..tau_N``.

    (``t = 0`` has ``logSNR = +inf`` and is left out.)

    Args:
      schedules: a Schedule, or a mapping ``label -> Schedule | (Schedule, grid)``.
      grid: the sampling grid for a single Schedule.
      ax: draw into this Axes instead of a new figure.
      title: axes title.

    Returns:
      The Figure.
    """
    chains = _chains(schedules, grid)
    fig, ax = _target(ax, (6.4, 4.0))
    for label, sched, g in chains:
        log_snr = np.asarray(sched.log_snr, dtype=np.float64)[g[1:]]
        ax.plot(g[1:], log_snr, label=label, lw=1.4)
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_xlabel("timestep $t$")
    ax.set_ylabel("$\\log \\mathrm{SNR}_t$")
    _finish(ax, chains[0][0] is not None, title)
    return fig

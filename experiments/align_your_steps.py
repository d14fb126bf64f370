"""Align Your Steps versus the balanced-workload grid (design criterion 3, docs/theory.md section 9).

The paper claims that Align Your Steps (Sabour et al. 2024) approximately solves criterion 3:
place the sampling steps where ``L*_t`` is smallest so that each does an equal share of the
contraction work. Here, on Stable Diffusion's ``scaled_linear`` schedule (T = 1000, float64):

- the criterion-3 grid for 10 steps, from :func:`pifs_jax.optimize.optimize_grid` (gradient
  descent on the continuous relaxation, rounded and polished), with the per-step work
  ``W_i = sum_{tau_{i-1} < u <= tau_i} 1/L*_u`` (:mod:`pifs_jax.criteria` explains the choice);
  checked against the closed form :func:`pifs_jax.criteria.equal_work_times`;
- the published 10-step AYS lists for SD 1.5 and SDXL (:data:`pifs_jax.AYS_SD15`,
  :data:`pifs_jax.AYS_SDXL`, diffusers indexing; our grid point is the diffusers timestep + 1);
- baselines: uniform (= diffusers ``trailing``), diffusers ``leading`` and ``linspace``, and the
  grid of the alternative work definition ``|b_u|`` (closed form, rounded).

Distances, over the 10 grid points ``tau_1..tau_10`` (``tau_0 = 0`` is shared): the mean
absolute timestep difference ``mean_i |tau_i - tau'_i|`` (training steps) and the mean absolute
logSNR difference ``mean_i |logSNR(tau_i) - logSNR(tau'_i)|`` (nats). Each grid's own imbalance
``CV(W)`` is reported as well. Finally the one-parameter family "step density proportional to
``L*^-p``" (``p = 0``: uniform, ``p = 1``: criterion 3) is fitted to each AYS list (the ``p`` that
minimises the mean absolute timestep difference), which says where AYS sits between the two.

Writes ``<out>/align_your_steps/align_your_steps.json``, ``timesteps.png`` and ``work.png``.
Run alone with ``python experiments/align_your_steps.py --out results``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import jax
import numpy as np

import pifs_jax as pj
from pifs_jax import criteria, optimize, plotting
from pifs_jax.reproduce import experiment_main, markdown_table
from pifs_jax.results import write_result_json

NAME = "align_your_steps"
TITLE = "Align Your Steps versus the balanced-workload grid (criterion 3)"

T = 1000
NUM_STEPS = 10
#: The published lists (diffusers indexing), docs/theory.md section 9.
PAPER = {"AYS_SD15": list(pj.AYS_SD15), "AYS_SDXL": list(pj.AYS_SDXL)}
#: Exponents scanned for the density ``L*^-p`` fitted to each AYS list.
EXPONENTS = np.round(np.arange(0.0, 1.5001, 0.01), 2)


def _density_grid(lstar: np.ndarray, p: float) -> np.ndarray:
    """Integer grid with equal ``sum_u L*_u^-p`` per step (rounded closed form, float64)."""
    cumulative = np.concatenate([[0.0], np.cumsum(lstar ** (-p))])
    times = np.interp(np.arange(NUM_STEPS + 1) / NUM_STEPS * cumulative[-1], cumulative, np.arange(T + 1))
    return optimize.round_grid(times, last=T)


def compute() -> dict[str, Any]:
    """All numbers of the experiment (float64)."""
    with jax.enable_x64(True):
        sched = pj.scaled_linear(T)
        log_snr = np.asarray(sched.log_snr, dtype=np.float64)
        lstar = np.asarray(pj.contraction_threshold(sched), dtype=np.float64)
        result = optimize.optimize_grid(sched, NUM_STEPS, iterations=300, learning_rate=0.1)
        closed_form = np.asarray(criteria.equal_work_times(sched, NUM_STEPS), dtype=np.float64)
        grids = {
            "criterion 3 (work 1/L*)": result.grid,
            "criterion 3, work |b_u|": optimize.round_grid(
                np.asarray(criteria.equal_work_times(sched, NUM_STEPS, kind="score_coefficient")), last=T
            ),
            "AYS SD 1.5": pj.align_your_steps_grid("sd15"),
            "AYS SDXL": pj.align_your_steps_grid("sdxl"),
            "uniform (= trailing)": pj.uniform_grid(T, NUM_STEPS),
            "diffusers leading": pj.diffusers_grid(T, NUM_STEPS, spacing="leading"),
            "diffusers linspace": pj.diffusers_grid(T, NUM_STEPS, spacing="linspace"),
        }
        rows = {}
        for label, grid in grids.items():
            grid = np.asarray(grid)
            wl = criteria.workload(sched, grid)
            entry = {
                "grid": grid,
                "diffusers_timesteps": optimize.grid_to_diffusers_timesteps(grid),
                "cv_work": float(wl.cv),
                "work": np.asarray(wl.work),
            }
            for ref in ("AYS SD 1.5", "AYS SDXL"):
                other = np.asarray(grids[ref])
                entry[f"mean_abs_dt_vs_{ref}"] = float(np.mean(np.abs(grid[1:] - other[1:])))
                entry[f"max_abs_dt_vs_{ref}"] = int(np.max(np.abs(grid[1:] - other[1:])))
                entry[f"mean_abs_dlogsnr_vs_{ref}"] = float(np.mean(np.abs(log_snr[grid[1:]] - log_snr[other[1:]])))
            rows[label] = entry
        fits = {}
        for ref in ("AYS SD 1.5", "AYS SDXL"):
            other = np.asarray(grids[ref])
            distances = np.array([np.mean(np.abs(_density_grid(lstar, p)[1:] - other[1:])) for p in EXPONENTS])
            best = int(np.argmin(distances))
            fits[ref] = {
                "p": float(EXPONENTS[best]),
                "mean_abs_dt": float(distances[best]),
                "grid": _density_grid(lstar, float(EXPONENTS[best])),
                "distances": distances,
            }
    return {
        "grids": rows,
        "optimizer": {
            "times": result.times,
            "closed_form_times": closed_form,
            "max_abs_difference_to_closed_form": float(np.max(np.abs(result.times - closed_form))),
            "relaxed_cv": result.relaxed_cv,
            "cv": result.cv,
            "uniform_cv": result.initial_cv,
        },
        "density_exponent_fit": fits,
        "exponents": EXPONENTS,
        "paper": PAPER,
    }


def _markdown(results: dict[str, Any]) -> str:
    rows = results["grids"]
    table = markdown_table(
        [
            "grid",
            "timesteps (diffusers indexing)",
            "CV(W)",
            "mean \\|Δt\\| vs SD 1.5",
            "mean \\|ΔlogSNR\\| vs SD 1.5",
            "mean \\|Δt\\| vs SDXL",
            "mean \\|ΔlogSNR\\| vs SDXL",
        ],
        [
            (
                label,
                ", ".join(str(int(v)) for v in r["diffusers_timesteps"]),
                r["cv_work"],
                f"{r['mean_abs_dt_vs_AYS SD 1.5']:.1f}",
                f"{r['mean_abs_dlogsnr_vs_AYS SD 1.5']:.3f}",
                f"{r['mean_abs_dt_vs_AYS SDXL']:.1f}",
                f"{r['mean_abs_dlogsnr_vs_AYS SDXL']:.3f}",
            )
            for label, r in rows.items()
        ],
        digits=3,
    )
    ours = rows["criterion 3 (work 1/L*)"]
    uniform = rows["uniform (= trailing)"]
    sd15, sdxl = rows["AYS SD 1.5"], rows["AYS SDXL"]
    fits = results["density_exponent_fit"]
    opt = results["optimizer"]
    closer_xl = ours["mean_abs_dt_vs_AYS SDXL"] < uniform["mean_abs_dt_vs_AYS SDXL"]
    closer_15 = ours["mean_abs_dt_vs_AYS SD 1.5"] < uniform["mean_abs_dt_vs_AYS SD 1.5"]
    comparison = markdown_table(
        ["claim", "paper", "ours", "agreement"],
        [
            (
                "AYS (SDXL) ≈ criterion-3 allocation",
                "AYS approximately balances contraction work",
                f"mean |Δt| {ours['mean_abs_dt_vs_AYS SDXL']:.1f} steps (uniform: "
                f"{uniform['mean_abs_dt_vs_AYS SDXL']:.1f}); best-fitting density L\\*^-p: p = {fits['AYS SDXL']['p']:.2f}",
                "partly: closer than uniform" if closer_xl else "no: uniform is closer",
            ),
            (
                "AYS (SD 1.5) ≈ criterion-3 allocation",
                "AYS approximately balances contraction work",
                f"mean |Δt| {ours['mean_abs_dt_vs_AYS SD 1.5']:.1f} steps (uniform: "
                f"{uniform['mean_abs_dt_vs_AYS SD 1.5']:.1f}); best-fitting density L\\*^-p: p = {fits['AYS SD 1.5']['p']:.2f}",
                "partly: closer than uniform" if closer_15 else "no: uniform is closer",
            ),
            (
                "AYS grids are more balanced than uniform steps (CV of the work)",
                "(implied)",
                f"SDXL {sdxl['cv_work']:.3f}, SD 1.5 {sd15['cv_work']:.3f}, uniform {uniform['cv_work']:.3f}, "
                f"criterion 3 {ours['cv_work']:.3f}",
                "yes" if max(sdxl["cv_work"], sd15["cv_work"]) < uniform["cv_work"] else "no",
            ),
        ],
    )
    return (
        "Stable Diffusion's `scaled_linear` schedule, T = 1000, 10 sampling steps (float64). The criterion-3 "
        "grid equalises the contraction work `W_i = Σ_{τ_{i-1} < u ≤ τ_i} 1/L*_u` (the definition is ours; "
        "docs/theory.md leaves the objective open). It comes from gradient descent on the continuous relaxation "
        f"(relaxed CV {opt['relaxed_cv']:.1e}; largest difference to the closed-form optimum "
        f"{opt['max_abs_difference_to_closed_form']:.2e} steps) rounded to integers (CV {opt['cv']:.4f}, "
        f"uniform grid: {opt['uniform_cv']:.3f}). Distances are over τ_1..τ_10; `CV(W)` is each grid's own "
        "imbalance under this criterion.\n\n"
        + table
        + "\n\nStep density `∝ L*^-p` fitted to the published lists (p = 0: uniform, p = 1: criterion 3): "
        + ", ".join(
            f"{ref}: p = {fit['p']:.2f} (mean \\|Δt\\| {fit['mean_abs_dt']:.1f}, grid "
            f"{', '.join(str(int(v)) for v in optimize.grid_to_diffusers_timesteps(fit['grid']))})"
            for ref, fit in fits.items()
        )
        + ". Both AYS lists concentrate steps at low noise like the criterion, but less strongly: they sit "
        "between uniform spacing and the balanced-work allocation, SDXL's much closer to it than SD 1.5's.\n\n"
        + "Comparison with the paper:\n\n"
        + comparison
    )


def _figures(results: dict[str, Any], out: Path) -> list[str]:
    rows = results["grids"]
    shown = ("criterion 3 (work 1/L*)", "AYS SD 1.5", "AYS SDXL", "uniform (= trailing)")
    fig, ax = plotting.new_figure(figsize=(6.4, 4.0))
    for label in shown:
        grid = np.asarray(rows[label]["grid"])
        ax.plot(np.arange(len(grid)), grid, marker="o", lw=1.3, label=label)
    ax.set_xlabel("grid index $i$ ($\\tau_0 = 0$ is clean data)")
    ax.set_ylabel("timestep $\\tau_i$ (this package's indexing)")
    ax.set_title("10-step grids on scaled_linear (T = 1000)", fontsize="small")
    ax.legend(frameon=False, fontsize="small")
    ax.grid(True, alpha=0.3)
    plotting.save_figure(fig, out / "timesteps.png")

    fig, ax = plotting.new_figure(figsize=(6.4, 4.0))
    width = 0.2
    for k, label in enumerate(shown):
        work = np.asarray(rows[label]["work"])
        ax.bar(
            np.arange(1, len(work) + 1) + (k - 1.5) * width,
            work,
            width=width,
            label=f"{label} (CV {rows[label]['cv_work']:.2f})",
        )
    ax.set_yscale("log")
    ax.set_xlabel("sampling step $i$ ($\\tau_i \\to \\tau_{i-1}$)")
    ax.set_ylabel("work $W_i = \\sum_u 1/L^*_u$")
    ax.set_title("contraction work per step", fontsize="small")
    ax.legend(frameon=False, fontsize="x-small")
    ax.grid(True, axis="y", alpha=0.3)
    plotting.save_figure(fig, out / "work.png")
    return [f"{NAME}/timesteps.png", f"{NAME}/work.png"]


def run(out_dir: Path, *, quick: bool = False) -> dict[str, Any]:
    """Compute, write ``align_your_steps.json`` and the figures, return the report section.

    ``quick`` changes nothing (the experiment takes a few seconds on a CPU).
    """
    out = Path(out_dir) / NAME
    results = compute()
    write_result_json(
        out / "align_your_steps.json",
        results,
        config={
            "experiment": NAME,
            "schedule": "scaled_linear",
            "T": T,
            "num_steps": NUM_STEPS,
            "work": "inverse_threshold (1/L*_u), alternative score_coefficient (|b_u|)",
            "x64": True,
            "quick": quick,
        },
    )
    figures = _figures(results, out)
    rows = results["grids"]
    ours = rows["criterion 3 (work 1/L*)"]
    fits = results["density_exponent_fit"]
    return {
        "markdown": _markdown(results),
        "figures": figures,
        "summary": (
            f"criterion-3 grid vs AYS: mean |Δt| {ours['mean_abs_dt_vs_AYS SDXL']:.0f} (SDXL), "
            f"{ours['mean_abs_dt_vs_AYS SD 1.5']:.0f} (SD 1.5); AYS ≈ density L*^-p with p = "
            f"{fits['AYS SDXL']['p']:.2f} (SDXL), {fits['AYS SD 1.5']['p']:.2f} (SD 1.5), criterion 3 is p = 1"
        ),
        "results": results,
    }


def main(argv: list[str] | None = None) -> int:
    return experiment_main(NAME, __doc__, run, quick_help="accepted for the runner's contract (no effect)", argv=argv)


if __name__ == "__main__":
    sys.exit(main())

"""Schedule geometry of the paper's chains: contraction thresholds, lambda** and the cosine offset.

Model-free quantities (docs/theory.md sections 4 and 9) for the 1000-step training chains of the
linear (DDPM), cosine ``s = 0`` and cosine ``s = 0.008`` schedules, and for the 50-step DDIM
chain on the cosine ``s = 0`` schedule (``tau_i = 20 i``):

- ``L*_t = (sigma_s + a_t sigma_t)/(1 + a_t)``: mean, coefficient of variation (population
  std / mean), minimum and its value at the finest step (``L*_1 = a_1 sigma_1/(1 + a_1) ~ sigma_1/2``);
- ``lambda**``, the root of ``sum_t log f_t(lambda) = 0`` (paper: 1.0024 for its 1000-step chain);
- the cosine-offset gain ``L*_1(s = 0.008) / L*_1(s = 0)`` (paper: "about four-fold").

Everything is computed in float64. Writes ``<out>/schedule_geometry/schedule_geometry.json`` and
the figures ``lstar.png`` (``L*_t`` of the three training chains) and
``expansion_heatmap_cosine.png`` (``f_t(lambda)`` of the cosine ``s = 0.008`` chain).

Run alone with ``python experiments/schedule_geometry.py --out results``, or through
``pifs-jax reproduce --only schedule_geometry``.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import jax
import numpy as np

import pifs_jax as pj
from pifs_jax import plotting
from pifs_jax.reproduce import experiment_main, format_value, markdown_table
from pifs_jax.results import write_result_json
from pifs_jax.typing import GridLike

NAME = "schedule_geometry"
TITLE = "Schedule geometry: contraction thresholds L*_t, Moran threshold lambda** and the cosine offset"

#: Values the paper reports (docs/theory.md sections 4 and 9).
PAPER = {
    "lambda_star_star_1000_step": 1.0024,
    "cosine_offset_gain": 4.0,  # "about four-fold"
}

T = 1000
DDIM_STEPS = 50

#: key -> (label, schedule factory, grid factory); grid None = every training step.
CHAINS: dict[str, tuple[str, Any, Any]] = {
    "linear": ("linear, 1000 steps", lambda: pj.linear(T), lambda: None),
    "cosine_s0": ("cosine s = 0, 1000 steps", lambda: pj.cosine(T, s=0.0), lambda: None),
    "cosine_s0.008": ("cosine s = 0.008, 1000 steps", lambda: pj.cosine(T, s=0.008), lambda: None),
    "ddim50_cosine_s0": (
        "cosine s = 0, 50 DDIM steps (tau_i = 20 i)",
        lambda: pj.cosine(T, s=0.0),
        lambda: pj.uniform_grid(T, DDIM_STEPS),
    ),
}


def chain_geometry(sched: pj.Schedule, grid: GridLike = None) -> dict[str, Any]:
    """Summaries of one chain: ``L*_t`` statistics, ``lambda*`` at the ends, ``lambda**``.

    Returns:
      A dict of Python floats/ints (JSON-ready) plus the per-step arrays ``t`` and ``lstar``.
    """
    g = np.asarray(pj.full_grid(sched.T) if grid is None else grid)
    summary = pj.contraction_summary(sched, g)
    lstar = np.asarray(pj.contraction_threshold(sched, g))
    lam_star = np.asarray(pj.expansion_threshold(sched, g))
    argmin = int(summary.argmin)
    return {
        "num_steps": int(len(g) - 1),
        "lstar_mean": float(summary.mean),
        "lstar_cv": float(summary.cv),
        "lstar_min": float(summary.min),
        "lstar_argmin_t": int(g[1:][argmin]),
        "lstar_finest": float(summary.finest),
        "sigma_finest": float(np.asarray(sched.sigma)[g[1]]),
        "lambda_star_finest": float(lam_star[0]),
        "lambda_star_median": float(np.median(lam_star)),
        "lambda_star_star": float(pj.moran_threshold(sched, g)),
        "t": g[1:],
        "lstar": lstar,
    }


def compute() -> dict[str, Any]:
    """All numbers of the experiment, in float64."""
    with jax.enable_x64(True):
        chains = {}
        for key, (label, make_schedule, make_grid) in CHAINS.items():
            chains[key] = {"label": label, **chain_geometry(make_schedule(), make_grid())}
        gain = chains["cosine_s0.008"]["lstar_finest"] / chains["cosine_s0"]["lstar_finest"]
        most_uniform = min(("linear", "cosine_s0", "cosine_s0.008"), key=lambda k: chains[k]["lstar_cv"])
    return {
        "chains": chains,
        "cosine_offset_gain": gain,
        "most_uniform_lstar_1000_step": most_uniform,
        "paper": PAPER,
    }


def _markdown(results: dict[str, Any]) -> str:
    chains = results["chains"]
    rows = []
    for key, c in chains.items():
        paper = PAPER["lambda_star_star_1000_step"] if key.startswith("cosine") else None
        rows.append(
            (
                c["label"],
                c["num_steps"],
                c["lstar_mean"],
                c["lstar_cv"],
                f"{format_value(c['lstar_min'])} (t = {c['lstar_argmin_t']})",
                c["lstar_finest"],
                f"{c['lambda_star_star']:.6f}",
                "—" if paper is None else f"{paper}",
            )
        )
    main = markdown_table(
        ["chain", "N", "mean L\\*", "CV(L\\*)", "min L\\*", "L\\* finest", "λ\\*\\* (ours)", "λ\\*\\* (paper)"], rows
    )
    cos0, cos8 = chains["cosine_s0"], chains["cosine_s0.008"]
    paper_lss = PAPER["lambda_star_star_1000_step"]
    diff = abs(cos0["lambda_star_star"] - paper_lss)
    truncated = math.floor(cos0["lambda_star_star"] * 1e4) / 1e4
    lss_note = (
        f"|Δ| = {diff:.1e}; the paper's figure is ours truncated to 4 decimals"
        if abs(truncated - paper_lss) < 1e-9
        else f"|Δ| = {diff:.1e}" + ("" if diff < 5e-4 else " — MISMATCH")
    )
    lam_star_ok = all(
        abs(c["lambda_star_median"] - 1) < 0.1 and abs(c["lambda_star_finest"] - 2) < 0.05 for c in chains.values()
    )
    gain = results["cosine_offset_gain"]
    comparison = markdown_table(
        ["claim", "paper", "ours", "agreement"],
        [
            (
                "λ\\*\\* of the 1000-step (cosine) chain",
                paper_lss,
                f"{cos0['lambda_star_star']:.6f} (s = 0), {cos8['lambda_star_star']:.6f} (s = 0.008)",
                lss_note,
            ),
            (
                "cosine offset gain L\\*_1(s = 0.008) / L\\*_1(s = 0)",
                "about four-fold",
                f"{gain:.4f}",
                "yes" if 3.5 <= gain <= 4.5 else "NO",
            ),
            (
                "finest step is the weakest link, L\\*_1 ≈ σ_1/2",
                "L\\*_1 ~ σ_1/2",
                ", ".join(
                    f"{k}: L\\*_1/(σ_1/2) = {c['lstar_finest'] / (c['sigma_finest'] / 2):.4f}"
                    for k, c in chains.items()
                ),
                "yes" if all(c["lstar_argmin_t"] == c["t"][0] for c in chains.values()) else "NO (minimum elsewhere)",
            ),
            (
                "λ\\*(t): about 1 mid-chain (median), about 2 at the finest step",
                "≈ 1 / ≈ 2",
                ", ".join(
                    f"{k}: {c['lambda_star_median']:.4f} / {c['lambda_star_finest']:.4f}" for k, c in chains.items()
                ),
                "yes" if lam_star_ok else "NO",
            ),
            (
                "most uniform L\\*_t among the 1000-step chains (lowest CV)",
                "linear",
                results["most_uniform_lstar_1000_step"],
                "yes" if results["most_uniform_lstar_1000_step"] == "linear" else "NO",
            ),
        ],
    )
    return (
        "Model-free geometry of the DDIM chain computed from the schedule alone (float64). "
        "`L*_t = (σ_s + a_t σ_t)/(1 + a_t)` is the per-step contraction threshold; CV is the "
        "population standard deviation over the mean; `λ**` solves `Σ_t log f_t(λ) = 0`.\n\n"
        + main
        + "\n\nComparison with the paper:\n\n"
        + comparison
    )


def run(out_dir: Path, *, quick: bool = False) -> dict[str, Any]:
    """Compute, write ``schedule_geometry.json`` and the figures, and return the report section.

    ``quick`` only coarsens the heat map's ``lambda`` axis; the numbers are the same (seconds on
    a CPU).
    """
    out = Path(out_dir) / NAME
    results = compute()
    write_result_json(
        out / "schedule_geometry.json",
        results,
        config={
            "experiment": NAME,
            "T": T,
            "ddim_steps": DDIM_STEPS,
            "chains": {k: v[0] for k, v in CHAINS.items()},
            "x64": True,
            "quick": quick,
        },
    )
    with jax.enable_x64(True):
        fig = plotting.plot_contraction_threshold(
            {CHAINS[k][0]: CHAINS[k][1]() for k in ("linear", "cosine_s0", "cosine_s0.008")},
            title="$L^*_t$ of the 1000-step training chains",
        )
        plotting.save_figure(fig, out / "lstar.png")
        fig = plotting.plot_expansion_heatmap(
            pj.cosine(T, s=0.008),
            num_lambdas=61 if quick else 161,
            title="$f_t(\\lambda)$, cosine $s = 0.008$, 1000 steps",
        )
        plotting.save_figure(fig, out / "expansion_heatmap_cosine.png")
    cos0 = results["chains"]["cosine_s0"]
    return {
        "markdown": _markdown(results),
        "figures": [f"{NAME}/lstar.png", f"{NAME}/expansion_heatmap_cosine.png"],
        "summary": (
            f"λ\\*\\* = {cos0['lambda_star_star']:.5f} (paper 1.0024); offset gain "
            f"{results['cosine_offset_gain']:.2f} (paper ~4)"
        ),
        "results": results,
    }


def main(argv: list[str] | None = None) -> int:
    return experiment_main(NAME, __doc__, run, quick_help="coarser heat map (the numbers are unchanged)", argv=argv)


if __name__ == "__main__":
    sys.exit(main())

"""The information-gain table: how evenly linear and cosine chains add information and dimension.

docs/theory.md section 8, criterion 2: uniform per-step information gain ``IG_t`` is equivalent to
uniform per-step dimension growth ``Delta d_t`` (Cauchy-Schwarz, "nearly tight in practice");
the paper reports for the 1000-step chains CV(IG) 1.107 (linear) vs 0.867 (cosine), CV(|Delta d|)
0.836 vs 0.570 and Spearman(IG, Delta d) about 0.9999.

The paper's patch variances and its exact definitions are not available. Used here:

- **variances** (main): the per-patch covariance spectra of 32x32x3 crops of the scikit-image
  photographs (:func:`pifs_jax.data.load_dataset` ``"photos32"``, 4096 crops; 1024 in quick mode),
  cut into the paper's CIFAR-10 geometry of ``M = 16`` patches of 8x8x3 (``n_k = 192``):
  :func:`pifs_jax.data.patch_stats` gives 16 x 192 eigenvalues, the block-diagonal Gaussian
  model's 3072 variances. Sensitivity: pooled 8x8x3 window spectra of the whole photographs at
  two resolutions, and power laws ``lambda_i ~ i^-alpha`` (192 values, mean pixel variance 0.25).
- **IG_t** (main): the package's Gaussian mutual-information gain
  ``1/2 sum_k log((1 + SNR_s lambda_k)/(1 + SNR_t lambda_k))`` (:func:`pifs_jax.information_gain`).
  Variant: ``H_t``, the marginal entropy gain ``1/2 sum_{k: lambda_k > lambda**} log(v_s/v_t)`` over the
  expanding directions (:func:`pifs_jax.heuristics.marginal_entropy_gain`), the Cauchy-Schwarz
  upper bound of the Kaplan-Yorke numerator's step term, which is what "Cauchy-Schwarz, nearly
  tight" relates to ``Delta d``.
- **Delta d_t**: :func:`pifs_jax.dimension_growth` (the step's share of the Kaplan-Yorke numerator).
- **Summaries**: :func:`pifs_jax.criteria.growth_balance` (population CV), over steps
  ``t = 2..1000``: the step landing on ``alpha_bar = 1`` is excluded because its IG is infinite
  (it recovers continuous data exactly). Spearman by :func:`pifs_jax.heuristics.spearman_correlation`.

Writes ``<out>/information_gain/information_gain.json`` and ``per_step_profiles.png``.
Run alone with ``python experiments/information_gain.py --out results``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import jax
import numpy as np

import pifs_jax as pj
from pifs_jax import data, plotting
from pifs_jax.criteria import coefficient_of_variation, growth_balance
from pifs_jax.heuristics import marginal_entropy_gain, photo_patch_spectrum, power_law_variances, spearman_correlation
from pifs_jax.reproduce import experiment_main, markdown_table
from pifs_jax.results import write_result_json

NAME = "information_gain"
TITLE = "Information-gain table: CV(IG), CV(|Δd|) and Spearman(IG, Δd) for linear and cosine chains"

PAPER = {
    "cv_information": {"linear": 1.107, "cosine": 0.867},
    "cv_abs_growth": {"linear": 0.836, "cosine": 0.570},
    "spearman": 0.9999,
}

T = 1000
SEED = 0
SCHEDULES = {
    "linear": ("linear (DDPM)", lambda: pj.linear(T)),
    "cosine": ("cosine s = 0.008", lambda: pj.cosine(T, s=0.008)),
    "cosine_s0": ("cosine s = 0", lambda: pj.cosine(T, s=0.0)),
}


def photos32_spectrum(*, num_crops: int, seed: int = SEED) -> np.ndarray:
    """The 16 x 192 per-patch eigenvalues of ``num_crops`` photos32 crops, flattened to ``(3072,)``."""
    crops = data.load_dataset("photos32", jax.random.key(seed), num_crops)
    return np.asarray(data.patch_stats(crops, patch_size=8).eigenvalues, dtype=np.float64).ravel()


def spectra(*, quick: bool) -> dict[str, tuple[str, np.ndarray]]:
    """``key -> (description, variances)``; the first entry is the main one."""
    out = {
        "photos32": (
            f"photos32 crops, 16 patches of 8x8x3, per-patch spectra ({1024 if quick else 4096} crops)",
            photos32_spectrum(num_crops=1024 if quick else 4096),
        ),
        "pooled_d256": (
            "whole photographs /2 (d ≈ 256), pooled 8x8x3 windows",
            photo_patch_spectrum(downsample=2, patch_size=8, stride=4).eigenvalues,
        ),
        "pooled_d32": (
            "whole photographs /16 (d ≈ 32), pooled 8x8x3 windows",
            photo_patch_spectrum(downsample=16, patch_size=8, stride=1).eigenvalues,
        ),
    }
    for alpha in (1.0, 2.0) if quick else (1.0, 1.5, 2.0):
        out[f"power_{alpha:g}"] = (
            f"power law i^-{alpha:g}, 192 values, mean 0.25",
            power_law_variances(192, exponent=alpha),
        )
    return out


def chain_table(sched: pj.Schedule, variances: np.ndarray) -> dict[str, Any]:
    """CV(IG), CV(|Δd|), Spearman for one schedule and spectrum (both IG definitions), steps 2..T."""
    balance = growth_balance(sched, variances)
    lam_ss = float(pj.moran_threshold(sched))
    expanding = variances[variances > lam_ss]
    growth = np.asarray(balance.growth)
    information = np.asarray(balance.information)
    entropy = np.asarray(marginal_entropy_gain(sched, expanding))[1:]
    return {
        "lambda_star_star": lam_ss,
        "num_expanding": int(expanding.size),
        "cv_information": float(balance.cv_information),
        "cv_abs_growth": float(balance.cv_abs_growth),
        "spearman": spearman_correlation(information, growth),
        "cv_entropy_gain": float(coefficient_of_variation(entropy)),
        "spearman_entropy_gain": spearman_correlation(entropy, growth),
        "growth_negative_steps": int(np.sum(growth < 0)),
        "information": information,
        "growth": growth,
        "entropy_gain": entropy,
    }


def compute(*, quick: bool) -> dict[str, Any]:
    with jax.enable_x64(True):
        specs = spectra(quick=quick)
        schedules = {k: f() for k, (_, f) in SCHEDULES.items()}
        tables = {}
        for key, (label, lam) in specs.items():
            tables[key] = {
                "label": label,
                "num_variances": int(lam.size),
                "mean_variance": float(lam.mean()),
                "chains": {name: chain_table(sched, lam) for name, sched in schedules.items()},
            }
    for spec in tables.values():
        for chain in spec["chains"].values():
            if spec is not tables["photos32"]:  # per-step arrays only for the main spectrum
                for k in ("information", "growth", "entropy_gain"):
                    chain.pop(k)
    ordering = {
        "cv_information": all(
            s["chains"]["cosine"]["cv_information"] < s["chains"]["linear"]["cv_information"] for s in tables.values()
        ),
        "cv_abs_growth": all(
            s["chains"]["cosine"]["cv_abs_growth"] < s["chains"]["linear"]["cv_abs_growth"] for s in tables.values()
        ),
        "cv_entropy_gain": all(
            s["chains"]["cosine"]["cv_entropy_gain"] < s["chains"]["linear"]["cv_entropy_gain"] for s in tables.values()
        ),
    }
    return {"spectra": tables, "cosine_more_uniform_everywhere": ordering, "paper": PAPER, "excluded_steps": [1]}


# ----------------------------------------------------------------------------- report


def _figure(results: dict[str, Any], path: Path) -> None:
    chains = results["spectra"]["photos32"]["chains"]
    t = np.arange(2, T + 1)
    fig, ax = plotting.new_figure(figsize=(6.6, 4.3))
    colours = {"linear": "tab:red", "cosine": "tab:blue"}
    for name in ("linear", "cosine"):
        c = chains[name]
        ig = np.asarray(c["information"])
        dd = np.abs(np.asarray(c["growth"]))
        h = np.asarray(c["entropy_gain"])
        ax.plot(t, ig / ig.mean(), color=colours[name], lw=1.3, label=f"IG_t (mutual information), {name}")
        ax.plot(t, dd / dd.mean(), color=colours[name], lw=1.3, ls="--", label=f"|Δd_t|, {name}")
        ax.plot(
            t, h / h.mean(), color=colours[name], lw=0.8, ls=":", label=f"H_t (entropy gain; on top of |Δd_t|), {name}"
        )
    ax.set_yscale("log")
    ax.set_ylim(1e-3, 1e3)
    ax.set_xlabel("timestep t (step t → t-1; t = 1 excluded)")
    ax.set_ylabel("per-step value / its mean over the chain")
    ax.set_title("photos32 per-patch spectra, 1000-step chains", fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    plotting.save_figure(fig, path)


def _pair(spec: dict[str, Any], key: str, fmt: str = "{:.3f}") -> str:
    return " / ".join(fmt.format(spec["chains"][name][key]) for name in ("linear", "cosine"))


def _markdown(results: dict[str, Any]) -> str:
    main = results["spectra"]["photos32"]
    paper = results["paper"]
    rows = []
    for name, (label, _) in SCHEDULES.items():
        c = main["chains"][name]
        family = "linear" if name == "linear" else "cosine"  # the paper gives one cosine value
        p_ig, p_dd = paper["cv_information"][family], paper["cv_abs_growth"][family]
        rows.append(
            (
                label,
                c["num_expanding"],
                f"{c['cv_information']:.3f}",
                f"{c['cv_entropy_gain']:.3f}",
                f"{p_ig:.3f}",
                f"{c['cv_abs_growth']:.3f}",
                f"{p_dd:.3f}",
                f"{c['spearman']:.4f}",
                f"{c['spearman_entropy_gain']:.5f}",
                paper["spearman"],
            )
        )
    main_table = markdown_table(
        [
            "1000-step chain",
            "expanding directions",
            "CV(IG) ours",
            "CV(H) ours",
            "CV(IG) paper",
            "CV(\\|Δd\\|) ours",
            "CV(\\|Δd\\|) paper",
            "Spearman(IG, Δd)",
            "Spearman(H, Δd)",
            "Spearman(IG, Δd) paper",
        ],
        rows,
    )
    sens_rows = [
        (
            s["label"],
            s["num_variances"],
            f"{s['mean_variance']:.3f}",
            s["chains"]["linear"]["num_expanding"],
            _pair(s, "cv_information"),
            _pair(s, "cv_entropy_gain"),
            _pair(s, "cv_abs_growth"),
            _pair(s, "spearman", "{:.3f}"),
            _pair(s, "spearman_entropy_gain", "{:.5f}"),
        )
        for s in results["spectra"].values()
    ]
    sens_table = markdown_table(
        [
            "variances",
            "count",
            "mean",
            "expanding",
            "CV(IG) lin / cos",
            "CV(H) lin / cos",
            "CV(\\|Δd\\|) lin / cos",
            "Spearman(IG, Δd) lin / cos",
            "Spearman(H, Δd) lin / cos",
        ],
        sens_rows,
    )
    lin, cos = main["chains"]["linear"], main["chains"]["cosine"]
    ordering = results["cosine_more_uniform_everywhere"]
    dd_all = [s["chains"][n]["cv_abs_growth"] for s in results["spectra"].values() for n in ("linear", "cosine")]
    comparison = markdown_table(
        ["claim", "paper", "ours (main spectrum)", "agreement"],
        [
            (
                "CV(|Δd|) linear / cosine",
                "0.836 / 0.570",
                f"{lin['cv_abs_growth']:.3f} / {cos['cv_abs_growth']:.3f}",
                "close (cosine within 0.02; linear " + f"{lin['cv_abs_growth'] - 0.836:+.3f})",
            ),
            (
                "cosine grows dimension more uniformly than linear",
                "yes",
                "yes, for every spectrum tried" if ordering["cv_abs_growth"] else "not for every spectrum",
                "yes" if ordering["cv_abs_growth"] else "partly",
            ),
            (
                "CV(IG) linear / cosine",
                "1.107 / 0.867",
                f"{lin['cv_information']:.2f} / {cos['cv_information']:.2f} (mutual information); "
                f"{lin['cv_entropy_gain']:.3f} / {cos['cv_entropy_gain']:.3f} (H)",
                "NO for the mutual information (its high-SNR steps dominate); H is closer but equals CV(|Δd|)",
            ),
            (
                "cosine has the more uniform IG",
                "yes",
                "yes, for every spectrum and both definitions"
                if ordering["cv_information"] and ordering["cv_entropy_gain"]
                else "not everywhere",
                "yes" if ordering["cv_information"] and ordering["cv_entropy_gain"] else "partly",
            ),
            (
                "Spearman(IG, Δd) linear / cosine (ours also with H in place of IG)",
                "≈ 0.9999 (for IG)",
                f"{lin['spearman']:.3f} / {cos['spearman']:.3f} (IG, mutual information); "
                f"{lin['spearman_entropy_gain']:.5f} / {cos['spearman_entropy_gain']:.5f} (H, not IG)",
                "NO for IG (the mutual information); yes with H (the Cauchy-Schwarz bound), a different quantity",
            ),
        ],
    )
    return (
        "Per-step information gain and dimension growth of the 1000-step chains, float64. The step that lands "
        "on ᾱ = 1 (t = 1) is **excluded** from every summary: its information gain is infinite. CV is the "
        "population std over the mean; `IG` is the Gaussian mutual-information gain (`pifs_jax.information_gain`), "
        "`H` the marginal entropy gain over the expanding directions (λ > λ\\*\\*, "
        "`pifs_jax.heuristics.marginal_entropy_gain`), `Δd` the step's share of the Kaplan-Yorke numerator "
        "(`pifs_jax.dimension_growth`). The paper's variances are unknown; main spectrum: "
        f"{main['label']} ({main['num_variances']} variances, mean {main['mean_variance']:.3f}).\n\n"
        + main_table
        + "\n\nSensitivity to the variances (each cell linear / cosine s = 0.008):\n\n"
        + sens_table
        + "\n\nComparison with the paper:\n\n"
        + comparison
        + "\n\nReading: `CV(|Δd|)` is robust to the spectrum ("
        + f"{min(dd_all):.2f}–{max(dd_all):.2f}"
        + " over every spectrum and both schedules) and matches the paper's pair well, cosine below linear. "
        "The mutual-information gain cannot reproduce the paper's CV(IG) or its Spearman ≈ 0.9999: it is "
        "dominated by the few lowest-noise steps, where the thousands of small-variance directions are "
        "resolved, while `Δd` only counts the handful of expanding directions and peaks mid-chain. Restricting "
        "the gain to the expanding directions and using the marginal entropy (the quantity that bounds "
        "`log f_t` by Cauchy-Schwarz, `log f_t(λ) ≤ ½ log(v_s/v_t)`) gives Spearman 0.9999+ for every spectrum — "
        "the paper's \"nearly tight\" relation — but then `CV(H) ≈ CV(|Δd|)`, not the paper's larger CV(IG). "
        "Which IG the paper used stays open: the entropy gain over the expanding directions reproduces its "
        "Spearman, neither definition its CV(IG) pair; the ordering (cosine more uniform than linear) holds "
        "under every choice tried."
    )


def run(out_dir: Path, *, quick: bool = False) -> dict[str, Any]:
    """Compute, write ``information_gain.json`` and the profile figure, return the report section.

    ``quick`` estimates the photos32 spectra from 1024 crops (not 4096) and drops one power law.
    """
    out = Path(out_dir) / NAME
    results = compute(quick=quick)
    write_result_json(
        out / "information_gain.json",
        results,
        config={
            "experiment": NAME,
            "T": T,
            "schedules": {k: v[0] for k, v in SCHEDULES.items()},
            "excluded": "t = 1 (lands on alpha_bar = 1, infinite IG)",
            "x64": True,
            "quick": quick,
        },
        seed=SEED,
    )
    _figure(results, out / "per_step_profiles.png")
    main = results["spectra"]["photos32"]["chains"]
    return {
        "markdown": _markdown(results),
        "figures": [f"{NAME}/per_step_profiles.png"],
        "summary": (
            f"CV(|Δd|) lin/cos {main['linear']['cv_abs_growth']:.3f}/{main['cosine']['cv_abs_growth']:.3f} "
            f"(paper 0.836/0.570); CV(IG) {main['linear']['cv_information']:.2f}/{main['cosine']['cv_information']:.2f} "
            f"(paper 1.107/0.867); Spearman(IG, Δd) cos {main['cosine']['spearman']:.3f} (paper 0.9999, not "
            f"reproduced); with H, the marginal entropy gain, in place of IG: Spearman(H, Δd) cos "
            f"{main['cosine']['spearman_entropy_gain']:.5f}"
        ),
        "results": results,
    }


def main(argv: list[str] | None = None) -> int:
    return experiment_main(NAME, __doc__, run, quick_help="1024 crops instead of 4096, fewer power laws", argv=argv)


if __name__ == "__main__":
    sys.exit(main())

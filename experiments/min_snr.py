"""Min-SNR-gamma weighting as a balancing heuristic (docs/theory.md section 9, criterion 2).

Hang et al. (2023) weight the eps-prediction loss of timestep ``t`` by
``w_t = min(SNR_t, gamma)/SNR_t`` (:func:`pifs_jax.heuristics.min_snr_weights`), ``gamma = 5``. The
paper reads this as criterion 2: the weighting balances per-step dimension growth / information
gain. Here "balances" is made precise and measured.

**Definition.** Training draws ``t`` uniformly and minimises ``sum_t w_t L_t``; a per-step quantity
``Q_t`` is *balanced by* ``w`` when the weighted values ``w_t Q_t`` are equal over the steps, i.e.
when no step dominates the objective's emphasis. The imbalance is the population coefficient of
variation ``B_Q(gamma) = CV_t(w_t(gamma) Q_t)`` over ``t = 2..T``: ``B_Q = 0`` iff ``w_t ~ 1/Q_t``, and it
does not depend on the overall scale of ``w`` (only on the shape that ``gamma`` controls).
``gamma -> inf`` is the unweighted loss. Three quantities ``Q_t``:

- ``IG_t``, the Gaussian information gain of step ``t -> t-1`` (:func:`pifs_jax.information_gain`,
  criterion 2's information);
- ``|Delta d_t|``, the step's Kaplan-Yorke dimension growth (:func:`pifs_jax.dimension_growth`);
- ``l_t``, the eps-loss floor of Gaussian data at ``t`` (:func:`pifs_jax.heuristics.optimal_eps_loss`),
  which by the I-MMSE relation is twice the information density ``dI/dlogSNR``: ``w_t l_t`` is the
  optimum's weighted per-step loss contribution.

The step landing on ``alpha_bar = 1`` (``t = 1``, infinite IG) is excluded. Variances: the
per-patch spectra of photos32 crops (16 patches of 8x8x3, as in ``information_gain``), with power
laws and a pooled whole-photograph spectrum as a sensitivity check. 1000-step linear and cosine
(``s = 0.008``) schedules, float64.

Writes ``<out>/min_snr/min_snr.json``, ``balance_vs_gamma.png`` and ``weights.png``.
Run alone with ``python experiments/min_snr.py --out results``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import jax
import numpy as np

import pifs_jax as pj
from pifs_jax import plotting
from pifs_jax.criteria import coefficient_of_variation
from pifs_jax.heuristics import min_snr_weights, optimal_eps_loss, photo_patch_spectrum, power_law_variances
from pifs_jax.reproduce import experiment_main, format_value, markdown_table
from pifs_jax.results import write_result_json

NAME = "min_snr"
TITLE = "Min-SNR-γ weighting: does it balance information gain and dimension growth, and where does γ = 5 sit?"

T = 1000
GAMMA_DEFAULT = 5.0
SEED = 0
QUANTITIES = {
    "information": "IG_t (information gain)",
    "growth": "|Δd_t| (dimension growth)",
    "eps_loss": "l_t (eps-loss floor)",
}
SCHEDULES = {
    "linear": ("linear (DDPM)", lambda: pj.linear(T)),
    "cosine": ("cosine s = 0.008", lambda: pj.cosine(T, s=0.008)),
}


def photos32_spectrum(*, num_crops: int) -> np.ndarray:
    """Same spectrum as the information_gain experiment (16 x 192 per-patch eigenvalues)."""
    from pifs_jax import data

    crops = data.load_dataset("photos32", jax.random.key(SEED), num_crops)
    return np.asarray(data.patch_stats(crops, patch_size=8).eigenvalues, dtype=np.float64).ravel()


def per_step_quantities(sched: pj.Schedule, variances: np.ndarray) -> dict[str, np.ndarray]:
    """``Q_t`` for ``t = 2..T`` and the Min-SNR inputs, shape ``(T-1,)`` each."""
    return {
        "information": np.asarray(pj.information_gain(sched, variances))[1:],
        "growth": np.abs(np.asarray(pj.dimension_growth(sched, variances)))[1:],
        "eps_loss": np.asarray(optimal_eps_loss(sched, variances))[1:],
        "log_snr": np.asarray(sched.log_snr)[2:],
    }


def weight_matrix(sched: pj.Schedule, gammas: np.ndarray) -> np.ndarray:
    """Min-SNR weights ``w_t(gamma)`` for ``t = 2..T``, one row per ``gamma`` (``min_snr_weights`` vmapped)."""
    weights = jax.vmap(lambda g: min_snr_weights(sched, gamma=g))(jax.numpy.asarray(gammas, sched.dtype))
    return np.asarray(weights)[:, 1:]


def imbalance_curve(weights: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``B_Q(gamma) = CV_t(w_t(gamma) Q_t)``, one value per row of ``weights`` (population CV)."""
    return np.asarray(coefficient_of_variation(weights * q[None, :], axis=-1))


def summarise(curve: np.ndarray, gammas: np.ndarray, unweighted: float, at_default: float) -> dict[str, Any]:
    """Optimum, value at gamma = 5 and the share of the attainable reduction it captures."""
    best = int(np.argmin(curve))
    minimum = float(min(curve[best], unweighted))
    near = gammas[curve <= 1.1 * minimum]
    helps = curve[best] < unweighted
    return {
        "unweighted": unweighted,
        "at_default": at_default,
        "minimum": minimum,
        "argmin_gamma": float(gammas[best]) if helps else float("inf"),
        "within_10pct_of_min": [float(near.min()), float(near.max())] if near.size else None,
        "weighting_helps": bool(helps),
        "default_share_of_reduction": (unweighted - at_default) / (unweighted - minimum) if helps else None,
        "default_vs_unweighted": at_default / unweighted,
    }


def analyse(variances: np.ndarray, gammas: np.ndarray, schedules: dict[str, pj.Schedule]) -> dict[str, Any]:
    out = {}
    for name, sched in schedules.items():
        q = per_step_quantities(sched, variances)
        weights = weight_matrix(sched, gammas)
        default_weights = weight_matrix(sched, np.array([GAMMA_DEFAULT]))
        entry = {}
        for key in QUANTITIES:
            curve = imbalance_curve(weights, q[key])
            default = float(imbalance_curve(default_weights, q[key])[0])
            entry[key] = {"curve": curve, **summarise(curve, gammas, float(coefficient_of_variation(q[key])), default)}
        # the weights that would balance IG exactly, w* ~ 1/IG (normalised to max 1), for the figure
        ideal = 1.0 / q["information"]
        entry["ideal_weights_information"] = ideal / ideal.max()
        entry["log_snr"] = q["log_snr"]
        out[name] = entry
    return out


def compute(*, quick: bool) -> dict[str, Any]:
    gammas = np.logspace(-2, 3, 41 if quick else 101)
    with jax.enable_x64(True):
        schedules = {k: f() for k, (_, f) in SCHEDULES.items()}
        main_lam = photos32_spectrum(num_crops=1024 if quick else 4096)
        main = analyse(main_lam, gammas, schedules)
        sensitivity = {}
        others = {
            "power_1": ("power law i^-1 (192, mean 0.25)", power_law_variances(192, exponent=1.0)),
            "power_2": ("power law i^-2 (192, mean 0.25)", power_law_variances(192, exponent=2.0)),
            "pooled_d32": (
                "whole photographs /16, pooled 8x8x3",
                photo_patch_spectrum(downsample=16, patch_size=8, stride=1).eigenvalues,
            ),
        }
        for key, (label, lam) in others.items():
            result = analyse(lam, gammas, schedules)
            sensitivity[key] = {
                "label": label,
                "chains": {
                    n: {q: {k: v for k, v in r[q].items() if k != "curve"} for q in QUANTITIES}
                    for n, r in result.items()
                },
            }
    return {
        "gammas": gammas,
        "gamma_default": GAMMA_DEFAULT,
        "main": main,
        "main_label": f"photos32 per-patch spectra ({1024 if quick else 4096} crops, 3072 variances)",
        "sensitivity": sensitivity,
        "excluded_steps": [1],
    }


# ----------------------------------------------------------------------------- report


def _figures(results: dict[str, Any], out: Path) -> list[str]:
    gammas = np.asarray(results["gammas"])
    fig, ax = plotting.new_figure(figsize=(6.6, 4.3))
    styles = {"information": "-", "growth": "--", "eps_loss": ":"}
    colours = {"linear": "tab:red", "cosine": "tab:blue"}
    for name, entry in results["main"].items():
        for key, label in QUANTITIES.items():
            ax.plot(gammas, entry[key]["curve"], color=colours[name], ls=styles[key], lw=1.4, label=f"{label}, {name}")
    ax.axvline(GAMMA_DEFAULT, color="black", lw=1.0, ls="-.", label="γ = 5")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("Min-SNR clip γ (large γ = unweighted)")
    ax.set_ylabel("imbalance  CV_t(w_t(γ) Q_t)")
    ax.set_title("Lower = more balanced; photos32 per-patch spectra, 1000 steps", fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    plotting.save_figure(fig, out / "balance_vs_gamma.png")

    entry = results["main"]["cosine"]
    log_snr = np.asarray(entry["log_snr"])
    fig, ax = plotting.new_figure(figsize=(6.4, 4.0))
    ax.plot(log_snr, entry["ideal_weights_information"], color="black", lw=1.6, label="w* ∝ 1/IG_t (exactly balancing)")
    best = entry["information"]["argmin_gamma"]
    for g, style in ((GAMMA_DEFAULT, "-"), (best, "--")):
        w = np.exp(np.minimum(0.0, np.log(g) - log_snr))
        ax.plot(log_snr, w, ls=style, lw=1.3, label=f"min(SNR, γ)/SNR, γ = {g:.3g}")
    ax.set_yscale("log")
    ax.set_xlabel("logSNR_t (cosine s = 0.008, t = 2..1000)")
    ax.set_ylabel("loss weight (max 1)")
    ax.legend(fontsize=8)
    plotting.save_figure(fig, out / "weights.png")
    return [f"{NAME}/balance_vs_gamma.png", f"{NAME}/weights.png"]


def _gamma(value: float, gammas: np.ndarray) -> str:
    """``value`` for the table, flagged when it sits on the edge of the sweep."""
    text = format_value(value, digits=3)
    return text + " (sweep edge)" if np.isfinite(value) and value in (gammas[0], gammas[-1]) else text


def _interval(values) -> str:
    return "—" if values is None else f"[{values[0]:.2g}, {values[1]:.2g}]"


def _markdown(results: dict[str, Any]) -> str:
    gammas = np.asarray(results["gammas"])
    rows = []
    for name, entry in results["main"].items():
        for key, label in QUANTITIES.items():
            r = entry[key]
            share = r["default_share_of_reduction"]
            rows.append(
                (
                    SCHEDULES[name][0],
                    label,
                    f"{r['unweighted']:.3f}",
                    f"{r['at_default']:.3f}",
                    f"{r['minimum']:.3f}",
                    _gamma(r["argmin_gamma"], gammas),
                    _interval(r["within_10pct_of_min"]),
                    f"{100 * share:.0f} %"
                    if share is not None
                    else f"none (γ = 5 is {r['default_vs_unweighted']:.2f}× worse)",
                )
            )
    table = markdown_table(
        [
            "schedule",
            "Q_t",
            "CV unweighted",
            "CV at γ = 5",
            "min CV",
            "at γ",
            "γ within 10 % of min",
            "share of the attainable balancing at γ = 5",
        ],
        rows,
    )
    sens_rows = []
    for s in results["sensitivity"].values():
        for name in SCHEDULES:
            r = s["chains"][name]["information"]
            g = s["chains"][name]["growth"]
            sens_rows.append(
                (
                    s["label"],
                    name,
                    f"{r['unweighted']:.2f} → {r['at_default']:.3f}",
                    _gamma(r["argmin_gamma"], gammas),
                    f"{100 * r['default_share_of_reduction']:.0f} %"
                    if r["default_share_of_reduction"] is not None
                    else "—",
                    f"{g['unweighted']:.3f} → {g['at_default']:.3f}",
                )
            )
    sens = markdown_table(
        [
            "variances",
            "schedule",
            "CV(w·IG): unweighted → γ = 5",
            "best γ for IG",
            "share at γ = 5",
            "CV(w·\\|Δd\\|): unweighted → γ = 5",
        ],
        sens_rows,
    )
    cos, lin = results["main"]["cosine"], results["main"]["linear"]
    comparison = markdown_table(
        ["claim", "paper", "ours", "agreement"],
        [
            (
                "Min-SNR-γ balances the per-step information gain",
                "yes",
                f"CV(w·IG) {lin['information']['unweighted']:.1f} → {lin['information']['at_default']:.2f} (linear), "
                f"{cos['information']['unweighted']:.1f} → {cos['information']['at_default']:.2f} (cosine) at γ = 5",
                "yes",
            ),
            (
                "… and the per-step dimension growth",
                "yes",
                f"CV(w·|Δd|) {lin['growth']['unweighted']:.3f} → {lin['growth']['at_default']:.3f} (linear), "
                f"{cos['growth']['unweighted']:.3f} → {cos['growth']['at_default']:.3f} (cosine): unweighted is already the most balanced",
                "NO" if not (lin["growth"]["weighting_helps"] or cos["growth"]["weighting_helps"]) else "partly",
            ),
            (
                "where γ ≈ 5 sits on the criterion",
                "near the balance",
                f"IG: optimum γ = {format_value(lin['information']['argmin_gamma'], digits=2)} (linear), "
                f"{format_value(cos['information']['argmin_gamma'], digits=2)} (cosine); γ = 5 captures "
                f"{100 * lin['information']['default_share_of_reduction']:.0f} % / "
                f"{100 * cos['information']['default_share_of_reduction']:.0f} % of the attainable balancing",
                "on the plateau, past the optimum",
            ),
        ],
    )
    return (
        "Imbalance `B_Q(γ) = CV_t(w_t(γ) Q_t)` over t = 2..1000 (t = 1, which lands on ᾱ = 1 with infinite IG, "
        "is **excluded**); `B = 0` iff the weights are exactly `∝ 1/Q_t`; `γ → ∞` is the unweighted loss. "
        f"Variances: {results['main_label']}. γ swept over {len(results['gammas'])} log-spaced values in "
        "[0.01, 1000]. Float64.\n\n"
        + table
        + "\n\nSensitivity to the variances:\n\n"
        + sens
        + "\n\nComparison with the paper:\n\n"
        + comparison
        + "\n\nReading: per step, the Gaussian information gain is concentrated in the last, lowest-noise steps "
        "(thousands of small-variance directions are resolved there), so the unweighted loss is very "
        "unbalanced (CV ≈ 7). `min(SNR, γ)/SNR = γ/SNR` for SNR > γ cuts exactly those steps, and the "
        "imbalance drops about ten-fold; γ = 5 already has most of the effect, with the optimum at somewhat "
        "smaller γ (about 0.5–1 for cosine). Exact balance (`w ∝ 1/IG_t`, second figure) would also need "
        "weights falling through the high-noise half of the chain, which the flat part of `min(SNR, γ)/SNR` "
        "cannot give; hence the floor of the imbalance. The eps-loss floor, the weighted per-step loss contribution at "
        "the optimum, behaves the same way. Dimension growth does not: `Δd_t` counts only the few expanding "
        "directions and already peaks mid-chain, so down-weighting low-noise steps makes it less uniform. "
        "Min-SNR-γ is a balancing heuristic for the information criterion, not for dimension growth — "
        "consistent with the finding of the information_gain experiment that the mutual-information IG and "
        "Δd are not the same criterion."
    )


def run(out_dir: Path, *, quick: bool = False) -> dict[str, Any]:
    """Compute, write ``min_snr.json`` and two figures, return the report section.

    ``quick`` uses 41 values of ``gamma`` (not 101) and 1024 crops for the spectrum (not 4096).
    """
    out = Path(out_dir) / NAME
    results = compute(quick=quick)
    write_result_json(
        out / "min_snr.json",
        results,
        config={
            "experiment": NAME,
            "T": T,
            "gamma_default": GAMMA_DEFAULT,
            "schedules": {k: v[0] for k, v in SCHEDULES.items()},
            "quantities": QUANTITIES,
            "excluded": "t = 1 (infinite IG)",
            "x64": True,
            "quick": quick,
        },
        seed=SEED,
    )
    figures = _figures(results, out)
    cos = results["main"]["cosine"]["information"]
    return {
        "markdown": _markdown(results),
        "figures": figures,
        "summary": (
            f"γ = 5 cuts CV(w·IG) {cos['unweighted']:.1f} → {cos['at_default']:.2f} (cosine; optimum γ ≈ "
            f"{cos['argmin_gamma']:.2g}); does not balance Δd"
        ),
        "results": results,
    }


def main(argv: list[str] | None = None) -> int:
    return experiment_main(NAME, __doc__, run, quick_help="coarser gamma sweep, fewer crops", argv=argv)


if __name__ == "__main__":
    sys.exit(main())

"""Sampling grids designed from a model's measured geometry, against the grids the field uses.

The method and the protocol are fixed in docs/theory.md section 12. For each model, solver and
number of steps ``N``, every method designs a grid on the DESIGN noises, and every grid is judged
on disjoint EVALUATION noises (the same for every method: paired) by the per-sample RMSE to the
reference solution (DDIM on all ``T`` steps from the same noise); the table gives the mean RMSE,
the paired gain over the best fixed grid with its bootstrap interval, the fraction of values
outside ``[-1, 1]``, the design cost in network evaluations and seconds, and the share of the
oracle's gain each method reaches ("gap to oracle closed"); each designed grid is also run by the
other solver (the transfer table).

Models: the shipped ``dit-photos16`` (every shipped model with ``--full``) and the ground-truth
tier, a Gaussian mixture "image" (8x8, three components) with its exact denoiser. Methods: the
fixed grids (time-uniform, logSNR-uniform, EDM rho = 7, AYS's KL-optimal closed form, DDIM's
quadratic stretched to end at ``T``: endpoints held equal), GITS, Align Your Steps (KLUB on the
training images, 256 samples, 4 sweeps), the geometric grid (and its first rule for the last step,
``geometric_v1``, and its placement by the solver's own order, ``geometric_solver_order``: the same
grid for DDIM), its local-error ablation, the gradient descent from the geometric grid and the
oracle coordinate search (from the best fixed grid on the design seeds), and beyond the grid the
per-step corrections of the network's output fitted through the solver (``corrected``, theory
section 12).

Modes: ``quick`` (tests: the mixture only, ``N = 5``, DDIM, few seeds), default (a few minutes on
2 cores: ``N = 10``, both solvers, 32 design and 128 evaluation seeds, shortened searches and
fits), ``full`` (every shipped model, ``N`` in 4, 5, 6, 8, 10, 15, 20, 2000 evaluation seeds),
and the configuration of docs/guides/sampling-grids.md's tables (64 design and 256 evaluation
seeds, the methods' own settings; 16 minutes on 2 cores for the mixture and ``dit-photos16``):
``--tables``, with ``--models NAME ...`` for other models.

Writes ``<out>/grid_design/grid_design.json`` and ``error_vs_nfe.png``.
Run alone with ``python experiments/grid_design.py --out results [--quick | --full | --tables]
[--models NAME ...] [--methods NAME ...] [--evaluate K]``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from pifs_jax import plotting
from pifs_jax.data import gaussian_mixture_data
from pifs_jax.denoisers import gaussian_mixture_denoiser
from pifs_jax.errors import ArgumentError
from pifs_jax.grid_design import (
    corrected_denoiser,
    design_grid,
    grid_errors,
    paired_gain,
    reference_solution,
    run_grid,
    self_convergence,
)
from pifs_jax.models.encoders import encode
from pifs_jax.models.pretrained import list_pretrained, pretrained
from pifs_jax.models.quality import in_domain_scores
from pifs_jax.reproduce import experiment_main, markdown_table
from pifs_jax.results import write_result_json
from pifs_jax.samplers import DDIM, DPMSolverPP2M, named_sampler, sampler_name
from pifs_jax.schedules import linear

NAME = "grid_design"
TITLE = "Sampling grids designed from the model's measured geometry"

FIXED = ("time_uniform", "logsnr_uniform", "edm", "kl_optimal", "quadratic_to_T")
MODEL_METHODS = (
    "gits",
    "ays",
    "geometric_local",
    "geometric_v1",
    "geometric_solver_order",
    "geometric",
    "refined",
    "gradient",
    "oracle",
    "corrected",
)
#: Design seeds, and the evaluation seeds: 2 judged the rule first fixed (docs/guides/sampling-grids.md
#: keeps that table); 3 judged the revised rule (theory section 12) and a prototype of the per-step
#: corrections; 4 judged the corrections as settled, and every other method beside them; 5 are fresh
#: seeds for the first-order error model of every solver and the held-out choice of the corrected
#: candidate (theory section 12), and for every method beside them; 6 are fresh seeds for the
#: refined grid (settled on prototype seeds 99, theory section 12) and every method beside it; 7 are
#: fresh seeds for the refined grid with the fixed grids among its starts (theory section 12); 8 are
#: fresh seeds for the refined grid's one-probe measurement (settled on prototype seeds 99,
#: scripts/refined_probes_prototype.py).
SEED_DESIGN, SEED_EVAL = 1, 8
#: Align Your Steps' settings here: KLUB samples and sweeps bounded for CPU time (the paper: 8192
#: samples, early stopping on its own metrics).
AYS_OPTIONS = {"num_samples": 256, "max_sweeps": 4}


def mode_config(*, quick: bool, full: bool, tables: bool = False) -> dict[str, Any]:
    """The mode's sizes (module docstring)."""
    if quick:
        return dict(models=["mixture"], steps=[5], samplers=["ddim"], design=16, evaluate=32, oracle_sweeps=1,
                    gradient_iterations=10, correction_iterations=20, ays_options={"num_samples": 64, "max_sweeps": 1},
                    methods=MODEL_METHODS)  # fmt: skip
    if full:
        return dict(models=["mixture", *list_pretrained()], steps=[4, 5, 6, 8, 10, 15, 20], samplers=["ddim", "dpm"],
                    design=128, evaluate=2000, oracle_sweeps=4, gradient_iterations=60, correction_iterations=200,
                    ays_options=AYS_OPTIONS, methods=MODEL_METHODS)  # fmt: skip
    if tables:  # the configuration of docs/guides/sampling-grids.md's tables
        return dict(models=["mixture", "dit-photos16"], steps=[5, 10], samplers=["ddim", "dpm"], design=64,
                    evaluate=256, oracle_sweeps=2, gradient_iterations=30, correction_iterations=200,
                    ays_options=AYS_OPTIONS, methods=MODEL_METHODS)  # fmt: skip
    return dict(models=["mixture", "dit-photos16"], steps=[10], samplers=["ddim", "dpm"], design=32, evaluate=128,
                oracle_sweeps=1, gradient_iterations=10, correction_iterations=40,
                ays_options={"num_samples": 128, "max_sweeps": 2}, methods=MODEL_METHODS)  # fmt: skip


def mixture_model() -> tuple[Any, Any, tuple[int, ...], Any]:
    """The ground-truth tier: three Gaussian components on 8x8 "images" (flattened), exact denoiser and data."""
    sched = linear(1000)
    n = 64
    key = jax.random.PRNGKey(7)
    means = 0.6 * jax.random.normal(key, (3, n))
    scales = jnp.array([0.05, 0.1, 0.2])
    covs = jax.vmap(lambda s: s**2 * jnp.eye(n))(scales)
    weights = jnp.ones(3) / 3
    eps_fn = gaussian_mixture_denoiser(sched, weights, means, covs)
    data = gaussian_mixture_data(jax.random.PRNGKey(8), n=2048, weights=weights, means=means, covs=covs).samples
    return eps_fn, sched, (n,), data


def denoiser(name: str) -> tuple[Any, Any, tuple[int, ...]]:
    """``(eps_fn, schedule, sample shape)`` of ``"mixture"`` or a shipped model, without its data (the prototypes' models)."""
    if name == "mixture":
        eps_fn, sched, shape, _ = mixture_model()
        return eps_fn, sched, shape
    loaded = pretrained(name)
    return loaded.eps_fn, loaded.schedule, tuple(loaded.image_shape)


def _model(name: str) -> tuple[Any, Any, tuple[int, ...], Any, Any]:
    """``(eps_fn, schedule, sample shape, training images, in-domain scorer or None)``."""
    if name == "mixture":
        return (*mixture_model(), None)
    loaded = pretrained(name)
    train, test = loaded.load_data()
    data_name = loaded.data["name"]
    test_features = encode(test, data=data_name, name="test")  # encoded once for every grid scored

    def in_domain(samples: np.ndarray) -> dict[str, Any]:
        """FD and KID of the shipped encoder against the held-out test crops (never optimised on)."""
        scores = in_domain_scores(
            samples, data=data_name, reference=test, subsets=20, resamples=100, reference_features=test_features
        )
        return {k: scores[k] for k in ("fd", "fd_lo", "fd_hi", "kid", "kid_lo", "kid_hi")}

    return loaded.eps_fn, loaded.schedule, tuple(loaded.image_shape), train, in_domain


def _solver(name: str):
    return DDIM() if name == "ddim" else DPMSolverPP2M()


#: Designed grids whose transfer to the other solver is reported.
TRANSFER_METHODS = ("gits", "geometric", "refined", "gradient", "oracle")


def solver_transfer(
    runs: list[dict[str, Any]], eps_fn: Any, sched: Any, evaluate: Any, reference: np.ndarray
) -> list[dict[str, Any]]:
    """Each grid designed for one solver, run by the other solver at the same ``N``.

    Judged on the evaluation seeds against the reference, with the paired gain over the OTHER
    solver's best fixed grid and, beside it, the other solver's own grid of the same method
    (``native_rmse``): how much of a design is specific to the solver it was made for.
    """
    rows = []
    for run in runs:
        for other in runs:
            if other["solver"] == run["solver"] or other["steps"] != run["steps"]:
                continue
            sampler = named_sampler(other["solver"])
            best = other["methods"][other["best_fixed"]]["grid"]
            base = grid_errors(run_grid(eps_fn, sched, best, evaluate, sampler=sampler), reference)
            for method in TRANSFER_METHODS:
                if method not in run["methods"]:
                    continue
                samples = run_grid(eps_fn, sched, run["methods"][method]["grid"], evaluate, sampler=sampler)
                errors = grid_errors(samples, reference)
                rows.append({
                    "method": method, "designed_for": run["solver"], "run_by": other["solver"], "steps": run["steps"],
                    "rmse": float(errors.mean()), "native_rmse": other["methods"][method]["rmse"],
                    "gain_vs_best_fixed": paired_gain(base, errors)._asdict(),
                })  # fmt: skip
    return rows


def compute(cfg: dict[str, Any], progress: bool = True) -> dict[str, Any]:
    """Every model x solver x N x method (module docstring)."""
    results: dict[str, Any] = {"models": {}}
    for model_name in cfg["models"]:
        eps_fn, sched, shape, data, in_domain = _model(model_name)
        design = jax.random.normal(jax.random.PRNGKey(SEED_DESIGN), (cfg["design"], *shape))
        evaluate = jax.random.normal(jax.random.PRNGKey(SEED_EVAL), (cfg["evaluate"], *shape))
        start = time.perf_counter()
        reference = reference_solution(eps_fn, sched, evaluate)
        count = min(64, cfg["evaluate"])  # seeds of the reference's self-convergence check
        model_out: dict[str, Any] = {
            "reference_seconds": time.perf_counter() - start,
            "reference_self_convergence": self_convergence(
                eps_fn, sched, evaluate[:count], reference=reference[:count]
            ),
            "runs": [],
        }
        ays_grids: dict[int, Any] = {}
        for solver_name in cfg["samplers"]:
            sampler = _solver(solver_name)
            for steps in cfg["steps"]:
                rows: dict[str, Any] = {}
                errors: dict[str, np.ndarray] = {}
                for method in (*FIXED, *cfg["methods"]):
                    options: dict[str, Any] = {}
                    name = method
                    if method == "oracle":
                        options = {"max_sweeps": cfg["oracle_sweeps"]}
                    elif method == "gradient":
                        options = {"iterations": cfg["gradient_iterations"]}
                    elif method == "corrected":
                        options = {"iterations": cfg["correction_iterations"]}
                    elif method == "ays":
                        options = dict(cfg["ays_options"])
                    elif method == "geometric_v1":  # the first-step rule first fixed (theory section 12)
                        name, options = "geometric", {"first_step": "min_sum"}
                    elif method == "geometric_solver_order":  # the solver's own error model (as first fixed)
                        name, options = "geometric", {"error_model": "solver"}
                    noises = design[:16] if method.startswith("geometric") or method == "refined" else design
                    if method == "ays" and steps in ays_grids:  # AYS's KLUB does not depend on the solver
                        d = ays_grids[steps]
                    else:
                        d = design_grid(eps_fn, sched, steps, sampler=sampler, method=name, x_T=noises, data=data,
                                        options=options)  # fmt: skip
                    if method == "ays":
                        ays_grids[steps] = d
                    model = eps_fn if d.corrections is None else corrected_denoiser(eps_fn, d.corrections)
                    samples = run_grid(model, sched, d.grid, evaluate, sampler=sampler)
                    errors[method] = grid_errors(samples, reference)
                    rows[method] = {
                        "grid": d.grid.tolist(),
                        "rmse": float(errors[method].mean()),
                        "fraction_outside": float(np.mean(np.abs(samples) > 1.0)),
                        "design_evaluations": d.network_evaluations,
                        "design_seconds": d.seconds,
                        "in_domain": None if in_domain is None else in_domain(samples),
                    }
                    if progress:
                        print(
                            f"{model_name} {solver_name} N={steps} {method}: RMSE {rows[method]['rmse']:.4f}",
                            flush=True,
                        )
                best_fixed = min(FIXED, key=lambda m: rows[m]["rmse"])
                oracle_gain = 1.0 - rows["oracle"]["rmse"] / rows[best_fixed]["rmse"] if "oracle" in rows else None
                for method, row in rows.items():
                    gain = paired_gain(errors[best_fixed], errors[method])
                    row["gain_vs_best_fixed"] = gain._asdict()
                    row["share_of_oracle_gain"] = gain.gain / oracle_gain if oracle_gain and oracle_gain > 0 else None
                    if "oracle" in rows and rows["oracle"]["design_evaluations"]:
                        row["cost_vs_oracle"] = row["design_evaluations"] / rows["oracle"]["design_evaluations"]
                model_out["runs"].append({
                    "solver": sampler_name(sampler), "steps": steps, "nfe": sampler.nfe(steps),
                    "best_fixed": best_fixed, "methods": rows,
                })  # fmt: skip
        model_out["transfer"] = solver_transfer(model_out["runs"], eps_fn, sched, evaluate, reference)
        results["models"][model_name] = model_out
    return results


def render_markdown(results: dict[str, Any]) -> str:
    lines = []
    for model_name, model in results["models"].items():
        conv = model["reference_self_convergence"]
        lines.append(
            f"**{model_name}** (reference: DDIM on all steps; every other step differs from it by RMSE "
            f"{conv['rmse_half_vs_full']:.2e}, {100 * conv['relative']:.2f} % of the samples' RMS)\n"
        )
        for run in model["runs"]:
            rows = []
            for method, row in run["methods"].items():
                g = row["gain_vs_best_fixed"]
                share = row.get("share_of_oracle_gain")
                fd = row.get("in_domain")
                rows.append([
                    method, row["rmse"], f"{100 * g['gain']:+.1f} % [{100 * g['lo']:+.1f}, {100 * g['hi']:+.1f}]",
                    "" if share is None else f"{100 * share:.0f} %", row["design_evaluations"],
                    f"{row['design_seconds']:.1f}", row["fraction_outside"],
                    "" if fd is None else f"{fd['fd']:.3g} [{fd['fd_lo']:.3g}, {fd['fd_hi']:.3g}]",
                ])  # fmt: skip
            lines.append(
                f"{run['solver']}, N = {run['steps']} (NFE {run['nfe']}); best fixed grid: {run['best_fixed']}\n"
            )
            lines.append(
                markdown_table(
                    [
                        "method",
                        "RMSE",
                        "gain vs best fixed [95 %]",
                        "share of oracle gain",
                        "design NFE",
                        "design s",
                        "outside [-1, 1]",
                        "in-domain FD [95 %]",
                    ],
                    rows,
                    digits=4,
                )
            )
        if model.get("transfer"):
            lines.append("Grids run by the other solver (gain over that solver's best fixed grid)\n")
            transfer_rows = [
                [t["method"], f"{t['designed_for']} -> {t['run_by']}", t["steps"], t["rmse"], t["native_rmse"],
                 f"{100 * t['gain_vs_best_fixed']['gain']:+.1f} % [{100 * t['gain_vs_best_fixed']['lo']:+.1f}, "
                 f"{100 * t['gain_vs_best_fixed']['hi']:+.1f}]"]
                for t in model["transfer"]
            ]  # fmt: skip
            header = [
                "method",
                "designed for -> run by",
                "N",
                "RMSE",
                "its own grid's RMSE",
                "gain vs best fixed [95 %]",
            ]
            lines.append(markdown_table(header, transfer_rows, digits=4))
    return "\n".join(lines)


def draw_figures(results: dict[str, Any], out: Path) -> list[str]:
    import matplotlib.pyplot as plt

    files = []
    for model_name, model in results["models"].items():
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), sharey=False)
        for ax, solver in zip(axes, ("ddim", "dpmpp2m"), strict=True):  # sampler_name's names
            runs = [r for r in model["runs"] if r["solver"] == solver]
            if not runs:
                ax.set_visible(False)
                continue
            for method in runs[0]["methods"]:
                ax.plot(
                    [r["nfe"] for r in runs], [r["methods"][method]["rmse"] for r in runs], marker="o", label=method
                )
            ax.set(
                xscale="log", yscale="log", xlabel="NFE", ylabel="RMSE to reference", title=f"{model_name}, {solver}"
            )
        for ax in axes:
            if ax.get_visible():
                ax.legend(fontsize=6)
                break
        fig.tight_layout()
        path = out / f"error_vs_nfe_{model_name}.png"
        plotting.save_figure(fig, path)
        files.append(path.name)
    return files


def run(
    out_dir: Path,
    *,
    quick: bool = False,
    full: bool = False,
    tables: bool = False,
    models: list[str] | None = None,
    methods: list[str] | None = None,
    evaluate: int | None = None,
) -> dict[str, Any]:
    """Compute, write ``grid_design.json`` and the figures, return the report section.

    ``tables``: the guide's configuration; ``models``: these models instead of the mode's (e.g.
    the other shipped models in the guide's configuration, as its second table does); ``methods``:
    only these of :data:`MODEL_METHODS` beside the fixed grids (e.g. part 1's methods on a slow
    model: ``gits geometric refined oracle``), in :data:`MODEL_METHODS`' order; ``evaluate``: this
    many evaluation seeds instead of the mode's (e.g. ``--full`` on the UNet with 512 instead of 2000).
    """
    out = Path(out_dir) / NAME
    cfg = mode_config(quick=quick, full=full, tables=tables)
    if evaluate is not None:
        if isinstance(evaluate, bool) or not isinstance(evaluate, int) or evaluate < 2:  # paired intervals need 2
            raise ArgumentError("evaluate", f"expected an integer >= 2 (evaluation seeds), got {evaluate!r}")
        cfg["evaluate"] = evaluate
    if models is not None:
        unknown = [m for m in models if m not in ("mixture", *list_pretrained())]
        if unknown or not models:
            raise ArgumentError("models", f"expected names of 'mixture' or {list_pretrained()}, got {list(models)}")
        cfg["models"] = list(models)
    if methods is not None:
        unknown = [m for m in methods if m not in MODEL_METHODS]
        if unknown or not methods:
            raise ArgumentError("methods", f"expected names of {list(MODEL_METHODS)}, got {list(methods)}")
        cfg["methods"] = [m for m in MODEL_METHODS if m in methods]
    results = compute(cfg)
    write_result_json(
        out / "grid_design.json", results,
        config={"experiment": NAME, "mode": cfg, "quick": quick, "full": full, "tables": tables}, seed=SEED_EVAL,
    )  # fmt: skip
    figures = draw_figures(results, out)
    summary = []
    for model_name, model in results["models"].items():
        for r in model["runs"]:
            gains = [
                f"{m} {100 * r['methods'][m]['gain_vs_best_fixed']['gain']:+.1f} %"
                for m in ("refined", "geometric")
                if m in r["methods"]
            ]
            summary.append(f"{model_name} {r['solver']} N={r['steps']}: " + ", ".join(gains))
    return {"markdown": render_markdown(results), "figures": figures, "summary": "; ".join(summary), "results": results}


def main(argv: list[str] | None = None) -> int:
    return experiment_main(NAME, __doc__, run, quick_help="the mixture only, N = 5, DDIM, few seeds", argv=argv)


if __name__ == "__main__":
    sys.exit(main())

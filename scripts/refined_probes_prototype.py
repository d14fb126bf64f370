"""Prototype: does the refined grid need two probes per trajectory, or does one do?

The refined grid (docs/theory.md section 12) spends most of its cost on the geometry measurement:
``R M (1 + 2P)`` network evaluations with ``R = 16`` design seeds, ``M = 100`` fine steps and
``P = 2`` probes, 8,000 of the 12,320 it costs for DPM-Solver++(2M) at 5 steps, which put that
setting at 11.1 % of the oracle's cost (part 1 of the goal asks for a tenth or less). With
``P = 1`` the measurement costs 4,800. The probes only estimate ``||J_{k->0} e||`` of the
measured-density starts; the refinement then judges every grid on the design seeds' own targets.

The rule, fixed before any run (prototype evaluation seeds 99, never used for a table; design
seeds as the grid-design experiment: the first 16 noises of ``PRNGKey(1)``): for each of the
models ``mixture``, ``dit-digits``, ``dit-photos16``, each solver (DDIM, DPM-Solver++(2M)) and
``N`` in {5, 10}, the refined grid is designed with ``P = 2`` and with ``P = 1`` (the probes'
key is the package's default), both run on 256 evaluation noises, and judged by the RMSE to the
1000-step DDIM reference with a paired bootstrap interval of the gain of ``P = 1`` over ``P = 2``.
**``P = 1`` becomes the refined grid's default if its point gain is at least -3 % in every one of
the 12 settings and at least -1 % on average over them;** otherwise ``P = 2`` stays and the cost
bound's miss is stated. Either way the next evaluation is on fresh seeds.

Writes ``<out>/refined_probes_prototype.json`` (config, seed, package versions) and prints the
table. Run with ``python scripts/refined_probes_prototype.py --out results/probes`` (about 20
minutes on a 2-core CPU).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

# experiments/ is installed as pifs_jax.experiments (pyproject's package-dir), which pyright cannot map
from pifs_jax.experiments.grid_design import SEED_DESIGN, denoiser  # pyright: ignore[reportMissingImports]
from pifs_jax.grid_design import grid_errors, paired_gain, reference_solution, refined_grid, run_grid
from pifs_jax.reproduce import markdown_table
from pifs_jax.results import write_result_json
from pifs_jax.samplers import DDIM, DPMSolverPP2M, sampler_name

#: Prototype evaluation seeds (never used for a table).
SEED_PROTOTYPE = 99
MODELS = ("mixture", "dit-digits", "dit-photos16")
STEPS = (5, 10)
PROBES = (2, 1)
DESIGN, EVALUATE = 16, 256
#: The rule (module docstring): the least point gain of P = 1 in any setting, and on average.
WORST_ALLOWED, MEAN_ALLOWED = -0.03, -0.01


def compute() -> dict[str, Any]:
    rows = []
    for name in MODELS:
        eps_fn, sched, shape = denoiser(name)
        design = jax.random.normal(jax.random.PRNGKey(SEED_DESIGN), (64, *shape))[:DESIGN]
        evaluate = jax.random.normal(jax.random.PRNGKey(SEED_PROTOTYPE), (EVALUATE, *shape))
        reference = reference_solution(eps_fn, sched, evaluate)
        for sampler in (DDIM(), DPMSolverPP2M()):
            for steps in STEPS:
                errors, cells = {}, {}
                for probes in PROBES:
                    start = time.perf_counter()
                    result = refined_grid(eps_fn, sched, design, steps, sampler=sampler, probes=probes)
                    seconds = time.perf_counter() - start
                    errors[probes] = grid_errors(
                        run_grid(eps_fn, sched, result.grid, evaluate, sampler=sampler), reference
                    )
                    cells[probes] = {
                        "grid": result.grid.tolist(), "start": result.start_name, "rmse": float(errors[probes].mean()),
                        "evaluations": result.network_evaluations, "seconds": seconds,
                    }  # fmt: skip
                gain = paired_gain(errors[2], errors[1])
                rows.append({"model": name, "solver": sampler_name(sampler), "steps": steps, "probes": cells,
                             "gain_p1_over_p2": gain._asdict()})  # fmt: skip
                print(f"{name} {sampler_name(sampler)} N={steps}: P=2 {cells[2]['rmse']:.4f}, P=1 {cells[1]['rmse']:.4f}"
                      f" ({100 * gain.gain:+.1f} %)", flush=True)  # fmt: skip
    gains = [row["gain_p1_over_p2"]["gain"] for row in rows]
    adopt = min(gains) >= WORST_ALLOWED and float(np.mean(gains)) >= MEAN_ALLOWED
    return {"rows": rows, "worst_gain": min(gains), "mean_gain": float(np.mean(gains)), "adopt_one_probe": adopt}


def render(results: dict[str, Any]) -> str:
    table = [
        [r["model"], r["solver"], r["steps"], f"{r['probes'][2]['rmse']:.4f} ({r['probes'][2]['start']})",
         f"{r['probes'][1]['rmse']:.4f} ({r['probes'][1]['start']})",
         f"{100 * r['gain_p1_over_p2']['gain']:+.1f} % [{100 * r['gain_p1_over_p2']['lo']:+.1f}, "
         f"{100 * r['gain_p1_over_p2']['hi']:+.1f}]",
         f"{r['probes'][2]['evaluations']:,} -> {r['probes'][1]['evaluations']:,}"]
        for r in results["rows"]
    ]  # fmt: skip
    head = ["model", "solver", "N", "RMSE, P = 2 (start)", "RMSE, P = 1 (start)", "gain of P = 1", "evaluations"]
    verdict = "adopt P = 1" if results["adopt_one_probe"] else "keep P = 2"
    return (
        markdown_table(head, table)
        + f"\n\nWorst gain {100 * results['worst_gain']:+.1f} %, mean {100 * results['mean_gain']:+.1f} %: {verdict}.\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for refined_probes_prototype.json")
    args = parser.parse_args()
    results = compute()
    config = {"models": MODELS, "steps": STEPS, "probes": PROBES, "design": DESIGN, "evaluate": EVALUATE,
              "seed_design": SEED_DESIGN, "rule": {"worst": WORST_ALLOWED, "mean": MEAN_ALLOWED}}  # fmt: skip
    write_result_json(args.out / "refined_probes_prototype.json", results, config=config, seed=SEED_PROTOTYPE)
    print(render(results))


if __name__ == "__main__":
    main()

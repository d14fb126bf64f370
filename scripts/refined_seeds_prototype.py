"""Prototype: should the refined grid search on more design seeds and measure on fewer?

On ``unet-photos16`` with DPM-Solver++(2M) the refined grid only ties the time-uniform spacing on
the seventh evaluation (+0.4 % and +1.9 % where the oracle gains 17 % and 12 %). A diagnosis on the
design seeds (never on evaluation seeds): per-seed errors of one grid spread tenfold between
seeds (0.025 to 0.256 at 5 steps), and on its 16 design seeds the refined grid gains 18 % over the
time-uniform spacing by fixing one outlying seed, a gain that does not carry to other seeds. The
measurement, a mean of smooth per-step quantities, needs fewer seeds than the search, which
compares grids by those per-seed errors. The variant spends the same budget differently:

- **current**: ``R = 16`` design seeds, all measured (``refined_grid(x_T=design[:16])``);
- **split**: ``R = 32`` design seeds for the targets and the search, the first ``R_m = 8`` of them
  measured (``refined_grid(x_T=design[:32], measure_seeds=8)``); nothing else changes.

The rule, fixed before any run (prototype evaluation seeds 99, never used for a table; design
seeds as the grid-design experiment: the first noises of ``PRNGKey(1)``; 256 evaluation noises;
the models ``mixture``, ``dit-digits``, ``dit-photos16`` and ``unet-photos16``, DDIM and
DPM-Solver++(2M), ``N`` in {5, 10}: 16 settings). **The split becomes the refined grid's default if
(a) its design costs at most a tenth of the smallest oracle cost the seventh evaluation recorded
for that solver and ``N`` (111,360 / 265,600 evaluations for DDIM at 5 / 10 steps, 110,400 /
248,960 for DPM-Solver++) in every setting, (b) its point gain over the current default, by mean
RMSE to the 1000-step DDIM reference, is at least -3 % in every setting, and (c) at least +2 % on
average over the 16 settings.** Otherwise the current default stays and this prototype's numbers
are stated. Either way the next evaluation is on fresh seeds.

Writes ``<out>/refined_seeds_prototype.json`` (config, seed, package versions) and prints the
table. Run with ``python scripts/refined_seeds_prototype.py --out results/seeds`` (about 25
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
MODELS = ("mixture", "dit-digits", "dit-photos16", "unet-photos16")
STEPS = (5, 10)
EVALUATE = 256
#: name -> (design seeds R, measured seeds R_m)
VARIANTS = {"current": (16, 16), "split": (32, 8)}
#: The rule (module docstring): the smallest oracle cost of the seventh evaluation per (solver, N) ...
ORACLE_COST = {("ddim", 5): 111_360, ("ddim", 10): 265_600, ("dpmpp2m", 5): 110_400, ("dpmpp2m", 10): 248_960}
#: ... the largest allowed share of it, the least point gain in any setting and on average.
COST_SHARE, WORST_ALLOWED, MEAN_REQUIRED = 0.10, -0.03, 0.02


def compute() -> dict[str, Any]:
    rows = []
    for name in MODELS:
        eps_fn, sched, shape = denoiser(name)
        design = jax.random.normal(jax.random.PRNGKey(SEED_DESIGN), (64, *shape))
        evaluate = jax.random.normal(jax.random.PRNGKey(SEED_PROTOTYPE), (EVALUATE, *shape))
        reference = reference_solution(eps_fn, sched, evaluate)
        for sampler in (DDIM(), DPMSolverPP2M()):
            solver = sampler_name(sampler)
            for steps in STEPS:
                errors, cells = {}, {}
                for variant, (seeds, measured) in VARIANTS.items():
                    start = time.perf_counter()
                    result = refined_grid(eps_fn, sched, design[:seeds], steps, sampler=sampler, measure_seeds=measured)
                    seconds = time.perf_counter() - start
                    errors[variant] = grid_errors(
                        run_grid(eps_fn, sched, result.grid, evaluate, sampler=sampler), reference
                    )
                    cells[variant] = {
                        "grid": result.grid.tolist(), "start": result.start_name, "rmse": float(errors[variant].mean()),
                        "evaluations": result.network_evaluations, "seconds": seconds,
                        "cost_share": result.network_evaluations / ORACLE_COST[(solver, steps)],
                    }  # fmt: skip
                gain = paired_gain(errors["current"], errors["split"])
                rows.append({"model": name, "solver": solver, "steps": steps, "variants": cells,
                             "gain_split_over_current": gain._asdict()})  # fmt: skip
                print(f"{name} {solver} N={steps}: current {cells['current']['rmse']:.4f}, split "
                      f"{cells['split']['rmse']:.4f} ({100 * gain.gain:+.1f} %)", flush=True)  # fmt: skip
    gains = [row["gain_split_over_current"]["gain"] for row in rows]
    worst_share = max(row["variants"]["split"]["cost_share"] for row in rows)
    adopt = worst_share <= COST_SHARE and min(gains) >= WORST_ALLOWED and float(np.mean(gains)) >= MEAN_REQUIRED
    return {"rows": rows, "worst_gain": min(gains), "mean_gain": float(np.mean(gains)),
            "worst_cost_share": worst_share, "adopt_split": adopt}  # fmt: skip


def render(results: dict[str, Any]) -> str:
    def cell(r: dict[str, Any], variant: str) -> str:
        v = r["variants"][variant]
        return f"{v['rmse']:.4f} ({v['start']}; {v['evaluations']:,} = {100 * v['cost_share']:.1f} %)"

    table = [
        [r["model"], r["solver"], r["steps"], cell(r, "current"), cell(r, "split"),
         f"{100 * r['gain_split_over_current']['gain']:+.1f} % [{100 * r['gain_split_over_current']['lo']:+.1f}, "
         f"{100 * r['gain_split_over_current']['hi']:+.1f}]"]
        for r in results["rows"]
    ]  # fmt: skip
    head = ["model", "solver", "N", "RMSE, current (start; cost)", "RMSE, split (start; cost)", "gain of split"]
    verdict = "adopt the split" if results["adopt_split"] else "keep the current default"
    return markdown_table(head, table) + (
        f"\n\nWorst gain {100 * results['worst_gain']:+.1f} %, mean {100 * results['mean_gain']:+.1f} %, "
        f"largest cost share {100 * results['worst_cost_share']:.1f} %: {verdict}.\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for refined_seeds_prototype.json")
    args = parser.parse_args()
    results = compute()
    config = {"models": MODELS, "steps": STEPS, "variants": VARIANTS, "evaluate": EVALUATE,
              "seed_design": SEED_DESIGN, "oracle_cost": {f"{s} {n}": c for (s, n), c in ORACLE_COST.items()},
              "rule": {"cost_share": COST_SHARE, "worst": WORST_ALLOWED, "mean": MEAN_REQUIRED}}  # fmt: skip
    write_result_json(args.out / "refined_seeds_prototype.json", results, config=config, seed=SEED_PROTOTYPE)
    print(render(results))


if __name__ == "__main__":
    main()

"""Benchmark: the design criteria's value and gradient, and a 500-iteration schedule optimisation.

Writes benchmarks/out/criteria.json (or --out). Targets, on the 2-core CPU:

- value and gradient of each criterion for T = 1000 in one jitted call: under 5 ms after compilation
  (gradient with respect to the 16 logits of a logSNR spline, i.e. through the schedule
  construction; criterion 3 also with respect to the 10 continuous grid times);
- a 500-iteration weakest-link optimisation started from the cosine schedule (spline family fitted
  to cosine, Adam): under 10 s including compilation. Timed first, in a fresh process, so that no
  earlier compilation helps it.

    python benchmarks/criteria.py [--T 1000] [--repeats 200] [--out benchmarks/out/criteria.json]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import pifs_jax as pj
from pifs_jax import criteria, optimize
from pifs_jax.results import write_result_json

VARIANCES = jnp.asarray([0.5, 2.0])
SIZES = jnp.asarray([192.0, 192.0])


def time_calls(fn, args_list, repeats):
    """Median and 10th-percentile wall time (ms) over ``repeats`` calls, cycling through ``args_list``."""
    times = []
    for i in range(repeats):
        args = args_list[i % len(args_list)]
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times)), float(np.percentile(times, 10))


def optimisation_benchmark(T: int, iterations: int) -> dict:
    """Wall time of a full weakest-link run from cosine, compilation included."""
    start = time.perf_counter()
    family, params = optimize.schedule_family("spline", T, start=pj.cosine(T), n_knots=16)
    objective = optimize.schedule_objective({"weakest_link": 1.0})
    setup = time.perf_counter() - start
    result = optimize.optimize_schedule(
        family, params, objective, iterations=iterations, learning_rate=1e-2, progress=False
    )
    total = time.perf_counter() - start
    # the same run again: the update is already compiled (same family, objective and optimiser)
    again = time.perf_counter()
    optimize.optimize_schedule(family, params, objective, iterations=iterations, learning_rate=1e-2, progress=False)
    warm = time.perf_counter() - again
    # the update step (value, gradient, Adam) compiled once for both runs
    compilations = optimize.compiled_update_count()
    return {
        "iterations": iterations,
        "total_s_including_compilation": total,
        "setup_s": setup,
        "warm_run_s": warm,
        "per_iteration_ms_warm": warm / iterations * 1e3,
        "update_compilations": compilations,
        "min_lstar_before": result.initial["min_lstar"],
        "min_lstar_after": result.final["min_lstar"],
        "target_s": 10.0,
        "meets_target": bool(total < 10.0),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--T", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--iterations", type=int, default=500)
    parser.add_argument("--out", default="benchmarks/out/criteria.json")
    args = parser.parse_args(argv)
    T = args.T

    optimisation = optimisation_benchmark(T, args.iterations)

    family = pj.logsnr_spline(T, n_knots=16)
    rng = np.random.default_rng(0)
    logits = [(jnp.asarray(0.3 * rng.normal(size=16), jnp.float32),) for _ in range(8)]
    grid = jnp.asarray(pj.uniform_grid(T, 10))
    sched_fixed = pj.scaled_linear(T)
    balanced = np.asarray(criteria.equal_work_times(sched_fixed, 10))
    uniform = np.asarray(pj.uniform_grid(T, 10), dtype=np.float64)
    times_list = [(jnp.asarray((1 - w) * uniform + w * balanced, jnp.float32),) for w in np.linspace(0.0, 1.0, 8)]
    losses = {
        "weakest_link": lambda p: -jnp.log(criteria.weakest_link(family.apply({"logits": p})).soft_min),
        "balanced_growth": lambda p: (
            criteria.growth_balance(family.apply({"logits": p}), VARIANCES, SIZES).cv_growth ** 2
        ),
        "balanced_growth_information": lambda p: (
            criteria.growth_balance(family.apply({"logits": p}), VARIANCES, SIZES).cv_information ** 2
        ),
        "workload_schedule": lambda p: criteria.workload(family.apply({"logits": p}), grid).cv ** 2,
        "all_three": lambda p: optimize.schedule_objective(
            {"weakest_link": 1.0, "balanced_growth": 1.0, "workload": 1.0}
        )(family.apply({"logits": p}))[0],
    }
    results = {"T": T, "optimisation_weakest_link_from_cosine": optimisation, "value_and_grad": {}}
    for name, loss in losses.items():
        fn = jax.jit(jax.value_and_grad(loss))
        start = time.perf_counter()
        jax.block_until_ready(fn(*logits[0]))
        compile_s = time.perf_counter() - start
        median, p10 = time_calls(fn, logits, args.repeats)
        results["value_and_grad"][name] = {
            "wrt": "16 spline logits",
            "median_ms": median,
            "p10_ms": p10,
            "compile_s": compile_s,
            "compilations": fn._cache_size(),
        }
    fn = jax.jit(jax.value_and_grad(lambda t: criteria.workload(sched_fixed, t).cv ** 2))
    start = time.perf_counter()
    jax.block_until_ready(fn(*times_list[0]))
    compile_s = time.perf_counter() - start
    median, p10 = time_calls(fn, times_list, args.repeats)
    results["value_and_grad"]["workload_grid_times"] = {
        "wrt": "11 continuous grid times (scaled_linear)",
        "median_ms": median,
        "p10_ms": p10,
        "compile_s": compile_s,
        "compilations": fn._cache_size(),
    }
    start = time.perf_counter()
    grid_result = optimize.optimize_grid(sched_fixed, 10, iterations=300)
    results["optimize_grid_10_steps"] = {
        "total_s_including_compilation": time.perf_counter() - start,
        "grid": grid_result.grid,
        "cv": grid_result.cv,
    }
    worst = max(v["median_ms"] for v in results["value_and_grad"].values())
    results["value_and_grad_target_ms"] = 5.0
    results["value_and_grad_meets_target"] = bool(worst < 5.0)
    write_result_json(
        args.out,
        results,
        config={
            "T": T,
            "repeats": args.repeats,
            "iterations": args.iterations,
            "dtype": "float32",
            "family": "logsnr_spline(n_knots=16)",
            "variances": [0.5, 2.0],
            "sizes": [192, 192],
        },
    )
    print(
        f"500-iteration weakest-link optimisation from cosine: {optimisation['total_s_including_compilation']:.2f} s "
        f"including compilation ({optimisation['warm_run_s']:.2f} s warm, "
        f"{optimisation['per_iteration_ms_warm']:.2f} ms/iteration, {optimisation['update_compilations']} compilation "
        f"of the update for both runs); min L* {optimisation['min_lstar_before']:.4g} -> "
        f"{optimisation['min_lstar_after']:.4g}"
    )
    for name, entry in results["value_and_grad"].items():
        print(
            f"value+grad {name:30s} median {entry['median_ms']:.3f} ms (p10 {entry['p10_ms']:.3f}), "
            f"compile {entry['compile_s']:.2f} s"
        )
    print(
        f"optimize_grid (10 steps, 300 iterations): {results['optimize_grid_10_steps']['total_s_including_compilation']:.2f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Benchmark: model-free geometry of a 1000-step schedule, value and gradient, compile once.

Writes benchmarks/out/geometry.json (or --out). Targets: each call under 2 ms on the
2-core CPU after compilation, and no recompilation when only parameter values change.

    python benchmarks/geometry.py [--T 1000] [--repeats 300] [--out benchmarks/out/geometry.json]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import pifs_jax as pj
from pifs_jax.results import write_result_json


def all_quantities(s, T):
    """Every per-step quantity of the cosine(s) chain plus lambda**."""
    sched = pj.cosine(T, s=s)
    c = pj.step_coefficients(sched)
    lam = jnp.logspace(-2, 2, 64)
    return {
        "a": c.a,
        "b": c.b,
        "lstar": pj.contraction_threshold(sched),
        "lambda_star": pj.expansion_threshold(sched),
        "f": pj.expansion_factor(sched, lam),
        "lambda_2star": pj.moran_threshold(sched),
    }


def criterion(s, T):
    """A criterion value: min L* plus lambda** (both differentiable in s)."""
    sched = pj.cosine(T, s=s)
    return jnp.min(pj.contraction_threshold(sched)) + pj.moran_threshold(sched)


def time_calls(fn, values, repeats):
    """Median and 10th-percentile wall time (ms) of fn(v) over ``repeats`` calls, cycling values."""
    jax.block_until_ready(fn(values[0]))  # compile
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(values[i % len(values)]))
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times)), float(np.percentile(times, 10))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--T", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument("--out", default="benchmarks/out/geometry.json")
    args = parser.parse_args(argv)
    T = args.T
    values = [jnp.asarray(v, jnp.float32) for v in np.linspace(0.0, 0.02, 17)]

    forward = jax.jit(lambda s: all_quantities(s, T))
    value_and_grad = jax.jit(jax.value_and_grad(lambda s: criterion(s, T)))
    start = time.perf_counter()
    jax.block_until_ready(forward(values[0]))
    compile_forward_s = time.perf_counter() - start
    start = time.perf_counter()
    jax.block_until_ready(value_and_grad(values[0]))
    compile_grad_s = time.perf_counter() - start

    fwd_median, fwd_p10 = time_calls(forward, values, args.repeats)
    grad_median, grad_p10 = time_calls(value_and_grad, values, args.repeats)
    results = {
        "forward_ms_median": fwd_median,
        "forward_ms_p10": fwd_p10,
        "value_and_grad_ms_median": grad_median,
        "value_and_grad_ms_p10": grad_p10,
        "compile_forward_s": compile_forward_s,
        "compile_value_and_grad_s": compile_grad_s,
        # one cache entry each after 17 distinct parameter values: no recompilation
        "compilations_forward": forward._cache_size(),
        "compilations_value_and_grad": value_and_grad._cache_size(),
        "distinct_parameter_values": len(values),
        "target_ms": 2.0,
    }
    results["meets_target"] = bool(fwd_median < 2.0 and grad_median < 2.0)
    write_result_json(
        args.out, results, config={"T": T, "repeats": args.repeats, "schedule": "cosine(s)", "dtype": "float32"}
    )
    for key, value in results.items():
        print(f"{key:32s} {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

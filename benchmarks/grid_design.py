"""Benchmark: designing a 10-step grid for a shipped model (``pj.design_grid``), cold and warm.

For ``--model`` (default the shipped ``dit-photos16``) and each ``--method`` (default
``geometric``, ``gits``), the wall time of ``design_grid(..., steps)`` in a fresh process
(compilation included: what a user waits for once) and a second call with other design noises
(warm: compiled programs reused), with the network evaluations each design costs. Target: the
default method designs a 10-step grid in under a minute on a 2-core CPU. The machine (CPU count,
load average, JAX backend) is recorded. Writes ``benchmarks/out/grid_design.json`` (or ``--out``)::

    python benchmarks/grid_design.py [--model dit-photos16] [--steps 10] [--methods geometric gits]
"""

from __future__ import annotations

import argparse
import os
import time

import jax

import pifs_jax as pj
from pifs_jax.models.pretrained import pretrained
from pifs_jax.results import write_result_json
from pifs_jax.samplers import named_sampler

TARGET_S = 60.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="dit-photos16")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--sampler", default="ddim")
    parser.add_argument("--methods", nargs="+", default=["geometric", "gits"])
    parser.add_argument("--design-seeds", type=int, default=16)
    parser.add_argument("--out", default="benchmarks/out/grid_design.json")
    args = parser.parse_args(argv)
    model = pretrained(args.model)
    sampler = named_sampler(args.sampler)
    results: dict = {"machine": {"cpus": os.cpu_count(), "load_average": os.getloadavg(),
                                 "backend": jax.default_backend()}, "methods": {}}  # fmt: skip
    for method in args.methods:
        times = []
        for seed in (1, 2):
            noise = jax.random.normal(jax.random.PRNGKey(seed), (args.design_seeds, *model.image_shape))
            start = time.perf_counter()
            designed = pj.design_grid(
                model.eps_fn, model.schedule, args.steps, sampler=sampler, method=method, x_T=noise
            )
            times.append(time.perf_counter() - start)
        results["methods"][method] = {
            "cold_s": times[0],
            "warm_s": times[1],
            "network_evaluations": designed.network_evaluations,
            "grid": designed.grid.tolist(),
            "meets_target": bool(times[0] < TARGET_S),
        }
        print(f"{method}: cold {times[0]:.1f} s, warm {times[1]:.1f} s, {designed.network_evaluations} evaluations")
    write_result_json(args.out, results, config=vars(args) | {"target_s": TARGET_S})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

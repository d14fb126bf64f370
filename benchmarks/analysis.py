"""Benchmark: :func:`pifs_jax.analyze_chain` on randomly initialised networks (time per chain step).

Cases:

- ``exact``: the quick DiT (16x16x3, ``p = 4``: ``M = 16`` patches of ``n_k = 48``, ``n = 768``),
  ``S = 16`` trajectories x 50 DDIM steps (cosine ``T = 1000``, uniform grid), exact blocks
  (``jax.jacfwd`` + SVD at every step), with the Gaussian baseline (patch statistics of 256 random
  images: suppression field and deviation) and the network's attention entropies: the whole
  analysis of the two-regime experiment. Target: under 2 minutes on a 2-core CPU.
- ``matrix_free``: a 32x32x3 network (``--large-model``: the full DiT, the full UNet, or
  ``cifar10_unet``: diffusers' google/ddpm-cifar10-32 architecture, 35.7M parameters, written with
  seeded random weights and converted by ``load_diffusers_unet``; ``p = 8``, ``M = 16`` patches of
  ``n_k = 192``), ``n = 3072``, one
  trajectory, block norms by ``--krylov-iters`` Golub-Kahan-Lanczos steps per block (``M^2``
  blocks), on a chain of ``--large-steps`` steps of the 50-step grid's spacing; reported per step.

Each case: the first call (compilation + run) and a second call with another parameter set of the
same architecture (run only: the analysis compiles once per architecture), median of
``--repeats``. float32. Runs unchanged on CUDA (``jax.default_backend()`` is recorded). Writes
``benchmarks/out/analysis.json`` (or ``--out``).

    python benchmarks/analysis.py [--cases exact matrix_free] [--repeats 1] [--out ...]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import pifs_jax as pj
from pifs_jax.analysis import analyze_chain, module_attention_fn
from pifs_jax.models import (
    as_eps_fn,
    count_params,
    init_params,
    load_diffusers_unet,
    make_model,
    write_random_diffusers_unet,
)
from pifs_jax.results import write_result_json

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from chain_spectrum import machine

T = 1000


def _timed(fn) -> tuple[float, Any]:
    start = time.perf_counter()
    out = jax.block_until_ready(fn())
    return time.perf_counter() - start, out


def _package_model(model: str, size: str, image_shape, patch_size: int):
    """``(describe, make(seed) -> (eps_fn, attention_fn, parameter count))`` for one of the package's own networks."""
    module, _ = make_model(model, image_shape=image_shape, patch_size=patch_size, size=size)

    def make(seed: int):
        params = init_params(module, jax.random.PRNGKey(seed), image_shape)
        return as_eps_fn(module, params), module_attention_fn(module, params), count_params(params)

    return {"model": model, "size": size}, make


def _converted_cifar10_unet(folder: str):
    """The google/ddpm-cifar10-32 architecture, written with seeded random weights and loaded (no download)."""
    from diffusers_unet import CIFAR10

    def make(seed: int):
        loaded = load_diffusers_unet(
            write_random_diffusers_unet(os.path.join(folder, f"seed{seed}"), CIFAR10, seed=seed)
        )
        return loaded.eps_fn, None, count_params(loaded.params)

    return {
        "model": "diffusers UNet2DModel, google/ddpm-cifar10-32 architecture (seeded random weights)",
        "size": "full",
    }, make


def _run(describe: dict, make, *, image_shape, patch_size, trajectories, grid, method, krylov_iters, repeats,
         baseline: bool, attention: bool) -> dict:  # fmt: skip
    models = [make(seed) for seed in (0, 1)]
    sched = pj.cosine(T)
    shape = (trajectories, *image_shape) if trajectories > 1 else tuple(image_shape)
    x_T = jax.random.normal(jax.random.PRNGKey(2), shape, jnp.float32)
    stats = None
    if baseline:
        data = jax.random.uniform(jax.random.PRNGKey(3), (256, *image_shape), minval=-1, maxval=1)
        stats = pj.patch_stats(data, patch_size=patch_size)

    def analysis(which):
        eps_fn, attention_fn, _ = models[which]
        return analyze_chain(
            eps_fn, sched, x_T, grid=grid, patch_size=patch_size, baseline=stats,
            attention_fn=attention_fn if attention else None, method=method, krylov_iters=krylov_iters,
        )  # fmt: skip

    first_s, result = _timed(lambda: analysis(0))
    times = [_timed(lambda: analysis(1))[0] for _ in range(repeats)]
    # --repeats 0 (a network too slow to run twice): the first call's time, compilation included
    run_s = float(np.median(times)) if times else first_s
    n_steps = int(np.shape(grid)[0]) - 1
    return {
        **describe,
        "parameters": models[0][2],
        "image_shape": list(image_shape),
        "n": int(np.prod(image_shape)),
        "patch_size": patch_size,
        "num_patches": result.num_patches,
        "trajectories": trajectories,
        "steps": n_steps,
        "method": result.method,
        "krylov_iters": krylov_iters if result.method == "matrix_free" else None,
        "baseline": baseline,
        "attention": attention,
        "first_call_s": first_s,
        "compile_s_estimate": first_s - run_s,
        "run_s_median": run_s,
        "run_s_all": times,
        "per_step_s": run_s / n_steps,
        "per_trajectory_step_s": run_s / (n_steps * trajectories),
        "kappa_diag_mean_range": [float(np.min(result.kappa_diag_mean)), float(np.max(result.kappa_diag_mean))],
    }


def exact_case(repeats: int) -> dict:
    describe, make = _package_model("dit", "quick", (16, 16, 3), 4)
    return _run(describe, make, image_shape=(16, 16, 3), patch_size=4, trajectories=16, grid=pj.uniform_grid(T, 50),
                method="exact", krylov_iters=32, repeats=repeats, baseline=True, attention=True)  # fmt: skip


def matrix_free_case(repeats: int, *, model: str, steps: int, krylov_iters: int) -> dict:
    grid = pj.uniform_grid(T, 50)[: steps + 1]  # the finest `steps` steps of the 50-step grid
    common = dict(image_shape=(32, 32, 3), patch_size=8, trajectories=1, grid=grid, method="matrix_free",
                  krylov_iters=krylov_iters, repeats=repeats, baseline=False, attention=False)  # fmt: skip
    if model != "cifar10_unet":
        describe, make = _package_model(model, "full", (32, 32, 3), 8)
        return _run(describe, make, **common)
    with tempfile.TemporaryDirectory(prefix="pifs_jax_bench_") as folder:
        describe, make = _converted_cifar10_unet(folder)
        return _run(describe, make, **common)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=["exact", "matrix_free"], choices=["exact", "matrix_free"])
    parser.add_argument("--repeats", type=int, default=1, help="timed calls after the first (0: report the first call)")
    parser.add_argument("--large-model", default="dit", choices=["dit", "unet", "cifar10_unet"])
    parser.add_argument("--large-steps", type=int, default=2)
    parser.add_argument("--krylov-iters", type=int, default=32)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "out", "analysis.json"))
    args = parser.parse_args(argv)
    config = vars(args) | {"backend": jax.default_backend()}
    results: dict[str, Any] = {"machine": machine()}
    start = time.perf_counter()
    for case in args.cases:
        if case == "exact":
            results["exact"] = exact_case(args.repeats)
        else:
            results["matrix_free"] = matrix_free_case(
                args.repeats, model=args.large_model, steps=args.large_steps, krylov_iters=args.krylov_iters
            )
        print(case, results[case], flush=True)
        write_result_json(args.out, results | {"wall_s": time.perf_counter() - start}, config=config, seed=0)
    results["machine_after"] = machine()
    write_result_json(args.out, results | {"wall_s": time.perf_counter() - start}, config=config, seed=0)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

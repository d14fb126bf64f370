"""All-in-one benchmark: geometry, chain spectra, training throughput and compile counts in ONE JSON.

Sections (each reuses the functions of the single-topic scripts, imported, not copied):

- ``geometry`` (``benchmarks/geometry.py``): median and 10th-percentile wall time of every
  per-step quantity of a ``T = 1000`` cosine schedule, and of a criterion's value and gradient.
- ``matmul`` (``benchmarks/chain_spectrum.py``, ``case_matmul``): the device's float32
  matrix-multiply rate ``2 m^3 / t`` of a jitted ``m x m @ m x m`` product (best of several calls),
  the reference of the spectra's FLOP fractions.
- ``full_spectrum`` (``case_full``): the full finite-time spectrum of a DDIM chain with an MLP
  denoiser at ``n`` (GPU: 3072, 50 steps; ``--cpu``: 384, 10 steps): compile time, wall time,
  time per step (Jacobian part and orthogonalisation part), and the fraction of the matmul rate
  reached by the useful work ``N (n F_tangent + 2 n^3)`` (``full_spectrum_flops``); a second chain
  with another schedule and grid counts recompilations (must be 0).
- ``leading_spectrum`` (``case_leading``): the leading ``k`` exponents by subspace iteration at
  ``n`` (GPU: 12288 = 64x64x3, k = 32; ``--cpu``: 1536, k = 8), with the check that the compiled
  program holds no ``n x n`` array.
- ``training`` (``benchmarks/training.py``, ``throughput``): images/s of the jitted training
  step of the DiT and the UNet at both sizes (``quick``: 16x16x3; ``full``: 32x32x3), at the
  presets' batch sizes on a GPU (``--cpu``: batch 8).
- ``compilations``: XLA backend compilations of each section (``jax.monitoring`` events,
  ``CompileCounter`` of ``chain_spectrum.py``), and the jit cache sizes of the geometry
  programs after 17 distinct parameter values (1 each: no recompilation).

``--quick`` keeps the sizes and lowers the repeats (GPU: under 8 minutes on one GPU); ``--cpu``
uses the smaller sizes above so the whole run takes minutes on a 2-core CPU. The machine (device,
CPU, load average, JAX version) is recorded. Writes ``benchmarks/out/run_all[_cpu][_quick].json``
(or ``--out``) with :func:`pifs_jax.results.write_result_json`::

    python benchmarks/run_all.py --quick            # one GPU
    python benchmarks/run_all.py --cpu --quick      # this CPU, a few minutes
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from pifs_jax.models import MODEL_NAMES, MODEL_SIZES
from pifs_jax.results import write_result_json

HERE = Path(__file__).resolve().parent


def load_script(name: str):
    """Import ``benchmarks/<name>.py`` as a module (the folder is not a package)."""
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


geometry = load_script("geometry")
chain_spectrum = load_script("chain_spectrum")
training = load_script("training")

#: Sizes per target; ``repeats`` are lowered by ``--quick``.
SIZES = {
    "gpu": {"matmul_n": 8192, "full_n": 3072, "full_steps": 50, "full_qr_every": 10, "width": 512,
            "leading_n": 12288, "leading_steps": 50, "k": 32, "leading_iters": 20, "oversample": 32,
            "leading_qr_every": 5, "tol": 1e-4, "batch_size": None},
    "cpu": {"matmul_n": 1536, "full_n": 384, "full_steps": 10, "full_qr_every": 5, "width": 128,
            "leading_n": 1536, "leading_steps": 10, "k": 8, "leading_iters": 10, "oversample": 8,
            "leading_qr_every": 2, "tol": 1e-4, "batch_size": 8},
}  # fmt: skip
REPEATS = {
    False: {"geometry": 300, "matmul": 5, "training": 10},
    True: {"geometry": 100, "matmul": 3, "training": 3},
}


def geometry_section(T: int, repeats: int) -> dict[str, Any]:
    """Forward quantities and a criterion's value-and-gradient of the cosine(s) schedule, timed."""
    values = [jnp.asarray(v, jnp.float32) for v in np.linspace(0.0, 0.02, 17)]
    forward = jax.jit(lambda s: geometry.all_quantities(s, T))
    value_and_grad = jax.jit(jax.value_and_grad(lambda s: geometry.criterion(s, T)))
    fwd_median, fwd_p10 = geometry.time_calls(forward, values, repeats)
    grad_median, grad_p10 = geometry.time_calls(value_and_grad, values, repeats)
    return {
        "T": T,
        "repeats": repeats,
        "forward_ms_median": fwd_median,
        "forward_ms_p10": fwd_p10,
        "value_and_grad_ms_median": grad_median,
        "value_and_grad_ms_p10": grad_p10,
        "jit_cache_size_forward": forward._cache_size(),
        "jit_cache_size_value_and_grad": value_and_grad._cache_size(),
        "distinct_parameter_values": len(values),
    }


def full_section(size: dict[str, Any], matmul_rate: float) -> dict[str, Any]:
    """The full spectrum at ``full_n``: time per step and the fraction of the matmul rate."""
    n, steps, width = size["full_n"], size["full_steps"], size["width"]
    run = chain_spectrum.case_full(n=n, steps=steps, width=width, qr_every=size["full_qr_every"], check_recompile=True)
    flops = chain_spectrum.full_spectrum_flops(n, steps, width=width)
    return {
        "n": n,
        "steps": steps,
        "width": width,
        "qr_every": size["full_qr_every"],
        "compile_s": run["compile_s"],
        "total_s": run["total_s"],
        "seconds_per_step": run["total_s"] / steps,
        "jacobian_s_per_step": run["jacobian_s_per_step"],
        "orthogonalisation_s_per_step": run["orthogonalisation_s_per_step"],
        "flops": flops,
        "flops_per_s": flops / run["total_s"],
        "fraction_of_matmul_rate": flops / run["total_s"] / matmul_rate,
        "recompile": run.get("recompile"),
        "dimension": run["dimension"],
        "memory": run["memory"],
    }


def leading_section(size: dict[str, Any]) -> dict[str, Any]:
    """Leading-k exponents at ``leading_n`` (matrix-free), and the no-``n x n``-buffer check."""
    run = chain_spectrum.case_leading(
        n=size["leading_n"],
        steps=size["leading_steps"],
        width=size["width"],
        k=size["k"],
        tol=size["tol"],
        iters=size["leading_iters"],
        oversample=size["oversample"],
        qr_every=size["leading_qr_every"],
        check_buffers=True,
    )
    keep = (
        "n",
        "steps",
        "k",
        "tol",
        "oversample",
        "qr_every",
        "max_iters",
        "iterations",
        "converged",
        "last_change",
        "compile_s",
        "total_s",
        "memory",
        "n2_float32_bytes",
        "buffers",
    )
    out = {key: run[key] for key in keep if key in run}
    out["seconds_per_iteration"] = run["total_s"] / max(int(run["iterations"]), 1)
    return out


def training_section(batch_size: int | None, repeats: int) -> list[dict[str, Any]]:
    """Images/s of the train step, both models at both sizes."""
    return [
        training.throughput(model, size, repeats=repeats, batch_size=batch_size)
        for model in MODEL_NAMES
        for size in MODEL_SIZES
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repeats (GPU: under 8 minutes)")
    parser.add_argument("--cpu", action="store_true", help="the smaller CPU sizes (minutes on 2 cores)")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/out/run_all[_cpu][_quick].json)")
    parser.add_argument(
        "--blas-threads",
        type=int,
        default=1,
        help="OpenBLAS threads of jaxlib's CPU LAPACK (0: library default); see chain_spectrum.py",
    )
    args = parser.parse_args(argv)
    size = SIZES["cpu" if args.cpu else "gpu"]
    repeats = REPEATS[args.quick]
    out = args.out or str(HERE / "out" / f"run_all{'_cpu' if args.cpu else ''}{'_quick' if args.quick else ''}.json")
    chain_spectrum.limit_blas_threads(args.blas_threads)

    counter = chain_spectrum.CompileCounter()
    results: dict[str, Any] = {"machine": chain_spectrum.machine(), "compilations": {}, "seconds": {}}
    config = {"quick": args.quick, "cpu": args.cpu, "sizes": size, "repeats": repeats}
    start_all = time.perf_counter()

    def section(name: str, fn, *fn_args, **fn_kwargs):
        print(f"[{time.strftime('%H:%M:%S')}] {name} ...", flush=True)
        counter.count, counter.active = 0, True
        start = time.perf_counter()
        try:
            value = fn(*fn_args, **fn_kwargs)
        finally:
            counter.active = False
        results[name] = value
        results["compilations"][name] = counter.count
        results["seconds"][name] = time.perf_counter() - start
        print(
            f"[{time.strftime('%H:%M:%S')}] {name}: {results['seconds'][name]:.1f} s, {counter.count} compilations",
            flush=True,
        )
        write_result_json(out, results, config=config)  # partial results survive a later failure
        return value

    section("geometry", geometry_section, 1000, repeats["geometry"])
    matmul = section("matmul", chain_spectrum.case_matmul, n=size["matmul_n"], repeats=repeats["matmul"])
    section("full_spectrum", full_section, size, matmul["flops_per_s"])
    section("leading_spectrum", leading_section, size)
    section("training", training_section, size["batch_size"], repeats["training"])
    results["seconds"]["total"] = time.perf_counter() - start_all
    path = write_result_json(out, results, config=config)

    full, lead = results["full_spectrum"], results["leading_spectrum"]
    print(
        f"machine: {results['machine']['platform']} {results['machine']['device_kind']}, "
        f"{results['machine']['cpu']} ({results['machine']['cpu_count']} cores)"
    )
    print(
        f"geometry: forward {results['geometry']['forward_ms_median']:.3f} ms, value+grad "
        f"{results['geometry']['value_and_grad_ms_median']:.3f} ms (median)"
    )
    print(f"matmul {matmul['n']}: {matmul['flops_per_s'] / 1e9:.1f} GFLOP/s")
    print(
        f"full spectrum n={full['n']}: {full['seconds_per_step'] * 1e3:.1f} ms/step, "
        f"{100 * full['fraction_of_matmul_rate']:.1f}% of the matmul rate, compile {full['compile_s']:.1f} s, "
        f"recompilations {full['recompile']['backend_compiles_during_second_call']}"
    )
    print(
        f"leading k={lead['k']} n={lead['n']}: {lead['total_s']:.2f} s ({lead['iterations']} iterations), "
        f"n x n arrays in the program: {lead['buffers']['n_by_n_shapes_in_hlo']}"
    )
    for row in results["training"]:
        print(
            f"train {row['model']}/{row['size']} batch {row['batch_size']}: {row['images_per_second']:.1f} images/s, "
            f"compile {row['compile_seconds']:.1f} s"
        )
    print(f"compilations: {results['compilations']}; total {results['seconds']['total']:.1f} s -> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Benchmark: the chain's full finite-time spectrum, pifs_jax's default call against a PyTorch peer.

The peer is what a user would otherwise write in PyTorch: along the DDIM chain, the step
Jacobian by ``torch.func.jacfwd``, ``Y = J Q``, a Householder QR per step
(``torch.linalg.qr``), the triangular factors multiplied up, ``P = R_N ... R_1``, and the singular
values of ``P`` at the end (``torch.linalg.svdvals``): ``Lambda = log sigma(P) / N``. (``P`` is
formed directly; this chain's exponents span a few nats, so nothing overflows in float32.)

Both run the same denoiser with the same weights: a 2-hidden-layer MLP (width 512, SiLU)
time-conditioned by the DDPM sinusoidal embedding of ``t`` (64 features), its weights drawn once
in NumPy (``W ~ N(0, 1/fan_in)``, zero biases, seed 0) and loaded into both frameworks; the same
``x_T``; the same DDIM coefficients ``a_t, b_t`` (:func:`pifs_jax.chain_steps`, cosine
``s = 0.008``, ``T = 1000``, 20 uniform steps); float32; ``n = 768``. Measured side by side in
one process: each side is called once to warm up (JAX compiles; PyTorch builds its kernels), then
the two are called alternately ``--repeats`` times (so both see the same load); each side's best
call is reported, with the JAX compilation time separately, and the ratio per round.
pifs_jax's call is :func:`pifs_jax.chain_lyapunov_spectrum` with its defaults (``qr_every="auto"``).

Threads: JAX uses XLA's CPU thread pool, with jaxlib's LAPACK (QR, SVD) limited to one OpenBLAS
thread (``--blas-threads``, as in ``chain_spectrum.py``). PyTorch is timed at each intra-op thread
count of ``--torch-threads`` (default 1 and 2, ``torch.set_num_threads``), every count in every
round; the ratio is taken against PyTorch's fastest count (``speedup = min_threads best_torch /
best_jax``), the per-count figures recorded.

Without PyTorch installed (it is the optional ``bench`` extra) the comparison is skipped and the
JSON says so. Writes ``benchmarks/out/torch_spectrum_baseline.json`` (or ``--out``)::

    python benchmarks/torch_spectrum_baseline.py [--n 768] [--steps 20] [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import pifs_jax as pj
from pifs_jax.results import write_result_json

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from chain_spectrum import limit_blas_threads, machine, mlp_eps

T = 1000
EMBED_DIM = 64
TARGET_SPEEDUP = 3.0


def numpy_mlp(n: int, *, width: int, embed_dim: int = EMBED_DIM, seed: int = 0) -> dict[str, np.ndarray]:
    """MLP weights in NumPy (float32): ``W ~ N(0, 1/fan_in)``, zero biases; keys ``w1, b1, ..., w3, b3``."""
    rng = np.random.default_rng(seed)
    params = {}
    for i, (fan_in, fan_out) in enumerate([(n + embed_dim, width), (width, width), (width, n)], start=1):
        params[f"w{i}"] = (rng.standard_normal((fan_in, fan_out)) / math.sqrt(fan_in)).astype(np.float32)
        params[f"b{i}"] = np.zeros((fan_out,), np.float32)
    return params


def chain_inputs(n: int, steps: int, *, seed: int = 1):
    """``x_T`` (NumPy float32), the schedule, the grid and the per-step ``(t, a, b)`` as NumPy arrays."""
    sched = pj.cosine(T, s=0.008)
    grid = np.asarray(pj.uniform_grid(T, steps))
    chain = pj.chain_steps(sched, jnp.asarray(grid))
    coefficients = tuple(np.asarray(v) for v in (chain.t, chain.a, chain.b))
    x_T = np.random.default_rng(seed).standard_normal(n).astype(np.float32)
    return x_T, sched, grid, coefficients


def torch_spectrum(params: dict, x_T: np.ndarray, coefficients: tuple, *, embed_dim: int = EMBED_DIM):
    """The PyTorch peer: jacfwd per step, Householder QR per step, SVD of ``R_N ... R_1`` at the end."""
    import torch
    from torch.func import jacfwd

    w = {k: torch.from_numpy(v) for k, v in params.items()}
    half = embed_dim // 2
    omega = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / (half - 1))

    def eps(x, t):
        args = t * omega
        h = torch.cat([x, torch.sin(args), torch.cos(args)])
        h = torch.nn.functional.silu(h @ w["w1"] + w["b1"])
        h = torch.nn.functional.silu(h @ w["w2"] + w["b2"])
        return h @ w["w3"] + w["b3"]

    ts, a_s, b_s = coefficients
    with torch.no_grad():
        x = torch.from_numpy(x_T.copy())
        n = x.shape[0]
        q = torch.eye(n)
        product = torch.eye(n)
        for t, a, b in zip(ts, a_s, b_s, strict=True):
            t_ = torch.tensor(float(t))
            a_, b_ = float(a), float(b)

            def step(v, a_=a_, b_=b_, t_=t_):
                return a_ * v + b_ * eps(v, t_)

            jac = jacfwd(step)(x)
            q, r = torch.linalg.qr(jac @ q)
            product = r @ product
            x = step(x)
        sigma = torch.linalg.svdvals(product)
    return (torch.log(sigma) / len(ts)).numpy()


def jax_spectrum_fn():
    """pifs_jax's default full-spectrum call, jitted over (parameters, schedule, state, grid)."""

    @jax.jit
    def spectrum(params, sched, x_T, grid):
        return pj.chain_lyapunov_spectrum(functools.partial(mlp_eps, params), sched, x_T, grid=grid).exponents

    return spectrum


def compare(*, n: int, steps: int, width: int, repeats: int, torch_threads: tuple[int, ...] = (1, 2)) -> dict[str, Any]:
    """Both spectra side by side: times (round-robin, best of ``repeats`` each), ratio, agreement.

    PyTorch runs at each count of ``torch_threads`` in every round; ``speedup`` is against its
    fastest count.
    """
    params = numpy_mlp(n, width=width)
    x_T, sched, grid, coefficients = chain_inputs(n, steps)
    jax_params = {k: jnp.asarray(v) for k, v in params.items()}
    spectrum = jax_spectrum_fn()
    args = (jax_params, sched, jnp.asarray(x_T), jnp.asarray(grid))

    def run_jax():
        return np.asarray(jax.block_until_ready(spectrum(*args)))

    start = time.perf_counter()
    jax_exponents = run_jax()
    jax_first_s = time.perf_counter() - start
    out: dict[str, Any] = {"n": n, "steps": steps, "width": width}
    try:
        import torch
    except ImportError:
        torch = None

    def run_torch(threads: int):
        torch.set_num_threads(threads)
        return torch_spectrum(params, x_T, coefficients)

    threads = tuple(torch_threads) if torch is not None else ()
    default_threads = torch.get_num_threads() if torch is not None else None
    torch_first_s: dict[int, float] = {}
    torch_exponents = None
    for count in threads:
        start = time.perf_counter()
        torch_exponents = run_torch(count)
        torch_first_s[count] = time.perf_counter() - start
    jax_times: list[float] = []
    torch_times: dict[int, list[float]] = {count: [] for count in threads}
    for _ in range(repeats):  # interleaved, so both see the same load
        start = time.perf_counter()
        run_jax()
        jax_times.append(time.perf_counter() - start)
        for count in threads:
            start = time.perf_counter()
            run_torch(count)
            torch_times[count].append(time.perf_counter() - start)
    if torch is not None:
        torch.set_num_threads(default_threads)
    out["jax"] = {
        "first_call_s": jax_first_s, "best_s": min(jax_times), "times_s": jax_times,
        "call": "chain_lyapunov_spectrum defaults (qr_every='auto')",
    }  # fmt: skip
    if torch is None:
        out["torch"] = "skipped: torch not installed"
        return out
    fastest = min(threads, key=lambda count: min(torch_times[count]))
    out["torch"] = {
        "version": torch.__version__,
        "default_threads": default_threads,
        "threads": fastest,
        "first_call_s": torch_first_s[fastest],
        "best_s": min(torch_times[fastest]),
        "times_s": torch_times[fastest],
        "by_threads": {
            str(count): {"best_s": min(torch_times[count]), "times_s": torch_times[count],
                         "first_call_s": torch_first_s[count]}
            for count in threads
        },
        "call": "torch.func.jacfwd per step, torch.linalg.qr per step, svdvals of R_N...R_1",
    }  # fmt: skip
    out["speedup"] = min(torch_times[fastest]) / min(jax_times)
    out["speedup_by_torch_threads"] = {str(c): min(torch_times[c]) / min(jax_times) for c in threads}
    out["speedup_per_round"] = [
        min(torch_times[c][i] for c in threads) / j for i, j in enumerate(jax_times)
    ]  # against the fastest count of each round
    out["speedup_first_call_with_compilation"] = torch_first_s[fastest] / jax_first_s
    out["max_abs_difference_exponents"] = float(np.max(np.abs(np.sort(torch_exponents)[::-1] - jax_exponents)))
    out["meets_target"] = bool(out["speedup"] >= TARGET_SPEEDUP)
    out["target_speedup"] = TARGET_SPEEDUP
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=768)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="n = 48, width 64, 10 steps (smoke test)")
    parser.add_argument("--blas-threads", type=int, default=1, help="OpenBLAS threads for jaxlib's LAPACK (0: default)")
    parser.add_argument(
        "--torch-threads", default="1,2", help="PyTorch intra-op thread counts to time, comma-separated"
    )
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    torch_threads = tuple(int(count) for count in args.torch_threads.split(","))
    limit_blas_threads(args.blas_threads)
    n, steps, width = (48, 10, 64) if args.quick else (args.n, args.steps, args.width)
    config = {
        "benchmark": "torch_spectrum_baseline", "n": n, "steps": steps, "width": width, "repeats": args.repeats,
        "blas_threads": args.blas_threads, "torch_threads": list(torch_threads), "dtype": "float32", "schedule": "cosine s = 0.008, T = 1000, uniform grid",
    }  # fmt: skip
    results = compare(n=n, steps=steps, width=width, repeats=args.repeats, torch_threads=torch_threads)
    results["machine"] = machine()
    out = Path(args.out or f"benchmarks/out/torch_spectrum_baseline{'_quick' if args.quick else ''}.json")
    write_result_json(out, results, config=config, seed=0)
    print(f"jax best {results['jax']['best_s']:.3f} s (first call {results['jax']['first_call_s']:.2f} s)")
    if isinstance(results["torch"], dict):
        print(
            f"torch best {results['torch']['best_s']:.3f} s ({results['torch']['threads']} threads); "
            f"speedup {results['speedup']:.2f}x; "
            f"max |difference| {results['max_abs_difference_exponents']:.2e}"
        )
    else:
        print(results["torch"])
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

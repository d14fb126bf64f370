"""Benchmark: Lyapunov spectra of a DDIM chain with an MLP denoiser; time, memory, compile once.

The denoiser is a 2-hidden-layer MLP (width 512, SiLU), time-conditioned by concatenating the
DDPM sinusoidal embedding of ``t`` (64 features) to the flattened input, randomly initialised
(``W ~ N(0, 1/fan_in)``): ``eps(x, t) = W3 silu(W2 silu(W1 [x; e(t)] + b1) + b2) + b3``. Its
parameters are arguments of the jitted programs (not baked-in constants), as for a trained model.
The chain: cosine ``s = 0.008``, ``T = 1000``, 50 uniform DDIM steps, float32.

Cases (each run in its own subprocess, so that peak memory is the case's own; ``--in-process``
runs them in this process instead):

- ``matmul``: the machine's float32 matrix-multiply rate, a jitted ``n x n @ n x n`` at
  ``n = 3072``, best of several calls: ``2 n^3 / t``.
- ``qr``: one square ``n x n`` float32 QR with a positive diagonal at ``n = 768`` and ``n = 3072``,
  by LAPACK Householder (:func:`pifs_jax.orthogonalization.householder_qr`) and by CholeskyQR2
  (:func:`pifs_jax.orthogonalization.cholesky_qr2`), best of several calls: the measurement
  behind :data:`pifs_jax.orthogonalization.PREFERRED_QR_METHOD`.
- ``full``: the full finite-time spectrum (:func:`pifs_jax.lyapunov.chain_lyapunov_spectrum`,
  ``k=None``) at ``n = 768`` on the 50-step chain, for the default ``qr_every="auto"`` and for
  fixed ``qr_every`` in 1, 5, 10, 25, 50 (``sweep``: all six compiled, then timed round-robin,
  best of three each; ``fewer_qrs``: the number of QRs the default took, its time against the
  best fixed one -- target within 10 % -- and the largest exponent difference from a QR at every
  step). For the default alone, wall time is split into the tangent work (a
  separate jitted scan that pushes ``n`` tangents through each step along the same trajectory by
  :func:`pifs_jax.forward_products`, as the spectrum's ``J Q`` does) and the rest
  ("orthogonalisation": the QRs and probes, the graded product update and the final singular
  values); peak memory; the fraction of the matmul rate reached by the useful floating-point work
  ``FLOPs = N (n * F_tangent + 2 n^3)``, with ``F_tangent = 2 ((n + E) w + w^2 + w n)`` the
  multiply-adds of one forward-mode tangent through the MLP (``E`` embedding features, ``w``
  width) and ``2 n^3`` one ``n x n`` product per step. At ``n = 3072`` the default full spectrum
  is measured on a short chain (``large_steps`` = 10 uniform steps of the same cosine schedule):
  on this CPU a step costs about half a second and the final singular values several seconds.
- ``leading``: the leading ``k = 32`` exponents (matrix-free subspace iteration, JVPs and VJPs;
  16 oversampling vectors, the default adaptive re-orthonormalisation, stopping when no exponent
  moves by more than 5e-4 per step, half the agreement target) at ``n = 3072`` on the same short chain as the full
  spectrum: time against the default full spectrum (target >= 10x faster) and agreement of the
  leading exponents (target 1e-3 per step); with ``--huge``, at ``n = 12288`` (64x64x3) on the
  50-step chain, the compiled program's buffers are checked for any ``n x n`` array (none may
  exist) and peak memory is compared with ``n^2 * 4`` bytes.
- ``batch``: ``B = 8`` full spectra at ``n_small`` on the same chain from 8 starting points, by
  :func:`pifs_jax.chain_lyapunov_spectra` (one call) against 8 single-trajectory calls and against
  ``jax.vmap`` of the single call (the adaptive ``cond`` a select at every step); interleaved
  rounds, best each; target: the batched call at most the 8 single ones.
- compile once: after the first 50-step call, a second chain with the same shapes but another
  schedule (linear) and another grid (trailing spacing) is run; the jitted function's cache size
  and the number of XLA backend compilations during that call (``jax.monitoring``) must stay 1
  and 0.

The PyTorch peer (the same spectrum with ``torch.func.jacfwd`` and a QR per step) is measured by
``benchmarks/torch_spectrum_baseline.py``.

BLAS threads: jaxlib's CPU LAPACK kernels (QR, SVD) run on OpenBLAS, whose own worker threads
compete with XLA's thread pool; on a busy 2-core machine a ``3072 x 32`` QR then took 0.6 s
instead of 1.3 ms and a ``3072 x 3072`` QR 57 s instead of 2.5 s. ``--blas-threads 1`` (the
default; ``0`` leaves the library's own setting) limits OpenBLAS with ``threadpoolctl`` in every
process through :func:`pifs_jax.limit_host_threads`, which imports ``scipy.linalg`` first so that the
OpenBLAS jaxlib's LAPACK kernels use is loaded and limited too (:func:`limit_blas_threads`); it has no
effect on GPU.

Peak memory: ``jax.devices()[0].memory_stats()["peak_bytes_in_use"]`` where the backend reports it
(GPU), else the process's peak resident set size (``resource.getrusage``), reported with the
resident size just before the first compilation (the JAX runtime, the data and the parameters).

Writes ``benchmarks/out/chain_spectrum.json`` (or ``--out``) through
:func:`pifs_jax.results.write_result_json`. Runs unchanged on CUDA. ``--quick`` uses tiny sizes
(``n = 48`` for every case, 10 steps, ``k = 8``, width 64) and runs in seconds (a smoke test)::

    python benchmarks/chain_spectrum.py [--quick] [--out benchmarks/out/chain_spectrum.json]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import pifs_jax as pj
from pifs_jax.models.common import sinusoidal_embedding
from pifs_jax.results import write_result_json

T = 1000
EMBED_DIM = 64

#: Sizes of the full and the quick run.
SIZES = {
    "full": {"n_small": 768, "n_large": 3072, "n_huge": 12288, "steps": 50, "large_steps": 10, "k": 32,
             "width": 512, "matmul_n": 3072, "matmul_repeats": 5, "huge_iters": 20,
             "qr_sweep": [1, 5, 10, 25, 50], "qr_every": 10, "rounds": 3, "qr_sizes": [768, 3072], "qr_repeats": 2,
             "oversample": 16, "tol": 5e-4, "batch": 8},
    "quick": {"n_small": 48, "n_large": 48, "n_huge": 48, "steps": 10, "large_steps": 10, "k": 8, "width": 64,
              "matmul_n": 256, "matmul_repeats": 3, "huge_iters": 200, "qr_sweep": [1, 4, 10], "qr_every": 4, "rounds": 2,
              "qr_sizes": [48], "qr_repeats": 3, "oversample": 8, "tol": 1e-5, "batch": 8},
}  # fmt: skip
"""``qr_sweep``: the fixed ``qr_every`` values the default is compared with at ``n_small`` (each timed
``rounds`` times, round-robin, best kept; it must contain 1 and ``qr_every``, the block length whose
exponents and time are compared with a QR at every step);
``large_steps``: the short chain of the ``n_large`` full and leading spectra; ``huge_iters`` caps the
subspace iterations at ``n_huge``, where the point is memory, not precision; ``oversample`` and
``tol`` configure the leading-``k`` subspace iteration."""

TARGET_SPEEDUP = 10.0
TARGET_AGREEMENT = 1e-3
TARGET_FLOP_FRACTION = 0.5
TARGET_DEFAULT_OVERHEAD = 0.10


# ----------------------------------------------------------------------------- the denoiser


def init_mlp(key: jax.Array, n: int, *, width: int, embed_dim: int = EMBED_DIM, dtype=jnp.float32) -> dict:
    """Random parameters of the MLP denoiser: ``W ~ N(0, 1/fan_in)``, zero biases."""
    sizes = [(n + embed_dim, width), (width, width), (width, n)]
    keys = jax.random.split(key, len(sizes))
    params = {}
    for i, ((fan_in, fan_out), k) in enumerate(zip(sizes, keys, strict=True), start=1):
        params[f"w{i}"] = jax.random.normal(k, (fan_in, fan_out), dtype) / np.sqrt(fan_in)
        params[f"b{i}"] = jnp.zeros((fan_out,), dtype)
    return params


def mlp_eps(params: dict, x: jax.Array, t: Any) -> jax.Array:
    """``eps(x, t) = W3 silu(W2 silu(W1 [x; e(t)] + b1) + b2) + b3`` on the flattened ``x``."""
    embed_dim = params["w1"].shape[0] - x.size
    h = jnp.concatenate([x.reshape(-1), sinusoidal_embedding(t, embed_dim).astype(x.dtype)])
    h = jax.nn.silu(h @ params["w1"] + params["b1"])
    h = jax.nn.silu(h @ params["w2"] + params["b2"])
    return (h @ params["w3"] + params["b3"]).reshape(x.shape)


def tangent_flops(n: int, *, width: int, embed_dim: int = EMBED_DIM) -> int:
    """Floating-point operations of one forward-mode tangent through the MLP (its three products)."""
    return 2 * ((n + embed_dim) * width + width * width + width * n)


def full_spectrum_flops(n: int, n_steps: int, *, width: int, embed_dim: int = EMBED_DIM) -> int:
    """``N (n F_tangent + 2 n^3)``: the step Jacobians (``n`` tangents) and one ``n x n`` product per step."""
    return n_steps * (n * tangent_flops(n, width=width, embed_dim=embed_dim) + 2 * n**3)


FLOPS_FORMULA = "N * (n * 2 * ((n + E) * w + w * w + w * n) + 2 * n**3), E = 64 embedding features, w = width"


# ----------------------------------------------------------------------------- jitted programs


@functools.partial(jax.jit, static_argnames=("k", "iters", "tol", "qr_every", "oversample"))
def chain_spectrum(params, sched, x_T, grid, *, k=None, iters=200, tol=None, qr_every="auto", oversample=0):
    """Exponents, dimension and ``(QRs taken, 0)`` (full) or ``(iterations, last change)`` (leading-k)."""
    spec = pj.chain_lyapunov_spectrum(
        functools.partial(mlp_eps, params), sched, x_T, grid=grid, k=k, iters=iters, tol=tol,
        return_history=True, qr_every=qr_every, oversample=oversample,
    )  # fmt: skip
    if k is None:  # the number of QRs taken: the history is finite exactly after each
        return spec.exponents, spec.dimension, (jnp.sum(jnp.isfinite(spec.history[:, 0])), jnp.asarray(0.0))
    iterations = jnp.sum(~jnp.isnan(spec.history[:, 0]))
    # the largest change of any exponent in the last iteration (the convergence criterion)
    previous, last = spec.history[jnp.maximum(iterations - 2, 0)], spec.history[iterations - 1]
    return spec.exponents, spec.dimension, (iterations, jnp.max(jnp.abs(last - previous)))


@jax.jit
def step_jacobians(params, sched, x_T, grid):
    """The tangent work of the full spectrum along the chain: ``n`` tangents pushed through each step.

    :func:`pifs_jax.forward_products` of each step with ``V = I`` and the spectrum's batch sizing
    (``chunk=None``), the cost of its ``J Q``; each result reduced to its sum so it is formed.
    """
    eps_fn = functools.partial(mlp_eps, params)
    steps = pj.chain_steps(sched, grid)
    eye = jnp.eye(x_T.size, dtype=x_T.dtype)

    def body(x, s):
        x_next, jac = pj.forward_products(lambda v: pj.ddim_step(eps_fn, v, s.t, s.a, s.b), x, eye, chunk=None)
        return x_next, jnp.sum(jac)

    return jax.lax.scan(body, x_T, steps)


@functools.partial(jax.jit, static_argnames=("plain_vmap",))
def chain_spectra(params, sched, x_T, grid, *, plain_vmap=False):
    """Full spectra (default options) of a batch of starting points ``x_T`` (shape ``(B, n)``).

    :func:`pifs_jax.chain_lyapunov_spectra`, or with ``plain_vmap`` ``jax.vmap`` of the
    single-trajectory call (no batch-wide decisions: every adaptive ``cond`` becomes a select).
    """
    eps_fn = functools.partial(mlp_eps, params)
    if plain_vmap:
        return jax.vmap(lambda x: pj.chain_lyapunov_spectrum(eps_fn, sched, x, grid=grid).exponents)(x_T)
    return pj.chain_lyapunov_spectra(eps_fn, sched, x_T, grid=grid, check_finite=False).exponents


# ----------------------------------------------------------------------------- measurement helpers


def _block(tree: Any) -> Any:
    return jax.tree_util.tree_map(lambda v: np.asarray(jax.block_until_ready(v)), tree)


def timed(fn, *args, **kwargs) -> tuple[Any, float]:
    """``(result, seconds)`` of one call, blocking on the result."""
    start = time.perf_counter()
    out = _block(fn(*args, **kwargs))
    return out, time.perf_counter() - start


def peak_memory() -> dict[str, Any]:
    """Peak memory so far: the device's ``peak_bytes_in_use`` if reported, else the process's peak RSS."""
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return {"peak_bytes": int(stats["peak_bytes_in_use"]), "source": "device memory_stats peak_bytes_in_use"}
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"peak_bytes": int(rss_kib) * 1024, "source": "process peak RSS (getrusage ru_maxrss)"}


class CompileCounter:
    """Counts XLA backend compilations (``jax.monitoring`` duration events) while ``active``."""

    def __init__(self) -> None:
        self.count = 0
        self.active = False
        jax.monitoring.register_event_duration_secs_listener(self._listen)

    def _listen(self, event: str, duration: float, **_: Any) -> None:
        if self.active and event == "/jax/core/compile/backend_compile_duration":
            self.count += 1


def setup(n: int, n_steps: int, *, width: int, seed: int = 0):
    """Parameters, the initial state, the cosine schedule and its uniform grid."""
    key_params, key_x = jax.random.split(jax.random.PRNGKey(seed))
    params = init_mlp(key_params, n, width=width)
    x_T = jax.random.normal(key_x, (n,), jnp.float32)
    return params, x_T, pj.cosine(T, s=0.008), jnp.asarray(pj.uniform_grid(T, n_steps))


def machine() -> dict[str, Any]:
    """The device and host, in words."""
    device = jax.devices()[0]
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            names = [line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return {
        "platform": device.platform,
        "device_kind": device.device_kind,
        "device_count": jax.device_count(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "jax": jax.__version__,
    }


# ----------------------------------------------------------------------------- cases


def case_matmul(*, n: int, repeats: int) -> dict[str, Any]:
    """float32 ``n x n @ n x n``, jitted, best of ``repeats`` calls."""
    a, b = (jax.random.normal(k, (n, n), jnp.float32) for k in jax.random.split(jax.random.PRNGKey(1)))
    product = jax.jit(jnp.matmul)
    _block(product(a, b))
    best = min(timed(product, a, b)[1] for _ in range(repeats))
    return {"n": n, "best_s": best, "flops_per_s": 2 * n**3 / best, "repeats": repeats}


def case_full(
    *, n: int, steps: int, width: int, qr_every: int | str = "auto", check_recompile: bool = False
) -> dict[str, Any]:
    """Full spectrum of an ``steps``-step chain at ``n``: total time, its Jacobian part, memory.

    With ``check_recompile`` the spectrum goes through the jit's own dispatch twice: the cosine
    chain (compilation + run), then the linear chain on a trailing grid (run only, counted for
    compilations; its time is the reported run time). Otherwise it is compiled ahead of time and
    run once.
    """
    params, x_T, sched, grid = setup(n, steps, width=width)
    before = peak_memory()
    recompile = None
    if check_recompile:
        # k passed exactly as recompile_check passes it: explicit and default static arguments key
        # the jit cache differently
        (exponents, dimension, (qrs, _)), first_s = timed(
            chain_spectrum, params, sched, x_T, grid, k=None, qr_every=qr_every
        )
        recompile = recompile_check(params, x_T, steps=steps, k=None, qr_every=qr_every)
        total_s = recompile["second_call_s"]
        compile_s = first_s - total_s
    else:
        start = time.perf_counter()
        compiled = chain_spectrum.lower(params, sched, x_T, grid, qr_every=qr_every).compile()
        compile_s = time.perf_counter() - start
        (exponents, dimension, (qrs, _)), total_s = timed(compiled, params, sched, x_T, grid)
    jac_compiled = step_jacobians.lower(params, sched, x_T, grid).compile()
    _, jacobian_s = timed(jac_compiled, params, sched, x_T, grid)
    out = {
        "n": n,
        "steps": steps,
        "qr_every": qr_every,
        "qrs": int(qrs),
        "compile_s": compile_s,
        "total_s": total_s,
        "jacobian_s": jacobian_s,
        "orthogonalisation_s": total_s - jacobian_s,
        "jacobian_s_per_step": jacobian_s / steps,
        "orthogonalisation_s_per_step": (total_s - jacobian_s) / steps,
        "flops": full_spectrum_flops(n, steps, width=width),
        "exponents": exponents,
        "dimension": float(dimension),
        "memory_before_compile": before,
        "memory": peak_memory(),
        "n2_float32_bytes": 4 * n * n,
    }
    if recompile is not None:
        out["recompile"] = recompile
    return out


def case_leading(
    *,
    n: int,
    steps: int,
    width: int,
    k: int,
    tol: float,
    iters: int = 200,
    oversample: int = 0,
    qr_every: int | str = "auto",
    check_buffers: bool = False,
) -> dict[str, Any]:
    """Leading-``k`` spectrum of an ``steps``-step chain at ``n``; optionally the ``n x n`` buffer check.

    Subspace iteration stops when no exponent moves by more than ``tol`` (per step) or after ``iters``
    iterations; ``converged`` and ``last_change`` say which.
    """
    params, x_T, sched, grid = setup(n, steps, width=width)
    before = peak_memory()
    start = time.perf_counter()
    lowered = chain_spectrum.lower(
        params, sched, x_T, grid, k=k, iters=iters, tol=tol, oversample=oversample, qr_every=qr_every
    )
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    (exponents, _dimension, (iterations, change)), total_s = timed(compiled, params, sched, x_T, grid)
    out = {
        "n": n,
        "steps": steps,
        "k": k,
        "tol": tol,
        "oversample": oversample,
        "qr_every": qr_every,
        "max_iters": iters,
        "converged": bool(change <= tol),
        "last_change": float(change),
        "compile_s": compile_s,
        "total_s": total_s,
        "iterations": int(iterations),
        "exponents": exponents,
        "memory_before_compile": before,
        "memory": peak_memory(),
        "n2_float32_bytes": 4 * n * n,
    }
    if check_buffers:
        out["buffers"] = buffer_check(compiled, n)
    return out


def buffer_check(compiled: Any, n: int) -> dict[str, Any]:
    """Does the compiled program hold any ``n x n`` array? Its temporary buffer size."""
    text = compiled.as_text()
    square = f"[{n},{n}]"
    analysis = None
    try:
        mem = compiled.memory_analysis()
        analysis = {
            "temp_bytes": int(mem.temp_size_in_bytes),
            "argument_bytes": int(mem.argument_size_in_bytes),
            "output_bytes": int(mem.output_size_in_bytes),
        }
    except Exception:  # pragma: no cover - backend-specific
        pass
    return {"n_by_n_shapes_in_hlo": text.count(square), "memory_analysis": analysis}


def recompile_check(params, x_T, *, steps: int, k: int | None, qr_every: int | str = "auto") -> dict[str, Any]:
    """A second chain with the same shapes, another schedule and grid: no new compilation.

    Call after a first :func:`chain_spectrum` call through the jit's dispatch with the same shapes.
    """
    sched2 = pj.linear(T)
    grid2 = jnp.asarray(pj.diffusers_grid(T, steps, spacing="trailing"))
    size_before = chain_spectrum._cache_size()
    counter = CompileCounter()
    counter.active = True
    _, second_s = timed(chain_spectrum, params, sched2, x_T, grid2, k=k, qr_every=qr_every)
    counter.active = False
    return {
        "second_schedule": "linear, trailing grid",
        "second_call_s": second_s,
        "backend_compiles_during_second_call": counter.count,
        "jit_cache_size_before": size_before,
        "jit_cache_size_after": chain_spectrum._cache_size(),
    }


def case_sweep(*, n: int, steps: int, width: int, variants: list, rounds: int = 3) -> dict[str, Any]:
    """The full spectrum for each ``qr_every`` in ``variants``, compiled first, then timed round-robin.

    Each round calls every variant once; a variant's time is its best over ``rounds``. Interleaving
    the calls makes the comparison fair when other jobs load the machine unevenly.
    """
    params, x_T, sched, grid = setup(n, steps, width=width)
    compiled = {str(m): chain_spectrum.lower(params, sched, x_T, grid, qr_every=m).compile() for m in variants}
    times: dict[str, list[float]] = {key: [] for key in compiled}
    results: dict[str, Any] = {}
    for _ in range(rounds):
        for key, program in compiled.items():
            out, seconds = timed(program, params, sched, x_T, grid)
            times[key].append(seconds)
            results[key] = out
    return {
        "n": n, "steps": steps, "rounds": rounds,
        "runs": {key: {"best_s": min(times[key]), "times_s": times[key], "qrs": int(results[key][2][0]),
                       "exponents": results[key][0]} for key in compiled},
    }  # fmt: skip


def case_batch(*, n: int, steps: int, width: int, batch: int, rounds: int = 2) -> dict[str, Any]:
    """``batch`` full spectra by :func:`pifs_jax.chain_lyapunov_spectra` against ``batch`` single calls.

    All compiled first; then ``rounds`` rounds, each timing the batched call, the ``batch``
    single-trajectory calls one after another, and ``jax.vmap`` of the single call (every adaptive
    ``cond`` a select: the behaviour before batch-wide decisions); best of the rounds each.
    Target: the batched call at most the ``batch`` single ones.
    """
    params, _, sched, grid = setup(n, steps, width=width)
    x_T = jax.random.normal(jax.random.PRNGKey(7), (batch, n), jnp.float32)
    batched = chain_spectra.lower(params, sched, x_T, grid).compile()
    plain = chain_spectra.lower(params, sched, x_T, grid, plain_vmap=True).compile()
    single = chain_spectrum.lower(params, sched, x_T[0], grid).compile()

    def singles():
        return [single(params, sched, x, grid)[0] for x in x_T]

    programs = {"batched": lambda: batched(params, sched, x_T, grid), "singles": singles,
                "plain_vmap": lambda: plain(params, sched, x_T, grid)}  # fmt: skip
    results = {key: _block(program()) for key, program in programs.items()}
    times: dict[str, list[float]] = {key: [] for key in programs}
    for _ in range(rounds):
        for key, program in programs.items():
            times[key].append(timed(program)[1])
    best = {key: min(value) for key, value in times.items()}
    single_rows = np.stack(results["singles"])
    return {
        "n": n, "steps": steps, "batch": batch, "rounds": rounds,
        "batched_s": best["batched"], "singles_s": best["singles"], "plain_vmap_s": best["plain_vmap"],
        "times_s": times,
        "batched_over_singles": best["batched"] / best["singles"],
        "plain_vmap_over_singles": best["plain_vmap"] / best["singles"],
        "meets_target": bool(best["batched"] <= best["singles"]),
        "max_abs_difference_batched_vs_single": float(np.max(np.abs(results["batched"] - single_rows))),
    }  # fmt: skip


def case_qr(*, sizes: list[int], repeats: int) -> dict[str, Any]:
    """A square float32 QR with positive diagonal: Householder against CholeskyQR2, best of ``repeats``."""
    from pifs_jax.orthogonalization import QR_METHODS, positive_qr, preferred_qr_method

    out: dict[str, Any] = {"backend": jax.default_backend(), "preferred": preferred_qr_method(), "runs": []}
    for n in sizes:
        # like an accumulated tangent block: an orthonormal basis stretched by factors spanning 3 nats
        # (condition number e^3 = 20, where CholeskyQR2 needs no Householder fallback)
        basis, _ = jnp.linalg.qr(jax.random.normal(jax.random.PRNGKey(2), (n, n), jnp.float32))
        y = basis * jnp.exp(jnp.linspace(0.0, -3.0, n))
        for method in QR_METHODS:
            factor = jax.jit(functools.partial(positive_qr, method=method))
            q, r = _block(factor(y))
            best = min(timed(factor, y)[1] for _ in range(repeats))
            out["runs"].append({
                "n": n, "method": method, "best_s": best,
                "orthogonality": float(np.max(np.abs(q.T @ q - np.eye(n)))),
                "residual": float(np.max(np.abs(q @ r - np.asarray(y))) / np.max(np.abs(np.asarray(y)))),
            })  # fmt: skip
    return out


CASES = {
    "matmul": case_matmul, "qr": case_qr, "sweep": case_sweep, "full": case_full, "leading": case_leading,
    "batch": case_batch,
}  # fmt: skip


def limit_blas_threads(threads: int) -> None:
    """Limit OpenBLAS (jaxlib's CPU LAPACK) to ``threads`` threads for the rest of the process; 0: leave it.

    :func:`pifs_jax.limit_host_threads` (``user_api="blas"``), which loads SciPy's OpenBLAS, the one
    jaxlib's LAPACK kernels call, before limiting: ``threadpoolctl`` only limits libraries already
    loaded. (Without it the limit missed that library: on the loaded 2-core machine an ``n = 768``
    QR then took 95 ms best and about a second typically, against 23 ms with the limit in effect.)
    """
    if threads > 0:
        pj.limit_host_threads(threads, user_api="blas")


def run_case(name: str, kwargs: dict[str, Any], *, isolate: bool, blas_threads: int = 1) -> dict[str, Any]:
    """Run one case here, or in a fresh Python process (its own peak memory) that prints JSON."""
    if not isolate:
        from pifs_jax.results import to_jsonable

        return to_jsonable(CASES[name](**kwargs))
    command = [
        sys.executable, os.path.abspath(__file__), "--case", name, "--kwargs", json.dumps(kwargs),
        "--blas-threads", str(blas_threads),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"case {name} {kwargs} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- the benchmark


def benchmark(
    *,
    quick: bool,
    isolate: bool,
    blas_threads: int = 1,
    huge: bool = False,
    log=print,
    save=None,
) -> dict[str, Any]:
    """Every case; returns the JSON-ready results. ``save(results)`` is called after each case."""
    size = SIZES["quick" if quick else "full"]
    steps, large_steps, k, width = size["steps"], size["large_steps"], size["k"], size["width"]
    n_small, n_large, n_huge = size["n_small"], size["n_large"], size["n_huge"]
    tol = size["tol"]  # per-step exponents; inside the 1e-3 agreement target
    results: dict[str, Any] = {"sizes": size, "flops_formula": FLOPS_FORMULA}

    def case(label, name, **kwargs):
        log(f"[{time.strftime('%H:%M:%S')}] {label} ...")
        out = run_case(name, kwargs, isolate=isolate, blas_threads=blas_threads)
        log(f"[{time.strftime('%H:%M:%S')}] {label}: {out.get('total_s', out.get('best_s', 0.0)):.3f} s")
        results.setdefault("raw_cases", []).append({"label": label, **out})
        if save is not None:
            save(results)
        return out

    matmul = case(f"matmul n = {size['matmul_n']}", "matmul", n=size["matmul_n"], repeats=size["matmul_repeats"])
    rate = matmul["flops_per_s"]
    results["matmul"] = matmul
    results["qr"] = case("QR methods", "qr", sizes=size["qr_sizes"], repeats=size["qr_repeats"])

    default = case(
        f"full n = {n_small}, {steps} steps, default (auto)", "full",
        n=n_small, steps=steps, width=width, check_recompile=True,
    )  # fmt: skip
    results["compile_once"] = default.pop("recompile")
    results["full_small"] = _with_rate(default, rate)
    sweep = case(
        f"full n = {n_small}, default and QR every {size['qr_sweep']}, round-robin", "sweep",
        n=n_small, steps=steps, width=width, variants=["auto", *size["qr_sweep"]], rounds=size["rounds"],
    )  # fmt: skip
    results["full_small_sweep"] = sweep
    runs = sweep["runs"]
    fixed = {key: run for key, run in runs.items() if key != "auto"}
    best_m = min(fixed, key=lambda key: fixed[key]["best_s"])
    reference = np.asarray(runs["1"]["exponents"]) if "1" in runs else None
    m = str(size["qr_every"])  # one fixed block length, compared with a QR at every step
    results["fewer_qrs"] = {
        "n": n_small,
        "steps": steps,
        "qr_every": size["qr_every"],
        "max_abs_difference_exponents": float(np.max(np.abs(np.asarray(runs[m]["exponents"]) - reference))),
        "speedup": runs["1"]["best_s"] / runs[m]["best_s"],
        "default_s": runs["auto"]["best_s"],
        "default_qrs": runs["auto"]["qrs"],
        "fixed_s": {key: run["best_s"] for key, run in fixed.items()},
        "best_fixed_qr_every": int(best_m),
        "default_over_best_fixed": runs["auto"]["best_s"] / fixed[best_m]["best_s"],
        "meets_target": bool(runs["auto"]["best_s"] <= (1 + TARGET_DEFAULT_OVERHEAD) * fixed[best_m]["best_s"]),
        "max_abs_difference_from_qr_every_step": None if reference is None else {
            key: float(np.max(np.abs(np.asarray(run["exponents"]) - reference))) for key, run in runs.items()
        },
    }  # fmt: skip

    results["batch"] = case(
        f"{size['batch']} full spectra batched vs one by one, n = {n_small}, {steps} steps", "batch",
        n=n_small, steps=steps, width=width, batch=size["batch"], rounds=size["rounds"],
    )  # fmt: skip

    full_large = case(
        f"full n = {n_large}, {large_steps} steps, default", "full", n=n_large, steps=large_steps, width=width
    )
    results["full_large"] = _with_rate(full_large, rate)
    lead = case(
        f"leading k = {k}, n = {n_large}, {large_steps} steps, default", "leading",
        n=n_large, steps=large_steps, width=width, k=k, tol=tol, oversample=size["oversample"],
        check_buffers=n_huge == n_large,
    )  # fmt: skip
    results["leading_large"] = lead
    difference = float(np.max(np.abs(np.asarray(lead["exponents"]) - np.asarray(full_large["exponents"])[:k])))
    speedup = full_large["total_s"] / lead["total_s"]
    results["leading_vs_full"] = {
        "n": n_large,
        "steps": large_steps,
        "speedup": speedup,
        "full_total_s": full_large["total_s"],
        "leading_total_s": lead["total_s"],
        "iterations": lead["iterations"],
        "max_abs_difference_leading_exponents": difference,
        "meets_speedup_target": bool(speedup >= TARGET_SPEEDUP),
        "meets_agreement_target": bool(difference <= TARGET_AGREEMENT),
    }

    if huge or n_huge == n_large:
        big = dict(lead) if n_huge == n_large else case(
            f"leading k = {k}, n = {n_huge}, {steps} steps", "leading",
            n=n_huge, steps=steps, width=width, k=k, tol=tol, iters=size["huge_iters"], check_buffers=True,
            oversample=size["oversample"],
        )  # fmt: skip
        grown = big["memory"]["peak_bytes"] - big["memory_before_compile"]["peak_bytes"]
        big["peak_growth_bytes"] = grown
        big["peak_growth_over_n2_float32"] = grown / big["n2_float32_bytes"]
        big["no_n_by_n_array"] = bool(big["buffers"]["n_by_n_shapes_in_hlo"] == 0)
        results["leading_huge"] = big
    results["targets"] = {
        "default_within_best_fixed": 1 + TARGET_DEFAULT_OVERHEAD,
        "leading_speedup": TARGET_SPEEDUP,
        "agreement": TARGET_AGREEMENT,
    }
    return results


def _with_rate(run: dict[str, Any], rate: float) -> dict[str, Any]:
    run = dict(run)
    run["flops_per_s"] = run["flops"] / run["total_s"]
    run["flop_fraction"] = run["flops_per_s"] / rate
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, in seconds (smoke test)")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/out/chain_spectrum[_quick].json)")
    parser.add_argument("--huge", action="store_true", help="also the n = 12288 leading-k memory check")
    parser.add_argument(
        "--in-process", action="store_true", help="run every case in this process (default for --quick)"
    )
    parser.add_argument(
        "--blas-threads", type=int, default=1, help="OpenBLAS threads (default 1; 0 = the library's default)"
    )
    parser.add_argument("--case", choices=sorted(CASES), help=argparse.SUPPRESS)
    parser.add_argument("--kwargs", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    limit_blas_threads(args.blas_threads)

    if args.case:  # a subprocess of run_case: print the case's JSON as the last line
        from pifs_jax.results import to_jsonable

        print(json.dumps(to_jsonable(CASES[args.case](**json.loads(args.kwargs)))))
        return 0

    out = Path(args.out or f"benchmarks/out/chain_spectrum{'_quick' if args.quick else ''}.json")
    isolate = not (args.quick or args.in_process)
    config = {
        "benchmark": "chain_spectrum",
        "quick": args.quick,
        "isolated_processes": isolate,
        "huge": args.huge,
        "blas_threads": args.blas_threads,
        "schedule": "cosine s = 0.008, T = 1000, uniform grid",
        "denoiser": f"MLP, 2 hidden layers, SiLU, sinusoidal t embedding ({EMBED_DIM}); width in results.sizes",
        "dtype": "float32",
    }
    start = time.perf_counter()

    def save(partial: dict[str, Any], complete: bool = False) -> None:
        document = {**partial, "complete": complete, "machine": machine(), "wall_s": time.perf_counter() - start}
        write_result_json(out, document, config=config, seed=0)

    results = benchmark(quick=args.quick, isolate=isolate, blas_threads=args.blas_threads, huge=args.huge, save=save)
    save(results, complete=True)
    fewer = results["fewer_qrs"]
    summary = {
        "matmul GFLOP/s": results["matmul"]["flops_per_s"] / 1e9,
        "QR s (n, method)": [(r["n"], r["method"], r["best_s"]) for r in results["qr"]["runs"]],
        "default / best fixed (m)": (fewer["default_over_best_fixed"], fewer["best_fixed_qr_every"], fewer["default_qrs"]),
        "fixed s": fewer["fixed_s"],
        "batch / singles": (results["batch"]["batched_over_singles"], results["batch"]["plain_vmap_over_singles"]),
        "full n_large s": results["full_large"]["total_s"],
        "leading speedup, max diff": (
            results["leading_vs_full"]["speedup"], results["leading_vs_full"]["max_abs_difference_leading_exponents"]
        ),
        "compile once": results["compile_once"],
    }  # fmt: skip
    for key, value in summary.items():
        print(f"{key:28s} {value}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

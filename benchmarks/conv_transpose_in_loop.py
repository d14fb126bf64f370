"""Benchmark: a convolution's input gradient inside a loop, as JAX transposes it and as an explicit convolution.

Why: the matrix-free block norms of a convolutional network (Golub-Kahan-Lanczos per block,
:func:`pifs_jax.jacobians.block_norms_matrix_free`) run their VJPs inside loops (the Krylov
``fori_loop``, the source patches' ``lax.map``, the chain's ``scan``). On XLA:CPU the converted
CIFAR-10 UNet's VJPs were measured about 4x slower inside a ``fori_loop`` than the same VJPs
unrolled, while its JVPs were not (BENCHMARKS.md). This script isolates the cause on one layer.

The layer: ``y = conv(x, w)``, a 3x3 convolution, stride 1, ``SAME`` padding, ``C -> C`` channels
on ``H x H`` maps, batch ``B`` (NHWC, HWIO), the weights passed as an argument (as a network's
parameters are). Four ways to apply a linear map ``u -> L u`` four times, each with a
normalisation in between (so no pass can be skipped), timed ``top`` (four calls written out in
one ``jax.jit``) and ``loop`` (a ``lax.fori_loop`` of four):

- ``vjp``: ``L u = (d conv / d x)^T u`` from ``jax.vjp`` (JAX's transpose rule: a convolution with
  the kernel reversed and its feature dimensions swapped by the dimension numbers);
- ``explicit``: the same map as a plain convolution with the explicitly flipped and transposed
  kernel ``flip(w, (0, 1)).swapaxes(2, 3)`` (equal to ``vjp`` to round-off; checked);
- ``jvp``: ``L u = conv(u, w)``, the forward convolution (what a JVP applies);
- ``vjp_stride2``: ``vjp`` of the stride-2 convolution (a downsampling layer).

Reported: median seconds of each, and ``loop / top``. Writes
``benchmarks/out/conv_transpose_in_loop.json`` (or ``--out``)::

    python benchmarks/conv_transpose_in_loop.py [--channels 128 --size 32 --batch 16] [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from pifs_jax.results import write_result_json

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from chain_spectrum import machine

DIMENSIONS = ("NHWC", "HWIO", "NHWC")


def conv(x: jax.Array, w: jax.Array, stride: int = 1) -> jax.Array:
    return lax.conv_general_dilated(x, w, (stride, stride), "SAME", dimension_numbers=DIMENSIONS)


def linear_maps(x: jax.Array) -> dict[str, Callable[[jax.Array, jax.Array], jax.Array]]:
    """``name -> L(u, w)`` for the cases of the module notes (``x`` fixes the VJPs' input shape)."""

    def vjp(stride: int):
        def apply(u, w):
            return jax.vjp(lambda y: conv(y, w, stride), x)[1](u)[0]

        return apply

    return {
        "vjp": vjp(1),
        "explicit": lambda u, w: conv(u, jnp.flip(w, (0, 1)).swapaxes(2, 3)),
        "jvp": lambda u, w: conv(u, w),
        "vjp_stride2": vjp(2),
    }


def timed(fn: Callable[..., Any], *args: Any, repeats: int) -> float:
    jax.block_until_ready(fn(*args))  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def measure(*, channels: int, size: int, batch: int, repeats: int) -> dict[str, Any]:
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(keys[0], (batch, size, size, channels))
    w = jax.random.normal(keys[1], (3, 3, channels, channels)) / np.sqrt(9 * channels)
    maps = linear_maps(x)
    u = jax.random.normal(keys[2], x.shape)
    check = float(jnp.max(jnp.abs(maps["vjp"](u, w) - maps["explicit"](u, w))) / jnp.max(jnp.abs(maps["vjp"](u, w))))
    results: dict[str, Any] = {"explicit_vs_vjp_max_relative_difference": check}
    for name, apply in maps.items():
        start = u if name != "vjp_stride2" else jax.random.normal(keys[2], (batch, size // 2, size // 2, channels))

        def body(_, v, apply=apply):
            out = apply(v, w)
            out = out / jnp.linalg.norm(out)
            return out if out.shape == v.shape else v + jnp.mean(out)

        top = jax.jit(lambda v, w, body=body: body(3, body(2, body(1, body(0, v)))))
        loop = jax.jit(lambda v, w, body=body: lax.fori_loop(0, 4, body, v))
        t_top, t_loop = timed(top, start, w, repeats=repeats), timed(loop, start, w, repeats=repeats)
        results[name] = {"top_s": t_top, "loop_s": t_loop, "loop_over_top": t_loop / t_top}
        print(f"{name:12s} top {1e3 * t_top:8.1f} ms   loop {1e3 * t_loop:8.1f} ms   loop/top {t_loop / t_top:.2f}")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--channels", type=int, default=128)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="8 channels, 8x8 maps, batch 2 (smoke test)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "out", "conv_transpose_in_loop.json"))
    args = parser.parse_args(argv)
    config = (
        {"channels": 8, "size": 8, "batch": 2, "repeats": 2}
        if args.quick
        else {"channels": args.channels, "size": args.size, "batch": args.batch, "repeats": args.repeats}
    )
    results = measure(**config)
    write_result_json(args.out, {"machine": machine(), **results}, config=config, seed=0)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

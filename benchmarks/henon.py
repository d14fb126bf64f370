"""Benchmark: the Henon map's Lyapunov spectrum, closed-form 2x2 QR against the generic path.

``F(x, y) = (1 - 1.4 x^2 + y, 0.3 x)``; Benettin's method over ``N`` iterates after 1000 transient
ones, float64 (published values, Sprott: 0.41922, -1.62319):

- ``pifs_jax``: :func:`pifs_jax.lyapunov_spectrum` (one ``lax.scan``; the ``2 x 2`` tangent block
  factored in closed form by :func:`pifs_jax.orthogonalization.qr_2x2`), jitted;
- ``generic``: the same scan with a ``jax.jacfwd`` Jacobian and a LAPACK Householder QR
  (:func:`pifs_jax.orthogonalization.householder_qr`) at every step, as the package did before;
- ``lyapax`` where installed (the bench extra): its ``lyapunov_spectrum`` of the same step function
  with ``dt = 1`` (per iterate); otherwise the JSON says it was skipped.

Each is compiled first, then timed round-robin ``--repeats`` times (best kept); the exponents'
largest difference from the generic path is recorded. Writes ``benchmarks/out/henon.json``::

    python benchmarks/henon.py [--steps 100000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import functools
import time
from pathlib import Path
from typing import Any

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import pifs_jax as pj  # noqa: E402
from pifs_jax.orthogonalization import householder_qr  # noqa: E402
from pifs_jax.results import write_result_json  # noqa: E402

TRANSIENT = 1000


def henon(v: jax.Array) -> jax.Array:
    return jnp.stack([1 - 1.4 * v[0] ** 2 + v[1], 0.3 * v[0]])


@functools.partial(jax.jit, static_argnames=("n_steps",))
def package_spectrum(x0: jax.Array, *, n_steps: int) -> jax.Array:
    return pj.lyapunov_spectrum(henon, x0, n_steps=n_steps, n_transient=TRANSIENT).exponents


@functools.partial(jax.jit, static_argnames=("n_steps",))
def generic_spectrum(x0: jax.Array, *, n_steps: int) -> jax.Array:
    """``jax.jacfwd`` and a Householder QR per iterate, in one ``lax.scan``."""
    x, _ = jax.lax.scan(lambda v, _: (henon(v), None), x0, None, length=TRANSIENT)

    def body(carry, _):
        v, q, sums = carry
        q, r = householder_qr(jax.jacfwd(henon)(v) @ q)
        return (henon(v), q, sums + jnp.log(jnp.diagonal(r))), None

    (_, _, sums), _ = jax.lax.scan(body, (x, jnp.eye(2, dtype=x.dtype), jnp.zeros(2, x.dtype)), None, length=n_steps)
    return -jnp.sort(-sums) / n_steps


def lyapax_program(n_steps: int) -> Any:
    """lyapax's spectrum of the Henon map (its plain ``step_fn`` form, ``dt = 1``: per iterate), or why not.

    ``lyapax.lyapunov_spectrum(henon, x0, dt=1.0, n_steps=N, t_transient=1000)``: the same map,
    transient and number of iterates, QR every iterate (``renorm_every=1``, its default).
    """
    try:
        import lyapax
    except ImportError:
        return "skipped: lyapax not installed (the bench extra installs it)"

    def program(x0):
        result = lyapax.lyapunov_spectrum(henon, x0, dt=1.0, n_steps=n_steps, t_transient=float(TRANSIENT))
        return -jnp.sort(-jnp.asarray(result.exponents))

    return program


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--blas-threads", type=int, default=1, help="BLAS/LAPACK threads (0 = leave)")
    parser.add_argument("--out", default="benchmarks/out/henon.json")
    args = parser.parse_args(argv)
    if args.blas_threads > 0:
        pj.limit_host_threads(args.blas_threads, user_api="blas")
    x0 = jnp.array([0.05, -0.02])
    programs = {
        "pifs_jax": functools.partial(package_spectrum, n_steps=args.steps),
        "generic": functools.partial(generic_spectrum, n_steps=args.steps),
    }
    lyapax = lyapax_program(args.steps)
    if not isinstance(lyapax, str):
        programs["lyapax"] = lyapax
    first, exponents = {}, {}
    for name, program in programs.items():
        start = time.perf_counter()
        exponents[name] = np.asarray(jax.block_until_ready(program(x0)))
        first[name] = time.perf_counter() - start
    times: dict[str, list[float]] = {name: [] for name in programs}
    for _ in range(args.repeats):
        for name, program in programs.items():
            start = time.perf_counter()
            jax.block_until_ready(program(x0))
            times[name].append(time.perf_counter() - start)
    best = {name: min(values) for name, values in times.items()}
    results = {
        "steps": args.steps,
        "transient": TRANSIENT,
        "best_s": best,
        "times_s": times,
        "first_call_s": first,
        "speedup_over_generic": best["generic"] / best["pifs_jax"],
        "exponents": exponents["pifs_jax"],
        "max_abs_difference_from_generic": float(np.max(np.abs(exponents["pifs_jax"] - exponents["generic"]))),
        "lyapax": lyapax
        if isinstance(lyapax, str)
        else {
            "best_s": best["lyapax"],
            "speedup_over_lyapax": best["lyapax"] / best["pifs_jax"],
            "exponents": exponents["lyapax"],
            "max_abs_difference": float(np.max(np.abs(exponents["pifs_jax"] - exponents["lyapax"]))),
        },
    }
    write_result_json(Path(args.out), results, config=vars(args), seed=0)
    print(
        f"pifs_jax {best['pifs_jax']:.3f} s, generic {best['generic']:.3f} s "
        f"({results['speedup_over_generic']:.1f}x); exponents {exponents['pifs_jax']}, "
        f"max |difference| {results['max_abs_difference_from_generic']:.1e}; lyapax: {results['lyapax']}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

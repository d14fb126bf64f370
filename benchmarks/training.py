"""Benchmark: training throughput of the UNet and the DiT, and one full Jacobian of each.

For each model (``unet``, ``dit``) and size (``quick``: 16x16x3, ``n = 768``; ``full``: 32x32x3,
``n = 3072``):

- **throughput**: images per second of the jitted training step
  (:func:`pifs_jax.models.training.make_train_step`: forward, backward, AdamW, EMA) at the
  preset's batch size, median over ``--repeats`` steps after compilation (compile time reported);
  with ``--mu`` also with the PIFS regulariser (one block-masked probe per sample);
- **Jacobian**: wall time of one jitted ``jax.jacfwd`` of ``eps_fn(x, t)`` on one sample
  (the ``n x n`` matrix ``d epshat / d x``), median over ``--jac-repeats`` calls after compilation.

Device-agnostic: runs unchanged on CPU or CUDA (``jax.default_backend()`` is recorded).
Writes ``benchmarks/out/training.json`` (or ``--out``).

    python benchmarks/training.py [--sizes quick full] [--models unet dit] [--repeats 10] [--out ...]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import pifs_jax as pj
from pifs_jax.data import DATASETS
from pifs_jax.models import MODEL_NAMES, MODEL_SIZES, count_params, init_params, make_model
from pifs_jax.models import training as tr
from pifs_jax.results import write_result_json

#: Image shape of each size: that of its preset's data set.
SIZES = {size: DATASETS[tr.PRESETS[size]["data"]] for size in MODEL_SIZES}


def _median_seconds(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return float(np.median(times)), float(np.min(times))


def throughput(model: str, size: str, *, repeats: int, mu: float = 0.0, batch_size: int | None = None) -> dict:
    """Images/s of the jitted train step of ``model`` at ``size`` (preset batch size unless given)."""
    config = tr.train_config(size, model=model, mu=mu, batch_size=batch_size)
    image_shape = SIZES[size]
    module, _model_config = make_model(model, image_shape=image_shape, patch_size=config.patch_size, size=size)
    params = init_params(module, jax.random.PRNGKey(0), image_shape)
    sched = pj.named_schedule(config.schedule, config.T)
    tables = tr.loss_tables(sched, weighting=config.weighting)
    optimizer = tr.make_optimizer(lr=config.lr, steps=config.steps, warmup_steps=config.warmup_steps)
    state = tr.init_train_state(params, optimizer, jax.random.PRNGKey(1))
    step = tr.make_train_step(
        tr.module_apply_fn(module),
        optimizer,
        tables,
        batch_size=config.batch_size,
        ema_decay=config.ema_decay,
        mu=mu,
        patch_size=config.patch_size,
        probes=1,
    )
    data = jax.random.uniform(jax.random.PRNGKey(2), (1024, *image_shape), minval=-1, maxval=1)
    start = time.perf_counter()
    state, _ = step(state, data)
    jax.block_until_ready(state)
    compile_s = time.perf_counter() - start
    holder = {"state": state}

    def one():
        holder["state"], _metrics = step(holder["state"], data)
        return holder["state"].params

    median, best = _median_seconds(one, repeats)
    return {
        "model": model,
        "size": size,
        "image_shape": list(image_shape),
        "parameters": count_params(params),
        "batch_size": config.batch_size,
        "mu": mu,
        "step_seconds_median": median,
        "step_seconds_min": best,
        "images_per_second": config.batch_size / median,
        "compile_seconds": compile_s,
    }


def jacobian_time(model: str, size: str, *, repeats: int, chunk: int = 0) -> dict:
    """Seconds of one jitted full Jacobian ``d epshat / d x`` (``n x n``) of the model at one sample.

    ``chunk = 0``: ``jax.jacfwd`` (all ``n`` tangents vmapped at once). ``chunk > 0``: the same
    forward-mode columns, ``chunk`` tangents at a time (``lax.map`` with ``batch_size``), which
    bounds the memory of the vmapped tangents (the full UNet at ``n = 3072`` on a small CPU).
    """
    image_shape = SIZES[size]
    module, _ = make_model(model, image_shape=image_shape, size=size)
    params = init_params(module, jax.random.PRNGKey(0), image_shape)
    # Trained-like parameters: the zero-initialised output layers (adaLN-zero, zero final conv)
    # would make J = 0, which is no benchmark.
    leaves, tree = jax.tree_util.tree_flatten(params)
    noise = jax.random.split(jax.random.PRNGKey(4), len(leaves))
    params = jax.tree_util.tree_unflatten(
        tree, [p + 0.02 * jax.random.normal(k, p.shape, p.dtype) for p, k in zip(leaves, noise, strict=True)]
    )
    n = int(np.prod(image_shape))

    # The parameters are an argument, not constants baked into the program: with jaxlib 0.10.2 on
    # CPU, baking in the freshly initialised (exactly zero) output layers and vmapping >= 256
    # tangents produced garbage (~1e30) where J = 0, and constant folding would also flatter the time.
    @jax.jit
    def jac(params, x, t):
        def flat(v):
            return module.apply({"params": params}, v.reshape((1, *image_shape)), t[None])[0].reshape(-1)

        if not chunk:
            return jax.jacfwd(flat)(x.reshape(-1))
        basis = jnp.eye(n, dtype=x.dtype)
        columns = jax.lax.map(lambda v: jax.jvp(flat, (x.reshape(-1),), (v,))[1], basis, batch_size=chunk)
        return columns.T

    x = jax.random.normal(jax.random.PRNGKey(3), image_shape)
    t = jnp.int32(500)
    start = time.perf_counter()
    J = jax.block_until_ready(jac(params, x, t))
    compile_s = time.perf_counter() - start
    assert J.shape == (n, n) and bool(jnp.all(jnp.isfinite(J)))

    @jax.jit
    def column(params, x, t, j):  # one forward-mode column, to check the big program's answer
        def flat(v):
            return module.apply({"params": params}, v.reshape((1, *image_shape)), t[None])[0].reshape(-1)

        return jax.jvp(flat, (x.reshape(-1),), (jax.nn.one_hot(j, n, dtype=x.dtype),))[1]

    for j in (0, n // 2, n - 1):
        expected = column(params, x, t, j)
        error = float(jnp.max(jnp.abs(J[:, j] - expected)))
        assert error <= 1e-4 * (1.0 + float(jnp.max(jnp.abs(expected)))), f"column {j} of J is wrong by {error}"
    # repeats = 0: only the first call (compilation included) is timed, an upper bound
    median, best = _median_seconds(lambda: jac(params, x, t), repeats) if repeats else (float("nan"), float("nan"))
    return {
        "model": model,
        "size": size,
        "n": n,
        "method": "jax.jacfwd" if not chunk else f"forward mode, {chunk} tangents at a time",
        "seconds_median": median,
        "seconds_min": best,
        "first_call_seconds": compile_s,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODEL_NAMES), choices=MODEL_NAMES)
    parser.add_argument("--sizes", nargs="+", default=list(MODEL_SIZES), choices=MODEL_SIZES)
    parser.add_argument("--repeats", type=int, default=10, help="timed training steps per configuration")
    parser.add_argument(
        "--jac-repeats",
        type=int,
        default=3,
        help="timed Jacobians per configuration after the first call; 0 = time only the first "
        "call (compilation included: an upper bound, for very slow cases)",
    )
    parser.add_argument(
        "--mu", type=float, default=0.0, help="also time the step with the regulariser at this mu (> 0)"
    )
    parser.add_argument("--no-jacobian", action="store_true")
    parser.add_argument(
        "--jac-chunk",
        type=int,
        default=None,
        help="tangents per forward-mode batch for the Jacobian; 0 = plain jax.jacfwd "
        "(default: 0 on GPU and for n = 768, 512 on CPU for n = 3072 to bound memory)",
    )
    parser.add_argument(
        "--blas-threads", type=int, default=1, help="BLAS/LAPACK threads (pifs_jax.limit_host_threads; 0 = leave)"
    )
    parser.add_argument("--out", default="benchmarks/out/training.json")
    args = parser.parse_args(argv)
    if args.blas_threads > 0:
        pj.limit_host_threads(args.blas_threads, user_api="blas")

    results = {
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "throughput": [],
        "jacobian": [],
    }

    def save():  # after every row, so a long run that is stopped keeps what it measured
        return write_result_json(args.out, results, config=vars(args))

    for size in args.sizes:
        for model in args.models:
            row = throughput(model, size, repeats=args.repeats)
            results["throughput"].append(row)
            save()
            print(
                f"train  {model:4s} {size:5s} batch {row['batch_size']:4d}: {row['images_per_second']:9.1f} images/s "
                f"({row['step_seconds_median'] * 1e3:.1f} ms/step, compile {row['compile_seconds']:.1f} s, "
                f"{row['parameters']} params)",
                flush=True,
            )
            if args.mu > 0:
                row = throughput(model, size, repeats=args.repeats, mu=args.mu)
                results["throughput"].append(row)
                save()
                print(
                    f"train  {model:4s} {size:5s} + PIFS regulariser: {row['images_per_second']:9.1f} images/s",
                    flush=True,
                )
            if not args.no_jacobian:
                chunk = args.jac_chunk
                if chunk is None:
                    chunk = 512 if (jax.default_backend() == "cpu" and size == "full") else 0
                row = jacobian_time(model, size, repeats=args.jac_repeats, chunk=chunk)
                results["jacobian"].append(row)
                save()
                print(
                    f"jacfwd {model:4s} {size:5s} n = {row['n']:5d}: {row['seconds_median']:.3f} s "
                    f"(first call {row['first_call_seconds']:.1f} s; {row['method']})",
                    flush=True,
                )
    print(f"wrote {save()}")


if __name__ == "__main__":
    main()

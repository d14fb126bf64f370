"""Benchmark: the google/ddpm-cifar10-32 architecture (35.7M parameters) in JAX vs diffusers' PyTorch.

Both networks carry the same seeded weights (:func:`pifs_jax.models.seeded_diffusers_weights`;
the JAX one read from a safetensors folder with :func:`pifs_jax.models.load_diffusers_unet`), on
the same machine in the same run:

- **forward**: ``eps`` of a batch of ``--batch`` 32x32x3 images (JAX: jitted ``module.apply``;
  PyTorch: ``UNet2DModel`` under ``torch.no_grad``), median over ``--repeats`` calls after one
  warm-up call (JAX's compile time reported separately);
- **training step**: forward + backward of ``mean((eps - target)^2)`` with respect to every
  parameter (JAX: jitted ``jax.value_and_grad``; PyTorch: ``loss.backward()``; no optimiser);
- **full Jacobian** ``d eps / d x`` at one image (``n = 3072``) in forward mode, ``--chunk``
  tangents at a time (``jax.vmap`` of ``jax.jvp``): ``--jac-chunks`` chunks are timed and the
  ``ceil(n / chunk)`` chunks of the full Jacobian extrapolated from their median (the full
  Jacobian takes too long on a 2-core CPU to time whole); one chunk's compiled memory (XLA's
  ``memory_analysis``: arguments, outputs, temporaries) and the process's peak resident memory.

PyTorch and diffusers are needed for the PyTorch half (skipped, and said so in the JSON, without
them). Writes ``benchmarks/out/diffusers_unet.json`` (or ``--out``).

    python benchmarks/diffusers_unet.py [--batch 16] [--repeats 5] [--chunk 32] [--jac-chunks 3] [--out ...]
"""

from __future__ import annotations

import argparse
import math
import resource
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from pifs_jax.models import count_params, load_diffusers_unet, seeded_diffusers_weights, write_random_diffusers_unet
from pifs_jax.results import write_result_json

CIFAR10 = {
    "sample_size": 32,
    "block_out_channels": [128, 256, 256, 256],
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
    "layers_per_block": 2,
    "attention_head_dim": None,
    "norm_num_groups": 32,
    "downsample_padding": 0,
    "flip_sin_to_cos": False,
    "freq_shift": 1,
    "norm_eps": 1e-6,
}
SEED = 0


def timed(fn, repeats: int) -> dict:
    """Seconds of ``fn()`` (blocked until ready): first call, then median and min over ``repeats``."""
    start = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return {"first_call_seconds": first, "median_seconds": float(np.median(times)), "min_seconds": float(np.min(times))}


def jax_half(loaded, batch: int, repeats: int, chunk: int, jac_chunks: int) -> dict:
    module, params = loaded.module, loaded.params
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((batch, 32, 32, 3)), jnp.float32)
    target = jnp.asarray(rng.standard_normal((batch, 32, 32, 3)), jnp.float32)
    t = jnp.asarray(rng.integers(1, 1001, batch), jnp.int32)

    forward = jax.jit(lambda p, x, t: module.apply({"params": p}, x, t))

    def loss(p, x, t, target):
        return jnp.mean((module.apply({"params": p}, x, t) - target) ** 2)

    train_step = jax.jit(jax.value_and_grad(loss))
    result = {
        "forward": timed(lambda: forward(params, x, t), repeats),
        "training_step": timed(lambda: train_step(params, x, t, target), repeats),
    }

    n = 3072
    image = x[0]
    eps_fn = loaded.eps_fn

    @jax.jit
    def columns(eps_fn, image, start):
        basis = jax.nn.one_hot(start + jnp.arange(chunk), n, dtype=image.dtype).reshape((chunk, *image.shape))

        def flat(y):
            return eps_fn(y, 500)

        return jax.vmap(lambda v: jax.jvp(flat, (image,), (v,))[1].reshape(-1))(basis)

    compiled = columns.lower(eps_fn, image, 0).compile()
    memory = compiled.memory_analysis()
    chunk_times = []
    start = time.perf_counter()
    first = jax.block_until_ready(columns(eps_fn, image, 0))
    chunk_first = time.perf_counter() - start
    for i in range(1, jac_chunks + 1):
        start = time.perf_counter()
        jax.block_until_ready(columns(eps_fn, image, i * chunk))
        chunk_times.append(time.perf_counter() - start)
    # check a column against a direct JVP
    direct = jax.jvp(lambda y: eps_fn(y, 500), (image,), (jax.nn.one_hot(3, n).reshape(image.shape),))[1]
    error = float(jnp.max(jnp.abs(first[3] - direct.reshape(-1))))
    chunks = math.ceil(n / chunk)
    median = float(np.median(chunk_times))
    result["jacobian"] = {
        "n": n,
        "chunk": chunk,
        "chunks_timed": jac_chunks,
        "chunk_first_call_seconds": chunk_first,
        "chunk_median_seconds": median,
        "full_jacobian_seconds_extrapolated": median * chunks,
        "extrapolated": f"{chunks} chunks x median of {jac_chunks} timed chunks",
        "column_check_max_abs_error": error,
        "chunk_program_bytes": {
            "arguments": int(memory.argument_size_in_bytes),
            "outputs": int(memory.output_size_in_bytes),
            "temporaries": int(memory.temp_size_in_bytes),
        },
        "full_jacobian_bytes_float32": n * n * 4,
    }
    return result


def torch_half(batch: int, repeats: int) -> dict:
    try:
        import diffusers
        import torch
        from diffusers import UNet2DModel
    except ImportError as err:
        return {"skipped": f"PyTorch or diffusers not installed ({err})"}
    model = UNet2DModel(**CIFAR10)
    weights = seeded_diffusers_weights({"_class_name": "UNet2DModel", **CIFAR10}, SEED)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.standard_normal((batch, 32, 32, 3)).astype(np.float32).transpose(0, 3, 1, 2).copy())
    target = torch.from_numpy(rng.standard_normal((batch, 32, 32, 3)).astype(np.float32).transpose(0, 3, 1, 2).copy())
    t = torch.from_numpy(rng.integers(1, 1001, batch) - 1)

    def forward():
        with torch.no_grad():
            return model(x, t).sample

    def train_step():
        model.zero_grad(set_to_none=True)
        loss = torch.mean((model(x, t).sample - target) ** 2)
        loss.backward()
        return loss

    model.eval()
    return {
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__},
        "threads": torch.get_num_threads(),
        "forward": timed(forward, repeats),
        "training_step": timed(train_step, repeats),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--chunk", type=int, default=32)
    parser.add_argument("--jac-chunks", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "diffusers_unet.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        write_random_diffusers_unet(folder, CIFAR10, seed=SEED)
        written = time.perf_counter() - start
        start = time.perf_counter()
        loaded = load_diffusers_unet(folder)
        load_s = time.perf_counter() - start
    results = {
        "architecture": "google/ddpm-cifar10-32 (seeded random weights)",
        "parameters": count_params(loaded.params),
        "batch": args.batch,
        "backend": jax.default_backend(),
        "write_folder_seconds": written,
        "load_seconds": load_s,
        "jax": jax_half(loaded, args.batch, args.repeats, args.chunk, args.jac_chunks),
        "pytorch": torch_half(args.batch, args.repeats),
        "peak_resident_memory_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_result_json(args.out, results, config=vars(args) | {"out": str(args.out)}, seed=SEED)
    print(f"wrote {args.out}")
    jx, pt = results["jax"], results["pytorch"]
    print(
        f"forward (batch {args.batch}): JAX {jx['forward']['median_seconds']:.3f} s, "
        f"PyTorch {pt.get('forward', {}).get('median_seconds', float('nan')):.3f} s"
    )
    print(
        f"training step: JAX {jx['training_step']['median_seconds']:.3f} s, "
        f"PyTorch {pt.get('training_step', {}).get('median_seconds', float('nan')):.3f} s"
    )
    print(f"full Jacobian (extrapolated): {jx['jacobian']['full_jacobian_seconds_extrapolated']:.0f} s")


if __name__ == "__main__":
    main()

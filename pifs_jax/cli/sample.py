"""``pifs-jax sample``: DDIM samples of a shipped model or a pretrained diffusers ``UNet2DModel``.

The work is :func:`pifs_jax.models.pretrained.pretrained` or :func:`pifs_jax.models.load_diffusers_unet` and
:func:`pifs_jax.models.training.sample_in_chunks`; this module declares the options, writes the
files and prints the summary. Nothing heavy is imported at module level.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pifs_jax.cli.common import (
    PROG,
    Subcommand,
    UsageError,
    command_line,
    non_negative_int,
    output_dir,
    positive_int,
    usage_error_for,
)

DESCRIPTION = """\
Draw samples from a model shipped with the package (--pretrained NAME; 'python -c "from
pifs_jax.models.pretrained import list_pretrained; print(list_pretrained())"' lists them) or a
pretrained diffusers UNet2DModel (--diffusers: a google/ddpm-* pipeline folder or a bare model
folder, read without PyTorch) with a deterministic sampler of this package (--sampler; default the
DDIM chain, eta = 0):

  x_s = a_t x_t + b_t epshat(x_t, t),  a_t = sqrt(alpha_bar_s / alpha_bar_t),  b_t = sigma_s - a_t sigma_t

or DPM-Solver++(2M) (dpmpp2m) or EDM's Heun sampler (heun)
on the grid diffusers' DDIMScheduler walks for the folder's scheduler config (timestep_spacing,
steps_offset), ending on clean data; for a shipped model the uniform grid of its training schedule
(the one its own samples were drawn on). x_T ~ N(0, I) from --seed. Writes to --out:
  samples.png   the samples as one grid (clipped to [-1, 1] for display only)
  samples.npz   samples (N, H, W, C) float32 as drawn (not clipped), x_T, grid (this package's
                timesteps; diffusers' are grid - 1), seed
  sample.json   the command line, the model (folder, or shipped name and weights sha256), the
                grid, the sampling time"""

EPILOG = """\
examples:
  # 16 samples of the shipped DiT on 8x8 digits
  pifs-jax sample --pretrained dit-digits --steps 50 --num 16 --out out/digits_samples

  # 16 samples of google/ddpm-cifar10-32 (a downloaded pipeline folder) in 50 DDIM steps
  pifs-jax sample --diffusers ddpm-cifar10-32 --steps 50 --num 16 --out out/cifar_samples

  # a bare model folder (config.json + diffusion_pytorch_model.safetensors) with a scheduler_config.json beside it
  pifs-jax sample --diffusers ddpm-cifar10-32/unet --steps 20 --num 64 --seed 3 --out out/s3

notes:
  A shipped model's weight file is checked against the sha256 on its card before use. With
  --diffusers, the folder must hold a scheduler config (pipeline: scheduler/scheduler_config.json; model
  folder: scheduler_config.json beside config.json) of the DDPM family with prediction_type
  epsilon. A .bin weight file needs PyTorch; a .safetensors file does not. Samples are drawn
  --batch-size at a time with one compiled chain; a progress bar on stderr counts them, the
  denoiser evaluations are stated first and the first batch's time is extrapolated to the rest.
  Ctrl-C stops between batches (nothing is written)."""


#: The files ``pifs-jax sample`` writes into --out (together, at the end).
RESULT_FILES = ("samples.png", "samples.npz", "sample.json")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from pifs_jax.samplers import SAMPLER_NAMES

    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--pretrained",
        default=None,
        metavar="NAME",
        help="a model shipped with the package (pifs_jax.models.pretrained.list_pretrained())",
    )
    source.add_argument(
        "--diffusers",
        default=None,
        metavar="PATH",
        help="a diffusers pipeline folder (model_index.json, unet/, scheduler/) or a UNet2DModel folder",
    )
    parser.add_argument("--steps", type=positive_int, default=50, metavar="N", help="sampler steps (default: 50)")
    parser.add_argument(
        "--sampler",
        choices=SAMPLER_NAMES,
        default="ddim",
        help="deterministic sampler (default: ddim; heun costs 2 evaluations per step but the last)",
    )
    parser.add_argument("--num", type=positive_int, default=16, metavar="N", help="samples to draw (default: 16)")
    parser.add_argument("--seed", type=non_negative_int, default=0, metavar="S", help="seed of x_T (default: 0)")
    parser.add_argument(
        "--batch-size", type=positive_int, default=16, metavar="B", help="samples per compiled chain call (default: 16)"
    )
    parser.add_argument(
        "--out",
        required=True,
        type=output_dir,
        metavar="DIR",
        help="output folder (created if missing; checked before any work)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar or time estimate (stderr)")


def run(args: argparse.Namespace) -> int:
    from pifs_jax.models import load_diffusers_unet

    if args.pretrained is not None:
        return _run(args, *_shipped(args))
    path = Path(args.diffusers).expanduser()
    try:
        loaded = load_diffusers_unet(path)
        if loaded.schedule is None:
            raise UsageError(
                "--diffusers",
                f"{str(path)!r} holds no scheduler config (scheduler/scheduler_config.json "
                "or scheduler_config.json), so its schedule and sampling grid are unknown",
            )
        grid = loaded.sampling_grid(args.steps)
    except UsageError:
        raise
    except ValueError as exc:
        error = usage_error_for(exc, {"steps": "--steps", "num_inference_steps": "--steps"})
        if error is None:  # about the folder: its files, or a config key (kept in the message)
            argument = getattr(exc, "argument", None)
            error = UsageError("--diffusers", getattr(exc, "detail", str(exc)) if argument == "path" else str(exc))
        raise error from None
    source = {"model": str(path.resolve()), "weights_file": str(loaded.weights_file)}
    return _run(
        args, loaded, grid, source, str(path), extra={"diffusers_timesteps": [int(t) - 1 for t in grid[1:]][::-1]}
    )


def _shipped(args: argparse.Namespace) -> tuple[Any, Any, dict[str, Any], str]:
    """--pretrained NAME: the loaded model, its grid, what sample.json records, the name shown."""
    from pifs_jax.models.pretrained import pretrained

    try:
        loaded = pretrained(args.pretrained)
        grid = loaded.sampling_grid(args.steps)
    except ValueError as exc:
        error = usage_error_for(exc, {"steps": "--steps", "num_steps": "--steps"}, default="--pretrained")
        assert error is not None  # a default is given
        if getattr(exc, "argument", None) == "name":
            error = UsageError("--pretrained", getattr(exc, "detail", str(exc)))
        raise error from None
    source = {
        "pretrained": loaded.name,
        "weights_file": str(loaded.weights_file),
        "weights_sha256": loaded.sha256,
        "fingerprint": loaded.fingerprint,
    }
    return loaded, grid, source, f"shipped model {loaded.name}"


@contextlib.contextmanager
def _progress(args: argparse.Namespace, evaluations: int) -> Iterator[Callable[[], None]]:
    """``on_chunk`` for :func:`~pifs_jax.models.training.sample_in_chunks`: a tqdm bar over the
    samples (stderr), the cost first, the first batch's time extrapolated, Ctrl-C between batches."""
    from tqdm import tqdm

    from pifs_jax.loop import deferred_interrupt

    size = min(args.batch_size, args.num)
    batches = -(-args.num // size)
    progress = not args.no_progress
    notice = f"{PROG} sample: stopping after the running batch (Ctrl-C again to stop at once)"
    with (
        deferred_interrupt(notice if batches > 1 else "") as requested,
        tqdm(total=args.num, disable=not progress, desc="sample", unit="sample", leave=False) as bar,
    ):
        if progress:
            bar.write(
                f"{PROG} sample: {args.num} samples x {evaluations} denoiser evaluations ({args.steps} "
                f"{args.sampler} steps), {batches} batch{'es' if batches > 1 else ''} of {size}",
                file=sys.stderr,
            )
        began = time.perf_counter()
        drawn = [0]  # samples drawn so far (a disabled bar counts nothing)

        def on_chunk() -> None:
            done = min(drawn[0] + size, args.num)
            if progress and drawn[0] == 0 and done < args.num:
                seconds = time.perf_counter() - began
                bar.write(
                    f"{PROG} sample: the first {done} samples took {seconds:.1f} s (compilation included): "
                    f"about {seconds * (args.num - done) / done:.0f} s for the other {args.num - done}",
                    file=sys.stderr,
                )
            bar.update(done - drawn[0])
            drawn[0] = done
            if requested() and done < args.num:
                raise KeyboardInterrupt(f"after {done} of {args.num} samples")

        yield on_chunk


def _check_memory(args: argparse.Namespace, loaded: Any) -> None:
    """Refuse samples that cannot fit (:func:`pifs_jax.memory.sampling_bytes`), naming --num or --batch-size."""
    from pifs_jax.memory import check_memory, forward_bytes, sampling_bytes
    from pifs_jax.models import as_eps_fn

    shape = tuple(loaded.image_shape)
    forward = forward_bytes(as_eps_fn(loaded.module, loaded.params), shape)
    arrays = sampling_bytes(num=args.num, batch_size=args.batch_size, image_shape=shape, forward=0)
    needed = sampling_bytes(num=args.num, batch_size=args.batch_size, image_shape=shape, forward=forward)
    check_memory(
        needed,
        argument="--num" if arrays >= needed - arrays else "--batch-size",
        what=f"{args.num} samples of {'x'.join(map(str, shape))} images, {args.batch_size} at a time,",
    )


def _run(
    args: argparse.Namespace, loaded: Any, grid: Any, source: dict[str, Any], shown: str, extra: dict | None = None
) -> int:
    """Draw the samples of ``loaded`` on ``grid`` and write the result files into --out."""
    import io

    import jax
    import numpy as np

    from pifs_jax.models import as_eps_fn
    from pifs_jax.models.quality import save_image_grid
    from pifs_jax.models.training import sample_in_chunks
    from pifs_jax.results import atomic_write_bytes, write_result_json
    from pifs_jax.run_folder import RunFolder
    from pifs_jax.samplers import named_sampler

    out = Path(args.out)
    _check_memory(args, loaded)
    with RunFolder(
        out, "overwrite", results=RESULT_FILES, command=command_line(getattr(args, "argv", []) or [])
    ) as folder:
        x_T = jax.random.normal(jax.random.PRNGKey(args.seed), (args.num, *loaded.image_shape))
        sampler = named_sampler(args.sampler)
        start = time.perf_counter()
        try:
            with _progress(args, sampler.nfe(len(grid) - 1)) as on_chunk:
                samples = sample_in_chunks(
                    jax.tree_util.Partial(as_eps_fn, loaded.module),
                    loaded.params,
                    loaded.schedule,
                    x_T,
                    grid=grid,
                    chunk=args.batch_size,
                    sampler=sampler,
                    on_chunk=on_chunk,
                )
        except KeyboardInterrupt as exc:
            after = f" {exc}" if str(exc) else ""
            print(f"{PROG} sample: interrupted{after}; nothing written to {out}", file=sys.stderr)
            return 130
        seconds = time.perf_counter() - start
        buffer = io.BytesIO()
        np.savez(
            buffer,
            samples=samples.astype(np.float32),
            x_T=np.asarray(x_T, np.float32),
            grid=np.asarray(grid),
            seed=np.int64(args.seed),
        )
        with folder.staged() as stage:
            atomic_write_bytes(stage / "samples.npz", buffer.getvalue())
            save_image_grid(stage / "samples.png", samples, scale=4 if max(loaded.image_shape[:2]) <= 64 else 1)
            write_result_json(
                stage / "sample.json",
                {
                    **source,
                    "image_shape": list(loaded.image_shape),
                    "grid": [int(t) for t in grid],
                    **(extra or {}),
                    "num": args.num,
                    "sampling_seconds": seconds,
                    "value_range": [float(v) if np.isfinite(v) else None for v in (samples.min(), samples.max())],
                },
                config={
                    "command": command_line(getattr(args, "argv", []) or []),
                    "steps": args.steps,
                    "sampler": args.sampler,
                    "num": args.num,
                    "batch_size": args.batch_size,
                },
                seed=args.seed,
            )
    print(
        f"{args.num} samples of {shown} ({loaded.image_shape[0]}x{loaded.image_shape[1]}x{loaded.image_shape[2]}), "
        f"{args.steps} {args.sampler} steps, in {seconds:.1f} s -> {out}/samples.png, samples.npz "
        f"(values in [{samples.min():.3g}, {samples.max():.3g}])"
    )
    return 0


SUBCOMMAND = Subcommand(
    name="sample",
    help="DDIM samples of a shipped model or a pretrained diffusers UNet2DModel (google/ddpm-*, read without PyTorch)",
    description=DESCRIPTION,
    epilog=EPILOG,
    add_arguments=add_arguments,
    run=run,
)

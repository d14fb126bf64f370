"""``pifs-jax design-grid``: the timesteps a sampler should visit for a given model and step budget.

The work is :func:`pifs_jax.design_grid`; this module declares the options, loads the model,
writes the files and prints the summary. Nothing heavy is imported at module level.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pifs_jax.cli.common import (
    Subcommand,
    UsageError,
    command_line,
    non_negative_int,
    output_dir,
    positive_int,
    usage_error_for,
)

DESCRIPTION = """\
Design the N timesteps of a sampler for a model: a shipped one (--pretrained NAME), a training
run folder (--run DIR) or a pretrained diffusers UNet2DModel (--diffusers PATH). The default
method, "refined", measures along a few fine reference trajectories the local error of a step
and how much the rest of the chain expands it, places the steps so that each does an equal share
of that measured work ("geometric", docs/theory.md section 12), then settles what the measurement
cannot tell (the solver's effective order, small moves of each step) against the solver's own fine
solution of the design seeds; the other methods are the baselines and the searches of
docs/guides/sampling-grids.md. Design noises x_T ~ N(0, I) from --seed. Writes to --out:
  grid.json     the grid (this package's timesteps), diffusers' timesteps= list (ours minus 1,
                descending; for DPMSolverMultistepScheduler.set_timesteps), NFE, design cost,
                the method's record, the command line; method "corrected": the per-step
                corrections (the network's output replaced by g[k] * eps(s[k] * x, t) + c[k] * x)
  grid.png      the grid against the time-uniform one"""

EPILOG = """\
examples:
  # 10 DDIM steps for the shipped DiT
  pifs-jax design-grid --pretrained dit-photos16 --steps 10 --out out/grid10

  # DPM-Solver++(2M), 5 steps, GITS's dynamic programme
  pifs-jax design-grid --pretrained dit-photos16 --steps 5 --sampler dpmpp2m --method gits --out out/gits5

  # beyond the grid: 10 DDIM steps with fitted per-step corrections of the network's output
  pifs-jax design-grid --pretrained dit-photos16 --steps 10 --method corrected --out out/corrected10

notes:
  diffusers' DDIMScheduler accepts no custom timesteps; DPMSolverMultistepScheduler does
  (set_timesteps(timesteps=...)). Method "ays" needs training images and is available from Python
  (pj.design_grid(..., method="ays", data=images))."""

#: The files ``pifs-jax design-grid`` writes into --out (together, at the end).
RESULT_FILES = ("grid.json", "grid.png")
#: Methods offered on the command line (``ays`` needs training images: Python only).
CLI_METHODS = ("refined", "geometric", "geometric_local", "gradient", "gits", "oracle", "corrected")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from pifs_jax.grid_design import FIXED_GRIDS
    from pifs_jax.samplers import SAMPLER_NAMES

    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--pretrained", default=None, metavar="NAME", help="a model shipped with the package")
    source.add_argument("--run", default=None, type=Path, metavar="DIR", help="a pifs-jax train output folder")
    source.add_argument("--diffusers", default=None, metavar="PATH", help="a diffusers pipeline or UNet2DModel folder")
    parser.add_argument("--steps", type=positive_int, required=True, metavar="N", help="sampler steps")
    parser.add_argument("--sampler", choices=SAMPLER_NAMES, default="ddim", help="the solver (default: ddim)")
    parser.add_argument(
        "--method", choices=CLI_METHODS + FIXED_GRIDS, default="refined", help="design method (default: refined)"
    )
    parser.add_argument(
        "--design-seeds", type=positive_int, default=16, metavar="R", help="design noises (default: 16)"
    )
    parser.add_argument(
        "--iterations",
        type=positive_int,
        default=None,
        metavar="K",
        help="Adam steps of the gradient and corrected methods (default: theirs, 60 and 200)",
    )
    parser.add_argument("--seed", type=non_negative_int, default=0, metavar="S", help="seed of the design noises")
    parser.add_argument("--out", required=True, type=output_dir, metavar="DIR", help="output folder")


def _model(args: argparse.Namespace) -> tuple[Any, Any, tuple[int, ...], dict[str, Any]]:
    """``(eps_fn, schedule, image_shape, source record)`` of the chosen model."""
    try:
        if args.pretrained is not None:
            from pifs_jax.models.pretrained import pretrained

            m = pretrained(args.pretrained)
            return m.eps_fn, m.schedule, tuple(m.image_shape), {"pretrained": m.name, "weights_sha256": m.sha256}
        if args.run is not None:
            from pifs_jax.models.training import load_run
            from pifs_jax.schedules import named_schedule

            if not args.run.is_dir():
                raise UsageError("--run", f"{str(args.run)!r} is not a folder")
            run = load_run(args.run)
            shape = tuple(run.config.image_shape or ())
            return run.eps_fn, named_schedule(run.config.schedule, run.config.T), shape, {"run": str(args.run)}
        from pifs_jax.models import load_diffusers_unet

        loaded = load_diffusers_unet(Path(args.diffusers).expanduser())
        if loaded.schedule is None:
            raise UsageError("--diffusers", f"{args.diffusers!r} holds no scheduler config, so its schedule is unknown")
        return loaded.eps_fn, loaded.schedule, tuple(loaded.image_shape), {"diffusers": str(args.diffusers)}
    except UsageError:
        raise
    except ValueError as exc:
        option = "--pretrained" if args.pretrained else ("--run" if args.run else "--diffusers")
        error = usage_error_for(exc, {}, default=option)
        assert error is not None
        raise error from None


def run(args: argparse.Namespace) -> int:
    import jax
    import numpy as np

    from pifs_jax import plotting
    from pifs_jax.grid_design import design_grid, fixed_grid
    from pifs_jax.grids import grid_to_diffusers_timesteps
    from pifs_jax.results import write_result_json
    from pifs_jax.run_folder import RunFolder
    from pifs_jax.samplers import named_sampler

    eps_fn, sched, shape, source = _model(args)
    if args.steps > sched.T:
        raise UsageError("--steps", f"cannot exceed the schedule's T = {sched.T}, got {args.steps}")
    if args.iterations is not None and args.method not in ("gradient", "corrected"):
        raise UsageError("--iterations", f"applies to --method gradient or corrected, not {args.method!r}")
    options = {} if args.iterations is None else {"iterations": args.iterations}
    out = Path(args.out)
    command = command_line(getattr(args, "argv", []) or [])
    with RunFolder(out, "overwrite", results=RESULT_FILES, command=command) as folder:
        noises = jax.random.normal(jax.random.PRNGKey(args.seed), (args.design_seeds, *shape))
        designed = design_grid(eps_fn, sched, args.steps, sampler=named_sampler(args.sampler), method=args.method,
                               x_T=noises, options=options)  # fmt: skip
        uniform = fixed_grid(sched, args.steps, "time_uniform")
        with folder.staged() as stage:
            write_result_json(
                stage / "grid.json",
                {
                    **source,
                    "grid": designed.grid.tolist(),
                    "diffusers_timesteps": grid_to_diffusers_timesteps(designed.grid).tolist(),
                    "nfe": designed.nfe,
                    "design_network_evaluations": designed.network_evaluations,
                    "design_seconds": designed.seconds,
                    "record": designed.record,
                    # method "corrected": per step k, the network's output g[k] * eps(s[k] * x, t) + c[k] * x
                    "corrections": designed.record.get("corrections"),
                },
                config={"command": command, "steps": args.steps, "sampler": args.sampler, "method": args.method,
                        "design_seeds": args.design_seeds, "iterations": args.iterations},
                seed=args.seed,
            )  # fmt: skip
            fig, ax = plotting.new_figure(figsize=(6.4, 2.4))
            ax.plot(designed.grid, np.ones_like(designed.grid), "o", label=f"{args.method} ({args.sampler})")
            ax.plot(uniform, np.zeros_like(uniform), "s", label="time-uniform")
            ax.set(yticks=[], xlabel="timestep t", ylim=(-0.5, 1.5))
            ax.legend(fontsize=7)
            plotting.save_figure(fig, stage / "grid.png")
    print(
        f"{args.method} grid of {args.steps} {args.sampler} steps (NFE {designed.nfe}): {designed.grid.tolist()}; "
        f"diffusers timesteps {grid_to_diffusers_timesteps(designed.grid).tolist()}; designed with "
        f"{designed.network_evaluations} network evaluations in {designed.seconds:.1f} s -> {out}/grid.json"
    )
    return 0


SUBCOMMAND = Subcommand(
    name="design-grid",
    help="the timesteps a sampler should visit for a model and a step budget (designed from its measured geometry)",
    description=DESCRIPTION,
    epilog=EPILOG,
    add_arguments=add_arguments,
    run=run,
)

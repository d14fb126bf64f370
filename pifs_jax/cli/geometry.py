"""``pifs-jax geometry``: the model-free geometry of a schedule's DDIM chain (no model evaluated).

The numbers come from :func:`pifs_jax.geometry.geometry_arrays`; this module turns options into a
schedule and a grid, prints a table and writes ``geometry.json`` and four figures. Nothing heavy
is imported at module level.
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path
from typing import Any, NamedTuple

from pifs_jax.cli.common import Subcommand, UsageError, command_line, finite_float, output_dir, positive_int

DESCRIPTION = """\
Model-free geometry of a noise schedule's DDIM chain (no model evaluated).

For every sampling step t = tau_i -> s = tau_{i-1}:
  a_t       = sqrt(alpha_bar_s / alpha_bar_t)          (isotropic expansion, > 1)
  b_t       = sigma_s - a_t sigma_t                    (score correction, < 0)
  L*_t      = (sigma_s + a_t sigma_t) / (1 + a_t)      (contraction threshold)
  f_t(lam)  = (sqrt(ab_s ab_t) lam + sigma_s sigma_t) / (ab_t lam + sigma_t^2)
  lambda*_t : f_t(lambda*_t) = 1                       (per-step expansion threshold)
and for the chain: lambda** with sum_t log f_t(lambda**) = 0 (Moran threshold).

Prints a table of a few steps and the summaries (mean / CV / min of L*, L* at the finest
step, lambda**, logSNR range) and writes to --out:
  geometry.json            every per-step array (t, s, alpha_bar_t, sigma_t, a, b, lstar,
                           lambda_star, log_snr, f on the lambda grid), the summaries, the
                           configuration (with the command line) and the environment
  lstar.png, expansion_heatmap.png, lambda_star.png, log_snr.png"""

EPILOG = """\
examples:
  # the 1000-step cosine chain without offset (the paper's lambda** = 1.0024)
  pifs-jax geometry --schedule cosine --offset 0 --out out/cosine_s0

  # 50 DDIM steps tau_i = 20 i on the linear DDPM schedule, in float64
  pifs-jax geometry --schedule linear --steps 50 --x64 --out out/linear50

  # Stable Diffusion's schedule, 25 steps with diffusers' "trailing" spacing
  pifs-jax geometry --schedule scaled_linear --steps 25 --spacing trailing --out out/sd25

  # logSNR-cosine shifted for 256x256 images (shift = 2 log(64/256))
  pifs-jax geometry --schedule logsnr_cosine --resolution 256 --out out/shifted

  # a diffusers scheduler_config.json (T and timestep_spacing come from the file)
  pifs-jax geometry --config scheduler_config.json --steps 50 --out out/from_config

notes:
  Steps are indexed with t = 0 as clean data (alpha_bar_0 = 1); diffusers' timestep k is
  this package's k + 1. Entry 0 of every per-step array is the finest step (landing on
  alpha_bar = 1), where L* ~ sigma_1 / 2 is smallest."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from pifs_jax.grids import TIMESTEP_SPACINGS
    from pifs_jax.schedules import SCHEDULE_NAMES

    source = parser.add_argument_group("schedule (one of --schedule or --config is required)")
    exclusive = source.add_mutually_exclusive_group(required=True)
    exclusive.add_argument(
        "--schedule",
        choices=SCHEDULE_NAMES,
        metavar="NAME",
        help=f"named schedule: {', '.join(SCHEDULE_NAMES)}",
    )
    exclusive.add_argument(
        "--config",
        metavar="PATH",
        help="a diffusers scheduler_config.json (or the name of a bundled example config) instead "
        "of --schedule; T comes from num_train_timesteps and --steps use its timestep_spacing",
    )
    source.add_argument(
        "--T",
        type=positive_int,
        default=None,
        metavar="T",
        help="number of training steps (default: 1000; not with --config)",
    )
    source.add_argument(
        "--offset",
        type=finite_float,
        default=None,
        metavar="S",
        help="cosine offset s >= 0 (cosine only; default: 0.008)",
    )
    source.add_argument(
        "--shift", type=finite_float, default=None, metavar="X", help="add X to every logSNR_t, t >= 1 (default: none)"
    )
    source.add_argument(
        "--resolution",
        type=finite_float,
        default=None,
        metavar="D",
        help="image side length D: shift logSNR by 2 log(64/D) (simple diffusion); adds to --shift (default: none)",
    )

    chain = parser.add_argument_group("sampling chain")
    chain.add_argument(
        "--steps",
        type=positive_int,
        default=None,
        metavar="N",
        help="number of sampling steps N <= T (default: all T training steps)",
    )
    chain.add_argument(
        "--spacing",
        choices=("uniform", *TIMESTEP_SPACINGS),
        default=None,
        help="how --steps are placed: uniform (tau_i = round(i T / N)) or diffusers' "
        "linspace / leading / trailing (default: uniform; with --config its timestep_spacing)",
    )

    output = parser.add_argument_group("output")
    output.add_argument(
        "--lambda-range",
        nargs=2,
        type=finite_float,
        default=(1e-2, 1e2),
        metavar=("MIN", "MAX"),
        help="data variances of the f_t(lambda) grid, log-spaced (default: 0.01 100)",
    )
    output.add_argument(
        "--num-lambdas",
        type=positive_int,
        default=101,
        metavar="K",
        help="points on the lambda grid, >= 2 (default: 101)",
    )
    output.add_argument("--x64", action="store_true", help="compute in float64 (default: float32)")
    output.add_argument(
        "--out",
        required=True,
        type=output_dir,
        metavar="DIR",
        help="output folder (created if missing; checked before any work)",
    )


def _resolve_config_path(text: str) -> Path:
    path = Path(text)
    if path.is_file():
        return path
    with contextlib.suppress(Exception):  # a bundled example name, once pifs_jax.interop offers them
        from pifs_jax.interop import example_config_path

        candidate = Path(example_config_path(text))
        if candidate.is_file():
            return candidate
    raise UsageError("--config", f"no such file: {text!r}")


#: The files ``pifs-jax geometry`` writes into --out (together, at the end).
RESULT_FILES = ("geometry.json", "lstar.png", "expansion_heatmap.png", "lambda_star.png", "log_snr.png")


class Source(NamedTuple):
    """The schedule the options name, before any logSNR shift."""

    sched: Any
    description: str
    config: dict[str, Any] | None
    """The diffusers config (``--config``), else ``None``."""
    details: dict[str, Any]


class GeometryInputs(NamedTuple):
    """What the geometry is computed on: the (shifted) schedule, the grid, and their description."""

    sched: Any
    grid: Any
    """The sampling grid, or ``None`` for every training step."""
    description: str
    details: dict[str, Any]
    """Recorded in ``geometry.json``'s config (config file, shift, spacing)."""


def _check_options(args: argparse.Namespace) -> None:
    """The option combinations only the command line can get wrong (the library checks the values)."""
    lo, hi = args.lambda_range
    if not 0 < lo < hi:
        raise UsageError("--lambda-range", f"expected 0 < MIN < MAX, got {lo:g} {hi:g}")
    if args.num_lambdas < 2:
        raise UsageError("--num-lambdas", f"expected at least 2, got {args.num_lambdas}")
    if args.spacing is not None and args.steps is None:
        raise UsageError("--spacing", "needs --steps (without --steps the chain takes every training step)")
    if args.config is not None and args.T is not None:
        raise UsageError("--T", "not allowed with --config (num_train_timesteps comes from the config)")
    if args.offset is not None and args.schedule != "cosine":
        where = "--config" if args.config is not None else f"--schedule {args.schedule}"
        raise UsageError("--offset", f"only applies to --schedule cosine, not to {where}")


def _config_source(text: str) -> Source:
    """``--config``: a diffusers scheduler_config.json (a path or a bundled example's name)."""
    path = _resolve_config_path(text)
    try:
        from pifs_jax import interop
    except ImportError as exc:
        raise UsageError("--config", f"diffusers config support is not available ({exc})") from None
    try:
        config = interop.load_config(path)
        sched = interop.from_diffusers_config(config)
    except (ValueError, KeyError, TypeError) as exc:
        raise UsageError("--config", f"cannot use {str(path)!r}: {exc}") from None
    return Source(sched, path.name, config, {"config_file": str(path), "diffusers_config": config})


def _named_source(args: argparse.Namespace) -> Source:
    """``--schedule`` (with ``--T`` and ``--offset``); the library checks the values."""
    import pifs_jax.schedules as schedules

    kwargs = {} if args.offset is None else {"s": args.offset}
    sched = schedules.named_schedule(args.schedule, 1000 if args.T is None else args.T, **kwargs)
    description = args.schedule
    if args.schedule == "cosine":
        description += f" (s = {kwargs.get('s', 0.008):g})"
    return Source(sched, description, None, {})


def _shifted(source: Source, args: argparse.Namespace) -> Source:
    """``--shift`` and ``--resolution`` added to every logSNR_t, t >= 1."""
    import pifs_jax.schedules as schedules

    total = (args.shift or 0.0) + (0.0 if args.resolution is None else schedules.resolution_shift(args.resolution))
    details = {**source.details, "total_log_snr_shift": total}
    if args.shift is None and args.resolution is None:
        return source._replace(details=details)
    sched = schedules.shift_log_snr(source.sched, total)
    return Source(sched, f"{source.description}, logSNR shift {total:+.4g}", source.config, details)


def _sampling_grid(args: argparse.Namespace, source: Source) -> tuple[Any, str, dict[str, Any]]:
    """``(grid, spacing, details)`` of ``--steps`` and ``--spacing`` (a config's own spacing by default)."""
    import numpy as np

    import pifs_jax.grids as grids

    T, config, spacing = source.sched.T, source.config, args.spacing
    if args.steps is None:
        return None, "all", {}
    if spacing is None and config is not None:
        from pifs_jax import interop

        details = {}
        if config.get("set_alpha_to_one") is False:
            # Chains here always end on clean data (tau_0 = 0); the training schedule is unaffected.
            print("note: the config's set_alpha_to_one = false is overridden; the chain ends on alpha_bar = 1")
            details["set_alpha_to_one_overridden"] = True
        grid = np.asarray(interop.diffusers_config_grid({**config, "set_alpha_to_one": True}, args.steps))
        return grid, str(config.get("timestep_spacing", "leading")), details
    if spacing in (None, "uniform"):
        return grids.uniform_grid(T, args.steps), "uniform", {}
    offset = int(config.get("steps_offset", 0)) if config is not None else 0
    return grids.diffusers_grid(T, args.steps, spacing=spacing, steps_offset=offset), spacing, {}


def _geometry_inputs(args: argparse.Namespace) -> GeometryInputs:
    """Check the options and build the schedule, the grid and their description."""
    _check_options(args)
    source = _shifted(_config_source(args.config) if args.config is not None else _named_source(args), args)
    grid, spacing, grid_details = _sampling_grid(args, source)
    T = source.sched.T
    steps = f"all {T} steps" if grid is None else f"{len(grid) - 1} steps ({spacing})"
    details = {**source.details, **grid_details, "spacing": spacing}
    return GeometryInputs(source.sched, grid, f"{source.description}, T = {T}, {steps}", details)


def _geometry_table(data: dict[str, Any], description: str) -> str:
    steps, summary = data["per_step"], data["summary"]
    n = summary["num_steps"]
    rows = sorted({0, 1, 2, n // 4, n // 2, (3 * n) // 4, n - 1} & set(range(n)))
    header = (
        f"{'step':>6} {'t':>6} {'s':>6} {'a_t - 1':>12} {'b_t':>12} {'L*_t':>12} {'lambda*_t':>12} {'logSNR_t':>10}"
    )
    lines = [f"Schedule geometry: {description}, {summary['dtype']}", "", header, "-" * len(header)]
    previous = -1
    for i in rows:
        if i > previous + 1:
            lines.append(f"{'...':>6}")
        lines.append(
            f"{i + 1:>6} {int(steps['t'][i]):>6} {int(steps['s'][i]):>6} {float(steps['a'][i]) - 1:>12.5e} "
            f"{float(steps['b'][i]):>12.5e} {float(steps['lstar'][i]):>12.6g} "
            f"{float(steps['lambda_star'][i]):>12.6g} {float(steps['log_snr'][i]):>10.4f}"
        )
        previous = i
    lines += [
        "",
        "summary",
        f"  L*_t       mean {summary['lstar_mean']:.6g}   CV {summary['lstar_cv']:.6g}   "
        f"min {summary['lstar_min']:.6g} (t = {summary['lstar_argmin_t']})   finest {summary['lstar_finest']:.6g}",
        f"  lambda**   {summary['lambda_star_star']:.8g}   (lambda*_t in [{summary['lambda_star_min']:.6g}, "
        f"{summary['lambda_star_max']:.6g}])",
        f"  logSNR     from {summary['log_snr_max']:.4f} (t = {int(steps['t'][0])}) "
        f"to {summary['log_snr_min']:.4f} (t = {int(steps['t'][-1])})",
    ]
    return "\n".join(lines)


def _figures(inputs: GeometryInputs, args: argparse.Namespace) -> dict[str, Any]:
    from pifs_jax import plotting

    sched, grid, description = inputs.sched, inputs.grid, inputs.description
    figures = {
        "lstar.png": plotting.plot_contraction_threshold(sched, grid, title=f"$L^*_t$: {description}"),
        "expansion_heatmap.png": plotting.plot_expansion_heatmap(
            sched,
            grid,
            lambda_range=tuple(args.lambda_range),
            num_lambdas=args.num_lambdas,
            title=f"$f_t(\\lambda)$: {description}",
        ),
        "lambda_star.png": plotting.plot_expansion_threshold(sched, grid, title=f"$\\lambda^*(t)$: {description}"),
        "log_snr.png": plotting.plot_log_snr(sched, grid, title=f"logSNR: {description}"),
    }
    for fig in figures.values():
        fig.axes[0].title.set_fontsize("small")
    return figures


def run(args: argparse.Namespace) -> int:
    import jax

    from pifs_jax import plotting
    from pifs_jax.geometry import geometry_arrays
    from pifs_jax.results import write_result_json
    from pifs_jax.run_folder import RunFolder

    precision = jax.enable_x64(True) if args.x64 else contextlib.nullcontext()
    with precision:
        inputs = _geometry_inputs(args)
        with RunFolder(args.out, "overwrite", results=RESULT_FILES, command=command_line(args.argv)) as folder:
            lambdas = plotting.lambda_grid(tuple(args.lambda_range), args.num_lambdas)
            data = geometry_arrays(inputs.sched, inputs.grid, lambdas=lambdas)
            print(_geometry_table(data, inputs.description))
            config = {
                "command": command_line(args.argv),
                "argv": args.argv,
                "description": inputs.description,
                "schedule": args.schedule,
                "config": args.config,
                "T": data["summary"]["T"],
                "offset": args.offset,
                "shift": args.shift,
                "resolution": args.resolution,
                "steps": args.steps,
                "lambda_range": list(args.lambda_range),
                "num_lambdas": args.num_lambdas,
                "x64": bool(args.x64),
                "dtype": data["summary"]["dtype"],
                **inputs.details,
            }
            with folder.staged() as stage:
                write_result_json(stage / "geometry.json", data, config=config)
                for name, fig in _figures(inputs, args).items():
                    plotting.save_figure(fig, stage / name)
    print("\nwrote " + ", ".join(str(p) for p in folder.written))
    return 0


SUBCOMMAND = Subcommand(
    name="geometry",
    help="model-free geometry of a schedule: L*_t, f_t(lambda), lambda*(t), lambda**",
    description=DESCRIPTION,
    epilog=EPILOG,
    add_arguments=add_arguments,
    run=run,
)

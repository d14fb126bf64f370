"""The ``pifs-jax`` command.

Subcommands live in a registry (:data:`SUBCOMMANDS`): each is a :class:`Subcommand` record with
an ``add_arguments(parser)`` function that declares its options and a ``run(args) -> int``
function that does the work. Adding a command (``optimize``, ``train``, ...) means writing
those two functions and one :func:`register_subcommand` call; :func:`build_parser` and
:func:`main` need no change.

Error handling: bad input exits with status 2 and one line ``pifs-jax CMD: error: argument
--OPTION: ...`` on stderr, never a traceback. Run functions report such input by raising
:class:`UsageError` (naming the option); a ``ValueError`` from the library is printed the same
way. Set ``PIFS_JAX_TRACEBACK=1`` to see the traceback instead.

Examples::

  pifs-jax geometry --schedule cosine --offset 0 --out out/cosine
  pifs-jax geometry --schedule linear --steps 50 --spacing trailing --out out/linear50
  pifs-jax reproduce --out results --only schedule_geometry
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shlex
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

__all__ = ["main", "build_parser", "Subcommand", "SUBCOMMANDS", "register_subcommand", "UsageError", "geometry_arrays"]

PROG = "pifs-jax"


class UsageError(Exception):
    """Bad command-line input; ``option`` names the offending option (``--steps``)."""

    def __init__(self, option: str, message: str):
        super().__init__(message)
        self.option = option


class Subcommand(NamedTuple):
    """One ``pifs-jax`` subcommand.

    Attributes:
      name: the word on the command line.
      help: one line for ``pifs-jax --help``.
      description: the paragraph at the top of ``pifs-jax NAME --help``.
      epilog: examples and notes at the bottom of ``pifs-jax NAME --help`` (kept verbatim).
      add_arguments: declares the options on the subcommand's parser.
      run: does the work; returns the exit status (0 success, 1 failure, 2 bad input).
    """

    name: str
    help: str
    description: str
    epilog: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


#: The registered subcommands, in ``--help`` order.
SUBCOMMANDS: dict[str, Subcommand] = {}


def register_subcommand(subcommand: Subcommand) -> Subcommand:
    """Add ``subcommand`` to :data:`SUBCOMMANDS` (a name may be registered once)."""
    if subcommand.name in SUBCOMMANDS:
        raise ValueError(f"subcommand: {subcommand.name!r} is already registered")
    SUBCOMMANDS[subcommand.name] = subcommand
    return subcommand


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line: ``PROG: error: MESSAGE (see PROG --help)``."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _int_at_least(text: str, minimum: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
    return value


def _positive_int(text: str) -> int:
    return _int_at_least(text, 1, "a positive integer")


def _non_negative_int(text: str) -> int:
    return _int_at_least(text, 0, "a non-negative integer")


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _command_line(argv: list[str]) -> str:
    return shlex.join([PROG, *argv])


# ============================================================================ geometry

_GEOMETRY_DESCRIPTION = """\
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

_GEOMETRY_EPILOG = """\
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


def _add_geometry_arguments(parser: argparse.ArgumentParser) -> None:
    from pifs_jax.grids import TIMESTEP_SPACINGS
    from pifs_jax.schedules import SCHEDULE_NAMES

    source = parser.add_argument_group("schedule (one of --schedule or --config is required)")
    exclusive = source.add_mutually_exclusive_group(required=True)
    exclusive.add_argument(
        "--schedule", choices=SCHEDULE_NAMES, metavar="NAME",
        help=f"named schedule: {', '.join(SCHEDULE_NAMES)}",
    )
    exclusive.add_argument(
        "--config", metavar="PATH",
        help="a diffusers scheduler_config.json (or the name of a bundled example config) instead "
        "of --schedule; T comes from num_train_timesteps and --steps use its timestep_spacing",
    )
    source.add_argument("--T", type=_positive_int, default=None, metavar="T",
                        help="number of training steps (default: 1000; not with --config)")
    source.add_argument("--offset", type=_finite_float, default=None, metavar="S",
                        help="cosine offset s >= 0 (cosine only; default: 0.008)")
    source.add_argument("--shift", type=_finite_float, default=None, metavar="X",
                        help="add X to every logSNR_t, t >= 1 (default: none)")
    source.add_argument("--resolution", type=_finite_float, default=None, metavar="D",
                        help="image side length D: shift logSNR by 2 log(64/D) (simple diffusion); "
                        "adds to --shift (default: none)")

    chain = parser.add_argument_group("sampling chain")
    chain.add_argument("--steps", type=_positive_int, default=None, metavar="N",
                       help="number of sampling steps N <= T (default: all T training steps)")
    chain.add_argument("--spacing", choices=("uniform",) + TIMESTEP_SPACINGS, default=None,
                       help="how --steps are placed: uniform (tau_i = round(i T / N)) or diffusers' "
                       "linspace / leading / trailing (default: uniform; with --config its timestep_spacing)")

    output = parser.add_argument_group("output")
    output.add_argument("--lambda-range", nargs=2, type=_finite_float, default=(1e-2, 1e2), metavar=("MIN", "MAX"),
                        help="data variances of the f_t(lambda) grid, log-spaced (default: 0.01 100)")
    output.add_argument("--num-lambdas", type=_positive_int, default=101, metavar="K",
                        help="points on the lambda grid, >= 2 (default: 101)")
    output.add_argument("--x64", action="store_true", help="compute in float64 (default: float32)")
    output.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")


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


def _geometry_inputs(args: argparse.Namespace):
    """Validate the options and build ``(schedule, grid, description, details)``."""
    import pifs_jax.grids as grids
    import pifs_jax.schedules as schedules

    lo, hi = args.lambda_range
    if not 0 < lo < hi:
        raise UsageError("--lambda-range", f"expected 0 < MIN < MAX, got {lo:g} {hi:g}")
    if args.num_lambdas < 2:
        raise UsageError("--num-lambdas", f"expected at least 2, got {args.num_lambdas}")
    if args.resolution is not None and not args.resolution > 0:
        raise UsageError("--resolution", f"expected a side length > 0, got {args.resolution:g}")
    if args.offset is not None and args.offset < 0:
        raise UsageError("--offset", f"the cosine offset must be >= 0, got {args.offset:g}")
    if args.spacing is not None and args.steps is None:
        raise UsageError("--spacing", "needs --steps (without --steps the chain takes every training step)")

    details: dict[str, Any] = {}
    config = None
    if args.config is not None:
        if args.T is not None:
            raise UsageError("--T", "not allowed with --config (num_train_timesteps comes from the config)")
        if args.offset is not None:
            raise UsageError("--offset", "only applies to --schedule cosine, not to --config")
        path = _resolve_config_path(args.config)
        try:
            from pifs_jax import interop
        except ImportError as exc:
            raise UsageError("--config", f"diffusers config support is not available ({exc})") from None
        try:
            config = interop.load_config(path)
            sched = interop.from_diffusers_config(config)
        except (ValueError, KeyError, TypeError) as exc:
            raise UsageError("--config", f"cannot use {str(path)!r}: {exc}") from None
        T = sched.T
        description = f"{path.name}"
        details.update(config_file=str(path), diffusers_config=config)
    else:
        T = 1000 if args.T is None else args.T
        kwargs = {}
        if args.offset is not None:
            if args.schedule != "cosine":
                raise UsageError("--offset", f"only applies to --schedule cosine, got --schedule {args.schedule}")
            kwargs["s"] = args.offset
        if args.schedule == "karras" and T < 2:
            raise UsageError("--T", "the karras schedule needs T >= 2")
        if args.steps is not None and args.steps > T:  # checked before the schedule is built
            raise UsageError("--steps", f"{args.steps} exceeds the number of training steps T = {T}")
        try:
            sched = schedules.named_schedule(args.schedule, T, **kwargs)
        except ValueError as exc:
            raise UsageError("--schedule", str(exc)) from None
        description = args.schedule
        if args.schedule == "cosine":
            description += f" (s = {kwargs.get('s', 0.008):g})"

    total_shift = 0.0
    if args.shift is not None:
        total_shift += args.shift
    if args.resolution is not None:
        total_shift += schedules.resolution_shift(args.resolution)
    if args.shift is not None or args.resolution is not None:
        sched = schedules.shift_log_snr(sched, total_shift)
        description += f", logSNR shift {total_shift:+.4g}"
    details["total_log_snr_shift"] = total_shift

    if args.steps is not None and args.steps > T:
        raise UsageError("--steps", f"{args.steps} exceeds the number of training steps T = {T}")
    spacing = args.spacing
    try:
        if args.steps is None:
            grid = None
            spacing = "all"
        elif spacing is None and config is not None:
            from pifs_jax import interop

            if config.get("set_alpha_to_one") is False:
                # Chains here always end on clean data (tau_0 = 0); the training schedule is unaffected.
                print("note: the config's set_alpha_to_one = false is overridden; the chain ends on alpha_bar = 1")
                details["set_alpha_to_one_overridden"] = True
            try:
                grid = np.asarray(interop.diffusers_config_grid({**config, "set_alpha_to_one": True}, args.steps))
            except ValueError as exc:
                raise UsageError("--config", f"no sampling grid with --steps {args.steps}: {exc}") from None
            spacing = str(config.get("timestep_spacing", "leading"))
        elif spacing in (None, "uniform"):
            spacing = "uniform"
            grid = grids.uniform_grid(T, args.steps)
        else:
            offset = int(config.get("steps_offset", 0)) if config is not None else 0
            grid = grids.diffusers_grid(T, args.steps, spacing=spacing, steps_offset=offset)
    except ValueError as exc:
        raise UsageError("--steps", str(exc)) from None
    num_steps = T if grid is None else len(grid) - 1
    description += f", T = {T}, " + (f"all {T} steps" if grid is None else f"{num_steps} steps ({spacing})")
    details["spacing"] = spacing
    return sched, grid, description, details


def _geometry_values(sched, grid, lambdas):
    """The JAX part of :func:`geometry_arrays` (jittable; ``grid`` may be traced)."""
    import pifs_jax.geometry as geo

    coeffs = geo.step_coefficients(sched, grid)
    summary = geo.contraction_summary(sched, grid)
    return {
        "alpha_bar_t": coeffs.alpha_bar_t,
        "sigma_t": coeffs.sigma_t,
        "a": coeffs.a,
        "b": coeffs.b,
        "lstar": geo.contraction_threshold(sched, grid),
        "lambda_star": geo.expansion_threshold(sched, grid),
        "log_snr": sched.log_snr[grid[1:]],
        "f": geo.expansion_factor(sched, lambdas, grid),
        "lstar_mean": summary.mean,
        "lstar_cv": summary.cv,
        "lstar_min": summary.min,
        "lstar_argmin": summary.argmin,
        "lstar_finest": summary.finest,
        "lambda_star_star": geo.moran_threshold(sched, grid),
    }


def geometry_arrays(sched, grid: Any = None, *, lambdas: Any) -> dict[str, Any]:
    """Every per-step quantity of the chain, plus the summaries, as NumPy arrays / Python numbers.

    Uses :mod:`pifs_jax.geometry` (``step_coefficients``, ``contraction_threshold``,
    ``contraction_summary``, ``expansion_threshold``, ``expansion_factor``, ``moran_threshold``).

    Args:
      sched: the schedule.
      grid: sampling grid (``None`` = all ``T`` steps).
      lambdas: data variances for ``f_t(lambda)``, shape ``(K,)``.

    Returns:
      ``{"summary": {...}, "per_step": {t, s, alpha_bar_t, sigma_t, a, b, lstar, lambda_star,
      log_snr, f}, "lambda_grid": lambdas}``; per-step arrays have shape ``(N,)`` (entry 0 = finest
      step), ``f`` has shape ``(N, K)``.
    """
    from pifs_jax._validation import check_variances
    from pifs_jax.grids import as_grid

    g = np.asarray(as_grid(grid, sched.T))  # validated here, outside jit
    check_variances(lambdas, name="lambdas")
    values = {k: np.asarray(v) for k, v in _geometry_values(sched, g, np.asarray(lambdas)).items()}
    per_step = {"t": g[1:], "s": g[:-1]}
    per_step.update(
        {k: values[k] for k in ("alpha_bar_t", "sigma_t", "a", "b", "lstar", "lambda_star", "log_snr", "f")}
    )
    lam_star, log_snr = values["lambda_star"], values["log_snr"]
    summaries = {
        "T": int(sched.T),
        "num_steps": int(len(g) - 1),
        "dtype": str(sched.dtype),
        "lstar_mean": float(values["lstar_mean"]),
        "lstar_cv": float(values["lstar_cv"]),
        "lstar_min": float(values["lstar_min"]),
        "lstar_argmin_t": int(g[1:][int(values["lstar_argmin"])]),
        "lstar_finest": float(values["lstar_finest"]),
        "lambda_star_star": float(values["lambda_star_star"]),
        "lambda_star_min": float(np.min(lam_star)),
        "lambda_star_max": float(np.max(lam_star)),
        "log_snr_max": float(log_snr[0]),
        "log_snr_min": float(log_snr[-1]),
    }
    return {"summary": summaries, "per_step": per_step, "lambda_grid": np.asarray(lambdas)}


def _geometry_table(data: dict[str, Any], description: str) -> str:
    steps, summary = data["per_step"], data["summary"]
    n = summary["num_steps"]
    rows = sorted({0, 1, 2, n // 4, n // 2, (3 * n) // 4, n - 1} & set(range(n)))
    header = f"{'step':>6} {'t':>6} {'s':>6} {'a_t - 1':>12} {'b_t':>12} {'L*_t':>12} {'lambda*_t':>12} {'logSNR_t':>10}"
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


def _run_geometry(args: argparse.Namespace) -> int:
    import jax

    from pifs_jax import plotting
    from pifs_jax.results import write_result_json

    precision = jax.enable_x64(True) if args.x64 else contextlib.nullcontext()
    with precision:
        sched, grid, description, details = _geometry_inputs(args)
        lambdas = plotting.lambda_grid(tuple(args.lambda_range), args.num_lambdas)
        data = geometry_arrays(sched, grid, lambdas=lambdas)
        print(_geometry_table(data, description))

        out = Path(args.out)
        config = {
            "command": _command_line(args.argv),
            "argv": args.argv,
            "description": description,
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
            **details,
        }
        written = [write_result_json(out / "geometry.json", data, config=config)]
        figures = {
            "lstar.png": plotting.plot_contraction_threshold(sched, grid, title=f"$L^*_t$: {description}"),
            "expansion_heatmap.png": plotting.plot_expansion_heatmap(
                sched, grid, lambda_range=tuple(args.lambda_range), num_lambdas=args.num_lambdas,
                title=f"$f_t(\\lambda)$: {description}",
            ),
            "lambda_star.png": plotting.plot_expansion_threshold(sched, grid, title=f"$\\lambda^*(t)$: {description}"),
            "log_snr.png": plotting.plot_log_snr(sched, grid, title=f"logSNR: {description}"),
        }
        for name, fig in figures.items():
            fig.axes[0].title.set_fontsize("small")
            written.append(plotting.save_figure(fig, out / name))
    print("\nwrote " + ", ".join(str(p) for p in written))
    return 0


register_subcommand(
    Subcommand(
        name="geometry",
        help="model-free geometry of a schedule: L*_t, f_t(lambda), lambda*(t), lambda**",
        description=_GEOMETRY_DESCRIPTION,
        epilog=_GEOMETRY_EPILOG,
        add_arguments=_add_geometry_arguments,
        run=_run_geometry,
    )
)


# ============================================================================ reproduce

_REPRODUCE_DESCRIPTION = """\
Run the experiment scripts in the repository's experiments/ folder and write the
reproduction report OUT/REPORT.md (paper values beside ours, figures, environment, timing)
plus OUT/reproduction.json. Each experiment writes its JSON and figures to OUT/NAME/.
An experiment that fails is reported as FAILED; the others still run, and the command
exits with status 1."""

_REPRODUCE_EPILOG = """\
examples:
  # everything, into ./results
  pifs-jax reproduce

  # one experiment, reduced grids (what the test suite runs)
  pifs-jax reproduce --only schedule_geometry --quick --out /tmp/results

  # experiments from another folder
  pifs-jax reproduce --experiments-dir my_experiments --out my_results"""


def _add_reproduce_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="results", metavar="DIR", help="report folder (default: results)")
    parser.add_argument("--only", nargs="+", action="extend", default=None, metavar="NAME",
                        help="run only these experiments (file stems in experiments/, e.g. schedule_geometry); "
                        "repeatable (default: all)")
    parser.add_argument("--quick", action="store_true", help="reduced runs that exercise every code path (default: full)")
    parser.add_argument("--experiments-dir", default=None, metavar="DIR",
                        help="folder of experiment scripts (default: the repository's experiments/)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _run_reproduce(args: argparse.Namespace) -> int:
    from pifs_jax import reproduce

    try:
        available = reproduce.discover_experiments(args.experiments_dir)
    except ValueError as exc:
        raise UsageError("--experiments-dir", str(exc).removeprefix("experiments_dir: ")) from None
    if args.only:
        unknown = [name for name in args.only if name not in available]
        if unknown:
            raise UsageError(
                "--only",
                f"unknown experiment(s) {', '.join(unknown)}; available: {', '.join(available) or '(none)'}",
            )
    report = reproduce.run_reproduction(
        args.out, args.only, args.quick,
        experiments_dir=args.experiments_dir, progress=not args.no_progress, command=_command_line(args.argv),
    )
    for outcome in report.outcomes:
        print(f"{'ok    ' if outcome.ok else 'FAILED'} {outcome.name} ({outcome.seconds:.1f} s)")
    print(f"report: {report.report_path}")
    if not report.ok:
        print(f"{len(report.failed)} experiment(s) failed: {', '.join(report.failed)}", file=sys.stderr)
        return 1
    return 0


register_subcommand(
    Subcommand(
        name="reproduce",
        help="run the experiments and write the reproduction report REPORT.md",
        description=_REPRODUCE_DESCRIPTION,
        epilog=_REPRODUCE_EPILOG,
        add_arguments=_add_reproduce_arguments,
        run=_run_reproduce,
    )
)


# ============================================================================ optimize
# Options and work live in pifs_jax/_optimize_command.py; only the registration is here.

from pifs_jax import _optimize_command  # noqa: E402  (light: no JAX at import)

register_subcommand(
    Subcommand(
        name="optimize",
        help="design a schedule (weakest-link, balanced-growth) or a sampling grid (workload) by gradient descent",
        description=_optimize_command.DESCRIPTION,
        epilog=_optimize_command.EPILOG,
        add_arguments=_optimize_command.add_arguments,
        run=_optimize_command.run,
    )
)


# ============================================================================ train
# Options and work live in pifs_jax/_train_command.py; only the registration is here.

from pifs_jax import _train_command  # noqa: E402  (light: no JAX at import)

register_subcommand(
    Subcommand(
        name="train",
        help="train a UNet or patch-transformer noise predictor on real images (checkpoints, --resume)",
        description=_train_command.DESCRIPTION,
        epilog=_train_command.EPILOG,
        add_arguments=_train_command.add_arguments,
        run=_train_command.run,
    )
)


# ============================================================================ entry point


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one sub-parser per registered :class:`Subcommand`."""
    from pifs_jax import __version__

    # the first example of each subcommand (its epilog's lines 1-2: a comment and a command)
    examples = "\n\n".join(
        "\n".join(line.strip() for line in sub.epilog.splitlines()[1:3]) for sub in SUBCOMMANDS.values()
    )
    parser = _Parser(
        prog=PROG,
        description="Denoising diffusion as Partitioned Iterated Function Systems: schedule geometry, "
        "chain dynamics and schedule design in JAX.",
        epilog="examples:\n" + textwrap.indent(examples, "  ")
        + f"\n\nRun '{PROG} COMMAND --help' for the options of a command.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in SUBCOMMANDS.values():
        sub_parser = sub.add_parser(
            command.name,
            help=command.help,
            description=command.description,
            epilog=command.epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        command.add_arguments(sub_parser)
    return parser


def _exit_status(exc: SystemExit) -> int:
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    """Run ``pifs-jax`` with ``argv`` (default ``sys.argv[1:]``) and return the exit status.

    Returns 0 on success, 1 when a command fails (e.g. a failed experiment), 2 on bad input
    (with a one-line ``error:`` message on stderr).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, and argparse's own errors
        return _exit_status(exc)
    args.argv = argv
    command = SUBCOMMANDS[args.command]
    try:
        return int(command.run(args) or 0)
    except UsageError as exc:
        if os.environ.get("PIFS_JAX_TRACEBACK"):
            raise
        print(f"{PROG} {command.name}: error: argument {exc.option}: {exc} (see '{PROG} {command.name} --help')",
              file=sys.stderr)
        return 2
    except ValueError as exc:
        if os.environ.get("PIFS_JAX_TRACEBACK"):
            raise
        message = " ".join(str(exc).split())
        print(f"{PROG} {command.name}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG} {command.name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

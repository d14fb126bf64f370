"""``pifs-jax optimize``: design a schedule (criteria 1, 2) or a sampling grid (criterion 3).

The work is :mod:`pifs_jax.optimize`; this module declares the options and writes the outputs.
Nothing heavy is imported at module level, so importing :mod:`pifs_jax.cli` stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from pifs_jax.cli.common import (
    PROG,
    Subcommand,
    UsageError,
    command_line,
    finite_float,
    output_dir,
    positive_int,
)

DESCRIPTION = """\
Optimise a noise schedule, or a sampling grid, for one of the paper's three design criteria
(docs/theory.md section 8) by gradient descent (optax Adam, one compiled update step).

  weakest-link     maximise the smooth minimum of L*_t = (sigma_s + a_t sigma_t)/(1 + a_t)
                   (loss -log softmin L*, temperature --temperature in nats); the minimum is
                   always at the finest step, so this adds noise early, as far as the family's
                   fixed logSNR end points allow
  balanced-growth  minimise CV(Delta d_t)^2 (or CV(IG_t)^2 with --measure information) over
                   steps 2..N for the patch variances --variances with sizes --sizes
  workload         keep the schedule and place --steps sampling steps so that each does the
                   same contraction work W_i = sum over its training steps of 1/L*_u
                   (minimise CV(W)^2 on a continuous relaxation, then round to integers)

The schedule is a learnable family started from --init: a monotone logSNR spline or a
VDM-style monotone network with both logSNR end points fixed (alpha_bar_T fixed exactly with
--alpha-bar-T), or the one-parameter cosine offset (always from cosine) / logSNR shift. The
spline and the network start from a fit of --init; figures and schedule.json label it so, with
the largest logSNR error of the fit. Writes to --out, all result files at the end or none:
  schedule.json            optimised (and initial) schedule: log alpha_bar, alpha_bar, betas,
                           logSNR; parameters; criterion before/after; warnings; a summary of
                           the history
  history.npz              the per-iteration loss and metrics (numpy arrays, index = iteration)
  scheduler_config.json    a diffusers DDIMScheduler config with trained_betas
  timesteps.json           (workload) the grid in this package's indexing (0 = tau_0 < ... <
                           tau_N) and in diffusers' (descending, tau - 1)
  lstar.png, expansion_before.png, expansion_after.png, history.png
  checkpoint/checkpoint.msgpack   the optimiser state, every --checkpoint-every steps;
                           rerun the same command with --resume to continue an interrupted run

A result whose schedule is degenerate (more than 25% of the steps with a logSNR within 5% of
the range of an end value: steps that barely change the noise level; docs/guides/
schedule-design.md) is still written, with a warning on stderr and in schedule.json's
"warnings". Weakest-link alone on the spline or network family is such a case: it drives the
logSNR to its terminal value within the first steps."""

EPILOG = """\
examples:
  # raise the weakest link with the one-parameter cosine offset (a usable schedule)
  pifs-jax optimize --criterion weakest-link --family cosine-offset --out out/wl

  # balanced dimension growth, network family, fixed alpha_bar_T, float64
  pifs-jax optimize --criterion balanced-growth --family network --alpha-bar-T 1e-8 --x64 --out out/bg

  # a 10-step grid for Stable Diffusion's schedule with balanced contraction work
  pifs-jax optimize --criterion workload --init scaled_linear --steps 10 --out out/sd10

  # continue an interrupted run to 2000 iterations (same options plus --resume)
  pifs-jax optimize --criterion weakest-link --family cosine-offset --iterations 2000 --resume --out out/wl

  # continue a run that diverged, with a smaller learning rate
  pifs-jax optimize --criterion weakest-link --family cosine-offset --lr 0.001 --resume --out out/wl

notes:
  t = 0 is clean data (alpha_bar_0 = 1); diffusers' timestep k is this package's k + 1, so the
  grid [0, 8, ..., 1000] is diffusers' [999, ..., 7]. --iterations is the total: a resumed run
  continues up to it.
  resume rule: an --out that holds a run (its checkpoint or result files) is refused unless
  --resume continues it or --overwrite starts it again; --resume without a checkpoint is an
  error. The checkpoint fingerprints the options that define the problem: a resume with another
  --criterion, --init, --T, --family, --knots, --temperature, ... is refused, naming them;
  --iterations, --lr, --checkpoint-every and --no-progress may change.
  divergence: a non-finite objective (or an invalid schedule) stops the run with an error
  naming the iteration and the last finite objective; no result files are written and the
  checkpoint holds the last finite iterate, so --resume with a smaller --lr continues from it."""

#: Options that do not identify the run (left out of the checkpoint's fingerprint): a resume may
#: change them. The learning rate is among them, so a diverged run can continue with a smaller one.
_NOT_FINGERPRINTED = (
    "argv",
    "resume",
    "overwrite",
    "no_progress",
    "out",
    "checkpoint_every",
    "iterations",
    "lr",
    "command",
)
#: The checkpoint inside --out.
CHECKPOINT_PATH = "checkpoint/checkpoint.msgpack"
#: The per-iteration history (one array per metric), beside schedule.json.
HISTORY_FILE = "history.npz"
#: Every result file a run may write into --out.
RESULT_FILES = (
    "schedule.json",
    "timesteps.json",
    "scheduler_config.json",
    HISTORY_FILE,
    "lstar.png",
    "expansion_before.png",
    "expansion_after.png",
    "history.png",
)


def _options(names: tuple[str, ...]) -> tuple[str, ...]:
    """Library names as options spell them: ``"weakest_link"`` -> ``"weakest-link"``."""
    return tuple(name.replace("_", "-") for name in names)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from pifs_jax.criteria import WORK_KINDS
    from pifs_jax.optimize import CRITERIA, DEFAULT_VARIANCES, FAMILIES, GROWTH_MEASURES
    from pifs_jax.schedules import SCHEDULE_NAMES

    what = parser.add_argument_group("what to optimise")
    what.add_argument("--criterion", required=True, choices=_options(CRITERIA), help="design criterion (required)")
    what.add_argument(
        "--init",
        choices=SCHEDULE_NAMES,
        default=None,
        metavar="NAME",
        help=f"starting schedule: {', '.join(SCHEDULE_NAMES)} (default: cosine); for workload, "
        "the schedule whose grid is optimised; the cosine-offset family always starts from "
        "cosine and refuses another",
    )
    what.add_argument("--T", type=positive_int, default=1000, metavar="T", help="training steps (default: 1000)")
    what.add_argument(
        "--steps",
        type=positive_int,
        default=None,
        metavar="N",
        help="workload: number of sampling steps (default: 10); other criteria: evaluate them "
        "on the uniform N-step grid (default: every training step)",
    )

    family = parser.add_argument_group("schedule family and constraints (weakest-link, balanced-growth)")
    family.add_argument(
        "--family", choices=_options(FAMILIES), default="spline", help="learnable family (default: spline)"
    )
    family.add_argument("--knots", type=positive_int, default=16, metavar="K", help="spline knots (default: 16)")
    family.add_argument("--hidden", type=positive_int, default=16, metavar="H", help="network width (default: 16)")
    family.add_argument(
        "--alpha-bar-T",
        type=finite_float,
        default=None,
        metavar="X",
        help="keep alpha_bar_T = X exactly (spline, network; default: --init's value)",
    )
    family.add_argument(
        "--logsnr-max",
        type=finite_float,
        default=None,
        metavar="X",
        help="fixed logSNR at t = 0 (spline, network; default: --init's, extrapolated)",
    )

    crit = parser.add_argument_group("criterion settings")
    crit.add_argument(
        "--temperature",
        type=finite_float,
        default=0.05,
        metavar="TAU",
        help="weakest-link soft-min temperature in nats of L* (default: 0.05)",
    )
    default_variances = " ".join(str(v) for v in DEFAULT_VARIANCES)
    crit.add_argument(
        "--variances",
        type=finite_float,
        nargs="+",
        default=list(DEFAULT_VARIANCES),
        metavar="LAMBDA",
        help=f"balanced-growth: patch variances (default: {default_variances})",
    )
    crit.add_argument(
        "--sizes",
        type=finite_float,
        nargs="+",
        default=None,
        metavar="N_K",
        help="balanced-growth: coordinates per patch (default: 192 each, 8x8x3 patches)",
    )
    crit.add_argument(
        "--measure",
        choices=GROWTH_MEASURES,
        default="growth",
        help="balanced-growth: balance Delta d_t or IG_t (default: growth)",
    )
    crit.add_argument(
        "--work",
        choices=WORK_KINDS,
        default="inverse_threshold",
        help="workload: per-training-step work, 1/L*_u or |b_u| (default: inverse_threshold)",
    )

    run = parser.add_argument_group("optimiser and output")
    run.add_argument(
        "--iterations",
        type=positive_int,
        default=None,
        metavar="K",
        help="total optimiser steps (default: 500; workload 300)",
    )
    run.add_argument(
        "--lr", type=finite_float, default=None, metavar="LR", help="Adam learning rate (default: 0.01; workload 0.1)"
    )
    run.add_argument(
        "--checkpoint-every",
        type=positive_int,
        default=100,
        metavar="K",
        help="write the optimiser state every K steps (default: 100)",
    )
    run.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its checkpoint (an error when there is none)",
    )
    run.add_argument(
        "--overwrite",
        action="store_true",
        help="start again in an --out that holds a run (deletes its checkpoint and results)",
    )
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--x64", action="store_true", help="compute in float64 (default: float32)")
    run.add_argument(
        "--out",
        required=True,
        type=output_dir,
        metavar="DIR",
        help="output folder (created if missing; checked before any work)",
    )


def _schedule_arrays(sched) -> dict[str, Any]:
    log_ab = np.asarray(sched.log_alpha_bar, dtype=np.float64)
    return {
        "t": np.arange(sched.T + 1),
        "log_alpha_bar": log_ab,
        "alpha_bar": np.exp(log_ab),
        "betas": np.asarray(sched.betas, dtype=np.float64),
        "log_snr": np.asarray(sched.log_snr, dtype=np.float64),
    }


def _history_figure(history: dict[str, np.ndarray], key: str, label: str):
    from pifs_jax import plotting

    fig, ax = plotting.new_figure(figsize=(6.4, 3.6))
    steps = np.arange(len(history["loss"]))
    ax.plot(steps, history["loss"], lw=1.3, label="loss")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    if key in history and key != "loss":
        twin = ax.twinx()
        twin.plot(steps, history[key], lw=1.1, color="C1", label=label)
        twin.set_ylabel(label)
        twin.legend(frameon=False, fontsize="small", loc="upper right")
    ax.legend(frameon=False, fontsize="small", loc="upper left")
    ax.grid(True, alpha=0.3)
    ax.set_title("optimisation history", fontsize="small")
    return fig


def _history_file(history: dict[str, np.ndarray]) -> bytes:
    """``history.npz`` as bytes: one array per metric, index = iteration (the iterate after that many updates)."""
    buffer = io.BytesIO()
    arrays: dict[str, Any] = {key: np.asarray(values) for key, values in history.items()}
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def _history_summary(history: dict[str, np.ndarray]) -> dict[str, Any]:
    """What ``schedule.json`` says about the history (its size does not grow with the iterations)."""
    length = len(next(iter(history.values()))) if history else 0
    return {
        "file": HISTORY_FILE,
        "iterations": length,
        "metrics": sorted(history),
        "first": {k: v[0] for k, v in history.items()} if length else {},
        "last": {k: v[-1] for k, v in history.items()} if length else {},
    }


def _in_option_names(difference: str) -> str:
    """``"alpha_bar_T = 1e-05 in the checkpoint, ..."`` -> ``"--alpha-bar-T = 1e-05 in the checkpoint, ..."``."""
    field, rest = difference.split(" = ", 1)
    return f"--{field.replace('_', '-')} = {rest}"


def _check_resume(out: Path, run_config: dict[str, Any]) -> None:
    """``--resume``: the checkpoint's options against these, named as options, before any work.

    The library compares the same fingerprint when it loads the checkpoint; this reads only the
    header, first, so that the differences are named by the options the user typed.
    """
    from pifs_jax.checkpoint import config_differences, read_checkpoint_header
    from pifs_jax.errors import ArgumentError
    from pifs_jax.results import to_jsonable

    checkpoint = out / CHECKPOINT_PATH
    try:
        header = read_checkpoint_header(checkpoint)
    except ArgumentError as err:
        raise UsageError("--resume", f"{err.detail}; rerun with --overwrite to start again") from None
    saved = header.get("config", {}).get("run_config")
    if isinstance(saved, dict):
        wanted = json.loads(json.dumps(to_jsonable(run_config), sort_keys=True))
        differences = config_differences(saved, wanted)
        if differences:
            named = "; ".join(_in_option_names(text) for text in differences)
            raise UsageError(
                "--resume",
                f"{str(checkpoint)!r} was written by another run: {named}; resume with the same "
                "options, choose another --out, or start again with --overwrite",
            )


def _diverged_error(err, checkpoint: Path) -> UsageError:
    """The ``--lr`` error for :class:`pifs_jax.optimize.Diverged`, in the command's words."""
    detail = f"the optimisation diverged at iteration {err.iteration}"
    if err.last_finite is not None:
        iteration, loss = err.last_finite
        detail += f"; last finite objective {loss:.6g} at iteration {iteration}"
    detail += "; try a smaller --lr"
    if err.checkpoint is not None and err.last_finite is not None:
        detail += (
            f" ({str(checkpoint)!r} holds iteration {err.last_finite[0]}: rerun with --resume and a "
            "smaller --lr to continue from it)"
        )
    return UsageError("--lr", detail + "; no result files were written")


def _start_label(family_name: str, init: str, args: argparse.Namespace, fit_error: float) -> str:
    """What the family's starting schedule is: the ``--init`` schedule, or a fit of it."""
    if family_name == "spline":
        return f"{init} ({args.knots}-knot spline fit, max |logSNR error| = {fit_error:.3g})"
    if family_name == "network":
        return f"{init} (monotone network fit, max |logSNR error| = {fit_error:.3g})"
    if family_name == "cosine_offset":
        return "cosine (s = 0.008)"
    return init


class Settings(NamedTuple):
    """The options of one run, defaults filled in and combinations checked."""

    criterion: str
    """The library's spelling (``"weakest_link"``, ``"balanced_growth"``, ``"workload"``)."""
    family: str
    """The library's spelling (``"cosine_offset"``); not used by ``workload``."""
    init: str
    num_steps: int | None
    """Sampling steps of workload's grid (default 10), else of the evaluation grid (``None`` for every step)."""
    sizes: list[float]
    iterations: int
    lr: float
    run_config: dict[str, Any]
    """The options that identify the run (the checkpoint's fingerprint)."""

    @property
    def workload(self) -> bool:
        return self.criterion == "workload"


class Curve(NamedTuple):
    """A schedule and grid to draw, with its label."""

    sched: Any
    grid: Any
    label: str


class Outcome(NamedTuple):
    """What one optimisation produced, ready to be written and printed."""

    results: dict[str, Any]
    """``schedule.json``'s results."""
    history: dict[str, np.ndarray]
    metric: str
    """The history metric drawn beside the loss, and its label."""
    metric_label: str
    before: Curve
    after: Curve
    report: list[str]
    warnings: list[str]
    extra: dict[str, Any]
    """Further JSON result files, name -> results (workload's ``timesteps.json``)."""


def _settings(args: argparse.Namespace) -> Settings:
    """Check what only the option combinations can get wrong (the library checks the values)."""
    from pifs_jax import optimize

    criterion = optimize.criterion_name(args.criterion)
    workload = criterion == "workload"
    sizes = args.sizes if args.sizes is not None else [192.0] * len(args.variances)
    if len(sizes) != len(args.variances):
        raise UsageError("--sizes", f"expected {len(args.variances)} values (one per --variances), got {len(sizes)}")
    if any(v < 0 for v in args.variances):
        raise UsageError("--variances", f"variances must be >= 0, got {args.variances}")
    if any(n <= 0 for n in sizes):
        raise UsageError("--sizes", f"sizes must be > 0, got {sizes}")
    if workload and args.family != "spline":
        raise UsageError("--family", "workload keeps the --init schedule and optimises the grid; no family is used")
    if workload and args.alpha_bar_T is not None:
        raise UsageError("--alpha-bar-T", "workload keeps the --init schedule; no constraint applies")
    family = args.family.replace("-", "_")
    if not workload and family == "cosine_offset" and args.init not in (None, "cosine"):
        raise UsageError(
            "--init",
            f"the cosine-offset family is cosine(T, s) from s = 0.008 and ignores --init (got "
            f"{args.init!r}); --init starts the spline, network and logsnr-shift families",
        )
    init = args.init or "cosine"
    run_config = {k: v for k, v in vars(args).items() if k not in _NOT_FINGERPRINTED}
    return Settings(
        criterion=criterion,
        family=family,
        init=init,
        num_steps=(args.steps or 10) if workload else args.steps,
        sizes=sizes,
        iterations=args.iterations if args.iterations is not None else (300 if workload else 500),
        lr=args.lr if args.lr is not None else (0.1 if workload else 1e-2),
        run_config={**run_config, "init": init},
    )


def _optimize_grid(settings: Settings, args: argparse.Namespace, start: Any, resume: bool) -> Outcome:
    """Workload: the ``--steps`` grid of the ``--init`` schedule with balanced contraction work."""
    from pifs_jax import optimize
    from pifs_jax.grids import uniform_grid

    num_steps = settings.num_steps or 10
    result = optimize.optimize_grid(
        start,
        num_steps,
        kind=args.work,
        iterations=settings.iterations,
        learning_rate=settings.lr,
        checkpoint_dir=Path(args.out) / "checkpoint",
        checkpoint_every=args.checkpoint_every,
        resume=resume,
        progress=not args.no_progress,
        run_config=settings.run_config,
    )
    uniform = uniform_grid(args.T, num_steps)
    timesteps = {
        "grid": result.grid,
        "diffusers_timesteps": result.diffusers_timesteps,
        "times": result.times,
        "work": result.work,
        "cv": result.cv,
        "relaxed_cv": result.relaxed_cv,
        "uniform_grid": uniform,
        "uniform_cv": result.initial_cv,
        "indexing": "grid: this package's (tau_0 = 0 is clean data); diffusers_timesteps: diffusers' "
        "descending list, timestep k = our k + 1",
    }
    summary = {
        "criterion": settings.criterion,
        "num_steps": num_steps,
        "cv_uniform": result.initial_cv,
        "cv_relaxed": result.relaxed_cv,
        "cv": result.cv,
        "learning_rate": settings.lr,
    }
    return Outcome(
        results={
            "summary": summary,
            "warnings": [],
            "history": _history_summary(result.history),
            "schedule": _schedule_arrays(start),
        },
        history=result.history,
        metric="workload",
        metric_label="CV(W)",
        before=Curve(start, uniform, "uniform grid"),
        after=Curve(start, result.grid, "optimised grid"),
        report=[
            f"workload ({args.work}) on {settings.init}, {num_steps} steps: CV(W) {result.initial_cv:.4g} (uniform) "
            f"-> {result.cv:.4g} (optimised; relaxed {result.relaxed_cv:.3g})",
            f"grid (this package): {result.grid.tolist()}",
            f"diffusers timesteps: {result.diffusers_timesteps.tolist()}",
        ],
        warnings=[],
        extra={"timesteps.json": timesteps},
    )


def _optimize_schedule(settings: Settings, args: argparse.Namespace, start: Any, resume: bool) -> Outcome:
    """Weakest-link or balanced-growth: the learnable family's parameters, started from ``--init``."""
    import jax

    from pifs_jax import optimize
    from pifs_jax.grids import uniform_grid

    family, params = optimize.schedule_family(
        settings.family,
        args.T,
        start=start,
        alpha_bar_T=args.alpha_bar_T,
        logsnr_max=args.logsnr_max,
        n_knots=args.knots,
        hidden=args.hidden,
    )
    grid = None if settings.num_steps is None else uniform_grid(args.T, settings.num_steps)
    objective = optimize.schedule_objective(
        {settings.criterion: 1.0},
        grid=grid,
        variances=args.variances,
        sizes=settings.sizes,
        temperature=args.temperature,
        growth_measure=args.measure,
    )
    result = optimize.optimize_schedule(
        family,
        params,
        objective,
        iterations=settings.iterations,
        learning_rate=settings.lr,
        checkpoint_dir=Path(args.out) / "checkpoint",
        checkpoint_every=args.checkpoint_every,
        resume=resume,
        progress=not args.no_progress,
        run_config=settings.run_config,
    )
    start_label = _start_label(settings.family, settings.init, args, optimize.fit_error(result.initial_schedule, start))
    key = "weakest_link" if settings.criterion == "weakest_link" else "balanced_growth"
    measure = "Delta d" if args.measure == "growth" else "IG"
    label = "soft-min L*" if settings.criterion == "weakest_link" else f"CV({measure})"
    warnings = optimize.schedule_warnings(result.schedule)
    summary = {
        "criterion": settings.criterion,
        "before": result.initial,
        "after": result.final,
        "start_schedule": "cosine" if settings.family == "cosine_offset" else settings.init,
        "start_label": start_label,
        "family": settings.family,
        "resumed_from": result.resumed_from,
        "learning_rate": settings.lr,
    }
    report = [f"resumed from step {result.resumed_from}"] if result.resumed_from else []
    report.append(
        f"{settings.criterion.replace('_', '-')} ({settings.family} family from {start_label}, T = {args.T}): "
        f"{label} {result.initial[key]:.6g} -> {result.final[key]:.6g}; loss "
        f"{result.initial['loss']:.6g} -> {result.final['loss']:.6g}"
    )
    if "min_lstar" in result.final:
        report.append(f"min L*: {result.initial['min_lstar']:.6g} -> {result.final['min_lstar']:.6g}")
    return Outcome(
        results={
            "summary": summary,
            "warnings": warnings,
            "schedule": _schedule_arrays(result.schedule),
            "initial_schedule": _schedule_arrays(result.initial_schedule),
            "params": jax.device_get(result.params),
            "history": _history_summary(result.history),
        },
        history=result.history,
        metric=key,
        metric_label=label,
        before=Curve(result.initial_schedule, grid, start_label),
        after=Curve(result.schedule, grid, "optimised"),
        report=report,
        warnings=warnings,
        extra={},
    )


def _write_results(stage: Path, outcome: Outcome, config: dict[str, Any]) -> None:
    """Every result file of ``outcome`` into ``stage`` (moved into --out together)."""
    from pifs_jax import plotting
    from pifs_jax.interop import save_diffusers_config
    from pifs_jax.results import atomic_write_bytes, write_result_json

    before, after = outcome.before, outcome.after
    for name, results in outcome.extra.items():
        write_result_json(stage / name, results, config=config)
    write_result_json(stage / "schedule.json", outcome.results, config=config)
    atomic_write_bytes(stage / HISTORY_FILE, _history_file(outcome.history))
    save_diffusers_config(after.sched, stage / "scheduler_config.json")
    figures = {
        "lstar.png": plotting.plot_contraction_threshold(
            {before.label: (before.sched, before.grid), after.label: (after.sched, after.grid)},
            title="$L^*_t$ before and after",
        ),
        "expansion_before.png": plotting.plot_expansion_heatmap(
            before.sched, before.grid, num_lambdas=61, title=f"$f_t(\\lambda)$: {before.label}"
        ),
        "expansion_after.png": plotting.plot_expansion_heatmap(
            after.sched, after.grid, num_lambdas=61, title=f"$f_t(\\lambda)$: {after.label}"
        ),
        "history.png": _history_figure(outcome.history, outcome.metric, outcome.metric_label),
    }
    for name, fig in figures.items():
        plotting.save_figure(fig, stage / name)


def run(args: argparse.Namespace) -> int:
    import jax

    from pifs_jax import optimize
    from pifs_jax.run_folder import RunFolder, policy_for
    from pifs_jax.schedules import named_schedule

    settings = _settings(args)
    policy = policy_for(resume=args.resume, overwrite=args.overwrite)
    precision = jax.enable_x64(True) if args.x64 else contextlib.nullcontext()
    with precision:
        start = named_schedule(settings.init, args.T)
        config = {
            "command": command_line(args.argv),
            "argv": args.argv,
            **settings.run_config,
            "iterations": settings.iterations,
            "lr": settings.lr,
            "dtype": str(start.dtype),
        }
        folder = RunFolder(
            args.out,
            policy,
            results=RESULT_FILES,
            progress=(CHECKPOINT_PATH,),
            checkpoint=CHECKPOINT_PATH,
            command=config["command"],
        )
        with folder:
            if policy == "resume":
                _check_resume(Path(args.out), settings.run_config)
            optimise = _optimize_grid if settings.workload else _optimize_schedule
            try:
                outcome = optimise(settings, args, start, policy == "resume")
            except optimize.Diverged as err:
                raise _diverged_error(err, Path(args.out) / CHECKPOINT_PATH) from None
            with folder.staged() as stage:
                _write_results(stage, outcome, config)
    print("\n".join(outcome.report))
    for warning in outcome.warnings:
        print(f"{PROG} optimize: warning: {warning}", file=sys.stderr)
    print("\nwrote " + ", ".join(str(p) for p in folder.written))
    return 0


SUBCOMMAND = Subcommand(
    name="optimize",
    help="design a schedule (weakest-link, balanced-growth) or a sampling grid (workload) by gradient descent",
    description=DESCRIPTION,
    epilog=EPILOG,
    add_arguments=add_arguments,
    run=run,
)

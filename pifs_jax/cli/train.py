"""``pifs-jax train``: train a UNet or a patch transformer (DiT) eps-predictor on real images.

The work is :func:`pifs_jax.models.training.train`; this module declares the options and prints
the summary. Nothing heavy is imported at module level, so importing :mod:`pifs_jax.cli` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pifs_jax.cli.common import (
    PROG,
    Subcommand,
    UsageError,
    finite_float,
    non_negative_int,
    output_dir,
    positive_int,
)

DESCRIPTION = """\
Train a noise predictor epshat(x_t, t) by denoising score matching (docs/theory.md section 7:
the eps-loss is the PIFS collage error up to the weighting), with AdamW and EMA weights.

  loss      E w_t ||epshat(x_t, t) - eps||^2 / n, x_t = sqrt(ab_t) x_0 + sigma_t eps
  weighting uniform (w = 1), snr (w = SNR_t), min_snr (w = min(SNR_t, gamma)/SNR_t),
            collage (w = b_t^2 on the --sample-steps grid: the loss equals the mean collage
            error E ||Phi_t(x_t) - x_s||^2 / n of the sampler's steps)
  --mu      adds mu E sum_k sum_{j != k} ||[J_x epshat]_kj||_F^2 / n over patch blocks,
            estimated with --probes block-masked Rademacher probes per sample (JVPs)

Data: real photographs shipped with scikit-image cut into 16x16 (photos16) or 32x32 (photos32)
RGB crops, train and test crops from disjoint regions, or scikit-learn's 8x8 digits. PIFS
patches: image side / 4 (16 patches) unless --patch-size. Every TrainConfig field can be set
with --set FIELD=VALUE (repeatable), e.g. --set warmup_steps=10 --set lr_decay=constant.
Writes to --out:
  config.json          the resolved configuration
  metrics.jsonl        one JSON line every --log-every steps (loss, mse, reg, grad_norm, images/s)
  checkpoint.msgpack   params, EMA params, optimiser state, step, PRNG key, config and sha256,
                       atomically every --checkpoint-every steps and at the end
  loss.png             the logged loss and eps-MSE over the steps
  samples.npz          the raw samples (model and empirical denoiser), float32, not clipped
  samples.png          --num-samples EMA samples (first 64 shown), --sample-steps DDIM steps,
                       clipped to [-1, 1] for display only (the title gives the raw range)
  samples_empirical.png  the empirical-optimal denoiser's samples from the same x_T
  quality.json         nearest-training-crop distance (memorisation) and Frechet patch
                       distances (aligned patches, and patches straddling their borders) to
                       the test crops, for the model, the empirical denoiser (pure
                       memorisation), the training crops and noise; the samples' value
                       range and the fraction of values outside the data range (the scores
                       see the samples as drawn, not clipped)
  stale/step-S/        with --resume, before training continues: the samples and scores of
                       step S that the folder held (they describe the model before it)"""

EPILOG = """\
examples:
  # the quick configuration: a useful 16x16 DiT on a laptop CPU in under 10 minutes
  pifs-jax train --model dit --data photos16 --steps 4000 --out out/dit16

  # the full configuration (32x32 crops, 16 patches of 192) for a GPU, Min-SNR weighting
  pifs-jax train --preset full --model dit --weighting min_snr --out out/dit32

  # the collage weighting with the PIFS regulariser on cross-patch Jacobian blocks
  pifs-jax train --model dit --weighting collage --mu 0.01 --out out/dit16_pifs

  # a named recipe, exactly (what the shipped models were trained with; --out defaults to out/NAME)
  pifs-jax train --recipe dit-digits

  # any TrainConfig field: a tiny run on 8x8 digits
  pifs-jax train --data digits --set steps=20 --set num_train=64 --set num_samples=16 --out out/tiny

  # continue a killed run exactly (same options plus --resume)
  pifs-jax train --model dit --data photos16 --steps 4000 --out out/dit16 --resume

  # extend the finished run to 6000 steps
  pifs-jax train --model dit --data photos16 --steps 6000 --out out/dit16 --resume

  # start afresh over the run in out/dit16 (its files are deleted)
  pifs-jax train --model dit --data photos16 --out out/dit16 --overwrite

  # data parallel: each batch of 64 split over 4 devices (4 host devices on a CPU)
  XLA_FLAGS=--xla_force_host_platform_device_count=4 pifs-jax train --devices 4 --out out/dit16_dp

  # two processes (here on one machine; on a cluster: process 0's host), every device of both
  pifs-jax train --coordinator localhost:12355 --num-processes 2 --process-id 0 --out out/mp &
  pifs-jax train --coordinator localhost:12355 --num-processes 2 --process-id 1 --out out/mp

notes:
  A run is a pure function of its options: batches, timesteps, noise and probes of step k
  come from (seed, k), so --resume continues bit for bit. A checkpoint written with other
  options is refused (the differing options are named); --checkpoint-every, --log-every and
  --num-samples may change. --out is checked before any work: an existing file or a folder
  that cannot be written is refused. Without --resume an existing run in --out is an error;
  --overwrite deletes the run's files and starts afresh. --resume with no checkpoint in --out
  is an error too (nothing to resume: drop --resume). A folder in use by another command is
  refused (docs/guides/command-line.md, "Output folders").
  Extending: --resume with a larger --steps continues a finished run to the new length. It is
  bit-exact only for the steps already run: the learning-rate schedule (warm-up, cosine decay
  to 0 at --steps) is recomputed for the new length, so the learning rate rises again after
  the old end and the result differs from a run started with the larger --steps. A smaller
  --steps is refused.
  Data parallel (--devices N): the trajectory equals the single-device one up to the
  summation order of the batch reductions (float32 rounding); the checkpoint is the same file,
  and a run may be resumed on another number of devices. With --coordinator every process
  runs the same command (same --out, on a shared file system) and only process 0 writes.
  The processes check in with process 0 first: one that has not joined within --init-timeout
  seconds (default 60) stops every waiting process with an error naming it; two processes
  with the same --process-id are refused (the second one to arrive; one that arrives after
  the run has started finds no process 0 and says so).
  --recipe NAME trains the recipe of pifs_jax.models.training.recipes exactly: options that
  would change it (model, data, optimisation, --preset, --set of such a field) are refused,
  so its fingerprint is the recipe's and 'export_pretrained(run_dir, NAME)' accepts the run.
  --preset replaces --config (in 'pifs-jax geometry' --config is a file); --config still
  works, with a note on stderr."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # names defined once in the library (Flax and Optax are loaded by pifs_jax already: light)
    from pifs_jax.data import DATASETS
    from pifs_jax.models import MODEL_NAMES
    from pifs_jax.models.training import PRESETS, WEIGHTINGS
    from pifs_jax.models.training.recipes import RECIPES
    from pifs_jax.schedules import SCHEDULE_NAMES
    from pifs_jax.sharding import DEFAULT_INIT_TIMEOUT

    what = parser.add_argument_group("model and data")
    what.add_argument(
        "--recipe",
        choices=tuple(RECIPES),
        default=None,
        help="train exactly this named recipe (pifs_jax.models.training.recipes: data, architecture, "
        "optimiser, steps, seed); the model, data and optimisation options are then refused, the run "
        "options (--checkpoint-every, --log-every, --num-samples, --devices) allowed (default: none)",
    )
    what.add_argument(
        "--model",
        choices=MODEL_NAMES,
        default=None,
        help="unet (DDPM-style, attention at the middle) or dit (tokens = PIFS patches) (default: dit)",
    )
    what.add_argument(
        "--preset",
        choices=tuple(PRESETS),
        default=None,
        help="quick (16x16, small model, CPU minutes) or full (32x32, 8x8 patches, GPU) (default: quick)",
    )
    what.add_argument(
        "--config", dest="deprecated_config", choices=tuple(PRESETS), default=None, help="deprecated alias of --preset"
    )
    what.add_argument(
        "--data",
        choices=tuple(DATASETS),
        default=None,
        help="data set (default: photos16 for quick, photos32 for full)",
    )
    what.add_argument(
        "--num-train", type=positive_int, default=None, metavar="N", help="training crops (default: preset)"
    )
    what.add_argument(
        "--patch-size",
        type=positive_int,
        default=None,
        metavar="P",
        help="PIFS patch side (DiT token size, regulariser blocks, quality features) (default: side / 4)",
    )

    opt = parser.add_argument_group("optimisation")
    opt.add_argument(
        "--steps",
        type=positive_int,
        default=None,
        metavar="N",
        help="training steps in all; with --resume a larger N extends the run (default: preset)",
    )
    opt.add_argument(
        "--batch-size", type=positive_int, default=None, metavar="B", help="images per step (default: preset)"
    )
    opt.add_argument(
        "--lr", type=finite_float, default=None, metavar="LR", help="peak AdamW learning rate (default: preset)"
    )
    opt.add_argument("--weighting", choices=WEIGHTINGS, default=None, help="loss weighting (default: uniform)")
    opt.add_argument(
        "--min-snr-gamma", type=finite_float, default=None, metavar="G", help="Min-SNR clip gamma (default: 5)"
    )
    opt.add_argument(
        "--mu",
        type=finite_float,
        default=None,
        metavar="MU",
        help="weight of the PIFS cross-block regulariser (default: 0 = off)",
    )
    opt.add_argument(
        "--probes",
        type=positive_int,
        default=None,
        metavar="P",
        help="patches probed per sample and step by the regulariser (default: 1)",
    )
    opt.add_argument("--ema-decay", type=finite_float, default=None, metavar="D", help="EMA decay (default: preset)")
    opt.add_argument(
        "--schedule",
        choices=SCHEDULE_NAMES,
        default=None,
        metavar="NAME",
        help=f"noise schedule: {', '.join(SCHEDULE_NAMES)} (default: linear, DDPM's)",
    )
    opt.add_argument(
        "--T", type=positive_int, default=None, metavar="T", help="training steps of the schedule (default: 1000)"
    )
    opt.add_argument("--seed", type=non_negative_int, default=None, metavar="S", help="random seed (default: 0)")
    opt.add_argument(
        "--set",
        dest="assignments",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="any TrainConfig field, parsed with the field's type (repeatable; e.g. "
        "warmup_steps=10, lr_decay=constant, patch_size=none); a field also given by its "
        "own option is an error",
    )

    run = parser.add_argument_group("run")
    run.add_argument(
        "--out",
        type=output_dir,
        default=None,
        metavar="DIR",
        help="output folder (created if missing; checked before any work); required unless --recipe "
        "(default with --recipe NAME: out/NAME)",
    )
    again = run.add_mutually_exclusive_group()
    again.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its checkpoint (a larger --steps extends it)",
    )
    again.add_argument(
        "--overwrite",
        action="store_true",
        help="start afresh over the run in --out (deletes its checkpoint, log, samples and scores)",
    )
    run.add_argument(
        "--checkpoint-every",
        type=positive_int,
        default=None,
        metavar="K",
        help="steps between checkpoints (default: preset)",
    )
    run.add_argument(
        "--log-every", type=positive_int, default=None, metavar="K", help="steps between log lines (default: 10)"
    )
    run.add_argument(
        "--sample-steps",
        type=positive_int,
        default=None,
        metavar="N",
        help="DDIM steps of the final samples and of the collage weighting's grid (default: 50)",
    )
    run.add_argument(
        "--num-samples",
        type=non_negative_int,
        default=None,
        metavar="N",
        help="samples drawn and scored at the end; 0 = none (default: preset)",
    )
    run.add_argument("--no-progress", action="store_true", help="no progress bar")

    par = parser.add_argument_group("parallel")
    par.add_argument(
        "--devices",
        type=positive_int,
        default=None,
        metavar="N",
        help="split each batch over N devices (a 'data' mesh axis; parameters and optimiser state "
        "replicated); --batch-size must be a multiple of N. More CPU devices: "
        "XLA_FLAGS=--xla_force_host_platform_device_count=N (default: 1; with --coordinator: "
        "every device of every process)",
    )
    par.add_argument(
        "--coordinator",
        default=None,
        metavar="HOST:PORT",
        help="multi-process run: address of process 0 (jax.distributed.initialize); needs "
        "--num-processes and --process-id; only process 0 writes to --out",
    )
    par.add_argument(
        "--num-processes", type=positive_int, default=None, metavar="P", help="processes in the multi-process run"
    )
    par.add_argument(
        "--process-id", type=non_negative_int, default=None, metavar="I", help="this process's index, 0 .. P-1"
    )
    par.add_argument(
        "--init-timeout",
        type=positive_int,
        default=None,
        metavar="S",
        help="multi-process run: seconds every process waits for the others to join before it stops with "
        f"an error naming the missing ones (default: {DEFAULT_INIT_TIMEOUT:g})",
    )


#: TrainConfig fields (the arguments of :func:`pifs_jax.models.training.train_config`) -> options.
_OPTIONS = {
    "model": "--model",
    "data": "--data",
    "num_train": "--num-train",
    "patch_size": "--patch-size",
    "steps": "--steps",
    "batch_size": "--batch-size",
    "lr": "--lr",
    "weighting": "--weighting",
    "min_snr_gamma": "--min-snr-gamma",
    "mu": "--mu",
    "probes": "--probes",
    "ema_decay": "--ema-decay",
    "seed": "--seed",
    "schedule": "--schedule",
    "T": "--T",
    "checkpoint_every": "--checkpoint-every",
    "log_every": "--log-every",
    "sample_steps": "--sample-steps",
    "num_samples": "--num-samples",
    "devices": "--devices",
}


def parse_assignments(assignments: list[str], given: dict[str, Any]) -> dict[str, tuple[Any, str]]:
    """``--set FIELD=VALUE`` items -> ``{field: (value, item)}``, each VALUE parsed with its field's type.

    Args:
      assignments: the ``--set`` items, in order (a later item for the same field wins).
      given: the fields set by their own options (``{field: value}``, ``None`` = not given).

    Raises:
      UsageError: (``--set``) an item without ``=``, an unknown field, a value not of the
        field's type (:func:`pifs_jax.models.training.parse_field_value`), or a field also
        given by its own option.
    """
    from pifs_jax.models.training import parse_field_value

    parsed: dict[str, tuple[Any, str]] = {}
    for item in assignments:
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise UsageError("--set", f"expected FIELD=VALUE, got {item!r}")
        try:
            value = parse_field_value(name, text.strip())
        except ValueError as exc:
            raise UsageError("--set", f"{item}: {getattr(exc, 'detail', exc)}") from None
        if given.get(name) is not None:
            raise UsageError("--set", f"{item}: {name} is also given by {_OPTIONS[name]}; give it once")
        parsed[name] = (value, item)
    return parsed


def _preset(args: argparse.Namespace) -> str:
    """--preset, or the deprecated --config (with a note on stderr), or ``quick``."""
    if args.deprecated_config is not None:
        print(
            f"{PROG} train: note: --config is deprecated, use --preset {args.deprecated_config} "
            "(in 'pifs-jax geometry' --config is a file)",
            file=sys.stderr,
        )
        if args.preset is not None and args.preset != args.deprecated_config:
            raise UsageError(
                "--preset",
                f"{args.preset!r} contradicts --config {args.deprecated_config!r} "
                "(its deprecated alias); give --preset only",
            )
    return args.preset or args.deprecated_config or "quick"


def _recipe_config(args: argparse.Namespace, assigned: dict[str, tuple[Any, str]]) -> Any:
    """--recipe NAME: the recipe's TrainConfig with the run-control options given (others refused).

    Raises:
      UsageError: naming an option that would change the recipe's identity (model, data,
        optimisation, --preset, a --set of such a field).
    """
    import dataclasses

    from pifs_jax.models.training import TrainConfig
    from pifs_jax.models.training.recipes import recipe

    control = set(TrainConfig.RUN_CONTROL)
    for option, value in (("--preset", args.preset), ("--config", args.deprecated_config)):
        if value is not None:
            raise UsageError(option, f"not with --recipe {args.recipe} (the recipe is the whole configuration)")
    for field, option in _OPTIONS.items():
        if field not in control and getattr(args, field) is not None:
            raise UsageError(
                option,
                f"not with --recipe {args.recipe}: it would change the recipe (only "
                f"{', '.join(_OPTIONS[f] for f in TrainConfig.RUN_CONTROL)} may be given)",
            )
    for name, (_, item) in assigned.items():
        if name not in control:
            raise UsageError("--set", f"{item}: not with --recipe {args.recipe} (only {', '.join(sorted(control))})")
    overrides = {field: getattr(args, field) for field in control if getattr(args, field) is not None}
    overrides.update({name: value for name, (value, _) in assigned.items()})
    return dataclasses.replace(recipe(args.recipe), **overrides)


def _out_folder(args: argparse.Namespace) -> Path:
    """--out, or out/RECIPE with --recipe (checked like --out); UsageError without either."""
    if args.out is not None:
        return args.out
    if args.recipe is None:
        raise UsageError("--out", "required (the output folder; optional only with --recipe)")
    try:
        return output_dir(f"out/{args.recipe}")
    except argparse.ArgumentTypeError as exc:
        raise UsageError("--out", f"the default out/{args.recipe}: {exc}") from None


def _start_processes(args: argparse.Namespace) -> None:
    """--coordinator/--num-processes/--process-id: join the multi-process run (before any JAX work)."""
    given = {"--coordinator": args.coordinator, "--num-processes": args.num_processes, "--process-id": args.process_id}
    if all(value is None for value in given.values()):
        if args.init_timeout is not None:
            raise UsageError("--init-timeout", "only for a multi-process run (with --coordinator)")
        return
    missing = [option for option, value in given.items() if value is None]
    if missing:
        raise UsageError(
            missing[0], f"a multi-process run needs {', '.join(given)} together; missing {', '.join(missing)}"
        )
    from pifs_jax.sharding import DEFAULT_INIT_TIMEOUT, initialize_processes

    # errors name the options; a process that does not join within --init-timeout is named
    initialize_processes(
        args.coordinator,
        args.num_processes,
        args.process_id,
        init_timeout=DEFAULT_INIT_TIMEOUT if args.init_timeout is None else args.init_timeout,
    )


def result_lines(config: Any, result: Any, *, recipe: str | None, process_index: int) -> list[str]:
    """The lines ``pifs-jax train`` prints when the run is done, in process ``process_index``.

    Process 0 (the only one of a single-process run) writes the run folder: ``trained MODEL (SIZE,
    or recipe NAME) on DATA for K steps in S s -> OUT``, then, when samples were scored, their
    Frechet distances, range, nearest-training-crop distances and the usefulness test. Another
    process of a multi-process run writes nothing, and says so in one line: ``process I: trained
    ... in S s; process 0 writes the run to OUT``.

    Args:
      config: the run's :class:`~pifs_jax.models.training.TrainConfig`.
      result: the :class:`~pifs_jax.models.training.TrainResult` of this process.
      recipe: ``--recipe``'s name, or ``None``.
      process_index: ``jax.process_index()``.
    """
    what = f"recipe {recipe}" if recipe is not None else str(config.size)
    done = (
        f"trained {config.model} ({what}) on {config.data} for {int(result.state.step)} steps in {result.seconds:.1f} s"
    )
    if process_index != 0:
        return [f"process {process_index}: {done}; process 0 writes the run to {result.out_dir}"]
    lines = [f"{done} -> {result.out_dir}"]
    if result.quality is not None:
        q = result.quality
        ref = q.get("empirical") or {}
        for key, kind in (("fd_patches", "aligned"), ("fd_patches_straddling", "straddling")):
            lines.append(
                f"  Frechet distance to test crops, {kind} patches: model {q['model'][key]:.4g}, "
                f"empirical denoiser {ref.get(key, float('nan')):.4g}, training crops "
                f"{q['train_crops'][key]:.4g}, noise {q['noise'][key]:.4g}"
            )
        lines.append(
            f"  sample values in [{q['sample_range'][0]:.3g}, {q['sample_range'][1]:.3g}], "
            f"{100 * q['fraction_outside_data_range']:.3g}% outside the data range "
            f"[{q['data_range'][0]:.3g}, {q['data_range'][1]:.3g}] (scored as drawn; clipped only in samples.png)"
        )
        lines.append(
            f"  nearest-training-crop RMS distance: model {q['model']['nn_distance_mean']:.4g}, "
            f"empirical denoiser {ref.get('nn_distance_mean', float('nan')):.4g}, test crops "
            f"{q['test_crops']['nn_distance_mean']:.4g} (memorisation ratio {q['memorisation_ratio']:.3g})"
        )
        useful = q["useful"]
        lines.append(
            f"  useful ({useful['criterion']}): {'yes' if useful['passes'] else 'no'} "
            f"(gap closed: aligned {useful['fd_gap_closed_aligned']:.4f}, straddling {useful['fd_gap_closed_straddling']:.4f})"
        )
    return lines


def _check_memory(config: Any) -> None:
    """Refuse (naming ``batch_size``) a run whose steps cannot fit (:func:`pifs_jax.memory.training_bytes`)."""
    import jax

    from pifs_jax.data import DATASETS
    from pifs_jax.memory import check_memory, forward_bytes, training_bytes
    from pifs_jax.models import as_eps_fn, count_params
    from pifs_jax.models.training import model_for_config

    config = config.resolved()
    shape = tuple(DATASETS[config.data])
    module, init = model_for_config(config, shape)
    params = jax.eval_shape(init, jax.random.PRNGKey(0))  # shapes only
    # an accelerator holds its share of the batch; CPU devices share the host's memory
    per_device = config.batch_size if jax.default_backend() == "cpu" else -(-config.batch_size // config.devices)
    needed = training_bytes(
        batch_size=per_device,
        forward=forward_bytes(as_eps_fn(module, params), shape),
        num_params=count_params(params),
        probes=config.probes if config.mu > 0 else 0,
    )
    what = f"a training step on {config.batch_size} {config.data} images ({config.model}, {config.size})"
    check_memory(needed, argument="batch_size", what=what)


def run(args: argparse.Namespace) -> int:
    from pifs_jax.models.training import train, train_config

    out = _out_folder(args)
    preset = None if args.recipe is not None else _preset(args)
    overrides = {field: getattr(args, field) for field in _OPTIONS}
    assigned = parse_assignments(args.assignments, overrides)
    if args.recipe is not None:
        _recipe_config(args, assigned)  # refuses identity options before any process starts
    _start_processes(args)
    if args.coordinator is not None and args.devices is None:
        import jax

        args.devices = jax.device_count()  # every device of every process
        overrides["devices"] = args.devices
    try:
        if args.recipe is not None:
            config = _recipe_config(args, assigned)
        else:
            config = train_config(
                preset or "quick", **{**overrides, **{name: value for name, (value, _) in assigned.items()}}
            )
        _check_memory(config)
    except ValueError as exc:
        name = getattr(exc, "argument", None)
        if name in assigned:
            raise UsageError("--set", f"{assigned[name][1]}: {getattr(exc, 'detail', exc)}") from None
        raise  # pifs_jax.cli.main names the option
    # the folder policy (--resume, --overwrite), its lock and staging are the library's (RunFolder)
    result = train(config, out, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress)
    import jax

    for line in result_lines(config, result, recipe=args.recipe, process_index=jax.process_index()):
        print(line)
    return 0


SUBCOMMAND = Subcommand(
    name="train",
    help="train a UNet or patch-transformer noise predictor on real images (checkpoints, --resume)",
    description=DESCRIPTION,
    epilog=EPILOG,
    add_arguments=add_arguments,
    run=run,
)

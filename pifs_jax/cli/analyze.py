"""``pifs-jax analyze``: the paper's trained-model claims, tested on a trained run, a shipped model or a diffusers UNet.

The work is :func:`pifs_jax.analysis.report.analyze_model` and
:func:`~pifs_jax.analysis.report.write_analysis`; this module declares the options, loads the
model and its data, and prints the verdicts.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pifs_jax.cli.common import PROG, Subcommand, UsageError, command_line, non_negative_int, output_dir, positive_int

DESCRIPTION = """\
Run S DDIM chains of a trained denoiser and measure, at every step, the block norms of the step
Jacobian over the PIFS patches (kappa_k = ||[J]_kk||, delta_k = sum_{j != k} ||[J]_kj||), the
(PC) margins, the suppression field S_{k,t} and the deviation ||Delta_t|| from the patch-Gaussian
baseline of the training data, and the attention entropy; then judge the paper's claims (two
regimes, crossover window, release order, suppression-corrected exponents) by the rules fixed in
docs/theory.md section 11. Writes to --out:
  analysis.json   per-step trajectory means with bootstrap 95 % intervals, per-patch values,
                  Spearman correlations, the crossover window, the ||Delta_t|| fit, the per-patch
                  exponents and the verdicts, with the config, seed and package versions
  *.png           block norms over t, entropy against coupling, the release map, the ||Delta_t||
                  fit, measured against predicted exponents
  analysis.md     the claims table (paper, ours with interval, verdict), written last
The verdicts describe the model's chains: they test the paper's claims only if the model samples
its data. Its recorded quality is read (a run's quality.json and samples.npz, a shipped model's
card; nothing is sampled): with more than 5 % of sample values outside [-1.05, 1.05], or none
recorded, every verdict is printed with the caveat "model does not sample its data (x % of
values outside the data range)" or "sample quality unknown" (analysis.json: "sample_quality")."""

EPILOG = """\
examples:
  # a model shipped with the package (its own training crops give the baseline)
  pifs-jax analyze --pretrained dit-digits --samples 8 --out out/digits_analysis

  # a run of 'pifs-jax train' (its own training crops give the Gaussian baseline)
  pifs-jax analyze --run out/dit16 --samples 16 --steps 50 --out out/dit16_analysis

  # a diffusers UNet2DModel folder; the baseline from the bundled 32x32 photographs
  pifs-jax analyze --diffusers ddpm-cifar10-32 --data photos32 --samples 8 --out out/cifar_analysis

  # a diffusers model of a shape no bundled data set has: your own images (N, H, W, C) in [-1, 1]
  pifs-jax analyze --diffusers my-unet --data-file images.npy --samples 4 --out out/my_analysis

notes:
  Exact blocks (jacfwd + SVD) up to n = 3072 coordinates, Golub-Kahan-Lanczos estimates above
  (--method forces either). A model without attention layers gets 'not tested' for the entropy
  claim. A diffusers folder holds no training data: the baseline then comes from a bundled data
  set of the same image shape (photos32 for 32x32 RGB models), an approximation of the model's
  own data (say CIFAR-10) that the report names; --data-file FILE.npy gives your own images
  instead (a model of a shape no bundled data set has needs them).
  Cost: stderr states it first (trajectories, steps, Jacobian columns per step), then the time
  of the first --chunk of trajectories extrapolated to the rest, beside a progress bar; on a
  2-core CPU one exact Jacobian of a CIFAR-10 UNet (n = 3072) takes about half an hour.
  Ctrl-C stops between chunks and writes nothing (an earlier analysis in --out is kept). On a
  CPU the results do not depend on --chunk, bit for bit."""


#: Images of a named data set (--data, or the bundled one of a --diffusers model) without --num-data.
DEFAULT_NUM_DATA = 4096


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the options of ``pifs-jax analyze`` (those ``pifs-jax analyze --help`` lists).

    Args:
      parser: the subcommand's parser, which :func:`pifs_jax.cli.build_parser` makes.
    """
    from pifs_jax.analysis.chain_analysis import ACCELERATOR_CHUNK, METHODS
    from pifs_jax.data import DATASETS
    from pifs_jax.samplers import SAMPLER_NAMES

    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", type=Path, default=None, metavar="DIR", help="a 'pifs-jax train' output folder")
    source.add_argument(
        "--pretrained",
        default=None,
        metavar="NAME",
        help="a model shipped with the package (pifs_jax.models.pretrained.list_pretrained())",
    )
    source.add_argument(
        "--diffusers",
        type=Path,
        default=None,
        metavar="PATH",
        help="a diffusers UNet2DModel folder (pipeline folder or bare model folder)",
    )
    baseline = parser.add_mutually_exclusive_group()
    baseline.add_argument(
        "--data",
        choices=tuple(DATASETS),
        default=None,
        help="images for the Gaussian baseline and the patch variances (default: the run's or the "
        "shipped model's own training data; for --diffusers the bundled data set of the model's image shape)",
    )
    baseline.add_argument(
        "--data-file",
        type=Path,
        default=None,
        metavar="FILE",
        help="your own baseline images instead of --data: a .npy array (N, H, W, C) or (N, C, H, W) of the "
        "model's image shape, values in [-1, 1] (for a --diffusers model no bundled data set fits)",
    )
    parser.add_argument(
        "--num-data",
        type=positive_int,
        default=None,
        metavar="N",
        help="images for the baseline: the first N of the run's or shipped model's own training images "
        "(default: all of them; also when --data names their data set) or of --data-file (default: all), or N "
        f"images of another --data or of the --diffusers data set (default: {DEFAULT_NUM_DATA}, or all the "
        "data set holds if fewer)",
    )
    parser.add_argument("--samples", type=positive_int, default=16, metavar="S", help="trajectories (default: 16)")
    parser.add_argument("--steps", type=positive_int, default=50, metavar="N", help="sampler steps (default: 50)")
    parser.add_argument(
        "--sampler",
        choices=SAMPLER_NAMES,
        default="ddim",
        help="the chain analysed (default: ddim, the map the theory is about; for the others the "
        "DDIM-only predictions are reported as not tested)",
    )
    parser.add_argument(
        "--patch-size",
        type=positive_int,
        default=None,
        metavar="P",
        help="PIFS patch side (default: the run's or shipped model's; image side / 4 for --diffusers)",
    )
    parser.add_argument("--method", choices=METHODS, default="auto", help="block-norm estimator (default: auto)")
    parser.add_argument(
        "--seed", type=non_negative_int, default=0, metavar="S", help="seed of x_T and the bootstrap (default: 0)"
    )
    parser.add_argument(
        "--out", required=True, type=output_dir, metavar="DIR", help="output folder (created if missing)"
    )
    parser.add_argument(
        "--chunk",
        type=positive_int,
        default=None,
        metavar="K",
        help="trajectories per compiled call; Ctrl-C stops between chunks (default: 1 on a CPU, where they "
        f"run one at a time anyway; {ACCELERATOR_CHUNK} on an accelerator)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar or time estimate (stderr)")


def _from_run(args: argparse.Namespace) -> dict[str, Any]:
    from pifs_jax.analysis.report import run_sample_quality
    from pifs_jax.models.training import load_run

    if not args.run.is_dir():
        raise UsageError("--run", f"{str(args.run)!r} is not a folder")
    try:
        run = load_run(args.run)
    except ValueError as exc:
        raise UsageError("--run", getattr(exc, "detail", str(exc))) from None
    config = run.config
    return {
        **_trained_model(args, config, run.module, run.state.ema_params),
        "title": f"{config.model} ({config.size}) trained on {config.data}, {config.steps} steps, mu = {config.mu}",
        "source": {"run": str(args.run), "train_config": config.to_dict()},
        "sample_quality": run_sample_quality(args.run, step=int(run.state.step)),
    }


def _trained_model(args: argparse.Namespace, config: Any, module: Any, params: Any) -> dict[str, Any]:
    """eps_fn, schedule, baseline images, patch size and attention of a model trained with ``config``."""
    from pifs_jax.analysis.report import attention_fn_if_any
    from pifs_jax.data import DATASETS
    from pifs_jax.models import as_eps_fn
    from pifs_jax.models.training import load_train_test
    from pifs_jax.schedules import named_schedule

    shape = tuple(DATASETS[config.data])
    if args.data_file is None and args.data in (None, config.data):
        images = _first(
            load_train_test(config)[0], args.num_data, f"the model was trained on {{n}} {config.data} images"
        )
    else:
        images = _baseline_images(args, args.data, shape, seed=config.data_seed)
    return {
        "eps_fn": as_eps_fn(module, params),
        "sched": named_schedule(config.schedule, config.T),
        "images": images,
        "patch_size": args.patch_size or config.patch_size,
        "attention_fn": attention_fn_if_any(module, params, tuple(images.shape[1:])),
    }


def _first(images: Any, num_data: int | None, holds: str) -> Any:
    """The first ``num_data`` images (all with ``None``); ``holds`` says how many there are (``{n}``)."""
    if num_data is None:
        return images
    if num_data > images.shape[0]:
        count = images.shape[0]
        raise UsageError("--num-data", f"{holds.format(n=count)}; expected at most {count}, got {num_data}")
    return images[:num_data]


def _fitting(shape: tuple[int, ...]) -> str:
    """The bundled data sets of image shape ``shape``, or a note that none is, and the way out."""
    from pifs_jax.data import DATASETS

    names = [name for name, s in DATASETS.items() if tuple(s) == shape]
    bundled = ", ".join(f"{name} {tuple(s)}" for name, s in DATASETS.items())
    if names:
        return f"name one of the model's shape ({', '.join(names)}) or give your own images with --data-file"
    return (
        f"no bundled data set has the model's image shape {shape} (bundled: {bundled}); give your own images with "
        f"--data-file images.npy, an array (N, {', '.join(map(str, shape))}) or (N, {shape[2]}, {shape[0]}, "
        f"{shape[1]}) with values in [-1, 1]"
    )


def _baseline_images(args: argparse.Namespace, data: str | None, shape: tuple[int, ...], *, seed: int = 0) -> Any:
    """The baseline images of --data-file, else of the data set ``data``, checked against the model's ``shape``."""
    import jax

    from pifs_jax.data import DATASETS, dataset_size, load_dataset
    from pifs_jax.image_file import load_image_file

    if args.data_file is not None:
        try:
            images = load_image_file(args.data_file, shape)
        except ValueError as exc:
            raise UsageError("--data-file", getattr(exc, "detail", str(exc))) from None
        return _first(images, args.num_data, f"{str(args.data_file)!r} holds {{n}} images")
    assert data is not None  # --data, or the bundled data set of the model's shape
    if tuple(DATASETS[data]) != shape:
        raise UsageError(
            "--data",
            f"the {data} data set does not fit the model: its images are {tuple(DATASETS[data])}, the "
            f"model's are {shape}; {_fitting(shape)}",
        )
    size = dataset_size(data)
    if args.num_data is not None and args.num_data > size:
        raise UsageError(
            "--num-data",
            f"the {data} data set holds {size} training images; expected at most {size}, got {args.num_data}",
        )
    return load_dataset(data, jax.random.PRNGKey(seed), args.num_data or min(DEFAULT_NUM_DATA, size))


def _from_pretrained(args: argparse.Namespace) -> dict[str, Any]:
    from pifs_jax.analysis.report import card_sample_quality
    from pifs_jax.models.pretrained import pretrained

    try:
        loaded = pretrained(args.pretrained)
    except ValueError as exc:
        raise UsageError("--pretrained", getattr(exc, "detail", str(exc))) from None
    config = loaded.config
    return {
        **_trained_model(args, config, loaded.module, loaded.params),
        "title": f"shipped model {loaded.name}: {config.model} trained on {config.data}, {config.steps} steps",
        "source": {
            "pretrained": loaded.name,
            "weights_file": str(loaded.weights_file),
            "weights_sha256": loaded.sha256,
            "fingerprint": loaded.fingerprint,
            "train_config": config.to_dict(),
        },
        "sample_quality": card_sample_quality(loaded.card),
    }


def _from_diffusers(args: argparse.Namespace) -> dict[str, Any]:
    from pifs_jax.analysis.report import attention_fn_if_any, sample_quality_record
    from pifs_jax.data import DATASETS
    from pifs_jax.models import load_diffusers_unet

    try:
        loaded = load_diffusers_unet(args.diffusers)
    except ValueError as exc:  # about the folder (its files), or a config key (kept in the message)
        path_error = getattr(exc, "argument", None) == "path"
        raise UsageError("--diffusers", getattr(exc, "detail", str(exc)) if path_error else str(exc)) from None
    if loaded.schedule is None:
        raise UsageError(
            "--diffusers",
            f"{str(args.diffusers)!r} has no scheduler config (scheduler/ or "
            "scheduler_config.json), so the schedule the model was trained with is unknown",
        )
    shape = tuple(loaded.image_shape)
    data = args.data or next((name for name, s in DATASETS.items() if tuple(s) == shape), None)
    if data is None and args.data_file is None:
        raise UsageError("--data", _fitting(shape))
    images = _baseline_images(args, data, shape)
    data = data if args.data_file is None else str(args.data_file)
    return {
        "eps_fn": loaded.eps_fn,
        "sched": loaded.schedule,
        "images": images,
        "patch_size": args.patch_size or shape[0] // 4,
        "attention_fn": attention_fn_if_any(loaded.module, loaded.params, shape),
        "title": f"diffusers UNet2DModel {args.diffusers.name} ({shape[0]}x{shape[1]}), baseline from {data}",
        "source": {"diffusers": str(args.diffusers), "weights_file": str(loaded.weights_file), "baseline_data": data},
        "sample_quality": sample_quality_record(None, source="a diffusers folder records no sample quality"),
    }


def _analyze_and_write(args: argparse.Namespace, model: dict[str, Any], folder: Any, chunk: int) -> Any:
    """Analyse the model's chains (``chunk`` trajectories per compiled call) and write the files into ``folder``."""
    from pifs_jax.analysis.report import analyze_model, write_analysis
    from pifs_jax.samplers import named_sampler

    result = analyze_model(  # the library checks --samples, --steps, --patch-size (main names them)
        model["eps_fn"],
        model["sched"],
        model["images"],
        patch_size=model["patch_size"],
        steps=args.steps,
        samples=args.samples,
        seed=args.seed,
        attention_fn=model["attention_fn"],
        method=args.method,
        sampler=named_sampler(args.sampler),
        sample_quality=model["sample_quality"],
        chunk=chunk,
        progress=not args.no_progress,
    )
    config = {
        "command": command_line(args.argv),
        **model["source"],
        "samples": args.samples,
        "steps": args.steps,
        "patch_size": model["patch_size"],
        "method": args.method,
        "sampler": args.sampler,
        "data": args.data,
        "data_file": None if args.data_file is None else str(args.data_file),
        "num_data": int(model["images"].shape[0]),  # the baseline's images (--num-data, or its default)
    }
    write_analysis(folder, result, title=model["title"], config=config, seed=args.seed)
    return result


def _check_memory(args: argparse.Namespace, shape: tuple[int, ...], patch_size: int) -> None:
    """Refuse (naming --samples) an analysis whose arrays cannot fit (:func:`pifs_jax.memory.analysis_bytes`)."""
    from pifs_jax.analysis.chain_analysis import EXACT_MAX_N
    from pifs_jax.memory import analysis_bytes, check_memory
    from pifs_jax.patches import patch_layout

    layout = patch_layout(shape, patch_size)  # names --patch-size when it does not tile the image
    exact = args.method == "exact" or (args.method == "auto" and layout.size <= EXACT_MAX_N)
    needed = analysis_bytes(
        samples=args.samples, steps=args.steps, image_shape=shape, num_patches=layout.num_patches, exact=exact
    )
    what = f"analysing {args.samples} trajectories of {args.steps} steps ({'x'.join(map(str, shape))} images)"
    check_memory(needed, argument="--samples", what=what)


def run(args: argparse.Namespace) -> int:
    """Load the model and its baseline images, analyse the model's chains, write the results to ``--out``.

    Args:
      args: the options declared by :func:`add_arguments`, parsed, with ``argv`` (the command line,
        recorded in the results) set by :func:`pifs_jax.cli.main`.

    Returns:
      0 on success; 130 when interrupted (nothing is written then; an earlier analysis in ``--out`` is
      kept).

    Raises:
      UsageError: naming the option (``--run``, ``--pretrained``, ``--diffusers``, ``--data``, ``--data-file``
        or ``--num-data``) whose input cannot be used.
      ArgumentError: from the library, e.g. naming ``--samples`` when the analysis's arrays cannot fit in
        memory; :func:`pifs_jax.cli.main` prints it as a one-line error.
    """
    from pifs_jax.analysis.report import ANALYSIS_FILES, marked_verdict, verdict_caveat
    from pifs_jax.run_folder import RunFolder

    if args.run is not None:
        model = _from_run(args)
    elif args.pretrained is not None:
        model = _from_pretrained(args)
    else:
        model = _from_diffusers(args)
    _check_memory(args, tuple(model["images"].shape[1:]), model["patch_size"])
    from pifs_jax.analysis.chain_analysis import default_chunk

    chunk = args.chunk or default_chunk()
    try:
        # held for the whole analysis: a second command on --out is refused at once, not at the end
        with RunFolder(args.out, "overwrite", results=ANALYSIS_FILES, command=command_line(args.argv)) as folder:
            result = _analyze_and_write(args, model, folder, chunk)
    except KeyboardInterrupt as exc:  # between chunks (the library stops there): nothing was written
        after = f" {exc}" if str(exc) else ""
        print(
            f"{PROG} analyze: interrupted{after}; nothing written to {args.out} (an earlier analysis there is kept)",
            file=sys.stderr,
        )
        return 130
    caveat = verdict_caveat(result)
    if caveat:
        print(f"caveat: {caveat}; every verdict below carries it")
    for claim in result.claims:
        print(f"{marked_verdict(claim.verdict, caveat):>14}  {claim.name}: {claim.ours}")
    print(f"wrote {Path(args.out) / 'analysis.md'}")
    return 0


#: The ``pifs-jax analyze`` subcommand.
SUBCOMMAND = Subcommand(
    name="analyze",
    help="test the paper's trained-model claims on a trained run, a shipped model or a diffusers UNet",
    description=DESCRIPTION,
    epilog=EPILOG,
    add_arguments=add_arguments,
    run=run,
)

__all__ = ["PROG", "SUBCOMMAND", "add_arguments", "run"]

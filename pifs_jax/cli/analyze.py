"""``pifs-jax analyze``: the paper's trained-model claims, tested on a trained run, a shipped model or a diffusers UNet.

The work is :func:`pifs_jax.analysis.report.analyze_model` and
:func:`~pifs_jax.analysis.report.write_analysis`; this module declares the options, loads the
model and its data, and prints the verdicts.
"""

from __future__ import annotations

import argparse
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

notes:
  Exact blocks (jacfwd + SVD) up to n = 3072 coordinates, Golub-Kahan-Lanczos estimates above
  (--method forces either). A model without attention layers gets 'not tested' for the entropy
  claim. A diffusers folder holds no training data: the baseline then comes from a bundled data
  set of the same image shape (photos32 for 32x32 RGB models), an approximation of the model's
  own data (say CIFAR-10) that the report names."""


#: Images of a named data set (--data, or the bundled one of a --diffusers model) without --num-data.
DEFAULT_NUM_DATA = 4096


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from pifs_jax.analysis.chain_analysis import METHODS
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
    parser.add_argument(
        "--data",
        choices=tuple(DATASETS),
        default=None,
        help="images for the Gaussian baseline and the patch variances (default: the run's or the "
        "shipped model's own training data; for --diffusers the bundled data set of the model's image shape)",
    )
    parser.add_argument(
        "--num-data",
        type=positive_int,
        default=None,
        metavar="N",
        help="images for the baseline: the first N of the run's or shipped model's own training images "
        "(default: all of them; also when --data names their data set), or N images of another --data or of "
        f"the --diffusers data set (default: {DEFAULT_NUM_DATA})",
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
    from pifs_jax.data import load_dataset
    from pifs_jax.models import as_eps_fn
    from pifs_jax.models.training import load_train_test
    from pifs_jax.schedules import named_schedule

    if args.data in (None, config.data):
        images = load_train_test(config)[0]
        if args.num_data is not None:
            if args.num_data > images.shape[0]:
                raise UsageError(
                    "--num-data",
                    f"the model was trained on {images.shape[0]} {config.data} images; expected at most "
                    f"{images.shape[0]}, got {args.num_data}",
                )
            images = images[: args.num_data]
    else:
        import jax

        images = load_dataset(args.data, jax.random.PRNGKey(config.data_seed), args.num_data or DEFAULT_NUM_DATA)
    return {
        "eps_fn": as_eps_fn(module, params),
        "sched": named_schedule(config.schedule, config.T),
        "images": images,
        "patch_size": args.patch_size or config.patch_size,
        "attention_fn": attention_fn_if_any(module, params, tuple(images.shape[1:])),
    }


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
    import jax

    from pifs_jax.analysis.report import attention_fn_if_any, sample_quality_record
    from pifs_jax.data import DATASETS, load_dataset
    from pifs_jax.models import load_diffusers_unet

    if not args.diffusers.is_dir():
        raise UsageError("--diffusers", f"{str(args.diffusers)!r} is not a folder")
    try:
        loaded = load_diffusers_unet(args.diffusers)
    except ValueError as exc:
        raise UsageError("--diffusers", str(exc)) from None
    if loaded.schedule is None:
        raise UsageError(
            "--diffusers",
            f"{str(args.diffusers)!r} has no scheduler config (scheduler/ or "
            "scheduler_config.json), so the schedule the model was trained with is unknown",
        )
    shape = tuple(loaded.image_shape)
    data = args.data or next((name for name, s in DATASETS.items() if tuple(s) == shape), None)
    if data is None:
        raise UsageError(
            "--data",
            f"no bundled data set has the model's image shape {shape}; name one of "
            f"{', '.join(DATASETS)} whose shape fits",
        )
    if tuple(DATASETS[data]) != shape:
        raise UsageError("--data", f"{data} images are {tuple(DATASETS[data])}, the model's are {shape}")
    images = load_dataset(data, jax.random.PRNGKey(0), args.num_data or DEFAULT_NUM_DATA)
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


def run(args: argparse.Namespace) -> int:
    from pifs_jax.analysis.report import ANALYSIS_FILES, analyze_model, marked_verdict, verdict_caveat, write_analysis
    from pifs_jax.run_folder import RunFolder
    from pifs_jax.samplers import named_sampler

    if args.run is not None:
        model = _from_run(args)
    elif args.pretrained is not None:
        model = _from_pretrained(args)
    else:
        model = _from_diffusers(args)
    # held for the whole analysis: a second command on --out is refused at once, not at the end
    with RunFolder(args.out, "overwrite", results=ANALYSIS_FILES, command=command_line(args.argv)) as folder:
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
            "num_data": int(model["images"].shape[0]),  # the baseline's images (--num-data, or its default)
        }
        write_analysis(folder, result, title=model["title"], config=config, seed=args.seed)
    caveat = verdict_caveat(result)
    if caveat:
        print(f"caveat: {caveat}; every verdict below carries it")
    for claim in result.claims:
        print(f"{marked_verdict(claim.verdict, caveat):>14}  {claim.name}: {claim.ours}")
    print(f"wrote {Path(args.out) / 'analysis.md'}")
    return 0


SUBCOMMAND = Subcommand(
    name="analyze",
    help="test the paper's trained-model claims on a trained run, a shipped model or a diffusers UNet",
    description=DESCRIPTION,
    epilog=EPILOG,
    add_arguments=add_arguments,
    run=run,
)

__all__ = ["PROG", "SUBCOMMAND", "add_arguments", "run"]

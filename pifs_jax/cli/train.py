"""``pifs-jax train``: train a UNet or a patch transformer (DiT) eps-predictor on real images.

The work is :func:`pifs_jax.models.training.train`; this module declares the options and prints
the summary. Nothing heavy is imported at module level, so importing :mod:`pifs_jax.cli` stays fast.
"""

from __future__ import annotations

import argparse

from pifs_jax.cli.common import Subcommand, finite_float, non_negative_int, positive_int, usage_error_for

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
patches: image side / 4 (16 patches) unless --patch-size. Writes to --out:
  config.json          the resolved configuration
  metrics.jsonl        one JSON line every --log-every steps (loss, mse, reg, grad_norm, images/s)
  checkpoint.msgpack   params, EMA params, optimiser state, step, PRNG key, config and sha256,
                       atomically every --checkpoint-every steps and at the end
  samples.png          --num-samples EMA samples (first 64 shown), --sample-steps DDIM steps
  samples_empirical.png  the empirical-optimal denoiser's samples from the same x_T
  quality.json         nearest-training-crop distance (memorisation) and Frechet patch
                       distances (aligned patches, and patches straddling their borders) to
                       the test crops, for the model, the empirical denoiser (pure
                       memorisation), the training crops and noise"""

EPILOG = """\
examples:
  # the quick configuration: a useful 16x16 DiT on a laptop CPU in under 10 minutes
  pifs-jax train --model dit --data photos16 --steps 4000 --out out/dit16

  # the full configuration (32x32 crops, 16 patches of 192) for a GPU, Min-SNR weighting
  pifs-jax train --config full --model dit --weighting min_snr --out out/dit32

  # the collage weighting with the PIFS regulariser on cross-patch Jacobian blocks
  pifs-jax train --model dit --weighting collage --mu 0.01 --out out/dit16_pifs

  # continue a killed run exactly (same options plus --resume)
  pifs-jax train --model dit --data photos16 --steps 4000 --out out/dit16 --resume

notes:
  A run is a pure function of its options: batches, timesteps, noise and probes of step k
  come from (seed, k), so --resume continues bit for bit. A checkpoint written with other
  options is refused (the differing options are named); --checkpoint-every, --log-every and
  --num-samples may change. Without --resume an existing checkpoint in --out is an error."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # names defined once in the library (Flax and Optax are loaded by pifs_jax already: light)
    from pifs_jax.data import DATASETS
    from pifs_jax.models import MODEL_NAMES
    from pifs_jax.models.training import PRESETS, WEIGHTINGS
    from pifs_jax.schedules import SCHEDULE_NAMES

    what = parser.add_argument_group("model and data")
    what.add_argument("--model", choices=MODEL_NAMES, default="dit",
                      help="unet (DDPM-style, attention at the middle) or dit (tokens = PIFS patches) (default: dit)")
    what.add_argument("--config", choices=tuple(PRESETS), default="quick",
                      help="preset: quick (16x16, small model, CPU minutes) or full (32x32, 8x8 patches, GPU) "
                      "(default: quick)")
    what.add_argument("--data", choices=tuple(DATASETS), default=None,
                      help="data set (default: photos16 for quick, photos32 for full)")
    what.add_argument("--num-train", type=positive_int, default=None, metavar="N", help="training crops (default: preset)")
    what.add_argument("--patch-size", type=positive_int, default=None, metavar="P",
                      help="PIFS patch side (DiT token size, regulariser blocks, quality features) (default: side / 4)")

    opt = parser.add_argument_group("optimisation")
    opt.add_argument("--steps", type=positive_int, default=None, metavar="N", help="training steps (default: preset)")
    opt.add_argument("--batch-size", type=positive_int, default=None, metavar="B", help="images per step (default: preset)")
    opt.add_argument("--lr", type=finite_float, default=None, metavar="LR", help="peak AdamW learning rate (default: preset)")
    opt.add_argument("--weighting", choices=WEIGHTINGS, default=None,
                     help="loss weighting (default: uniform)")
    opt.add_argument("--min-snr-gamma", type=finite_float, default=None, metavar="G", help="Min-SNR clip gamma (default: 5)")
    opt.add_argument("--mu", type=finite_float, default=None, metavar="MU",
                     help="weight of the PIFS cross-block regulariser (default: 0 = off)")
    opt.add_argument("--probes", type=positive_int, default=None, metavar="P",
                     help="patches probed per sample and step by the regulariser (default: 1)")
    opt.add_argument("--ema-decay", type=finite_float, default=None, metavar="D", help="EMA decay (default: preset)")
    opt.add_argument("--schedule", choices=SCHEDULE_NAMES, default=None, metavar="NAME",
                     help=f"noise schedule: {', '.join(SCHEDULE_NAMES)} (default: linear, DDPM's)")
    opt.add_argument("--T", type=positive_int, default=None, metavar="T", help="training steps of the schedule (default: 1000)")
    opt.add_argument("--seed", type=non_negative_int, default=None, metavar="S", help="random seed (default: 0)")

    run = parser.add_argument_group("run")
    run.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    run.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    run.add_argument("--checkpoint-every", type=positive_int, default=None, metavar="K",
                     help="steps between checkpoints (default: preset)")
    run.add_argument("--log-every", type=positive_int, default=None, metavar="K", help="steps between log lines (default: 10)")
    run.add_argument("--sample-steps", type=positive_int, default=None, metavar="N",
                     help="DDIM steps of the final samples and of the collage weighting's grid (default: 50)")
    run.add_argument("--num-samples", type=non_negative_int, default=None, metavar="N",
                     help="samples drawn and scored at the end; 0 = none (default: preset)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")


#: TrainConfig fields (the arguments of :func:`pifs_jax.models.training.train_config`) -> options.
_OPTIONS = {
    "model": "--model", "data": "--data", "num_train": "--num-train", "patch_size": "--patch-size",
    "steps": "--steps", "batch_size": "--batch-size", "lr": "--lr", "weighting": "--weighting",
    "min_snr_gamma": "--min-snr-gamma", "mu": "--mu", "probes": "--probes", "ema_decay": "--ema-decay",
    "seed": "--seed", "schedule": "--schedule", "T": "--T", "checkpoint_every": "--checkpoint-every", "log_every": "--log-every",
    "sample_steps": "--sample-steps", "num_samples": "--num-samples",
}


def run(args: argparse.Namespace) -> int:
    from pifs_jax.models.training import train, train_config

    overrides = {field: getattr(args, field) for field in _OPTIONS}
    try:
        config = train_config(args.config, **overrides)
    except ValueError as exc:
        error = usage_error_for(exc, {**_OPTIONS, "preset": "--config"})
        if error is None:
            raise
        raise error from None
    result = train(config, args.out, resume=args.resume, progress=not args.no_progress)
    print(f"trained {config.model} ({config.size}) on {config.data} for {int(result.state.step)} steps "
          f"in {result.seconds:.1f} s -> {result.out_dir}")
    if result.quality is not None:
        q = result.quality
        ref = q.get("empirical") or {}
        for key, what in (("fd_patches", "aligned"), ("fd_patches_straddling", "straddling")):
            print(f"  Frechet distance to test crops, {what} patches: model {q['model'][key]:.4g}, "
                  f"empirical denoiser {ref.get(key, float('nan')):.4g}, training crops "
                  f"{q['train_crops'][key]:.4g}, noise {q['noise'][key]:.4g}")
        print(f"  nearest-training-crop RMS distance: model {q['model']['nn_distance_mean']:.4g}, "
              f"empirical denoiser {ref.get('nn_distance_mean', float('nan')):.4g}, test crops "
              f"{q['test_crops']['nn_distance_mean']:.4g} (memorisation ratio {q['memorisation_ratio']:.3g})")
        useful = q["useful"]
        print(f"  useful ({useful['criterion']}): {'yes' if useful['passes'] else 'no'} "
              f"(gap closed: aligned {useful['fd_gap_closed_aligned']:.4f}, straddling {useful['fd_gap_closed_straddling']:.4f})")
    return 0


SUBCOMMAND = Subcommand(
    name="train",
    help="train a UNet or patch-transformer noise predictor on real images (checkpoints, --resume)",
    description=DESCRIPTION,
    epilog=EPILOG,
    add_arguments=add_arguments,
    run=run,
)

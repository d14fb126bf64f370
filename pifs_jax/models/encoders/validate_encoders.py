"""Validate the in-domain FD and KID before anyone uses them: ``python -m pifs_jax.models.encoders.validate_encoders``.

For each data set with a shipped encoder (``digits``: the 1437 train and 360 test digits;
``photos16``, ``photos32``: ``--num`` train and test crops, default 2000):

1. **Floor**: FD and KID of the train crops against the test crops, with bootstrap 95 %
   intervals (:func:`pifs_jax.models.quality.feature_scores`).
2. **Degradations** of the test crops, scored against the train crops (strength 0 is the floor):
   Gaussian noise ``x + sigma z`` (``sigma`` in pixel units of ``[-1, 1]``, not clipped),
   Gaussian blur of standard deviation ``s`` pixels (separable, reflected borders), and patch
   shuffling (``p = H / 4``: a fraction ``q`` of each image's ``16`` patches, chosen at random,
   moved cyclically among themselves, so every chosen patch leaves its place). Each score must
   grow with the strength; the raw-patch FD of :mod:`pifs_jax.models.quality` is recorded
   beside it (it is blind to shuffling by construction).
3. **Memorisation**: ``--empirical`` samples of the empirical-optimal denoiser of the train crops
   (:func:`pifs_jax.denoisers.empirical_denoiser`, 50 DDIM steps of the cosine schedule), scored
   against the test crops, beside as many train crops against the test crops (the same ``N``:
   the FD's bias depends on it) and the memorisation ratio ``mean d(samples) / mean d(test)``.

Writes ``{out}/in_domain_quality.json`` (:func:`pifs_jax.results.write_result_json`) and
``{out}/in_domain_quality.png``; ``--out`` defaults to ``docs/guides/figures``. On a machine
shared with other work, run it with ``OPENBLAS_NUM_THREADS=1``: the bootstrap's many small
eigen-decompositions slow down a hundredfold when BLAS threads compete for the cores.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.figure import Figure

from pifs_jax.data import DATASETS, load_dataset
from pifs_jax.denoisers import empirical_denoiser
from pifs_jax.grids import uniform_grid
from pifs_jax.models.encoders.load import encode
from pifs_jax.models.encoders.network import ENCODER_SPECS
from pifs_jax.models.quality import feature_scores, frechet_patch_distance, nearest_neighbour_distances
from pifs_jax.models.training.evaluation import sample_in_chunks
from pifs_jax.plotting import save_figure
from pifs_jax.results import write_result_json
from pifs_jax.schedules import cosine

__all__ = ["STRENGTHS", "gaussian_blur", "main", "shuffle_patches", "validate"]

#: The strengths of each degradation (0 is the clean test crops).
STRENGTHS: dict[str, list[float]] = {
    "noise": [0.0, 0.05, 0.1, 0.2, 0.3, 0.5],
    "blur": [0.0, 0.5, 0.75, 1.0, 1.5, 2.0],
    "shuffle": [0.0, 0.125, 0.25, 0.5, 1.0],
}


def gaussian_blur(images: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur, ``w_k ~ exp(-k^2 / (2 sigma^2))``, ``|k| <= ceil(3 sigma)``, reflected borders.

    Args:
      images: ``(N, H, W, C)``, blurred along ``H`` and ``W``.
      sigma: the standard deviation in pixels; ``sigma <= 0`` returns ``images`` unchanged.

    Returns:
      the blurred images, of ``images``' shape.
    """
    if sigma <= 0:
        return images
    radius = int(np.ceil(3 * sigma))
    k = np.arange(-radius, radius + 1)
    w = np.exp(-(k**2) / (2 * sigma**2))
    w /= w.sum()
    out = images
    for axis in (1, 2):
        padding = [(0, 0)] * 4
        padding[axis] = (radius, radius)
        padded = np.pad(out, padding, mode="reflect")
        size = out.shape[axis]
        out = np.sum([wi * np.take(padded, np.arange(i, i + size), axis=axis) for i, wi in enumerate(w)], axis=0)
    return out


def shuffle_patches(images: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Move ``round(fraction 16)`` of each image's ``4 x 4`` grid of patches cyclically among themselves.

    Args:
      images: ``(n, H, W, C)`` with ``H = W`` a multiple of 4 (patches of side ``H / 4``).
      fraction: the fraction ``q`` of the 16 patches moved (fewer than 2 moved patches: none moved).
      rng: the NumPy generator choosing the patches.

    Returns:
      a new array of ``images``' shape.
    """
    n, h, w, c = images.shape
    p = h // 4
    blocks = images.reshape(n, 4, p, 4, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, 16, p, p, c).copy()
    moved = round(fraction * 16)
    if moved >= 2:
        for i in range(n):
            chosen = rng.choice(16, moved, replace=False)
            blocks[i, chosen] = blocks[i, np.roll(chosen, 1)]
    return blocks.reshape(n, 4, 4, p, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, h, w, c)


def _degrade(kind: str, images: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    if kind == "noise":
        return images + strength * rng.standard_normal(images.shape)
    if kind == "blur":
        return gaussian_blur(images, strength)
    return shuffle_patches(images, strength, rng)


def _splits(data: str, num: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    key = jax.random.PRNGKey(seed)
    if data == "digits":
        num_train, num_test = 1437, 360
    else:
        num_train = num_test = num
    train = np.asarray(load_dataset(data, jax.random.fold_in(key, 0), num_train), np.float64)
    test = np.asarray(load_dataset(data, jax.random.fold_in(key, 1), num_test, split="test"), np.float64)
    return train, test


def validate(
    data: str, *, num: int = 2000, empirical: int = 500, resamples: int = 200, seed: int = 0
) -> dict[str, Any]:
    """The three checks of the module notes for one data set.

    Args:
      data: the data set, a key of :data:`~pifs_jax.models.encoders.network.ENCODER_SPECS`.
      num: the number of train and of test crops (photographs; ``"digits"`` uses its whole splits);
        default 2000.
      empirical: the number of samples of the empirical-optimal denoiser; default 500.
      resamples: the bootstrap resamples of the intervals; default 200.
      seed: the seed of the crops, the degradations, the bootstrap and the samples; default 0.

    Returns:
      ``{"num_train", "num_test", "patch_size", "train_vs_test", "degradations", "empirical",
      "seconds"}``, with the scores of :func:`pifs_jax.models.quality.feature_scores` plus the raw-patch
      FDs ``"fd_patches"`` and ``"fd_patches_straddling"``, and per degradation kind its ``"rows"``
      and whether FD and KID grow with the strength (``"fd_monotone"``, ``"kid_monotone"``).
    """
    start = time.perf_counter()
    train, test = _splits(data, num, seed)
    patch = DATASETS[data][0] // 4
    train_features = encode(train, data=data)
    rng = np.random.default_rng(seed)

    def scores(images: np.ndarray, reference: np.ndarray, reference_features: np.ndarray) -> dict[str, Any]:
        out = feature_scores(encode(images, data=data), reference_features, resamples=resamples, seed=seed)
        out["fd_patches"] = frechet_patch_distance(images, reference, patch_size=patch)
        out["fd_patches_straddling"] = frechet_patch_distance(images, reference, patch_size=patch, straddling=True)
        return out

    result: dict[str, Any] = {"num_train": len(train), "num_test": len(test), "patch_size": patch}
    result["train_vs_test"] = scores(test, train, train_features)
    result["degradations"] = {}
    for kind, strengths in STRENGTHS.items():
        rows = []
        for strength in strengths:
            row = (
                result["train_vs_test"]
                if strength == 0
                else scores(_degrade(kind, test, strength, rng), train, train_features)
            )
            rows.append({"strength": strength, **row})
        fds = [r["fd"] for r in rows]
        kids = [r["kid"] for r in rows]
        result["degradations"][kind] = {
            "rows": rows,
            "fd_monotone": bool(np.all(np.diff(fds) > 0)),
            "kid_monotone": bool(np.all(np.diff(kids) > 0)),
        }
    sched = cosine(1000)
    x_T = jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(seed), 2), (empirical, *DATASETS[data]))
    copies = sample_in_chunks(
        jax.tree_util.Partial(empirical_denoiser, sched), jnp.asarray(train), sched, x_T, grid=uniform_grid(1000, 50)
    ).astype(np.float64)
    d_samples, _ = nearest_neighbour_distances(copies, train)
    d_test, _ = nearest_neighbour_distances(test, train)
    result["empirical"] = {
        "num_samples": empirical,
        "against_test": scores(copies, test, encode(test, data=data)),
        "train_against_test": scores(train[:empirical], test, encode(test, data=data)),  # the same N
        "memorisation_ratio": float(np.mean(d_samples) / np.mean(d_test)),
        "nn_distance_mean": float(np.mean(d_samples)),
        "test_nn_distance_mean": float(np.mean(d_test)),
    }
    result["seconds"] = time.perf_counter() - start
    return result


def _figure(results: dict[str, Any]) -> Figure:
    names = list(results)
    fig = Figure(figsize=(11, 3.1 * len(names)), layout="constrained")
    axes = np.asarray(fig.subplots(len(names), 3, squeeze=False))
    labels = {
        "noise": "Gaussian noise sigma",
        "blur": "Gaussian blur sigma (pixels)",
        "shuffle": "fraction of patches shuffled",
    }
    for i, data in enumerate(names):
        for j, kind in enumerate(STRENGTHS):
            ax = axes[i, j]
            rows = results[data]["degradations"][kind]["rows"]
            x = np.array([r["strength"] for r in rows])
            for key, style, twin in (("fd", "o-", ax), ("kid", "s--", ax.twinx())):
                value = np.array([r[key] for r in rows])
                lo = np.array([r[f"{key}_lo"] for r in rows])
                hi = np.array([r[f"{key}_hi"] for r in rows])
                colour = "C0" if key == "fd" else "C3"
                twin.errorbar(
                    x,
                    value,
                    yerr=[np.maximum(value - lo, 0), np.maximum(hi - value, 0)],
                    fmt=style,
                    color=colour,
                    ms=3,
                    capsize=2,
                    label=key.upper(),
                )
                twin.set_ylabel(f"{key.upper()} (encoder features)", color=colour, fontsize="small")
            ax.set_xlabel(labels[kind], fontsize="small")
            ax.set_title(f"{data}: test crops + {kind} vs train crops", fontsize="small")
    return fig


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """The command line of ``python -m pifs_jax.models.encoders.validate_encoders``.

    Options: ``--data`` (all), ``--num`` (2000), ``--empirical`` (500), ``--resamples`` (200),
    ``--seed`` (0), ``--out``. Runs :func:`validate` for each data set, prints the floor, and writes
    ``{out}/in_domain_quality.json`` and ``{out}/in_domain_quality.png``.

    Args:
      argv: the command-line arguments; ``None`` (default): ``sys.argv[1:]``.

    Returns:
      ``{data: result}``, the results of :func:`validate`.
    """
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--data", nargs="*", default=list(ENCODER_SPECS), choices=list(ENCODER_SPECS))
    parser.add_argument("--num", type=int, default=2000)
    parser.add_argument("--empirical", type=int, default=500)
    parser.add_argument("--resamples", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("docs/guides/figures"))
    args = parser.parse_args(argv)
    results = {}
    for data in args.data:
        results[data] = validate(data, num=args.num, empirical=args.empirical, resamples=args.resamples, seed=args.seed)
        summary = results[data]["train_vs_test"]
        print(
            f"{data}: train vs test FD {summary['fd']:.4g} [{summary['fd_lo']:.4g}, {summary['fd_hi']:.4g}], "
            f"KID {summary['kid']:.3g} [{summary['kid_lo']:.3g}, {summary['kid_hi']:.3g}] "
            f"({results[data]['seconds']:.0f} s)",
            flush=True,
        )
    args.out.mkdir(parents=True, exist_ok=True)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()} | {"strengths": STRENGTHS}
    write_result_json(args.out / "in_domain_quality.json", results, config=config, seed=args.seed)
    save_figure(_figure(results), args.out / "in_domain_quality.png")
    return results


if __name__ == "__main__":
    main()

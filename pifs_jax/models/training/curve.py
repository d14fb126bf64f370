"""Quality against training steps: one run trained in resumable pieces and scored after each piece.

:func:`training_curve` trains ``config`` (planned for its own ``steps``, the last milestone) up to
each of ``milestones`` in turn: a piece is one call of
:func:`~pifs_jax.models.training.trainer.train` with ``stop_at=milestone`` that resumes the
checkpoint of the previous piece, so the pieces are exactly one uninterrupted run, learning-rate
schedule included (tested parameter for parameter). After each piece the EMA model is scored with
:func:`score_model`. A long run can so be trained across sessions, a piece at a time.

:func:`score_model` draws ``num_samples`` samples with the ``sample_steps``-step deterministic
DDIM chain from **held-out noise seeds** (``x_T`` from ``fold_in(PRNGKey(seed), 2**31 - 2)``,
disjoint from the training evaluation's ``2**31 - 1`` and from every training draw) and reports,
on the samples as drawn (never clipped):

- ``fraction_outside``: the fraction of values outside ``[-1.05, 1.05]`` (:data:`TARGETS`);
- the Frechet patch distances (aligned and straddling patches) and the in-domain Frechet distance
  and KID (the data set's encoder, :func:`pifs_jax.models.quality.in_domain_scores`) to the test
  crops, and each distance's ratio to the same distance between as many training crops and the
  test crops (the floor of real images: finite-sample noise and the train/test region shift);
- the memorisation ratio (nearest-training-crop distance over a test crop's);
- whether each target of :data:`TARGETS` is met.

The curve is written atomically to ``curve.json`` after every piece (config, seed and package
versions recorded), so a killed curve resumes at its last finished milestone.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pifs_jax.errors import ArgumentError
from pifs_jax.grids import uniform_grid
from pifs_jax.models import quality as q
from pifs_jax.models.common import as_eps_fn
from pifs_jax.models.training.config import TrainConfig
from pifs_jax.models.training.evaluation import sample_in_chunks
from pifs_jax.models.training.loading import load_run
from pifs_jax.models.training.trainer import load_train_test, train
from pifs_jax.results import write_result_json
from pifs_jax.schedules import named_schedule

__all__ = ["CURVE_NAME", "TARGETS", "curve_figure", "held_out_noise", "score_model", "training_curve"]

#: The file :func:`training_curve` writes in the run folder.
CURVE_NAME = "curve.json"

#: What a shipped model must reach (on ``num_samples`` = 1024 held-out samples of 50-step DDIM).
TARGETS = {
    "outside_bound": 1.05,
    "max_fraction_outside": 0.01,
    "max_fd_ratio": 2.0,
    "min_memorisation_ratio": 0.5,
}

#: ``fold_in`` index of the held-out noise seeds (the training evaluation uses ``2**31 - 1``).
HELD_OUT_NOISE = 2**31 - 2


def held_out_noise(seed: int, count: int, image_shape: Sequence[int]) -> jax.Array:
    """``x_T ~ N(0, I)`` of shape ``(count,) + image_shape`` from the held-out seeds of ``seed``.

    Args:
      seed: the run's seed; the key is ``fold_in(PRNGKey(seed), 2**31 - 2)``.
      count: the number of noises.
      image_shape: ``(H, W, C)``.

    Returns:
      the noises, a ``jax.Array`` ``(count, H, W, C)`` (JAX's default float dtype).
    """
    key = jax.random.fold_in(jax.random.PRNGKey(seed), HELD_OUT_NOISE)
    return jax.random.normal(key, (count, *image_shape))


def score_model(
    module: Any,
    params: Any,
    config: TrainConfig,
    *,
    train_images: np.ndarray,
    test_images: np.ndarray,
    num_samples: int = 1024,
    sample_steps: int = 50,
) -> dict[str, Any]:
    """The scores of the module docstring for ``params`` (EMA weights) of a run with ``config``.

    Args:
      module: the run's network.
      params: its parameters (the EMA weights).
      config: the run's :class:`~pifs_jax.models.training.config.TrainConfig` (its schedule, ``T``,
        seed and patch size are used).
      train_images: the training crops ``(N, H, W, C)``.
      test_images: the test crops ``(N_test, H, W, C)``.
      num_samples: the number of held-out samples drawn (:func:`held_out_noise`); default 1024.
      sample_steps: the steps of the uniform deterministic DDIM grid; default 50.

    Returns:
      ``{"num_samples", "sample_steps", "fraction_outside", "sample_range", "fd_patches",
      "fd_patches_straddling", "fd_train_crops", "fd_train_crops_straddling", "fd_ratio",
      "fd_ratio_straddling", "memorisation_ratio", "fd_in_domain", "kid_in_domain",
      "fd_in_domain_train_crops", "fd_ratio_in_domain", "targets_met", "all_targets_met",
      "sampling_seconds"}`` (the in-domain entries ``None`` without an encoder for the data set;
      ``targets_met`` one bool per target of :data:`TARGETS`).
    """
    config = config.resolved()
    patch_size = config.patch_size
    assert patch_size is not None  # resolved() fills it in
    sched = named_schedule(config.schedule, config.T)
    x_T = held_out_noise(config.seed, num_samples, train_images.shape[1:])
    start = time.perf_counter()
    samples = sample_in_chunks(
        jax.tree_util.Partial(as_eps_fn, module), params, sched, x_T, grid=uniform_grid(config.T, sample_steps)
    )
    seconds = time.perf_counter() - start
    report = q.quality_report(samples, train=train_images, test=test_images, patch_size=patch_size, seed=config.seed)
    bound = TARGETS["outside_bound"]
    outside = float(np.mean(np.abs(samples) > bound))
    model, floor = report["model"], report["train_crops"]
    ratios = {key: model[key] / floor[key] for key in ("fd_patches", "fd_patches_straddling")}
    in_domain = report.get("in_domain") or {}
    if in_domain.get("model") and in_domain.get("train_crops"):  # the data set has an encoder
        ratios["fd_in_domain"] = in_domain["model"]["fd"] / in_domain["train_crops"]["fd"]
    met = {
        "fraction_outside": outside <= TARGETS["max_fraction_outside"],
        "fd_ratio": max(ratios.values()) <= TARGETS["max_fd_ratio"],
        "memorisation_ratio": report["memorisation_ratio"] >= TARGETS["min_memorisation_ratio"],
    }
    return {
        "num_samples": num_samples,
        "sample_steps": sample_steps,
        "fraction_outside": outside,
        "sample_range": report["sample_range"],
        "fd_patches": model["fd_patches"],
        "fd_patches_straddling": model["fd_patches_straddling"],
        "fd_train_crops": floor["fd_patches"],
        "fd_train_crops_straddling": floor["fd_patches_straddling"],
        "fd_ratio": ratios["fd_patches"],
        "fd_ratio_straddling": ratios["fd_patches_straddling"],
        "memorisation_ratio": report["memorisation_ratio"],
        "fd_in_domain": (in_domain.get("model") or {}).get("fd"),
        "kid_in_domain": (in_domain.get("model") or {}).get("kid"),
        "fd_in_domain_train_crops": (in_domain.get("train_crops") or {}).get("fd"),
        "fd_ratio_in_domain": ratios.get("fd_in_domain"),
        "targets_met": met,
        "all_targets_met": all(met.values()),
        "sampling_seconds": seconds,
    }


def _read_curve(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return list(json.loads(path.read_text())["results"]["points"])


def training_curve(
    config: TrainConfig,
    out_dir: str | os.PathLike,
    *,
    milestones: Sequence[int],
    num_samples: int = 1024,
    model: Any = None,
    progress: bool = False,
    on_point: Callable[[dict[str, Any]], Any] | None = None,
) -> list[dict[str, Any]]:
    """Train ``config`` to each milestone in turn and score it there (module docstring).

    Args:
      config: the run's configuration; its ``steps`` must be the last milestone.
      out_dir: the run folder (created; resumed when it already holds part of the curve).
      milestones: increasing step counts, the last the run's length.
      num_samples: held-out samples scored at each milestone.
      model: a registered spec for :func:`~pifs_jax.models.training.trainer.train` (``None``:
        ``config``'s own).
      on_point: called with each new point (e.g. to print it).

    Returns:
      The curve's points in milestone order: ``{"step", "train_seconds", **score_model(...)}``.

    Raises:
      ArgumentError: naming ``milestones`` (not positive and increasing).
    """
    steps = [int(m) for m in milestones]
    if not steps or steps[0] < 1 or any(b <= a for a, b in itertools.pairwise(steps)):
        raise ArgumentError("milestones", f"expected positive, strictly increasing step counts, got {list(milestones)}")
    if steps[-1] != config.steps:
        raise ArgumentError(
            "milestones", f"the last milestone must be the run's steps = {config.steps}, got {steps[-1]}"
        )
    out = Path(out_dir)
    curve_path = out / CURVE_NAME
    points = _read_curve(curve_path)
    done = {p["step"] for p in points}
    train_images, test_images = load_train_test(config.resolved())
    for milestone in steps:
        if milestone in done:
            continue
        start = time.perf_counter()
        resume = (out / "checkpoint.msgpack").exists()
        train(config, out, resume=resume, model=model, progress=progress, evaluate=False, stop_at=milestone)
        seconds = time.perf_counter() - start
        run = load_run(out)
        point = {
            "step": milestone,
            "train_seconds": seconds,
            **score_model(
                run.module,
                run.state.ema_params,
                run.config,
                train_images=train_images,
                test_images=test_images,
                num_samples=num_samples,
            ),
        }
        points.append(point)
        points.sort(key=lambda p: p["step"])
        write_result_json(
            curve_path,
            {"points": points, "targets": TARGETS},
            config={"train": dataclasses.asdict(config), "milestones": steps, "num_samples": num_samples},
            seed=config.seed,
        )
        if on_point is not None:
            on_point(point)
    return points


def curve_figure(points: Sequence[dict[str, Any]], *, title: str) -> Figure:
    """Quality against training steps: the fraction outside ``[-1.05, 1.05]`` and the distance ratios.

    Left: ``fraction_outside`` (log scale) with its target; right: the Frechet-distance ratios to
    the train-versus-test floor (patch aligned, patch straddling, in-domain when measured) and the
    memorisation ratio, with the targets as dotted lines.

    Args:
      points: the curve's points in step order, each a dict with ``"step"`` and the scores of
        :func:`score_model` (``"fraction_outside"``, ``"memorisation_ratio"``, the ``"fd_ratio*"`` keys).
      title: the figure's title.

    Returns:
      the new matplotlib ``Figure`` (Agg canvas).
    """
    steps = [p["step"] for p in points]
    fig = Figure(figsize=(10, 3.8), dpi=120)
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    left.semilogy(steps, [max(p["fraction_outside"], 1e-6) for p in points], "o-", label="fraction outside")
    left.axhline(TARGETS["max_fraction_outside"], ls=":", color="k", label="target")
    left.set(xlabel="training step", ylabel=f"fraction of values outside ±{TARGETS['outside_bound']}")
    left.legend()
    series = (
        ("fd_ratio", "FD patches"),
        ("fd_ratio_straddling", "FD straddling"),
        ("fd_ratio_in_domain", "FD in-domain"),
    )
    for key, label in series:
        values = [p.get(key) for p in points]
        if any(v is not None for v in values):
            right.semilogy(steps, [np.nan if v is None else v for v in values], "o-", label=label)
    right.semilogy(steps, [p["memorisation_ratio"] for p in points], "s--", label="memorisation ratio")
    right.axhline(TARGETS["max_fd_ratio"], ls=":", color="k")
    right.axhline(TARGETS["min_memorisation_ratio"], ls=":", color="grey")
    right.set(xlabel="training step", ylabel="ratio (FD: to train vs test crops)")
    right.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig

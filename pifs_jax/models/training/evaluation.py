"""Evaluating a trained model: sampling in chunks, the quality report, the loss curve."""

from __future__ import annotations

import functools
import io
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from pifs_jax.errors import ArgumentError
from pifs_jax.grids import uniform_grid
from pifs_jax.models.training.config import TrainConfig
from pifs_jax.samplers import DDIM, Sampler, check_sampler, sample_batch
from pifs_jax.schedules import Schedule

__all__ = ["evaluate_run", "held_out_noise", "plot_metrics_log", "sample_in_chunks"]


@functools.partial(jax.jit, static_argnames=("shape",))
def held_out_noise(seed: Any, shape: tuple[int, ...]) -> jax.Array:
    """The evaluation's starting noise ``x_T ~ N(0, I)`` of ``shape`` (compiled once per shape).

    Args:
      seed: the run's seed; the key is ``fold_in(PRNGKey(seed), 2**31 - 1)``, a stream no training
        step uses (the training curve's held-out noise,
        :func:`pifs_jax.models.training.curve.held_out_noise`, uses ``2**31 - 2``).
      shape: ``(count, H, W, C)``.

    Returns:
      the noises, a ``jax.Array`` of ``shape`` (JAX's default float dtype).
    """
    return jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(seed), 2**31 - 1), shape)


def evaluate_run(
    module: Any,
    params: Any,
    sched: Schedule,
    *,
    config: TrainConfig,
    train_images: np.ndarray,
    test_images: np.ndarray,
    out_dir: str | os.PathLike,
    progress: bool = False,
) -> dict[str, Any]:
    """Sample the model, score it against the memorisation reference, write the samples and the scores.

    ``x_T ~ N(0, I)`` from ``fold_in(PRNGKey(seed), 2**31 - 1)``; the model and the empirical-optimal
    denoiser of the training set (:func:`pifs_jax.denoisers.empirical_denoiser`) both run the
    ``sample_steps``-step DDIM chain from the same ``x_T``. Writes to ``out_dir``:
    ``samples.npz`` (``samples`` and ``samples_empirical``, float32, as drawn), ``samples.png`` and
    ``samples_empirical.png`` (:func:`pifs_jax.models.quality.sample_figure`: clipped to
    ``[-1, 1]`` for display only, as their titles say) and ``quality.json``
    (:func:`pifs_jax.models.quality.quality_report` of the unclipped samples, with their range
    and the fraction of values outside the data range).

    Args:
      progress: a tqdm text bar over the phases (model sampling chunks, empirical sampling
        chunks, scoring, writing).
    """
    from tqdm import tqdm  # text bar: works in terminals and notebooks without ipywidgets

    from pifs_jax.denoisers import empirical_denoiser
    from pifs_jax.models import as_eps_fn
    from pifs_jax.models import quality as q
    from pifs_jax.plotting import save_figure
    from pifs_jax.results import atomic_write_bytes, write_result_json

    out = Path(out_dir)
    grid = uniform_grid(config.T, config.sample_steps)
    shape = (config.num_samples, *train_images.shape[1:])
    x_T = held_out_noise(np.uint32(config.seed), shape)
    chunks = -(-config.num_samples // min(SAMPLE_CHUNK, config.num_samples))
    with tqdm(total=2 * chunks + 2, disable=not progress, desc="sample and score", unit="phase", leave=False) as bar:
        bar.set_postfix_str("model samples", refresh=False)
        t0 = time.perf_counter()
        # Partials of module-level functions: equal for equal modules (one compilation per architecture)
        samples = sample_in_chunks(
            jax.tree_util.Partial(as_eps_fn, module), params, sched, x_T, grid=grid, on_chunk=lambda: bar.update(1)
        )
        sample_seconds = time.perf_counter() - t0
        bar.set_postfix_str("empirical denoiser samples", refresh=False)
        reference = sample_in_chunks(
            jax.tree_util.Partial(empirical_denoiser, sched),
            jnp.asarray(train_images),
            sched,
            x_T,
            grid=grid,
            on_chunk=lambda: bar.update(1),
        )
        bar.set_postfix_str("scores", refresh=True)
        patch_size = config.resolved().patch_size
        assert patch_size is not None  # resolved() fills it in
        report = q.quality_report(
            samples, train=train_images, test=test_images, patch_size=patch_size, reference_samples=reference
        )
        report["sampling_seconds"] = sample_seconds
        bar.update(1)
        bar.set_postfix_str("writing", refresh=True)
        buffer = io.BytesIO()
        np.savez(buffer, samples=samples.astype(np.float32), samples_empirical=reference.astype(np.float32))
        atomic_write_bytes(out / "samples.npz", buffer.getvalue())
        what = f"{config.sample_steps}-step DDIM from the same x_T"
        save_figure(
            q.sample_figure(samples, data=train_images, title=f"{config.model} EMA samples, {what}"),
            out / "samples.png",
        )
        save_figure(
            q.sample_figure(reference, data=train_images, title=f"empirical-optimal denoiser (memorisation), {what}"),
            out / "samples_empirical.png",
        )
        write_result_json(out / "quality.json", report, config=config.to_dict(), seed=config.seed)
        bar.update(1)
    return report


#: Samples per compiled call of :func:`sample_in_chunks` (its default ``chunk``).
SAMPLE_CHUNK = 128


def sample_in_chunks(
    make_eps_fn: Callable[[Any], Callable],
    args: Any,
    sched: Schedule,
    x_T: jax.Array,
    *,
    grid: Any,
    chunk: int = SAMPLE_CHUNK,
    on_chunk: Callable[[], Any] | None = None,
    sampler: Sampler | None = None,
) -> np.ndarray:
    """:func:`pifs_jax.samplers.sample_batch` of ``make_eps_fn(args)``, ``chunk`` samples at a time.

    ``sampler``: a deterministic :class:`pifs_jax.samplers.Sampler` (default ``DDIM()``, the
    training evaluation's chain); a stochastic one raises ``ArgumentError`` naming ``sampler``.

    One compilation (the last chunk is padded); bounded memory (the empirical denoiser compares
    every sample with every training crop at every step). ``args`` (parameters, data), the
    schedule, the grid and the array leaves of ``make_eps_fn`` enter the compiled program
    (``equinox.filter_jit``) as arguments, not as constants baked into it: faster to compile,
    jaxlib 0.10.2's CPU compiler was seen to miscompile exactly-zero constant weight layers, and
    a ``make_eps_fn`` that compares equal across calls (e.g.
    ``jax.tree_util.Partial(as_eps_fn, module)``) reuses the compilation for new parameters.
    ``on_chunk()`` is called after every chunk (e.g. a progress bar's update).

    Args:
      make_eps_fn: builds the denoiser ``eps_fn(x, t)`` of one sample from ``args``.
      args: what ``make_eps_fn`` takes (e.g. the parameters, or the training data).
      sched: the schedule.
      x_T: the starting noises ``(S, H, W, C)``.
      grid: the sampling grid.
      chunk: the most samples per compiled call; default ``SAMPLE_CHUNK`` (128).
      on_chunk: called with no argument after every chunk; default none.
      sampler: a deterministic sampler; ``None`` (default): ``DDIM()``.

    Returns:
      the samples, a NumPy array of ``x_T``'s shape.

    Raises:
      ArgumentError: naming ``sampler`` (not a valid :class:`~pifs_jax.samplers.Sampler`, or a
        stochastic one).
    """

    sampler = check_sampler(DDIM() if sampler is None else sampler)
    if sampler.needs_key:
        raise ArgumentError("sampler", f"expected a deterministic sampler (chunks draw no noise), got {sampler!r}")

    def sample(a, x):
        return _sample_chunk(make_eps_fn, a, sched, x, grid, sampler)

    count = x_T.shape[0]
    size = min(chunk, count)
    out = []
    for start in range(0, count, size):
        block = x_T[start : start + size]
        pad = size - block.shape[0]
        if pad:
            block = jnp.concatenate([block, jnp.zeros((pad, *block.shape[1:]), block.dtype)])
        out.append(np.asarray(sample(args, block))[: size - pad])
        if on_chunk is not None:
            on_chunk()
    return np.concatenate(out)


@eqx.filter_jit
def _sample_chunk(
    make_eps_fn: Callable[[Any], Callable], args: Any, sched: Schedule, x_T: jax.Array, grid: Any, sampler: Any
) -> jax.Array:
    """:func:`pifs_jax.samplers.sample_batch` of ``make_eps_fn(args)`` from ``x_T`` (compiled; nothing checked)."""
    x_0 = sample_batch(make_eps_fn(args), sched, x_T, grid=grid, sampler=sampler, check_finite=False)
    assert isinstance(x_0, jax.Array)  # no trajectory asked for
    return x_0


def plot_metrics_log(records: Sequence[Mapping[str, Any]], *, title: str = ""):
    """The loss curve of a run: the logged ``loss`` and ``mse`` (and ``objective`` with a regulariser) over the steps.

    Args:
      records: :func:`~pifs_jax.models.training.trainer.read_metrics_log`'s records (``step`` and metrics).
      title: the figure's title.

    Returns:
      A matplotlib Figure (Agg canvas, :func:`pifs_jax.plotting.new_figure`), log-scaled y axis
      when every plotted value is positive; write it with :func:`pifs_jax.plotting.save_figure`.
    """
    from pifs_jax.plotting import new_figure

    if not records:
        raise ArgumentError("records", "expected at least one metrics record, got none")
    steps = np.array([int(r["step"]) for r in records])
    fig, ax = new_figure()

    def series(name):
        return np.array([float(r.get(name, np.nan)) for r in records])

    same_as_loss = np.array_equal(series("loss"), series("mse"), equal_nan=True)
    regularised = any(float(r.get("reg", 0.0)) for r in records)
    positive = True
    for name, label in (
        ("loss", "loss (= eps-MSE)" if same_as_loss else "loss (weighted)"),
        ("mse", "eps-MSE"),
        ("objective", "objective (loss + mu reg)"),
    ):
        values = series(name)
        skip = (name == "mse" and same_as_loss) or (name == "objective" and not regularised)
        if skip or np.all(np.isnan(values)):
            continue
        ax.plot(steps, values, label=label, marker="." if len(steps) < 30 else None)
        positive &= bool(np.all(values[np.isfinite(values)] > 0))
    if positive:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (per logged step)")
    ax.set_title(title, fontsize="small")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    return fig

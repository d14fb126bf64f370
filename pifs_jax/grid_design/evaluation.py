"""Judging a sampling grid: the reference solution, per-sample errors, paired gains with intervals.

A grid is judged on noise seeds it was not designed on, every method on the SAME seeds (paired):

- the reference ``x_0^ref(x_T)`` is a converged solution of the same probability-flow ODE from the
  same ``x_T`` (default: DDIM on every training step, ``T`` network calls per sample;
  :func:`self_convergence` measures how far that is from converged);
- the error of a grid on one seed is the root-mean-square difference
  ``RMSE = ||x_0^grid - x_0^ref|| / sqrt(n)`` (``n`` = values per sample);
- two methods are compared by the paired relative gain ``1 - mean(RMSE_b) / mean(RMSE_a)`` with a
  paired percentile-bootstrap interval (the same resampled seeds for both).

The chains run through :func:`pifs_jax.samplers.sample_batch` in chunks (compiled once per grid
length: a search over grids of one length compiles nothing new).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np

from pifs_jax._validation import check_fraction, check_positive_int
from pifs_jax.errors import ArgumentError
from pifs_jax.grids import full_grid
from pifs_jax.samplers import DDIM, Sampler, sample_batch
from pifs_jax.schedules import Schedule
from pifs_jax.typing import EpsFn

__all__ = [
    "PairedGain",
    "grid_errors",
    "mean_grid_error",
    "paired_gain",
    "reference_solution",
    "run_grid",
    "self_convergence",
    "trimmed_mean",
]

#: Samples per compiled batch (memory bound: the chain holds one batch of states).
DEFAULT_CHUNK = 256


def run_grid(
    eps_fn: EpsFn, sched: Schedule, grid: Any, x_T: Any, *, sampler: Sampler | None = None, chunk: int = DEFAULT_CHUNK
) -> np.ndarray:
    """``x_0`` of ``sampler`` on ``grid`` from each of the noises ``x_T`` (shape ``(B,) + sample``), float64 host array.

    The noises run through :func:`pifs_jax.samplers.sample_batch` ``chunk`` at a time; when there is more
    than one chunk, the last is padded to ``chunk`` samples, so every chunk has one compiled shape.

    Args:
      eps_fn: the denoiser of one sample.
      sched: its schedule.
      grid: the sampling grid ``0 = tau_0 < ... < tau_N <= T``.
      x_T: the noises, shape ``(B,) + sample_shape``, floating dtype.
      sampler: the solver; default ``DDIM()``. No PRNG key is passed, so a stochastic sampler is refused.
      chunk: samples per compiled batch (positive); default 256.

    Returns:
      float64 NumPy array of ``x_T``'s shape ``(B,) + sample_shape``.

    Raises:
      ArgumentError: naming ``x_T`` (fewer than two axes) or ``chunk`` (not a positive integer); those of
        :func:`~pifs_jax.samplers.sample_batch` (e.g. naming ``grid``, ``sampler`` or ``key``) pass through.
      NonFiniteError: a sample's ``x_0`` is not finite (from :func:`~pifs_jax.samplers.sample_batch`).
    """
    x_T = jnp.asarray(x_T)
    if x_T.ndim < 2:
        raise ArgumentError("x_T", f"expected a batch of noises of shape (B, ...) , got shape {x_T.shape}")
    chunk = check_positive_int(chunk, name="chunk")
    sampler = DDIM() if sampler is None else sampler
    grid = np.asarray(grid)
    parts = []
    for start in range(0, x_T.shape[0], chunk):
        block = x_T[start : start + chunk]
        pad = chunk - block.shape[0] if x_T.shape[0] > chunk else 0  # one compiled shape for every chunk
        if pad:
            block = jnp.concatenate([block, jnp.zeros((pad, *block.shape[1:]), block.dtype)])
        out = sample_batch(eps_fn, sched, block, grid=grid, sampler=sampler)
        parts.append(np.asarray(out[: block.shape[0] - pad], np.float64))
    return np.concatenate(parts)


def reference_solution(
    eps_fn: EpsFn, sched: Schedule, x_T: Any, *, grid: Any = None, sampler: Sampler | None = None,
    chunk: int = DEFAULT_CHUNK,
) -> np.ndarray:  # fmt: skip
    """The reference ``x_0^ref`` from each noise: ``sampler`` (default DDIM) on ``grid`` (default every training step).

    Args:
      eps_fn: the denoiser of one sample.
      sched: its schedule.
      x_T: the noises, shape ``(B,) + sample_shape``, floating dtype.
      grid: the reference grid; default ``None``: every training step ``0..T`` (``T`` network calls per
        sample with DDIM).
      sampler: the solver; default ``DDIM()``.
      chunk: samples per compiled batch (positive); default 256.

    Returns:
      float64 NumPy array of ``x_T``'s shape ``(B,) + sample_shape``.

    Raises:
      ArgumentError: as for :func:`run_grid`.
      NonFiniteError: as for :func:`run_grid`.
    """
    return run_grid(eps_fn, sched, full_grid(sched.T) if grid is None else grid, x_T, sampler=sampler, chunk=chunk)


def grid_errors(samples: Any, reference: Any) -> np.ndarray:
    """Per-sample ``RMSE = sqrt(mean((x_0 - x_0^ref)^2))`` over each sample's values, shape ``(B,)``.

    Args:
      samples: ``x_0`` of a grid, shape ``(B,) + sample_shape`` (e.g. the result of :func:`run_grid`).
      reference: the reference solutions of the same noises, of ``samples``' shape.

    Returns:
      float64 NumPy array of shape ``(B,)``.

    Raises:
      ArgumentError: naming ``reference`` when its shape differs from ``samples``' or when they have fewer
        than two axes.
    """
    samples, reference = np.asarray(samples, np.float64), np.asarray(reference, np.float64)
    if samples.shape != reference.shape or samples.ndim < 2:
        raise ArgumentError(
            "reference", f"expected the samples' shape (B, ...), got {reference.shape} for samples {samples.shape}"
        )
    return np.sqrt(np.mean((samples - reference).reshape(samples.shape[0], -1) ** 2, axis=1))


def trimmed_mean(errors: Any, trim: float = 0.0) -> float:
    """Mean of ``errors`` without its ``k = floor(trim B)`` largest entries (``B`` entries; ``trim = 0``: the mean).

    ``mean(e_(1), ..., e_(B-k))`` over the sorted errors ``e_(1) <= ... <= e_(B)``: the score of a grid on
    few design seeds whose per-seed errors are heavy-tailed, where one outlying seed would
    otherwise decide which grid wins (docs/theory.md section 12).

    Args:
      errors: per-seed errors, shape ``(B,)`` with ``B >= 1``.
      trim: the fraction of the largest errors left out, in ``[0, 1)``.

    Raises:
      ArgumentError: naming ``trim`` outside ``[0, 1)``, or ``errors`` when it is not a non-empty vector.
    """
    trim = check_fraction(trim, name="trim")
    errors = np.asarray(errors, np.float64)
    if errors.ndim != 1 or errors.shape[0] == 0:
        raise ArgumentError("errors", f"expected a non-empty vector of per-seed errors, got shape {errors.shape}")
    kept = errors.shape[0] - int(np.floor(trim * errors.shape[0]))
    return float(np.mean(np.sort(errors)[:kept]))


def mean_grid_error(
    eps_fn: EpsFn, sched: Schedule, grid: Any, x_T: Any, reference: Any, *, sampler: Sampler | None = None,
    chunk: int = DEFAULT_CHUNK, trim: float = 0.0,
) -> float:  # fmt: skip
    """Mean over the noises ``x_T`` of the per-sample RMSE of ``grid`` to ``reference`` (the design objective).

    Args:
      eps_fn: the denoiser of one sample.
      sched: its schedule.
      grid: the sampling grid ``0 = tau_0 < ... < tau_N <= T``.
      x_T: the noises, shape ``(B,) + sample_shape``, floating dtype.
      reference: their reference solutions, of ``x_T``'s shape (e.g. :func:`reference_solution`).
      sampler: the solver; default ``DDIM()``.
      chunk: samples per compiled batch (positive); default 256.
      trim: leave out this fraction of the largest per-sample errors (:func:`trimmed_mean`); default
        0, the plain mean.

    Returns:
      the (trimmed) mean of :func:`grid_errors` over the ``B`` noises, a Python float.

    Raises:
      ArgumentError: as for :func:`run_grid`, naming ``reference`` (:func:`grid_errors`), or ``trim``.
      NonFiniteError: as for :func:`run_grid`.
    """
    trim = check_fraction(trim, name="trim")  # before the network runs
    errors = grid_errors(run_grid(eps_fn, sched, grid, x_T, sampler=sampler, chunk=chunk), reference)
    return trimmed_mean(errors, trim)


class PairedGain(NamedTuple):
    """Relative gain of method b over method a on paired seeds: ``1 - mean(err_b) / mean(err_a)``."""

    gain: float
    lo: float
    hi: float
    """Percentile-bootstrap interval (seeds resampled jointly for both methods)."""
    mean_a: float
    mean_b: float


def paired_gain(
    errors_a: Any, errors_b: Any, *, level: float = 0.95, resamples: int = 2000, seed: int = 0
) -> PairedGain:
    """Paired relative gain ``1 - mean(errors_b) / mean(errors_a)`` with its bootstrap interval (positive: b is better).

    The seeds are resampled jointly (one index set for both methods), so the interval reflects the
    pairing; the ratio of means is taken per resample.

    Args:
      errors_a: per-seed errors of method a, shape ``(S,)`` with ``S >= 2`` (e.g. :func:`grid_errors`).
      errors_b: per-seed errors of method b on the same seeds, of ``errors_a``'s shape.
      level: confidence level of the interval, in ``(0, 1)``; default 0.95.
      resamples: bootstrap resamples (positive); default 2000.
      seed: seed of the resampling's NumPy generator; default 0.

    Returns:
      :class:`PairedGain`: the gain on all seeds, the interval's percentile bounds ``lo`` and ``hi``, and
      the two mean errors ``mean_a`` and ``mean_b``.

    Raises:
      ArgumentError: naming ``errors_b`` (not two 1-D arrays of one length ``>= 2``), ``level`` (outside
        ``(0, 1)``) or ``resamples`` (not a positive integer).
    """
    a, b = np.asarray(errors_a, np.float64), np.asarray(errors_b, np.float64)
    if a.ndim != 1 or a.shape != b.shape or a.shape[0] < 2:
        raise ArgumentError(
            "errors_b", f"expected two paired 1-D error arrays of one length >= 2, got {a.shape} and {b.shape}"
        )
    if not 0.0 < float(level) < 1.0:
        raise ArgumentError("level", f"expected a confidence level in (0, 1), got {level!r}")
    resamples = check_positive_int(resamples, name="resamples")
    idx = np.random.default_rng(seed).integers(0, a.shape[0], size=(resamples, a.shape[0]))  # one index set for both
    gains = 1.0 - b[idx].mean(axis=1) / a[idx].mean(axis=1)
    lo, hi = np.percentile(gains, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return PairedGain(float(1.0 - b.mean() / a.mean()), float(lo), float(hi), float(a.mean()), float(b.mean()))


def self_convergence(
    eps_fn: EpsFn, sched: Schedule, x_T: Any, *, reference: Any = None, sampler: Sampler | None = None,
    chunk: int = DEFAULT_CHUNK,
) -> dict[str, float]:  # fmt: skip
    """How converged the default reference is: RMSE of DDIM on every other step against every step.

    For a first-order solver the error of the full chain is about that of the half chain divided by
    two, so ``rmse_half_vs_full`` bounds the reference's own error by about itself.

    Args:
      eps_fn: the denoiser of one sample.
      sched: its schedule.
      x_T: the noises, shape ``(B,) + sample_shape``, floating dtype.
      reference: the full chain's results from ``x_T`` when already computed (:func:`reference_solution`);
        default ``None``: computed here.
      sampler: the solver of both chains; default ``DDIM()``.
      chunk: samples per compiled batch (positive); default 256.

    Returns:
      a dict of floats: ``rmse_half_vs_full`` (mean per-sample RMSE of the half chain to the full one),
      ``sample_rms`` (root mean square of the full chain's values) and ``relative`` (the first divided by
      the second).

    Raises:
      ArgumentError: as for :func:`run_grid`, or naming ``reference`` (:func:`grid_errors`).
      NonFiniteError: as for :func:`run_grid`.
    """
    T = sched.T
    full = reference_solution(eps_fn, sched, x_T, sampler=sampler, chunk=chunk) if reference is None else reference
    full = np.asarray(full, np.float64)
    half = run_grid(
        eps_fn, sched, np.unique(np.concatenate([[0], np.arange(T, 0, -2)[::-1]])), x_T, sampler=sampler, chunk=chunk
    )
    scale = float(np.sqrt(np.mean(full**2)))
    err = float(np.mean(grid_errors(half, full)))
    return {"rmse_half_vs_full": err, "sample_rms": scale, "relative": err / scale}

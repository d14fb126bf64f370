"""Analyse a denoiser's chain over many trajectories, and write ``analysis.json``, figures and ``analysis.md``.

The one workflow behind ``pifs-jax analyze`` and the ``two_regimes`` experiment:

1. :func:`analyze_model` draws ``S`` seeded starting points ``x_T ~ N(0, I)``, fits the
   patch-Gaussian baseline to the training images (:func:`pifs_jax.data.patch_stats`), runs
   :func:`~pifs_jax.analysis.analyze_chain` on the uniform ``steps``-step grid, summarises the
   trajectories (:func:`summarize_analysis`) and applies the verdict rules of docs/theory.md
   section 11 (:func:`~pifs_jax.analysis.evaluate_claims`);
2. :func:`write_analysis` writes, atomically, ``analysis.json`` (``{"config", "seed",
   "environment", "results"}``; the ``results`` schema is :func:`summarize_analysis`'s plus
   ``"claims"`` and ``"sample_quality"``), the five figures of :mod:`pifs_jax.analysis.figures`
   and ``analysis.md`` (the claims table and the block decomposition at the paper's timesteps).

**Sample-quality caveat** (docs/theory.md section 11): a verdict describes the analysed model's
chain, which tests the paper's claims only if the model samples its data. The model's *recorded*
quality is read, nothing is sampled (:func:`run_sample_quality`, :func:`card_sample_quality`):
when more than :data:`MAX_FRACTION_OUTSIDE` of its sample values lie outside
``[-SAMPLE_BOUND, SAMPLE_BOUND]``, or no quality is recorded, every verdict is printed with the
record's ``"caveat"`` (:func:`marked_verdict`) and the record is written as ``"sample_quality"``.
The verdicts themselves are computed without it.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from pifs_jax.analysis.chain_analysis import (
    ChainAnalysis,
    CorrectedAttractor,
    analyze_chain,
    corrected_attractor,
    module_attention_fn,
    per_patch_exponents,
    suppression_corrected_margins,
)
from pifs_jax.analysis.claims import PAPER_VALUES, ClaimResult, evaluate_claims
from pifs_jax.analysis.figures import (
    plot_block_norms,
    plot_deviation_fit,
    plot_entropy_coupling,
    plot_exponent_signs,
    plot_release_map,
)
from pifs_jax.analysis.statistics import bootstrap_mean_interval, crossover_window, ols_fit, spearman
from pifs_jax.data import patch_stats
from pifs_jax.errors import ArgumentError
from pifs_jax.grids import uniform_grid
from pifs_jax.patches import patch_layout
from pifs_jax.plotting import save_figure
from pifs_jax.results import atomic_write_text, write_result_json
from pifs_jax.run_folder import RunFolder
from pifs_jax.samplers import DDIM, Sampler, sampler_label
from pifs_jax.schedules import Schedule

__all__ = [
    "ANALYSIS_FILES",
    "FIGURES",
    "MAX_FRACTION_OUTSIDE",
    "MIN_PATCHES",
    "SAMPLE_BOUND",
    "UNKNOWN_QUALITY",
    "ModelAnalysis",
    "analysis_markdown",
    "analyze_model",
    "attention_fn_if_any",
    "card_sample_quality",
    "claims_table_rows",
    "marked_verdict",
    "reference_sample_quality",
    "run_sample_quality",
    "sample_quality_record",
    "summarize_analysis",
    "verdict_caveat",
    "write_analysis",
]

#: The bound of the sample-quality caveat. Sample values outside ``[-SAMPLE_BOUND, SAMPLE_BOUND]``
#: count as outside the data range (the shipped models' target, ``curve.TARGETS["outside_bound"]``).
SAMPLE_BOUND = 1.05
#: Above this fraction of values outside the bound, a model's verdicts carry the caveat.
MAX_FRACTION_OUTSIDE = 0.05
#: The caveat of a model whose sample quality is not recorded.
UNKNOWN_QUALITY = "sample quality unknown"
#: Fewest PIFS patches :func:`analyze_model` accepts: the claims compare each patch with the others.
MIN_PATCHES = 2

#: The figures :func:`write_analysis` writes: file name -> plotting function.
FIGURES: dict[str, Callable[..., Any]] = {
    "block_norms.png": plot_block_norms,
    "entropy_coupling.png": plot_entropy_coupling,
    "release_map.png": plot_release_map,
    "deviation_fit.png": plot_deviation_fit,
    "exponent_signs.png": plot_exponent_signs,
}


class ModelAnalysis(NamedTuple):
    """What :func:`analyze_model` returns."""

    analysis: ChainAnalysis
    """Per-step, per-trajectory values (leading axis ``S``)."""
    summary: dict[str, Any]
    """Trajectory means with intervals (:func:`summarize_analysis`), JSON-able."""
    claims: list[ClaimResult]
    """One verdict per claim of docs/theory.md section 11."""
    sample_quality: dict[str, Any] | None = None
    """The model's recorded sample quality (:func:`sample_quality_record`; ``None``: none recorded,
    printed as :data:`UNKNOWN_QUALITY`)."""


def sample_quality_record(fraction_outside: float | None, *, source: str, note: str | None = None) -> dict[str, Any]:
    """The sample-quality record of a model, with its caveat (docs/theory.md section 11).

    Args:
      fraction_outside: the recorded fraction of sample values outside ``[-SAMPLE_BOUND,
        SAMPLE_BOUND]``; ``None`` (or not a finite number in ``[0, 1]``): none recorded.
      source: where it was read (a file, a card's field), or why there is none.
      note: why the recorded quality was not used, if it was not.

    Returns:
      ``{"fraction_outside", "bound", "max_fraction_outside", "source", "caveat"}`` (plus
      ``"note"``): ``caveat`` is ``"model does not sample its data (x % of values outside the data
      range)"`` above :data:`MAX_FRACTION_OUTSIDE`, :data:`UNKNOWN_QUALITY` without a fraction,
      else ``None``.
    """
    fraction = None
    if isinstance(fraction_outside, (int, float)) and not isinstance(fraction_outside, bool):
        if math.isfinite(fraction_outside) and 0.0 <= fraction_outside <= 1.0:
            fraction = float(fraction_outside)
    if fraction is None:
        caveat = UNKNOWN_QUALITY
    elif fraction > MAX_FRACTION_OUTSIDE:
        caveat = f"model does not sample its data ({100 * fraction:.1f} % of values outside the data range)"
    else:
        caveat = None
    record = {
        "fraction_outside": fraction,
        "bound": SAMPLE_BOUND,
        "max_fraction_outside": MAX_FRACTION_OUTSIDE,
        "source": source,
        "caveat": caveat,
    }
    return {**record, "note": note} if note else record


def reference_sample_quality(source: str) -> dict[str, Any]:
    """The record of a training-free reference, with no caveat.

    The reference is the empirical-optimal denoiser: no weights, its data prediction a weighted
    average of training images; nothing to converge, so no caveat.

    Args:
      source: what the reference is (recorded as the record's ``"source"``).

    Returns:
      the :func:`sample_quality_record` without a fraction, its ``"caveat"`` ``None``.
    """
    return {**sample_quality_record(None, source=source), "caveat": None}


def _inside_bound(sample_range: Any) -> bool:
    """Whether a recorded ``[min, max]`` lies inside ``[-SAMPLE_BOUND, SAMPLE_BOUND]`` (then no value is outside)."""
    return (
        isinstance(sample_range, (list, tuple))
        and len(sample_range) == 2
        and all(isinstance(v, (int, float)) and math.isfinite(v) for v in sample_range)
        and -SAMPLE_BOUND <= sample_range[0] <= sample_range[1] <= SAMPLE_BOUND
    )


def run_sample_quality(run_dir: str | Path, *, step: int | None = None) -> dict[str, Any]:
    """The recorded sample quality of a ``pifs-jax train`` run (:func:`sample_quality_record`); nothing sampled.

    Reads ``quality.json`` (written when a finished run is scored) and counts the values of
    ``samples.npz``'s ``samples`` (drawn with it) outside ``[-SAMPLE_BOUND, SAMPLE_BOUND]``;
    without ``samples.npz``, a recorded ``sample_range`` inside the bound gives 0. Unknown (the
    caveat :data:`UNKNOWN_QUALITY`) when there is no ``quality.json`` (no samples drawn, or set
    aside in ``stale/`` by a resumed run), it cannot be read, its recorded ``steps`` is not
    ``step`` (the step of the checkpoint analysed: the scores describe another model), or neither
    the samples nor a range inside the bound are recorded.

    Args:
      run_dir: the run's folder.
      step: the training step of the checkpoint analysed; ``None`` (default): the recorded ``steps``
        is not compared.

    Returns:
      the record of :func:`sample_quality_record` (with a ``"note"`` where the files were not used).
    """
    folder = Path(run_dir)
    path = folder / "quality.json"
    if not path.is_file():
        return sample_quality_record(None, source=f"no quality.json in {str(folder)!r} (no samples recorded)")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        recorded_steps = (document.get("config") or {}).get("steps")
        results = document.get("results") or {}
    except (OSError, ValueError, AttributeError) as exc:
        return sample_quality_record(None, source=str(path), note=f"unreadable: {exc}")
    if step is not None and recorded_steps != step:
        return sample_quality_record(
            None,
            source=str(path),
            note=f"it scores the model at step {recorded_steps}, the checkpoint analysed is at step {step}",
        )
    samples_path = folder / "samples.npz"
    if samples_path.is_file():
        try:
            with np.load(samples_path) as recorded:
                samples = np.asarray(recorded["samples"])
        except (OSError, ValueError, KeyError) as exc:
            return sample_quality_record(None, source=str(samples_path), note=f"unreadable: {exc}")
        if samples.size:
            fraction = float(np.mean(~(np.abs(samples) <= SAMPLE_BOUND)))  # NaN counts as outside
            return sample_quality_record(fraction, source=f"{samples_path} (with {path})")
    if _inside_bound(results.get("sample_range")):
        return sample_quality_record(0.0, source=f"{path} (sample_range inside the bound)")
    return sample_quality_record(None, source=str(path), note="no samples.npz, and the recorded range leaves the bound")


def card_sample_quality(card: Mapping[str, Any]) -> dict[str, Any]:
    """The recorded sample quality of a shipped model (:func:`sample_quality_record`) from its card.

    The card's ``quality.held_out.fraction_outside`` (held-out noise seeds), else its
    ``check.fraction_outside`` (both counted outside ``quality.targets.outside_bound``, which must
    be :data:`SAMPLE_BOUND` when given), else a ``quality.sample_range`` inside the bound (0);
    otherwise unknown.

    Args:
      card: the model's card (a mapping, as :func:`pifs_jax.models.pretrained.read_card` reads it).

    Returns:
      the record of :func:`sample_quality_record`, its ``"source"`` naming the card's field.
    """
    name = card.get("name", "?")
    quality = card.get("quality") or {}
    bound = (quality.get("targets") or {}).get("outside_bound", SAMPLE_BOUND)
    if bound != SAMPLE_BOUND:
        return sample_quality_record(
            None, source=f"card of {name}", note=f"its fractions count values outside {bound}, not {SAMPLE_BOUND}"
        )
    for field, entry in (("quality.held_out", quality.get("held_out")), ("check", card.get("check"))):
        if isinstance(entry, Mapping) and entry.get("fraction_outside") is not None:
            return sample_quality_record(entry["fraction_outside"], source=f"card of {name}: {field}.fraction_outside")
    if _inside_bound(quality.get("sample_range")):
        return sample_quality_record(0.0, source=f"card of {name}: quality.sample_range inside the bound")
    return sample_quality_record(None, source=f"card of {name} (no fraction outside the bound recorded)")


def verdict_caveat(result: ModelAnalysis) -> str | None:
    """The caveat every verdict of ``result`` is printed with (:data:`UNKNOWN_QUALITY` without a record), or ``None``.

    Args:
      result: the :class:`ModelAnalysis` of :func:`analyze_model`.

    Returns:
      the record's ``"caveat"`` string, :data:`UNKNOWN_QUALITY` when ``result.sample_quality`` is
      ``None``, or ``None`` for no caveat.
    """
    record = result.sample_quality
    return UNKNOWN_QUALITY if record is None else record.get("caveat")


def marked_verdict(verdict: str, caveat: str | None) -> str:
    """``"holds [caveat]"``: a judged verdict (not *not tested*) with the model's caveat, if any.

    Args:
      verdict: the claim's verdict (e.g. ``"holds"``, ``"not tested"``).
      caveat: the model's caveat (:func:`verdict_caveat`), or ``None``.

    Returns:
      ``"verdict [caveat]"``, or ``verdict`` alone when there is no caveat or it is ``"not tested"``.
    """
    return f"{verdict} [{caveat}]" if caveat and verdict != "not tested" else verdict


def _interval(values: Any, seed: int) -> dict[str, list[float]]:
    """Trajectory mean and bootstrap 95 % interval; the interval is NaN (undefined) below 2 trajectories."""
    mean, lo, hi = bootstrap_mean_interval(values, axis=0, seed=seed)
    if np.shape(values)[0] < 2:  # one trajectory: the bootstrap would give a zero-width interval
        lo = hi = np.full(np.shape(mean), np.nan)
    return {"mean": np.asarray(mean).tolist(), "lo": np.asarray(lo).tolist(), "hi": np.asarray(hi).tolist()}


def _no_interval(trajectories: int) -> str:
    """How an undefined interval (fewer than 2 trajectories) is written."""
    return f"n/a ({trajectories} trajectory)" if trajectories == 1 else f"n/a ({trajectories} trajectories)"


def _ranked_per_step(lam: np.ndarray, per_patch: np.ndarray) -> dict[str, list[float]]:
    pairs = np.array([spearman(lam, row) for row in per_patch], dtype=np.float64)
    return {"rho": pairs[:, 0].tolist(), "p": pairs[:, 1].tolist()}


def summarize_analysis(
    analysis: ChainAnalysis, *, patch_eigenvalues: Any, sched: Schedule, seed: int = 0
) -> dict[str, Any]:
    """Trajectory means with percentile-bootstrap 95 % intervals, and the derived statistics.

    An interval needs at least 2 trajectories: from a single one (``x_T`` of shape
    ``(1, H, W, C)``) every ``"lo"`` and ``"hi"`` is NaN (undefined, written ``"nan"`` in
    ``analysis.json`` and "n/a (1 trajectory)" in :func:`analysis_markdown`), not the zero-width
    interval the bootstrap of one value would give.

    Args:
      analysis: the :class:`~pifs_jax.analysis.chain_analysis.ChainAnalysis` of a batch of
        trajectories (``x_T`` of shape ``(S, H, W, C)``).
      patch_eigenvalues: ``lambda_k``, the patches' leading eigenvalues, ``(M,)`` (read as float64).
      sched: the schedule of the chain (``alpha_bar`` is read at the chain's ``t``).
      seed: the seed of the bootstrap (:func:`~pifs_jax.analysis.statistics.bootstrap_mean_interval`);
        default 0.

    Returns:
      a JSON-able dict (the ``results`` of ``analysis.json``) with the keys

      - ``t``, ``alpha_bar``, ``logsnr``: per step ``(N,)``, chain order; ``trajectories`` ``S``;
        ``num_patches`` ``M``; ``patch_size``; ``image_shape``; ``method`` (block-norm estimator);
      - ``steps``: for each of ``kappa_diag_mean``, ``delta_cross_mean``, ``pc_sum_mean``
        (``kappa_diag_mean + delta_cross_mean``), ``margin_mean``, ``kappa_diag``, ``delta_cross``
        (maxima over patches), ``violations`` and, when measured, ``deviation_norm`` and
        ``attention_entropy`` (the mean over layers): ``{"mean", "lo", "hi"}`` each ``(N,)``;
        ``attention_entropy_per_layer``: ``{layer: {"mean", "lo", "hi"}}``;
      - ``per_patch``: trajectory means ``(N, M)`` of ``kappa_diag``, ``delta_cross``, ``margin``
        and ``suppression`` (``None`` without a baseline);
      - ``patch_eigenvalues``: ``lambda_k`` ``(M,)``;
      - ``release_order``: per step, Spearman ``rho`` and ``p`` of ``(lambda_k, kappa_k)`` and of
        ``(lambda_k, S_{k,t})`` over the patches;
      - ``crossover_window``: ``{"t_upper", "t_lower", "width"}`` or ``None``;
      - ``pc_readings``: the candidate (PC) readings of docs/theory.md section 11, each
        ``{"margin_mean", "violations_mean"}`` per step (``(N,)``, means over trajectories and
        patches) and its ``"crossover_window"``: ``"A"``, ``m_k = 1 - (kappa_k + delta_k)`` (the
        default above), and for deterministic DDIM with a baseline ``"D"``,
        ``m_k = 1 - (f_t(lambda_k) - S_{k,t})``, the suppression-corrected factor along the patch's
        leading direction (``None`` otherwise), and likewise ``"I"``, ``m_k = 1 - sum_j |P_kj|`` with
        ``P_kj = <v_k, [J]_kj v_j>`` the step projected on the patches' leading directions;
      - ``deviation_fit``: OLS of ``log ||Delta_t||`` on ``log sqrt(ab_t)`` over the steps with
        ``logSNR < 0``: ``{"slope", "intercept", "slope_lo", "slope_hi", "r2", "steps",
        "x_range"}`` or ``None`` (fewer than 3 such steps, or no baseline);
      - ``exponents``: ``{"predicted", "measured"}`` ``(S, M)`` and ``"agreement"`` (fraction of
        (patch, trajectory) pairs with equal signs), or ``None`` without a baseline;
      - ``corrected_attractor``: the suppression-corrected Moran threshold ``lambda***`` (over the
        trajectories that have one; ``None`` if none) and Kaplan-Yorke dimension ``d_KY^eff`` (also
        divided by ``n``) of :func:`~pifs_jax.analysis.corrected_attractor`, with intervals, or
        ``None`` (no baseline, or another sampler than deterministic DDIM).

    Raises:
      ArgumentError: naming ``analysis`` when it is not of several trajectories (not batched).
    """
    if not analysis.batched:
        raise ArgumentError("analysis", "expected an analysis of several trajectories (x_T of shape (S, H, W, C))")
    lam = np.asarray(patch_eigenvalues, np.float64)
    t = np.asarray(analysis.t)
    alpha_bar = np.asarray(sched.alpha_bar, np.float64)[t]
    stepwise = {
        "kappa_diag_mean": analysis.kappa_diag_mean,
        "delta_cross_mean": analysis.delta_cross_mean,
        "pc_sum_mean": np.asarray(analysis.kappa_diag_mean, np.float64)
        + np.asarray(analysis.delta_cross_mean, np.float64),
        "margin_mean": analysis.margin_mean,
        "kappa_diag": analysis.kappa_diag,
        "delta_cross": analysis.delta_cross,
        "violations": analysis.violations,
    }
    if analysis.deviation_norm is not None:
        stepwise["deviation_norm"] = analysis.deviation_norm
    per_layer = None
    if analysis.attention_entropy is not None:
        stepwise["attention_entropy"] = np.mean([np.asarray(v) for v in analysis.attention_entropy.values()], axis=0)
        per_layer = {name: _interval(v, seed) for name, v in analysis.attention_entropy.items()}
    kappa_k = np.asarray(analysis.kappa_diag_per_patch, np.float64).mean(axis=0)
    suppression = None if analysis.suppression is None else np.asarray(analysis.suppression, np.float64).mean(axis=0)
    window = crossover_window(t, analysis.violations, analysis.num_patches)
    margins_d = suppression_corrected_margins(analysis)
    fit = exponents = None
    if analysis.deviation_norm is not None:
        high = np.asarray(analysis.logsnr) < 0
        if high.sum() >= 3:
            x = np.log(np.sqrt(alpha_bar[high]))
            y = np.log(np.asarray(analysis.deviation_norm, np.float64).mean(axis=0)[high])
            ols = ols_fit(x, y)
            fit = {
                **ols._asdict(),
                "steps": int(high.sum()),
                "x_range": [float(np.exp(x.min())), float(np.exp(x.max()))],
            }
    attractor = None
    if analysis.suppression is not None:
        predicted, measured = per_patch_exponents(analysis)
        exponents = {
            "predicted": predicted.tolist(),
            "measured": measured.tolist(),
            "agreement": float(np.mean(np.sign(predicted) == np.sign(measured))),
        }
        if analysis.model_free:
            attractor = _attractor_record(corrected_attractor(analysis, lam), analysis, seed)
    return {
        "t": t.tolist(),
        "alpha_bar": alpha_bar.tolist(),
        "logsnr": np.asarray(analysis.logsnr, np.float64).tolist(),
        "trajectories": int(np.shape(analysis.kappa_diag)[0]),
        "num_patches": analysis.num_patches,
        "patch_size": int(analysis.patch_size),
        "image_shape": list(analysis.image_shape),
        "method": analysis.method,
        "steps": {name: _interval(values, seed) for name, values in stepwise.items()},
        "attention_entropy_per_layer": per_layer,
        "per_patch": {
            "kappa_diag": kappa_k.tolist(),
            "delta_cross": np.asarray(analysis.delta_cross_per_patch, np.float64).mean(axis=0).tolist(),
            "margin": np.asarray(analysis.margin_per_patch, np.float64).mean(axis=0).tolist(),
            "suppression": None if suppression is None else suppression.tolist(),
        },
        "patch_eigenvalues": lam.tolist(),
        "release_order": {
            "lambda_kappa": _ranked_per_step(lam, kappa_k),
            "lambda_suppression": None if suppression is None else _ranked_per_step(lam, suppression),
        },
        "crossover_window": _window_record(window),
        "pc_readings": {
            "A": _pc_reading(t, np.asarray(analysis.margin_per_patch, np.float64)),
            "D": None if margins_d is None else _pc_reading(t, margins_d),
            "I": None
            if analysis.projected_coupling is None or not analysis.model_free
            else _pc_reading(t, 1.0 - np.abs(np.asarray(analysis.projected_coupling, np.float64)).sum(axis=-1)),
        },
        "deviation_fit": fit,
        "exponents": exponents,
        "corrected_attractor": attractor,
    }


def _attractor_record(attractor: CorrectedAttractor, analysis: ChainAnalysis, seed: int) -> dict[str, Any]:
    """``lambda***`` over the trajectories where it exists, and ``d_KY^eff`` (also as a fraction of ``n``)."""
    thresholds = np.atleast_1d(attractor.moran_threshold)
    found = thresholds[np.isfinite(thresholds)]
    dimension = np.atleast_1d(attractor.dimension)
    n = int(np.prod(analysis.image_shape))
    return {
        "moran_threshold": _interval(found, seed) if found.size else None,
        "trajectories_with_crossing": int(found.size),
        "expanding_patches_mean": float(np.mean(attractor.expanding_patches)),
        "dimension": _interval(dimension, seed),
        "dimension_fraction": _interval(dimension / n, seed),
        "n": n,
    }


def _window_record(window: tuple[float, float] | None) -> dict[str, float] | None:
    return None if window is None else {"t_upper": window[0], "t_lower": window[1], "width": window[0] - window[1]}


def _pc_reading(t: np.ndarray, margins: np.ndarray) -> dict[str, Any]:
    """One (PC) reading from its per-patch margins ``(S, N, M)``: means per step and its crossover window
    (a patch violates where its margin is negative; :func:`crossover_window` on the counts)."""
    violations = (margins < 0).sum(axis=-1)
    window = crossover_window(t, violations, margins.shape[-1])
    return {
        "margin_mean": margins.mean(axis=(0, 2)).tolist(),
        "violations_mean": violations.mean(axis=0).tolist(),
        "crossover_window": _window_record(window),
    }


def attention_fn_if_any(module: Any, params: Any, image_shape: tuple[int, ...]) -> Callable | None:
    """The attention function of a network with attention layers, else ``None``.

    :func:`~pifs_jax.analysis.module_attention_fn` of a network whose ``return_attention=True`` gives
    at least one attention layer, else ``None`` (checked on shapes only, nothing computed).

    Args:
      module: a Flax module whose ``apply`` accepts ``return_attention=True``.
      params: its parameters.
      image_shape: the shape of one image, ``(H, W, C)``.

    Returns:
      ``attention_fn(x, t)`` (:func:`~pifs_jax.analysis.module_attention_fn`), or ``None`` when the
      network returns no attention layer.
    """
    attention_fn = module_attention_fn(module, params)
    layers = jax.eval_shape(
        attention_fn, jax.ShapeDtypeStruct(tuple(image_shape), jnp.float32), jax.ShapeDtypeStruct((), jnp.int32)
    )
    return attention_fn if layers else None


def analyze_model(
    eps_fn: Callable,
    sched: Schedule,
    train_images: Any,
    *,
    patch_size: int,
    steps: int = 50,
    samples: int = 16,
    seed: int = 0,
    attention_fn: Callable | None = None,
    method: str = "auto",
    mesh: Any = None,
    sampler: Sampler | None = None,
    sample_quality: Mapping[str, Any] | None = None,
    chunk: int | None = None,
    progress: bool = False,
) -> ModelAnalysis:
    """Analyse ``samples`` chains of ``eps_fn`` and judge the paper's claims on them.

    ``x_T ~ N(0, I)`` of shape ``(samples,) + image_shape`` from ``PRNGKey(seed)``; the uniform
    ``steps``-step grid of ``sched`` (:func:`pifs_jax.grids.uniform_grid`); the patch-Gaussian
    baseline and the leading eigenvalues ``lambda_k`` from ``train_images`` (``None``: no
    baseline, the suppression claims are then *not tested*).

    Args:
      eps_fn: the denoiser (a pytree such as ``load_run(...).eps_fn`` compiles once per architecture).
      sched: the schedule the model was trained with.
      train_images: ``(N, H, W, C)`` in the model's input scale, or ``None``.
      patch_size: ``p``, cutting the images into at least :data:`MIN_PATCHES` patches; ``samples``:
        ``S >= 2`` (intervals need more than one); ``steps``: ``N``.
      attention_fn: e.g. :func:`pifs_jax.analysis.module_attention_fn` (``None``: entropy not tested).
      method, mesh, sampler, chunk, progress: passed to :func:`~pifs_jax.analysis.analyze_chain`
        (``sampler`` default ``DDIM()``; for other samplers the DDIM-only predictions are not
        tested; ``chunk`` trajectories per compiled call, Ctrl-C stopping between chunks).
      sample_quality: the model's recorded sample quality (:func:`run_sample_quality`,
        :func:`card_sample_quality`), kept in the result and printed with every verdict; ``None``:
        none recorded (:data:`UNKNOWN_QUALITY`). It does not change the verdicts.
    """
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 2:
        raise ArgumentError("samples", f"expected an integer >= 2 (intervals over trajectories), got {samples!r}")
    if train_images is None:
        raise ArgumentError("train_images", "expected the training images (for the Gaussian baseline and lambda_k)")
    image_shape = tuple(np.shape(train_images)[1:])
    if patch_layout(image_shape, patch_size).num_patches < MIN_PATCHES:
        raise ArgumentError(
            "patch_size",
            f"expected a patch size that cuts the {image_shape[0]}x{image_shape[1]} images into at least "
            f"{MIN_PATCHES} patches (the claims compare each patch with the others), got {patch_size}: one patch",
        )
    stats = patch_stats(np.asarray(train_images, np.float32), patch_size=patch_size)
    x_T = jax.random.normal(jax.random.PRNGKey(seed), (samples, *image_shape))
    grid = uniform_grid(sched.T, steps)
    analysis = analyze_chain(
        eps_fn,
        sched,
        x_T,
        grid=grid,
        patch_size=patch_size,
        baseline=stats,
        attention_fn=attention_fn,
        method=method,
        mesh=mesh,
        sampler=sampler,
        chunk=chunk,
        progress=progress,
    )
    lam = np.asarray(stats.leading_eigenvalue, np.float64)
    summary = summarize_analysis(analysis, patch_eigenvalues=lam, sched=sched, seed=seed)
    summary["sampler"] = sampler_label(DDIM() if sampler is None else sampler)
    claims = evaluate_claims(analysis, patch_eigenvalues=lam, num_timesteps=sched.T)
    record = dict(sample_quality) if sample_quality is not None else sample_quality_record(None, source="none given")
    return ModelAnalysis(analysis, summary, claims, record)


def _nearest_steps(t: np.ndarray, targets: Any) -> list[tuple[int, int]]:
    return [(int(target), int(np.argmin(np.abs(t - target)))) for target in targets]


def _fmt(stats: Mapping[str, Any], i: int, trajectories: int, digits: int = 4) -> str:
    lo, hi = stats["lo"][i], stats["hi"][i]
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return f"{stats['mean'][i]:.{digits}f} [{_no_interval(trajectories)}]"
    return f"{stats['mean'][i]:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def analysis_markdown(result: ModelAnalysis, *, title: str, heading: str = "#") -> str:
    """The claims table and the block decomposition of an analysed model, as Markdown.

    The claims table (claim, paper, ours with interval, verdict) and the block decomposition
    at the timesteps the paper tabulates (nearest step of our grid).

    With a sample-quality caveat (:func:`verdict_caveat`) a line above the table states it and
    every judged verdict carries it (:func:`marked_verdict`).

    Args:
      result: the :class:`ModelAnalysis` of :func:`analyze_model`.
      title: the text of the heading.
      heading: the Markdown heading marker of the title; default ``"#"``.

    Returns:
      the Markdown text, ending with a newline.
    """
    s = result.summary
    n = int(s["trajectories"])
    intervals = "bootstrap 95 % over trajectories" if n >= 2 else _no_interval(n)
    caveat = verdict_caveat(result)
    lines = [
        f"{heading} {title}",
        "",
        f"{n} {'trajectory' if n == 1 else 'trajectories'}, {len(s['t'])} {s.get('sampler', 'DDIM')} steps, "
        f"{s['num_patches']} patches of {s['patch_size']}x{s['patch_size']}, block norms {s['method']}; "
        f"intervals: {intervals} (definitions and verdict rules: docs/theory.md section 11).",
        "",
    ]
    if caveat:
        lines += [
            f"**Caveat: {caveat}.** The verdicts describe this model's chains, which test the paper's claims "
            "only for a model that samples its data; each carries the caveat.",
            "",
        ]
    lines += ["| claim | paper | ours | verdict |", "|---|---|---|---|"]
    lines += [
        f"| {c.name.replace('_', ' ')} | {c.paper} | {c.ours} | **{marked_verdict(c.verdict, caveat)}** |"
        for c in result.claims
    ]
    t = np.asarray(s["t"], np.float64)
    steps = s["steps"]
    lines += [
        "",
        "Block decomposition (patch means; paper: CIFAR-10 DDPM UNet):",
        "",
        "| t (paper) | t (ours) | kappa_diag paper | ours | delta_cross paper | ours | V_t (violating patches) |",
        "|---|---|---|---|---|---|---|",
    ]
    for target, i in _nearest_steps(t, PAPER_VALUES["block_decomposition"]):
        kappa, delta, _ = PAPER_VALUES["block_decomposition"][target]
        lines.append(
            f"| {target} | {t[i]:g} | {kappa} | {_fmt(steps['kappa_diag_mean'], i, n)} | {delta} | "
            f"{_fmt(steps['delta_cross_mean'], i, n)} | {steps['violations']['mean'][i]:.1f} of {s['num_patches']} |"
        )

    def described(window: Mapping[str, float] | None) -> str:
        if window is None:
            return "none"
        return f"t in [{window['t_lower']:g}, {window['t_upper']:g}] (width {window['width']:g})"

    lines += [
        "",
        f"Crossover window under the block-norm reading (A), m_k = 1 - (kappa_k + delta_k): {described(s['crossover_window'])}.",
    ]
    reading_d = (s.get("pc_readings") or {}).get("D")
    if reading_d is not None:
        lines.append(
            "Under the suppression-corrected reading (D) of docs/theory.md section 11, "
            f"m_k = 1 - (f_t(lambda_k) - S_k,t): {described(reading_d['crossover_window'])}."
        )
    attractor = s.get("corrected_attractor")
    if attractor is not None:
        dim = attractor["dimension"]
        threshold = attractor["moran_threshold"]
        lines.append(
            "Suppression-corrected attractor (docs/theory.md section 6): d_KY^eff = "
            f"{dim['mean']:.1f} of n = {attractor['n']}; lambda*** = "
            + ("none (no crossing on any trajectory)" if threshold is None else f"{threshold['mean']:.4g}")
            + f" ({attractor['trajectories_with_crossing']} of {s['trajectories']} trajectories cross)."
        )
    reading_i = (s.get("pc_readings") or {}).get("I")
    if reading_i is not None:
        lines.append(
            "Under the projected-coupling reading (I), m_k = 1 - sum_j |<v_k, [J]_kj v_j>|: "
            f"{described(reading_i['crossover_window'])}."
        )
    return "\n".join(lines) + "\n"


def write_analysis(
    out_dir: str | Path | RunFolder, result: ModelAnalysis, *, title: str, config: Mapping[str, Any], seed: int
) -> list[Path]:
    """Write ``analysis.json``, the figures of :data:`FIGURES` and ``analysis.md`` to ``out_dir``, all or none.

    The files are staged and moved in together (:class:`pifs_jax.run_folder.RunFolder`, policy
    ``"overwrite"``): a kill, a full disk or an error leaves the previous analysis whole, never
    a new ``analysis.json`` beside old figures. A folder in use by another process is refused.

    ``out_dir`` may be a :class:`~pifs_jax.run_folder.RunFolder` the caller holds open (the
    command line holds it for the whole analysis); a path is opened here for the writing only.

    ``analysis.json``'s results carry ``"sample_quality"``: the result's record, or the unknown
    one (:data:`UNKNOWN_QUALITY`) without it.

    Args:
      out_dir: the output folder, or a :class:`~pifs_jax.run_folder.RunFolder` held open.
      result: the :class:`ModelAnalysis` of :func:`analyze_model`.
      title: the title of ``analysis.md`` and the prefix of the figures' titles.
      config: the configuration recorded in ``analysis.json`` (its ``"command"``, if any, is recorded
        in the folder's marker when ``out_dir`` is a path).
      seed: the seed recorded in ``analysis.json``.

    Returns:
      the paths written (:data:`ANALYSIS_FILES` in ``out_dir``, ``analysis.md`` last).

    Raises:
      ArgumentError: from :class:`~pifs_jax.run_folder.RunFolder` when ``out_dir`` is a path that is a
        file or a folder in use by another process.
    """
    record = result.sample_quality
    if record is None:
        record = sample_quality_record(None, source="none given")
    results = {**result.summary, "claims": [c._asdict() for c in result.claims], "sample_quality": record}
    if isinstance(out_dir, RunFolder):
        folder, owned = out_dir, contextlib.nullcontext()
    else:
        folder = RunFolder(out_dir, "overwrite", results=ANALYSIS_FILES, command=config.get("command"))
        owned = folder
    with owned, folder.staged() as stage:
        write_result_json(stage / "analysis.json", results, config=dict(config), seed=seed)
        for name, plot in FIGURES.items():
            save_figure(plot(result.summary, title=f"{title}: " + name[:-4].replace("_", " ")), stage / name)
        atomic_write_text(stage / "analysis.md", analysis_markdown(result, title=title))
    return [folder.out / name for name in ANALYSIS_FILES]


#: Every file :func:`write_analysis` writes, ``analysis.md`` last.
ANALYSIS_FILES = ("analysis.json", *FIGURES, "analysis.md")


def claims_table_rows(results: Mapping[str, ModelAnalysis]) -> list[list[str]]:
    """Rows ``claim | verdict per model`` for several analysed models (same claims, same order).

    Each verdict carries its model's caveat (:func:`marked_verdict`).

    Args:
      results: the analysed models, ``{model name: ModelAnalysis}`` (at least one; all with the same
        claims in the same order).

    Returns:
      one row per claim, ``[claim name, "verdict: ours" per model in the order of results]``.
    """
    names = [c.name for c in next(iter(results.values())).claims]
    caveats = [verdict_caveat(r) for r in results.values()]
    rows = []
    for i, name in enumerate(names):
        rows.append(
            [name.replace("_", " ")]
            + [
                f"{marked_verdict(r.claims[i].verdict, caveat)}: {r.claims[i].ours}"
                for r, caveat in zip(results.values(), caveats, strict=True)
            ]
        )
    return rows

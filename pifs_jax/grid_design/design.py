"""``design_grid``: one entry point for every way of choosing a sampler's timesteps.

- ``"refined"`` (default): the geometric grid's measurement, the best of a few effective orders
  and one sweep of local moves, all judged against the design solver's own fine solution of the
  design seeds (:mod:`pifs_jax.grid_design.refined`): no reference solution beyond the
  measurement's fine grid.
- ``"geometric"``: equal measured work per step (:mod:`pifs_jax.grid_design.geometric`),
  no search on any metric (the geometry's own say); ``"geometric_local"`` the same without the
  chain's measured expansion (the ablation that shows what the geometry adds).
- ``"gradient"``: gradient descent through the solver from the geometric grid
  (:mod:`pifs_jax.grid_design.gradient`); needs the reference solutions of the design seeds.
- ``"gits"``: GITS's dynamic programme (:func:`pifs_jax.grid_design.search.gits_grid`).
- ``"ays"``: Align Your Steps (:mod:`pifs_jax.grid_design.ays`); needs training images ``data``.
- ``"oracle"``: coordinate search on the evaluation metric itself, from the best fixed grid on the
  design seeds (the upper bound of a grid, expensive).
- ``"corrected"``: beyond the grid: a grid plus three fitted scalars per step that correct the
  network's output (:mod:`pifs_jax.grid_design.correction`), fitted from the geometric grid and
  from the best fixed grid on 3/4 of the design seeds, the candidate (either fit, or the best fixed
  grid uncorrected) kept by the last quarter; ``designed.corrections`` holds them and
  :func:`~pifs_jax.grid_design.corrected_denoiser` applies them.
- any fixed grid of :data:`pifs_jax.grid_design.FIXED_GRIDS` (``"time_uniform"``, ``"edm"``, ...).

Every method returns an explicit integer grid (the package's convention) and a record of how it
was made: the method, its options, the seeds, the network evaluations it cost and the seconds.
"""

from __future__ import annotations

import inspect
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from pifs_jax._validation import check_positive_int
from pifs_jax.errors import ArgumentError
from pifs_jax.grid_design.ays import align_your_steps
from pifs_jax.grid_design.correction import (
    StepCorrections,
    corrected_denoiser,
    fit_step_corrections,
    plain_corrections,
)
from pifs_jax.grid_design.evaluation import mean_grid_error, reference_solution
from pifs_jax.grid_design.fixed import FIXED_GRIDS, fixed_grid
from pifs_jax.grid_design.geometric import geometric_grid, measure_geometry
from pifs_jax.grid_design.gradient import gradient_grid
from pifs_jax.grid_design.refined import refined_grid
from pifs_jax.grid_design.search import coordinate_search, gits_grid
from pifs_jax.samplers import DDIM, Sampler, check_sampler, sampler_name
from pifs_jax.schedules import Schedule
from pifs_jax.typing import EpsFn

__all__ = ["DESIGN_METHODS", "DesignedGrid", "design_grid"]

#: The model-based methods (the fixed grids of FIXED_GRIDS are accepted too).
DESIGN_METHODS = ("refined", "geometric", "geometric_local", "gradient", "gits", "ays", "oracle", "corrected")
#: The fixed grids the oracle starts from (the best on the design seeds): those that end at ``T``.
ORACLE_STARTS = ("time_uniform", "quadratic_to_T", "logsnr_uniform", "edm", "kl_optimal")


class DesignedGrid(NamedTuple):
    """A designed grid and how it was made."""

    grid: np.ndarray
    """int64 ``0 = tau_0 < ... < tau_N`` (diffusers ``timesteps=``: :func:`pifs_jax.grid_to_diffusers_timesteps`)."""
    method: str
    """The design method (one of :data:`DESIGN_METHODS` or :data:`~pifs_jax.grid_design.FIXED_GRIDS`)."""
    sampler: str
    """The name of the sampler the grid was designed for."""
    nfe: int
    """Network evaluations of one sample with this grid."""
    network_evaluations: int
    """Network evaluations the design itself cost (forward-equivalents; reverse passes counted as 2)."""
    seconds: float
    """Wall-clock seconds the design took (0 for a fixed grid)."""
    record: dict[str, Any]
    """How the grid was made (method, options, steps, ``T`` and what the method adds), for a report."""
    corrections: StepCorrections | None = None
    """``"corrected"`` only: the per-step scalars; sample with ``corrected_denoiser(eps_fn, corrections)``."""


def _noises(x_T: Any, key: Any, num_design: int, sample_shape: Any) -> jax.Array:
    if x_T is not None:
        x_T = jnp.asarray(x_T)
        if x_T.ndim < 2 or not jnp.issubdtype(x_T.dtype, jnp.floating):
            raise ArgumentError("x_T", f"expected floating design noises of shape (R, ...), got {x_T.dtype}{x_T.shape}")
        return x_T
    if sample_shape is None:
        raise ArgumentError("x_T", "give the design noises x_T (R, ...) or sample_shape to draw them")
    key = jax.random.PRNGKey(0) if key is None else key
    return jax.random.normal(key, (num_design, *tuple(sample_shape)))


def design_grid(
    eps_fn: EpsFn,
    sched: Schedule,
    steps: int,
    *,
    sampler: Sampler | None = None,
    method: str = "refined",
    x_T: Any = None,
    key: jax.Array | None = None,
    sample_shape: Any = None,
    num_design: int = 64,
    data: Any = None,
    options: dict[str, Any] | None = None,
) -> DesignedGrid:
    """Choose the ``steps`` timesteps of ``sampler`` for the model ``eps_fn`` by ``method``.

    Args:
      eps_fn: the denoiser of one sample, ``eps_fn(x, t)``.
      sched: its schedule.
      steps: ``N``, the number of steps (NFE = ``sampler.nfe(N)``).
      sampler: default ``DDIM()``.
      method: one of :data:`DESIGN_METHODS` or :data:`~pifs_jax.grid_design.FIXED_GRIDS`.
      x_T: design noises ``(R,) + sample_shape``; default ``num_design`` normals from ``key`` of ``sample_shape``.
      data: training images ``(B,) + sample_shape`` (``"ays"`` only).
      options: the method's own keywords (e.g. ``{"sweeps": 2}`` or ``{"orders": (1.0,)}`` for
        ``"refined"``, ``{"fine_steps": 100}`` or ``{"error_model": "solver"}`` for ``"geometric"``
        (``ERROR_MODELS``: whose local error places the steps, default DDIM's for every solver),
        ``{"iterations": 60}`` for ``"gradient"``, ``{"coeff": 1.0}`` for ``"gits"``).

    Returns:
      :class:`DesignedGrid`, the grid with its cost and a record of how it was made.

    Raises:
      ArgumentError: naming ``method``, ``steps``, ``sampler``, ``x_T``, ``data`` or an option.
    """
    if not isinstance(sched, Schedule):
        raise ArgumentError("sched", f"expected a pifs_jax Schedule, got {type(sched).__name__}")
    sampler = check_sampler(DDIM() if sampler is None else sampler)
    steps = check_positive_int(steps, name="steps")
    if steps > sched.T:
        raise ArgumentError("steps", f"cannot exceed T = {sched.T}, got {steps}")
    if method not in DESIGN_METHODS and method not in FIXED_GRIDS:
        raise ArgumentError("method", f"unknown method {method!r}; expected one of {DESIGN_METHODS + FIXED_GRIDS}")
    if options is not None and not isinstance(options, dict):
        raise ArgumentError("options", f"expected a dict of the method's keywords, got {type(options).__name__}")
    options = dict(options or {})
    allowed = _method_options(method)
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ArgumentError("options", f"unknown options {unknown} for {method!r}; expected some of {sorted(allowed)}")
    record: dict[str, Any] = {"method": method, "options": dict(options), "steps": steps, "T": sched.T}
    start = time.perf_counter()
    corrections = None
    if method in FIXED_GRIDS:
        grid = fixed_grid(sched, steps, method, **options)
        return DesignedGrid(grid, method, sampler_name(sampler), sampler.nfe(steps), 0, 0.0, record)
    num_design = check_positive_int(num_design, name="num_design")
    noises = _noises(x_T, key, num_design, sample_shape)
    record["design_samples"] = int(noises.shape[0])
    evaluations = 0
    if method == "refined":
        refined = refined_grid(eps_fn, sched, noises, steps, sampler=sampler, **options)
        grid, evaluations = refined.grid, refined.network_evaluations
        record.update(start=refined.start.tolist(), start_name=refined.start_name, start_order=refined.start_order,
                      history=refined.history, start_scores=dict(refined.start_scores))  # fmt: skip
    elif method in ("geometric", "geometric_local"):
        amplification = method == "geometric"
        measure_options = {k: v for k, v in options.items() if k in ("fine_steps", "probes", "key")}
        m = measure_geometry(eps_fn, sched, noises, sampler=_error_model_sampler(options, sampler), **measure_options)
        # the local-error ablation needs no reverse pass: count only the forward chain for it
        evaluations = m.network_evaluations if amplification else int(noises.shape[0] * (len(m.times) - 1))
        grid = geometric_grid(
            m, steps, amplification=amplification, first_step=options.get("first_step", "equal_share")
        )
    elif method == "gits":
        result = gits_grid(eps_fn, sched, steps, noises, **options)
        grid, evaluations = result.grid, result.network_evaluations
        record["coeff"] = options.get("coeff", 1.0)
    elif method == "ays":
        if data is None:
            raise ArgumentError("data", "Align Your Steps needs training images: pass data=(B, ...) images")
        result = align_your_steps(
            eps_fn, sched, steps, data, key=jax.random.PRNGKey(0) if key is None else key, **options
        )
        grid, evaluations = result.grid, result.network_evaluations
    else:  # gradient, oracle, corrected: they judge against the design seeds' reference solutions
        reference_grid = options.pop("reference_grid", None)
        reference = reference_solution(eps_fn, sched, noises, grid=reference_grid)
        evaluations = int(noises.shape[0]) * (sched.T if reference_grid is None else len(reference_grid) - 1)
        if method == "gradient":
            init, cost = _geometric_start(eps_fn, sched, steps, noises, sampler)
            evaluations += cost
            result = gradient_grid(eps_fn, sched, noises, reference, init, sampler=sampler, **options)
            record["init"] = init.tolist()
            record["rounded_losses"] = result.rounded_losses
            grid, evaluations = result.grid, evaluations + result.network_evaluations
        elif method == "corrected":
            grid, corrections, cost, chosen = _corrected_design(
                eps_fn, sched, steps, noises, reference, sampler, options
            )
            evaluations += cost
            record.update(chosen)
        else:
            init = options.pop("init", None)
            if init is None:  # the best of the fixed grids that end at T, judged on the design seeds
                init, cost = _best_fixed_grid(eps_fn, sched, steps, noises, reference, sampler)
                evaluations += cost
            init = np.asarray(init, np.int64)
            result = coordinate_search(eps_fn, sched, noises, reference, init, sampler=sampler, **options)
            record["init"] = init.tolist()
            record["history"] = result.history
            grid, evaluations = result.grid, evaluations + result.network_evaluations
    seconds = time.perf_counter() - start
    return DesignedGrid(
        np.asarray(grid, np.int64), method, sampler_name(sampler), sampler.nfe(steps), int(evaluations), seconds, record,
        corrections,
    )  # fmt: skip


def _keyword_options(function: Any, *passed: str) -> set[str]:
    """The keyword-only parameters of ``function`` less those design_grid passes itself."""
    parameters = inspect.signature(function).parameters.values()
    return {p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY} - set(passed)


def _method_options(method: str) -> set[str]:
    """The names ``options`` may hold for ``method`` (design_grid refuses any other by name)."""
    if method in FIXED_GRIDS:
        return _keyword_options(fixed_grid)
    searched = {
        "gradient": _keyword_options(gradient_grid, "sampler"),
        "corrected": _keyword_options(fit_step_corrections, "sampler"),
        "oracle": _keyword_options(coordinate_search, "sampler") | {"init"},
    }
    if method in searched:
        return searched[method] | {"reference_grid"}
    return {
        "geometric": {"fine_steps", "probes", "key", "first_step", "error_model"},
        "geometric_local": {"fine_steps", "probes", "key", "first_step", "error_model"},
        "refined": _keyword_options(refined_grid, "sampler"),
        "gits": _keyword_options(gits_grid),
        "ays": _keyword_options(align_your_steps, "key"),
    }[method]


def _corrected_design(
    eps_fn: EpsFn, sched: Schedule, steps: int, noises: jax.Array, reference: Any, sampler: Sampler,
    options: dict[str, Any],
) -> tuple[np.ndarray, StepCorrections, int, dict[str, Any]]:  # fmt: skip
    """``method="corrected"``: corrections fitted from two starts, the candidate kept by held-out design seeds.

    The design seeds are split: the last quarter (``R // 4`` of ``R``; all of them when ``R < 4``) is
    held out, the rest fit :func:`fit_step_corrections` from the geometric grid and from the best
    fixed grid. Three candidates, the two fits and the best fixed grid uncorrected, are scored by
    the mean RMSE on the held-out seeds, and the lowest is kept: corrections that only fit the fit
    seeds lose to the plain grid there. Returns the grid, its corrections, the network evaluations
    (starts, fits and scoring) and the record's entries.
    """
    count = int(noises.shape[0])
    held = count // 4 if count >= 4 else 0
    fit_noises, fit_reference = noises[: count - held], reference[: count - held]
    held_noises, held_reference = (noises[count - held :], reference[count - held :]) if held else (noises, reference)
    geometric, evaluations = _geometric_start(eps_fn, sched, steps, noises, sampler)
    fixed, fixed_cost = _best_fixed_grid(eps_fn, sched, steps, noises, reference, sampler)
    evaluations += fixed_cost
    candidates: dict[str, tuple[np.ndarray, StepCorrections]] = {
        "best_fixed_plain": (fixed, plain_corrections(fixed, sched.T))
    }
    starts: dict[str, dict[str, Any]] = {}
    for name, init in (("geometric", geometric), ("best_fixed", fixed)):
        fit = fit_step_corrections(eps_fn, sched, init, fit_noises, fit_reference, sampler=sampler, **options)
        evaluations += fit.network_evaluations
        candidates[name] = (init, fit.corrections)
        starts[name] = {"grid": init.tolist(), "design_loss": min(fit.losses), "plain_loss": fit.losses[0]}
    scores = {
        name: mean_grid_error(
            corrected_denoiser(eps_fn, corr), sched, grid, held_noises, held_reference, sampler=sampler
        )
        for name, (grid, corr) in candidates.items()
    }
    evaluations += len(candidates) * sampler.nfe(steps) * int(held_noises.shape[0])
    kept = min(scores, key=scores.__getitem__)
    grid, corrections = candidates[kept]
    record = {
        "starts": starts,
        "held_out_seeds": held,
        "held_out_rmse": scores,
        "kept": kept,
        "corrections": {k: np.asarray(v).tolist() for k, v in corrections._asdict().items()},
    }
    return grid, corrections, evaluations, record


#: ``options["error_model"]`` of the geometric methods: whose local error places the steps.
ERROR_MODELS = ("first_order", "solver")


def _error_model_sampler(options: dict[str, Any], sampler: Sampler) -> Sampler:
    """The sampler whose local-error model :func:`measure_geometry` uses (docs/theory.md section 12).

    ``"first_order"`` (default): DDIM's (``p = 1``) for every solver: the first derivative of the
    data prediction along the trajectory, the flow's own geometry. ``"solver"``: the solver's own
    order and constant (``p = 2`` for DPM-Solver++(2M) and Heun: finite second derivatives).
    """
    model = options.get("error_model", "first_order")
    if model not in ERROR_MODELS:
        raise ArgumentError("options", f"error_model must be one of {ERROR_MODELS}, got {model!r}")
    return DDIM() if model == "first_order" else sampler


def _geometric_start(
    eps_fn: EpsFn, sched: Schedule, steps: int, noises: jax.Array, sampler: Sampler
) -> tuple[np.ndarray, int]:
    """The default geometric grid from the first 16 design seeds (the start of the searches), and its cost."""
    geo = measure_geometry(eps_fn, sched, noises[: min(16, noises.shape[0])], sampler=_error_model_sampler({}, sampler))
    return geometric_grid(geo, steps), geo.network_evaluations


def _best_fixed_grid(
    eps_fn: EpsFn, sched: Schedule, steps: int, noises: jax.Array, reference: Any, sampler: Sampler
) -> tuple[np.ndarray, int]:
    """The best of the fixed grids of :data:`ORACLE_STARTS` on the design seeds, and the evaluations it cost."""
    candidates = [fixed_grid(sched, steps, kind) for kind in ORACLE_STARTS]
    scores = [mean_grid_error(eps_fn, sched, g, noises, reference, sampler=sampler) for g in candidates]
    cost = len(candidates) * sampler.nfe(steps) * int(noises.shape[0])
    return np.asarray(candidates[int(np.argmin(scores))], np.int64), cost

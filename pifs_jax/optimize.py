"""Schedule and sampling-grid design by gradient descent on the criteria of :mod:`pifs_jax.criteria`.

Three pieces, in the optax style (factories return callables, states are NamedTuples):

- :func:`schedule_family` builds a learnable family with the constraints a practitioner needs
  and the parameters that start it from an existing schedule: ``"spline"``
  (:func:`~pifs_jax.learnable.logsnr_spline`) and ``"network"``
  (:func:`~pifs_jax.learnable.monotone_network`) hold both logSNR end points fixed and are
  monotone for any parameters (so ``alpha_bar_T`` can be fixed exactly through ``logsnr_min``);
  ``"cosine_offset"`` (the offset ``s = exp(log_s) > 0``) and ``"logsnr_shift"`` (a constant shift
  of a base schedule's logSNR) are the two classic one-parameter families. ``T`` is static, so
  the number of training steps is always kept.
- :func:`schedule_objective` returns ``objective(sched) -> (loss, metrics)``: a weighted sum of
  the three criteria, each as a loss term in its natural scale:
  ``weakest_link``: ``-log softmin_t L*_t`` (nats; scale-free, so it mixes with the others),
  ``balanced_growth``: ``CV(Delta d)^2`` (or ``CV(IG)^2``), ``workload``: ``CV(W)^2`` on a
  ``num_steps``-step uniform grid.
- :func:`optimize_schedule` / :func:`optimize_grid` run optax on it. The update (value, gradient,
  optimiser step) is one jitted function, compiled once per problem: objectives are values
  (:class:`ScheduleObjective`), spline families and default Adam optimisers are cached, so a
  repeated or resumed run in the same process compiles nothing. With ``checkpoint_dir`` the
  optimiser state (parameters, optax state, step) and the history are written every
  ``checkpoint_every`` steps and at the end, atomically, and ``resume=True`` continues from the
  last checkpoint: a resumed run reproduces the uninterrupted one bit for bit (same compiled
  update, same inputs).

Checkpoint format: one msgpack file (``flax.serialization``, a dependency already) written
through :func:`pifs_jax.results.atomic_write_bytes` (temporary file, fsync, rename), so an
interruption mid-write leaves the previous checkpoint intact. orbax-checkpoint is not used: it
writes a folder per step with background threads and tensorstore, which buys nothing for a state
of a few kilobytes and adds a dependency; msgpack stores the raw array bytes, so restoring is
exact. The file also holds a fingerprint of the run (state structure, shapes, dtypes, the
objective's settings and the caller's ``run_config``); resuming a different run raises
``ValueError``.

Criterion 3 over the grid (:func:`optimize_grid`): the grid is relaxed to real times
``t_i = last * sum_{j <= i} softmax(logits)_j`` (monotone by construction, ``t_0 = 0``,
``t_N = last``), ``CV(W)^2`` is minimised from the uniform grid, and the result is rounded
(:func:`round_grid`) and polished by +-1 moves that lower the discrete imbalance.

Example:
  >>> family, params = schedule_family("spline", 1000, start=cosine(1000))
  >>> objective = schedule_objective({"weakest_link": 1.0, "balanced_growth": 1.0})
  >>> result = optimize_schedule(family, params, objective, iterations=500, checkpoint_dir="ckpt")
  >>> result.schedule, result.history["loss"][-1]
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from pifs_jax._validation import check_positive_int, describe, is_concrete
from pifs_jax.criteria import WORK_KINDS, cumulative_work, growth_balance, weakest_link, workload
from pifs_jax.grids import uniform_grid
from pifs_jax.learnable import LearnableSchedule, logsnr_spline, monotone_network
from pifs_jax.results import atomic_write_bytes
from pifs_jax.schedules import Schedule, cosine, shift_log_snr

__all__ = [
    "CRITERIA",
    "FAMILIES",
    "GROWTH_MEASURES",
    "criterion_name",
    "schedule_family",
    "fit_to_schedule",
    "schedule_objective",
    "ScheduleObjective",
    "OptimizerState",
    "OptimizeResult",
    "optimize_schedule",
    "GridResult",
    "optimize_grid",
    "round_grid",
    "grid_to_diffusers_timesteps",
    "CHECKPOINT_FILE",
    "save_checkpoint",
    "load_checkpoint",
]

#: The three design criteria (docs/theory.md section 8), as accepted by :func:`schedule_objective`.
CRITERIA = ("weakest_link", "balanced_growth", "workload")
#: Learnable families of :func:`schedule_family`.
FAMILIES = ("spline", "network", "cosine_offset", "logsnr_shift")
#: What criterion 2 balances: ``Delta d_t`` (``"growth"``) or ``IG_t`` (``"information"``).
GROWTH_MEASURES = ("growth", "information")
#: File name of the checkpoint inside ``checkpoint_dir``.
CHECKPOINT_FILE = "optimizer_state.msgpack"

#: Default patch variances and sizes for criterion 2 (one contracting, one expanding 8x8x3 patch).
DEFAULT_VARIANCES = (0.5, 2.0)
DEFAULT_SIZES = (192.0, 192.0)


def criterion_name(name: str) -> str:
    """Canonical criterion name: ``"weakest-link"`` and ``"weakest_link"`` both give ``"weakest_link"``."""
    canonical = str(name).strip().lower().replace("-", "_")
    if canonical not in CRITERIA:
        raise ValueError(
            f"criterion: unknown criterion {name!r}; expected one of {', '.join(c.replace('_', '-') for c in CRITERIA)}"
        )
    return canonical


# ----------------------------------------------------------------------------- families


def _logit(p: float) -> float:
    return math.log(p) - math.log1p(-p)


def fit_to_schedule(
    family: LearnableSchedule, params: Any, target: Schedule, *, iterations: int = 400, learning_rate: float = 0.05
) -> Any:
    """Parameters of ``family`` whose logSNR is closest to ``target``'s (least squares, Adam).

    ``family.fit`` is used when the family has one; otherwise (the monotone network) ``params`` is
    the starting point of ``iterations`` Adam steps on ``mean_t (logSNR_t - logSNR*_t)^2``,
    ``t = 1..T`` (one jitted scan).
    """
    if family.fit is not None:
        return family.fit(target)
    iterations = check_positive_int(iterations, name="iterations")
    goal = jnp.asarray(target.log_snr[1:])
    optimizer = optax.adam(learning_rate)

    def loss(p):
        return jnp.mean((family.apply(p).log_snr[1:] - goal) ** 2)

    def body(carry, _):
        p, state = carry
        grads = jax.grad(loss)(p)
        updates, state = optimizer.update(grads, state, p)
        return (optax.apply_updates(p, updates), state), None

    @jax.jit
    def run(p):
        (p, _), _ = jax.lax.scan(body, (p, optimizer.init(p)), None, length=iterations)
        return p

    return run(params)


@functools.lru_cache(maxsize=32)
def _cached_spline(T: int, n_knots: int, lo: float, hi: float) -> LearnableSchedule:
    """One spline family object per setting, so the optimiser's compiled update is reused."""
    return logsnr_spline(T, n_knots=n_knots, logsnr_min=lo, logsnr_max=hi)


def schedule_family(
    name: str,
    T: int = 1000,
    *,
    start: Schedule | None = None,
    alpha_bar_T: float | None = None,
    logsnr_max: float | None = None,
    n_knots: int = 16,
    hidden: int = 16,
    seed: int = 0,
    dtype=None,
) -> tuple[LearnableSchedule, Any]:
    """A constrained learnable family and the parameters that start it at ``start``.

    Constraints, all by construction (an unconstrained optimiser cannot break them):

    - ``"spline"``, ``"network"``: ``logSNR(0) = logsnr_max`` and ``logSNR(1) = logsnr_min`` fixed,
      monotone. ``logsnr_min = logit(alpha_bar_T)`` when ``alpha_bar_T`` is given (then
      ``alpha_bar_T`` is kept exactly), else ``start``'s terminal logSNR (else -20).
      ``logsnr_max`` defaults to the value that makes the family's first step equal ``start``'s:
      for the spline, the line through ``start``'s logSNR at ``t = 1`` and at the first knot
      (so ``alpha_bar_1``, hence ``L*_1``, is ``start``'s); for the network, the linear
      extrapolation ``2 logSNR_1 - logSNR_2``; without ``start``, 10.
    - ``"cosine_offset"``: ``cosine(T, s)`` with ``s = exp(params["log_s"]) > 0``; starts at ``s = 0.008``.
    - ``"logsnr_shift"``: ``shift_log_snr(start, params["shift"])``; starts at 0 (``start``
      defaults to ``cosine(T)``). Moves both end points; ``alpha_bar_T`` cannot be fixed.

    Args:
      name: one of :data:`FAMILIES`.
      T: number of training steps (kept fixed).
      start: schedule to start from (``spline``: knot fit, ``network``: least-squares fit,
        ``logsnr_shift``: the base); must have ``T`` steps.
      alpha_bar_T: fixed terminal ``alpha_bar_T`` in ``(0, 1)`` (``spline``, ``network`` only).
      logsnr_max: fixed ``logSNR`` at ``t = 0`` (``spline``, ``network``).
      n_knots: spline knots. hidden: network width. seed: network initialisation.
      dtype: parameter dtype (default: ``start``'s, else JAX's default float).

    Returns:
      ``(family, params)``.

    Raises:
      ValueError: unknown ``name``; ``start`` with another ``T``; ``alpha_bar_T`` outside ``(0, 1)``,
        outside the family's range (``logit(alpha_bar_T) >= logsnr_max``) or with a family that
        cannot fix it.
    """
    if name not in FAMILIES:
        raise ValueError(f"name: unknown family {name!r}; expected one of {', '.join(FAMILIES)}")
    T = check_positive_int(T, name="T", minimum=2)
    if start is not None:
        if not isinstance(start, Schedule):
            raise ValueError(f"start: expected a pifs_jax Schedule, got {type(start).__name__}")
        if start.T != T:
            raise ValueError(f"start: has T = {start.T}, but the family has T = {T}")
    dtype = dtype or (start.dtype if start is not None else jnp.result_type(float))
    if alpha_bar_T is not None:
        if name in ("cosine_offset", "logsnr_shift"):
            raise ValueError(
                f"alpha_bar_T: cannot be fixed in the {name!r} family (its terminal value moves with the "
                "parameter); use family 'spline' or 'network'"
            )
        if not (np.isfinite(alpha_bar_T) and 0 < alpha_bar_T < 1):
            raise ValueError(f"alpha_bar_T: must lie in (0, 1), got {alpha_bar_T!r}")

    if name == "cosine_offset":
        family = LearnableSchedule(
            lambda key=None: {"log_s": jnp.asarray(math.log(0.008), dtype)},
            lambda p: cosine(T, s=jnp.exp(p["log_s"])),
        )
        return family, family.init()
    if name == "logsnr_shift":
        base = start if start is not None else cosine(T, dtype=dtype)
        family = LearnableSchedule(
            lambda key=None: {"shift": jnp.zeros((), dtype)}, lambda p: shift_log_snr(base, p["shift"])
        )
        return family, family.init()

    start_log_snr = None if start is None else np.asarray(start.log_snr, dtype=np.float64)
    if alpha_bar_T is not None:
        lo = _logit(float(alpha_bar_T))
    elif start_log_snr is not None:
        lo = float(start_log_snr[-1])
    else:
        lo = -20.0
    if logsnr_max is not None:
        hi = float(logsnr_max)
    elif start_log_snr is not None and name == "spline" and n_knots < T:
        # the first knot interval is linear from logSNR(0) = hi to the start's value at u = 1/K;
        # choose hi so that it passes through the start's logSNR_1 (same first step, same L*_1)
        ratio = n_knots / T
        at_knot = float(np.interp(1.0 / n_knots, np.arange(1, T + 1) / T, start_log_snr[1:]))
        hi = (float(start_log_snr[1]) - ratio * at_knot) / (1.0 - ratio)
    elif start_log_snr is not None:
        hi = float(2 * start_log_snr[1] - start_log_snr[2])
    else:
        hi = 10.0
    if not (np.isfinite(hi) and hi > lo):
        culprit = "alpha_bar_T" if alpha_bar_T is not None else "logsnr_max"
        raise ValueError(
            f"{culprit}: the family needs logSNR_T = {lo:.6g} below logsnr_max = {hi:.6g} "
            f"(alpha_bar_T = {1 / (1 + math.exp(-lo)):.6g} is outside the family's range)"
        )
    if name == "spline":
        family = _cached_spline(T, n_knots, lo, hi)
        params = family.init(dtype=dtype) if start is None else family.fit(start)
    else:
        family = monotone_network(T, hidden=hidden, logsnr_min=lo, logsnr_max=hi)
        params = family.init(jax.random.key(seed), dtype=dtype)
        if start is not None:
            params = fit_to_schedule(family, params, start)
    return family, jax.tree_util.tree_map(lambda v: jnp.asarray(v, dtype), params)


# ----------------------------------------------------------------------------- objectives


def schedule_objective(
    weights: Mapping[str, float],
    *,
    grid: Any = None,
    variances: Any = DEFAULT_VARIANCES,
    sizes: Any = DEFAULT_SIZES,
    temperature: float = 0.05,
    growth_measure: str = "growth",
    num_steps: int = 10,
    work_kind: str = "inverse_threshold",
) -> "ScheduleObjective":
    """A weighted combination of the criteria as a loss to minimise: ``objective(sched) -> (loss, metrics)``.

    ``loss = w_1 (-log softmin_t L*_t) + w_2 CV(Delta d)^2 + w_3 CV(W)^2`` for the criteria named in
    ``weights`` (:data:`CRITERIA`; ``"weakest-link"`` spelling accepted). ``metrics`` holds ``loss``
    and each criterion's readable value: ``weakest_link`` (soft-min ``L*``), ``min_lstar`` (exact
    minimum), ``balanced_growth`` (the CV), ``workload`` (the CV).

    Args:
      weights: criterion -> non-negative finite weight (at least one positive).
      grid: sampling grid for criteria 1 and 2 (``None`` = every training step).
      variances, sizes: patch variances and sizes for criterion 2.
      temperature: soft-min temperature of criterion 1 (nats of ``L*``).
      growth_measure: ``"growth"`` (``Delta d``) or ``"information"`` (``IG``) for criterion 2.
      num_steps: criterion 3 is evaluated on ``uniform_grid(T, num_steps)``.
      work_kind: one of :data:`~pifs_jax.criteria.WORK_KINDS`.

    Returns:
      A :class:`ScheduleObjective`: pure, jittable ``objective(sched)``, equal to any other built
      with the same settings.
    """
    if not isinstance(weights, Mapping) or not weights:
        raise ValueError(f"weights: expected a non-empty mapping criterion -> weight, got {weights!r}")
    canonical: dict[str, float] = {}
    for key, value in weights.items():
        name = criterion_name(key)
        value = float(value)
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"weights: weight of {name!r} must be finite and >= 0, got {value!r}")
        canonical[name] = canonical.get(name, 0.0) + value
    if not any(v > 0 for v in canonical.values()):
        raise ValueError(f"weights: at least one weight must be > 0, got {weights!r}")
    if growth_measure not in GROWTH_MEASURES:
        raise ValueError(f"growth_measure: expected one of {', '.join(GROWTH_MEASURES)}, got {growth_measure!r}")
    if work_kind not in WORK_KINDS:
        raise ValueError(f"work_kind: expected one of {', '.join(WORK_KINDS)}, got {work_kind!r}")
    if not (np.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature: must be finite and > 0, got {temperature!r}")
    num_steps = check_positive_int(num_steps, name="num_steps")
    if "balanced_growth" in canonical:
        lam = np.asarray(variances, dtype=np.float64)
        n = np.asarray(sizes, dtype=np.float64)
        if lam.ndim != 1 or lam.size == 0 or not np.all(np.isfinite(lam)) or np.any(lam < 0):
            raise ValueError(
                f"variances: expected finite non-negative patch variances of shape (m,), got {describe(lam)}"
            )
        if n.shape != lam.shape or not np.all(np.isfinite(n)) or np.any(n <= 0):
            raise ValueError(f"sizes: expected positive patch sizes of shape {lam.shape}, got {describe(n)}")
        variances, sizes = tuple(lam.tolist()), tuple(n.tolist())

    if grid is not None:
        grid = tuple(int(v) for v in np.asarray(grid).tolist())
    return ScheduleObjective(
        tuple(canonical.items()), grid, tuple(float(v) for v in np.ravel(variances)),
        tuple(float(v) for v in np.ravel(sizes)), float(temperature), growth_measure, num_steps, work_kind,
    )


class ScheduleObjective(NamedTuple):
    """The weighted criteria of :func:`schedule_objective` as a value: ``objective(sched) -> (loss, metrics)``.

    A NamedTuple of plain settings, so two objectives built with the same settings compare (and
    hash) equal: the optimiser's compiled update is then reused across runs in one process.
    """

    weights: tuple[tuple[str, float], ...]
    grid: tuple[int, ...] | None
    variances: tuple[float, ...]
    sizes: tuple[float, ...]
    temperature: float
    growth_measure: str
    num_steps: int
    work_kind: str

    def __call__(self, sched: Schedule) -> tuple[jax.Array, dict[str, jax.Array]]:
        weights = dict(self.weights)
        grid = None if self.grid is None else np.asarray(self.grid)
        loss = jnp.zeros((), sched.dtype)
        metrics: dict[str, jax.Array] = {}
        if "weakest_link" in weights:
            wl = weakest_link(sched, grid, temperature=self.temperature)
            loss = loss + weights["weakest_link"] * -jnp.log(wl.soft_min)
            metrics["weakest_link"] = wl.soft_min
            metrics["min_lstar"] = wl.min
        if "balanced_growth" in weights:
            lam = jnp.asarray(self.variances, sched.dtype)
            gb = growth_balance(sched, lam, jnp.asarray(self.sizes, sched.dtype), grid)
            cv = gb.cv_growth if self.growth_measure == "growth" else gb.cv_information
            loss = loss + weights["balanced_growth"] * cv**2
            metrics["balanced_growth"] = cv
        if "workload" in weights:
            wk = workload(sched, uniform_grid(sched.T, self.num_steps), kind=self.work_kind)
            loss = loss + weights["workload"] * wk.cv**2
            metrics["workload"] = wk.cv
        metrics["loss"] = loss
        return loss, metrics


# ----------------------------------------------------------------------------- the loop


class OptimizerState(NamedTuple):
    """Everything an optimisation carries from one step to the next (and into a checkpoint)."""

    params: Any
    opt_state: Any
    step: jax.Array
    """Number of updates applied so far (int32 scalar)."""


def _check_finite_params(params: Any) -> None:
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        if not is_concrete(leaf):
            continue
        arr = np.asarray(leaf)
        if not np.issubdtype(arr.dtype, np.floating):
            raise ValueError(f"params: leaf {jax.tree_util.keystr(path)} must be a float array, got dtype {arr.dtype}")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"params: leaf {jax.tree_util.keystr(path)} has non-finite values: {describe(arr)}")


def _fingerprint(state: OptimizerState, run_config: Any) -> str:
    leaves, treedef = jax.tree_util.tree_flatten(state)
    return json.dumps(
        {
            "tree": str(treedef),
            "leaves": [[list(np.shape(v)), str(np.asarray(v).dtype)] for v in leaves],
            "config": run_config,
        },
        sort_keys=True,
        default=str,
    )


def save_checkpoint(
    path: str | Path, state: OptimizerState, history: Mapping[str, np.ndarray], *, fingerprint: str = ""
) -> Path:
    """Write ``state`` and ``history`` to ``path`` (msgpack), atomically."""
    from flax import serialization

    document = {
        "state": serialization.to_state_dict(jax.device_get(state)),
        "history": {k: np.asarray(v) for k, v in history.items()},
        "fingerprint": fingerprint,
    }
    return atomic_write_bytes(path, serialization.msgpack_serialize(document))


def load_checkpoint(
    path: str | Path, target: OptimizerState, *, fingerprint: str | None = None
) -> tuple[OptimizerState, dict[str, np.ndarray]]:
    """Read a checkpoint written by :func:`save_checkpoint` into the structure of ``target``.

    Raises ``ValueError`` (naming ``resume``) when the file's fingerprint differs from
    ``fingerprint`` (a checkpoint of another run) or the file cannot be read.
    """
    from flax import serialization

    path = Path(path)
    try:
        document = serialization.msgpack_restore(path.read_bytes())
        if not isinstance(document, dict) or "state" not in document:
            raise TypeError("not a pifs_jax optimiser checkpoint")
    except Exception as exc:  # a truncated or foreign file
        raise ValueError(f"resume: cannot read the checkpoint {str(path)!r}: {exc}") from exc
    if fingerprint is not None and document.get("fingerprint") != fingerprint:
        raise ValueError(
            f"resume: the checkpoint {str(path)!r} was written by a different run (other family, "
            "objective, optimiser or settings); remove it or choose another checkpoint_dir"
        )
    try:
        state = serialization.from_state_dict(target, document["state"])
    except Exception as exc:
        raise ValueError(f"resume: the checkpoint {str(path)!r} does not match the optimiser state: {exc}") from exc
    state = jax.tree_util.tree_map(jnp.asarray, state)
    history = {k: np.asarray(v) for k, v in document.get("history", {}).items()}
    return state, history


@functools.partial(jax.jit, static_argnames=("loss_fn", "optimizer"))
def _update(state: OptimizerState, data: Any, *, loss_fn: Callable, optimizer: optax.GradientTransformation):
    """One optimiser step: ``loss_fn(params, data) -> (loss, (metrics, extra))``, its gradient, the update.

    Jitted once per ``(loss_fn, optimizer)`` pair (both static, hashed by identity) and per input
    structure: repeated and resumed runs of the same problem in one process reuse the compiled
    program. ``data`` (e.g. the schedule whose grid is optimised) is a traced argument, so new
    values do not recompile.
    """
    (_, (metrics, extra)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, data)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return OptimizerState(params, opt_state, state.step + 1), metrics, extra


class _Outcome(NamedTuple):
    state: OptimizerState
    history: dict[str, np.ndarray]
    start: int
    initial: tuple[dict[str, float], Any]
    final: tuple[dict[str, float], Any]


def _run(
    loss_fn: Callable[[Any, Any], tuple[jax.Array, tuple[dict[str, jax.Array], Any]]],
    params: Any,
    data: Any,
    *,
    optimizer: optax.GradientTransformation,
    iterations: int,
    checkpoint_dir: str | Path | None,
    checkpoint_every: int,
    resume: bool,
    progress: bool,
    callback: Callable[[int, dict[str, float]], Any] | None,
    run_config: Any,
    description: str,
) -> _Outcome:
    """The optax loop shared by :func:`optimize_schedule` and :func:`optimize_grid`.

    ``loss_fn(params, data) -> (loss, (metrics, extra))``; ``extra`` (the schedule, the grid times)
    is returned for the initial and final parameters. Everything runs through one jitted update
    (:func:`_update`: value, gradient, optimiser step); the initial and final evaluations are
    update calls whose new state is discarded, so a run compiles exactly one program (none when
    the same problem ran before in this process).
    """
    from tqdm import tqdm

    iterations = check_positive_int(iterations, name="iterations", minimum=0)
    checkpoint_every = check_positive_int(checkpoint_every, name="checkpoint_every")
    _check_finite_params(params)
    params = jax.tree_util.tree_map(jnp.asarray, params)

    def update(state: OptimizerState):
        return _update(state, data, loss_fn=loss_fn, optimizer=optimizer)

    def evaluate(state: OptimizerState) -> tuple[dict[str, float], Any]:
        _, metrics, extra = update(state)
        return {k: float(v) for k, v in metrics.items()}, extra

    path = None if checkpoint_dir is None else Path(checkpoint_dir) / CHECKPOINT_FILE
    if resume and path is None:
        raise ValueError("resume: needs checkpoint_dir (where the checkpoint is)")
    initial_state = OptimizerState(params, optimizer.init(params), jnp.zeros((), jnp.int32))
    fingerprint = _fingerprint(initial_state, run_config)
    state = initial_state
    history: dict[str, np.ndarray] = {}
    start = 0
    if resume and path.exists():
        state, history = load_checkpoint(path, state, fingerprint=fingerprint)
        start = int(state.step)
        if start > iterations:
            raise ValueError(f"iterations: the checkpoint is already at step {start}, beyond iterations = {iterations}")
    initial = evaluate(initial_state)
    if not np.isfinite(initial[0]["loss"]):
        raise ValueError(
            f"params: the objective is not finite at the initial parameters (loss = {initial[0]['loss']!r})"
        )

    pending: list[dict[str, jax.Array]] = []

    def flush() -> None:
        if not pending:
            return
        fetched = jax.device_get(pending)
        for key in fetched[0]:
            new = np.asarray([m[key] for m in fetched])
            history[key] = np.concatenate([history[key], new]) if key in history else new
        pending.clear()
        bad = np.flatnonzero(~np.isfinite(history["loss"]))
        if bad.size:
            raise ValueError(
                f"learning_rate: the optimisation diverged (non-finite loss at iteration {int(bad[0])}); "
                "lower learning_rate"
            )

    refresh = max(1, iterations // 100)
    with tqdm(total=iterations, initial=start, disable=not progress, desc=description, leave=False) as bar:
        for step in range(start, iterations):
            state, metrics, _ = update(state)
            pending.append(metrics)
            bar.update(1)
            done = step + 1
            if callback is not None:
                callback(done, {k: float(v) for k, v in metrics.items()})
            if done % refresh == 0 or done == iterations:
                flush()
                bar.set_postfix(loss=f"{history['loss'][-1]:.6g}", refresh=False)
            if path is not None and (done % checkpoint_every == 0 or done == iterations):
                flush()
                save_checkpoint(path, state, history, fingerprint=fingerprint)
        flush()
    if path is not None and not path.exists():
        save_checkpoint(path, state, history, fingerprint=fingerprint)
    final = evaluate(state)
    if not np.isfinite(final[0]["loss"]):
        raise ValueError("learning_rate: the optimisation diverged (non-finite loss at the end); lower learning_rate")
    return _Outcome(state, history, start, initial, final)


@functools.lru_cache(maxsize=64)
def _adam(learning_rate: float) -> optax.GradientTransformation:
    """``optax.adam(learning_rate)``, one object per rate (so the compiled update is reused)."""
    return optax.adam(learning_rate)


def _optimizer(optimizer: optax.GradientTransformation | None, learning_rate: float) -> optax.GradientTransformation:
    if optimizer is not None:
        return optimizer
    if not (np.isfinite(learning_rate) and learning_rate > 0):
        raise ValueError(f"learning_rate: must be finite and > 0, got {learning_rate!r}")
    return _adam(float(learning_rate))


class _ScheduleLoss(NamedTuple):
    """``loss(params, _) = objective(apply(params))``, hashable by its two functions' identities."""

    apply: Callable
    objective: Callable

    def __call__(self, params: Any, data: Any):
        del data
        sched = self.apply(params)
        loss, metrics = self.objective(sched)
        return loss, ({**metrics, "loss": loss}, sched)


class _GridLoss(NamedTuple):
    """``loss(logits, sched) = CV(W)^2`` of the relaxed grid; hashable (static settings only)."""

    last: int
    kind: str

    def __call__(self, logits: jax.Array, sched: Schedule):
        times = _grid_times(logits, self.last)
        cv = workload(sched, times, kind=self.kind).cv
        return cv**2, ({"loss": cv**2, "workload": cv}, times)


class OptimizeResult(NamedTuple):
    """Outcome of :func:`optimize_schedule`.

    Attributes:
      schedule: the optimised schedule ``family.apply(params)``.
      params: the optimised parameters.
      initial_schedule: ``family.apply`` of the starting parameters.
      initial: the objective's metrics at the start (floats).
      final: the objective's metrics at the end (floats).
      history: per iteration (before its update): ``loss`` and each metric, arrays of shape ``(iterations,)``.
      state: the final :class:`OptimizerState` (what the checkpoint holds).
      resumed_from: the step the run resumed from (0 for a fresh run).
    """

    schedule: Schedule
    params: Any
    initial_schedule: Schedule
    initial: dict[str, float]
    final: dict[str, float]
    history: dict[str, np.ndarray]
    state: OptimizerState
    resumed_from: int


def optimize_schedule(
    family: LearnableSchedule,
    params: Any,
    objective: Callable[[Schedule], tuple[jax.Array, dict[str, jax.Array]]],
    *,
    iterations: int = 500,
    learning_rate: float = 1e-2,
    optimizer: optax.GradientTransformation | None = None,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 100,
    resume: bool = False,
    progress: bool = True,
    callback: Callable[[int, dict[str, float]], Any] | None = None,
    run_config: Any = None,
) -> OptimizeResult:
    """Minimise ``objective(family.apply(params))`` over ``params`` with optax.

    Args:
      family: a :class:`~pifs_jax.learnable.LearnableSchedule` (:func:`schedule_family`).
      params: starting parameters (finite floats).
      objective: ``objective(sched) -> (loss, metrics)`` (:func:`schedule_objective`).
      iterations: total number of updates (a resumed run continues up to it).
      learning_rate: Adam's step size (ignored when ``optimizer`` is given).
      optimizer: any optax ``GradientTransformation`` (default ``optax.adam(learning_rate)``).
      checkpoint_dir: folder for the checkpoint :data:`CHECKPOINT_FILE` (``None``: no checkpoints).
      checkpoint_every: write it every this many updates, and at the end.
      resume: continue from the checkpoint in ``checkpoint_dir`` if there is one.
      progress: show a tqdm progress bar with the current loss.
      callback: ``callback(step, metrics)`` after every update (forces a device sync per step).
      run_config: JSON-able description of the run, stored in the checkpoint's fingerprint; a
        resume with another ``run_config`` is refused.

    Returns:
      :class:`OptimizeResult`.

    Raises:
      ValueError: non-finite ``params``, a non-finite objective at the start, bad
        ``iterations``/``learning_rate``/``checkpoint_every``, an incompatible checkpoint
        (``resume``), or divergence (non-finite loss; names ``learning_rate``).
    """
    if not isinstance(family, LearnableSchedule):
        raise ValueError(f"family: expected a LearnableSchedule (see schedule_family), got {type(family).__name__}")
    optimizer = _optimizer(optimizer, learning_rate)

    outcome = _run(
        _ScheduleLoss(family.apply, objective),
        params,
        None,
        optimizer=optimizer,
        iterations=iterations,
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=checkpoint_every,
        resume=resume,
        progress=progress,
        callback=callback,
        run_config={
            "run_config": run_config,
            "objective": objective if isinstance(objective, ScheduleObjective) else None,
        },
        description="optimize schedule",
    )
    (initial, initial_schedule), (final, schedule) = outcome.initial, outcome.final
    return OptimizeResult(
        schedule,
        outcome.state.params,
        initial_schedule,
        initial,
        final,
        outcome.history,
        outcome.state,
        outcome.start,
    )


# ----------------------------------------------------------------------------- sampling grids


def round_grid(times: Any, *, last: int | None = None) -> np.ndarray:
    """Round real grid times to strictly increasing integers ``0 = tau_0 < ... < tau_N = last``.

    Each ``t_i`` is rounded to the nearest integer, then collisions are pushed apart: upwards
    (``tau_i >= tau_{i-1} + 1``) and then downwards from ``tau_N = last`` (``tau_i <= tau_{i+1} - 1``),
    which always succeeds when ``N <= last``.

    Args:
      times: shape ``(N+1,)``, increasing, ``t_0 = 0``.
      last: ``tau_N`` (default ``round(t_N)``).

    Returns:
      ``int64`` array of shape ``(N+1,)``.
    """
    t = np.asarray(times, dtype=np.float64)
    if t.ndim != 1 or t.shape[0] < 2 or not np.all(np.isfinite(t)):
        raise ValueError(f"times: expected finite times of shape (N+1,) with N >= 1, got {describe(t)}")
    n = t.shape[0] - 1
    last = int(round(t[-1])) if last is None else int(last)
    if n > last:
        raise ValueError(f"num_steps: {n} steps cannot fit strictly increasing integers in 0..{last}")
    tau = np.rint(t).astype(np.int64)
    tau[0], tau[-1] = 0, last
    for i in range(1, n):
        tau[i] = max(tau[i], tau[i - 1] + 1)
    for i in range(n - 1, 0, -1):
        tau[i] = min(tau[i], tau[i + 1] - 1)
    return tau


def grid_to_diffusers_timesteps(grid: Any) -> np.ndarray:
    """This package's grid ``0 = tau_0 < ... < tau_N`` as diffusers' descending timestep list.

    diffusers' timestep ``k`` is this package's ``k + 1`` (and its final step lands on
    ``alpha_bar = 1``, our ``tau_0``): the list is ``tau_N - 1, ..., tau_1 - 1``. The inverse of
    :func:`pifs_jax.grids.grid_from_diffusers_timesteps`.
    """
    g = np.asarray(grid)
    if g.ndim != 1 or g.shape[0] < 2 or g[0] != 0 or np.any(np.diff(g) <= 0):
        raise ValueError(f"grid: expected 0 = tau_0 < tau_1 < ... < tau_N, got {describe(g)}")
    return (g[1:] - 1)[::-1].astype(np.int64)


class GridResult(NamedTuple):
    """Outcome of :func:`optimize_grid`.

    Attributes:
      grid: integer timesteps ``0 = tau_0 < ... < tau_N = last`` (this package's indexing).
      diffusers_timesteps: the same steps as diffusers' descending list (``tau - 1``).
      times: the optimised continuous times before rounding, shape ``(N+1,)``.
      relaxed_cv: the relaxed criterion at ``times``.
      cv: the discrete criterion ``CV(W)`` of ``grid``.
      work: per-step work of ``grid``, shape ``(N,)``.
      initial_cv: ``CV(W)`` of the uniform starting grid ``uniform_grid(last, N)``.
      history: per iteration: ``loss`` (``CV^2``) and ``workload`` (``CV``).
      state: the final :class:`OptimizerState`.
    """

    grid: np.ndarray
    diffusers_timesteps: np.ndarray
    times: np.ndarray
    relaxed_cv: float
    cv: float
    work: np.ndarray
    initial_cv: float
    history: dict[str, np.ndarray]
    state: OptimizerState


def _grid_times(logits: jax.Array, last: int) -> jax.Array:
    fractions = jnp.cumsum(jax.nn.softmax(logits))
    return jnp.concatenate([jnp.zeros((1,), logits.dtype), last * fractions]).at[-1].set(last)


def _digest(sched: Schedule) -> str:
    """A short fingerprint of a concrete schedule's values (for checkpoint fingerprints)."""
    import hashlib

    data = np.ascontiguousarray(np.asarray(sched.log_alpha_bar, np.float64)).tobytes()
    return hashlib.sha256(data).hexdigest()[:16]


def _polish(cumulative: np.ndarray, grid: np.ndarray, max_sweeps: int = 50) -> np.ndarray:
    """Coordinate descent on the discrete ``CV(W)``: move interior points by +-1 while it drops.

    ``cumulative`` is ``W(t)`` at ``t = 0..T`` (float64); the end points stay fixed.
    """

    def cv(g):
        w = np.diff(cumulative[g])
        return np.std(w) / np.mean(w)

    grid = grid.copy()
    best = cv(grid)
    for _ in range(max_sweeps):
        improved = False
        for i in range(1, len(grid) - 1):
            for move in (-1, 1):
                candidate = grid[i] + move
                if grid[i - 1] < candidate < grid[i + 1]:
                    trial = grid.copy()
                    trial[i] = candidate
                    value = cv(trial)
                    if value < best:
                        grid, best, improved = trial, value, True
        if not improved:
            break
    return grid


def optimize_grid(
    sched: Schedule,
    num_steps: int,
    *,
    last: int | None = None,
    kind: str = "inverse_threshold",
    iterations: int = 300,
    learning_rate: float = 0.1,
    optimizer: optax.GradientTransformation | None = None,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 100,
    resume: bool = False,
    progress: bool = False,
) -> GridResult:
    """Criterion 3 over the sampling grid: integer timesteps that balance the contraction work.

    Minimises ``CV(W)^2`` (:func:`pifs_jax.criteria.workload`) over real times
    ``t_i = last * sum_{j<=i} softmax(logits)_j`` (``t_0 = 0``, ``t_N = last``, increasing by
    construction) with optax from the uniform grid, then rounds (:func:`round_grid`) and polishes
    the integers by +-1 moves that lower the discrete ``CV(W)``. The continuous optimum is
    :func:`~pifs_jax.criteria.equal_work_times`.

    Args:
      sched: the schedule (fixed).
      num_steps: ``N``, at most ``last``.
      last: ``tau_N`` (default ``T``; diffusers' 999 is our 1000).
      kind: work definition, one of :data:`~pifs_jax.criteria.WORK_KINDS`.
      iterations, learning_rate, optimizer, checkpoint_dir, checkpoint_every, resume, progress:
        as in :func:`optimize_schedule`.

    Returns:
      :class:`GridResult` with ``grid`` strictly increasing ``int64`` in ``[0, last]``.
    """
    if not isinstance(sched, Schedule):
        raise ValueError(f"sched: expected a pifs_jax Schedule, got {type(sched).__name__}")
    num_steps = check_positive_int(num_steps, name="num_steps")
    last = sched.T if last is None else check_positive_int(last, name="last")
    if last > sched.T:
        raise ValueError(f"last: must not exceed the schedule's T = {sched.T}, got {last}")
    if num_steps > last:
        raise ValueError(f"num_steps: cannot exceed the {last} training steps up to last = {last}, got {num_steps}")
    if kind not in WORK_KINDS:
        raise ValueError(f"kind: unknown work definition {kind!r}; expected one of {', '.join(WORK_KINDS)}")
    optimizer = _optimizer(optimizer, learning_rate)

    outcome = _run(
        _GridLoss(last, kind),
        jnp.zeros((num_steps,), sched.dtype),
        sched,
        optimizer=optimizer,
        iterations=iterations,
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=checkpoint_every,
        resume=resume,
        progress=progress,
        callback=None,
        run_config={"num_steps": num_steps, "last": last, "kind": kind, "T": sched.T, "schedule": _digest(sched)},
        description="optimize grid",
    )
    (initial, _), (final, times) = outcome.initial, outcome.final
    cumulative = np.asarray(jax.jit(cumulative_work, static_argnames="kind")(sched, kind=kind), np.float64)
    grid = _polish(cumulative, round_grid(np.asarray(times, np.float64), last=last))
    work = np.diff(cumulative[grid])
    return GridResult(
        grid,
        grid_to_diffusers_timesteps(grid),
        np.asarray(times, np.float64),
        final["workload"],
        float(np.std(work) / np.mean(work)),
        work,
        initial["workload"],
        outcome.history,
        outcome.state,
    )

"""The optax engine of schedule and grid optimisation: state, compiled update, checkpoints, run.

The update (value, gradient, optimiser step) is one jitted function (:func:`update_step`),
compiled once per problem: loss functions and default Adam optimisers are hashable values, so a
repeated or resumed run in the same process compiles nothing. The iterations run in
:func:`pifs_jax.loop.run_loop`; with ``checkpoint_dir`` the state and the history are written to
``<checkpoint_dir>/checkpoint.msgpack`` in the package's one checkpoint format
(:mod:`pifs_jax.checkpoint`), and a resumed run reproduces the uninterrupted one bit for bit.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from pifs_jax import checkpoint as ckpt
from pifs_jax._validation import check_positive_int, describe, is_concrete
from pifs_jax.errors import ArgumentError
from pifs_jax.loop import Checkpointing, run_loop

__all__ = [
    "CHECKPOINT_FILE",
    "Diverged",
    "OptimizerState",
    "Outcome",
    "check_checkpoint_dir",
    "compiled_update_count",
    "default_optimizer",
    "load_checkpoint",
    "run_optimization",
    "save_checkpoint",
    "update_step",
]

#: File name of the checkpoint inside ``checkpoint_dir`` (:data:`pifs_jax.checkpoint.CHECKPOINT_NAME`).
CHECKPOINT_FILE = ckpt.CHECKPOINT_NAME


class OptimizerState(NamedTuple):
    """Everything an optimisation carries from one step to the next (and into a checkpoint)."""

    params: Any
    """The parameters being optimised (a pytree)."""
    opt_state: Any
    """The optax optimiser's state."""
    step: jax.Array
    """Number of updates applied so far (int32 scalar)."""


def _contents(state: OptimizerState, history: Mapping[str, np.ndarray]) -> dict[str, Any]:
    step = int(np.asarray(state.step))
    return {"step": state.step, "state": state, "history": {k: np.asarray(v)[:step] for k, v in history.items()}}


def save_checkpoint(
    path: str | Path, state: OptimizerState, history: Mapping[str, np.ndarray], *, config: Mapping[str, Any]
) -> Path:
    """Write ``state`` and ``history`` to ``path`` with :func:`pifs_jax.checkpoint.save_checkpoint`.

    The write is atomic and the file sha256-checked; of ``history`` (per-iteration metrics) the
    first ``state.step`` entries are kept.

    Args:
      path: the checkpoint file.
      state: the optimiser state.
      history: metric name -> per-iteration values, at least ``state.step`` of them.
      config: JSON-able mapping identifying the run.

    Returns:
      the path written.
    """
    return ckpt.save_checkpoint(path, _contents(state, history), config=config)


def load_checkpoint(
    path: str | Path, target: OptimizerState, *, config: Mapping[str, Any]
) -> tuple[OptimizerState, dict[str, np.ndarray]]:
    """Read a checkpoint written by :func:`save_checkpoint` into the structure of ``target``.

    Args:
      path: the checkpoint file.
      target: an optimiser state of the expected structure, shapes and dtypes (not modified).
      config: the configuration the checkpoint must have been written with.

    Returns:
      ``(state, history)``: the restored :class:`OptimizerState` and metric name -> NumPy array of
      the stored step's length.

    Raises:
      ArgumentError: (``resume``) a missing, truncated, corrupted or foreign file, a checkpoint
        written with another ``config`` (the differing fields are named) or of another state
        structure; the message names the file and the problem.
    """
    try:
        header, raw = ckpt.read_checkpoint(path, config=config)
        stored = raw.get("history") if isinstance(raw, dict) else None
        if not isinstance(stored, dict):
            raise ArgumentError("checkpoint", f"{str(path)!r} holds no optimiser history (not an optimiser checkpoint)")
        step = int(header["step"])
        for key, values in stored.items():
            if np.shape(values) != (step,):
                raise ArgumentError(
                    "checkpoint",
                    f"{str(path)!r} is corrupted: history {key!r} has shape {np.shape(values)}, not ({step},)",
                )
        target_history = {k: np.zeros((step,), np.asarray(v).dtype) for k, v in stored.items()}
        loaded = ckpt.load_checkpoint(
            path, {"step": target.step, "state": target, "history": target_history}, config=config
        )
    except ArgumentError as err:
        raise ArgumentError("resume", f"{err.detail}; remove it or choose another checkpoint_dir") from None
    return loaded["state"], {k: np.asarray(v) for k, v in loaded["history"].items()}


@functools.partial(jax.jit, static_argnames=("loss_fn", "optimizer"))
def update_step(state: OptimizerState, data: Any, *, loss_fn: Callable, optimizer: optax.GradientTransformation):
    """One optimiser step: ``loss_fn(params, data) -> (loss, (metrics, extra))``, its gradient, the update.

    Jitted once per ``(loss_fn, optimizer)`` pair (both static, hashed by value or identity) and per
    input structure. ``data`` (e.g. the schedule whose grid is optimised) is a traced argument, so
    new values do not recompile.

    Args:
      state: the optimiser state before the step.
      data: the loss's other input (traced).
      loss_fn: ``loss_fn(params, data) -> (loss, (metrics, extra))``, differentiated in ``params``
        (static).
      optimizer: the optax optimiser (static).

    Returns:
      ``(new_state, metrics, extra)``: the state after the update (``step`` incremented), and the
      metrics and ``extra`` of ``loss_fn`` at the parameters before it.
    """
    (_, (metrics, extra)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, data)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return OptimizerState(params, opt_state, state.step + 1), metrics, extra


def compiled_update_count() -> int:
    """Number of programs :func:`update_step` has compiled in this process (one per problem)."""
    return update_step._cache_size()  # pyright: ignore[reportAttributeAccessIssue]  # jit's private cache counter, not in its stub


@functools.lru_cache(maxsize=64)
def _adam(learning_rate: float) -> optax.GradientTransformation:
    """``optax.adam(learning_rate)``, one object per rate (so the compiled update is reused)."""
    return optax.adam(learning_rate)


def default_optimizer(
    optimizer: optax.GradientTransformation | None, learning_rate: float
) -> tuple[optax.GradientTransformation, dict[str, Any]]:
    """``optimizer``, or Adam at ``learning_rate`` (cached per rate); and its description for the checkpoint.

    The learning rate is not part of the description (so not of a run's identity): Adam's state
    (step count, first and second moments) does not depend on it, and a run may be resumed with
    another rate, e.g. a diverged run from its last finite iterate with a smaller one.

    Args:
      optimizer: an optax optimiser, or ``None`` for Adam.
      learning_rate: Adam's learning rate (checked only when ``optimizer`` is ``None``).

    Returns:
      ``(optimizer, description)``: the optimiser and ``{"name": "custom"}`` for a given one,
      ``{"name": "adam"}`` for the default.

    Raises:
      ArgumentError: naming ``learning_rate`` when it is not finite and positive (Adam only).
    """
    if optimizer is not None:
        return optimizer, {"name": "custom"}
    if not (np.isfinite(learning_rate) and learning_rate > 0):
        raise ArgumentError("learning_rate", f"must be finite and > 0, got {learning_rate!r}")
    return _adam(float(learning_rate)), {"name": "adam"}


def _check_finite_params(params: Any) -> None:
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        if not is_concrete(leaf):
            continue
        arr = np.asarray(leaf)
        if not np.issubdtype(arr.dtype, np.floating):
            raise ArgumentError(
                "params", f"leaf {jax.tree_util.keystr(path)} must be a float array, got dtype {arr.dtype}"
            )
        if not np.all(np.isfinite(arr)):
            raise ArgumentError("params", f"leaf {jax.tree_util.keystr(path)} has non-finite values: {describe(arr)}")


class Outcome(NamedTuple):
    """What :func:`run_optimization` returns."""

    state: OptimizerState
    history: dict[str, np.ndarray]
    start: int
    """The step the run resumed from (0 for a fresh run)."""
    initial: tuple[dict[str, float], Any]
    """Metrics (floats) and ``extra`` at the starting parameters."""
    final: tuple[dict[str, float], Any]
    """Metrics (floats) and ``extra`` at the final parameters."""


def check_checkpoint_dir(checkpoint_dir: str | Path | None) -> Path | None:
    """``checkpoint_dir`` as a ``Path`` after checking that it is, or can become, a folder.

    Args:
      checkpoint_dir: the folder (need not exist yet; nothing is created), or ``None``.

    Returns:
      the folder as a :class:`~pathlib.Path`, or ``None`` for ``None``.

    Raises:
      ArgumentError: (``checkpoint_dir``) it, or the nearest existing folder above it, is a file.
    """
    if checkpoint_dir is None:
        return None
    folder = Path(checkpoint_dir)
    if folder.exists() and not folder.is_dir():
        raise ArgumentError("checkpoint_dir", f"{str(folder)!r} is an existing file, expected a folder")
    ancestor = folder.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if ancestor.exists() and not ancestor.is_dir():
        raise ArgumentError("checkpoint_dir", f"cannot create {str(folder)!r}: {str(ancestor)!r} is a file")
    return folder


class Diverged(ArgumentError):
    """The optimisation reached a non-finite objective (argument ``learning_rate``).

    Attributes:
      iteration: the first iteration whose objective is not finite (the iterate after that many updates).
      last_finite: ``(iteration, loss)`` of the last finite objective, or ``None``.
      checkpoint: the checkpoint that holds the last finite iterate, or ``None`` (no ``checkpoint_dir``).
    """

    def __init__(self, iteration: int, last_finite: tuple[int, float] | None, checkpoint: Path | None):
        self.iteration = iteration
        self.last_finite = last_finite
        self.checkpoint = checkpoint
        detail = f"the optimisation diverged at iteration {iteration} (non-finite objective or invalid schedule)"
        if last_finite is not None:
            detail += f"; last finite objective {last_finite[1]:.6g} at iteration {last_finite[0]}"
        if checkpoint is not None and last_finite is not None:
            detail += f"; {str(checkpoint)!r} holds that iterate (resume from it with a smaller learning rate)"
        super().__init__("learning_rate", detail + "; try a smaller learning_rate")


def run_optimization(
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
    config: Mapping[str, Any],
    description: str,
) -> Outcome:
    """Minimise ``loss_fn(params, data)`` with ``optimizer`` for ``iterations`` updates (or up to them, resumed).

    ``loss_fn(params, data) -> (loss, (metrics, extra))``; ``extra`` (the schedule, the grid times)
    is returned for the initial and final parameters. The initial and final evaluations are
    :func:`update_step` calls whose new state is discarded, so a run compiles exactly one program.
    ``config`` (JSON-able) identifies the run in the checkpoint; resuming with another is refused
    naming the fields that differ. ``checkpoint_dir`` is checked (:func:`check_checkpoint_dir`)
    before any evaluation.

    Divergence: the first iteration whose loss is not finite raises :class:`Diverged` (naming
    ``learning_rate``, the iteration and the last finite loss); with ``checkpoint_dir`` the
    checkpoint is first rewritten to hold the last iterate with a finite loss (the states since
    the last report are kept for this), so a resume with a smaller learning rate continues there.

    Args:
      loss_fn: ``loss_fn(params, data) -> (loss, (metrics, extra))``, hashable (a static argument of
        :func:`update_step`); ``metrics`` maps names to scalars and includes ``"loss"``.
      params: the starting parameters, a pytree of finite float arrays.
      data: the loss's other input (traced: new values do not recompile).
      optimizer: the optax optimiser (e.g. from :func:`default_optimizer`).
      iterations: the total number of updates (``>= 0``), counting those of a resumed run.
      checkpoint_dir: the folder of the checkpoint (:data:`CHECKPOINT_FILE`), or ``None`` for none.
      checkpoint_every: updates between checkpoints (and one after the last).
      resume: continue from the checkpoint in ``checkpoint_dir`` when it exists (else start fresh).
      progress: show a progress bar.
      callback: ``callback(step, metrics)`` after every update, or ``None``.
      config: JSON-able mapping identifying the run, stored in the checkpoint.
      description: the progress bar's label.

    Returns:
      :class:`Outcome`: the final state, the history (metric name -> per-iteration values), the
      step the run started from, and the metrics and ``extra`` at the initial and final parameters.

    Raises:
      ArgumentError: naming ``iterations`` (negative, or below the checkpoint's step),
        ``checkpoint_every``, ``checkpoint_dir``, ``params`` (a non-float or non-finite leaf, or a
        non-finite objective at the start) or ``resume`` (no ``checkpoint_dir``, or a checkpoint
        :func:`load_checkpoint` refuses).
      Diverged: (``learning_rate``) the objective became non-finite.
      WriteError: a checkpoint could not be written (:meth:`pifs_jax.loop.Checkpointing.save`).
    """
    iterations = check_positive_int(iterations, name="iterations", minimum=0)
    checkpoint_every = check_positive_int(checkpoint_every, name="checkpoint_every")
    checkpoint_dir = check_checkpoint_dir(checkpoint_dir)
    _check_finite_params(params)
    params = jax.tree_util.tree_map(jnp.asarray, params)

    def update(state: OptimizerState):
        return update_step(state, data, loss_fn=loss_fn, optimizer=optimizer)

    def evaluate(state: OptimizerState) -> tuple[dict[str, float], Any]:
        _, metrics, extra = update(state)
        return {k: float(v) for k, v in metrics.items()}, extra

    path = None if checkpoint_dir is None else checkpoint_dir / CHECKPOINT_FILE
    if resume and path is None:
        raise ArgumentError("resume", "needs checkpoint_dir (where the checkpoint is)")
    state = OptimizerState(params, optimizer.init(params), jnp.zeros((), jnp.int32))
    _, initial_metrics, initial_extra = update(state)
    dtypes = {k: np.asarray(v).dtype for k, v in initial_metrics.items()}
    initial = ({k: float(v) for k, v in initial_metrics.items()}, initial_extra)
    history = {k: np.zeros((0,), dtype) for k, dtype in dtypes.items()}
    start = 0
    if resume and path is not None and path.exists():
        state, history = load_checkpoint(path, state, config=config)
        start = int(state.step)
        if start > iterations:
            raise ArgumentError(
                "iterations", f"the checkpoint is already at step {start}, beyond iterations = {iterations}"
            )
    if not np.isfinite(initial[0]["loss"]):
        raise ArgumentError(
            "params", f"the objective is not finite at the initial parameters (loss = {initial[0]['loss']!r})"
        )

    # the states since the last report, by number of updates, so that a divergence can save the
    # last iterate whose objective was finite
    recent: dict[int, OptimizerState] = {start: state}

    def diverge(iteration: int) -> Diverged:
        """Checkpoint the iterate before ``iteration`` (its objective was finite) and build the error."""
        good = iteration - 1
        last_finite = None
        if good >= 0 and len(history["loss"]) >= good + 1:
            last_finite = (good, float(history["loss"][good]))
        saved = None
        if path is not None and good >= start and good in recent:
            saved = save_checkpoint(path, recent[good], history, config=config)
        recent.clear()
        return Diverged(iteration, last_finite, saved if last_finite is not None else None)

    def record(records: list[tuple[int, dict[str, float]]]) -> None:
        # record (k, metrics): the objective at iteration k - 1 (the iterate after k - 1 updates)
        finite = []
        for _done, values in records:
            if not np.isfinite(values["loss"]):
                break
            finite.append(values)
        for key, dtype in dtypes.items():
            new = np.asarray([values[key] for values in finite], dtype)
            history[key] = np.concatenate([history[key], new])
        if len(finite) < len(records):
            raise diverge(records[len(finite)][0] - 1)
        last_good = records[-1][0] - 1
        for k in [k for k in recent if k < last_good]:
            del recent[k]

    updates_applied = [start]

    def step(state: OptimizerState):
        new_state, metrics, _ = update(state)
        updates_applied[0] += 1
        recent[updates_applied[0]] = new_state
        return new_state, metrics

    checkpointing = None
    if path is not None:
        checkpointing = Checkpointing(path, checkpoint_every, config, lambda s: _contents(s, history))
    state = run_loop(
        step,
        state,
        start=start,
        stop=iterations,
        checkpoint=checkpointing,
        report_every=max(1, iterations // 100),
        on_report=record,
        callback=callback,
        watch=(),  # divergence is detected by ``record``, which keeps the finite records before it
        progress=progress,
        description=description,
    )
    final = evaluate(state)
    if not np.isfinite(final[0]["loss"]):
        raise diverge(iterations)
    return Outcome(state, history, start, initial, final)

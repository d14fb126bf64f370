"""The training loop: optimiser, state, compiled step, metrics log and :func:`train`.

**Optimiser**: optax AdamW after global-norm clipping, learning rate with linear warm-up and
cosine (or constant) decay; EMA weights ``ema <- d_k ema + (1 - d_k) params`` with the warmed-up
decay ``d_k = min(d, (1 + k)/(10 + k))``.

**Determinism**: every random draw of step ``k`` comes from ``fold_in(key, k)`` with ``key``
derived from the seed, never from a stateful iterator; the batch indices, ``t``, ``eps`` and the
probes of step ``k`` are therefore the same whether or not the run was interrupted before ``k``,
and ``resume`` from a checkpoint (:mod:`pifs_jax.checkpoint`) reproduces an uninterrupted run
bit for bit. The steps run in :func:`pifs_jax.loop.run_loop`.

**Extending a run**: resuming with a larger ``steps`` than the checkpoint was written with
continues a finished (or killed) run to the new length (:attr:`TrainConfig.EXTENSIBLE`). The
steps already taken are kept bit for bit; the learning-rate schedule (warm-up, then cosine decay
to 0 at ``steps``) is recomputed for the new length, so the learning rate, 0 at the old end, rises
again, and the result differs from a run started with the larger ``steps``.

**Data parallel** (``TrainConfig.devices > 1``, or several processes): the same step with the
batch split over a ``data`` mesh axis and the state replicated
(:mod:`~pifs_jax.models.training.parallel`); equal to the single-device trajectory up to the
summation order of the batch reductions, with the same checkpoint file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from pifs_jax._validation import check_positive_int
from pifs_jax.checkpoint import (
    CHECKPOINT_NAME,
    load_checkpoint,
    read_checkpoint,
    read_checkpoint_header,
    remove_partial_writes,
    write_error,
)
from pifs_jax.errors import ArgumentError
from pifs_jax.grids import uniform_grid
from pifs_jax.loop import Checkpointing, run_loop
from pifs_jax.models.common import EpsModule, init_params
from pifs_jax.models.specs import ModelSpec
from pifs_jax.models.training.config import LR_DECAYS, TrainConfig
from pifs_jax.models.training.evaluation import evaluate_run, plot_metrics_log
from pifs_jax.models.training.losses import ApplyFn, LossTables, denoising_loss, loss_tables, module_apply_fn
from pifs_jax.models.training.parallel import check_devices, data_mesh, replicate, split_batch
from pifs_jax.patches import patch_layout
from pifs_jax.results import atomic_write_text, to_jsonable
from pifs_jax.schedules import named_schedule

__all__ = [
    "RUN_FILES",
    "STALE_DIR",
    "TRAIN_STEP_CACHE_SIZE",
    "TrainResult",
    "TrainState",
    "batch_indices",
    "init_train_state",
    "initial_train_state",
    "initial_train_state_shapes",
    "load_train_test",
    "make_optimizer",
    "make_train_step",
    "model_for_config",
    "optimizer_settings",
    "read_metrics_log",
    "recorded_config",
    "resume_identity",
    "train",
    "train_step_for",
]

#: The subfolder of a run where a resumed run moves the samples and scores of the step it
#: continues from, as ``stale/step-<step>/`` (:func:`train`).
STALE_DIR = "stale"

#: What :func:`train` writes into its output folder (a fresh run removes the old ones first).
RUN_FILES = (
    "config.json",
    "metrics.jsonl",
    CHECKPOINT_NAME,
    "loss.png",
    "samples.png",
    "samples_empirical.png",
    "samples.npz",
    "quality.json",
    STALE_DIR,
)


def make_optimizer(
    *,
    lr: float,
    steps: int,
    warmup_steps: int = 0,
    lr_decay: str = "cosine",
    weight_decay: float = 0.0,
    grad_clip: float | None = 1.0,
) -> optax.GradientTransformation:
    """Global-norm clipping then AdamW with warm-up + cosine (or constant) learning rate.

    ``lr_k = lr k / warmup`` for ``k < warmup``; then ``lr`` (constant) or
    ``lr (1 + cos(pi (k - warmup)/(steps - warmup)))/2`` (cosine, reaching 0 at ``steps``).

    Args:
      lr: the peak learning rate.
      steps: the number of training steps.
      warmup_steps: the linear warm-up's steps (at most ``steps``); default 0.
      lr_decay: ``"cosine"`` (default) or ``"constant"`` (:data:`LR_DECAYS`).
      weight_decay: AdamW's weight decay; default 0.
      grad_clip: the global-norm clip; ``None`` or 0: no clipping; default 1.

    Returns:
      the optax ``GradientTransformation``.

    Raises:
      ArgumentError: naming ``lr_decay`` when it is not one of :data:`LR_DECAYS`.
    """
    warmup_steps = min(warmup_steps, steps)
    if lr_decay == "cosine":
        schedule = optax.warmup_cosine_decay_schedule(0.0, lr, warmup_steps, max(steps, warmup_steps + 1), 0.0)
    elif lr_decay == "constant":
        schedule = optax.join_schedules(
            [optax.linear_schedule(0.0, lr, max(warmup_steps, 1)), optax.constant_schedule(lr)], [warmup_steps]
        )
    else:
        raise ArgumentError("lr_decay", f"expected one of {', '.join(LR_DECAYS)}, got {lr_decay!r}")
    parts = [optax.clip_by_global_norm(grad_clip)] if grad_clip else []
    parts.append(optax.adamw(schedule, weight_decay=weight_decay))
    return optax.chain(*parts)


class TrainState(NamedTuple):
    """Everything a training step reads and writes (a pytree; what a checkpoint holds)."""

    step: jax.Array
    """Number of steps taken (int32 scalar)."""
    params: Any
    ema_params: Any
    opt_state: Any
    key: jax.Array
    """The run's base PRNG key (raw uint32 ``(2,)``); step ``k`` uses ``fold_in(key, k)``."""


def init_train_state(params: Any, optimizer: optax.GradientTransformation, key: jax.Array) -> TrainState:
    """Step 0: EMA = params, fresh optimiser state.

    Args:
      params: the initial parameters.
      optimizer: the optax optimiser (:func:`make_optimizer`).
      key: the run's base PRNG key.

    Returns:
      :class:`TrainState` with ``step = 0`` (int32), ``params``, a copy of them as ``ema_params``,
      ``optimizer.init(params)`` and ``key``.
    """
    return TrainState(
        jnp.zeros((), jnp.int32), params, jax.tree_util.tree_map(jnp.array, params), optimizer.init(params), key
    )


def batch_indices(key: jax.Array, step: Any, *, batch_size: int, num_data: int) -> jax.Array:
    """Indices of step ``step``'s batch: ``randint(fold_in(fold_in(key, step), 0), (B,), 0, N)``.

    A pure function of ``(key, step)``: resuming at step ``k`` sees exactly the batches of an
    uninterrupted run.

    Args:
      key: the run's base PRNG key.
      step: the step number (an integer, may be traced).
      batch_size: ``B``.
      num_data: ``N``, the size of the training set.

    Returns:
      the indices, an integer ``jax.Array`` ``(B,)`` in ``0..N-1`` (drawn with replacement).
    """
    return jax.random.randint(jax.random.fold_in(jax.random.fold_in(key, step), 0), (batch_size,), 0, num_data)


def make_train_step(
    apply_fn: ApplyFn,
    optimizer: optax.GradientTransformation,
    tables: LossTables,
    *,
    batch_size: int,
    ema_decay: float,
    mu: float = 0.0,
    patch_size: int | None = None,
    probes: int = 1,
    mesh: Mesh | None = None,
) -> Callable[[TrainState, jax.Array], tuple[TrainState, dict[str, jax.Array]]]:
    """A jitted ``step(state, data) -> (state, metrics)``; compiles once per data shape.

    ``data`` is the whole training set ``(N, H, W, C)`` (an argument, not a baked-in constant);
    the batch is ``data[batch_indices(state.key, state.step)]`` and the loss key
    ``fold_in(fold_in(key, step), 1)``. Metrics: those of :func:`denoising_loss` plus the
    gradient's global norm (``grad_norm``).

    With ``mesh`` (:func:`~pifs_jax.models.training.parallel.data_mesh`): data parallel. The
    batch is split over the mesh's ``"data"`` axis
    (:func:`~pifs_jax.models.training.parallel.split_batch`) and the new state and the metrics
    are replicated (``out_shardings``); ``state`` and ``data`` should be replicated on the mesh
    (:func:`~pifs_jax.models.training.parallel.replicate`). The gradient's mean over the batch
    is then an all-reduce across devices.

    Args:
      apply_fn: ``apply_fn(params, x, t) -> eps`` (e.g.
        :func:`~pifs_jax.models.training.losses.module_apply_fn`).
      optimizer: the optax optimiser (:func:`make_optimizer`).
      tables: the loss tables (:func:`~pifs_jax.models.training.losses.loss_tables`).
      batch_size: ``B``, the images per step.
      ema_decay: the EMA's decay; at step ``k`` the decay used is ``min(ema_decay, (1 + k) / (10 + k))``.
      mu: the cross-block regulariser's weight; default 0.
      patch_size: the regulariser's patch size; default ``None``.
      probes: the regulariser's probes; default 1.
      mesh: the data-parallel mesh; ``None`` (default): one device.

    Returns:
      the jitted ``step(state, data) -> (state, metrics)``.
    """

    def step(state: TrainState, data: jax.Array):
        idx = batch_indices(state.key, state.step, batch_size=batch_size, num_data=data.shape[0])
        loss_key = jax.random.fold_in(jax.random.fold_in(state.key, state.step), 1)
        batch = data[idx] if mesh is None else split_batch(data[idx], mesh)
        grads, metrics = jax.grad(denoising_loss, has_aux=True)(
            state.params, apply_fn, batch, loss_key, tables, mu=mu, patch_size=patch_size, probes=probes
        )
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        k = state.step.astype(jnp.float32)
        decay = jnp.minimum(ema_decay, (1 + k) / (10 + k))
        ema = jax.tree_util.tree_map(
            lambda e, p: (decay * e + (1 - decay) * p).astype(p.dtype), state.ema_params, params
        )
        metrics = {**metrics, "grad_norm": optax.tree.norm(grads)}
        return TrainState(state.step + 1, params, ema, opt_state, state.key), metrics

    if mesh is None:
        return jax.jit(step)
    return jax.jit(step, out_shardings=NamedSharding(mesh, PartitionSpec()))


def train_step_for(
    module: Any, config: TrainConfig, *, patch_size: int, mesh: Mesh | None = None
) -> Callable[[TrainState, jax.Array], tuple[TrainState, dict[str, jax.Array]]]:
    """:func:`make_train_step` for ``module`` under ``config``, built once per key and then reused.

    The key: the module (linen modules are hashable dataclasses, equal when their fields are), the
    optimiser's settings (``lr``, ``steps``, ``warmup_steps``, ``lr_decay``, ``weight_decay``,
    ``grad_clip``: :func:`make_optimizer`), the loss tables' (``schedule``, ``T``, ``weighting``,
    ``min_snr_gamma``, ``sample_steps``: :func:`~pifs_jax.models.training.losses.loss_tables`),
    ``batch_size``, ``ema_decay``, ``mu``, ``patch_size``, ``probes`` and the mesh. ``jax.jit``
    caches its compilations on the step function, so a second :func:`train` with the same key
    compiles no new step. The :data:`TRAIN_STEP_CACHE_SIZE` most recent keys are kept; a module that
    cannot be hashed gets a new step each time.

    Args:
      module: the network (a linen module).
      config: the training configuration.
      patch_size: the regulariser's patch size.
      mesh: the data-parallel mesh; ``None`` (default): one device.

    Returns:
      the jitted ``step(state, data) -> (state, metrics)`` of :func:`make_train_step`.
    """
    key = (
        module,
        optimizer_settings(config),
        (config.schedule, config.T, config.weighting, config.min_snr_gamma, config.sample_steps),
        (config.batch_size, config.ema_decay, config.mu, patch_size, config.probes, mesh),
    )
    try:
        hash(key)
    except TypeError:
        return _build_train_step(*key)
    return _cached_train_step(*key)


#: How many training steps :func:`train_step_for` keeps (with their compiled programs).
TRAIN_STEP_CACHE_SIZE = 8


def _build_train_step(module: Any, optimizer_key: tuple, table_settings: tuple, step_settings: tuple):
    optimizer = _optimizer(optimizer_key)
    schedule, T, weighting, gamma, sample_steps = table_settings
    tables = loss_tables(
        named_schedule(schedule, T), weighting=weighting, gamma=gamma, grid=uniform_grid(T, sample_steps)
    )
    batch_size, ema_decay, mu, patch_size, probes, mesh = step_settings
    return make_train_step(
        module_apply_fn(module), optimizer, tables, batch_size=batch_size, ema_decay=ema_decay, mu=mu,
        patch_size=patch_size, probes=probes, mesh=mesh,
    )  # fmt: skip


_cached_train_step = functools.lru_cache(maxsize=TRAIN_STEP_CACHE_SIZE)(_build_train_step)


# ============================================================================ metrics log


@contextlib.contextmanager
def _writing(path: Path, checkpoint: Path):
    """Turn an ``OSError`` of the writes inside into a :class:`~pifs_jax.errors.WriteError` (checkpoint state named)."""
    try:
        yield
    except OSError as exc:
        raise write_error(exc, exc.filename or path, checkpoint) from exc


def _append_line(path: Path, record: Mapping[str, Any]) -> None:
    """Append one JSON line with a single ``write`` on an ``O_APPEND`` descriptor."""
    line = (json.dumps(to_jsonable(dict(record)), allow_nan=False) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def read_metrics_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a JSON-lines metrics log; an incomplete last line (a killed writer) is skipped.

    Lines that are not valid JSON are skipped too.

    Args:
      path: the log file (``metrics.jsonl``).

    Returns:
      the records in file order, one dict per complete line; ``[]`` when the file does not exist.
    """
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
        if not line.endswith("\n"):
            break
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def _trim_metrics_log(path: Path, step: int) -> None:
    """Keep the records with ``step <= step`` (atomic rewrite), dropping what a killed run logged later."""
    if path.exists():
        kept = [r for r in read_metrics_log(path) if int(r.get("step", 0)) <= step]
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))


# ============================================================================ the run


class TrainResult(NamedTuple):
    """What :func:`train` leaves behind."""

    state: TrainState
    config: TrainConfig
    out_dir: Path
    seconds: float
    """Wall time of the training loop in this process (compilation included)."""
    quality: dict[str, Any] | None
    """:func:`pifs_jax.models.quality.quality_report` of the EMA samples (``None`` if not evaluated)."""


def load_train_test(config: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """The run's training and test images (float32): ``num_train`` and ``num_test`` images of ``data``.

    :func:`pifs_jax.data.load_dataset`'s train and test splits (disjoint photo regions, or the
    digit sets), drawn with ``fold_in(PRNGKey(data_seed), 0)`` and ``fold_in(..., 1)``.

    Args:
      config: the training configuration (its ``data``, ``data_seed``, ``num_train`` and ``num_test``).

    Returns:
      ``(train_images, test_images)``, float32 NumPy arrays ``(num_train, H, W, C)`` and
      ``(num_test, H, W, C)``.
    """
    from pifs_jax.data import load_dataset

    key = jax.random.PRNGKey(config.data_seed)
    train_images = load_dataset(config.data, jax.random.fold_in(key, 0), config.num_train, split="train")
    test_images = load_dataset(config.data, jax.random.fold_in(key, 1), config.num_test, split="test")
    return np.asarray(train_images, np.float32), np.asarray(test_images, np.float32)


def model_for_config(config: TrainConfig, image_shape: Sequence[int]) -> tuple[EpsModule, Callable[[jax.Array], Any]]:
    """``(module, init_fn(key) -> params)`` of ``config``'s architecture (:meth:`TrainConfig.model_spec`).

    ``module = config.model_spec().build(image_shape)``, ``init_fn = init_params(module, key, image_shape)``.

    Args:
      config: the training configuration.
      image_shape: ``(H, W, C)`` of the training images.

    Returns:
      ``(module, init_fn)``; the same ``init_fn`` for equal (hashable) modules and shapes.

    Raises:
      ArgumentError: an unrecorded (``model = None``) or unregistered architecture, or one that
        does not fit ``image_shape``.
    """
    module = config.model_spec().build(image_shape)
    try:
        return module, _cached_module_init(module, tuple(image_shape))
    except TypeError:  # an unhashable module
        return module, _module_init(module, tuple(image_shape))


def _module_init(module: EpsModule, image_shape: tuple[int, ...]) -> Callable[[jax.Array], Any]:
    """``init_fn(key) = init_params(module, key, image_shape)`` (cached: one function per (module, shape))."""

    def init(key):
        return init_params(module, key, image_shape)

    return init


_cached_module_init = functools.lru_cache(maxsize=TRAIN_STEP_CACHE_SIZE)(_module_init)


def recorded_config(config: TrainConfig, model: ModelSpec | tuple[Any, Any] | None) -> TrainConfig:
    """The config a run records for ``model`` (:func:`train`'s argument).

    - ``None``: ``config`` as it is (its own architecture, :meth:`TrainConfig.model_spec`).
    - a :class:`~pifs_jax.models.ModelSpec`: recorded field by field (:meth:`TrainConfig.with_spec`),
      so :func:`~pifs_jax.models.training.load_run` rebuilds it.
    - ``(module, init_fn)``: not recorded (``model = None`` in ``config.json``): such a run trains
      but cannot be reloaded.

    Args:
      config: the training configuration.
      model: ``None``, a :class:`~pifs_jax.models.ModelSpec`, or a ``(module, init_fn)`` pair.

    Returns:
      the :class:`TrainConfig` to record.

    Raises:
      ArgumentError: naming ``model`` when it is none of these.
    """
    if model is None:
        return config
    if isinstance(model, ModelSpec):
        return config.with_spec(model)
    if not (isinstance(model, tuple) and len(model) == 2):
        raise ArgumentError("model", f"expected a ModelSpec or a (module, init_fn) pair, got {type(model).__name__}")
    return dataclasses.replace(config, model=None, size=None, architecture=None)


def initial_train_state(
    config: TrainConfig, init_fn: Callable[[jax.Array], Any]
) -> tuple[optax.GradientTransformation, TrainState]:
    """The optimiser and step-0 state of ``config`` (initialisation key and run key from the seed).

    The state is built by one jitted program per ``(init_fn, optimiser settings)`` (kept for the
    :data:`TRAIN_STEP_CACHE_SIZE` most recent; ``init_fn`` compared by identity, and
    :func:`model_for_config` returns the same ``init_fn`` for equal modules and shapes), so another
    seed, or a second :func:`train` of the same model, compiles nothing new.

    Args:
      config: the training configuration (its optimiser settings and ``seed``).
      init_fn: ``init_fn(key) -> params`` (:func:`model_for_config`).

    Returns:
      ``(optimizer, state)``: the optax optimiser and the step-0 :class:`TrainState`.
    """
    settings = optimizer_settings(config)
    try:
        hash(init_fn)
    except TypeError:
        return _state_builder(init_fn, settings)(np.uint32(config.seed))
    return _cached_state_builder(init_fn, settings)(np.uint32(config.seed))


def optimizer_settings(config: TrainConfig) -> tuple:
    """What :func:`make_optimizer` takes from ``config``.

    Args:
      config: the training configuration.

    Returns:
      ``(lr, steps, warmup_steps, lr_decay, weight_decay, grad_clip)``.
    """
    return (config.lr, config.steps, config.warmup_steps, config.lr_decay, config.weight_decay, config.grad_clip)


def _optimizer(settings: tuple) -> optax.GradientTransformation:
    lr, steps, warmup_steps, lr_decay, weight_decay, grad_clip = settings
    return make_optimizer(
        lr=lr, steps=steps, warmup_steps=warmup_steps, lr_decay=lr_decay, weight_decay=weight_decay, grad_clip=grad_clip
    )


def _build_state(init_fn: Callable[[jax.Array], Any], optimizer: optax.GradientTransformation, seed: Any) -> TrainState:
    """The step-0 state: parameters from the initialisation key, the run key, both split from ``seed``."""
    init_key, run_key = jax.random.split(jax.random.PRNGKey(seed))
    return init_train_state(init_fn(init_key), optimizer, run_key)


def _state_builder(init_fn: Callable[[jax.Array], Any], settings: tuple):
    """``build(seed) -> (optimizer, state)``: one compilation instead of one per eager operation."""
    optimizer = _optimizer(settings)
    build = jax.jit(functools.partial(_build_state, init_fn, optimizer))
    return lambda seed: (optimizer, build(seed))


def initial_train_state_shapes(config: TrainConfig, init_fn: Callable[[jax.Array], Any]) -> TrainState:
    """The structure, shapes and dtypes of :func:`initial_train_state`'s state, with nothing compiled or run.

    ``jax.ShapeDtypeStruct`` leaves (``jax.eval_shape``): the target a checkpoint is checked
    against and loaded into (:func:`pifs_jax.checkpoint.load_checkpoint`) when the values of the
    step-0 state are not needed, as in :func:`~pifs_jax.models.training.load_run`.

    Args:
      config: the training configuration (its optimiser settings and ``seed``).
      init_fn: ``init_fn(key) -> params`` (:func:`model_for_config`).

    Returns:
      a :class:`TrainState` of ``jax.ShapeDtypeStruct`` leaves.
    """
    optimizer = _optimizer(optimizer_settings(config))
    return jax.eval_shape(functools.partial(_build_state, init_fn, optimizer), np.uint32(config.seed))


_cached_state_builder = functools.lru_cache(maxsize=TRAIN_STEP_CACHE_SIZE)(_state_builder)


def resume_identity(config: TrainConfig, ckpt_path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """The identity a checkpoint must carry to be resumed as ``config``, and the extended fields ``{name: old value}``.

    ``config.identity()``, except that a field of :attr:`TrainConfig.EXTENSIBLE` (``steps``)
    whose value in the checkpoint is smaller than ``config``'s takes the checkpoint's value:
    extending a run. A larger value in the checkpoint (shortening) still differs and is refused.

    Args:
      config: the requested run.
      ckpt_path: its checkpoint (the header is read and checked: a missing, truncated or
        corrupted file raises :class:`~pifs_jax.errors.ArgumentError`).

    Returns:
      ``(identity, extended)``: the mapping to pass as ``config=`` to
      :func:`pifs_jax.checkpoint.load_checkpoint`, and e.g. ``{"steps": 4000}`` when extending.
    """
    saved = read_checkpoint_header(ckpt_path).get("config", {})
    identity = config.identity()
    extended = {}
    for name in config.EXTENSIBLE:
        old = saved.get(name)
        if isinstance(old, int) and not isinstance(old, bool) and old < identity[name]:
            extended[name] = old
    return {**identity, **extended}, extended


def _train(
    config: TrainConfig,
    out_dir: str | os.PathLike,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    evaluate: bool = True,
    callback: Callable[[int, dict[str, float]], None] | None = None,
    model: ModelSpec | tuple[Any, Callable[[jax.Array], Any]] | None = None,
    dataset: tuple[Any, Any] | None = None,
    stop_at: int | None = None,
    folder: Any = None,
) -> TrainResult:
    """Train, checkpoint, log, and (optionally) sample and score the EMA model.

    Writes to ``out_dir``: ``config.json``; ``metrics.jsonl`` (one JSON line per ``log_every``
    steps: step, objective, loss, mse, reg, grad_norm, images/s, time; appended, trimmed on
    resume to the checkpoint's step); ``checkpoint.msgpack`` every ``checkpoint_every`` steps
    and at the end (atomic); ``loss.png`` (the logged loss and eps-MSE over the steps); with
    ``evaluate``: ``samples.npz`` (the raw samples), ``samples.png`` (EMA model,
    ``sample_steps``-step DDIM from ``N(0, I)``, clipped to ``[-1, 1]`` for display only),
    ``samples_empirical.png`` and ``quality.json`` (:func:`pifs_jax.models.quality.quality_report`,
    the empirical-optimal denoiser's samples from the same ``x_T`` as the memorisation reference;
    :func:`~pifs_jax.models.training.evaluation.evaluate_run`).

    A resumed run that will take steps first moves the samples and scores of the step it
    continues from (with the ``loss.png`` drawn with them) into ``stale/step-<S>/``
    (:data:`STALE_DIR`; ``S`` the step they describe: the ``steps`` recorded in their
    ``quality.json``, else the checkpoint's), before the checkpoint changes: a run killed later
    never leaves them beside a checkpoint of another step, and they are kept. A run that completes
    writes fresh ones; ``overwrite`` deletes ``stale/`` with the rest of the old run.

    Args:
      config: the run (resolved with :meth:`TrainConfig.resolved`).
      out_dir: output folder.
      resume: continue from ``out_dir``'s checkpoint (bit-exact); without it an existing run is
        an error (nothing is overwritten), and so is ``resume`` without a checkpoint. The folder
        follows the output-folder policy of :class:`pifs_jax.run_folder.RunFolder` (a lock, an
        in-progress marker; the samples, scores and ``loss.png`` staged and moved in together).
        A checkpoint written with a smaller ``steps`` is extended to ``config.steps`` (module
        notes: bit-exact for the steps already taken, the learning-rate schedule recomputed).
      overwrite: start afresh over an existing run in ``out_dir`` (its :data:`RUN_FILES` are
        deleted first); not with ``resume``.
      progress: tqdm progress bars (training, then sampling and scoring).
      evaluate: sample and score at the end.
      callback: ``callback(step, metrics)`` after every step (host side; e.g. plotting, tests).
      model: the architecture instead of ``config``'s (:func:`recorded_config`): a registered
        :class:`~pifs_jax.models.ModelSpec`, recorded in ``config.json`` so that
        :func:`~pifs_jax.models.training.load_run` rebuilds it, or ``(module, init_fn(key) ->
        params)``, trained but not recorded (``"model": null``; the run cannot be reloaded).
      dataset: ``(train, test)`` image arrays instead of :func:`pifs_jax.data.load_dataset`.
      stop_at: train only up to this step (``1 <= stop_at <= steps``) and checkpoint there: one
        piece of the run, which ``resume=True`` continues exactly (the learning-rate schedule is
        the run's own, planned for ``steps``). A stopped run is not sampled or scored; its
        ``loss.png`` is written and :func:`~pifs_jax.models.training.load_run` loads it.

    The steps run in :func:`pifs_jax.loop.run_loop`: a ``KeyboardInterrupt`` saves the last
    completed step before it propagates.

    Data parallel (``config.devices > 1``, :mod:`~pifs_jax.models.training.parallel`): the batch
    is split over the first ``devices`` devices, the state replicated; the checkpoint is the same
    file as for a single-device run (the replicated state fetched to the host). Several processes
    (after :func:`pifs_jax.sharding.initialize_processes`): ``devices`` must be every device of
    every process, every process calls :func:`train` with the same arguments and ``out_dir`` on a
    file system they share (a resumed run reads the checkpoint in every process), and only
    process 0 writes (config, log, checkpoints, figures, samples and scores); the others return
    ``quality=None``. In both cases the returned state is replicated on the mesh's devices
    (``jax.device_get`` it to combine it with single-device arrays).

    Raises:
      ArgumentError: an existing checkpoint without ``resume`` or ``overwrite``; both
        ``resume`` and ``overwrite``; ``devices`` more than JAX sees (or, with several processes,
        not all of them: :func:`~pifs_jax.models.training.parallel.check_devices`); a checkpoint
        of another configuration (a larger ``steps`` included), truncated or corrupted (:func:`pifs_jax.checkpoint.load_checkpoint`); images
        whose shape does not fit the patch size.
      FloatingPointError: a non-finite metric (the training diverged).
      WriteError: writing a checkpoint, the log, ``config.json`` or the results failed (an
        ``OSError``: a full disk, ...); the message names the file, the reason and the state of
        the checkpoint (:func:`pifs_jax.checkpoint.write_error`: the previous one is intact, so
        the run can be resumed from its step).
    """
    config = config.resolved()
    config = recorded_config(config, model)
    if stop_at is not None and check_positive_int(stop_at, name="stop_at") > config.steps:
        raise ArgumentError("stop_at", f"expected an integer in 1..steps = {config.steps}, got {stop_at!r}")
    stop = config.steps if stop_at is None else stop_at
    out = Path(out_dir)
    ckpt_path = out / CHECKPOINT_NAME
    check_devices(config.devices)
    parallel = config.devices > 1 or jax.process_count() > 1
    writer = jax.process_index() == 0  # only process 0 writes files
    if resume and ckpt_path.exists():  # a foreign, truncated or corrupted checkpoint is refused before any work
        identity, extended = resume_identity(config, ckpt_path)
        read_checkpoint(ckpt_path, config=identity)
    train_images, test_images = (
        load_train_test(config) if dataset is None else (np.asarray(dataset[0]), np.asarray(dataset[1]))
    )
    train_images = np.asarray(train_images, np.float32)
    test_images = np.asarray(test_images, np.float32)
    if train_images.ndim != 4:
        raise ArgumentError("dataset", f"expected training images of shape (N, H, W, C), got {train_images.shape}")
    image_shape = tuple(train_images.shape[1:])
    layout = patch_layout(image_shape, config.patch_size)  # raises naming patch_size if it does not tile
    if config.mu > 0 and config.probes > layout.num_patches:
        raise ArgumentError("probes", f"at most the number of patches, {layout.num_patches}, got {config.probes}")
    module, init_fn = model if isinstance(model, tuple) else model_for_config(config, image_shape)

    sched = named_schedule(config.schedule, config.T)
    grid = uniform_grid(config.T, config.sample_steps)
    loss_tables(sched, weighting=config.weighting, gamma=config.min_snr_gamma, grid=grid)  # checked before any write
    resuming = resume and ckpt_path.exists()
    # a resumed run needs only the step-0 state's shapes (the checkpoint's target): nothing compiled
    state = initial_train_state_shapes(config, init_fn) if resuming else initial_train_state(config, init_fn)[1]

    metrics_path = out / "metrics.jsonl"
    if writer:
        out.mkdir(parents=True, exist_ok=True)
        remove_partial_writes(ckpt_path)  # a write interrupted by a kill
    if resuming:
        state = load_checkpoint(ckpt_path, state, config=identity)
        if writer:
            with _writing(metrics_path, ckpt_path):
                _trim_metrics_log(metrics_path, int(state.step))
            if int(state.step) < stop:  # the model changes: its old samples and scores go first
                assert folder is not None  # the writer holds the folder
                _set_aside_results(folder, int(state.step))
        if progress and writer:
            print(f"resuming from step {int(state.step)} of {config.steps} ({ckpt_path})")
            if extended:
                print(
                    f"extending the run from {extended['steps']} to {config.steps} steps: the learning-rate "
                    "schedule is recomputed for the new length"
                )
    if writer:
        with _writing(out / "config.json", ckpt_path):
            atomic_write_text(out / "config.json", json.dumps(config.to_dict(), indent=2) + "\n")

    mesh = data_mesh(config.devices) if parallel else None
    step_fn = train_step_for(module, config, patch_size=layout.patch_size, mesh=mesh)
    if mesh is None:
        data = jnp.asarray(train_images)
    else:  # the training set and the state on every device; the step splits the batch
        data, state = replicate((train_images, state), mesh)
    start = int(state.step)
    t0 = time.perf_counter()
    last = {"time": t0, "step": start}

    def log(records: list[tuple[int, dict[str, float]]]) -> None:
        for done, values in records:
            if done % config.log_every == 0 or done in (config.steps, stop):
                now = time.perf_counter()
                rate = (done - last["step"]) * config.batch_size / max(now - last["time"], 1e-9)
                last.update(time=now, step=done)
                with _writing(metrics_path, ckpt_path):
                    _append_line(metrics_path, {"step": done, **values, "images_per_s": rate, "time_s": now - t0})

    def diverged(step: int, values: dict[str, float]) -> FloatingPointError:
        return FloatingPointError(f"training diverged at step {step}: {values}")

    state = run_loop(
        lambda s: step_fn(s, data),
        state,
        start=start,
        stop=max(stop, start),
        checkpoint=Checkpointing(ckpt_path, config.checkpoint_every, config.identity()) if writer else None,
        report_every=config.log_every,
        on_report=log if writer else None,
        callback=callback,
        diverged=diverged,
        progress=progress and writer,
        description=f"train {config.model or 'module'}/{config.data}",
        show=("loss", "mse"),
    )
    seconds = time.perf_counter() - t0

    if not writer:
        return TrainResult(state, config, out, seconds, None)
    assert folder is not None  # the writer holds the folder
    # the figure, samples and scores move in together (a failed write leaves the old ones and the checkpoint)
    with _writing(out, ckpt_path), folder.staged() as stage:
        finished = int(state.step) >= config.steps
        quality = _write_results(
            stage, state, config, module, sched, mesh, train_images, test_images, evaluate and finished, progress
        )
    return TrainResult(state, config, out, seconds, quality)


def _results_step(quality_path: Path, default: int) -> int:
    """The step a run's ``quality.json`` describes (the ``steps`` it records: only a finished run is
    scored), or ``default`` when it is missing or records none."""
    try:
        steps = json.loads(quality_path.read_text(encoding="utf-8"))["config"]["steps"]
    except (OSError, ValueError, KeyError, TypeError):
        return default
    return steps if isinstance(steps, int) and not isinstance(steps, bool) else default


def _set_aside_results(folder: Any, step: int) -> None:
    """Move the samples and scores in ``folder`` (and the ``loss.png`` drawn with them) into
    ``stale/step-<S>/`` before a resumed run changes the checkpoint at ``step`` (see :func:`train`)."""
    described = [name for name in RESULT_FILES if name != "loss.png" and (folder.out / name).is_file()]
    if not described:  # a loss curve alone describes the log, which the run continues in place
        return
    into = f"{STALE_DIR}/step-{_results_step(folder.out / 'quality.json', step)}"
    # quality.json last (RESULT_FILES' order): a kill part-way leaves the step to name readable
    folder.set_aside(RESULT_FILES, into)
    folder.report(
        f"{str(folder.out)!r}: the samples and scores of step {into.rsplit('-', 1)[1]} ({', '.join(described)}) "
        f"were moved to {into}/: they describe the model before this run continues"
    )


def _write_results(stage, state, config, module, sched, mesh, train_images, test_images, evaluate, progress):
    """``loss.png`` and (with ``evaluate``) the samples and their scores into ``stage``; the scores."""
    from pifs_jax.plotting import save_figure

    records = read_metrics_log(Path(stage).parent / "metrics.jsonl")
    if records:
        save_figure(
            plot_metrics_log(records, title=f"{config.model}/{config.data}, {config.weighting} weighting"),
            Path(stage) / "loss.png",
        )
    quality = None
    if evaluate and config.num_samples > 0:
        # sampled on this process's default device (a replicated state is fetched to the host first)
        ema_params = state.ema_params if mesh is None else jax.device_get(state.ema_params)
        quality = evaluate_run(
            module,
            ema_params,
            sched,
            config=config,
            train_images=train_images,
            test_images=test_images,
            out_dir=stage,
            progress=progress,
        )
    return quality


#: Results :func:`train` stages and moves in at the end; the others of :data:`RUN_FILES` are
#: written in place while it runs (what a resume needs).
RESULT_FILES = ("loss.png", "samples.png", "samples_empirical.png", "samples.npz", "quality.json")


def train(
    config: TrainConfig,
    out_dir: str | os.PathLike,
    *,
    resume: bool = False,
    overwrite: bool = False,
    **kwargs: Any,
) -> TrainResult:
    # the folder (lock, marker, policy) is held for the whole run by the process that writes
    from pifs_jax.run_folder import RunFolder, policy_for

    policy = policy_for(resume=resume, overwrite=overwrite)
    if jax.process_index() != 0:
        return _train(config, out_dir, resume=resume, overwrite=overwrite, folder=None, **kwargs)
    progress_files = tuple(name for name in RUN_FILES if name not in RESULT_FILES)
    with RunFolder(
        out_dir,
        policy,
        results=RESULT_FILES,
        progress=progress_files,
        checkpoint=CHECKPOINT_NAME,
        argument="out_dir",
    ) as folder:
        return _train(config, out_dir, resume=resume, overwrite=overwrite, folder=folder, **kwargs)


train.__doc__ = _train.__doc__  # one contract, stated once

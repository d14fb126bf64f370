"""Training eps-predictors by denoising score matching, read as PIFS collage minimisation.

**Loss** (docs/theory.md section 7). With ``x_t = sqrt(ab_t) x_0 + sigma_t eps``, ``eps ~ N(0, I)``,
``t`` drawn uniformly from a support set and ``n = H W C``:

``L = E_{x_0, t, eps} [ w_t ||epshat(x_t, t) - eps||^2 / n ]``

with the weightings (:func:`weight_table`)

- ``"uniform"``: ``w_t = 1`` (DDPM's simple loss);
- ``"snr"``: ``w_t = SNR_t = ab_t / sigma_t^2`` (the eps-loss becomes the x_0-loss);
- ``"min_snr"``: ``w_t = min(SNR_t, gamma) / SNR_t`` (Hang et al. 2023, ``gamma = 5``);
- ``"collage"``: ``w_t = b_t^2``, under which the loss *equals* the PIFS collage error of the
  sampler. Derivation: for the sampling step ``t = tau_i -> s = tau_{i-1}`` the DDIM map is
  ``Phi_t(x) = a_t x + b_t epshat(x, t)`` with ``a_t = sqrt(ab_s / ab_t)``,
  ``b_t = sigma_s - a_t sigma_t``. The deterministic (``eta = 0``) target that the same
  ``(x_0, eps)`` defines at ``s`` is ``x_s = sqrt(ab_s) x_0 + sigma_s eps``. Since
  ``a_t x_t = sqrt(ab_s) x_0 + a_t sigma_t eps``,

  ``Phi_t(x_t) - x_s = a_t sigma_t eps + b_t epshat - sigma_s eps = b_t (epshat - eps)``,

  so ``||Phi_t(x_t) - x_s||^2 = b_t^2 ||epshat - eps||^2`` exactly. Choice of ``s``: the
  predecessor of ``t`` on the *sampling grid* ``0 = tau_0 < ... < tau_N`` (the step the sampler
  really takes), and ``t`` is drawn uniformly from ``tau_1..tau_N`` (only those timesteps carry a
  collage term), so ``L = (1/N) sum_i E ||Phi_{tau_i}(x_{tau_i}) - x_{tau_{i-1}}||^2 / n``: the
  mean collage error of the N-step chain. The other weightings draw ``t`` from ``1..T``.

  Weights are not renormalised (AdamW is invariant to a constant factor of the loss; the size
  of ``mu`` relative to the loss is not).

**PIFS regulariser** ``mu R`` with ``R = E_{x_t, t} [ sum_k sum_{j != k} ||[J_x epshat]_{kj}||_F^2 ] / n``
(patches ``k, j`` of :mod:`pifs_jax.patches`; the cross-patch coupling of the step Jacobian
``J Phi_t = a_t I + b_t J_x epshat``). Estimated matrix-free by :func:`cross_block_penalty`: a
Rademacher probe ``v`` supported on patch ``j``, one JVP ``u = J v``, and ``u`` restricted to
the patches ``k != j``:

``E_v ||P_{-j} J P_j v||^2 = tr(P_j J^T P_{-j} J P_j) = sum_{k != j} ||J_{kj}||_F^2``,

unbiased for every ``j``; summing ``M / P`` times over ``P`` patches drawn without replacement is
unbiased for the whole cross-block sum (``P = M``: every patch, only the signs are random).

**Optimiser**: optax AdamW after global-norm clipping, learning rate with linear warm-up and
cosine (or constant) decay; EMA weights ``ema <- d_k ema + (1 - d_k) params`` with the warmed-up
decay ``d_k = min(d, (1 + k)/(10 + k))``.

**Determinism**: every random draw of step ``k`` comes from ``fold_in(key, k)`` with ``key``
derived from the seed, never from a stateful iterator; the batch indices, ``t``, ``eps`` and
the probes of step ``k`` are therefore the same whether or not the run was interrupted before
``k``, and ``--resume`` from a checkpoint (:mod:`pifs_jax.models.checkpoint`) reproduces an
uninterrupted run bit for bit.

The model is any flax linen module with ``module.apply({"params": p}, x, t)`` for ``x`` of
shape ``(B, H, W, C)`` and ``t`` int32 of shape ``(B,)``, returning eps of ``x``'s shape, and no
coupling between batch entries (no batch norm): the regulariser probes all samples in one JVP.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from pifs_jax._validation import check_instance, is_concrete
from pifs_jax.geometry import step_coefficients
from pifs_jax.grids import as_grid, uniform_grid
from pifs_jax.heuristics import min_snr_weights
from pifs_jax.jacobians import patch_blocks
from pifs_jax.patches import patch_layout
from pifs_jax.results import atomic_write_text, to_jsonable
from pifs_jax.schedules import Schedule, named_schedule

__all__ = [
    "WEIGHTINGS",
    "TrainConfig",
    "train_config",
    "TrainState",
    "LossTables",
    "weight_table",
    "loss_weights",
    "loss_tables",
    "cross_block_penalty",
    "cross_block_frobenius",
    "denoising_loss",
    "make_optimizer",
    "init_train_state",
    "make_train_step",
    "batch_indices",
    "TrainResult",
    "train",
    "evaluate_run",
    "LoadedRun",
    "load_run",
    "read_metrics_log",
    "load_train_test",
]

WEIGHTINGS = ("uniform", "snr", "min_snr", "collage")

#: Side length of each data set's images; the patch size defaults to side // 4 (16 patches).
_DATA_SIDES = {"photos16": 16, "photos32": 32, "digits": 8}


# ============================================================================ configuration


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (a checkpoint records it and refuses another).

    Attributes:
      model: ``"unet"`` or ``"dit"`` (:func:`pifs_jax.models.make_model`).
      size: model size preset, ``"quick"`` or ``"full"``.
      data: ``"photos16"``, ``"photos32"`` or ``"digits"`` (:func:`pifs_jax.data.load_dataset`).
      num_train, num_test: crops in the training and test sets.
      data_seed: seed of the data set (kept apart from ``seed`` so every run sees the same crops).
      patch_size: PIFS patch ``p`` (the DiT's token size, the regulariser's blocks, the quality
        features); ``None`` = image side / 4, i.e. 16 patches.
      steps: optimisation steps; batch_size: images per step.
      lr, warmup_steps, lr_decay (``"cosine"`` to 0 at ``steps`` or ``"constant"``),
      weight_decay, grad_clip (global norm): the AdamW optimiser.
      weighting: one of :data:`WEIGHTINGS`; min_snr_gamma: ``gamma`` of ``"min_snr"``.
      mu: weight of the PIFS regulariser (0 = off); probes: patches probed per sample and step.
      ema_decay: EMA decay ``d``.
      seed: seed of initialisation, batches, timesteps, noise and probes.
      schedule, T: the noise schedule (:func:`pifs_jax.schedules.named_schedule`). Default: DDPM's
        ``linear`` (``beta`` from 1e-4 to 0.02). Not ``cosine``: its betas are clipped at 0.999 near
        ``T`` (``alpha_bar_T = 2.4e-9``), so the first step ``1000 -> 980`` of a 50-step DDIM grid has
        ``a_t = 632``, ``b_t = -631`` and multiplies any eps error by 631; the linear schedule's is
        ``b_t = -0.22``.
      sample_steps: ``N`` of the uniform sampling grid (samples and the collage weighting).
      checkpoint_every, log_every, num_samples: run control, not part of the identity.
    """

    model: str = "dit"
    size: str = "quick"
    data: str = "photos16"
    num_train: int = 4096
    num_test: int = 1024
    data_seed: int = 0
    patch_size: int | None = None
    steps: int = 4000
    batch_size: int = 64
    lr: float = 2e-3
    warmup_steps: int = 100
    lr_decay: str = "cosine"
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    weighting: str = "uniform"
    min_snr_gamma: float = 5.0
    mu: float = 0.0
    probes: int = 1
    ema_decay: float = 0.999
    seed: int = 0
    schedule: str = "linear"
    T: int = 1000
    sample_steps: int = 50
    checkpoint_every: int = 500
    log_every: int = 10
    num_samples: int = 256

    #: Fields that control bookkeeping only; they may differ between a run and its resumption.
    RUN_CONTROL = ("checkpoint_every", "log_every", "num_samples")

    def __post_init__(self):
        def bad(name, expected):
            raise ValueError(f"{name}: expected {expected}, got {getattr(self, name)!r}")

        if self.model not in ("unet", "dit"):
            bad("model", "'unet' or 'dit'")
        if self.size not in ("quick", "full"):
            bad("size", "'quick' or 'full'")
        if self.weighting not in WEIGHTINGS:
            bad("weighting", f"one of {', '.join(WEIGHTINGS)}")
        if self.lr_decay not in ("cosine", "constant"):
            bad("lr_decay", "'cosine' or 'constant'")
        for name in ("num_train", "num_test", "steps", "batch_size", "T", "sample_steps",
                     "checkpoint_every", "log_every", "probes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                bad(name, "a positive integer")
        for name in ("warmup_steps", "num_samples", "seed", "data_seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                bad(name, "a non-negative integer")
        if self.patch_size is not None and (not isinstance(self.patch_size, int) or self.patch_size < 1):
            bad("patch_size", "a positive integer or None")
        for name in ("lr", "min_snr_gamma", "grad_clip"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                bad(name, "a finite number > 0")
        for name in ("mu", "weight_decay"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                bad(name, "a finite number >= 0")
        if not 0 <= self.ema_decay < 1:
            bad("ema_decay", "a number in [0, 1)")
        if self.sample_steps > self.T:
            bad("sample_steps", f"at most T = {self.T}")

    def to_dict(self) -> dict[str, Any]:
        """All fields as a JSON-able dict."""
        return dataclasses.asdict(self)

    def identity(self) -> dict[str, Any]:
        """The fields that determine the trajectory (all but :attr:`RUN_CONTROL`)."""
        return {k: v for k, v in self.to_dict().items() if k not in self.RUN_CONTROL}

    @property
    def image_shape(self) -> tuple[int, int, int] | None:
        """``(H, W, C)`` of the named data set (``None`` for an unknown name)."""
        side = _DATA_SIDES.get(self.data)
        if side is None:
            return None
        return (side, side, 1 if self.data == "digits" else 3)

    def resolved(self) -> "TrainConfig":
        """The config with ``patch_size`` filled in (image side / 4: 16 patches)."""
        if self.patch_size is not None:
            return self
        side = _DATA_SIDES.get(self.data)
        if side is None:
            raise ValueError(f"data: unknown data set {self.data!r}; expected one of {', '.join(_DATA_SIDES)}")
        return dataclasses.replace(self, patch_size=side // 4)


#: Presets. ``quick``: a useful 16x16 model on a 2-core CPU in under 10 minutes (see the training guide).
#: ``full``: 32x32 crops, 8x8 patches (16 patches of 192 coordinates), DiT-sized for a GPU.
_PRESETS: dict[str, dict[str, Any]] = {
    "quick": dict(size="quick", data="photos16", num_train=4096, num_test=1024, steps=4000, batch_size=64,
                  lr=2e-3, warmup_steps=100, ema_decay=0.999, checkpoint_every=500, num_samples=256),
    "full": dict(size="full", data="photos32", num_train=16384, num_test=2048, steps=100_000, batch_size=128,
                 lr=3e-4, warmup_steps=1000, ema_decay=0.9999, checkpoint_every=2000, num_samples=1024),
}


def train_config(preset: str = "quick", **overrides: Any) -> TrainConfig:
    """A :class:`TrainConfig` from a preset (``"quick"`` or ``"full"``) with ``overrides``.

    ``overrides`` whose value is ``None`` are ignored (so command-line defaults pass through).
    The patch size is resolved from the data set unless given.

    Example:
      >>> cfg = train_config("quick", model="dit", steps=500)
      >>> cfg.patch_size, cfg.data
      (4, 'photos16')
    """
    if preset not in _PRESETS:
        raise ValueError(f"preset: expected one of {', '.join(_PRESETS)}, got {preset!r}")
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"overrides: unknown TrainConfig field(s) {', '.join(unknown)}")
    values = {**_PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
    if values.get("data") == "digits":  # 1437 training and 360 test digits exist
        values["num_train"] = overrides.get("num_train") or min(values["num_train"], 1437)
        values["num_test"] = overrides.get("num_test") or min(values["num_test"], 360)
    return TrainConfig(**values).resolved()


# ============================================================================ loss weights


def weight_table(sched: Schedule, *, weighting: str, gamma: float = 5.0, grid: Any = None) -> jax.Array:
    """Loss weight ``w_t`` for every training timestep, shape ``(T+1,)`` (entry ``t``).

    - ``"uniform"``: ``1``;
    - ``"snr"``: ``SNR_t = exp(logSNR_t)``;
    - ``"min_snr"``: ``min(SNR_t, gamma)/SNR_t = exp(min(0, log gamma - logSNR_t))`` (no overflow);
    - ``"collage"``: ``b_t^2`` at the points ``tau_i`` (``i >= 1``) of the sampling ``grid`` (the
      coefficient of the step ``tau_i -> tau_{i-1}``, :func:`pifs_jax.geometry.step_coefficients`),
      0 elsewhere: ``b_t^2 ||epshat - eps||^2 = ||Phi_t(x_t) - x_s||^2`` (module notes).

    Entry 0 (clean data, never drawn) is 0 for every weighting.

    Args:
      sched: the schedule.
      weighting: one of :data:`WEIGHTINGS`.
      gamma: the Min-SNR clip (``> 0``).
      grid: sampling grid for ``"collage"`` (``None`` = every training step: ``s = t - 1``).

    Returns:
      array of shape ``(T+1,)`` in the schedule's dtype.
    """
    check_instance(sched, Schedule, name="sched", what="pifs_jax Schedule")
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting: expected one of {', '.join(WEIGHTINGS)}, got {weighting!r}")
    if is_concrete(gamma) and not float(gamma) > 0:
        raise ValueError(f"gamma: the Min-SNR clip must be > 0, got {gamma!r}")
    T, dtype = sched.T, sched.dtype
    log_snr = sched.log_snr
    positive = jnp.arange(T + 1) > 0
    if weighting == "uniform":
        table = jnp.ones((T + 1,), dtype)
    elif weighting == "snr":
        table = jnp.exp(jnp.where(positive, log_snr, 0.0))
    elif weighting == "min_snr":  # one formula for the package: the heuristic's own weights
        table = jnp.ones((T + 1,), dtype).at[1:].set(min_snr_weights(sched, gamma=gamma).astype(dtype))
    else:
        grid = jnp.asarray(as_grid(grid, T))
        b = step_coefficients(sched, grid).b
        table = jnp.zeros((T + 1,), dtype).at[grid[1:]].set(b**2)
    return jnp.where(positive, table, 0.0).astype(dtype)


def loss_weights(sched: Schedule, t: Any, *, weighting: str, gamma: float = 5.0, grid: Any = None) -> jax.Array:
    """``w_t`` of :func:`weight_table` at the integer timesteps ``t`` (any shape, ``1 <= t <= T``).

    For ``"collage"`` every ``t`` must be a point ``tau_i``, ``i >= 1``, of ``grid`` (checked when
    concrete): only there is the eps-loss a collage error.
    """
    t = jnp.asarray(t)
    if is_concrete(t):
        values = np.asarray(t)
        if not np.issubdtype(values.dtype, np.integer) or values.size and (values.min() < 1 or values.max() > sched.T):
            raise ValueError(f"t: expected integer timesteps in 1..{sched.T}, got {values!r}")
        if weighting == "collage":
            points = np.asarray(as_grid(grid, sched.T))[1:]
            off = np.setdiff1d(values, points)
            if off.size:
                raise ValueError(
                    f"t: the collage weighting is defined on the sampling grid's points only; {off[:5].tolist()} are not on it"
                )
    return weight_table(sched, weighting=weighting, gamma=gamma, grid=grid)[t]


class LossTables(NamedTuple):
    """Per-timestep constants of the loss, each indexed by ``t`` (arrays of shape ``(T+1,)``)."""

    sqrt_alpha_bar: jax.Array
    sigma: jax.Array
    weights: jax.Array
    support: jax.Array
    """The timesteps ``t`` is drawn from (uniformly): ``1..T``, or the grid points for ``"collage"``."""


def loss_tables(
    sched: Schedule, *, weighting: str, gamma: float = 5.0, grid: Any = None, dtype: Any = jnp.float32
) -> LossTables:
    """:class:`LossTables` for ``weighting`` (see :func:`weight_table`), cast to ``dtype``.

    Built in one compiled call (eagerly, every ``jnp`` operation would compile on its own).
    """
    check_instance(sched, Schedule, name="sched", what="pifs_jax Schedule")
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting: expected one of {', '.join(WEIGHTINGS)}, got {weighting!r}")
    if not float(gamma) > 0:
        raise ValueError(f"gamma: the Min-SNR clip must be > 0, got {gamma!r}")
    grid = np.asarray(as_grid(grid, sched.T))
    return _loss_tables(sched, jnp.asarray(gamma, sched.dtype), jnp.asarray(grid), weighting=weighting, dtype=jnp.dtype(dtype))


@functools.partial(jax.jit, static_argnames=("weighting", "dtype"))
def _loss_tables(sched: Schedule, gamma: jax.Array, grid: jax.Array, *, weighting: str, dtype) -> LossTables:
    weights = weight_table(sched, weighting=weighting, gamma=gamma, grid=grid)
    support = grid[1:] if weighting == "collage" else jnp.arange(1, sched.T + 1)
    return LossTables(
        jnp.exp(sched.log_alpha_bar / 2).astype(dtype),
        sched.sigma.astype(dtype),
        weights.astype(dtype),
        support.astype(jnp.int32),
    )


# ============================================================================ PIFS regulariser


def _patch_index(layout) -> np.ndarray:
    """Patch number of each pixel, shape ``(H, W)`` (row-major over the patch grid)."""
    p = layout.patch_size
    rows = np.arange(layout.image_shape[0]) // p
    cols = np.arange(layout.image_shape[1]) // p
    return rows[:, None] * layout.cols + cols[None, :]


def cross_block_penalty(
    fn: Callable[[jax.Array], jax.Array], x: jax.Array, key: jax.Array, *, patch_size: int, probes: int = 1
) -> jax.Array:
    """Unbiased estimate of ``sum_k sum_{j != k} ||[J fn(x_b)]_{kj}||_F^2`` for every sample ``b``.

    For each sample, ``P = probes`` distinct patches ``j`` are drawn uniformly without
    replacement; for each, a Rademacher probe ``v`` on patch ``j``'s coordinates, one JVP
    ``u = J v``, and the squared norm of ``u`` outside patch ``j``:

    ``estimate = (M / P) sum_{j drawn} ||P_{-j} J P_j v_j||^2``,
    ``E = sum_j sum_{k != j} ||J_{kj}||_F^2`` (``E_v ||A v||^2 = ||A||_F^2`` for Rademacher ``v``).

    Its variance (for ``P = M``) is ``sum_j 2 sum_{a != c} (A_j)_{ac}^2``,
    ``A_j = sum_{k != j} J_{kj}^T J_{kj}``.

    Args:
      fn: batched map ``(B, H, W, C) -> (B, H, W, C)`` without coupling between batch entries
        (its Jacobian is block diagonal over the batch), e.g. ``lambda x: model(x, t)``.
      x: inputs, shape ``(B, H, W, C)``.
      key: PRNG key.
      patch_size: ``p``, dividing ``H`` and ``W``.
      probes: ``P``, ``1 <= P <= M``: JVPs per step (cost) against variance.

    Returns:
      estimates, shape ``(B,)``. Differentiable (``jax.grad`` goes through the JVPs).
    """
    x = jnp.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"x: expected a batch of images (B, H, W, C), got shape {x.shape}")
    layout = patch_layout(x.shape[1:], patch_size)
    m = layout.num_patches
    if isinstance(probes, bool) or not isinstance(probes, int) or not 1 <= probes <= m:
        raise ValueError(f"probes: expected an integer in 1..{m} (the number of patches), got {probes!r}")
    batch = x.shape[0]
    key_patch, key_sign = jax.random.split(key)
    chosen = jax.vmap(lambda k: jax.random.permutation(k, m)[:probes])(jax.random.split(key_patch, batch))  # (B, P)
    pid = jnp.asarray(_patch_index(layout))
    inside = (pid[None, None] == chosen.T[:, :, None, None])[..., None].astype(x.dtype)  # (P, B, H, W, 1)
    signs = jax.random.rademacher(key_sign, (probes,) + x.shape, dtype=x.dtype)
    tangents = signs * inside

    def outside_norm2(v, mask):
        u = jax.jvp(fn, (x,), (v,))[1]
        return jnp.sum(((1 - mask) * u) ** 2, axis=(1, 2, 3))

    per_probe = jax.vmap(outside_norm2)(tangents, inside)  # (P, B)
    return (m / probes) * jnp.sum(per_probe, axis=0)


def cross_block_frobenius(fn: Callable[[jax.Array], jax.Array], x: jax.Array, *, patch_size: int) -> jax.Array:
    """Exact ``sum_k sum_{j != k} ||[J fn(x)]_{kj}||_F^2`` for one sample ``x`` (``jax.jacfwd``).

    ``fn`` maps one image ``(H, W, C)`` to one image; cost ``n`` JVPs and ``n^2`` memory. The
    reference for :func:`cross_block_penalty` (tests, diagnostics).
    """
    x = jnp.asarray(x)
    n = x.size
    J = jax.jacfwd(lambda flat: fn(flat.reshape(x.shape)).reshape(-1))(x.reshape(-1)).reshape(n, n)
    blocks = patch_blocks(J, x.shape, patch_size)
    norms2 = jnp.sum(blocks**2, axis=(-2, -1))
    return jnp.sum(norms2) - jnp.trace(norms2)


# ============================================================================ loss and train step


ApplyFn = Callable[[Any, jax.Array, jax.Array], jax.Array]


def _module_apply(module: Any) -> ApplyFn:
    """``apply(params, x, t) = module.apply({"params": params}, x, t)``."""

    def apply(params, x, t):
        return module.apply({"params": params}, x, t)

    return apply


def denoising_loss(
    params: Any,
    apply_fn: ApplyFn,
    x0: jax.Array,
    key: jax.Array,
    tables: LossTables,
    *,
    mu: float = 0.0,
    patch_size: int | None = None,
    probes: int = 1,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """``L + mu R`` for one batch (module notes), with its parts.

    ``t ~ U(tables.support)``, ``eps ~ N(0, I)``, ``x_t = sqrt(ab_t) x0 + sigma_t eps``;
    ``L = mean_b w_{t_b} ||epshat_b - eps_b||^2 / n``; ``R = mean_b cross_block_penalty_b / n``
    (evaluated at the same ``x_t, t``; only when ``mu > 0``).

    Args:
      params: model parameters.
      apply_fn: ``apply_fn(params, x, t) -> eps``, ``x`` of shape ``(B, H, W, C)``, ``t`` int32 ``(B,)``.
      x0: clean batch ``(B, H, W, C)``.
      key: PRNG key (``t``, ``eps``, probes).
      tables: :func:`loss_tables`.
      mu: regulariser weight (static); patch_size, probes: its blocks and probes.

    Returns:
      ``(objective, {"loss": L, "mse": unweighted eps-MSE, "reg": R, "objective": L + mu R})``.
    """
    batch = x0.shape[0]
    n = math.prod(x0.shape[1:])
    key_t, key_eps, key_probe = jax.random.split(key, 3)
    t = tables.support[jax.random.randint(key_t, (batch,), 0, tables.support.shape[0])]
    eps = jax.random.normal(key_eps, x0.shape, x0.dtype)
    shape = (batch,) + (1,) * (x0.ndim - 1)
    x_t = tables.sqrt_alpha_bar[t].reshape(shape) * x0 + tables.sigma[t].reshape(shape) * eps
    eps_hat = apply_fn(params, x_t, t)
    per_sample = jnp.sum((eps_hat - eps).reshape(batch, -1) ** 2, axis=1) / n
    loss = jnp.mean(tables.weights[t] * per_sample)
    if mu > 0:
        reg = jnp.mean(
            cross_block_penalty(lambda x: apply_fn(params, x, t), x_t, key_probe, patch_size=patch_size, probes=probes)
        ) / n
    else:
        reg = jnp.zeros((), loss.dtype)
    objective = loss + mu * reg
    return objective, {"objective": objective, "loss": loss, "mse": jnp.mean(per_sample), "reg": reg}


def make_optimizer(
    *, lr: float, steps: int, warmup_steps: int = 0, lr_decay: str = "cosine", weight_decay: float = 0.0,
    grad_clip: float | None = 1.0,
) -> optax.GradientTransformation:
    """Global-norm clipping then AdamW with warm-up + cosine (or constant) learning rate.

    ``lr_k = lr k / warmup`` for ``k < warmup``; then ``lr`` (constant) or
    ``lr (1 + cos(pi (k - warmup)/(steps - warmup)))/2`` (cosine, reaching 0 at ``steps``).
    """
    warmup_steps = min(warmup_steps, steps)
    if lr_decay == "cosine":
        schedule = optax.warmup_cosine_decay_schedule(0.0, lr, warmup_steps, max(steps, warmup_steps + 1), 0.0)
    elif lr_decay == "constant":
        schedule = optax.join_schedules(
            [optax.linear_schedule(0.0, lr, max(warmup_steps, 1)), optax.constant_schedule(lr)], [warmup_steps]
        )
    else:
        raise ValueError(f"lr_decay: expected 'cosine' or 'constant', got {lr_decay!r}")
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
    """Step 0: EMA = params, fresh optimiser state."""
    return TrainState(
        jnp.zeros((), jnp.int32), params, jax.tree_util.tree_map(jnp.array, params), optimizer.init(params), key
    )


def batch_indices(key: jax.Array, step: Any, *, batch_size: int, num_data: int) -> jax.Array:
    """Indices of step ``step``'s batch: ``randint(fold_in(fold_in(key, step), 0), (B,), 0, N)``.

    A pure function of ``(key, step)``: resuming at step ``k`` sees exactly the batches of an
    uninterrupted run.
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
) -> Callable[[TrainState, jax.Array], tuple[TrainState, dict[str, jax.Array]]]:
    """A jitted ``step(state, data) -> (state, metrics)``; compiles once per data shape.

    ``data`` is the whole training set ``(N, H, W, C)`` (an argument, not a baked-in constant);
    the batch is ``data[batch_indices(state.key, state.step)]`` and the loss key
    ``fold_in(fold_in(key, step), 1)``. Metrics: those of :func:`denoising_loss` plus the
    gradient's global norm and the learning-rate step count.
    """

    def step(state: TrainState, data: jax.Array):
        idx = batch_indices(state.key, state.step, batch_size=batch_size, num_data=data.shape[0])
        loss_key = jax.random.fold_in(jax.random.fold_in(state.key, state.step), 1)
        grads, metrics = jax.grad(denoising_loss, has_aux=True)(
            state.params, apply_fn, data[idx], loss_key, tables, mu=mu, patch_size=patch_size, probes=probes
        )
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        k = state.step.astype(jnp.float32)
        decay = jnp.minimum(ema_decay, (1 + k) / (10 + k))
        ema = jax.tree_util.tree_map(lambda e, p: (decay * e + (1 - decay) * p).astype(p.dtype), state.ema_params, params)
        metrics = {**metrics, "grad_norm": optax.tree.norm(grads)}
        return TrainState(state.step + 1, params, ema, opt_state, state.key), metrics

    return jax.jit(step)


# ============================================================================ metrics log


def _append_line(path: Path, record: Mapping[str, Any]) -> None:
    """Append one JSON line with a single ``write`` on an ``O_APPEND`` descriptor."""
    line = (json.dumps(to_jsonable(dict(record)), allow_nan=False) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def read_metrics_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a JSON-lines metrics log; an incomplete last line (a killed writer) is skipped."""
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
    """
    from pifs_jax.data import load_dataset

    key = jax.random.PRNGKey(config.data_seed)
    train_images = load_dataset(config.data, jax.random.fold_in(key, 0), config.num_train, split="train")
    test_images = load_dataset(config.data, jax.random.fold_in(key, 1), config.num_test, split="test")
    return np.asarray(train_images, np.float32), np.asarray(test_images, np.float32)


def _make_model(config: TrainConfig, image_shape: tuple[int, ...]):
    from pifs_jax import models

    module, _ = models.make_model(config.model, image_shape=image_shape, patch_size=config.patch_size, size=config.size)

    def init(key):
        return models.init_params(module, key, image_shape)

    return module, init


def _initial_state(config: TrainConfig, init_fn: Callable[[jax.Array], Any]):
    """The optimiser and step-0 state of ``config`` (initialisation key and run key from the seed)."""
    optimizer = make_optimizer(
        lr=config.lr, steps=config.steps, warmup_steps=config.warmup_steps, lr_decay=config.lr_decay,
        weight_decay=config.weight_decay, grad_clip=config.grad_clip,
    )

    @jax.jit
    def build(seed):  # one compilation instead of one per eager operation
        init_key, run_key = jax.random.split(jax.random.PRNGKey(seed))
        return init_train_state(init_fn(init_key), optimizer, run_key)

    return optimizer, build(np.uint32(config.seed))


class LoadedRun(NamedTuple):
    """A finished (or checkpointed) run, from :func:`load_run`."""

    module: Any
    state: TrainState
    config: TrainConfig

    @property
    def eps_fn(self) -> Callable[[jax.Array, Any], jax.Array]:
        """``eps_fn(x, t)`` of the EMA parameters, for :func:`pifs_jax.ddim.ddim_chain`."""
        from pifs_jax.models import as_eps_fn

        return as_eps_fn(self.module, self.state.ema_params)


def load_run(out_dir: str | os.PathLike) -> LoadedRun:
    """Rebuild the model of a ``pifs-jax train`` output folder and load its checkpoint (validated).

    Reads ``config.json``, builds the named model, and loads ``checkpoint.msgpack`` with every
    check of :func:`pifs_jax.models.checkpoint.load_checkpoint`.

    Raises:
      ValueError: no ``config.json`` / checkpoint, or a checkpoint that fails its checks.
    """
    from pifs_jax.models import checkpoint as ckpt

    out = Path(out_dir)
    if not (out / "config.json").is_file():
        raise ValueError(f"out_dir: {str(out)!r} holds no config.json (not a pifs-jax train folder)")
    config = TrainConfig(**json.loads((out / "config.json").read_text())).resolved()
    module, init_fn = _make_model(config, config.image_shape)
    _, target = _initial_state(config, init_fn)
    state = ckpt.load_checkpoint(out / ckpt.CHECKPOINT_NAME, target, config=config.identity())
    return LoadedRun(module, state, config)


def train(
    config: TrainConfig,
    out_dir: str | os.PathLike,
    *,
    resume: bool = False,
    progress: bool = True,
    evaluate: bool = True,
    callback: Callable[[int, dict[str, float]], None] | None = None,
    model: tuple[Any, Callable[[jax.Array], Any]] | None = None,
    dataset: tuple[Any, Any] | None = None,
) -> TrainResult:
    """Train, checkpoint, log, and (optionally) sample and score the EMA model.

    Writes to ``out_dir``: ``config.json``; ``metrics.jsonl`` (one JSON line per ``log_every``
    steps: step, objective, loss, mse, reg, grad_norm, images/s, time; appended, trimmed on
    resume to the checkpoint's step); ``checkpoint.msgpack`` every ``checkpoint_every`` steps
    and at the end (atomic); with ``evaluate``: ``samples.png`` (EMA model, ``sample_steps``-step
    DDIM from ``N(0, I)``) and ``quality.json`` (:func:`pifs_jax.models.quality.quality_report`,
    the empirical-optimal denoiser's samples from the same ``x_T`` as the memorisation reference).

    Args:
      config: the run (resolved with :meth:`TrainConfig.resolved`).
      out_dir: output folder.
      resume: continue from ``out_dir``'s checkpoint (bit-exact); without it an existing
        checkpoint is an error (nothing is overwritten). With no checkpoint yet, starts afresh.
      progress: tqdm progress bar.
      evaluate: sample and score at the end.
      callback: ``callback(step, metrics)`` after every step (host side; e.g. plotting, tests).
      model: ``(module, init_fn(key) -> params)`` instead of :func:`pifs_jax.models.make_model`.
      dataset: ``(train, test)`` image arrays instead of :func:`pifs_jax.data.load_dataset`.

    Raises:
      ValueError: an existing checkpoint without ``resume``; a checkpoint of another
        configuration, truncated or corrupted (:func:`pifs_jax.models.checkpoint.load_checkpoint`);
        images whose shape does not fit the patch size.
    """
    from pifs_jax.models import checkpoint as ckpt

    config = config.resolved()
    out = Path(out_dir)
    ckpt_path = out / ckpt.CHECKPOINT_NAME
    if ckpt_path.exists() and not resume:
        raise ValueError(
            f"out_dir: {str(out)!r} already holds a checkpoint ({ckpt_path.name}); pass resume=True (--resume) "
            "to continue it or choose another output folder"
        )
    train_images, test_images = load_train_test(config) if dataset is None else (np.asarray(dataset[0]), np.asarray(dataset[1]))
    train_images = np.asarray(train_images, np.float32)
    test_images = np.asarray(test_images, np.float32)
    if train_images.ndim != 4:
        raise ValueError(f"dataset: expected training images of shape (N, H, W, C), got {train_images.shape}")
    image_shape = tuple(train_images.shape[1:])
    layout = patch_layout(image_shape, config.patch_size)  # raises naming patch_size if it does not tile
    if config.mu > 0 and config.probes > layout.num_patches:
        raise ValueError(f"probes: at most the number of patches, {layout.num_patches}, got {config.probes}")
    module, init_fn = _make_model(config, image_shape) if model is None else model

    sched = named_schedule(config.schedule, config.T)
    grid = uniform_grid(config.T, config.sample_steps)
    tables = loss_tables(sched, weighting=config.weighting, gamma=config.min_snr_gamma, grid=grid)
    optimizer, state = _initial_state(config, init_fn)

    out.mkdir(parents=True, exist_ok=True)
    metrics_path = out / "metrics.jsonl"
    for debris in out.glob(f".{ckpt.CHECKPOINT_NAME}.*.tmp"):  # a write interrupted by a kill
        debris.unlink()
    if resume and ckpt_path.exists():
        state = ckpt.load_checkpoint(ckpt_path, state, config=config.identity())
        _trim_metrics_log(metrics_path, int(state.step))
        if progress:
            print(f"resuming from step {int(state.step)} of {config.steps} ({ckpt_path})")
    else:
        if metrics_path.exists():
            metrics_path.unlink()
    atomic_write_text(out / "config.json", json.dumps(config.to_dict(), indent=2) + "\n")

    step_fn = make_train_step(
        _module_apply(module), optimizer, tables, batch_size=config.batch_size, ema_decay=config.ema_decay,
        mu=config.mu, patch_size=layout.patch_size, probes=config.probes,
    )
    data = jnp.asarray(train_images)
    start = int(state.step)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.steps, initial=start, desc=f"train {config.model}/{config.data}", unit="step")
    t0 = time.perf_counter()
    last_time, last_step = t0, start
    for k in range(start, config.steps):
        state, metrics = step_fn(state, data)
        done = k + 1
        if done % config.log_every == 0 or done == config.steps or callback is not None:
            values = {name: float(v) for name, v in metrics.items()}
            if not all(math.isfinite(v) for v in values.values()):
                raise FloatingPointError(f"training diverged at step {done}: {values}")
            if done % config.log_every == 0 or done == config.steps:
                now = time.perf_counter()
                rate = (done - last_step) * config.batch_size / max(now - last_time, 1e-9)
                last_time, last_step = now, done
                _append_line(metrics_path, {"step": done, **values, "images_per_s": rate, "time_s": now - t0})
                if bar is not None:
                    bar.set_postfix(loss=f"{values['loss']:.4g}", mse=f"{values['mse']:.4g}")
            if callback is not None:
                callback(done, values)
        if done % config.checkpoint_every == 0 or done == config.steps:
            ckpt.save_checkpoint(ckpt_path, state, config=config.identity())
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - t0

    quality = None
    if evaluate and config.num_samples > 0:
        quality = evaluate_run(
            module, state.ema_params, sched, config=config, train_images=train_images, test_images=test_images, out_dir=out
        )
    return TrainResult(state, config, out, seconds, quality)


def evaluate_run(
    module: Any,
    params: Any,
    sched: Schedule,
    *,
    config: TrainConfig,
    train_images: np.ndarray,
    test_images: np.ndarray,
    out_dir: str | os.PathLike,
) -> dict[str, Any]:
    """Sample the model, score it against the memorisation reference, write ``samples.png``/``quality.json``.

    ``x_T ~ N(0, I)`` from ``fold_in(PRNGKey(seed), 2**31 - 1)``; the model and the empirical-optimal
    denoiser of the training set (:func:`pifs_jax.denoisers.empirical_denoiser`) both run the
    ``sample_steps``-step DDIM chain from the same ``x_T``.
    """
    from pifs_jax.denoisers import empirical_denoiser
    from pifs_jax.models import as_eps_fn
    from pifs_jax.models import quality as q
    from pifs_jax.results import write_result_json

    out = Path(out_dir)
    grid = uniform_grid(config.T, config.sample_steps)
    shape = (config.num_samples,) + tuple(train_images.shape[1:])
    x_T = jax.jit(lambda seed: jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(seed), 2**31 - 1), shape))(
        np.uint32(config.seed)
    )
    t0 = time.perf_counter()
    samples = _sample_in_chunks(lambda p: as_eps_fn(module, p), params, sched, x_T, grid=grid)
    sample_seconds = time.perf_counter() - t0
    reference = _sample_in_chunks(lambda d: empirical_denoiser(sched, d), jnp.asarray(train_images), sched, x_T, grid=grid)
    report = q.quality_report(
        samples, train=train_images, test=test_images, patch_size=config.patch_size, reference_samples=reference
    )
    report["sampling_seconds"] = sample_seconds
    q.save_image_grid(out / "samples.png", samples[: min(64, len(samples))])
    q.save_image_grid(out / "samples_empirical.png", reference[: min(64, len(reference))])
    write_result_json(out / "quality.json", report, config=config.to_dict(), seed=config.seed)
    return report


def _sample_in_chunks(
    make_eps_fn: Callable[[Any], Callable], args: Any, sched: Schedule, x_T: jax.Array, *, grid: Any, chunk: int = 128
) -> np.ndarray:
    """:func:`pifs_jax.ddim.ddim_sample` of ``make_eps_fn(args)``, ``chunk`` samples at a time.

    One compilation (the last chunk is padded); bounded memory (the empirical denoiser compares
    every sample with every training crop at every step). ``args`` (parameters, data) enter the
    compiled program as arguments, not as constants baked into it: faster to compile, and
    jaxlib 0.10.2's CPU compiler was seen to miscompile exactly-zero constant weight layers.
    """
    from pifs_jax.ddim import ddim_sample

    sample = jax.jit(lambda a, x: ddim_sample(make_eps_fn(a), sched, x, grid=grid))
    count = x_T.shape[0]
    size = min(chunk, count)
    out = []
    for start in range(0, count, size):
        block = x_T[start:start + size]
        pad = size - block.shape[0]
        if pad:
            block = jnp.concatenate([block, jnp.zeros((pad,) + block.shape[1:], block.dtype)])
        out.append(np.asarray(sample(args, block))[: size - pad])
    return np.concatenate(out)

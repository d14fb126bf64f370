"""The denoising loss and its weightings, read as PIFS collage minimisation (docs/theory.md section 7).

With ``x_t = sqrt(ab_t) x_0 + sigma_t eps``, ``eps ~ N(0, I)``, ``t`` drawn uniformly from a
support set and ``n = H W C``:

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

The model is any flax linen module with ``module.apply({"params": p}, x, t)`` for ``x`` of
shape ``(B, H, W, C)`` and ``t`` int32 of shape ``(B,)``, returning eps of ``x``'s shape, and no
coupling between batch entries (no batch norm): the regulariser probes all samples in one JVP.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from pifs_jax._validation import check_instance, is_concrete
from pifs_jax.errors import ArgumentError
from pifs_jax.geometry import step_coefficients
from pifs_jax.grids import as_grid
from pifs_jax.heuristics import min_snr_weights
from pifs_jax.models.training.regularizer import cross_block_penalty
from pifs_jax.schedules import Schedule

__all__ = [
    "WEIGHTINGS",
    "ApplyFn",
    "LossTables",
    "denoising_loss",
    "loss_tables",
    "loss_weights",
    "module_apply_fn",
    "weight_table",
]

#: Loss weightings of :func:`weight_table`.
WEIGHTINGS = ("uniform", "snr", "min_snr", "collage")


def weight_table(sched: Schedule, *, weighting: str, gamma: float | jax.Array = 5.0, grid: Any = None) -> jax.Array:
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
        raise ArgumentError("weighting", f"expected one of {', '.join(WEIGHTINGS)}, got {weighting!r}")
    if is_concrete(gamma) and not float(gamma) > 0:
        raise ArgumentError("gamma", f"the Min-SNR clip must be > 0, got {gamma!r}")
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

    Args:
      sched: the schedule.
      t: integer timesteps in ``1..T``, of any shape (may be traced).
      weighting: one of :data:`WEIGHTINGS`.
      gamma: the Min-SNR clip (``> 0``); default 5.
      grid: the sampling grid for ``"collage"`` (``None``, the default: every training step).

    Returns:
      the weights, of ``t``'s shape, in the schedule's dtype.

    Raises:
      ArgumentError: naming ``t`` (not integers in ``1..T``, or off the grid for ``"collage"``;
        checked when concrete), or as :func:`weight_table`.
    """
    t = jnp.asarray(t)
    if is_concrete(t):
        values = np.asarray(t)
        if not np.issubdtype(values.dtype, np.integer) or (
            values.size and (values.min() < 1 or values.max() > sched.T)
        ):
            raise ArgumentError("t", f"expected integer timesteps in 1..{sched.T}, got {values!r}")
        if weighting == "collage":
            points = np.asarray(as_grid(grid, sched.T))[1:]
            off = np.setdiff1d(values, points)
            if off.size:
                raise ArgumentError(
                    "t",
                    f"the collage weighting is defined on the sampling grid's points only; {off[:5].tolist()} are not on it",
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

    Args:
      sched: the schedule.
      weighting: one of :data:`WEIGHTINGS`.
      gamma: the Min-SNR clip (``> 0``); default 5.
      grid: the sampling grid for ``"collage"`` (``None``, the default: every training step).
      dtype: the tables' dtype; default float32.

    Returns:
      :class:`LossTables`, each table of shape ``(T+1,)`` indexed by ``t``.

    Raises:
      ArgumentError: naming ``sched`` (not a :class:`~pifs_jax.schedules.Schedule`), ``weighting``,
        ``gamma`` or ``grid``.
    """
    check_instance(sched, Schedule, name="sched", what="pifs_jax Schedule")
    if weighting not in WEIGHTINGS:
        raise ArgumentError("weighting", f"expected one of {', '.join(WEIGHTINGS)}, got {weighting!r}")
    if not float(gamma) > 0:
        raise ArgumentError("gamma", f"the Min-SNR clip must be > 0, got {gamma!r}")
    grid = np.asarray(as_grid(grid, sched.T))
    return _loss_tables(
        sched, jnp.asarray(gamma, sched.dtype), jnp.asarray(grid), weighting=weighting, dtype=jnp.dtype(dtype)
    )


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


ApplyFn = Callable[[Any, jax.Array, jax.Array], jax.Array]


def module_apply_fn(module: Any) -> ApplyFn:
    """A linen module as the ``apply_fn`` of the training loss.

    ``apply(params, x, t) = module.apply({"params": params}, x, t)``: a linen module as the
    ``apply_fn`` of :func:`denoising_loss` and :func:`~pifs_jax.models.training.trainer.make_train_step`.

    Args:
      module: the Flax linen module.

    Returns:
      ``apply(params, x, t)``, the module's output for a batch.
    """

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
        if patch_size is None:
            raise ArgumentError("patch_size", "required when mu > 0 (the regulariser's patch blocks)")
        reg = (
            jnp.mean(
                cross_block_penalty(
                    lambda x: apply_fn(params, x, t), x_t, key_probe, patch_size=patch_size, probes=probes
                )
            )
            / n
        )
    else:
        reg = jnp.zeros((), loss.dtype)
    objective = loss + mu * reg
    return objective, {"objective": objective, "loss": loss, "mse": jnp.mean(per_sample), "reg": reg}

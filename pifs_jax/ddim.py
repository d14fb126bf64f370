"""The DDIM reverse chain: thin aliases of the generic sampler chain with :class:`pifs_jax.samplers.DDIM`.

``ddim_chain(eps_fn, sched, x_T, grid=, eta=, key=)`` is
``sample_chain(eps_fn, sched, x_T, grid=, sampler=DDIM(eta), key=)`` (and ``ddim_sample`` is
:func:`pifs_jax.samplers.sample_batch`): the same program, the same numbers. The step
``x_s = a_t x_t + b_t epshat(x_t, t)`` and its coefficients live in :mod:`pifs_jax.samplers.ddim`.

A denoiser is any function ``eps_fn(x, t)`` of one sample ``x`` (any shape) and the integer
timestep ``t`` of this package's convention (``alpha_bar[t]``), returning an array of ``x``'s
shape. Pass model parameters inside a pytree callable, ``jax.tree_util.Partial(apply_one, params)``
(what :func:`pifs_jax.models.as_eps_fn` returns): the chain is compiled with ``equinox.filter_jit``,
which traces the denoiser's array leaves as arguments and keeps everything else static, so a
second parameter set of the same architecture compiles nothing new and no compiled program holds
the parameters. ``jax.grad(lambda p: loss(ddim_chain(Partial(apply_one, p), ...)))``
differentiates through the whole chain with respect to ``p`` (and the schedule).
"""

from __future__ import annotations

from typing import Any

import jax

from pifs_jax.errors import NonFiniteError
from pifs_jax.samplers.base import check_denoiser
from pifs_jax.samplers.chain import locate_nonfinite as locate_sampler_nonfinite
from pifs_jax.samplers.chain import sample_batch, sample_chain
from pifs_jax.samplers.ddim import DDIM, ChainSteps, chain_steps, check_eta, ddim_step
from pifs_jax.schedules import Schedule
from pifs_jax.typing import EpsFn

__all__ = [
    "ChainSteps",
    "EpsFn",
    "chain_steps",
    "check_denoiser",
    "ddim_chain",
    "ddim_sample",
    "ddim_step",
    "locate_nonfinite",
]


def _ddim(eta: Any) -> DDIM:
    check_eta(eta)
    return DDIM(eta=eta)


def ddim_chain(
    eps_fn: EpsFn,
    sched: Schedule,
    x_T: jax.Array,
    *,
    grid: Any = None,
    return_trajectory: bool = False,
    eta: Any = 0.0,
    key: jax.Array | None = None,
    check_finite: bool = True,
):
    """:func:`pifs_jax.samplers.sample_chain` with ``sampler=DDIM(eta)`` (one sample).

    ``eta`` in ``[0, 1]``: 0 = deterministic DDIM, 1 = DDPM posterior; ``key`` required if > 0.
    Other arguments and errors as :func:`pifs_jax.samplers.sample_chain`.

    Args:
      eps_fn: ``eps_fn(x, t) -> array of x's shape``; ``t`` is an int32 scalar (traced).
      sched: the schedule.
      x_T: one sample, any shape, floating dtype.
      grid: sampling grid ``0 = tau_0 < ... < tau_N <= T``; ``None`` = every training step.
      return_trajectory: also return the images after each step, shape ``(N+1,) + x.shape``,
        ordered ``x_{tau_N}, ..., x_{tau_0}``.
      eta: a real scalar in ``[0, 1]``.
      key: PRNG key, required when ``eta > 0``.
      check_finite: on an eager call, raise :class:`pifs_jax.errors.NonFiniteError` naming the
        first step that produced a non-finite value.

    Returns:
      ``x_0``, or ``(x_0, trajectory)`` with ``return_trajectory=True``.

    Raises:
      ArgumentError: naming ``eta`` (not a real scalar in ``[0, 1]``), ``x_T`` (not floating),
        ``key``, ``grid``, ``sched`` or ``eps_fn`` (output shape);
        :class:`~pifs_jax.errors.NonFiniteError` for a non-finite result.
    """
    return sample_chain(
        eps_fn, sched, x_T, grid=grid, sampler=_ddim(eta), return_trajectory=return_trajectory, key=key,
        check_finite=check_finite,
    )  # fmt: skip


def ddim_sample(
    eps_fn: EpsFn,
    sched: Schedule,
    x_T: jax.Array,
    *,
    grid: Any = None,
    return_trajectory: bool = False,
    eta: Any = 0.0,
    key: jax.Array | None = None,
    check_finite: bool = True,
):
    """:func:`pifs_jax.samplers.sample_batch` with ``sampler=DDIM(eta)`` (a batch ``(B,) + sample_shape``).

    Args:
      eps_fn: ``eps_fn(x, t)`` for one sample.
      sched: the schedule.
      x_T: the batch, shape ``(B,) + sample_shape``, floating dtype.
      grid: sampling grid ``0 = tau_0 < ... < tau_N <= T``; ``None`` = every training step.
      return_trajectory: also return the trajectories, shape ``(B, N+1) + sample_shape``.
      eta: a real scalar in ``[0, 1]`` (0 = deterministic DDIM, 1 = DDPM posterior).
      key: PRNG key, required when ``eta > 0`` (split into one key per sample).
      check_finite: on an eager call, raise :class:`pifs_jax.errors.NonFiniteError` naming the
        first non-finite sample and its first non-finite step.

    Returns:
      ``x_0`` of shape ``(B,) + sample_shape``, or ``(x_0, trajectories)`` with
      ``return_trajectory=True``.

    Raises:
      ArgumentError: naming ``eta``, ``x_T`` (no batch axis, or not floating), ``key``, ``grid``,
        ``sched`` or ``eps_fn`` (output shape); :class:`~pifs_jax.errors.NonFiniteError` for a
        non-finite result.
    """
    return sample_batch(
        eps_fn, sched, x_T, grid=grid, sampler=_ddim(eta), return_trajectory=return_trajectory, key=key,
        check_finite=check_finite,
    )  # fmt: skip


def locate_nonfinite(
    eps_fn: EpsFn,
    sched: Schedule,
    x_T: Any,
    *,
    grid: Any = None,
    eta: Any = 0.0,
    key: jax.Array | None = None,
    trajectory: Any = None,
    context: str = "",
) -> NonFiniteError | None:
    """:func:`pifs_jax.samplers.locate_nonfinite` for ``DDIM(eta)``.

    Args:
      eps_fn: ``eps_fn(x, t)`` for one sample.
      sched: the schedule.
      x_T: one sample, the chain's initial state.
      grid: sampling grid ``0 = tau_0 < ... < tau_N <= T``; ``None`` = every training step.
      eta: a real scalar in ``[0, 1]``.
      key: PRNG key, required when ``eta > 0`` (the one the chain ran with).
      trajectory: the chain's images, shape ``(N+1,) + x_T.shape``; ``None`` = run the chain again.
      context: prefixed to the error's message.

    Returns:
      a :class:`pifs_jax.errors.NonFiniteError` naming where the chain first turns non-finite, or
      ``None`` if every state is finite.

    Raises:
      ArgumentError: naming ``eta`` (not a real scalar in ``[0, 1]``).
    """
    return locate_sampler_nonfinite(
        eps_fn, sched, x_T, grid=grid, sampler=_ddim(eta), key=key, trajectory=trajectory, context=context
    )

"""One generic reverse chain for every sampler: sampling, batches, and the flat maps the Jacobians use.

:func:`sample_chain` runs ``state = sampler.init(eps_fn, tables, x_T)`` then
``state = sampler.step(eps_fn, tables, state, i, key_i)`` for ``i = N, ..., 1`` in one
``lax.scan`` and returns ``sampler.output(state)``. It is compiled with ``equinox.filter_jit``:
the denoiser's and the sampler's array leaves are traced, the rest (a model's architecture, a
sampler's Python hyperparameters) is static, so a second parameter set, schedule or grid of the
same length compiles nothing new.

:func:`flat_chain` describes the same chain on flat vectors (``ravel`` of the state) for the
Jacobian and Lyapunov code: the flat step, its inputs, and the embedding ``E = d init / d x_T``
and projection ``P = d output / d state`` of multistep samplers (``None`` when the state is the
image itself, as for DDIM and Heun, so their numbers are those of the image map).

Inputs and results: states must have a floating dtype (an integer ``x_T`` is refused, never
promoted); an eager call checks its result with one reduction, raising
:class:`pifs_jax.errors.NonFiniteError` that names the first non-finite step
(``check_finite=False`` skips it; under ``jax.jit`` / ``jax.grad`` nothing is checked).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from pifs_jax._validation import check_floating, is_concrete
from pifs_jax.errors import ArgumentError, NonFiniteError
from pifs_jax.grids import as_grid
from pifs_jax.samplers.base import Sampler, check_denoiser, check_sampler, table_row
from pifs_jax.samplers.ddim import DDIM
from pifs_jax.schedules import Schedule
from pifs_jax.typing import EpsFn

#: Table fields that are legitimately infinite (``h = lambda_s - lambda_t`` on the step onto sigma = 0).
UNBOUNDED_TABLES = ("h",)

__all__ = [
    "UNBOUNDED_TABLES",
    "FlatChain",
    "chain_from_tables",
    "flat_chain",
    "locate_nonfinite",
    "sample_batch",
    "sample_chain",
    "step_keys",
]


def step_keys(sampler: Sampler, key: jax.Array | None, num_steps: int) -> jax.Array:
    """One PRNG key per step in execution order (zeros for a deterministic sampler).

    Args:
      sampler: the sampler (its ``needs_key`` decides).
      key: PRNG key, split into ``num_steps`` keys; ignored for a deterministic sampler.
      num_steps: ``N``, the number of steps.

    Returns:
      ``jax.random.split(key, num_steps)``, or uint32 zeros of shape ``(num_steps,)`` for a
      deterministic sampler.

    Raises:
      ArgumentError: naming ``key`` when the sampler is stochastic and no key is given.
    """
    if not sampler.needs_key:
        return jnp.zeros((num_steps,), jnp.uint32)
    if key is None:
        raise ArgumentError("key", f"a PRNG key is required by the stochastic sampler {sampler!r}")
    return jax.random.split(key, num_steps)


def _scan(
    sampler: Sampler, eps_fn: EpsFn, tables: Any, x_T: jax.Array, keys: jax.Array, *, keep_states: bool,
    remat: bool = False,
):  # fmt: skip
    """``(x_0, images after each step or None)``: the ``lax.scan`` of one chain."""
    num_steps = keys.shape[0]
    stochastic = sampler.needs_key

    def body(state, inputs):
        i, key = inputs
        state = sampler.step(eps_fn, tables, state, i, key if stochastic else None)
        return state, sampler.output(state) if keep_states else None

    if remat:
        body = jax.checkpoint(body)

    order = jnp.arange(num_steps, 0, -1)  # i = N, ..., 1
    state, images = jax.lax.scan(body, sampler.init(eps_fn, tables, x_T), (order, keys))
    return sampler.output(state), images


def chain_from_tables(
    eps_fn: EpsFn, tables: Any, x_T: jax.Array, *, sampler: Sampler, key: jax.Array | None = None, remat: bool = False
) -> jax.Array:
    """``x_0`` of one chain given its tables (``sampler.tables(...)`` or ``sampler.tables_from(...)``), untraced.

    The building block for code that differentiates through a sampler with respect to its grid
    (e.g. tables of real times, :func:`pifs_jax.samplers.continuous_step_tables`): call it inside
    your own ``jax.jit`` / ``jax.grad`` / ``jax.vmap``. ``remat=True`` wraps each step in
    ``jax.checkpoint`` (memory of one step instead of ``N`` under reverse-mode differentiation).
    No input checks: those belong to :func:`sample_chain`.

    Args:
      eps_fn: ``eps_fn(x, t)`` for one sample.
      tables: the sampler's per-step tables, leading axis of length ``N``.
      x_T: one sample, any shape, floating dtype.
      sampler: the :class:`~pifs_jax.samplers.Sampler` the tables belong to.
      key: PRNG key, required for a stochastic sampler.
      remat: wrap each step in ``jax.checkpoint`` (default ``False``).

    Returns:
      ``x_0``, of ``x_T``'s shape.

    Raises:
      ArgumentError: naming ``key`` when the sampler is stochastic and no key is given.
    """
    num_steps = jax.tree_util.tree_leaves(tables)[0].shape[0]
    x_0, _ = _scan(sampler, eps_fn, tables, x_T, step_keys(sampler, key, num_steps), keep_states=False, remat=remat)
    return x_0


@eqx.filter_jit
def _compiled_chain(sampler, eps_fn, tables, x_T, keys, *, keep_states: bool):
    return _scan(sampler, eps_fn, tables, x_T, keys, keep_states=keep_states)


@eqx.filter_jit
def _compiled_batch(sampler, eps_fn, tables, x_T, keys, *, keep_states: bool):
    """:func:`_scan` over a batch ``x_T`` (``keys``: per sample and step, shape ``(B, N, ...)``)."""
    chain = functools.partial(_scan, sampler, eps_fn, tables, keep_states=keep_states)
    return jax.vmap(chain)(x_T, keys)


def _tables(sampler: Sampler, sched: Schedule, grid: Any) -> tuple[jax.Array, Any]:
    if not isinstance(sched, Schedule):
        raise ArgumentError("sched", f"expected a pifs_jax Schedule, got {type(sched).__name__}")
    grid = jnp.asarray(as_grid(grid, sched.T))
    return grid, sampler.tables(sched, grid)


def sample_chain(
    eps_fn: EpsFn,
    sched: Schedule,
    x_T: Any,
    *,
    grid: Any = None,
    sampler: Sampler | None = None,
    return_trajectory: bool = False,
    key: jax.Array | None = None,
    check_finite: bool = True,
):
    """Run ``sampler``'s reverse chain from ``x_T`` (at ``tau_N``) down to ``x_0`` (at ``tau_0 = 0``).

    Args:
      eps_fn: ``eps_fn(x, t) -> array of x's shape``; ``t`` is an int32 scalar (traced).
      sched: the schedule.
      x_T: one sample, any shape, floating dtype (integers are refused, not promoted). Use
        :func:`sample_batch` (or ``jax.vmap``) for batches.
      grid: sampling grid ``0 = tau_0 < ... < tau_N <= T``; ``None`` = every training step.
      sampler: a :class:`pifs_jax.samplers.Sampler`; default ``DDIM()`` (deterministic).
      return_trajectory: also return the images after each step, shape ``(N+1,) + x.shape``,
        ordered ``x_{tau_N}, ..., x_{tau_0}`` (for a multistep sampler, the image part of its state).
      key: PRNG key for a stochastic sampler (``DDIM(eta > 0)``).
      check_finite: on an eager call, raise :class:`pifs_jax.errors.NonFiniteError` naming the
        first step that produced a non-finite value (:func:`locate_nonfinite`).

    Returns:
      ``x_0``, or ``(x_0, trajectory)`` with ``return_trajectory=True``.

    Raises:
      ArgumentError: naming ``sampler``, ``x_T`` (not floating), ``key``, ``grid``, ``sched`` or
        ``eps_fn`` (output shape); :class:`~pifs_jax.errors.NonFiniteError` for a non-finite result.
    """
    sampler = check_sampler(DDIM() if sampler is None else sampler)
    x_T = jnp.asarray(x_T)
    check_floating(x_T, name="x_T")
    grid, tables = _tables(sampler, sched, grid)
    if is_concrete(x_T, sched, grid):
        check_denoiser(eps_fn, x_T)
    keys = step_keys(sampler, key, grid.shape[0] - 1)
    x_0, states = _compiled_chain(sampler, eps_fn, tables, x_T, keys, keep_states=bool(return_trajectory))
    trajectory = jnp.concatenate([x_T[None], states], axis=0) if states is not None else None
    if check_finite and is_concrete(x_0) and not bool(jnp.all(jnp.isfinite(x_0))):
        error = locate_nonfinite(eps_fn, sched, x_T, grid=grid, sampler=sampler, key=key, trajectory=trajectory)
        raise error or NonFiniteError("eps_fn", "the chain's result is not finite")
    return (x_0, trajectory) if return_trajectory else x_0


def sample_batch(
    eps_fn: EpsFn,
    sched: Schedule,
    x_T: Any,
    *,
    grid: Any = None,
    sampler: Sampler | None = None,
    return_trajectory: bool = False,
    key: jax.Array | None = None,
    check_finite: bool = True,
):
    """:func:`sample_chain` over a batch ``x_T`` of shape ``(B,) + sample_shape`` via ``jax.vmap``.

    A stochastic sampler gives each sample its own key (``jax.random.split(key, B)``, then one
    per step). ``check_finite`` as for :func:`sample_chain` (one reduction over the batch's
    ``x_0``); the error names the first non-finite sample and its first non-finite step.

    Args:
      eps_fn: ``eps_fn(x, t)`` for one sample.
      sched: the schedule.
      x_T: the batch, shape ``(B,) + sample_shape``, floating dtype.
      grid: sampling grid ``0 = tau_0 < ... < tau_N <= T``; ``None`` = every training step.
      sampler: a :class:`pifs_jax.samplers.Sampler`; default ``DDIM()`` (deterministic).
      return_trajectory: also return the trajectories, shape ``(B, N+1) + sample_shape``.
      key: PRNG key for a stochastic sampler.
      check_finite: on an eager call, raise :class:`pifs_jax.errors.NonFiniteError` for a
        non-finite result.

    Returns:
      ``x_0`` of shape ``(B,) + sample_shape``, or ``(x_0, trajectories)`` with
      ``return_trajectory=True``.

    Raises:
      ArgumentError: naming ``sampler``, ``x_T`` (no batch axis, or not floating), ``key``,
        ``grid``, ``sched`` or ``eps_fn`` (output shape); :class:`~pifs_jax.errors.NonFiniteError`
        for a non-finite result.
    """
    sampler = check_sampler(DDIM() if sampler is None else sampler)
    x_T = jnp.asarray(x_T)
    if x_T.ndim < 1:
        raise ArgumentError("x_T", f"expected a batch with a leading axis, got shape {x_T.shape}")
    check_floating(x_T, name="x_T")
    grid, tables = _tables(sampler, sched, grid)
    if is_concrete(x_T):
        check_denoiser(eps_fn, x_T[0])
    num_steps = grid.shape[0] - 1
    step_keys(sampler, key, num_steps)  # refuses a missing key of a stochastic sampler
    sample_keys = jax.random.split(key, x_T.shape[0]) if sampler.needs_key and key is not None else None
    if sample_keys is None:
        keys = jnp.zeros((x_T.shape[0], num_steps), jnp.uint32)
    else:
        keys = jax.vmap(lambda k: step_keys(sampler, k, num_steps))(sample_keys)
    x_0, states = _compiled_batch(sampler, eps_fn, tables, x_T, keys, keep_states=bool(return_trajectory))
    out = (x_0, jnp.concatenate([x_T[:, None], states], axis=1)) if states is not None else x_0
    if check_finite and is_concrete(x_0):
        finite = np.asarray(jnp.all(jnp.isfinite(x_0.reshape(x_0.shape[0], -1)), axis=1))
        if not finite.all():
            i = int(np.flatnonzero(~finite)[0])
            error = locate_nonfinite(
                eps_fn, sched, x_T[i], grid=grid, sampler=sampler,
                key=None if sample_keys is None else sample_keys[i],
                trajectory=out[1][i] if return_trajectory else None, context=f"sample {i} of {x_T.shape[0]}: ",
            )  # fmt: skip
            raise error or NonFiniteError("eps_fn", f"sample {i} of {x_T.shape[0]}: the chain's result is not finite")
    return out


def locate_nonfinite(
    eps_fn: EpsFn,
    sched: Schedule,
    x_T: Any,
    *,
    grid: Any = None,
    sampler: Sampler | None = None,
    key: jax.Array | None = None,
    trajectory: Any = None,
    context: str = "",
) -> NonFiniteError | None:
    """The error describing where the chain from ``x_T`` first turns non-finite, or ``None``.

    Finds the first image ``x^(j)`` (after ``j`` steps, ``x^(0) = x_T``) with a NaN or infinite
    entry, from ``trajectory`` (shape ``(N+1,) + x_T.shape``, as :func:`sample_chain` returns it)
    or, without one, by running the chain again eagerly (same sampler and ``key``: the same
    numbers). The error's ``.argument`` says what to blame:

    - ``x_T`` when the initial state itself is non-finite;
    - ``sched`` when the step's coefficients (the sampler's tables) are not finite in the state's
      dtype (a schedule end point ``alpha_bar_T`` so small that ``a_t = sqrt(ab_s/ab_t)``
      overflows);
    - ``eps_fn`` otherwise, saying whether the denoiser's output at that step was non-finite.

    Args:
      eps_fn: ``eps_fn(x, t)`` for one sample.
      sched: the schedule.
      x_T: one sample, the chain's initial state.
      grid: sampling grid ``0 = tau_0 < ... < tau_N <= T``; ``None`` = every training step.
      sampler: a :class:`pifs_jax.samplers.Sampler`; default ``DDIM()``.
      key: PRNG key for a stochastic sampler (the one the chain ran with).
      trajectory: the chain's images, shape ``(N+1,) + x_T.shape``; ``None`` = run the chain again.
      context: prefixed to the error's message (e.g. ``"sample 3 of 64: "``).

    Returns:
      A :class:`pifs_jax.errors.NonFiniteError` to raise, or ``None`` if every state is finite.
    """
    sampler = DDIM() if sampler is None else sampler
    x_T = jnp.asarray(x_T)
    if trajectory is None:
        _, trajectory = sample_chain(
            eps_fn, sched, x_T, grid=grid, sampler=sampler, key=key, return_trajectory=True, check_finite=False
        )
    trajectory = jnp.asarray(trajectory)
    counts = np.asarray(jnp.sum(~jnp.isfinite(trajectory.reshape(trajectory.shape[0], -1)), axis=1))
    bad = np.flatnonzero(counts)
    if bad.size == 0:
        return None
    j, size = int(bad[0]), x_T.size
    if j == 0:
        return NonFiniteError("x_T", f"{context}the initial state has {counts[0]} non-finite of its {size} values")
    g = np.asarray(as_grid(grid, sched.T))
    n_steps = g.shape[0] - 1
    i = n_steps - j + 1  # the grid step that produced x^(j)
    t, s = int(g[i]), int(g[i - 1])
    where = (
        f"{context}non-finite values first appear after sampling step {j} of {n_steps} (t = {t} -> s = {s}), "
        f"in {counts[j]} of the state's {size} values"
    )
    row = table_row(sampler.tables(sched, jnp.asarray(g)), i)
    named = row._asdict() if hasattr(row, "_asdict") else dict(enumerate(jax.tree_util.tree_leaves(row)))
    coefficients = {
        name: float(np.asarray(value, np.float64))
        for name, value in named.items()
        if jnp.issubdtype(jnp.asarray(value).dtype, jnp.floating) and name not in UNBOUNDED_TABLES
    }
    if not np.all(np.isfinite(np.asarray(list(coefficients.values())).astype(x_T.dtype))):
        shown = ", ".join(f"{name} = {value:.6g}" for name, value in coefficients.items())
        return NonFiniteError(
            "sched",
            f"{where}; the step's coefficients ({shown}) are not all finite in {x_T.dtype}: the schedule's "
            f"alpha_bar_t = {np.exp(float(sched.log_alpha_bar[t])):.3g} is too small "
            "(check the schedule's end point alpha_bar_T, or use float64)",
        )
    eps = np.asarray(eps_fn(trajectory[j - 1], jnp.asarray(t, jnp.int32)))
    eps_bad = int(np.sum(~np.isfinite(eps)))
    if eps_bad:
        hint = f"the denoiser's output at t = {t} has {eps_bad} non-finite values; check eps_fn at that timestep"
    else:
        hint = (
            f"the denoiser's output at t = {t} is finite (max |eps| = {float(np.max(np.abs(eps))):.3g}), so "
            f"the step's update overflowed {x_T.dtype}; check the denoiser's output scale and the schedule's end point"
        )
    return NonFiniteError("eps_fn", f"{where}; {hint}")


class FlatChain(NamedTuple):
    """A sampler's chain on flat vectors, for Jacobians and Lyapunov spectra.

    ``step(z, (i, key)) -> z'`` is step ``i`` on the raveled state; ``inputs`` are the scanned
    ``(i, key)`` pairs in execution order; ``z0`` the raveled initial state. ``embed(v)`` (flat
    image to flat state: ``init``) and ``project(z)`` (flat state to flat image: ``output``) are
    ``None`` when the state is the image (then ``z`` is the flat image and ``E = P = I``).
    ``image_step(v, (i, key), z)`` is the step's map on the image alone, the history of ``z``
    held fixed (``output(step(embed(state(z), v)))``): the per-step map ``analyze_chain`` reads.
    """

    step: Callable[[jax.Array, Any], jax.Array]
    inputs: tuple[jax.Array, jax.Array]
    z0: jax.Array
    embed: Callable[[jax.Array], jax.Array] | None
    project: Callable[[jax.Array], jax.Array] | None
    image_step: Callable[[jax.Array, Any, jax.Array], jax.Array]


def state_is_image(sampler: Sampler, eps_fn: EpsFn, tables: Any, x: jax.Array) -> bool:
    """Whether ``sampler``'s state is the image itself (one array of ``x``'s shape and dtype)."""
    state = eqx.filter_eval_shape(sampler.init, eps_fn, tables, x)
    return isinstance(state, jax.ShapeDtypeStruct) and state.shape == x.shape and state.dtype == x.dtype


def flat_chain(
    sampler: Sampler, eps_fn: EpsFn, sched: Schedule, grid: jax.Array, x_T: jax.Array, key: jax.Array | None = None
) -> FlatChain:
    """The chain of ``sampler`` from ``x_T`` on flat vectors (see :class:`FlatChain`); traceable.

    Args:
      sampler: the :class:`~pifs_jax.samplers.Sampler`.
      eps_fn: ``eps_fn(x, t)`` for one sample.
      sched: the schedule.
      grid: sampling grid ``0 = tau_0 < ... < tau_N``, an array (not checked here).
      x_T: one sample, any shape.
      key: PRNG key, required for a stochastic sampler.

    Returns:
      :class:`FlatChain` of the chain; ``embed`` and ``project`` are ``None`` when the sampler's
      state is the image itself.

    Raises:
      ArgumentError: naming ``key`` when the sampler is stochastic and no key is given.
    """
    tables = sampler.tables(sched, grid)
    shape = x_T.shape
    num_steps = grid.shape[0] - 1
    inputs = (jnp.arange(num_steps, 0, -1), step_keys(sampler, key, num_steps))
    stochastic = sampler.needs_key

    def key_of(k):
        return k if stochastic else None

    if state_is_image(sampler, eps_fn, tables, x_T):

        def image_map(v, inp):
            i, k = inp
            return sampler.step(eps_fn, tables, v.reshape(shape), i, key_of(k)).reshape(-1)

        def image_map_at(v, inp, z):
            return image_map(v, inp)

        return FlatChain(image_map, inputs, x_T.reshape(-1), None, None, image_map_at)

    state0 = sampler.init(eps_fn, tables, x_T)
    _, unravel = ravel_pytree(state0)

    def step(z, inp):
        i, k = inp
        return ravel_pytree(sampler.step(eps_fn, tables, unravel(z), i, key_of(k)))[0]

    def embed(v):
        return ravel_pytree(sampler.init(eps_fn, tables, v.reshape(shape)))[0]

    def project(z):
        return sampler.output(unravel(z)).reshape(-1)

    def image_step(v, inp, z):
        i, k = inp
        state = sampler.embed(unravel(z), v.reshape(shape))
        return sampler.output(sampler.step(eps_fn, tables, state, i, key_of(k))).reshape(-1)

    return FlatChain(step, inputs, embed(x_T.reshape(-1)), embed, project, image_step)

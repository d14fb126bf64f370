"""Jacobians of DDIM steps and chains, their patch-block structure and the suppression field.

One step ``Phi_t(x) = a_t x + b_t epshat(x, t)`` has Jacobian ``J Phi_t = a_t I + b_t J_x epshat(x, t)``
(docs/theory.md section 3). Here ``J`` always means the Jacobian of the *flattened* map
``R^n -> R^n`` (row-major flattening of the sample's shape), so ``J[i, j] = d Phi_i / d x_j``.

- Dense: :func:`step_jacobian`, :func:`ddim_step_jacobian`, :func:`chain_jacobian` (forward mode,
  ``n`` tangents in batches of :data:`TANGENT_CHUNK`: :func:`forward_jacobian`; memory ``n^2``).
- Matrix-free: :func:`step_jvp`, :func:`step_vjp` (``jax.jvp`` / ``jax.vjp``, never form ``J``).
- Patch blocks (docs/theory.md section 6): with the image cut into ``M`` patches of ``n_k = p^2 C``
  coordinates (:mod:`pifs_jax.patches`), ``[J]_{kj}`` is the ``n_k x n_k`` block mapping patch
  ``j`` of the input to patch ``k`` of the output. :func:`block_norms` (exact, from ``J``) and
  :func:`block_norms_matrix_free` (block power iteration with JVP/VJP) give the spectral norms
  ``||[J]_{kj}||_2`` and their summaries ``kappa_diag``, ``delta_cross``, the (PC) bound and the
  per-patch margins (:class:`BlockNorms`).
- :func:`suppression_field`: ``S_{k,t}(x) = |b_t| <v_k, [J_x Delta_t(x)]_kk v_k>`` with
  ``Delta_t = epshat - eps^G`` (JVPs only); :func:`projected_coupling`: the step on the patches'
  leading directions, ``P_kj = <v_k, [J]_kj v_j>`` (JVPs only).

Every function is jittable (callables and shapes static) and validates at the boundary when its
inputs are concrete: a denoiser whose output shape differs from its input
(:func:`pifs_jax.ddim.check_denoiser`), a patch size that does not tile the image, vectors of the
wrong shape all raise ``ValueError`` naming the argument. States (``x``, ``x_T``) must have a
floating dtype, checked under ``jax.jit`` too: an integer state is refused, not promoted.

The dense Jacobians and the matrix-free block norms run as ``equinox.filter_jit`` programs that
take the denoiser (``step_fn``) as an argument: the array leaves of a pytree denoiser
(:func:`pifs_jax.models.as_eps_fn`, ``jax.tree_util.Partial``) are traced, so another parameter
set of the same shapes compiles nothing new; a plain closure compiles once per closure object.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from pifs_jax._validation import check_floating, is_concrete
from pifs_jax.errors import ArgumentError
from pifs_jax.geometry import step_coefficients
from pifs_jax.grids import as_grid
from pifs_jax.patches import PatchLayout, patch_layout, patch_permutation, patchify, unpatchify
from pifs_jax.samplers.base import Sampler, check_denoiser, check_sampler
from pifs_jax.samplers.chain import sample_chain, step_keys
from pifs_jax.samplers.ddim import DDIM, ddim_step
from pifs_jax.schedules import Schedule
from pifs_jax.typing import EpsFn

__all__ = [
    "TANGENT_BATCH_BYTES",
    "TANGENT_CHUNK",
    "BlockNorms",
    "block_norms",
    "block_norms_matrix_free",
    "chain_jacobian",
    "ddim_step_jacobian",
    "forward_jacobian",
    "forward_products",
    "leading_eigenvectors",
    "patch_blocks",
    "projected_coupling",
    "sampler_step_jacobian",
    "step_jacobian",
    "step_jvp",
    "step_vjp",
    "summarize_block_norms",
    "suppression_field",
]


# ----------------------------------------------------------------------------- dense Jacobians


#: Tangents per batch of :func:`forward_jacobian`: the rows of one vmapped JVP. Measured on a 2-core
#: CPU (quick DiT, ``n = 768``, 16 points): 64-row batches form the Jacobians 1.85x faster than one
#: 768-row ``jax.jacfwd`` (whose activations leave the cache); 16 to 192 rows perform alike.
TANGENT_CHUNK = 64


def forward_jacobian(fn: Callable[[jax.Array], jax.Array], x: jax.Array, *, chunk: int = TANGENT_CHUNK) -> jax.Array:
    """Dense Jacobian ``J[i, j] = d fn_i / d x_j`` of a map of a vector ``x`` (shape ``(n,)``), forward mode.

    The same matrix as ``jax.jacfwd(fn)(x)``: :func:`forward_products` with ``V = I``, i.e. ``fn``
    linearised once and the linear map applied to the unit vectors ``e_j`` in batches of ``chunk``.
    Traceable (jit, vmap, grad).

    Args:
      fn: the map, a vector of shape ``(n,)`` to an array of shape ``(m,)``.
      x: the point, shape ``(n,)``.
      chunk: unit vectors per batch (:data:`TANGENT_CHUNK`); ``None`` sizes the batches as
        :func:`forward_products` does.

    Returns:
      ``J``, shape ``(m, n)``.
    """
    return forward_products(fn, x, jnp.eye(x.shape[0], dtype=x.dtype), chunk=chunk)[1]


#: Working-set budget of one tangent batch when :func:`forward_products` chooses its batch size
#: (``chunk=None``): 32 MiB. 16 MiB (about a core's share of a small last-level cache) and 32 MiB
#: performed alike on a 2-core AMD EPYC; on a 2-core Xeon (AVX-512, 4 MiB L2 per core) one batch of
#: 768 tangents (30 MiB) pushed 12 % faster than two of 384.
TANGENT_BATCH_BYTES = 32 * 2**20


def forward_products(
    fn: Callable[[jax.Array], jax.Array], x: jax.Array, tangents: jax.Array, *, chunk: int | None = TANGENT_CHUNK
) -> tuple[jax.Array, jax.Array]:
    """``(fn(x), J V)`` with ``J = d fn / d x`` at ``x`` (shape ``(n,)``) and ``V`` the ``n x p`` ``tangents``.

    ``fn`` is linearised once (``jax.linearize``, which also returns the primal ``fn(x)``) and the
    linear map is applied to the columns ``v_j`` of ``V`` in batches of ``chunk``
    (``jax.lax.map(..., batch_size=chunk)``), so the working set of one batch stays small; a
    trailing partial batch is handled by ``lax.map``. ``(J V)_{:, j} = J v_j``: with ``V = I`` it
    is the Jacobian itself (:func:`forward_jacobian`); with an orthonormal block ``Q`` it is the
    pushed block ``J Q`` without forming ``J`` (``p`` tangents, and no ``2 n^2 p`` product ``J Q``).

    ``chunk=None`` sizes the batches from the linear map itself: with ``b`` the bytes of one
    tangent's intermediate values (the outputs of the equations of its jaxpr, nested ones
    included), at most ``c = max(TANGENT_CHUNK, TANGENT_BATCH_BYTES // b)`` tangents per batch,
    spread evenly: ``ceil(p / ceil(p / c))``. (MLP denoiser of ``benchmarks/chain_spectrum.py`` at
    ``n = 768``, ``b = 40 KB``: one batch of 768. On a 2-core AMD EPYC, CPU time per step 18.9 ms
    with 384 or 768 tangents per batch, 23 ms with 64 and 27 ms for ``jax.jacfwd`` then ``J Q``; on
    a 2-core Xeon with AVX-512, 5.9 ms with 768, 6.7 ms with 384, 7.8 ms with 128.)
    Traceable (jit, vmap, grad).

    Args:
      fn: the map, a vector of shape ``(n,)`` to an array of shape ``(m,)``.
      x: the point, shape ``(n,)``.
      tangents: ``V``, shape ``(n, p)``; its columns are the tangents.
      chunk: tangents per batch; ``None`` chooses it from the linear map's memory, as above.

    Returns:
      ``(fn(x), J V)``, the second of shape ``(m, p)``.
    """
    value, linear = jax.linearize(fn, x)
    p = tangents.shape[1]
    if chunk is None:
        per_tangent = max(_jaxpr_bytes(jax.make_jaxpr(linear)(x).jaxpr), 1)
        largest = max(TANGENT_CHUNK, TANGENT_BATCH_BYTES // per_tangent)
        chunk = -(-p // -(-p // largest))
    if chunk >= p:  # one batch
        return value, jax.vmap(linear, in_axes=1, out_axes=1)(tangents)
    return value, jax.lax.map(linear, tangents.T, batch_size=chunk).T


def _jaxpr_bytes(jaxpr: Any) -> int:
    """Bytes of the values a jaxpr's equations produce, nested jaxprs (``jit``, ``cond``, ...) included."""
    total = 0
    for eqn in jaxpr.eqns:
        total += sum(int(np.prod(v.aval.shape)) * np.dtype(v.aval.dtype).itemsize for v in eqn.outvars)
        for param in eqn.params.values():
            for inner in param if isinstance(param, (tuple, list)) else (param,):
                inner = getattr(inner, "jaxpr", inner)
                if hasattr(inner, "eqns"):
                    total += _jaxpr_bytes(inner)
    return total


def _flat_step(eps_fn: EpsFn, shape: tuple, t: Any, a: Any, b: Any, dtype) -> Callable:
    a = jnp.asarray(a, dtype)
    b = jnp.asarray(b, dtype)
    return lambda flat: ddim_step(eps_fn, flat.reshape(shape), t, a, b).reshape(-1)


def step_jacobian(eps_fn: EpsFn, x: Any, *, t: Any, a: Any, b: Any) -> jax.Array:
    """Dense Jacobian of one DDIM step ``J Phi_t(x) = a I + b J_x epshat(x, t)``, shape ``(n, n)``.

    Computed in forward mode on the flattened map (``n`` JVPs of ``eps_fn``, in batches:
    :func:`forward_jacobian`).

    Args:
      eps_fn: ``eps_fn(x, t)`` returning an array of ``x``'s shape.
      x: the point (one sample, any shape, ``n`` entries).
      t: integer timestep passed to ``eps_fn``.
      a: ``a_t`` (e.g. from :func:`pifs_jax.geometry.step_coefficients`).
      b: ``b_t`` (likewise).

    Returns:
      ``J[i, j] = d Phi_i / d x_j`` in the row-major flattening of ``x``.

    Raises:
      ArgumentError: naming ``x`` (not a floating array) or ``eps_fn`` (a concrete call that fails
        or does not return an array of ``x``'s shape).
    """
    x = jnp.asarray(x)
    check_floating(x, name="x")
    if is_concrete(x):
        check_denoiser(eps_fn, x)
    return _compiled_step_jacobian(eps_fn, x, jnp.asarray(t), jnp.asarray(a, x.dtype), jnp.asarray(b, x.dtype))


@eqx.filter_jit
def _compiled_step_jacobian(eps_fn: EpsFn, x: jax.Array, t: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
    return forward_jacobian(_flat_step(eps_fn, x.shape, t, a, b, x.dtype), x.reshape(-1))


def _step_of_grid(sched: Schedule, grid: Any, step: Any):
    """``(t, a, b)`` of sampling step ``step`` (``tau_step -> tau_{step-1}``), ``1 <= step <= N``."""
    grid = as_grid(grid, sched.T)
    n_steps = int(np.shape(grid)[0]) - 1
    if is_concrete(step):
        if isinstance(step, bool) or not float(step).is_integer() or not 1 <= int(step) <= n_steps:
            raise ArgumentError(
                "step", f"expected an integer in 1..{n_steps} (step i maps tau_i -> tau_(i-1)), got {step!r}"
            )
    c = step_coefficients(sched, grid)
    return jnp.asarray(grid)[step], c.a[step - 1], c.b[step - 1]


def ddim_step_jacobian(eps_fn: EpsFn, sched: Schedule, x: Any, *, grid: Any = None, step: Any) -> jax.Array:
    """Dense Jacobian of sampling step ``step`` of ``grid`` (``tau_step -> tau_{step-1}``) at ``x``.

    :func:`step_jacobian` with ``t = tau_step``, ``a = a_t``, ``b = b_t`` of the grid's explicit
    ``(alpha_bar_t, alpha_bar_s)`` pair. For Gaussian data with ``Sigma = U diag(lambda) U^T`` it
    equals ``U diag(f_t(lambda)) U^T`` (:func:`pifs_jax.geometry.expansion_factor`, row ``step - 1``).

    Args:
      eps_fn: the denoiser.
      sched: the schedule.
      x: the point ``x_{tau_step}``.
      grid: sampling grid ``0 = tau_0 < ... < tau_N <= T`` (``None`` = every training step).
      step: ``1..N``; ``step = 1`` is the finest step (landing on ``alpha_bar = 1``).

    Returns:
      shape ``(n, n)``.

    Raises:
      ArgumentError: naming ``grid`` (not a valid grid for ``sched``), ``step`` (a concrete value
        that is not an integer in ``1..N``), ``x`` or ``eps_fn`` (as :func:`step_jacobian`).
    """
    t, a, b = _step_of_grid(sched, grid, step)
    return step_jacobian(eps_fn, x, t=t, a=a, b=b)


def sampler_step_jacobian(
    eps_fn: EpsFn,
    sched: Schedule,
    state: Any,
    *,
    grid: Any = None,
    step: Any,
    sampler: Sampler | None = None,
    key: jax.Array | None = None,
) -> jax.Array:
    """Dense Jacobian of step ``step`` (``tau_step -> tau_{step-1}``) of ``sampler`` on its whole state.

    ``J[i, j] = d step_i / d z_j`` in the flattening ``z = ravel(state)`` of the sampler's state
    (:func:`jax.flatten_util.ravel_pytree`): for DDIM and Heun the state is the image, shape
    ``(n, n)`` (for DDIM equal to :func:`ddim_step_jacobian`); for DPM-Solver++(2M) the state is
    ``(x, d_prev)`` and the Jacobian ``(2n, 2n)``, its top-left ``n x n`` block the image map with
    the history held fixed. A stochastic sampler's step is taken at the fixed noise of ``key``
    (that step's key of :func:`pifs_jax.samplers.sample_chain` with the same ``key``).

    Args:
      eps_fn: the denoiser.
      sched: the schedule.
      state: a state of ``sampler`` (e.g. ``sampler.init(eps_fn, sampler.tables(sched, grid), x)``
        or the image for DDIM and Heun).
      grid: sampling grid ``0 = tau_0 < ... < tau_N <= T`` (``None`` = every training step).
      step: ``1..N``.
      sampler: the sampler (default :class:`pifs_jax.samplers.DDIM`).
      key: PRNG key of the chain, required by a stochastic sampler.

    Returns:
      ``J``, shape ``(d, d)`` with ``d`` the number of entries of ``state``.

    Raises:
      ArgumentError: naming ``sampler`` (not a sampler), ``grid``, ``step`` (not an integer in
        ``1..N``), ``state`` (a leaf that is not a floating array) or ``key`` (missing for a
        stochastic sampler).
    """
    sampler = check_sampler(DDIM() if sampler is None else sampler)
    _step_of_grid(sched, grid, step)  # validates step against the grid
    grid = jnp.asarray(as_grid(grid, sched.T))
    leaves = jax.tree_util.tree_leaves(state)
    for leaf in leaves:
        check_floating(jnp.asarray(leaf), name="state")
    keys = step_keys(sampler, key, grid.shape[0] - 1)
    return _compiled_sampler_step_jacobian(sampler, eps_fn, sched, state, grid, jnp.asarray(step), keys)


@eqx.filter_jit
def _compiled_sampler_step_jacobian(sampler, eps_fn, sched, state, grid, step, keys) -> jax.Array:
    tables = sampler.tables(sched, grid)
    flat, unravel = ravel_pytree(state)
    key = keys[grid.shape[0] - 1 - step] if sampler.needs_key else None

    def flat_step(z):
        return ravel_pytree(sampler.step(eps_fn, tables, unravel(z), step, key))[0]

    return forward_jacobian(flat_step, flat)


def chain_jacobian(
    eps_fn: EpsFn,
    sched: Schedule,
    x_T: Any,
    *,
    grid: Any = None,
    sampler: Sampler | None = None,
    key: jax.Array | None = None,
) -> jax.Array:
    """Dense Jacobian of the whole chain ``x_T -> x_0``, ``d x_0 / d x_T``, for any sampler.

    Forward mode through :func:`pifs_jax.samplers.sample_chain`: ``n`` tangents pushed through
    all ``N`` steps. For DDIM it is the product of the step Jacobians on the trajectory,
    ``J_1 J_2 ... J_N`` (``J_N`` is the first step, at ``tau_N``); for a multistep sampler it is
    ``P J_1 ... J_N E`` on its state, the history included through its dependence on ``x_T``. A
    stochastic sampler is differentiated at the fixed noise of ``key``. For small ``n``; entries can
    over/underflow for long chains with widely spread exponents (use the QR-stabilised spectra of
    :mod:`pifs_jax.lyapunov`).

    Args:
      eps_fn: the denoiser.
      sched: the schedule.
      x_T: the starting point (one sample, any shape, ``n`` entries).
      grid: sampling grid ``0 = tau_0 < ... < tau_N <= T`` (``None`` = every training step).
      sampler: the sampler (default :class:`pifs_jax.samplers.DDIM`).
      key: PRNG key of the chain, required by a stochastic sampler.

    Returns:
      shape ``(n, n)``; ``d x_0 / d x_T`` in the flattening of ``x_T``.

    Raises:
      ArgumentError: naming ``sampler`` (not a sampler), ``x_T`` (not a floating array),
        ``eps_fn`` (a concrete call that fails or returns another shape), ``key`` (missing for a
        stochastic sampler) or ``grid``.
    """
    sampler = check_sampler(DDIM() if sampler is None else sampler)
    x_T = jnp.asarray(x_T)
    check_floating(x_T, name="x_T")
    if is_concrete(x_T):
        check_denoiser(eps_fn, x_T)
    if sampler.needs_key and key is None:
        raise ArgumentError("key", f"a PRNG key is required by the stochastic sampler {sampler!r}")
    return _compiled_chain_jacobian(sampler, eps_fn, sched, x_T, jnp.asarray(as_grid(grid, sched.T)), key)


@eqx.filter_jit
def _compiled_chain_jacobian(
    sampler, eps_fn: EpsFn, sched: Schedule, x_T: jax.Array, grid: jax.Array, key
) -> jax.Array:
    shape = x_T.shape

    def flat_chain(flat):
        x_0 = sample_chain(eps_fn, sched, flat.reshape(shape), grid=grid, sampler=sampler, key=key, check_finite=False)
        assert not isinstance(x_0, tuple)  # no trajectory was asked for
        return x_0.reshape(-1)

    return forward_jacobian(flat_chain, x_T.reshape(-1))


# ----------------------------------------------------------------------------- matrix-free products


def _check_like(v: jax.Array, x: jax.Array, name: str) -> None:
    if v.shape != x.shape:
        raise ArgumentError(name, f"expected the shape of x, {x.shape}, got {v.shape}")


def step_jvp(eps_fn: EpsFn, x: Any, v: Any, *, t: Any, a: Any, b: Any) -> tuple[jax.Array, jax.Array]:
    """``(Phi_t(x), J Phi_t(x) v)`` without forming ``J`` (``jax.jvp``), both of ``x``'s shape.

    ``J v = a v + b J_x epshat(x, t) v``; cost about one ``eps_fn`` evaluation and one JVP.

    Args:
      eps_fn: ``eps_fn(x, t)`` returning an array of ``x``'s shape.
      x: the point (one sample, any shape).
      v: the tangent, of ``x``'s shape.
      t: integer timestep passed to ``eps_fn``.
      a: ``a_t`` of the step.
      b: ``b_t`` of the step.

    Returns:
      ``(Phi_t(x), J Phi_t(x) v)``.

    Raises:
      ArgumentError: naming ``x`` (not a floating array), ``v`` (not of ``x``'s shape) or
        ``eps_fn`` (a concrete call that fails or returns another shape).
    """
    x = jnp.asarray(x)
    check_floating(x, name="x")
    v = jnp.asarray(v, x.dtype)
    _check_like(v, x, "v")
    if is_concrete(x):
        check_denoiser(eps_fn, x)
    a, b = jnp.asarray(a, x.dtype), jnp.asarray(b, x.dtype)
    return jax.jvp(lambda y: ddim_step(eps_fn, y, t, a, b), (x,), (v,))


def step_vjp(eps_fn: EpsFn, x: Any, u: Any, *, t: Any, a: Any, b: Any) -> tuple[jax.Array, jax.Array]:
    """``(Phi_t(x), J Phi_t(x)^T u)`` without forming ``J`` (``jax.vjp``), both of ``x``'s shape.

    ``J^T u = a u + b J_x epshat(x, t)^T u``.

    Args:
      eps_fn: ``eps_fn(x, t)`` returning an array of ``x``'s shape.
      x: the point (one sample, any shape).
      u: the cotangent, of ``x``'s shape.
      t: integer timestep passed to ``eps_fn``.
      a: ``a_t`` of the step.
      b: ``b_t`` of the step.

    Returns:
      ``(Phi_t(x), J Phi_t(x)^T u)``.

    Raises:
      ArgumentError: naming ``x`` (not a floating array), ``u`` (not of ``x``'s shape) or
        ``eps_fn`` (a concrete call that fails or returns another shape).
    """
    x = jnp.asarray(x)
    check_floating(x, name="x")
    u = jnp.asarray(u, x.dtype)
    _check_like(u, x, "u")
    if is_concrete(x):
        check_denoiser(eps_fn, x)
    a, b = jnp.asarray(a, x.dtype), jnp.asarray(b, x.dtype)
    y, pullback = jax.vjp(lambda z: ddim_step(eps_fn, z, t, a, b), x)
    (g,) = pullback(u)
    return y, g


# ----------------------------------------------------------------------------- patch blocks


def patch_blocks(J: Any, image_shape: Any, patch_size: int) -> jax.Array:
    """Split a Jacobian of the flattened image map into patch blocks, shape ``(M, M, n_k, n_k)``.

    ``blocks[k, j] = [J]_{kj}``: rows are output patch ``k``'s coordinates, columns input patch
    ``j``'s, both in :func:`pifs_jax.patches.patchify` order.

    Args:
      J: Jacobian of the flattened image map, shape ``(n, n)``, ``n = prod(image_shape)``.
      image_shape: ``(H, W, C)`` or ``(H, W)``.
      patch_size: ``p``, tiling the image.

    Returns:
      ``blocks``, shape ``(M, M, n_k, n_k)``.

    Raises:
      ArgumentError: naming ``image_shape`` (not ``(H, W, C)`` or ``(H, W)`` with positive sizes),
        ``patch_size`` if it does not tile ``image_shape``, or ``J`` if it is not ``(n, n)`` with
        ``n = prod(image_shape)``.
    """
    layout = patch_layout(image_shape, patch_size)
    J = jnp.asarray(J)
    if J.shape != (layout.size, layout.size):
        raise ArgumentError(
            "J", f"expected shape ({layout.size}, {layout.size}) for image_shape {layout.image_shape}, got {J.shape}"
        )
    perm = patch_permutation(layout.image_shape, patch_size)
    m, nk = layout.num_patches, layout.patch_dim
    permuted = J[perm][:, perm]
    return permuted.reshape(m, nk, m, nk).transpose(0, 2, 1, 3)


class BlockNorms(NamedTuple):
    """Spectral norms of the patch blocks of a step Jacobian and their summaries.

    With ``N_kj = ||[J]_{kj}||_2``, ``kappa_k = N_kk`` and ``delta_k = sum_{j != k} N_kj``: for the
    linearised step, ``||(J h)_k||_2 <= (kappa_k + delta_k) max_j ||h_j||_2``, so patch ``k``'s
    per-patch margin ``m_k = 1 - (kappa_k + delta_k)`` is positive iff its output block row is a
    contraction in the block max-norm ``max_j ||h_j||_2``. The (PC) criterion of docs/theory.md
    (``kappa_diag + delta_cross < 1``, maxima taken separately) implies ``min_k m_k > 0``.
    docs/theory.md leaves the paper's aggregation over patches OPEN, so both the maximum (the (PC)
    form) and the mean over patches are reported.
    """

    norms: jax.Array
    """``N_kj``, shape ``(M, M)`` (row = output patch ``k``, column = input patch ``j``)."""
    kappa_diag_per_patch: jax.Array
    """``kappa_k = ||[J]_kk||_2``, shape ``(M,)``."""
    delta_cross_per_patch: jax.Array
    """``delta_k = sum_{j != k} ||[J]_kj||_2``, shape ``(M,)``."""
    kappa_diag: jax.Array
    """``max_k kappa_k``."""
    delta_cross: jax.Array
    """``max_k delta_k``."""
    pc_bound: jax.Array
    """``kappa_diag + delta_cross``; (PC) holds when it is below 1."""
    margin_per_patch: jax.Array
    """``m_k = 1 - (kappa_k + delta_k)``, shape ``(M,)``."""
    margin: jax.Array
    """``min_k m_k``: positive iff every block row contracts (weaker than (PC), never below ``1 - pc_bound``)."""
    kappa_diag_mean: jax.Array
    """``mean_k kappa_k``."""
    delta_cross_mean: jax.Array
    """``mean_k delta_k``."""
    margin_mean: jax.Array
    """``mean_k m_k``."""


def summarize_block_norms(norms: Any) -> BlockNorms:
    """:class:`BlockNorms` from a matrix of block norms ``N_kj`` (shape ``(M, M)``).

    Args:
      norms: ``N_kj``, shape ``(M, M)`` (row = output patch ``k``, column = input patch ``j``).

    Returns:
      :class:`BlockNorms` with the per-patch values, their maxima and means.

    Raises:
      ArgumentError: naming ``norms``, for a matrix that is not square.
    """
    norms = jnp.asarray(norms)
    if norms.ndim != 2 or norms.shape[0] != norms.shape[1]:
        raise ArgumentError("norms", f"expected a square (M, M) matrix of block norms, got shape {norms.shape}")
    kappa = jnp.diagonal(norms)
    delta = jnp.sum(norms, axis=1) - kappa
    margin = 1 - (kappa + delta)
    kappa_max, delta_max = jnp.max(kappa), jnp.max(delta)
    return BlockNorms(
        norms=norms,
        kappa_diag_per_patch=kappa,
        delta_cross_per_patch=delta,
        kappa_diag=kappa_max,
        delta_cross=delta_max,
        pc_bound=kappa_max + delta_max,
        margin_per_patch=margin,
        margin=jnp.min(margin),
        kappa_diag_mean=jnp.mean(kappa),
        delta_cross_mean=jnp.mean(delta),
        margin_mean=jnp.mean(margin),
    )


def block_norms(J: Any, image_shape: Any, patch_size: int) -> BlockNorms:
    """Exact spectral norms of the patch blocks of ``J`` and their summaries (:class:`BlockNorms`).

    ``N_kj = ||[J]_{kj}||_2`` (largest singular value, by SVD);
    ``kappa_diag = max_k N_kk``, ``delta_cross = max_k sum_{j != k} N_kj`` (docs/theory.md section 6).

    Args:
      J: Jacobian of the flattened image map, shape ``(n, n)`` (e.g. :func:`ddim_step_jacobian`).
      image_shape: ``(H, W, C)`` or ``(H, W)``.
      patch_size: ``p``.

    Returns:
      :class:`BlockNorms` of the ``M x M`` blocks.

    Raises:
      ArgumentError: as :func:`patch_blocks` (naming ``image_shape``, ``patch_size`` or ``J``).
    """
    blocks = patch_blocks(J, image_shape, patch_size)  # validates
    return _block_norms(blocks)


@jax.jit
def _block_norms(blocks: jax.Array) -> BlockNorms:
    # one compilation per shape instead of one per primitive when called eagerly
    return summarize_block_norms(jnp.linalg.norm(blocks, ord=2, axis=(-2, -1)))


def _patch_ops(layout: PatchLayout, dtype):
    """``embed(v, j)``: ``v`` (n_k,) placed in patch ``j`` of a zero image; ``restrict(img, k)``."""
    m, nk, p = layout.num_patches, layout.patch_dim, layout.patch_size

    def embed(v, j):
        return unpatchify(jnp.zeros((m, nk), dtype).at[j].set(v), layout.image_shape, p)

    def restrict(image, k):
        return patchify(image, p)[k]

    return embed, restrict


def _as_image(x: Any, layout: PatchLayout) -> jax.Array:
    x = jnp.asarray(x)
    check_floating(x, name="x")
    if x.size != layout.size:
        raise ArgumentError(
            "x", f"expected {layout.size} entries for image_shape {layout.image_shape}, got shape {x.shape}"
        )
    return x.reshape(layout.image_shape)


def block_norms_matrix_free(
    step_fn: Callable[[jax.Array], jax.Array],
    x: Any,
    image_shape: Any,
    patch_size: int,
    *,
    key: jax.Array,
    iters: int = 32,
) -> BlockNorms:
    """Block norms ``||[J]_{kj}||_2`` of ``J = d step_fn(x)`` by block Krylov iteration, no ``J`` formed.

    For every pair ``(k, j)`` the block ``B = [J]_{kj}`` is reached only through products: ``B v``
    is a JVP of ``step_fn`` with ``v`` embedded in patch ``j`` and the output restricted to patch
    ``k``; ``B^T u`` a VJP with ``u`` embedded in patch ``k``, restricted to patch ``j``. Each block
    runs ``m = min(iters, n_k)`` steps of Golub-Kahan-Lanczos bidiagonalisation (the Krylov
    acceleration of the power iteration on ``B^T B``, with full re-orthogonalisation), and the
    estimate is the largest singular value of the ``m x m`` bidiagonal matrix: a Ritz value that
    increases towards ``||B||_2``, exactly equal (to round-off) once ``m = n_k``, and converging far
    faster than plain power iteration when the leading singular values are close (as they are for
    diagonal blocks near ``a_t I``). Blocks that are exactly zero give 0; a block whose products
    are not finite (NaN or infinite entries of the Jacobian) gives NaN.

    Cost: ``M^2 m`` JVPs and ``M^2 (m - 1)`` VJPs of ``step_fn`` after one linearisation
    (``jax.linearize`` and ``jax.linear_transpose``; the VJP of the last step would only give the
    next ``beta``, which the ``m x m`` bidiagonal matrix does not hold), so ``m = 1`` needs no VJP.
    On XLA:CPU a convolutional network's VJPs run 4-5x slower inside these loops than written out
    (the transposed convolutions: BENCHMARKS.md, ``benchmarks/conv_transpose_in_loop.py``); there,
    for ``M^2 m`` near ``n``, the exact blocks (:func:`block_norms` of :func:`forward_jacobian`,
    ``n`` JVPs) are cheaper. Source patches ``j`` are processed one after another
    (``lax.map``), the ``M`` target patches of one source batched with ``vmap``; memory
    ``O(M (n + m n_k))``.

    Args:
      step_fn: the map, image -> image of the same shape (e.g.
        ``lambda y: ddim_step(eps_fn, y, t, a, b)``).
      x: the point, ``n`` entries (reshaped to ``image_shape``).
      image_shape: ``(H, W, C)`` or ``(H, W)``.
      patch_size: ``p``, tiling the image.
      key: PRNG key for the starting vectors.
      iters: Krylov steps per block (static; capped at ``n_k``, where the result is exact).

    Returns:
      :class:`BlockNorms` (same fields as :func:`block_norms`).

    Raises:
      ArgumentError: naming ``image_shape``, ``patch_size``, ``x``, ``step_fn`` (output shape
        differs from its input) or ``iters``.
    """
    layout = patch_layout(image_shape, patch_size)
    x = _as_image(x, layout)
    if isinstance(iters, bool) or not isinstance(iters, (int, np.integer)) or iters < 1:
        raise ArgumentError("iters", f"expected an integer >= 1, got {iters!r}")
    if is_concrete(x):
        check_denoiser(lambda y, t: step_fn(y), x, name="step_fn")
    return _compiled_block_norms_matrix_free(step_fn, x, key, layout=layout, iters=int(iters))


@eqx.filter_jit
def _compiled_block_norms_matrix_free(
    step_fn: Callable[[jax.Array], jax.Array], x: jax.Array, key: jax.Array, *, layout: PatchLayout, iters: int
) -> BlockNorms:
    """The Krylov iteration of :func:`block_norms_matrix_free` (``step_fn``'s array leaves traced)."""
    m, nk = layout.num_patches, layout.patch_dim
    steps = min(iters, nk)
    dtype = x.dtype
    _, jvp_fn = jax.linearize(step_fn, x)
    vjp_fn = jax.linear_transpose(jvp_fn, x)
    embed, restrict = _patch_ops(layout, dtype)
    targets = jnp.arange(m)
    # [J]_kj v and [J]_kj^T u for all targets k at once (leading axis k)
    forward = jax.vmap(lambda v, k, j: restrict(jvp_fn(embed(v, j)), k), in_axes=(0, 0, None))
    backward = jax.vmap(lambda u, k, j: restrict(vjp_fn(embed(u, k))[0], j), in_axes=(0, 0, None))

    def one_source(args):
        j, source_key = args
        start = jax.random.normal(source_key, (m, nk), dtype)
        start = start / _scaled_norm(start)[:, None]
        basis_v = jnp.zeros((m, steps, nk), dtype).at[:, 0].set(start)
        basis_u = jnp.zeros((m, steps, nk), dtype)
        alphas = jnp.zeros((m, steps), dtype)
        betas = jnp.zeros((m, steps), dtype)

        def forward_half(i, basis_v, basis_u, alphas, betas):
            """``u_i``, ``alpha_i``: one JVP, orthogonalised against the earlier ``u``."""
            previous_beta = jnp.where(i > 0, betas[:, i - 1], 0.0)[:, None]
            u = forward(basis_v[:, i], targets, j) - previous_beta * basis_u[:, i - 1]
            u, alpha = _orthonormalize(u, basis_u)  # unfilled rows are zero: projecting on them is a no-op
            return basis_u.at[:, i].set(u), alphas.at[:, i].set(alpha)

        def body(i, carry):
            basis_v, basis_u, alphas, betas = carry
            basis_u, alphas = forward_half(i, basis_v, basis_u, alphas, betas)
            v = backward(basis_u[:, i], targets, j) - alphas[:, i, None] * basis_v[:, i]
            v, beta = _orthonormalize(v, basis_v)
            return basis_v.at[:, i + 1].set(v), basis_u, alphas, betas.at[:, i].set(beta)

        # the last step's VJP would only give beta_m, which the m x m bidiagonal does not hold: skipped
        carry = jax.lax.fori_loop(0, steps - 1, body, (basis_v, basis_u, alphas, betas))
        _, alphas = forward_half(steps - 1, *carry)
        return jax.vmap(_largest_singular_value_bidiagonal)(alphas, carry[3])  # (M,) over targets k

    keys = jax.random.split(key, m)
    norms_by_source = jax.lax.map(one_source, (targets, keys))  # [j, k]
    return summarize_block_norms(norms_by_source.T)


def _largest_singular_value_bidiagonal(alphas: jax.Array, betas: jax.Array) -> jax.Array:
    """Largest singular value of the upper bidiagonal ``B`` (diagonal ``alphas``, superdiagonal ``betas[:-1]``).

    The largest eigenvalue of the symmetric ``[[0, B], [B^T, 0]]`` (eigenvalues ``+-s_i``): no
    squaring, so tiny blocks keep their relative accuracy.
    """
    bidiagonal = jnp.diag(alphas) + jnp.diag(betas[:-1], 1)
    zeros = jnp.zeros_like(bidiagonal)
    augmented = jnp.block([[zeros, bidiagonal], [bidiagonal.T, zeros]])
    return jnp.maximum(jnp.linalg.eigvalsh(augmented)[-1], 0.0)


def _scaled_norm(w: jax.Array) -> jax.Array:
    """Row norms of ``w`` computed after scaling by the largest entry (no under/overflow)."""
    scale = jnp.max(jnp.abs(w), axis=-1, keepdims=True)
    safe = jnp.where(scale > 0, scale, 1.0)
    return (safe * jnp.linalg.norm(w / safe, axis=-1, keepdims=True))[..., 0]


def _orthonormalize(w: jax.Array, basis: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Gram-Schmidt of ``w`` (``(M, d)``) against ``basis`` (``(M, r, d)``, twice), then normalise.

    Returns the unit vectors and the norms after orthogonalisation (the Lanczos coefficients). A
    remainder below ``d eps`` times the norm before orthogonalisation is round-off (the Krylov
    space is invariant): it is set to exactly zero, and zero vectors stay zero from then on. A
    non-finite ``w`` (a Jacobian with NaN or infinite entries) gives the coefficient NaN, so the
    block norm is NaN (as the exact one), never a silent 0.
    """
    before = _scaled_norm(w)
    for _ in range(2):  # classical Gram-Schmidt twice: orthogonal to working precision
        w = w - jnp.einsum("mr,mrd->md", jnp.einsum("mrd,md->mr", basis, w), basis)
    norm = _scaled_norm(w)
    keep = norm > w.shape[-1] * jnp.finfo(w.dtype).eps * before
    unit = jnp.where(keep[:, None], w / jnp.where(keep, norm, 1.0)[:, None], 0.0)
    finite = jnp.isfinite(before) & jnp.isfinite(norm)
    return unit, jnp.where(keep, norm, jnp.where(finite, 0.0, jnp.nan))


# ----------------------------------------------------------------------------- suppression field


def leading_eigenvectors(patch_covs: Any) -> jax.Array:
    """Unit eigenvector of the largest eigenvalue of each patch covariance, shape ``(M, n_k)``.

    Args:
      patch_covs: shape ``(M, n_k, n_k)``, symmetric (patchify coordinate order).

    Returns:
      ``v_k`` (``eigh`` of the symmetrised covariances, sign as returned), shape ``(M, n_k)``.

    Raises:
      ArgumentError: naming ``patch_covs``, for a shape other than ``(M, n_k, n_k)``.
    """
    patch_covs = jnp.asarray(patch_covs)
    if patch_covs.ndim != 3 or patch_covs.shape[1] != patch_covs.shape[2]:
        raise ArgumentError("patch_covs", f"expected shape (M, n_k, n_k), got {patch_covs.shape}")
    symmetric = (patch_covs + jnp.swapaxes(patch_covs, 1, 2)) / 2
    return jnp.linalg.eigh(symmetric)[1][:, :, -1]


def suppression_field(
    eps_fn: EpsFn,
    baseline_eps_fn: EpsFn,
    x: Any,
    *,
    t: Any,
    b: Any,
    image_shape: Any,
    patch_size: int,
    leading_vectors: Any,
) -> jax.Array:
    """Directional suppression field ``S_{k,t}(x) = |b_t| <v_k, [J_x Delta_t(x)]_kk v_k>``, shape ``(M,)``.

    ``Delta_t(x) = eps_fn(x, t) - baseline_eps_fn(x, t)`` is the deviation of the denoiser from the
    Gaussian baseline (e.g. :func:`pifs_jax.denoisers.gaussian_denoiser_patches`), ``v_k`` the
    leading eigenvector of patch ``k``'s covariance (:func:`leading_eigenvectors`; unit norm, sign
    irrelevant). The diagonal block of the step along ``v_k`` is then
    ``<v_k, [J Phi_t]_kk v_k> = f_t(lambda_k) - S_{k,t}`` when ``b_t < 0`` (docs/theory.md section 6):
    ``S > 0`` means the denoiser suppresses the expansion of the Gaussian baseline.

    Computed with ``M`` JVPs of ``Delta_t`` (``v_k`` embedded in patch ``k``, output restricted to
    patch ``k``, dotted with ``v_k``); ``J`` is never formed. ``S = 0`` when ``eps_fn`` is the
    baseline itself.

    Args:
      eps_fn: the denoiser under study.
      baseline_eps_fn: the Gaussian baseline denoiser.
      x: the point, ``n`` entries (reshaped to ``image_shape``).
      t: integer timestep (passed to both denoisers).
      b: ``b_t`` of the step.
      image_shape: ``(H, W, C)`` or ``(H, W)``.
      patch_size: ``p``.
      leading_vectors: ``v_k``, shape ``(M, n_k)``.

    Returns:
      ``S_{k,t}(x)``, shape ``(M,)``.

    Raises:
      ArgumentError: naming ``image_shape``, ``patch_size``, ``x``, ``leading_vectors``,
        ``eps_fn`` or ``baseline_eps_fn``.
    """
    layout = patch_layout(image_shape, patch_size)
    x = _as_image(x, layout)
    m = layout.num_patches
    vectors = _leading_vectors(leading_vectors, layout, x.dtype)
    if is_concrete(x):
        check_denoiser(eps_fn, x, name="eps_fn")
        check_denoiser(baseline_eps_fn, x, name="baseline_eps_fn")
    _, jvp_fn = jax.linearize(lambda y: eps_fn(y, t) - baseline_eps_fn(y, t), x)
    embed, restrict = _patch_ops(layout, x.dtype)

    def one(k, v):
        return jnp.dot(v, restrict(jvp_fn(embed(v, k)), k))

    return jnp.abs(jnp.asarray(b, x.dtype)) * jax.vmap(one)(jnp.arange(m), vectors)


def projected_coupling(
    step_fn: Callable[[jax.Array], jax.Array],
    x: Any,
    *,
    image_shape: Any,
    patch_size: int,
    leading_vectors: Any,
) -> jax.Array:
    """The step projected on the patches' leading directions: ``P_kj = <v_k, [J]_kj v_j>``, shape ``(M, M)``.

    ``J`` is the Jacobian of ``step_fn`` (image to image, e.g. one DDIM step ``Phi_t``) at ``x`` and
    ``v_k`` the leading eigenvector of patch ``k``'s covariance (:func:`leading_eigenvectors`). ``P``
    is the ``M x M`` matrix of the step restricted to the span of the ``v_k`` (``v_k`` placed in patch
    ``k``): a PIFS on those ``M`` directions. Its diagonal is the quotient of reading (D) of
    docs/theory.md section 11, ``P_kk = f_t(lambda_k) - S_{k,t}`` for the DDIM step; its row sums
    ``sum_j |P_kj|`` give reading (I), ``m_k = 1 - sum_j |P_kj|``.

    Computed with ``M`` JVPs of ``step_fn`` (one per ``v_j``, each output cut into patches and dotted
    with every ``v_k``); ``J`` is never formed.

    Args:
      step_fn: the map, image of shape ``image_shape`` to image of the same shape.
      x: the point, ``n`` entries (reshaped to ``image_shape``).
      image_shape: ``(H, W, C)`` or ``(H, W)``.
      patch_size: ``p``.
      leading_vectors: ``v_k``, shape ``(M, n_k)``.

    Returns:
      ``P``, shape ``(M, M)``: row ``k`` is the output patch, column ``j`` the input patch.

    Raises:
      ArgumentError: naming ``image_shape``, ``patch_size``, ``x`` or ``leading_vectors``.
    """
    layout = patch_layout(image_shape, patch_size)
    x = _as_image(x, layout)
    vectors = _leading_vectors(leading_vectors, layout, x.dtype)
    _, jvp_fn = jax.linearize(step_fn, x)
    embed, _ = _patch_ops(layout, x.dtype)

    def column(j, v):  # P[:, j] = (<v_k, [J u_j]_k>)_k with u_j = v_j placed in patch j
        return jnp.sum(patchify(jvp_fn(embed(v, j)), layout.patch_size) * vectors, axis=-1)

    return jax.vmap(column)(jnp.arange(layout.num_patches), vectors).T


def _leading_vectors(leading_vectors: Any, layout: PatchLayout, dtype) -> jax.Array:
    """``leading_vectors`` as an ``(M, n_k)`` array of ``dtype``, its shape checked against ``layout``."""
    vectors = jnp.asarray(leading_vectors)
    m, nk = layout.num_patches, layout.patch_dim
    if vectors.shape != (m, nk):
        raise ArgumentError(
            "leading_vectors",
            f"expected shape (M, n_k) = ({m}, {nk}) for image_shape {layout.image_shape} "
            f"and patch_size {layout.patch_size}, got {vectors.shape}",
        )
    return vectors.astype(dtype)

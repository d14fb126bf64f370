"""Every per-step quantity of the two-regime picture along sampler trajectories (docs/theory.md section 11).

A chain runs a sampler (:class:`pifs_jax.samplers.Sampler`; default DDIM, the map
``x_{t_{i-1}} = a_t x_{t_i} + b_t epshat(x_{t_i}, t_i)``) on a grid ``t_N > ... > t_1`` from
``x_T``, through :func:`pifs_jax.samplers.flat_chain`. The per-step map ``Phi_t`` is the step's
map on the image with the sampler's history held fixed at its value along the trajectory
(``FlatChain.image_step``): its Jacobian is the ``x -> x`` block of the step's Jacobian. For a
one-step sampler (DDIM, Heun) the state is the image and ``Phi_t`` is the whole step; for
DPM-Solver++(2M) (state ``(x, D_prev)``) it is ``x -> (sigma_s / sigma_t) x + alpha_s (1 - e^{-h})
((1 + kappa) D_t(x) - kappa D_prev)`` with ``D_prev`` fixed (``kappa = h / (2 h_prev)`` on
second-order steps, 0 on the first and the last); the history's own block enters only the
chain's total derivative (:mod:`pifs_jax.lyapunov`). At every sampling step, at the step's input
``x = x_{t_i}`` and in the order the chain runs (decreasing ``t``), :func:`analyze_chain`
evaluates

- the block norms ``N_kj = ||[J Phi_t(x)]_kj||_2`` of the step Jacobian (docs/theory.md section 6):
  ``kappa_k = N_kk``, ``delta_k = sum_{j != k} N_kj``, ``m_k = 1 - (kappa_k + delta_k)``, their
  maxima and means over the ``M`` patches and the number of violating patches ``#{k: m_k < 0}``;
  exactly (``jax.jacfwd`` + SVD of the blocks, :func:`pifs_jax.jacobians.step_jacobian` and
  :func:`pifs_jax.jacobians.block_norms`) or matrix-free (Golub-Kahan-Lanczos per block,
  :func:`pifs_jax.jacobians.block_norms_matrix_free`);
- with a ``baseline`` (:class:`pifs_jax.data.PatchStats` of the training data): the deviation
  ``Delta_t(x) = epshat(x, t) - eps^G_t(x)`` from the patch Gaussian
  (:func:`pifs_jax.denoisers.gaussian_denoiser_patches` with the data's patch means and
  covariances) and its norm ``||Delta_t(x)||_2`` (any sampler: a property of the denoiser along
  the trajectory), and, for deterministic DDIM only, the model-free predictions of its step map:
  the suppression field ``S_{k,t}(x) = |b_t| <v_k, [J_x Delta_t(x)]_kk v_k>``
  (:func:`pifs_jax.jacobians.suppression_field`) and the Gaussian expansion ``f_t(lambda_k)``
  along the leading eigenvectors (:func:`pifs_jax.geometry.expansion_factor`), and the step projected
  on those directions, ``P_kj = <v_k, [J]_kj v_j>`` (:func:`pifs_jax.jacobians.projected_coupling`,
  reading (I) of docs/theory.md section 11); for another sampler
  they are NaN and named in :attr:`ChainAnalysis.not_applicable` (:data:`DDIM_PREDICTIONS`);
- with an ``attention_fn``: the mean row entropy of each attention layer
  (:func:`pifs_jax.models.attention_entropy`, nats).

The whole analysis of one architecture is one ``equinox.filter_jit`` program taking the
denoiser (and ``attention_fn``) as arguments: the array leaves of a pytree denoiser
(:func:`pifs_jax.models.as_eps_fn`, :func:`module_attention_fn`, ``jax.tree_util.Partial``) are
traced, so a second parameter set of the same architecture compiles nothing new. Several
trajectories (``x_T`` of shape ``(S, H, W, C)``) run under ``jax.vmap`` in the same program (one
at a time under ``lax.map`` on a CPU), optionally split over the ``batch`` axis of a device mesh
(:mod:`pifs_jax.sharding`), and ``chunk`` trajectories per call of it: Ctrl-C stops the analysis
between chunks, and a progress bar with a time estimate follows them (:func:`analyze_chain`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, cast

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from pifs_jax._validation import check_floating, check_instance, check_positive_int
from pifs_jax.data import PatchStats
from pifs_jax.denoisers import Attention, gaussian_denoiser_patches
from pifs_jax.errors import ArgumentError, NonFiniteError
from pifs_jax.geometry import expansion_factor
from pifs_jax.grids import as_grid
from pifs_jax.jacobians import (
    block_norms,
    block_norms_matrix_free,
    forward_jacobian,
    projected_coupling,
    suppression_field,
)
from pifs_jax.kaplan_yorke import kaplan_yorke_dimension
from pifs_jax.loop import deferred_interrupt
from pifs_jax.patches import PatchLayout, patch_layout, unpatchify
from pifs_jax.samplers import (
    DDIM,
    Sampler,
    check_denoiser,
    check_sampler,
    flat_chain,
    locate_nonfinite,
    sampler_label,
    table_row,
)
from pifs_jax.schedules import Schedule
from pifs_jax.sharding import BATCH_AXIS, shard_batch, sharding_constraint
from pifs_jax.typing import EpsFn

__all__ = [
    "ACCELERATOR_CHUNK",
    "DDIM_PREDICTIONS",
    "EXACT_MAX_N",
    "METHODS",
    "ChainAnalysis",
    "CorrectedAttractor",
    "ModuleAttention",
    "analyze_chain",
    "corrected_attractor",
    "default_chunk",
    "module_attention_fn",
    "per_patch_exponents",
    "suppression_corrected_margins",
]

#: The block-norm estimators, ``"auto"`` (exact up to ``exact_max_n``), ``"exact"`` and ``"matrix_free"``.
METHODS = ("auto", "exact", "matrix_free")
#: The largest ``n = H W C`` for which ``"auto"`` forms the Jacobian (:func:`analyze_chain`'s default).
EXACT_MAX_N = 3072
#: Trajectories per compiled call on an accelerator (vmapped) by :func:`default_chunk`; 1 on a CPU.
ACCELERATOR_CHUNK = 8


def default_chunk() -> int:
    """Trajectories per compiled call for :func:`analyze_chain`'s ``chunk`` when the caller has no preference.

    1 on a CPU (the trajectories run one at a time there anyway, so the results do not depend on it
    and Ctrl-C and the progress bar act after every trajectory), :data:`ACCELERATOR_CHUNK` on an
    accelerator (vmapped).
    """
    return 1 if jax.default_backend() == "cpu" else ACCELERATOR_CHUNK


#: The model-free predictions of the deterministic DDIM step map (``|b_t|``, ``a_t``, ``f_t``): NaN
#: and listed in :attr:`ChainAnalysis.not_applicable` for any other sampler.
DDIM_PREDICTIONS = ("suppression", "expansion_along_leading", "predicted_exponents", "projected_coupling")


class ChainAnalysis(NamedTuple):
    """Per-step quantities along the chain, in the order it runs (decreasing ``t``).

    Trajectory-dependent fields have a leading axis ``S`` when :func:`analyze_chain` got a batch
    ``x_T`` of shape ``(S, H, W, C)``; ``t``, ``logsnr`` and ``expansion_along_leading`` depend on
    the schedule only and never have it. Quantities not requested are ``None``; DDIM's model-free
    predictions requested of another sampler are NaN and named in :attr:`not_applicable`.
    """

    t: np.ndarray
    """Timestep ``t_i`` of each step's input, shape ``(N,)``, decreasing."""
    logsnr: np.ndarray
    """``logSNR_t = log(ab_t / (1 - ab_t))``, shape ``(N,)``."""
    kappa_diag: jax.Array
    """``max_k kappa_k``, shape ``([S,] N)``."""
    delta_cross: jax.Array
    """``max_k delta_k``, shape ``([S,] N)``."""
    kappa_diag_mean: jax.Array
    """``mean_k kappa_k``, shape ``([S,] N)`` (the paper's tabulated reading, docs/theory.md section 11)."""
    delta_cross_mean: jax.Array
    """``mean_k delta_k``, shape ``([S,] N)``."""
    margin_mean: jax.Array
    """Mean margin slack ``mean_k m_k``, ``m_k = 1 - (kappa_k + delta_k)``, shape ``([S,] N)``."""
    kappa_diag_per_patch: jax.Array
    """``kappa_k = ||[J]_kk||_2``, shape ``([S,] N, M)``."""
    delta_cross_per_patch: jax.Array
    """``delta_k = sum_{j != k} ||[J]_kj||_2``, shape ``([S,] N, M)``."""
    margin_per_patch: jax.Array
    """``m_k``, shape ``([S,] N, M)``."""
    violations: jax.Array
    """Number of patches violating (PC), ``#{k: m_k < 0}``, int, shape ``([S,] N)``."""
    suppression: jax.Array | None
    """``S_{k,t}(x) = |b_t| <v_k, [J_x Delta_t(x)]_kk v_k>``, shape ``([S,] N, M)`` (deterministic DDIM; else NaN)."""
    deviation_norm: jax.Array | None
    """``||Delta_t(x)||_2 = ||epshat(x, t) - eps^G_t(x)||_2``, shape ``([S,] N)``."""
    expansion_along_leading: np.ndarray | None
    """``f_t(lambda_k)`` of each patch's leading covariance eigenvalue, shape ``(N, M)`` (DDIM; else NaN)."""
    attention_entropy: dict | None
    """``{layer: H(A_t)}``, mean row entropy in nats, each of shape ``([S,] N)``."""
    attention_keys: dict | None
    """``{layer: L_keys}``: ``H / log L_keys`` is the entropy normalised to ``[0, 1]``."""
    patch_size: int
    """``p``, the side of the patches the block norms were taken over."""
    image_shape: tuple
    """The shape of one image, ``(H, W, C)``."""
    method: str
    """The block-norm estimator used, ``"exact"`` or ``"matrix_free"``."""
    sampler: str = "DDIM(eta=0.0)"
    """The sampler whose chain was analysed (its ``repr``)."""
    not_applicable: tuple[str, ...] = ()
    """The model-free predictions of :data:`DDIM_PREDICTIONS` that do not apply to :attr:`sampler`
    (all of them unless it is deterministic DDIM; their fields are then NaN)."""
    projected_coupling: jax.Array | None = None
    """``P_kj = <v_k, [J]_kj v_j>``, the step on the patches' leading directions, shape ``([S,] N, M, M)``
    (deterministic DDIM with a baseline; else NaN; :func:`pifs_jax.jacobians.projected_coupling`)."""

    @property
    def model_free(self) -> bool:
        """Whether DDIM's model-free predictions (suppression, ``f_t``, predicted exponents) apply."""
        return not self.not_applicable

    @property
    def num_patches(self) -> int:
        """``M``."""
        return int(np.shape(self.kappa_diag_per_patch)[-1])

    @property
    def batched(self) -> bool:
        """Whether the trajectory-dependent fields have the leading axis ``S``."""
        return np.ndim(self.kappa_diag) == 2


# ----------------------------------------------------------------------------- attention


@dataclasses.dataclass(frozen=True)
class ModuleAttention:
    """``attention(params, x, t) -> {layer: weights (1, heads, queries, keys)}`` of ONE sample.

    Depends on the module only, so ``jax.tree_util.Partial(ModuleAttention(module), params)`` of
    two parameter sets of one architecture has the same static structure (see
    :class:`pifs_jax.models.common.ModuleDenoiser`).
    """

    module: Any

    def __call__(self, params: Any, x: Any, t: Any) -> dict:
        x = jnp.asarray(x)
        t = jnp.reshape(jnp.asarray(t).astype(jnp.int32), (1,))
        _, attention = self.module.apply({"params": params}, x[None], t, return_attention=True)
        return dict(attention)


def module_attention_fn(module: Any, params: Any) -> jax.tree_util.Partial:
    """The attention weights of a network as a pytree callable ``attention_fn(x, t)``.

    ``attention_fn(x, t) = module.apply({"params": params}, x[None], [t], return_attention=True)[1]``:
    a dict ``{layer: weights (1, heads, queries, keys)}`` for one image ``x`` of shape
    ``(H, W, C)``. Like :func:`pifs_jax.models.as_eps_fn`, the parameters are the pytree's leaves,
    so :func:`analyze_chain` compiles once per architecture.

    Args:
      module: a Flax module whose ``apply`` accepts ``return_attention=True``.
      params: its parameters.

    Returns:
      ``attention_fn(x, t)``, a ``jax.tree_util.Partial`` for :func:`analyze_chain`.
    """
    return jax.tree_util.Partial(ModuleAttention(module), params)


def _attention_layers(value: Any) -> dict:
    """``{layer: weights (..., queries, keys)}`` from an ``attention_fn`` output.

    Accepts a dict of weights (networks' ``return_attention=True``), an
    :class:`pifs_jax.denoisers.Attention` (``pj.empirical_attention``: its weights over the
    training images are one query row, layer ``"data"``) or one array (layer ``"attention"``).
    """
    if isinstance(value, Attention):
        return {"data": value.weights[..., None, :]}
    if isinstance(value, Mapping):
        return dict(value)
    if hasattr(value, "shape"):
        return {"attention": value}
    return {}


def _layers_and_output(attention_fn: Callable, x: jax.Array, t: jax.Array) -> tuple[dict, Any]:
    out = attention_fn(x, t)
    return _attention_layers(out), out


def _check_attention_fn(attention_fn: Callable, x: jax.Array) -> dict:
    """Shapes of ``attention_fn(x, t)``'s layers; raises naming ``attention_fn`` when unusable."""
    try:
        layers, out = eqx.filter_eval_shape(
            _layers_and_output,
            attention_fn,
            jax.ShapeDtypeStruct(x.shape, x.dtype),
            jax.ShapeDtypeStruct((), jnp.int32),
        )
    except Exception as err:
        raise ArgumentError(
            "attention_fn", f"calling attention_fn(x, t) with x of shape {x.shape} failed: {err}"
        ) from err
    if not layers:
        raise ArgumentError(
            "attention_fn",
            f"expected a dict {{layer: weights (..., queries, keys)}} with at least one layer (a model with "
            f"attention, return_attention=True), got {type(out).__name__} {out!r:.80}",
        )
    for name, weights in layers.items():
        if not hasattr(weights, "shape") or len(weights.shape) < 2:
            raise ArgumentError(
                "attention_fn",
                f"layer {name!r}: expected weights of shape (..., queries, keys), got {getattr(weights, 'shape', weights)!r}",
            )
    return {name: int(weights.shape[-1]) for name, weights in layers.items()}


# ----------------------------------------------------------------------------- the compiled program


def image_map(image_step: Callable, inputs: Any, state: jax.Array, shape: tuple, x: jax.Array) -> jax.Array:
    """``Phi_t(x)``: the step's map on the image ``x`` (shape ``shape``), the flat ``state``'s history fixed.

    ``image_step`` is :attr:`pifs_jax.samplers.FlatChain.image_step`; wrapped in a ``Partial`` for
    :func:`pifs_jax.jacobians.block_norms_matrix_free`.
    """
    return image_step(x.reshape(-1), inputs, state).reshape(shape)


def _one_trajectory(
    eps_fn, sampler, sched, grid, x_T, key, noise_key, baseline, attention_fn, *, layout: PatchLayout, exact: bool,
    iters: int, model_free: bool,
):  # fmt: skip
    """``(x_0, per-step dict)`` of one trajectory: a ``lax.scan`` of the flat chain, in chain order."""
    from pifs_jax.models.common import attention_entropy  # lazy: importing pifs_jax must not load the networks

    dtype = x_T.dtype
    image_shape, p = layout.image_shape, layout.patch_size
    chain = flat_chain(sampler, eps_fn, sched, grid, x_T, noise_key)
    tables = sampler.tables(sched, grid)
    if baseline is not None:
        gauss_sched, mean_image, covariances, vectors = baseline
        gaussian = gaussian_denoiser_patches(gauss_sched, mean_image, covariances, p)

    def image_of(z):
        return (z if chain.project is None else chain.project(z)).reshape(image_shape)

    def body(z, inputs):
        index, inp = inputs
        x = image_of(z)
        row = table_row(tables, inp[0])
        t = row.t
        if exact:
            norms = block_norms(forward_jacobian(lambda v: chain.image_step(v, inp, z), x.reshape(-1)), image_shape, p)
        else:
            step_fn = jax.tree_util.Partial(image_map, chain.image_step, inp, z, image_shape)
            norms = block_norms_matrix_free(step_fn, x, image_shape, p, key=jax.random.fold_in(key, index), iters=iters)
        out = {
            "kappa_diag": norms.kappa_diag,
            "delta_cross": norms.delta_cross,
            "kappa_diag_mean": norms.kappa_diag_mean,
            "delta_cross_mean": norms.delta_cross_mean,
            "margin_mean": norms.margin_mean,
            "kappa_diag_per_patch": norms.kappa_diag_per_patch,
            "delta_cross_per_patch": norms.delta_cross_per_patch,
            "margin_per_patch": norms.margin_per_patch,
            "violations": jnp.sum(norms.margin_per_patch < 0).astype(jnp.int32),
        }
        if baseline is not None:
            out["deviation_norm"] = jnp.linalg.norm((eps_fn(x, t) - gaussian(x, t)).reshape(-1))
            if model_free:  # the |b_t|-weighted field of the DDIM step (row: DDIM's tables)
                out["ddim_suppression"] = suppression_field(
                    eps_fn, gaussian, x, t=t, b=row.b.astype(dtype), image_shape=image_shape, patch_size=p,
                    leading_vectors=vectors,
                )  # fmt: skip
                out["ddim_projected_coupling"] = projected_coupling(
                    lambda v: chain.image_step(v.reshape(-1), inp, z).reshape(image_shape), x,
                    image_shape=image_shape, patch_size=p, leading_vectors=vectors,
                )  # fmt: skip
            else:
                out["ddim_suppression"] = jnp.full((layout.num_patches,), jnp.nan, dtype)
                out["ddim_projected_coupling"] = jnp.full((layout.num_patches,) * 2, jnp.nan, dtype)
        if attention_fn is not None:
            out["attention_entropy"] = attention_entropy(_attention_layers(attention_fn(x, t)))
        return chain.step(z, inp), out

    indices = jnp.arange(chain.inputs[0].shape[0])
    z_0, per_step = jax.lax.scan(body, chain.z0, (indices, chain.inputs))
    return image_of(z_0), per_step


@eqx.filter_jit
def _compiled_analysis(
    eps_fn, sampler, sched, grid, x_T, key, noise_keys, baseline, attention_fn, *, layout, exact, iters, batched,
    mesh, model_free,
):  # fmt: skip
    """:func:`_one_trajectory` over a batch: mapped (CPU) or vmapped, split over ``mesh``'s batch axis when given.

    ``noise_keys``: the PRNG key of each trajectory's stochastic sampler (``None`` when deterministic).
    """

    def run(x, noise_key):
        return _one_trajectory(
            eps_fn, sampler, sched, grid, x, key, noise_key, baseline, attention_fn,
            layout=layout, exact=exact, iters=iters, model_free=model_free,
        )  # fmt: skip

    if not batched:
        return run(x_T, noise_keys)
    if mesh is None:
        # On a CPU one trajectory at a time (its batches of tangents stay in cache; measured in
        # docs/guides/trained-models.md); vmapped on an accelerator.
        if jax.default_backend() == "cpu":
            return jax.lax.map(lambda args: run(*args), (x_T, noise_keys))
        return jax.vmap(run)(x_T, noise_keys)
    eps_fn, sampler, sched, grid, baseline, attention_fn = sharding_constraint(
        (eps_fn, sampler, sched, grid, baseline, attention_fn), mesh
    )
    x_T, noise_keys = sharding_constraint((x_T, noise_keys), mesh, BATCH_AXIS)
    return sharding_constraint(jax.vmap(run)(x_T, noise_keys), mesh, BATCH_AXIS)


# ----------------------------------------------------------------------------- public entry points


def _check_baseline(baseline: Any, layout: PatchLayout) -> None:
    check_instance(
        baseline, PatchStats, name="baseline", what="pifs_jax PatchStats (pj.patch_stats of the training data)"
    )
    m, nk = layout.num_patches, layout.patch_dim
    expected = {"mean": (m, nk), "covariance": (m, nk, nk), "leading_eigenvalue": (m,), "leading_eigenvector": (m, nk)}
    for field, shape in expected.items():
        got = tuple(np.shape(getattr(baseline, field)))
        if got != shape:
            raise ArgumentError(
                "baseline",
                f"expected the patch statistics of images of shape {layout.image_shape} in patches of {layout.patch_size} "
                f"(M = {m} patches of n_k = {nk}: {field} of shape {shape}), got {field} of shape {got}",
            )
    check_floating(baseline.covariance, name="baseline")


def _check_mesh(mesh: Any, batch: int | None) -> None:
    if not isinstance(mesh, Mesh):
        raise ArgumentError("mesh", f"expected a jax.sharding.Mesh, got {type(mesh).__name__}")
    if BATCH_AXIS not in mesh.shape:
        raise ArgumentError(
            "mesh", f"expected a mesh with an axis {BATCH_AXIS!r} (pj.batch_mesh()), got axes {tuple(mesh.axis_names)}"
        )
    if batch is None:
        raise ArgumentError("x_T", "a mesh splits trajectories: expected a batch (S, H, W, C), got one image (H, W, C)")
    if batch % mesh.shape[BATCH_AXIS]:
        raise ArgumentError(
            "x_T", f"the {batch} trajectories must be a multiple of the {mesh.shape[BATCH_AXIS]} devices of the mesh"
        )


def analyze_chain(
    eps_fn: EpsFn,
    sched: Schedule,
    x_T: Any,
    *,
    grid: Any,
    patch_size: int,
    sampler: Sampler | None = None,
    baseline: PatchStats | None = None,
    attention_fn: Callable | None = None,
    method: str = "auto",
    exact_max_n: int = EXACT_MAX_N,
    krylov_iters: int = 32,
    key: jax.Array | None = None,
    mesh: Mesh | None = None,
    check_finite: bool = True,
    chunk: int | None = None,
    progress: bool = False,
    on_chunk: Callable[[int, int], Any] | None = None,
) -> ChainAnalysis:
    """Block norms, suppression, deviation and attention entropy at every step of a sampler's chains.

    For each sampling step ``i = N, ..., 1`` (chain order, ``t = t_i`` decreasing) at the step's
    input ``x = x_{t_i}``: ``N_kj = ||[J Phi_t(x)]_kj||_2``, ``kappa_k = N_kk``, ``delta_k = sum_{j !=
    k} N_kj``, ``m_k = 1 - (kappa_k + delta_k)`` (docs/theory.md sections 6 and 11), where ``Phi_t``
    is the step's map on the image with the sampler's history held at its value along the
    trajectory (:attr:`pifs_jax.samplers.FlatChain.image_step`, the ``x -> x`` block of the step's
    Jacobian): DDIM ``J Phi_t = a_t I + b_t J_x epshat``; Heun ``a I + (b/2)(J_t + J_s (a I + b
    J_t))`` (``J_t = J_x epshat(x, t)``, ``J_s`` at the Euler point; the last step is DDIM's);
    DPM-Solver++(2M) ``(sigma_s / sigma_t) I + alpha_s (1 - e^{-h}) (1 + kappa) J_x D_t`` (module
    docstring). The suppression field and ``f_t(lambda_k)`` are the model-free predictions of the
    deterministic DDIM step: for any other sampler they are NaN and named in
    ``not_applicable``. See :class:`ChainAnalysis` for every field.

    Args:
      eps_fn: the denoiser ``eps_fn(x, t)`` of one image (a pytree such as
        :func:`pifs_jax.models.as_eps_fn` compiles once per architecture).
      sched: the schedule.
      x_T: the starting noise, ``(H, W, C)`` (one trajectory) or ``(S, H, W, C)`` (``S``
        trajectories, vmapped), floating.
      grid: sampling grid ``0 = tau_0 < ... < tau_N <= T`` (``None``: every training step).
      patch_size: ``p``, tiling ``H x W``; ``M = (H/p)(W/p)`` patches of ``n_k = p^2 C``.
      sampler: a :class:`pifs_jax.samplers.Sampler` (``DDIM()``, ``DPMSolverPP2M()``, ``Heun()``,
        ...); default ``DDIM()``. A stochastic one (``DDIM(eta > 0)``) draws its noise (the same for
        the chain and the blocks, which are then read at fixed noise) from
        ``fold_in(key, 2**31 - 1)``, split over the trajectories.
      baseline: :class:`pifs_jax.data.PatchStats` of the training data (same image shape and
        ``patch_size``): enables ``suppression``, ``deviation_norm`` and
        ``expansion_along_leading``.
      attention_fn: ``attention_fn(x, t) -> {layer: weights (..., queries, keys)}`` (e.g.
        :func:`module_attention_fn`), or ``pj.empirical_attention(sched, data)`` (its weights
        over the data are layer ``"data"``): enables ``attention_entropy``.
      method: ``"auto"`` (exact when ``n = H W C <= exact_max_n``, matrix-free above), ``"exact"``
        (``jax.jacfwd`` + SVD of every block) or ``"matrix_free"`` (``krylov_iters``
        Golub-Kahan-Lanczos steps per block).
      exact_max_n: the largest ``n`` for which ``"auto"`` forms the Jacobian.
      krylov_iters: Krylov steps per block of the matrix-free estimate (exact once ``>= n_k``).
      key: PRNG key of the matrix-free starting vectors (default ``PRNGKey(0)``; step ``i``
        uses ``fold_in(key, i)``) and of a stochastic sampler's noise.
      mesh: a :class:`jax.sharding.Mesh` with a ``"batch"`` axis (:func:`pifs_jax.batch_mesh`):
        the trajectories are split over it (``S`` a multiple of its size).
      check_finite: raise :class:`pifs_jax.errors.NonFiniteError` naming the first non-finite step
        when a chain's result is not finite, or naming ``eps_fn`` and the first step whose
        Jacobian-derived values (block norms ``kappa_k``, ``delta_k``; DDIM's suppression field)
        are not finite although the chain is (a denoiser whose derivative is infinite or NaN,
        e.g. ``sqrt`` at 0). One check on the results, after the compiled program.
      chunk: trajectories per compiled call (``None``: all ``S`` in one). The chunks run one
        after the other (one compilation per chunk shape: the chunk and a smaller last one);
        between chunks Ctrl-C stops the analysis (:func:`pifs_jax.loop.deferred_interrupt`),
        which raises ``KeyboardInterrupt("after k of S trajectories")``. On a CPU (one
        trajectory at a time in any case) the results are bit-identical for every ``chunk``; on
        an accelerator (vmapped) the batch size may change the float32 rounding. With a
        ``mesh``: a multiple of its batch axis.
      progress: a tqdm bar over the trajectories (stderr), the cost beforehand (steps,
        Jacobian columns or Krylov steps) and, after the first of several chunks, the time it
        took (compilation included) extrapolated to the others.
      on_chunk: ``on_chunk(done, S)`` after every chunk (e.g. a progress display).

    Returns:
      :class:`ChainAnalysis`.

    Raises:
      ArgumentError: naming ``sched``, ``sampler``, ``x_T`` (not floating, wrong rank), ``patch_size`` (does
        not tile the image), ``eps_fn`` (output shape), ``baseline`` (not a PatchStats, or of
        another image shape or patch size), ``attention_fn`` (fails, or returns no attention
        layer), ``method``, ``exact_max_n``, ``krylov_iters``, ``mesh``, ``grid``;
        :class:`pifs_jax.errors.NonFiniteError` (with ``check_finite``): a chain that is not
        finite, or a step whose Jacobian is not finite (naming ``eps_fn`` and the step).
    """
    check_instance(sched, Schedule, name="sched", what="pifs_jax Schedule")
    sampler = check_sampler(DDIM() if sampler is None else sampler)
    # the model-free predictions are those of the deterministic DDIM map
    model_free = isinstance(sampler, DDIM) and not sampler.stochastic
    x_T = jnp.asarray(x_T)
    check_floating(x_T, name="x_T")
    if x_T.ndim not in (3, 4):
        raise ArgumentError(
            "x_T", f"expected one image (H, W, C) or a batch of trajectories (S, H, W, C), got shape {x_T.shape}"
        )
    batched = x_T.ndim == 4
    if batched and x_T.shape[0] < 1:
        raise ArgumentError("x_T", f"expected at least one trajectory, got shape {x_T.shape}")
    one = x_T[0] if batched else x_T
    layout = patch_layout(one.shape, patch_size)
    if method not in METHODS:
        raise ArgumentError("method", f"expected one of {METHODS}, got {method!r}")
    exact_max_n = check_positive_int(exact_max_n, name="exact_max_n")
    krylov_iters = check_positive_int(krylov_iters, name="krylov_iters")
    check_denoiser(eps_fn, one)
    if baseline is not None:
        _check_baseline(baseline, layout)
    attention_keys = None if attention_fn is None else _check_attention_fn(attention_fn, one)
    if mesh is not None:
        _check_mesh(mesh, x_T.shape[0] if batched else None)
        x_T = shard_batch(x_T, mesh, BATCH_AXIS)
    grid = np.asarray(as_grid(grid, sched.T))
    exact = method == "exact" or (method == "auto" and layout.size <= exact_max_n)
    key = jax.random.PRNGKey(0) if key is None else key
    noise_keys = None
    if sampler.needs_key:
        noise_keys = jax.random.fold_in(key, 2**31 - 1)
        noise_keys = jax.random.split(noise_keys, x_T.shape[0]) if batched else noise_keys

    packed = None
    lam = None
    if baseline is not None:
        dtype = jnp.result_type(float, baseline.covariance)
        mean_image = unpatchify(jnp.asarray(baseline.mean, dtype), layout.image_shape, layout.patch_size)
        packed = (
            sched,
            mean_image,
            jnp.asarray(baseline.covariance, dtype),
            jnp.asarray(baseline.leading_eigenvector, dtype),
        )
        lam = jnp.asarray(baseline.leading_eigenvalue, dtype)

    def compiled(x, keys):
        return _compiled_analysis(
            eps_fn, sampler, sched, jnp.asarray(grid), x, key, keys, packed, attention_fn,
            layout=layout, exact=exact, iters=krylov_iters, batched=batched, mesh=mesh, model_free=model_free,
        )  # fmt: skip

    if not batched:
        x_0, per_step = compiled(x_T, noise_keys)
    else:
        total = x_T.shape[0]
        size = total if chunk is None else min(check_positive_int(chunk, name="chunk"), total)
        if mesh is not None and size % mesh.shape[BATCH_AXIS]:
            raise ArgumentError(
                "chunk", f"expected a multiple of the {mesh.shape[BATCH_AXIS]} devices of the mesh, got {chunk}"
            )
        cost = (
            f"exact Jacobians ({layout.size} JVP columns per step)"
            if exact
            else f"matrix-free block norms ({krylov_iters} Krylov steps per block)"
        )
        x_0, per_step = _in_chunks(
            compiled, x_T, noise_keys, size, progress=progress, on_chunk=on_chunk,
            what=f"{len(grid) - 1} {sampler_label(sampler)} steps each, {cost}",
        )  # fmt: skip
    t = grid[1:][::-1]  # each step's input timestep, chain order: t_N first
    if check_finite:
        _raise_if_nonfinite(eps_fn, sched, x_T, x_0, grid, batched, sampler, noise_keys)
        _raise_if_jacobian_nonfinite(per_step, t, batched, model_free)
    expansion = None
    if lam is not None:
        expansion = np.asarray(expansion_factor(sched, lam, grid))[::-1]  # grid order -> chain order
        if not model_free:  # f_t is the DDIM step's expansion
            expansion = np.full_like(expansion, np.nan)
    return ChainAnalysis(
        t=t,
        logsnr=np.asarray(sched.log_snr)[t],
        kappa_diag=per_step["kappa_diag"],
        delta_cross=per_step["delta_cross"],
        kappa_diag_mean=per_step["kappa_diag_mean"],
        delta_cross_mean=per_step["delta_cross_mean"],
        margin_mean=per_step["margin_mean"],
        kappa_diag_per_patch=per_step["kappa_diag_per_patch"],
        delta_cross_per_patch=per_step["delta_cross_per_patch"],
        margin_per_patch=per_step["margin_per_patch"],
        violations=per_step["violations"],
        suppression=per_step.get("ddim_suppression"),
        deviation_norm=per_step.get("deviation_norm"),
        expansion_along_leading=expansion,
        attention_entropy=cast("dict | None", per_step.get("attention_entropy")),
        attention_keys=attention_keys,
        patch_size=layout.patch_size,
        image_shape=tuple(layout.image_shape),
        method="exact" if exact else "matrix_free",
        sampler=repr(sampler),
        not_applicable=() if model_free else DDIM_PREDICTIONS,
        projected_coupling=per_step.get("ddim_projected_coupling"),
    )


def _in_chunks(compiled, x_T, noise_keys, size, *, progress, on_chunk, what):
    """``compiled(x, keys)`` over the trajectories ``size`` at a time, concatenated (see :func:`analyze_chain`)."""
    total = int(x_T.shape[0])
    chunks = -(-total // size)
    parts = []
    notice = "analyze: stopping after the running chunk of trajectories (Ctrl-C again to stop at once)"
    with contextlib.ExitStack() as stack:
        requested = stack.enter_context(deferred_interrupt(notice if chunks > 1 else ""))
        bar = None
        if progress:
            from tqdm import tqdm  # text bar: works in terminals and notebooks without ipywidgets

            bar = stack.enter_context(tqdm(total=total, desc="analyze", unit="trajectory", leave=False))
            bar.write(
                f"analyze: {total} trajectories, {what}; {chunks} chunk{'s' if chunks > 1 else ''} of {size}",
                file=sys.stderr,
            )
        for start in range(0, total, size):
            stop = min(start + size, total)
            began = time.perf_counter()
            part = compiled(x_T[start:stop], None if noise_keys is None else noise_keys[start:stop])
            parts.append(jax.block_until_ready(part))
            if bar is not None:
                bar.update(stop - start)
                if start == 0 and stop < total:
                    seconds = time.perf_counter() - began
                    bar.write(
                        f"analyze: the first {stop} of {total} trajectories took {seconds:.1f} s (compilation "
                        f"included): about {seconds * (total - stop) / stop:.0f} s for the other {total - stop}",
                        file=sys.stderr,
                    )
            if on_chunk is not None:
                on_chunk(stop, total)
            if requested() and stop < total:
                raise KeyboardInterrupt(f"after {stop} of {total} trajectories")
    if len(parts) == 1:
        return parts[0]
    return jax.tree_util.tree_map(lambda *leaves: jnp.concatenate(leaves), *parts)


def _raise_if_nonfinite(eps_fn, sched, x_T, x_0, grid, batched, sampler, noise_keys) -> None:
    """Raise the :class:`NonFiniteError` of the first trajectory whose ``x_0`` is not finite."""
    finite = np.asarray(jnp.all(jnp.isfinite(x_0.reshape((x_0.shape[0], -1) if batched else (1, -1))), axis=1))
    if finite.all():
        return
    i = int(np.flatnonzero(~finite)[0])
    start = x_T[i] if batched else x_T
    context = f"trajectory {i} of {x_T.shape[0]}: " if batched else ""
    key = None if noise_keys is None else noise_keys[i] if batched else noise_keys
    error = locate_nonfinite(eps_fn, sched, start, grid=grid, sampler=sampler, key=key, context=context)
    raise error or NonFiniteError("eps_fn", f"{context}the chain's result is not finite")


#: The per-step values computed from the step Jacobian (DDIM's suppression field only where it applies).
_JACOBIAN_FIELDS = ("kappa_diag_per_patch", "delta_cross_per_patch")


def _raise_if_jacobian_nonfinite(per_step: dict, t: np.ndarray, batched: bool, model_free: bool) -> None:
    """Raise a :class:`NonFiniteError` naming ``eps_fn`` and the first step whose Jacobian-derived values are not finite.

    One reduction over the per-step fields (one transfer to the host), made once on the results.
    """
    names = [*_JACOBIAN_FIELDS, *(("ddim_suppression",) if model_free and "ddim_suppression" in per_step else ())]
    finite = jnp.stack([jnp.all(jnp.isfinite(per_step[name]), axis=-1) for name in names])  # (fields, [S,] N)
    finite = np.asarray(finite).reshape(len(names), -1, len(t))  # (fields, S, N)
    if finite.all():
        return
    trajectory, step = (int(i[0]) for i in np.nonzero(~finite.all(axis=0)))
    fields = [name for name, ok in zip(names, finite[:, trajectory, step], strict=True) if not ok]
    what = ", ".join("the suppression field" if name == "ddim_suppression" else name for name in fields)
    context = f"trajectory {trajectory} of {finite.shape[1]}: " if batched else ""
    raise NonFiniteError(
        "eps_fn",
        f"{context}the chain is finite but the Jacobian of step {step + 1} of {len(t)} (t = {int(t[step])}, chain "
        f"order) is not ({what} NaN or infinite); eps_fn's derivative with respect to x is not finite at the "
        "step's input (e.g. sqrt or log at 0, or a function not differentiable there)",
    )


def per_patch_exponents(analysis: ChainAnalysis) -> tuple[np.ndarray, np.ndarray]:
    """Predicted (suppression-corrected) and measured per-patch exponents, each of shape ``([S,] M)``.

    ``predicted_k = (1/N) sum_i log(f_{t_i}(lambda_k) - S_{k,t_i})`` (``-inf`` when a factor is
    not positive: the direction is annihilated in that step), ``measured_k = (1/N) sum_i
    log kappa_k(t_i)`` (docs/theory.md section 11), float64. ``predicted`` is NaN when the
    analysed sampler is not deterministic DDIM (``"predicted_exponents"`` in
    ``analysis.not_applicable``): ``f_t`` and the suppression field are that map's.

    Args:
      analysis: the result of :func:`analyze_chain`, run with a ``baseline``.

    Returns:
      ``(predicted, measured)``, float64 arrays of shape ``([S,] M)``.

    Raises:
      ArgumentError: naming ``analysis`` when it has no suppression field (run
        :func:`analyze_chain` with a ``baseline``).
    """
    check_instance(analysis, ChainAnalysis, name="analysis", what="ChainAnalysis (pifs_jax.analyze_chain)")
    if analysis.suppression is None or analysis.expansion_along_leading is None:
        raise ArgumentError(
            "analysis", "the predicted exponents need the suppression field: run analyze_chain with baseline="
        )
    factor = np.asarray(analysis.expansion_along_leading, np.float64) - np.asarray(analysis.suppression, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_factor = np.where(factor > 0, np.log(np.where(factor > 0, factor, 1.0)), -np.inf)
        predicted = np.mean(log_factor, axis=-2)
        if "predicted_exponents" in analysis.not_applicable:
            predicted = np.full_like(predicted, np.nan)
        measured = np.mean(np.log(np.asarray(analysis.kappa_diag_per_patch, np.float64)), axis=-2)
    return predicted, measured


def suppression_corrected_margins(analysis: ChainAnalysis) -> np.ndarray | None:
    """Reading (D) of docs/theory.md section 11: ``m_k = 1 - (f_t(lambda_k) - S_{k,t})``, shape ``([S,] N, M)``.

    One minus the diagonal block's quotient along the patch's leading direction,
    ``<v_k, [J]_kk v_k>``; float64. ``None`` where it does not apply: no baseline (no suppression
    field), or a chain of another sampler than deterministic DDIM. The crossover claim is judged
    under this reading where it applies (:func:`pifs_jax.analysis.evaluate_claims`).

    Args:
      analysis: a :class:`ChainAnalysis` (:func:`pifs_jax.analyze_chain`).

    Returns:
      the margins, float64 of shape ``([S,] N, M)``, or ``None``.

    Raises:
      ArgumentError: naming ``analysis`` when it is not a :class:`ChainAnalysis`.
    """
    check_instance(analysis, ChainAnalysis, name="analysis", what="ChainAnalysis (pifs_jax.analyze_chain)")
    if analysis.suppression is None or analysis.expansion_along_leading is None or not analysis.model_free:
        return None
    expansion = np.asarray(analysis.expansion_along_leading, np.float64)
    return 1.0 - (expansion - np.asarray(analysis.suppression, np.float64))


class CorrectedAttractor(NamedTuple):
    """The suppression-corrected Moran threshold and Kaplan-Yorke dimension (docs/theory.md section 6).

    Each of shape ``([S,])``, one value per trajectory of the analysis.
    """

    moran_threshold: np.ndarray
    """``lambda***``: the patch variance at which ``Lambda_eff`` first turns positive (NaN: no crossing)."""
    dimension: np.ndarray
    """``d_KY^eff``: the Kaplan-Yorke rule on ``Lambda_eff,k`` with multiplicities ``n_k``."""
    expanding_patches: np.ndarray
    """``#{k: Lambda_eff,k > 0}``, int."""


#: Stands in for an annihilated direction's ``-inf`` exponent in the Kaplan-Yorke rule: finite in
#: float32, so its fraction ``S_j / |Lambda|`` is zero to float32 precision, as the limit is.
_ANNIHILATED = -1e30


def corrected_attractor(analysis: ChainAnalysis, patch_eigenvalues: Any) -> CorrectedAttractor:
    """``lambda***`` and ``d_KY^eff`` of each trajectory, from :func:`per_patch_exponents`' predictions.

    With ``Lambda_eff,k = (1/N) sum_i log(f_{t_i}(lambda_k) - S_{k,t_i})`` and the patches sorted by
    their leading variance ``lambda_k``: ``lambda***`` is the first zero crossing of ``Lambda_eff``
    from below, interpolated linearly in ``log lambda`` between the two patches around it,
    ``log lambda*** = log lambda_k + (0 - Lambda_k) / (Lambda_{k+1} - Lambda_k) (log lambda_{k+1} -
    log lambda_k)`` for the smallest ``k`` with ``Lambda_k <= 0 < Lambda_{k+1}`` (``lambda_{k+1}``
    when ``Lambda_k = -inf``); NaN when no patch expands or every patch does (the crossing is
    outside the patches' range). ``d_KY^eff`` is :func:`pifs_jax.kaplan_yorke_dimension` of the
    ``Lambda_eff,k`` with multiplicities ``n_k`` (an annihilated direction, ``-inf``, contributes
    no fraction). Definitions fixed in docs/theory.md section 6 before any model was measured.

    Args:
      analysis: a :class:`ChainAnalysis` of deterministic DDIM with a baseline.
      patch_eigenvalues: ``lambda_k``, shape ``(M,)`` (:attr:`pifs_jax.PatchStats.leading_eigenvalue`).

    Returns:
      :class:`CorrectedAttractor`.

    Raises:
      ArgumentError: naming ``analysis`` (no suppression field, or another sampler than
        deterministic DDIM) or ``patch_eigenvalues`` (not ``M`` positive values).
    """
    predicted, _ = per_patch_exponents(analysis)
    if "predicted_exponents" in analysis.not_applicable:
        raise ArgumentError("analysis", f"the corrected exponents are deterministic DDIM's, not {analysis.sampler}'s")
    lam = np.asarray(patch_eigenvalues, np.float64)
    m = analysis.num_patches
    if lam.shape != (m,) or not np.all(np.isfinite(lam) & (lam > 0)):
        raise ArgumentError("patch_eigenvalues", f"expected {m} positive finite variances, got shape {lam.shape}")
    order = np.argsort(lam, kind="stable")
    log_lam = np.log(lam[order])
    exponents = np.atleast_2d(predicted)[:, order]  # (S, M), ascending lambda
    sizes = np.full(m, patch_layout(analysis.image_shape, analysis.patch_size).patch_dim, np.float64)
    thresholds, dimensions = [], []
    for row in exponents:
        threshold = np.nan
        for k in range(m - 1):
            low, high = row[k], row[k + 1]
            if low <= 0 < high:
                fraction = 1.0 if np.isneginf(low) else -low / (high - low)
                threshold = float(np.exp(log_lam[k] + fraction * (log_lam[k + 1] - log_lam[k])))
                break
        thresholds.append(threshold)
        finite = np.where(np.isneginf(row), _ANNIHILATED, row)
        dimensions.append(float(kaplan_yorke_dimension(finite, sizes)))
    shape = np.shape(predicted)[:-1]
    return CorrectedAttractor(
        moran_threshold=np.asarray(thresholds).reshape(shape),
        dimension=np.asarray(dimensions).reshape(shape),
        expanding_patches=np.sum(exponents > 0, axis=-1).reshape(shape),
    )

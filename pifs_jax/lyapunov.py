"""Lyapunov spectra: asymptotic (autonomous maps) and finite-time (the DDIM chain).

- :func:`lyapunov_spectrum`: an autonomous map iterated for a long time, by Benettin's QR
  re-orthonormalisation (exponents **per iterate**).
- :func:`chain_lyapunov_spectrum`: the finite, non-autonomous DDIM chain's exact finite-time
  spectrum ``Lambda_j = (1/N) log sigma_j(J_N ... J_1)`` (exponents **per step**): full via
  ``J Q`` pushed as JVPs and graded QR products, or the leading ``k`` matrix-free by subspace iteration
  (JVPs forward, VJPs backward); ``method="benettin"`` for comparison.

The definitions are in docs/theory.md section 5. Why Benettin's sum is not the finite-time
spectrum of a short chain, the graded QR products, the subspace iteration, its gradients and
``qr_every`` are explained in docs/numerics.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from pifs_jax._validation import check_floating, check_positive_int, is_concrete
from pifs_jax.errors import ArgumentError, NonFiniteError
from pifs_jax.grids import as_grid
from pifs_jax.kaplan_yorke import kaplan_yorke_dimension
from pifs_jax.samplers.base import Sampler, check_denoiser, check_sampler
from pifs_jax.samplers.chain import FlatChain, flat_chain
from pifs_jax.samplers.ddim import DDIM
from pifs_jax.schedules import Schedule
from pifs_jax.tangent_qr import (
    graded_log_singular_values,
    graded_update,
    identity_constraint,
    orthonormal_block,
    qr_pass,
    qr_positive,
    safe_diagonal,
    transposed_qr_pass,
)
from pifs_jax.typing import EpsFn

__all__ = [
    "CHAIN_METHODS",
    "SEQUENTIAL_FULL_MIN_N",
    "TRAJECTORY_AXIS",
    "Spectrum",
    "SpectrumOptions",
    "chain_lyapunov_spectra",
    "chain_lyapunov_spectrum",
    "lyapunov_spectrum",
]

#: Spectrum methods of a chain (:class:`SpectrumOptions` ``method``): exact singular values or Benettin's QR sum.
CHAIN_METHODS = ("exact", "benettin")


@dataclasses.dataclass(frozen=True)
class SpectrumOptions:
    """How a chain spectrum is computed (the options :func:`chain_lyapunov_spectrum` and
    :func:`chain_lyapunov_spectra` share, grouped as diffrax groups ``SaveAt``).

    Attributes:
      k: ``None`` = full spectrum (``n`` exponents); an integer ``1 <= k <= n`` = the leading ``k``
        (matrix-free).
      method: ``"exact"`` (singular values of the chain Jacobian) or ``"benettin"`` (Benettin's QR
        sum, the asymptotic estimator, for comparison).
      iters: leading-``k`` exact: maximum subspace iterations.
      tol: leading-``k`` exact: stop when no exponent changes by more than ``tol`` per step
        between iterations; ``None`` = ``10 eps`` of the state's dtype.
      oversample: leading-``k`` exact: extra subspace vectors.
      sweeps: exact: graded QR sweeps of the triangular product before its singular values are read.
      qr_every: ``"auto"`` (adaptive re-orthonormalisation) or a positive integer ``m``.

    Each field is documented in full at :func:`chain_lyapunov_spectrum`; the object is hashable
    (static under ``jax.jit``), and :meth:`checked` validates it.
    """

    k: int | None = None
    method: str = "exact"
    iters: int = 200
    tol: float | None = None
    oversample: int = 0
    sweeps: int = 8
    qr_every: int | str = "auto"

    def checked(self, n: int | None = None) -> SpectrumOptions:
        """The options validated (``k`` against the state dimension ``n`` when given).

        Raises:
          ArgumentError: naming ``k``, ``method``, ``iters``, ``oversample``, ``sweeps`` or ``qr_every``.
        """
        if self.method not in CHAIN_METHODS:
            raise ArgumentError("method", f"expected one of {CHAIN_METHODS}, got {self.method!r}")
        k = self.k
        if k is not None:
            k = check_positive_int(k, name="k")
            if n is not None and k > n:
                raise ArgumentError("k", f"cannot exceed the state dimension n = {n}, got k = {k}")
        return dataclasses.replace(
            self,
            k=k,
            iters=check_positive_int(self.iters, name="iters"),
            oversample=check_positive_int(self.oversample, name="oversample", minimum=0),
            sweeps=check_positive_int(self.sweeps, name="sweeps", minimum=0),
            qr_every=_check_qr_every(self.qr_every),
        )

    @classmethod
    def build(cls, options: SpectrumOptions | None, fields: dict[str, Any]) -> SpectrumOptions:
        """``options`` (default: the defaults) with ``fields`` replaced; unknown names are refused."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ArgumentError(unknown[0], f"not a spectrum option; expected one of {sorted(known)}")
        if options is not None and not isinstance(options, SpectrumOptions):
            raise ArgumentError("options", f"expected a SpectrumOptions, got {type(options).__name__}")
        return dataclasses.replace(options or cls(), **fields)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Spectrum:
    """A Lyapunov spectrum (a pytree: it passes through ``jax.jit`` / ``jax.vmap``).

    Attributes:
      exponents: shape ``(k,)``, sorted descending, natural log, **per ``per``** (a step of the
        chain or an iterate of the map).
      dimension: Kaplan-Yorke dimension (:func:`pifs_jax.kaplan_yorke.kaplan_yorke_dimension`).
        For a leading-``k`` spectrum it is reported only if the partial sums of the ``k``
        exponents turn negative within ``k`` (then the rule only needs those); otherwise ``NaN``,
        meaning "``k`` too small to locate the dimension".
      history: running estimates for convergence plots, or ``None`` (see each function).
      vectors: leading-``k`` chain spectra: the right singular vectors of the chain Jacobian
        (the initial-state directions, stretched by ``exp(N Lambda_j)``), shape ``(k,) + x.shape``;
        ``None`` otherwise.
      per: ``"step"`` (chain) or ``"iterate"`` (autonomous map). Static.
      n_steps: ``N``, the number of steps / iterates averaged over. Static.
    """

    exponents: jax.Array
    dimension: jax.Array
    history: jax.Array | None = None
    vectors: jax.Array | None = None
    per: str = dataclasses.field(default="step", metadata=dict(static=True))
    n_steps: int = dataclasses.field(default=0, metadata=dict(static=True))

    def _asdict(self) -> dict:
        """Field dictionary (used by :func:`pifs_jax.results.to_jsonable`)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def _first_nonzero(counts: Any) -> int | None:
    bad = np.flatnonzero(np.asarray(counts))
    return None if bad.size == 0 else int(bad[0])


def _dimension(exponents: jax.Array, *, leading: bool) -> jax.Array:
    """Kaplan-Yorke dimension; ``NaN`` for a leading spectrum whose partial sums stay >= 0.

    ``-inf`` exponents (exactly singular directions) count as the most negative finite number.
    Called on traced exponents (inside the compiled cores).
    """
    finite_lower = jnp.maximum(exponents, -jnp.finfo(exponents.dtype).max)
    dim = kaplan_yorke_dimension(finite_lower)
    if leading:
        dim = jnp.where(jnp.any(jnp.cumsum(finite_lower) < 0), dim, jnp.nan)
    return dim


def _running_mean(log_r: jax.Array) -> jax.Array:
    """``(1/i) sum_{i' <= i} log_r[i']`` along axis 0 (the running Benettin estimate)."""
    counts = jnp.arange(1, log_r.shape[0] + 1, dtype=log_r.dtype)[:, None]
    return jnp.cumsum(log_r, axis=0) / counts


def _check_k(k: Any, n: int) -> int:
    k = check_positive_int(k, name="k")
    if k > n:
        raise ArgumentError("k", f"cannot exceed the state dimension n = {n}, got k = {k}")
    return k


def _float_state(x: Any, name: str) -> jax.Array:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    if x.size == 0:
        raise ArgumentError(name, f"expected a non-empty array, got shape {x.shape}")
    if is_concrete(x) and not np.all(np.isfinite(np.asarray(x))):
        raise ArgumentError(name, "the initial state contains non-finite values")
    return x


# The cores are compiled with ``equinox.filter_jit``: the array leaves of every argument (the
# denoiser's parameters, the state, the schedule, the grid, the key) are traced, everything else
# (functions, keyword options, the mesh) static. Repeated eager calls with the same static
# structure and shapes (another schedule, or another parameter set of a pytree denoiser) reuse
# one compilation, and the compiled programs hold no parameter arrays.


# ----------------------------------------------------------------------------- autonomous maps


def _autonomous_core(map_fn, x0, key, *, n_steps, n_transient, k, return_history):
    shape, n = x0.shape, x0.size

    def step(v, _):
        return jnp.asarray(map_fn(v.reshape(shape)), v.dtype).reshape(-1)

    x = x0.reshape(-1)
    if n_transient:
        x, _ = jax.lax.scan(lambda v, _: (step(v, None), None), x, None, length=n_transient)
    q0 = jnp.eye(n, dtype=x.dtype) if k is None else orthonormal_block(key, n, k, x.dtype)
    run = qr_pass(step, x, q0, None, length=n_steps, full=k is None, graded=False, final_basis=False)
    order = jnp.argsort(-run.log_diag)
    exponents = run.log_diag[order] / n_steps
    history = _running_mean(run.log_r)[:, order] if return_history else None
    spectrum = Spectrum(exponents, _dimension(exponents, leading=k is not None), history, None, "iterate", n_steps)
    return spectrum, run.finite


_compiled_autonomous_core = eqx.filter_jit(_autonomous_core)


def lyapunov_spectrum(
    map_fn: Callable[[jax.Array], jax.Array],
    x0: Any,
    *,
    n_steps: int,
    k: int | None = None,
    n_transient: int = 0,
    return_history: bool = False,
    key: jax.Array | None = None,
    check_finite: bool = True,
) -> Spectrum:
    """Asymptotic Lyapunov spectrum of an autonomous map by Benettin's QR method, per iterate.

    ``Q_i R_i = DF(x_{i-1}) Q_{i-1}``, ``Lambda_j = (1/N) sum_{i=1}^N log |(R_i)_jj|`` after
    ``n_transient`` iterates without tangents (to reach the attractor). The statistical error of
    the estimate is ``O(1/sqrt(N))`` on a chaotic attractor and ``O(1/N)`` for a linear map.

    Args:
      map_fn: ``F(x) -> array of x's shape``, jittable.
      x0: initial state, any shape with ``n`` entries; an integer array is converted to the
        default floating dtype (a point of an arbitrary map, unlike a diffusion state).
      n_steps: ``N``, iterates averaged over (``>= 1``).
      k: ``None`` = full spectrum (``DF Q`` by :func:`pifs_jax.jacobians.forward_products`, ``Q_0 = I``; a
        planar map's ``2 x 2`` block is factored in closed form); an integer ``1 <= k <= n``
        = the leading ``k`` exponents, ``k`` tangent vectors pushed by JVPs (``jax.linearize`` +
        ``vmap``) from a random orthonormal basis; cost ``O(k)`` map evaluations per iterate.
      n_transient: iterates discarded before measuring.
      return_history: also return the running estimate ``(1/i) sum_{i' <= i} log |diag R_i'|``,
        shape ``(N, k)``, columns in the order of the sorted exponents (convergence plots).
      key: PRNG key for the leading-``k`` initial basis (default ``PRNGKey(0)``).
      check_finite: when the result is concrete (an eager call; skipped under ``jax.jit``),
        raise :class:`pifs_jax.errors.NonFiniteError` if a state or a tangent block turned
        non-finite, naming the first measured iterate; ``False`` returns NaN/inf silently.

    Returns:
      :class:`Spectrum` with ``exponents`` shape ``(k,)`` (``(n,)`` if full) sorted descending,
      ``per="iterate"``, ``n_steps=N`` and the Kaplan-Yorke dimension.

    Raises:
      ArgumentError: naming ``k``, ``n_steps``, ``n_transient``, ``x0`` or ``map_fn`` (output shape
        differs from input); ``NonFiniteError`` (a ``ValueError`` and a ``FloatingPointError``)
        naming ``map_fn`` for non-finite states, with the iterate where they first appear.

    Example:
      >>> henon = lambda v: jnp.array([1 - 1.4 * v[0] ** 2 + v[1], 0.3 * v[0]])
      >>> spec = lyapunov_spectrum(henon, jnp.zeros(2), n_steps=100_000, n_transient=1000)
      >>> spec.exponents   # ~ [0.419, -1.623]; spec.dimension ~ 1.258
    """
    n_steps = check_positive_int(n_steps, name="n_steps")
    n_transient = check_positive_int(n_transient, name="n_transient", minimum=0)
    x0 = _float_state(x0, "x0")
    shape, n = x0.shape, x0.size
    try:
        out = eqx.filter_eval_shape(map_fn, jax.ShapeDtypeStruct(shape, x0.dtype))
    except Exception as err:
        raise ArgumentError("map_fn", f"calling map_fn(x) with x of shape {shape} failed: {err}") from err
    if getattr(out, "shape", None) != shape:
        got = getattr(out, "shape", type(out).__name__)
        raise ArgumentError("map_fn", f"the map must return an array of the input's shape {shape}, got {got}")
    if k is not None:
        k = _check_k(k, n)
    spectrum, finite = _compiled_autonomous_core(
        map_fn,
        x0,
        jax.random.PRNGKey(0) if key is None else key,
        n_steps=n_steps,
        n_transient=n_transient,
        k=k,
        return_history=bool(return_history),
    )
    if check_finite and is_concrete(finite):
        blocks = (f"of the state's {n} values", f"of the {n} x {n if k is None else k} tangent block's values")
        for counts, what, block in zip(finite, ("a non-finite state", "a non-finite Jacobian"), blocks, strict=True):
            bad = _first_nonzero(counts)
            if bad is not None:
                raise NonFiniteError(
                    "map_fn",
                    f"{what} first appears at measured iterate {bad + 1} of {n_steps} (after {n_transient} "
                    f"transient iterates), in {int(np.asarray(counts)[bad])} {block}; check map_fn there",
                )
    return spectrum


# ----------------------------------------------------------------------------- the DDIM chain


def chain_lyapunov_spectrum(
    eps_fn: EpsFn,
    sched: Schedule,
    x_T: Any,
    *,
    grid: Any = None,
    sampler: Sampler | None = None,
    options: SpectrumOptions | None = None,
    key: jax.Array | None = None,
    return_history: bool = False,
    check_finite: bool = True,
    mesh: Any = None,
    **option_fields: Any,
) -> Spectrum:
    """Finite-time Lyapunov spectrum of a sampler's chain from ``x_T``, **per step**.

    ``Lambda_j = (1/N) log sigma_j(P J_N ... J_1 E)``: the singular values of the chain's total
    derivative ``d x_0 / d x_T`` (``N`` = number of steps of ``grid``), with ``J_i`` the Jacobian
    of step ``i`` on the sampler's state along the trajectory, ``E = d init / d x_T`` and
    ``P = d output / d state`` (both the identity when the state is the image, as for DDIM and
    Heun; a multistep sampler's history enters through its dependence on ``x_T``). For DDIM
    (the default), ``J_i = a_t I + b_t d epshat/dx``, and under Gaussian data the spectrum equals
    :func:`pifs_jax.geometry.lyapunov_exponents` ``(1/N) sum_t log f_t(lambda_i)``.
    The computation is one ``equinox.filter_jit`` compilation per (static part of ``eps_fn``,
    shapes, options): another schedule, grid of the same length, or parameter set of a pytree
    denoiser (:func:`pifs_jax.models.as_eps_fn`, ``jax.tree_util.Partial``) does not recompile;
    a plain closure compiles once per closure object. Jittable, ``vmap``-able over ``x_T``
    and differentiable (leading-``k`` exact: with respect to the schedule, ``x_T`` and
    the parameters of ``eps_fn``, pytree leaves or closed over).

    Args:
      eps_fn: ``eps_fn(x, t) -> array of x's shape`` (one sample; ``t`` a traced int32).
      sched: the schedule.
      x_T: initial state, any shape with ``n`` entries, floating dtype (integers are refused).
      grid: sampling grid ``0 = tau_0 < ... < tau_N <= T``; ``None`` = every training step.
      sampler: a :class:`pifs_jax.samplers.Sampler` (default ``DDIM()``). A stochastic one
        (``DDIM(eta > 0)``) is analysed at fixed noise, drawn from ``key``.
      options: a :class:`SpectrumOptions`; its fields may also be passed as keywords
        (``k=8, qr_every=4``), which replace those of ``options``. They are:
      k: ``None`` = full spectrum (``n`` exponents; ``J_i Q`` as ``n`` JVPs of the step after one
        linearisation, :func:`pifs_jax.jacobians.forward_products`, ``J_i`` never formed; ``O(n^3)``
        per step); an integer ``1 <= k <= n`` = the leading ``k`` (matrix-free).
      method: ``"exact"`` (default): the singular values of the chain Jacobian (full: QR-factored
        graded product; leading-``k``: subspace iteration on ``M^T M`` by step-wise QR passes). ``"benettin"``:
        Benettin's QR sum from an arbitrary basis (identity if full, a random orthonormal
        ``n x k`` block otherwise) -- the asymptotic estimator, off by ``O(1/N)`` here; provided
        for comparison (see the module docstring).
      iters: leading-``k`` exact: maximum subspace iterations.
      tol: leading-``k`` exact: stop when no exponent (per step) changes by more than ``tol``
        between iterations; default ``10 eps`` of the state's dtype.
      oversample: leading-``k`` exact: extra subspace vectors (faster convergence of the
        ``k``-th exponent; rate ``(sigma_{k+oversample+1}/sigma_k)^2`` per iteration).
      sweeps: exact: graded QR sweeps of the triangular product (each one ``n x n`` QR, or
        ``p x p`` for leading-``k``) before its singular values are read.
      key: PRNG key for random initial blocks (default ``PRNGKey(0)``).
      return_history: full: the running Benettin estimate ``(1/i) sum_{i'<=i} log diag R_i'``,
        shape ``(N, n)`` (unsorted columns); leading-``k`` exact: the Ritz estimates after each
        iteration, shape ``(iters, k)``, ``NaN`` after convergence; leading-``k`` Benettin: the
        running estimate, shape ``(N, k)``.
      check_finite: when the result is concrete (an eager call; skipped under ``jax.jit`` /
        ``jax.grad``, where nothing can raise), raise :class:`pifs_jax.errors.NonFiniteError`
        naming the first step (``t -> s``) whose state or Jacobian is non-finite; ``False``
        returns NaN/inf silently.
      qr_every: ``"auto"`` (default): re-orthonormalise when the accumulated block
        ``J_{i+s} ... J_{i+1} Q`` would otherwise lose more than a quarter of the dtype's digits
        (``log(1/eps)/4`` nats: 4 in float32, 9 in float64), judged from its column norms at
        every step and the exact loss ``max_j (log |y_j| - log R_jj)`` measured at each QR, or,
        where that model calls a QR due, by a Gram-matrix probe of the block (one Gram product
        and a Cholesky factorisation, no ``Q``) that takes the QR only if it is needed
        (:class:`pifs_jax.orthogonalization.AdaptiveBlocks`; docs/numerics.md section 5.4).
        An integer ``m``: re-orthonormalise every ``m`` steps
        (``Q' R = J_{i+m} ... J_{i+1} Q``; the same ``R`` in exact arithmetic). Full spectrum:
        each skipped QR and graded update saves about ``4.7 n^3`` FLOPs, leaving the Jacobian
        and one ``n x n`` product per step. Leading-``k``: the forward and the transposed passes
        skip the thin ``n x p`` QRs, which dominate a pass on CPU. Safe while an ``m``-step block
        stays well conditioned: its weakest directions keep relative accuracy about
        ``eps exp(m (Lambda_1 - Lambda_n))`` (full; for leading-``k`` the spread within the
        block), so choose ``m`` with that spread well below ``log(1/eps)`` (16 nats in float32,
        36 in float64). Full spectrum: the history is ``NaN`` on steps without a QR (for
        ``"auto"`` too).
      mesh: full spectrum or leading-``k`` exact: a :class:`jax.sharding.Mesh`; the tangent block
        is sharded over all of its axes (see :mod:`pifs_jax.sharding`). Full: the ``n`` columns of
        ``Q`` (``n`` must be a multiple of the mesh size) are pushed as JVPs on their devices,
        ``J_i Q_{i-1}``, instead of in cache-sized batches on one device; the ``n x n`` QR and the
        graded product run on the gathered block (replicated). Leading-``k``: the block size is
        rounded up to a multiple of the mesh size with extra (oversampling) vectors.

    Returns:
      :class:`Spectrum` (``per="step"``, ``n_steps=N``) with ``exponents`` shape ``(n,)`` or
      ``(k,)`` sorted descending, the Kaplan-Yorke dimension (leading-``k``: ``NaN`` if the
      partial sums of the ``k`` exponents stay non-negative, i.e. ``k`` too small) and, for
      leading-``k`` exact, the right singular ``vectors`` of shape ``(k,) + x_T.shape``.

    Raises:
      ArgumentError: naming ``k``, ``method``, ``iters``, ``oversample``, ``sweeps``, ``qr_every``, ``sched``,
        ``grid``, ``mesh``, ``x_T`` (not floating, or non-finite) or ``eps_fn`` (wrong output
        shape); ``NonFiniteError`` (a ``ValueError`` and a ``FloatingPointError``) naming
        ``eps_fn`` for non-finite values, with the step.

    Example:
      >>> spec = chain_lyapunov_spectrum(eps_fn, cosine(1000), x_T, grid=uniform_grid(1000, 50))
      >>> spec.exponents, spec.dimension
    """
    return _chain_spectrum(
        eps_fn, sched, x_T, grid=grid, sampler=sampler, options=options, key=key, return_history=return_history,
        check_finite=check_finite, mesh=mesh, axis_name=None, **option_fields,
    )  # fmt: skip


def _chain_spectrum(
    eps_fn: EpsFn,
    sched: Schedule,
    x_T: Any,
    *,
    grid: Any,
    sampler: Sampler | None,
    options: SpectrumOptions | None,
    key: jax.Array | None,
    return_history: bool,
    check_finite: bool,
    mesh: Any,
    axis_name: str | None,
    **option_fields: Any,
) -> Spectrum:
    """:func:`chain_lyapunov_spectrum`; ``axis_name``: the name of an enclosing ``vmap`` over trajectories
    (:func:`chain_lyapunov_spectra`), whose adaptive QRs and final readings are then decided once for
    the batch (:func:`pifs_jax.orthogonalization.batch_cond`)."""
    sampler = check_sampler(DDIM() if sampler is None else sampler)
    if not isinstance(sched, Schedule):
        raise ArgumentError("sched", f"expected a pifs_jax Schedule, got {type(sched).__name__}")
    check_floating(jnp.asarray(x_T), name="x_T")
    x_T = _float_state(x_T, "x_T")
    n = x_T.size
    opts = SpectrumOptions.build(options, option_fields).checked(n)
    k, full = opts.k, opts.k is None
    if mesh is not None and not full and opts.method != "exact":
        raise ArgumentError(
            "mesh", "sharded tangent vectors are supported for the full spectrum and the leading-k exact method"
        )
    devices = _tangent_constraint(mesh)[1]  # also validates the mesh
    if full and n % devices:
        raise ArgumentError(
            "mesh", f"the full spectrum's {n} tangent vectors must divide evenly over the mesh's {devices} devices"
        )
    grid = jnp.asarray(as_grid(grid, sched.T))
    if is_concrete(sched, grid):
        sampler.tables(sched, grid)  # validates the schedule (and the grid against it) eagerly
    concrete = is_concrete(x_T, sched, grid)
    if concrete:
        check_denoiser(eps_fn, x_T)
    key = jax.random.PRNGKey(0) if key is None else key
    return_history = bool(return_history)

    columns = n if k is None else k  # of the tangent block pushed along the chain
    if full or opts.method == "benettin":
        spectrum, finite = _compiled_chain_qr_core(
            sampler, eps_fn, sched, x_T, grid, key,
            k=k, graded=opts.method == "exact", sweeps=opts.sweeps, return_history=return_history,
            qr_every=opts.qr_every, mesh=mesh, axis_name=axis_name,
        )  # fmt: skip
    else:
        assert k is not None
        p = min(n, -(-(k + opts.oversample) // devices) * devices)
        if p % devices:
            raise ArgumentError(
                "mesh",
                f"the tangent block (k + oversample rounded up to {p}, capped at n = {n}) must divide "
                f"evenly over the mesh's {devices} devices",
            )
        tol = 10 * float(jnp.finfo(x_T.dtype).eps) if opts.tol is None else float(opts.tol)
        columns = p
        spectrum, finite = _compiled_leading_core(
            sampler, eps_fn, sched, x_T, grid, key,
            k=k, p=p, iters=opts.iters, tol=tol, sweeps=opts.sweeps, mesh=mesh, return_history=return_history,
            qr_every=opts.qr_every, axis_name=axis_name,
        )  # fmt: skip
    if check_finite and is_concrete(finite):
        _raise_nonfinite(finite, sched, grid, n=n, p=columns)
    return spectrum


def chain_lyapunov_spectra(
    eps_fn: EpsFn,
    sched: Schedule,
    x_T: Any,
    *,
    grid: Any = None,
    sampler: Sampler | None = None,
    options: SpectrumOptions | None = None,
    key: jax.Array | None = None,
    mesh: Any = None,
    check_finite: bool = True,
    **option_fields: Any,
) -> Spectrum:
    """The spectra of ``S`` trajectories in one compiled call: :func:`chain_lyapunov_spectrum` vmapped over ``x_T``.

    ``Lambda_j^(s) = (1/N) log sigma_j(J_N(x^(s)) ... J_1(x^(s)))`` for each starting point
    ``x_T^(s)``, the options as in :func:`chain_lyapunov_spectrum` (the same ``key`` for every
    trajectory). With ``mesh`` (e.g. :func:`pifs_jax.sharding.batch_mesh`), the ``S`` starting
    points are split over the mesh's ``"batch"`` axis (:func:`pifs_jax.sharding.shard_batch`, ``S``
    a multiple of the device count): each device runs the chains of its trajectories, no
    communication. The adaptive re-orthonormalisation (``qr_every="auto"``) and the choice of the
    final reading are decided once for the whole batch (:func:`pifs_jax.orthogonalization.batch_cond`
    over the ``vmap`` axis ``TRAJECTORY_AXIS``): a Gram probe or a QR runs, batched, only at the
    steps where some trajectory needs one, and each trajectory keeps its own decisions (a select),
    so every row equals its single-trajectory spectrum; ``S`` trajectories cost about ``S`` single
    ones, not the probe and the QR at every step. On CPU, without ``mesh``, full spectra of states
    of at least :data:`SEQUENTIAL_FULL_MIN_N` entries run one trajectory after another in the same
    compiled program (``lax.map``; batching their ``n x n`` products gains nothing there). No
    ``return_history``: use the single-trajectory call for convergence plots.

    Args:
      x_T: starting points, shape ``(S,) + sample_shape``, floating.
      mesh: a mesh with a ``"batch"`` axis, or ``None`` (one device).
      check_finite: raise :class:`pifs_jax.errors.NonFiniteError` naming the trajectories whose
        exponents are not finite (eager calls only).
      Others: as :func:`chain_lyapunov_spectrum`.

    Returns:
      :class:`Spectrum` with ``exponents`` of shape ``(S, k)`` (``(S, n)`` full), ``dimension``
      ``(S,)`` and, for leading-``k``, ``vectors`` ``(S, k) + sample_shape``.

    Raises:
      ArgumentError: naming ``x_T`` (no batch axis; a batch that does not divide over the mesh) or any
        argument :func:`chain_lyapunov_spectrum` names.
    """
    x_T = _float_state(x_T, "x_T")
    if x_T.ndim < 2:
        raise ArgumentError(
            "x_T",
            f"expected a batch of starting points (S,) + sample_shape, got shape {x_T.shape}; "
            "for one trajectory use chain_lyapunov_spectrum",
        )
    if not isinstance(sched, Schedule):
        raise ArgumentError("sched", f"expected a pifs_jax Schedule, got {type(sched).__name__}")
    grid = jnp.asarray(as_grid(grid, sched.T))
    sampler = check_sampler(DDIM() if sampler is None else sampler)
    opts = SpectrumOptions.build(options, option_fields).checked(int(np.prod(x_T.shape[1:])))
    if is_concrete(sched, grid):
        sampler.tables(sched, grid)  # validates the schedule (and the grid against it) eagerly
    if is_concrete(x_T):
        check_denoiser(eps_fn, x_T[0])
    # the option checks of the single-trajectory call, on shapes only (nothing computed)
    eqx.filter_eval_shape(_one_spectrum, sampler, eps_fn, sched, x_T[0], grid, key, opts)
    if mesh is not None:
        from pifs_jax.sharding import shard_batch  # lazy: pifs_jax.sharding documents this module

        x_T = shard_batch(x_T, mesh)
    spectra = _compiled_spectra(sampler, eps_fn, sched, x_T, grid, key, opts, mesh)
    if check_finite and is_concrete(spectra.exponents):
        bad = np.flatnonzero(~np.all(np.isfinite(np.asarray(spectra.exponents)), axis=-1))
        if bad.size:
            raise NonFiniteError(
                "eps_fn",
                f"non-finite exponents for {bad.size} of {x_T.shape[0]} trajectories "
                f"(first: index {int(bad[0])}); run chain_lyapunov_spectrum on x_T[{int(bad[0])}] "
                "to locate the step",
            )
    return spectra


#: The name of the ``vmap`` axis over the trajectories of :func:`chain_lyapunov_spectra`.
TRAJECTORY_AXIS = "trajectories"

#: On CPU, without a mesh, :func:`chain_lyapunov_spectra` runs full spectra of states with at least
#: this many entries one trajectory after another (``lax.map``) instead of batched (``vmap``): their
#: ``n x n`` products already occupy the cores, and the batched ones were slower. Measured
#: (2-core CPU, MLP denoiser of ``benchmarks/chain_spectrum.py``, ``n = 768``, 20 steps, 8
#: trajectories): batched 4.53 s, one after another 4.20 s, 8 separate calls 4.20 s.
SEQUENTIAL_FULL_MIN_N = 256


def _one_spectrum(sampler, eps_fn, sched, x, grid, key, options, axis_name=None) -> Spectrum:
    return _chain_spectrum(
        eps_fn, sched, x, grid=grid, sampler=sampler, options=options, key=key, return_history=False,
        check_finite=False, mesh=None, axis_name=axis_name,
    )  # fmt: skip


@eqx.filter_jit
def _compiled_spectra(sampler, eps_fn, sched, x_T, grid, key, options, mesh) -> Spectrum:
    """:func:`chain_lyapunov_spectra`'s program (``eps_fn``'s array leaves traced: one compilation per architecture).

    With ``mesh``, the trajectories and every per-trajectory output stay split over its ``"batch"``
    axis (sharding constraints), so each device runs its own chains.
    """
    batched = jax.vmap(
        lambda x: _one_spectrum(sampler, eps_fn, sched, x, grid, key, options, TRAJECTORY_AXIS),
        axis_name=TRAJECTORY_AXIS,
    )
    if mesh is None and options.k is None and x_T[0].size >= SEQUENTIAL_FULL_MIN_N and jax.default_backend() == "cpu":
        return jax.lax.map(lambda x: _one_spectrum(sampler, eps_fn, sched, x, grid, key, options), x_T)
    if mesh is None:
        return batched(x_T)
    from pifs_jax.sharding import BATCH_AXIS, sharding_constraint

    x_T = sharding_constraint(x_T, mesh, BATCH_AXIS)
    spectra = batched(x_T)
    return sharding_constraint(spectra, mesh, BATCH_AXIS)


def _check_qr_every(qr_every: Any) -> int | str:
    """``"auto"`` or a positive integer."""
    if isinstance(qr_every, str):
        if qr_every != "auto":
            raise ArgumentError("qr_every", f"expected 'auto' or a positive integer, got {qr_every!r}")
        return qr_every
    return check_positive_int(qr_every, name="qr_every")


def _columns_jvp(fn: Callable, x: jax.Array, q: jax.Array) -> jax.Array:
    """``(d fn / dx) Q`` for the columns of ``Q`` (one linearisation, the columns as JVPs)."""
    return jax.vmap(jax.linearize(fn, x)[1], in_axes=1, out_axes=1)(q)


def _columns_vjp(fn: Callable, x: jax.Array, u: jax.Array) -> jax.Array:
    """``(d fn / dx)^T U`` for the columns of ``U``."""
    pullback = jax.vjp(fn, x)[1]
    return jax.vmap(lambda c: pullback(c)[0], in_axes=1, out_axes=1)(u)


def _fold(r: jax.Array, log_diag: jax.Array, w: jax.Array, *, graded: bool) -> tuple[jax.Array, jax.Array]:
    """Multiply the accumulated product by one more triangular factor ``R`` (on the left)."""
    if graded:
        return graded_update(log_diag, w, r)
    return log_diag + jnp.log(safe_diagonal(r)), w


def _embedded_pass(chain: FlatChain, x: jax.Array, q: jax.Array, *, graded: bool, **pass_options: Any):
    """``(run, Q', l, W)``: the QR pass of ``P J_N ... J_1 E Q`` from the flat image ``x``.

    Without an embedding (the state is the image) this is :func:`pifs_jax.tangent_qr.qr_pass`
    itself. Otherwise ``E Q = Q_0 R_0`` before the pass and ``P Q_N = Q' R'`` after it, both
    folded into the accumulated product, so its singular values are those of ``d x_0 / d x_T``
    restricted to ``span Q``.
    """
    p = q.shape[1]
    start = None
    z0 = chain.z0 if chain.embed is None else chain.embed(x)
    if chain.embed is not None:
        q, r0 = qr_positive(_columns_jvp(chain.embed, x, q))
        w0 = jnp.eye(p, dtype=q.dtype) if graded else jnp.zeros((0, 0), q.dtype)
        start = _fold(r0, jnp.zeros((p,), q.dtype), w0, graded=graded)
    run = qr_pass(chain.step, z0, q, chain.inputs, graded=graded, start=start, **pass_options)
    q_out, log_diag, w = run.q, run.log_diag, run.w
    if chain.project is not None:
        q_out, r = qr_positive(_columns_jvp(chain.project, run.final, run.q))
        log_diag, w = _fold(r, log_diag, w, graded=graded)
    return run, q_out, log_diag, w


def _chain_qr_core(
    sampler, eps_fn, sched, x_T, grid, key, *, k, graded, sweeps, return_history, qr_every: int | str = 1, mesh=None,
    axis_name=None,
):  # fmt: skip
    """QR pass along the chain from ``Q_0 = I`` (full) or a random ``n x k`` block: exact or Benettin.

    With ``mesh`` (full spectrum), the ``n`` columns of ``Q`` are sharded over its devices and
    ``J Q`` is taken as their JVPs there; the QR and graded product run on the gathered block.
    """
    chain = flat_chain(sampler, eps_fn, sched, grid, x_T, jax.random.fold_in(key, 1))
    n_steps, n = grid.shape[0] - 1, x_T.size
    q0 = jnp.eye(n, dtype=x_T.dtype) if k is None else orthonormal_block(key, n, k, x_T.dtype)
    run, _, log_diag, w = _embedded_pass(
        chain, x_T.reshape(-1), q0, graded=graded,
        length=n_steps, full=k is None and chain.embed is None, qr_every=qr_every,
        constrain=_tangent_constraint(mesh)[0], axis_name=axis_name, final_basis=chain.project is not None,
    )  # fmt: skip
    if graded:
        exponents = graded_log_singular_values(log_diag, w, sweeps=sweeps, axis_name=axis_name) / n_steps
    else:
        exponents = -jnp.sort(-log_diag) / n_steps
    history = None
    if return_history:
        history = _running_mean(run.log_r)
        if qr_every != 1:  # exact only where the product has been factored
            history = jnp.where(run.due[:, None], history, jnp.nan)
        if k is not None:
            history = history[:, jnp.argsort(-run.log_diag)]
    spectrum = Spectrum(exponents, _dimension(exponents, leading=k is not None), history, None, "step", n_steps)
    return spectrum, run.finite


_compiled_chain_qr_core = eqx.filter_jit(_chain_qr_core)


def _raise_nonfinite(finite: Any, sched: Schedule, grid: Any, *, n: int, p: int) -> None:
    """Raise :class:`NonFiniteError` for the first step whose non-finite counts are not zero.

    ``finite`` holds per-step counts (state, ``n x p`` tangent block) in execution order.
    """
    g = np.asarray(grid)
    n_steps = g.shape[0] - 1
    blocks = (f"of the state's {n} values", f"of the {n} x {p} tangent block's values")
    for counts, what, block in zip(finite, ("state", "step Jacobian"), blocks, strict=True):
        bad = _first_nonzero(counts)
        if bad is not None:
            t, s = int(g[n_steps - bad]), int(g[n_steps - bad - 1])
            raise NonFiniteError(
                "eps_fn",
                f"a non-finite {what} first appears at sampling step {bad + 1} of {n_steps} (t = {t} -> s = {s}), "
                f"in {int(np.asarray(counts)[bad])} {block}; check the denoiser's output at t = {t} and the "
                f"schedule's end point (alpha_bar_T = {np.exp(float(sched.log_alpha_bar[-1])):.3g})",
            )


def _tangent_constraint(mesh: Any):
    """``(constrain, multiple)``: shard a tangent block over ``mesh`` (identity without a mesh)."""
    if mesh is None:
        return identity_constraint, 1
    from pifs_jax.sharding import tangent_block_constraint

    return tangent_block_constraint(mesh)


def _leading_core(
    sampler, eps_fn, sched, x_T, grid, key, *, k, p, iters, tol, sweeps, mesh, return_history, qr_every: int | str = 1,
    axis_name=None,
):  # fmt: skip
    """Subspace iteration on ``M^T M`` by step-wise QR passes, then a live graded forward pass.

    One iteration: forward, ``M V = Q_N (R_N ... R_1)`` (JVPs, QR per step); backward,
    ``M^T Q_N = Q'_0 (R'_1 ... R'_N)`` (VJPs, QR per step). ``M^T M V = Q'_0 T`` with ``T`` upper
    triangular, so ``V <- Q'_0`` is the subspace iteration step, and the nested spans make the
    columns converge to the right singular vectors in order. QR at every step keeps
    singular values far below ``eps sigma_1`` resolved (an explicit ``M v`` would bury them
    under ``eps sigma_1 |v_1 component|``); the Ritz values ``sigma(M V) = sigma(R_N ... R_1)``
    come from the graded product.

    Returns ``(Spectrum, finite flags of the live pass)``.
    """
    shape = x_T.shape
    n_steps = grid.shape[0] - 1
    noise_key = jax.random.fold_in(key, 1)
    constrain, multiple = _tangent_constraint(mesh)
    pass_options = dict(length=n_steps, full=False, constrain=constrain, qr_every=qr_every, axis_name=axis_name)

    def ritz(chain, x, v):
        run, q_out, log_diag, w = _embedded_pass(chain, x, v, graded=True, **pass_options)
        sv = graded_log_singular_values(log_diag, w, sweeps=sweeps, axis_name=axis_name)
        return sv[:k] / n_steps, run, q_out, log_diag, w

    # The iteration sees no tangents: gradients come from the final, live pass.
    frozen_x, frozen_sched = jax.lax.stop_gradient((x_T, sched))
    frozen = flat_chain(sampler, eps_fn, frozen_sched, grid, frozen_x, noise_key)
    frozen_flat = frozen_x.reshape(-1)

    def body(state):
        i, v, previous, _, history = state
        exponents, run, q_out, _, _ = ritz(frozen, frozen_flat, v)
        u = q_out if frozen.project is None else _columns_vjp(frozen.project, run.final, q_out)
        v_next = transposed_qr_pass(
            frozen.step, run.states, frozen.inputs, u, constrain=constrain, qr_every=qr_every, axis_name=axis_name
        )
        if frozen.embed is not None:
            v_next = qr_positive(_columns_vjp(frozen.embed, frozen_flat, v_next))[0]
        same = exponents == previous  # also equal infinities (exactly singular directions)
        change = jnp.max(jnp.where(same, 0.0, jnp.abs(exponents - previous)))
        return i + 1, v_next, exponents, change, history.at[i].set(exponents)

    def cond(state):
        i, _, _, change, _ = state
        return (i < iters) & (change > tol)

    dtype = x_T.dtype
    state = (
        jnp.asarray(0),
        orthonormal_block(key, x_T.size, p, dtype),
        jnp.full((k,), jnp.inf, dtype),
        jnp.asarray(jnp.inf, dtype),
        jnp.full((iters, k), jnp.nan, dtype),
    )
    _, v, _, _, history = jax.lax.while_loop(cond, body, state)
    v = jax.lax.stop_gradient(v)
    # Live Rayleigh-Ritz pass from the converged (frozen) subspace: the Ritz values are stationary
    # in the subspace, so their derivative is u_j^T dM v_j (Hellmann-Feynman).
    live = flat_chain(sampler, eps_fn, sched, grid, x_T, noise_key)
    exponents, run, _, log_diag, w = ritz(live, x_T.reshape(-1), v)
    # Ritz vectors (reporting only): rotate V by the right singular vectors of the rescaled
    # p x p factor; exact within a few nats of the top, where the rescaling resolves the factor.
    product = jax.lax.stop_gradient(jnp.exp(log_diag - jnp.max(log_diag))[:, None] * w)
    rotation = jnp.linalg.svd(product)[2][:k].T
    vectors = (v @ rotation).T.reshape((k, *shape))
    if k % multiple == 0:
        vectors = constrain(vectors, rows=True)
    history = history if return_history else None
    spectrum = Spectrum(exponents, _dimension(exponents, leading=True), history, vectors, "step", n_steps)
    return spectrum, run.finite


_compiled_leading_core = eqx.filter_jit(_leading_core)

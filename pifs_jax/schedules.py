"""Noise schedules as a pytree over the training grid ``t = 0..T``.

A :class:`Schedule` stores ``log alpha_bar`` (shape ``(T+1,)``, ``log alpha_bar[0] == 0``
exactly). Storing the logarithm, not ``alpha_bar`` itself, is what keeps float32 honest: near
``t = 0`` the quantity that matters is ``sigma_t^2 = 1 - alpha_bar_t = -expm1(log alpha_bar_t)``,
which a float32 ``alpha_bar`` of ``0.9999`` only knows to three digits, while a float32
``log alpha_bar = -1e-4`` knows it to seven. Every named schedule is built in that form with
cancellation-free expressions (``log1p``, ``expm1``, ``softplus``), so float32 and float64
agree to ~1e-6 relative on every derived quantity, down to logSNR -20.

Conventions (docs/theory.md section 1): ``alpha_bar[0] = 1``; ``alpha_bar[t] = prod_{s<=t}(1 - beta_s)``;
diffusers' ``alphas_cumprod[i]`` is our ``alpha_bar[i+1]``.

A schedule also stores its per-step gaps ``g_t = log alpha_bar_{t-1} - log alpha_bar_t =
-log(1 - beta_t) > 0``, each computed by its family in closed form. A 1000-step chain's DDIM
coefficients depend on these tiny differences (``a_t - 1 = expm1(g_t / 2)``); differencing two
stored float32 logarithms of size ~2 would leave them only ~1e-4 accurate, while the stored gaps
are exact to float32 rounding. Steps of a sub-sampled grid add the gaps they span (sums of
positive terms, no cancellation).

Continuous parameters of the named families (cosine offset ``s``, logSNR ``shift``) may be JAX
tracers, so ``jax.grad`` reaches them; ``T`` is static (it fixes the array shape).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from pifs_jax._validation import check_log_alpha_bar, check_positive_int, describe, is_concrete
from pifs_jax.errors import ArgumentError

__all__ = [
    "SCHEDULE_NAMES",
    "Schedule",
    "cosine",
    "from_alpha_bar",
    "from_alphas_cumprod",
    "from_betas",
    "from_edm_sigmas",
    "from_log_alpha_bar",
    "from_log_snr",
    "karras",
    "linear",
    "log_snr_decrements",
    "logsnr_cosine",
    "named_schedule",
    "resolution_shift",
    "safe_sqrt",
    "scaled_linear",
    "shift_log_snr",
    "sigmoid",
    "zero_terminal_snr",
]


def safe_sqrt(x: jax.Array) -> jax.Array:
    """``sqrt(x)`` for ``x >= 0`` whose gradient is finite (zero) at ``x = 0``.

    ``sigma_0 = sqrt(1 - alpha_bar_0) = 0`` appears in every chain's last step; plain ``sqrt``
    would give an infinite derivative there and poison gradients with NaN.

    Args:
      x: an array, any shape, floating dtype.

    Returns:
      ``sqrt(x)`` elementwise, of ``x``'s shape; 0 (with a zero gradient) where ``x <= 0``.
    """
    positive = x > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1.0)), 0.0)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Schedule:
    """A diffusion noise schedule on the training grid ``t = 0..T``.

    Attributes:
      log_alpha_bar: ``log alpha_bar_t``, shape ``(T+1,)``; entry 0 is exactly 0 and the entries
        strictly decrease.
      gaps: ``g_t = log alpha_bar_{t-1} - log alpha_bar_t = -log(1 - beta_t) > 0`` for ``t = 1..T``,
        shape ``(T,)``, computed without cancellation by the constructor (see the module notes).

    Both are pytree leaves, so a Schedule passes through ``jax.jit``/``jax.grad``/``jax.vmap``.

    Derived (all shape ``(T+1,)``): ``alpha_bar``, ``sigma2 = 1 - alpha_bar``, ``sigma``,
    ``log_snr = log(alpha_bar / sigma^2)`` (``+inf`` at ``t = 0``), ``betas`` (shape ``(T,)``,
    ``beta_t = 1 - alpha_bar_t / alpha_bar_{t-1}`` for ``t = 1..T``).

    Construct with :func:`from_alpha_bar`, :func:`from_betas`, the named families
    (:func:`linear`, :func:`cosine`, ...) or a learnable family; the constructors validate.
    """

    log_alpha_bar: jax.Array
    gaps: jax.Array

    @property
    def T(self) -> int:
        """Number of training steps (static, the array length minus one)."""
        return self.log_alpha_bar.shape[0] - 1

    @property
    def dtype(self):
        return self.log_alpha_bar.dtype

    @property
    def alpha_bar(self) -> jax.Array:
        """``alpha_bar_t``, shape ``(T+1,)``, ``alpha_bar[0] == 1``."""
        return jnp.exp(self.log_alpha_bar)

    @property
    def sigma2(self) -> jax.Array:
        """``sigma_t^2 = 1 - alpha_bar_t = -expm1(log alpha_bar_t)`` (no cancellation near t = 0)."""
        return -jnp.expm1(self.log_alpha_bar)

    @property
    def sigma(self) -> jax.Array:
        """``sigma_t = sqrt(1 - alpha_bar_t)``; ``sigma_0 = 0`` with a finite gradient."""
        return safe_sqrt(self.sigma2)

    @property
    def log_snr(self) -> jax.Array:
        """``logSNR_t = log alpha_bar_t - log(1 - alpha_bar_t)``; ``+inf`` at ``t = 0``."""
        sigma2 = self.sigma2
        positive = sigma2 > 0
        log_sigma2 = jnp.where(positive, jnp.log(jnp.where(positive, sigma2, 1.0)), -jnp.inf)
        return self.log_alpha_bar - log_sigma2

    @property
    def betas(self) -> jax.Array:
        """``beta_t = 1 - alpha_bar_t / alpha_bar_{t-1} = -expm1(-g_t)``, shape ``(T,)``."""
        return -jnp.expm1(-self.gaps)

    def astype(self, dtype) -> Schedule:
        """The same schedule with both leaves cast to ``dtype``."""
        return Schedule(jnp.asarray(self.log_alpha_bar, dtype=dtype), jnp.asarray(self.gaps, dtype=dtype))

    def __repr__(self) -> str:
        if not is_concrete(self.log_alpha_bar):
            return f"Schedule(T={self.T}, traced)"
        ab = np.exp(np.asarray(self.log_alpha_bar, dtype=np.float64))
        lsnr = np.log(ab[-1]) - np.log1p(-ab[-1])
        return (
            f"Schedule(T={self.T}, dtype={self.dtype}, alpha_bar_1={ab[1]:.6g}, "
            f"alpha_bar_T={ab[-1]:.6g}, logSNR_T={lsnr:.3f})"
        )


# ----------------------------------------------------------------------------- constructors


def _default_float(*values: Any):
    """The float dtype for ``values``: float64 only when x64 is on and an input asks for it."""
    dtypes = [
        jax.dtypes.canonicalize_dtype(v.dtype if hasattr(v, "dtype") else np.asarray(v).dtype)
        for v in values
        if v is not None and not isinstance(v, (int, float))
    ]
    return jnp.result_type(float, *dtypes)


def _assemble(log_alpha_bar_1_to_T: jax.Array, gaps: jax.Array) -> Schedule:
    """Prepend ``log alpha_bar_0 = 0`` and pair with the gaps (both in one dtype)."""
    dtype = jnp.result_type(log_alpha_bar_1_to_T, gaps)
    zero = jnp.zeros((1,), dtype)
    return Schedule(jnp.concatenate([zero, jnp.asarray(log_alpha_bar_1_to_T, dtype)]), jnp.asarray(gaps, dtype))


def from_log_alpha_bar(log_alpha_bar: Any, *, validate: bool = True, dtype=None) -> Schedule:
    """Schedule from ``log alpha_bar`` over ``t = 0..T`` (entry 0 must be exactly 0).

    The gaps are the differences of the input (taken in float64 when the input is concrete), so
    they are as accurate as the input allows.

    Args:
      log_alpha_bar: ``log alpha_bar_t`` for ``t = 0..T``, shape ``(T+1,)``, strictly decreasing.
      validate: check the input (skip only for values already checked, or traced ones).
      dtype: the float dtype of the schedule; default: the input's (float64 only when x64 is
        enabled).

    Returns:
      The :class:`Schedule`.

    Raises:
      ArgumentError: naming ``log_alpha_bar``, for a wrong shape, a first entry other than 0 or
        entries that do not strictly decrease (``validate=True``).
    """
    if validate:
        check_log_alpha_bar(log_alpha_bar, name="log_alpha_bar")
    dtype = dtype or _default_float(log_alpha_bar)
    if is_concrete(log_alpha_bar):
        arr = np.asarray(log_alpha_bar, dtype=np.float64)
        return _assemble(jnp.asarray(arr[1:], dtype), jnp.asarray(-np.diff(arr), dtype))
    arr = jnp.asarray(log_alpha_bar, dtype)
    return _assemble(arr[1:], -jnp.diff(arr))


def from_alpha_bar(alpha_bar: Any, *, dtype=None) -> Schedule:
    """Schedule from ``alpha_bar`` over ``t = 0..T``, ``alpha_bar[0] == 1``.

    The logarithm is taken in float64 when the input is concrete, so a float64 input loses
    nothing.

    Args:
      alpha_bar: ``alpha_bar_t`` for ``t = 0..T``, shape ``(T+1,)``.
      dtype: the float dtype of the schedule; default: float64 when x64 is enabled, else float32.

    Returns:
      The :class:`Schedule`.

    Raises:
      ArgumentError: (a ``ValueError``) naming ``alpha_bar``, for a wrong shape,
        ``alpha_bar[0] != 1``, values outside ``(0, 1)`` or a schedule that does not strictly
        decrease.
    """
    if is_concrete(alpha_bar):
        arr = np.asarray(alpha_bar, dtype=np.float64)
        if arr.ndim == 1 and np.any((arr <= 0) | (arr > 1) | ~np.isfinite(arr)):
            raise ArgumentError(
                "alpha_bar",
                f"every value must lie in (0, 1] (alpha_bar[0] = 1, later values in (0, 1)), got {describe(arr)}",
            )
        with np.errstate(divide="ignore", invalid="ignore"):
            log_ab = np.log(arr)
        check_log_alpha_bar(log_ab, name="alpha_bar")
        return from_log_alpha_bar(log_ab, validate=False, dtype=dtype or _default_float())
    return from_log_alpha_bar(jnp.log(jnp.asarray(alpha_bar, dtype=dtype)), validate=False)


def from_betas(betas: Any, *, dtype=None) -> Schedule:
    """Schedule from ``beta_1..beta_T`` (shape ``(T,)``): ``log alpha_bar_t = sum_{s<=t} log1p(-beta_s)``.

    Betas must lie in ``(0, 1)``; a terminal beta of exactly 1 (zero terminal SNR) is rejected
    because the eps-parameterised DDIM step cannot start from ``alpha_bar_T = 0``; use
    :func:`zero_terminal_snr`, which keeps a finite terminal logSNR.

    Args:
      betas: ``beta_1..beta_T``, shape ``(T,)``, each in ``(0, 1)``.
      dtype: the float dtype of the schedule; default: float64 when x64 is enabled, else float32.

    Returns:
      The :class:`Schedule`, its gaps ``-log1p(-beta_t)`` exact.

    Raises:
      ArgumentError: naming ``betas``, for a wrong shape or a beta outside ``(0, 1)``.
    """
    if is_concrete(betas):
        arr = np.asarray(betas, dtype=np.float64)
        if arr.ndim != 1 or arr.shape[0] < 1:
            raise ArgumentError("betas", f"expected a 1-D array of shape (T,), got shape {arr.shape}")
        if np.any(~np.isfinite(arr) | (arr <= 0) | (arr >= 1)):
            bad = int(np.flatnonzero(~np.isfinite(arr) | (arr <= 0) | (arr >= 1))[0])
            raise ArgumentError(
                "betas",
                f"every beta must lie in (0, 1), got betas[{bad}] = {arr[bad]!r} "
                f"(beta = 1 means alpha_bar_T = 0; use zero_terminal_snr for that)",
            )
        gaps = -np.log1p(-arr)
        dtype = dtype or _default_float()
        return _assemble(jnp.asarray(-np.cumsum(gaps), dtype), jnp.asarray(gaps, dtype))
    gaps = -jnp.log1p(-jnp.asarray(betas, dtype=dtype))
    return _assemble(-jnp.cumsum(gaps), gaps)


def from_alphas_cumprod(alphas_cumprod: Any, *, dtype=None) -> Schedule:
    """Schedule from diffusers' ``alphas_cumprod`` (shape ``(T,)``, index shifted by one).

    diffusers' ``alphas_cumprod[i]`` is this package's ``alpha_bar[i+1]``; the clean-data entry
    ``alpha_bar[0] = 1`` is prepended.

    Args:
      alphas_cumprod: diffusers' cumulative products, shape ``(T,)``, each in ``(0, 1)``.
      dtype: the float dtype of the schedule; default: float64 when x64 is enabled, else float32.

    Returns:
      The :class:`Schedule` over ``t = 0..T``.

    Raises:
      ArgumentError: naming ``alphas_cumprod``, for a wrong shape or values outside ``(0, 1)``.
    """
    if is_concrete(alphas_cumprod):
        arr = np.asarray(alphas_cumprod, dtype=np.float64)
        if arr.ndim != 1:
            raise ArgumentError("alphas_cumprod", f"expected a 1-D array of shape (T,), got shape {arr.shape}")
        if np.any((arr <= 0) | (arr >= 1) | ~np.isfinite(arr)):
            raise ArgumentError("alphas_cumprod", f"every value must lie in (0, 1), got {describe(arr)}")
        return from_alpha_bar(np.concatenate([[1.0], arr]), dtype=dtype)
    arr = jnp.asarray(alphas_cumprod, dtype=dtype)
    return from_log_alpha_bar(jnp.concatenate([jnp.zeros((1,), arr.dtype), jnp.log(arr)]), validate=False)


def _log_alpha_bar_from_log_snr(log_snr: jax.Array) -> jax.Array:
    """``log alpha_bar = log sigmoid(logSNR) = -softplus(-logSNR)`` (exact in float32)."""
    return -jax.nn.softplus(-log_snr)


def _gaps_from_log_snr(log_snr: jax.Array, decrements: jax.Array) -> jax.Array:
    """Gaps from logSNR and its decrements ``d_t = logSNR_{t-1} - logSNR_t`` (``t >= 2``).

    ``g_1 = -log alpha_bar_1``; for ``t >= 2``, ``alpha_bar_t / alpha_bar_{t-1} =
    1 + sigmoid(-logSNR_t) expm1(-d_t)``, so ``g_t = -log1p(sigmoid(-logSNR_t) expm1(-d_t))`` for
    small steps and ``softplus(-logSNR_t) - softplus(-logSNR_{t-1})`` for large ones (ratio < 1/2).
    """
    first = jax.nn.softplus(-log_snr[:1])
    step = jax.nn.sigmoid(-log_snr[1:]) * jnp.expm1(-decrements)
    small = step > -0.5
    rest_small = -jnp.log1p(jnp.where(small, step, 0.0))
    rest_large = jax.nn.softplus(-log_snr[1:]) - jax.nn.softplus(-log_snr[:-1])
    return jnp.concatenate([first, jnp.where(small, rest_small, rest_large)])


def log_snr_decrements(sched: Schedule) -> jax.Array:
    """``d_t = logSNR_{t-1} - logSNR_t`` for ``t = 2..T`` (shape ``(T-1,)``), from the gaps.

    ``d_t = g_t + log1p(alpha_bar_{t-1} (-expm1(-g_t)) / sigma_{t-1}^2)``: no difference of two
    large logSNR values is formed, so a shift of all logSNRs leaves ``d`` exact.

    Args:
      sched: the schedule.

    Returns:
      The positive decrements ``d_t``, shape ``(T-1,)``.
    """
    g = sched.gaps[1:]
    ab_prev = jnp.exp(sched.log_alpha_bar[1:-1])
    sigma2_prev = -jnp.expm1(sched.log_alpha_bar[1:-1])
    return g + jnp.log1p(ab_prev * -jnp.expm1(-g) / sigma2_prev)


def from_log_snr(log_snr: Any, *, decrements: Any | None = None, validate: bool = True) -> Schedule:
    """Schedule from ``logSNR_1..logSNR_T`` (shape ``(T,)``, strictly decreasing, finite).

    ``alpha_bar_t = sigmoid(logSNR_t)``, i.e. ``log alpha_bar_t = -softplus(-logSNR_t)``;
    ``alpha_bar_0 = 1`` is prepended. This is the natural entry point for continuous-time
    (VDM-style) parameterisations.

    Args:
      log_snr: shape ``(T,)``.
      decrements: optional ``d_t = logSNR_{t-1} - logSNR_t`` for ``t = 2..T`` (shape ``(T-1,)``)
        when the family knows them in closed form; otherwise they are differences of ``log_snr``
        (taken in float64 when concrete), as accurate as the input.
      validate: check a concrete ``log_snr`` (skip only for values already checked).

    Returns:
      The :class:`Schedule` over ``t = 0..T``.

    Raises:
      ArgumentError: naming ``log_snr`` (``validate=True``, concrete input), for a wrong shape,
        a value that is not finite or values that do not strictly decrease.
    """
    dtype = _default_float(log_snr)
    if validate and is_concrete(log_snr):
        arr = np.asarray(log_snr, dtype=np.float64)
        if arr.ndim != 1 or arr.shape[0] < 1:
            raise ArgumentError("log_snr", f"expected a 1-D array of shape (T,), got shape {arr.shape}")
        if not np.all(np.isfinite(arr)):
            raise ArgumentError("log_snr", f"values must be finite for t = 1..T, got {describe(arr)}")
        if np.any(np.diff(arr) >= 0):
            bad = int(np.flatnonzero(np.diff(arr) >= 0)[0]) + 1
            raise ArgumentError(
                "log_snr",
                f"must strictly decrease in t, but logSNR[{bad + 1}] = {arr[bad]:.6g} >= "
                f"logSNR[{bad}] = {arr[bad - 1]:.6g} (entries are t = 1..T)",
            )
    if decrements is None:
        if is_concrete(log_snr):
            decrements = jnp.asarray(-np.diff(np.asarray(log_snr, dtype=np.float64)), dtype)
        else:
            decrements = -jnp.diff(jnp.asarray(log_snr, dtype))
    log_snr = jnp.asarray(log_snr, dtype)
    decrements = jnp.asarray(decrements, dtype)
    return _assemble(_log_alpha_bar_from_log_snr(log_snr), _gaps_from_log_snr(log_snr, decrements))


def from_edm_sigmas(sigmas: Any) -> Schedule:
    """Schedule from EDM noise levels ``sigma_EDM,1 < ... < sigma_EDM,T`` (shape ``(T,)``).

    ``sigma_EDM = sqrt((1 - alpha_bar) / alpha_bar)`` so ``alpha_bar = 1 / (1 + sigma_EDM^2)``,
    i.e. ``log alpha_bar = -log1p(sigma_EDM^2)`` and ``logSNR = -2 log sigma_EDM``.

    Args:
      sigmas: EDM noise levels for ``t = 1..T``, shape ``(T,)``, finite, positive and strictly
        increasing.

    Returns:
      The :class:`Schedule` over ``t = 0..T``.

    Raises:
      ArgumentError: naming ``sigmas``, for a wrong shape, a level that is not finite and
        positive, or levels that do not strictly increase.
    """
    if is_concrete(sigmas):
        arr = np.asarray(sigmas, dtype=np.float64)
        if arr.ndim != 1 or arr.shape[0] < 1:
            raise ArgumentError("sigmas", f"expected a 1-D array of shape (T,), got shape {arr.shape}")
        if np.any(~np.isfinite(arr) | (arr <= 0)):
            raise ArgumentError("sigmas", f"EDM noise levels must be finite and > 0, got {describe(arr)}")
        if np.any(np.diff(arr) <= 0):
            raise ArgumentError(
                "sigmas",
                f"must strictly increase with t (t = 1..T), got {describe(arr)}; pass Karras grids in ascending order",
            )
        dtype = _default_float()
        return from_log_snr(
            jnp.asarray(-2.0 * np.log(arr), dtype),
            decrements=jnp.asarray(2.0 * np.log(arr[1:] / arr[:-1]), dtype),
            validate=False,
        )
    sigmas = jnp.asarray(sigmas)
    return from_log_snr(-2.0 * jnp.log(sigmas), decrements=2.0 * jnp.log(sigmas[1:] / sigmas[:-1]), validate=False)


# ----------------------------------------------------------------------------- named families


def linear(T: int = 1000, *, beta_start: float = 1e-4, beta_end: float = 0.02, dtype=None) -> Schedule:
    """DDPM linear schedule: ``beta = linspace(beta_start, beta_end, T)`` (Ho et al. 2020).

    Built in float64 and cast, so float32 schedules are correctly rounded.

    Args:
      T: number of training steps.
      beta_start: ``beta_1``.
      beta_end: ``beta_T``.
      dtype: the float dtype of the schedule; default: float64 when x64 is enabled, else float32.

    Returns:
      The :class:`Schedule` over ``t = 0..T``.
    """
    T = check_positive_int(T, name="T")
    return from_betas(np.linspace(beta_start, beta_end, T, dtype=np.float64), dtype=dtype)


def scaled_linear(T: int = 1000, *, beta_start: float = 0.00085, beta_end: float = 0.012, dtype=None) -> Schedule:
    """Stable Diffusion schedule: ``beta = linspace(sqrt(beta_start), sqrt(beta_end), T)^2``.

    Args:
      T: number of training steps.
      beta_start: ``beta_1``.
      beta_end: ``beta_T``.
      dtype: the float dtype of the schedule; default: float64 when x64 is enabled, else float32.

    Returns:
      The :class:`Schedule` over ``t = 0..T``.
    """
    T = check_positive_int(T, name="T")
    betas = np.linspace(math.sqrt(beta_start), math.sqrt(beta_end), T, dtype=np.float64) ** 2
    return from_betas(betas, dtype=dtype)


def _log_cos_squared(u: jax.Array, one_minus_u: jax.Array, s: jax.Array) -> jax.Array:
    """``log cos^2(phi)`` with ``phi = (u + s)/(1 + s) * pi/2``, accurate over ``u in [0, 1]``.

    Small ``phi``: ``log cos phi = log1p(-2 sin^2(phi/2))``; large ``phi``:
    ``cos phi = sin(pi/2 (1 - u)/(1 + s))`` with ``1 - u`` passed in exactly (``(T - t)/T``).
    Returns ``-inf`` at ``u = 1`` with a finite gradient.
    """
    half_pi = jnp.pi / 2
    phi = (u + s) / (1 + s) * half_pi
    complement = one_minus_u / (1 + s) * half_pi  # pi/2 - phi, computed without cancellation
    small = phi < jnp.pi / 4
    log_cos_small = jnp.log1p(-2 * jnp.sin(jnp.where(small, phi, 0.0) / 2) ** 2)
    safe_complement = jnp.where(complement > 0, complement, 1.0)
    log_cos_large = jnp.where(complement > 0, jnp.log(jnp.sin(safe_complement)), -jnp.inf)
    return 2 * jnp.where(small, log_cos_small, log_cos_large)


def cosine(T: int = 1000, *, s: Any = 0.008, max_beta: float = 0.999, dtype=None) -> Schedule:
    """Cosine schedule (Nichol & Dhariwal 2021) with offset ``s`` and beta clipping.

    ``alpha_bar(t) = f(t/T) / f(0)``, ``f(u) = cos^2(phi_u)``, ``phi_u = (u + s)/(1 + s) * pi/2``, then
    ``beta_t = min(1 - f(t/T)/f((t-1)/T), max_beta)`` and ``alpha_bar = cumprod(1 - beta)``.

    Numerics: with ``psi = pi/2 - phi`` (formed from the integer ``T - t``) and
    ``delta = pi / (2 T (1 + s))``, the ratio ``cos phi_t / cos phi_{t-1} = cos delta - sin delta / tan psi_{t-1}``
    gives the gap ``g_t = -2 log`` of it via ``log1p`` (or via ``log sin psi_t - log sin psi_{t-1}``
    where the ratio is small). Cosine betas increase with ``t``, so clipping acts on a suffix:
    with ``t_c`` the first clipped step, ``log alpha_bar_t = log alpha_bar_{t_c-1} - (t - t_c + 1) g_max``,
    ``g_max = -log(1 - max_beta)`` (exact, no cumulative sum). ``s`` may be a JAX tracer.

    Args:
      T: number of training steps.
      s: the offset ``s >= 0``; may be a JAX tracer (differentiable).
      max_beta: the clipping value of ``beta_t``, in ``(0, 1)``.
      dtype: the float dtype of the schedule; default: that of ``s`` (float64 only when x64 is
        enabled).

    Returns:
      The :class:`Schedule` over ``t = 0..T``.

    Raises:
      ArgumentError: naming ``T`` (not an integer >= 1), ``s`` (a concrete offset that is not
        finite and >= 0) or ``max_beta`` (outside ``(0, 1)``).

    Example:
      >>> sched = cosine(1000, s=0.008)   # diffusers' squaredcos_cap_v2
    """
    T = check_positive_int(T, name="T")
    if is_concrete(s) and not (np.isfinite(float(s)) and float(s) >= 0):
        raise ArgumentError("s", f"the cosine offset must be finite and >= 0, got {float(s)!r}")
    if not 0 < max_beta < 1:
        raise ArgumentError("max_beta", f"must lie in (0, 1), got {max_beta!r}")
    dtype = jnp.dtype(dtype or _default_float(s))
    return _assemble(*_cosine_arrays(jnp.asarray(s, dtype=dtype), T=T, max_beta=max_beta, dtype=dtype))


@functools.partial(jax.jit, static_argnames=("T", "max_beta", "dtype"))
def _cosine_arrays(s: jax.Array, *, T: int, max_beta: float, dtype) -> tuple[jax.Array, jax.Array]:
    """``(log alpha_bar_1..T, gaps)`` of :func:`cosine`; compiled once per ``(T, max_beta, dtype)``."""
    t = jnp.arange(T + 1)
    u = t.astype(dtype) / T
    remaining = (T - t).astype(dtype) / T
    log_f = _log_cos_squared(u, remaining, s)
    raw_log_ab = log_f - log_f[0]
    # per-step gaps from the ratio of cosines
    delta = jnp.pi / 2 / (T * (1 + s))
    psi_prev = remaining[:-1] / (1 + s) * (jnp.pi / 2)  # psi_{t-1} > 0 for t = 1..T
    phi_prev = (u[:-1] + s) / (1 + s) * (jnp.pi / 2)
    # cot(psi) = tan(phi): take whichever angle is below pi/4, where tan is well conditioned
    cot_psi_prev = jnp.where(phi_prev < jnp.pi / 4, jnp.tan(phi_prev), 1 / jnp.tan(psi_prev))
    ratio_minus_1 = -2 * jnp.sin(delta / 2) ** 2 - jnp.sin(delta) * cot_psi_prev
    near_one = ratio_minus_1 > -0.5
    gap_near_one = -2 * jnp.log1p(jnp.where(near_one, ratio_minus_1, 0.0))
    gap_far = -jnp.diff(log_f)  # large gaps: log sin psi_t - log sin psi_{t-1} has no cancellation
    raw_gaps = jnp.where(near_one, gap_near_one, gap_far)
    max_gap = jnp.asarray(-math.log1p(-max_beta), dtype)
    clipped = raw_gaps > max_gap
    gaps = jnp.where(clipped, max_gap, raw_gaps)
    last_unclipped = jax.lax.cummax(jnp.where(jnp.concatenate([jnp.zeros((1,), bool), clipped]), 0, t))
    log_ab = raw_log_ab[last_unclipped] - (t - last_unclipped).astype(dtype) * max_gap
    return log_ab[1:], gaps


def _log_sigmoid_difference(a: jax.Array, b: jax.Array, b_minus_a: jax.Array) -> jax.Array:
    """``log(sigmoid(a) - sigmoid(b))`` for ``a > b``, without cancellation.

    ``sigmoid(a) - sigmoid(b) = e^a (1 - e^{b-a}) / ((1 + e^a)(1 + e^b))``; ``b - a`` is passed in
    separately because the caller can form it exactly (from integer timesteps).
    """
    gap = jnp.minimum(b_minus_a, -jnp.finfo(jnp.result_type(a)).tiny)
    return a + jnp.log(-jnp.expm1(gap)) - jax.nn.softplus(a) - jax.nn.softplus(b)


def sigmoid(
    T: int = 1000,
    *,
    start: float = -3.0,
    end: float = 3.0,
    tau: float = 1.0,
    clip_min: float = 1e-9,
    dtype=None,
) -> Schedule:
    """Sigmoid schedule (Chen 2023, "On the importance of noise scheduling").

    ``alpha_bar(u) = (sigmoid(end/tau) - sigmoid(x_u)) / (sigmoid(end/tau) - sigmoid(start/tau))``,
    ``x_u = (u (end - start) + start)/tau``, ``u = t/T``, clipped below at ``clip_min``.
    ``1 - alpha_bar`` and the gaps ``-log(alpha_bar_t / alpha_bar_{t-1})`` are formed from
    log-differences of sigmoids, so they are exact near ``t = 0`` and for tiny steps.

    Args:
      T: number of training steps.
      start: the sigmoid argument at ``u = 0`` (before division by ``tau``).
      end: the sigmoid argument at ``u = 1``; must exceed ``start``.
      tau: the temperature, ``> 0``.
      clip_min: the floor of ``alpha_bar``, in ``(0, 1)``.
      dtype: the float dtype of the schedule; default: float64 when x64 is enabled, else float32.

    Returns:
      The :class:`Schedule` over ``t = 0..T``.

    Raises:
      ArgumentError: naming ``T`` (not an integer >= 1), ``end`` (not above ``start``), ``tau``
        (not ``> 0``) or ``clip_min`` (outside ``(0, 1)``).
    """
    T = check_positive_int(T, name="T")
    if not end > start:
        raise ArgumentError("end", f"must exceed start, got start={start!r}, end={end!r}")
    if not tau > 0:
        raise ArgumentError("tau", f"must be > 0, got {tau!r}")
    if not 0 < clip_min < 1:
        raise ArgumentError("clip_min", f"must lie in (0, 1), got {clip_min!r}")
    dtype = dtype or _default_float(start, end, tau)
    t = jnp.arange(0, T + 1)
    scale = (end - start) / (T * tau)
    x = start / tau + scale * t.astype(dtype)  # x[0] = start/tau
    to_end = -scale * (T - t).astype(dtype)  # x_t - hi, exact
    from_start = -scale * t.astype(dtype)  # lo - x_t, exact
    lo = x[0]
    hi = jnp.asarray(end / tau, dtype)
    at_end = t == T
    x_safe = jnp.where(at_end, lo, x)
    to_end_safe = jnp.where(at_end, -1.0, to_end)
    log_norm = _log_sigmoid_difference(hi, lo, jnp.asarray(-(end - start) / tau, dtype))
    log_one_minus = _log_sigmoid_difference(x_safe, lo, from_start) - log_norm  # log(1 - alpha_bar)
    log_ab_direct = _log_sigmoid_difference(hi, x_safe, to_end_safe) - log_norm
    use_log1p = log_one_minus < math.log(0.5)
    raw_log_ab = jnp.where(use_log1p, jnp.log1p(-jnp.exp(jnp.where(use_log1p, log_one_minus, -1.0))), log_ab_direct)
    raw_log_ab = jnp.where(at_end, -jnp.inf, raw_log_ab)[1:]
    # gaps: alpha_bar_t / alpha_bar_{t-1} = 1 - exp(ld(x_t, x_{t-1}) - ld(hi, x_{t-1}))
    prev, cur = x_safe[:-1], x_safe[1:]
    ld_prev = _log_sigmoid_difference(hi, prev, to_end_safe[:-1])
    log_drop = _log_sigmoid_difference(cur, prev, jnp.full_like(cur, -scale)) - ld_prev
    small = log_drop < math.log(0.5)
    gap_small = -jnp.log1p(-jnp.exp(jnp.where(small, log_drop, -1.0)))
    gap_large = ld_prev - _log_sigmoid_difference(hi, cur, to_end_safe[1:])
    raw_gaps = jnp.where(small, gap_small, gap_large)
    log_floor = jnp.asarray(math.log(clip_min), dtype)
    clipped = raw_log_ab < log_floor
    log_ab = jnp.where(clipped, log_floor, raw_log_ab)
    log_ab_prev = jnp.concatenate([jnp.zeros((1,), dtype), log_ab[:-1]])
    gaps = jnp.where(clipped, log_ab_prev - log_ab, raw_gaps)
    return _assemble(log_ab, gaps)


def logsnr_cosine(T: int = 1000, *, logsnr_min: float = -15.0, logsnr_max: float = 15.0, dtype=None) -> Schedule:
    """logSNR-cosine schedule (Hoogeboom et al. 2023, simple diffusion).

    ``logSNR(u) = -2 log tan(a u + b)``, ``b = arctan(exp(-logsnr_max/2))``,
    ``a = arctan(exp(-logsnr_min/2)) - b``, for ``u = t/T``, ``t = 1..T``; ``alpha_bar_0 = 1``.
    Evaluated as ``2 log tan(c_t)`` with ``c_t = pi/2 - (a u + b) = arctan(exp(logsnr_min/2)) +
    a (T - t)/T`` where that is small, and the decrements as
    ``d_t = 2 log1p(sin(a/T) / (sin(x_{t-1}) sin(c_t)))`` (``tan`` ratio identity), so the
    low-SNR end stays exact in float32. Combine with :func:`shift_log_snr` and
    :func:`resolution_shift` for the shifted variant.

    Args:
      T: number of training steps.
      logsnr_min: ``logSNR`` at ``u = 1`` (the noisy end).
      logsnr_max: ``logSNR`` at ``u = 0`` (the clean end); must exceed ``logsnr_min``.
      dtype: the float dtype of the schedule; default: float64 when x64 is enabled, else float32.

    Returns:
      The :class:`Schedule` over ``t = 0..T``.

    Raises:
      ArgumentError: naming ``T`` (not an integer >= 1) or ``logsnr_max`` (not above
        ``logsnr_min``).
    """
    T = check_positive_int(T, name="T")
    if not logsnr_max > logsnr_min:
        raise ArgumentError(
            "logsnr_max", f"must exceed logsnr_min, got logsnr_min={logsnr_min!r}, logsnr_max={logsnr_max!r}"
        )
    dtype = dtype or _default_float(logsnr_min, logsnr_max)
    b = math.atan(math.exp(-logsnr_max / 2))
    c_end = math.atan(math.exp(logsnr_min / 2))
    a = math.pi / 2 - c_end - b
    t = jnp.arange(0, T + 1)
    x = b + a * t.astype(dtype) / T  # x_t = a u + b
    c = c_end + a * (T - t).astype(dtype) / T  # pi/2 - x_t
    low_snr = c < jnp.pi / 4
    log_snr = jnp.where(low_snr, 2 * jnp.log(jnp.tan(c)), -2 * jnp.log(jnp.tan(x)))[1:]
    decrements = 2 * jnp.log1p(math.sin(a / T) / (jnp.sin(x[1:-1]) * jnp.sin(c[2:])))
    return from_log_snr(log_snr, decrements=decrements, validate=False)


def karras(T: int = 1000, *, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> Schedule:
    """EDM / Karras et al. 2022 noise levels on ``T`` points, as a Schedule.

    ``sigma_i = (sigma_min^(1/rho) + (i-1)/(T-1) (sigma_max^(1/rho) - sigma_min^(1/rho)))^rho``
    for ``i = 1..T`` (ascending), mapped by ``alpha_bar = 1 / (1 + sigma^2)``.

    Args:
      T: number of training steps (``>= 2``).
      sigma_min: the smallest EDM noise level, ``sigma_1``.
      sigma_max: the largest EDM noise level, ``sigma_T``.
      rho: the exponent of the ramp.

    Returns:
      The :class:`Schedule` over ``t = 0..T`` (float64 when x64 is enabled, else float32).

    Raises:
      ArgumentError: naming ``T`` (not an integer >= 2) or ``sigma_min, sigma_max`` (unless
        ``0 < sigma_min < sigma_max``).
    """
    T = check_positive_int(T, name="T", minimum=2)
    if not 0 < sigma_min < sigma_max:
        raise ArgumentError("sigma_min, sigma_max", f"need 0 < sigma_min < sigma_max, got {sigma_min!r}, {sigma_max!r}")
    ramp = np.linspace(0.0, 1.0, T)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return from_edm_sigmas((lo + ramp * (hi - lo)) ** rho)


# ----------------------------------------------------------------------------- transformations


def shift_log_snr(sched: Schedule, shift: Any) -> Schedule:
    """Shift every logSNR by ``shift``: ``logSNR'_t = logSNR_t + shift`` for ``t >= 1``.

    ``alpha_bar_0 = 1`` is kept. ``shift`` may be a tracer. The logSNR decrements do not change
    under a shift (:func:`log_snr_decrements`), so the new gaps are as exact as the old. Scaling
    all data variances by ``c`` is compensated by ``shift = -log c`` (docs/theory.md section 9);
    simple diffusion's resolution rule is :func:`resolution_shift`.

    Args:
      sched: the schedule.
      shift: the logSNR offset (a scalar, finite; may be a tracer).

    Returns:
      The shifted :class:`Schedule` over the same ``t = 0..T``.

    Raises:
      ArgumentError: naming ``shift``, for a concrete value that is not finite.
    """
    if is_concrete(shift) and not np.all(np.isfinite(np.asarray(shift))):
        raise ArgumentError("shift", f"must be finite, got {shift!r}")
    return from_log_snr(sched.log_snr[1:] + shift, decrements=log_snr_decrements(sched), validate=False)


def resolution_shift(resolution: float, *, base_resolution: float = 64.0) -> float:
    """Simple diffusion's logSNR shift for resolution ``d``: ``2 log(base_resolution / d)``.

    An image at ``d x d`` pixels relative to the ``64 x 64`` reference gets its logSNR shifted by
    this amount (negative for ``d > 64``: more noise at higher resolution).

    Args:
      resolution: the image side ``d`` in pixels, ``> 0``.
      base_resolution: the reference side, ``> 0``.

    Returns:
      The shift, for :func:`shift_log_snr`.

    Raises:
      ArgumentError: naming ``resolution``, unless both ``resolution`` and ``base_resolution``
        are ``> 0``.
    """
    if not (resolution > 0 and base_resolution > 0):
        raise ArgumentError(
            "resolution", f"must be > 0 (and base_resolution > 0), got {resolution!r}, {base_resolution!r}"
        )
    return 2.0 * math.log(base_resolution / resolution)


def zero_terminal_snr(sched: Schedule, *, terminal_log_snr: float = -20.0) -> Schedule:
    """Zero-terminal-SNR rescaling (Lin et al. 2023), with a finite terminal logSNR.

    On ``sqrt(alpha_bar_t)``, ``t = 1..T``: shift so the last value is 0 and scale so the first is
    unchanged, ``r_t = (sqrt(alpha_bar_t) - last) * first / (first - last)``. The exact rescale
    makes ``alpha_bar_T = 0``, from which the eps-parameterised DDIM step cannot start
    (``a_T = sqrt(alpha_bar_s / alpha_bar_T) = inf``), so the terminal value is set to
    ``logSNR_T = terminal_log_snr`` (default -20, ``alpha_bar_T ~ 2.1e-9``) instead.

    Numerics: with ``R_t = log alpha_bar_t - log alpha_bar_T`` (a sum of gaps),
    ``r_t = sqrt(alpha_bar_t) expm1(-R_t/2) / expm1(-R_1/2)``, so
    ``log r_t^2 = log alpha_bar_t + 2 log(A_t / A_1)``, ``A_t = -expm1(-R_t/2)``, and the new gaps are
    ``g_t + 2 log1p(exp(-R_t/2) (-expm1(-g_t/2)) / A_t)``: every term is a sum of positive numbers or
    an ``expm1``/``log1p``, exact at both ends of the chain.

    Args:
      sched: the schedule to rescale (``T >= 3``).
      terminal_log_snr: ``logSNR_T`` of the result, in place of the exact rescale's ``-inf``.

    Returns:
      The rescaled :class:`Schedule` over the same ``t = 0..T``.

    Raises:
      ArgumentError: naming ``sched`` (``T < 3``) or ``terminal_log_snr`` (a value that would not
        put ``alpha_bar_T`` below the rescaled ``alpha_bar_{T-1}``, breaking monotonicity).
    """
    if sched.T < 3:
        raise ArgumentError("sched", f"zero_terminal_snr needs T >= 3, got T = {sched.T}")
    g = sched.gaps
    log_ab = sched.log_alpha_bar[1:]
    dtype = g.dtype
    tail = jnp.concatenate([jnp.cumsum(g[::-1])[::-1][1:], jnp.zeros((1,), dtype)])  # R_t, t = 1..T
    head = jnp.concatenate([jnp.zeros((1,), dtype), jnp.cumsum(g[1:])])  # R_1 - R_t = sum_{2..t} g
    A = -jnp.expm1(-tail / 2)
    A_1 = A[0]
    # log(A_t / A_1) = log1p(-exp(-R_t/2) (-expm1(-head/2)) / A_1), or log A_t - log A_1 when small
    arg = -jnp.exp(-tail / 2) * -jnp.expm1(-head / 2) / A_1
    near = arg > -0.5
    safe_A = jnp.where(A > 0, A, 1.0)
    log_ratio = jnp.where(near, jnp.log1p(jnp.where(near, arg, 0.0)), jnp.log(safe_A) - jnp.log(A_1))
    log_ab_new = (log_ab + 2 * log_ratio)[:-1]  # t = 1..T-1
    tail_mid = tail[1:-1]  # R_t for t = 2..T-1
    gaps_mid = g[1:-1] + 2 * jnp.log1p(jnp.exp(-tail_mid / 2) * -jnp.expm1(-g[1:-1] / 2) / A[1:-1])
    terminal = _log_alpha_bar_from_log_snr(jnp.asarray(terminal_log_snr, dtype))
    if is_concrete(log_ab_new) and float(terminal) >= float(log_ab_new[-1]):
        raise ArgumentError(
            "terminal_log_snr",
            f"{terminal_log_snr} gives alpha_bar_T = {math.exp(float(terminal)):.3g}, "
            f"not below the rescaled alpha_bar_(T-1) = {math.exp(float(log_ab_new[-1])):.3g}; choose a lower value",
        )
    gaps = jnp.concatenate([g[:1], gaps_mid, (log_ab_new[-1] - terminal)[None]])
    return _assemble(jnp.concatenate([log_ab_new, terminal[None]]), gaps)


#: The named schedule families (:func:`named_schedule`).
SCHEDULE_NAMES = ("linear", "scaled_linear", "cosine", "sigmoid", "logsnr_cosine", "karras")


def named_schedule(name: str, T: int = 1000, **kwargs: Any) -> Schedule:
    """Look up a named family (one of :data:`SCHEDULE_NAMES`) and build it with ``kwargs``.

    Args:
      name: the family, one of :data:`SCHEDULE_NAMES`.
      T: number of training steps.
      **kwargs: the family's keyword arguments (``s`` of :func:`cosine`, ...).

    Returns:
      The :class:`Schedule` over ``t = 0..T``.

    Raises:
      ArgumentError: naming ``name`` for an unknown family; the family's own errors otherwise.
    """
    table = {
        "linear": linear,
        "scaled_linear": scaled_linear,
        "cosine": cosine,
        "sigmoid": sigmoid,
        "logsnr_cosine": logsnr_cosine,
        "karras": karras,
    }
    if name not in table:
        raise ArgumentError("name", f"unknown schedule {name!r}; expected one of {', '.join(SCHEDULE_NAMES)}")
    return table[name](T, **kwargs)

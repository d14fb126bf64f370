"""Noise schedules as a pytree over the training grid ``t = 0..T``.

A :class:`Schedule` stores ``log alpha_bar`` (shape ``(T+1,)``, ``log alpha_bar[0] == 0``
exactly). Storing the logarithm, not ``alpha_bar`` itself, is what keeps float32 honest: near
``t = 0`` the quantity that matters is ``sigma_t^2 = 1 - alpha_bar_t = -expm1(log alpha_bar_t)``,
which a float32 ``alpha_bar`` of ``0.9999`` only knows to three digits, while a float32
``log alpha_bar = -1e-4`` knows it to seven. Every named schedule is built in that form with
cancellation-free expressions (``log1p``, ``expm1``, ``softplus``), so float32 and float64
agree to ~1e-6 relative on every derived quantity, down to logSNR -20.

Conventions (theory.md section 1): ``alpha_bar[0] = 1``; ``alpha_bar[t] = prod_{s<=t}(1 - beta_s)``;
diffusers' ``alphas_cumprod[i]`` is our ``alpha_bar[i+1]``.

Continuous parameters of the named families (cosine offset ``s``, logSNR ``shift``) may be JAX
tracers, so ``jax.grad`` reaches them; ``T`` is static (it fixes the array shape).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from pifs_jax._validation import check_log_alpha_bar, check_positive_int, describe, is_concrete

__all__ = [
    "Schedule",
    "from_log_alpha_bar",
    "from_alpha_bar",
    "from_betas",
    "from_alphas_cumprod",
    "from_log_snr",
    "from_edm_sigmas",
    "linear",
    "scaled_linear",
    "cosine",
    "sigmoid",
    "logsnr_cosine",
    "karras",
    "shift_log_snr",
    "resolution_shift",
    "zero_terminal_snr",
    "safe_sqrt",
    "SCHEDULE_NAMES",
    "named_schedule",
]


def safe_sqrt(x: jax.Array) -> jax.Array:
    """``sqrt(x)`` for ``x >= 0`` whose gradient is finite (zero) at ``x = 0``.

    ``sigma_0 = sqrt(1 - alpha_bar_0) = 0`` appears in every chain's last step; plain ``sqrt``
    would give an infinite derivative there and poison gradients with NaN.
    """
    positive = x > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1.0)), 0.0)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Schedule:
    """A diffusion noise schedule on the training grid ``t = 0..T``.

    Attributes:
      log_alpha_bar: ``log alpha_bar_t``, shape ``(T+1,)``; entry 0 is exactly 0 and the entries
        strictly decrease. This is the only stored field (a pytree leaf), so a Schedule can be
        passed through ``jax.jit``/``jax.grad``/``jax.vmap`` like an array.

    Derived (all shape ``(T+1,)``): ``alpha_bar``, ``sigma2 = 1 - alpha_bar``, ``sigma``,
    ``log_snr = log(alpha_bar / sigma^2)`` (``+inf`` at ``t = 0``), ``betas`` (shape ``(T,)``,
    ``beta_t = 1 - alpha_bar_t / alpha_bar_{t-1}`` for ``t = 1..T``).

    Construct with :func:`from_alpha_bar`, :func:`from_betas`, the named families
    (:func:`linear`, :func:`cosine`, ...) or a learnable family; the constructors validate.
    """

    log_alpha_bar: jax.Array

    @property
    def T(self) -> int:
        """Number of training steps (static: it is the array length minus one)."""
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
        """``beta_t = 1 - alpha_bar_t / alpha_bar_{t-1} = -expm1(diff(log alpha_bar))``, shape ``(T,)``."""
        return -jnp.expm1(jnp.diff(self.log_alpha_bar))

    def astype(self, dtype) -> "Schedule":
        """The same schedule with ``log_alpha_bar`` cast to ``dtype``."""
        return Schedule(jnp.asarray(self.log_alpha_bar, dtype=dtype))

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
    """float64 when x64 is on or any input is float64, else float32."""
    return jnp.result_type(float, *[v for v in values if v is not None])


def from_log_alpha_bar(log_alpha_bar: Any, *, validate: bool = True) -> Schedule:
    """Schedule from ``log alpha_bar`` over ``t = 0..T`` (entry 0 must be exactly 0)."""
    if validate:
        check_log_alpha_bar(log_alpha_bar, name="log_alpha_bar")
    return Schedule(jnp.asarray(log_alpha_bar, dtype=_default_float(log_alpha_bar)))


def from_alpha_bar(alpha_bar: Any, *, dtype=None) -> Schedule:
    """Schedule from ``alpha_bar`` over ``t = 0..T``, ``alpha_bar[0] == 1``.

    The logarithm is taken in float64 when the input is concrete, so a float64 input loses
    nothing. Raises ``ValueError`` for a wrong shape, ``alpha_bar[0] != 1``, values outside
    ``(0, 1)`` or a schedule that does not strictly decrease.
    """
    if is_concrete(alpha_bar):
        arr = np.asarray(alpha_bar, dtype=np.float64)
        if arr.ndim == 1 and np.any((arr <= 0) | (arr > 1) | ~np.isfinite(arr)):
            raise ValueError(
                f"alpha_bar: every value must lie in (0, 1] (alpha_bar[0] = 1, later values in (0, 1)), "
                f"got {describe(arr)}"
            )
        with np.errstate(divide="ignore", invalid="ignore"):
            log_ab = np.log(arr)
        check_log_alpha_bar(log_ab, name="alpha_bar")
        return Schedule(jnp.asarray(log_ab, dtype=dtype or _default_float()))
    return Schedule(jnp.log(jnp.asarray(alpha_bar, dtype=dtype)))


def from_betas(betas: Any, *, dtype=None) -> Schedule:
    """Schedule from ``beta_1..beta_T`` (shape ``(T,)``): ``log alpha_bar_t = sum_{s<=t} log1p(-beta_s)``.

    Betas must lie in ``(0, 1)``; a terminal beta of exactly 1 (zero terminal SNR) is rejected
    because the eps-parameterised DDIM step cannot start from ``alpha_bar_T = 0``; use
    :func:`zero_terminal_snr`, which keeps a finite terminal logSNR.
    """
    if is_concrete(betas):
        arr = np.asarray(betas, dtype=np.float64)
        if arr.ndim != 1 or arr.shape[0] < 1:
            raise ValueError(f"betas: expected a 1-D array of shape (T,), got shape {arr.shape}")
        if np.any(~np.isfinite(arr) | (arr <= 0) | (arr >= 1)):
            bad = int(np.flatnonzero(~np.isfinite(arr) | (arr <= 0) | (arr >= 1))[0])
            raise ValueError(
                f"betas: every beta must lie in (0, 1), got betas[{bad}] = {arr[bad]!r} "
                f"(beta = 1 means alpha_bar_T = 0; use zero_terminal_snr for that)"
            )
        log_ab = np.concatenate([[0.0], np.cumsum(np.log1p(-arr))])
        return Schedule(jnp.asarray(log_ab, dtype=dtype or _default_float()))
    betas = jnp.asarray(betas, dtype=dtype)
    log_ab = jnp.cumsum(jnp.log1p(-betas))
    return Schedule(jnp.concatenate([jnp.zeros((1,), log_ab.dtype), log_ab]))


def from_alphas_cumprod(alphas_cumprod: Any, *, dtype=None) -> Schedule:
    """Schedule from diffusers' ``alphas_cumprod`` (shape ``(T,)``, index shifted by one).

    diffusers' ``alphas_cumprod[i]`` is this package's ``alpha_bar[i+1]``; the clean-data entry
    ``alpha_bar[0] = 1`` is prepended.
    """
    if is_concrete(alphas_cumprod):
        arr = np.asarray(alphas_cumprod, dtype=np.float64)
        if arr.ndim != 1:
            raise ValueError(f"alphas_cumprod: expected a 1-D array of shape (T,), got shape {arr.shape}")
        if np.any((arr <= 0) | (arr >= 1) | ~np.isfinite(arr)):
            raise ValueError(f"alphas_cumprod: every value must lie in (0, 1), got {describe(arr)}")
        return from_alpha_bar(np.concatenate([[1.0], arr]), dtype=dtype)
    arr = jnp.asarray(alphas_cumprod, dtype=dtype)
    return Schedule(jnp.concatenate([jnp.zeros((1,), arr.dtype), jnp.log(arr)]))


def _log_alpha_bar_from_log_snr(log_snr: jax.Array) -> jax.Array:
    """``log alpha_bar = log sigmoid(logSNR) = -softplus(-logSNR)`` (exact in float32)."""
    return -jax.nn.softplus(-log_snr)


def from_log_snr(log_snr: Any, *, validate: bool = True) -> Schedule:
    """Schedule from ``logSNR_1..logSNR_T`` (shape ``(T,)``, strictly decreasing, finite).

    ``alpha_bar_t = sigmoid(logSNR_t)``; ``alpha_bar_0 = 1`` is prepended. This is the natural
    entry point for continuous-time (VDM-style) parameterisations.
    """
    log_snr = jnp.asarray(log_snr, dtype=_default_float(log_snr))
    if validate and is_concrete(log_snr):
        arr = np.asarray(log_snr, dtype=np.float64)
        if arr.ndim != 1 or arr.shape[0] < 1:
            raise ValueError(f"log_snr: expected a 1-D array of shape (T,), got shape {arr.shape}")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"log_snr: values must be finite for t = 1..T, got {describe(arr)}")
        if np.any(np.diff(arr) >= 0):
            bad = int(np.flatnonzero(np.diff(arr) >= 0)[0]) + 1
            raise ValueError(
                f"log_snr: must strictly decrease in t, but logSNR[{bad + 1}] = {arr[bad]:.6g} >= "
                f"logSNR[{bad}] = {arr[bad - 1]:.6g} (entries are t = 1..T)"
            )
    log_ab = _log_alpha_bar_from_log_snr(log_snr)
    return Schedule(jnp.concatenate([jnp.zeros((1,), log_ab.dtype), log_ab]))


def from_edm_sigmas(sigmas: Any) -> Schedule:
    """Schedule from EDM noise levels ``sigma_EDM,1 < ... < sigma_EDM,T`` (shape ``(T,)``).

    ``sigma_EDM = sqrt((1 - alpha_bar) / alpha_bar)`` so ``alpha_bar = 1 / (1 + sigma_EDM^2)``,
    i.e. ``log alpha_bar = -log1p(sigma_EDM^2)`` and ``logSNR = -2 log sigma_EDM``.
    """
    sigmas_arr = jnp.asarray(sigmas, dtype=_default_float(sigmas))
    if is_concrete(sigmas):
        arr = np.asarray(sigmas, dtype=np.float64)
        if arr.ndim != 1 or arr.shape[0] < 1:
            raise ValueError(f"sigmas: expected a 1-D array of shape (T,), got shape {arr.shape}")
        if np.any(~np.isfinite(arr) | (arr <= 0)):
            raise ValueError(f"sigmas: EDM noise levels must be finite and > 0, got {describe(arr)}")
        if np.any(np.diff(arr) <= 0):
            raise ValueError(
                f"sigmas: must strictly increase with t (t = 1..T), got {describe(arr)}; "
                "pass Karras grids in ascending order"
            )
    return from_log_snr(-2.0 * jnp.log(sigmas_arr), validate=False)


# ----------------------------------------------------------------------------- named families


def linear(T: int = 1000, *, beta_start: float = 1e-4, beta_end: float = 0.02, dtype=None) -> Schedule:
    """DDPM linear schedule: ``beta = linspace(beta_start, beta_end, T)`` (Ho et al. 2020).

    Built in float64 and cast, so float32 schedules are correctly rounded.
    """
    T = check_positive_int(T, name="T")
    return from_betas(np.linspace(beta_start, beta_end, T, dtype=np.float64), dtype=dtype)


def scaled_linear(
    T: int = 1000, *, beta_start: float = 0.00085, beta_end: float = 0.012, dtype=None
) -> Schedule:
    """Stable Diffusion schedule: ``beta = linspace(sqrt(beta_start), sqrt(beta_end), T)^2``."""
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

    ``alpha_bar(t) = f(t/T) / f(0)``, ``f(u) = cos^2((u + s)/(1 + s) * pi/2)``, then
    ``beta_t = min(1 - alpha_bar(t)/alpha_bar(t-1), max_beta)`` and ``alpha_bar = cumprod(1 - beta)``.
    Cosine betas increase with ``t``, so clipping acts on a suffix: with ``t_c`` the first
    clipped step, ``log alpha_bar_t = log alpha_bar_{t_c-1} + (t - t_c + 1) log(1 - max_beta)``
    (exact, no cumulative sum). ``s`` may be a JAX tracer (``jax.grad`` with respect to it works).

    Example:
      >>> sched = cosine(1000, s=0.008)   # diffusers' squaredcos_cap_v2
    """
    T = check_positive_int(T, name="T")
    if is_concrete(s) and not (np.isfinite(float(s)) and float(s) >= 0):
        raise ValueError(f"s: the cosine offset must be finite and >= 0, got {float(s)!r}")
    if not 0 < max_beta < 1:
        raise ValueError(f"max_beta: must lie in (0, 1), got {max_beta!r}")
    dtype = dtype or _default_float(s)
    s = jnp.asarray(s, dtype=dtype)
    t = jnp.arange(T + 1)
    u = t.astype(dtype) / T
    log_f = _log_cos_squared(u, (T - t).astype(dtype) / T, s)
    raw = log_f - log_f[0]
    log_keep_min = jnp.log1p(-jnp.asarray(max_beta, dtype))
    clipped = jnp.concatenate([jnp.zeros((1,), bool), jnp.diff(raw) < log_keep_min])
    last_unclipped = jax.lax.cummax(jnp.where(clipped, 0, t))
    log_ab = raw[last_unclipped] + (t - last_unclipped).astype(dtype) * log_keep_min
    return Schedule(log_ab)


def _log_sigmoid_difference(a: jax.Array, b: jax.Array) -> jax.Array:
    """``log(sigmoid(a) - sigmoid(b))`` for ``a > b``, without cancellation.

    ``sigmoid(a) - sigmoid(b) = e^a (1 - e^{b-a}) / ((1 + e^a)(1 + e^b))``.
    """
    gap = jnp.minimum(b - a, -jnp.finfo(jnp.result_type(a)).tiny)
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

    ``alpha_bar(u) = (sigmoid(end/tau) - sigmoid((u (end - start) + start)/tau)) /
    (sigmoid(end/tau) - sigmoid(start/tau))`` with ``u = t/T``, clipped below at ``clip_min``.
    ``1 - alpha_bar`` is formed from a log-difference of sigmoids, so it is exact near ``t = 0``.
    """
    T = check_positive_int(T, name="T")
    if not end > start:
        raise ValueError(f"end: must exceed start, got start={start!r}, end={end!r}")
    if not tau > 0:
        raise ValueError(f"tau: must be > 0, got {tau!r}")
    if not 0 < clip_min < 1:
        raise ValueError(f"clip_min: must lie in (0, 1), got {clip_min!r}")
    dtype = dtype or _default_float(start, end, tau)
    u = jnp.arange(1, T + 1, dtype=dtype) / T
    x = (u * (end - start) + start) / tau
    lo = jnp.asarray(start / tau, dtype)
    hi = jnp.asarray(end / tau, dtype)
    log_norm = _log_sigmoid_difference(hi, lo)
    log_one_minus = _log_sigmoid_difference(x, lo) - log_norm  # log(1 - alpha_bar)
    at_end = x >= hi
    log_ab_direct = _log_sigmoid_difference(hi, jnp.where(at_end, lo, x)) - log_norm
    log_ab = jnp.where(
        log_one_minus < jnp.log(0.5), jnp.log1p(-jnp.exp(log_one_minus)), log_ab_direct
    )
    log_ab = jnp.where(at_end, -jnp.inf, log_ab)
    log_ab = jnp.maximum(log_ab, jnp.log(jnp.asarray(clip_min, dtype)))
    return Schedule(jnp.concatenate([jnp.zeros((1,), dtype), log_ab]))


def logsnr_cosine(
    T: int = 1000, *, logsnr_min: float = -15.0, logsnr_max: float = 15.0, dtype=None
) -> Schedule:
    """logSNR-cosine schedule (Hoogeboom et al. 2023, simple diffusion).

    ``logSNR(u) = -2 log tan(a u + b)``, ``b = arctan(exp(-logsnr_max/2))``,
    ``a = arctan(exp(-logsnr_min/2)) - b``, for ``u = t/T``, ``t = 1..T``; ``alpha_bar_0 = 1``.
    Combine with :func:`shift_log_snr` and :func:`resolution_shift` for the shifted variant.
    """
    T = check_positive_int(T, name="T")
    if not logsnr_max > logsnr_min:
        raise ValueError(
            f"logsnr_max: must exceed logsnr_min, got logsnr_min={logsnr_min!r}, logsnr_max={logsnr_max!r}"
        )
    dtype = dtype or _default_float(logsnr_min, logsnr_max)
    b = math.atan(math.exp(-logsnr_max / 2))
    a = math.atan(math.exp(-logsnr_min / 2)) - b
    u = jnp.arange(1, T + 1, dtype=dtype) / T
    log_snr = -2 * jnp.log(jnp.tan(a * u + b))
    return from_log_snr(log_snr, validate=False)


def karras(
    T: int = 1000, *, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0
) -> Schedule:
    """EDM / Karras et al. 2022 noise levels on ``T`` points, as a Schedule.

    ``sigma_i = (sigma_min^(1/rho) + (i-1)/(T-1) (sigma_max^(1/rho) - sigma_min^(1/rho)))^rho``
    for ``i = 1..T`` (ascending), mapped by ``alpha_bar = 1 / (1 + sigma^2)``.
    """
    T = check_positive_int(T, name="T", minimum=2)
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"sigma_min, sigma_max: need 0 < sigma_min < sigma_max, got {sigma_min!r}, {sigma_max!r}")
    ramp = np.linspace(0.0, 1.0, T)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return from_edm_sigmas((lo + ramp * (hi - lo)) ** rho)


# ----------------------------------------------------------------------------- transformations


def shift_log_snr(sched: Schedule, shift: Any) -> Schedule:
    """Shift every logSNR by ``shift``: ``logSNR'_t = logSNR_t + shift`` for ``t >= 1``.

    ``alpha_bar_0 = 1`` is kept. ``shift`` may be a tracer. Scaling all data variances by ``c``
    is compensated by ``shift = -log c`` (theory.md section 9); simple diffusion's resolution rule
    is :func:`resolution_shift`.
    """
    if is_concrete(shift) and not np.all(np.isfinite(np.asarray(shift))):
        raise ValueError(f"shift: must be finite, got {shift!r}")
    log_snr = sched.log_snr[1:] + shift
    log_ab = _log_alpha_bar_from_log_snr(log_snr)
    return Schedule(jnp.concatenate([jnp.zeros((1,), log_ab.dtype), log_ab]))


def resolution_shift(resolution: float, *, base_resolution: float = 64.0) -> float:
    """Simple diffusion's logSNR shift for resolution ``d``: ``2 log(base_resolution / d)``.

    An image at ``d x d`` pixels relative to the ``64 x 64`` reference gets its logSNR shifted by
    this amount (negative for ``d > 64``: more noise at higher resolution).
    """
    if not (resolution > 0 and base_resolution > 0):
        raise ValueError(
            f"resolution: must be > 0 (and base_resolution > 0), got {resolution!r}, {base_resolution!r}"
        )
    return 2.0 * math.log(base_resolution / resolution)


def zero_terminal_snr(sched: Schedule, *, terminal_log_snr: float = -20.0) -> Schedule:
    """Zero-terminal-SNR rescaling (Lin et al. 2023), with a finite terminal logSNR.

    On ``sqrt(alpha_bar_t)``, ``t = 1..T``: shift so the last value is 0 and scale so the first is
    unchanged, ``r_t = (sqrt(alpha_bar_t) - last) * first / (first - last)``. The exact rescale
    makes ``alpha_bar_T = 0``, from which the eps-parameterised DDIM step cannot start
    (``a_T = sqrt(alpha_bar_s / alpha_bar_T) = inf``), so the terminal value is set to
    ``logSNR_T = terminal_log_snr`` (default -20, ``alpha_bar_T ~ 2.1e-9``) instead, and a
    ``ValueError`` is raised if that would break monotonicity. ``1 - r_t^2`` is computed as
    ``(1 - r_t)(1 + r_t)`` with ``1 - r_t = (first (1 - sqrt ab_t) - last (1 - first)) / (first - last)``,
    so no precision is lost near ``t = 1``.
    """
    log_ab = sched.log_alpha_bar[1:]
    one_minus_sqrt = -jnp.expm1(log_ab / 2)  # 1 - sqrt(alpha_bar_t)
    first_gap = one_minus_sqrt[0]
    first = 1 - first_gap
    last = jnp.exp(log_ab[-1] / 2)
    one_minus_r = (first * one_minus_sqrt - last * first_gap) / (first - last)
    one_minus_r = one_minus_r[:-1]
    log_ab_new = 2 * jnp.log1p(-one_minus_r)
    terminal = _log_alpha_bar_from_log_snr(jnp.asarray(terminal_log_snr, log_ab.dtype))
    if is_concrete(log_ab_new) and float(terminal) >= float(log_ab_new[-1]):
        raise ValueError(
            f"terminal_log_snr: {terminal_log_snr} gives alpha_bar_T = {math.exp(float(terminal)):.3g}, "
            f"not below the rescaled alpha_bar_(T-1) = {math.exp(float(log_ab_new[-1])):.3g}; choose a lower value"
        )
    return Schedule(
        jnp.concatenate([jnp.zeros((1,), log_ab.dtype), log_ab_new, terminal[None]])
    )


SCHEDULE_NAMES = ("linear", "scaled_linear", "cosine", "sigmoid", "logsnr_cosine", "karras")


def named_schedule(name: str, T: int = 1000, **kwargs: Any) -> Schedule:
    """Look up a named family (one of :data:`SCHEDULE_NAMES`) and build it with ``kwargs``."""
    table = {
        "linear": linear,
        "scaled_linear": scaled_linear,
        "cosine": cosine,
        "sigmoid": sigmoid,
        "logsnr_cosine": logsnr_cosine,
        "karras": karras,
    }
    if name not in table:
        raise ValueError(f"name: unknown schedule {name!r}; expected one of {', '.join(SCHEDULE_NAMES)}")
    return table[name](T, **kwargs)

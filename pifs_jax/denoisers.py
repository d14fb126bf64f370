"""Exact (training-free) noise predictors ``eps_fn(x, t)`` for known data distributions.

Each factory closes over a :class:`~pifs_jax.schedules.Schedule` and the data model and returns a
jittable ``eps_fn(x, t)``: ``x`` is one sample (any shape with the model's number of
coordinates ``n``; the output has ``x``'s shape and dtype) and ``t`` the integer timestep of this
package's convention (``alpha_bar[t]``; may be traced). Each is the MMSE noise predictor
``E[eps | x_t = x]`` for the forward process ``x_t = sqrt(ab_t) x_0 + sigma_t eps``:

- Gaussian data ``N(mu, Sigma)`` (docs/theory.md section 4):
  ``eps^G_t(x) = sigma_t (ab_t Sigma + sigma_t^2 I)^{-1} (x - sqrt(ab_t) mu)
  = U diag(sigma_t / (ab_t lambda_i + sigma_t^2)) U^T (x - sqrt(ab_t) mu)`` with
  ``Sigma = U diag(lambda) U^T``. The eigendecomposition is done once, at construction, so a call
  costs two ``n x n`` matrix-vector products; :func:`gaussian_denoiser` (full covariance),
  :func:`gaussian_denoiser_eig` (given eigenpairs) and :func:`gaussian_denoiser_patches`
  (block-diagonal by ``p x p x C`` patch, docs/theory.md section 6).
- Gaussian mixtures (:func:`gaussian_mixture_denoiser`): responsibilities by log-sum-exp.
- A finite data set (:func:`empirical_denoiser`): the optimal denoiser is a softmax attention
  over the data, ``w = softmax(-||x - sqrt(ab_t) x0_m||^2 / (2 sigma_t^2))``,
  ``x0hat = sum_m w_m x0_m``, ``eps = (x - sqrt(ab_t) x0hat) / sigma_t``;
  :func:`empirical_attention` exposes the weights and their entropy.

At ``t = 0`` (``sigma_0 = 0``, clean data) every predictor returns exactly 0 without producing
NaN; the DDIM chain never evaluates ``t = 0``, it only lands there.

Input dtypes: every array in image units (the sample ``x``, data sets, means, eigenvalues and
covariances) must be floating, and an integer or boolean one raises ``ArgumentError`` naming it:
an integer ``x`` would have its noise prediction truncated to integers (the output takes ``x``'s
dtype), and integer data are usually raw ``uint8`` pixels on 0..255 instead of ``[-1, 1]``. The
unitless inputs (mixture ``weights``, normalised here, and an orthogonal eigenvector matrix) may
be integers and are promoted to the model's float dtype.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from pifs_jax._validation import (
    check_covariances,
    check_finite,
    check_floating,
    check_instance,
    check_variances,
    describe,
    is_concrete,
)
from pifs_jax.errors import ArgumentError
from pifs_jax.patches import patch_layout, patchify, unpatchify
from pifs_jax.schedules import Schedule, safe_sqrt
from pifs_jax.typing import EpsFn

__all__ = [
    "Attention",
    "EmpiricalEps",
    "empirical_attention",
    "empirical_denoiser",
    "gaussian_denoiser",
    "gaussian_denoiser_eig",
    "gaussian_denoiser_patches",
    "gaussian_mixture_denoiser",
]


# ----------------------------------------------------------------------------- shared helpers


class _NoiseLevel(NamedTuple):
    sqrt_alpha_bar: jax.Array
    alpha_bar: jax.Array
    sigma: jax.Array
    sigma2: jax.Array


def _noise_level(sched: Schedule, t: Any, dtype) -> _NoiseLevel:
    """``sqrt(ab_t), ab_t, sigma_t, sigma_t^2`` at integer ``t`` from ``log alpha_bar`` (no cancellation)."""
    log_ab = jnp.asarray(sched.log_alpha_bar[t], dtype)
    sigma2 = -jnp.expm1(log_ab)
    return _NoiseLevel(jnp.exp(log_ab / 2), jnp.exp(log_ab), safe_sqrt(sigma2), sigma2)


def _gain(level: _NoiseLevel, eigvals: jax.Array) -> jax.Array:
    """``sigma_t / (ab_t lambda + sigma_t^2)``, 0 where the denominator vanishes (``t = 0``, ``lambda = 0``)."""
    denom = level.alpha_bar * eigvals + level.sigma2
    positive = denom > 0
    return jnp.where(positive, level.sigma / jnp.where(positive, denom, 1.0), 0.0)


def _check_sample(x: jax.Array, n: int) -> jax.Array:
    """Flatten ``x`` after checking it is floating with ``n`` coordinates (dtypes and shapes are
    static: works under jit)."""
    check_floating(x, name="x")
    if x.size != n:
        raise ArgumentError("x", f"the denoiser's data model has n = {n} coordinates, got x of shape {x.shape}")
    return x.reshape(-1)


def _float_dtype(*arrays: Any):
    """The floating dtype the model is stored in (float32 unless x64 is on and an input is float64)."""
    return jnp.result_type(float, *arrays)


def _eps_of(value: Any) -> float:
    """Machine epsilon of ``value``'s (canonical floating) dtype, for tolerances of input checks."""
    return float(jnp.finfo(_float_dtype(value)).eps)


def _eigh_psd(cov: Any, dtype) -> tuple[jax.Array, jax.Array]:
    """Eigenpairs of the symmetrised covariance(s), eigenvalues clipped at 0 (round-off negatives).

    Concrete input is decomposed once in float64 with numpy (accurate even for float32 models, and
    no compilation); traced input (a covariance that is itself being differentiated) with
    ``jnp.linalg.eigh``.
    """
    if is_concrete(cov):
        arr = np.asarray(cov, dtype=np.float64)
        eigvals, eigvecs = np.linalg.eigh((arr + np.swapaxes(arr, -1, -2)) / 2)
        return jnp.asarray(np.maximum(eigvals, 0.0), dtype), jnp.asarray(eigvecs, dtype)
    cov = jnp.asarray(cov, dtype)
    eigvals, eigvecs = jnp.linalg.eigh((cov + jnp.swapaxes(cov, -1, -2)) / 2)
    return jnp.maximum(eigvals, 0.0), eigvecs


def _check_orthogonal(eigvecs: Any, name: str) -> None:
    """``U^T U = I`` checked with one random probe: ``||U^T (U z) - z||`` is O(n^2), not O(n^3)."""
    if not is_concrete(eigvecs):
        return
    u = check_finite(eigvecs, name)
    z = np.random.default_rng(0).standard_normal(u.shape[-1])
    err = np.linalg.norm(u.T @ (u @ z) - z) / np.linalg.norm(z)
    if err > 1e3 * _eps_of(eigvecs) * max(1.0, np.sqrt(u.shape[-1])):
        raise ArgumentError(
            name,
            f"the eigenvector matrix must be orthogonal (columns = eigenvectors), "
            f"but ||U^T U z - z|| / ||z|| = {err:.3g} for a random z",
        )


# ----------------------------------------------------------------------------- Gaussian


def gaussian_denoiser_eig(sched: Schedule, mean: Any, eigvals: Any, eigvecs: Any) -> EpsFn:
    """Optimal noise predictor for Gaussian data with ``Sigma = U diag(lambda) U^T``.

    ``eps^G_t(x) = U diag(sigma_t / (ab_t lambda_i + sigma_t^2)) U^T (x - sqrt(ab_t) mu)``
    on the flattened ``x``; the DDIM step is then diagonal in ``U`` with the factors
    :func:`pifs_jax.geometry.expansion_factor` ``f_t(lambda_i)``.

    Args:
      sched: the schedule.
      mean: ``mu``, any shape with ``n`` entries (flattened row-major), floating.
      eigvals: ``lambda``, shape ``(n,)``, finite and ``>= 0``, floating.
      eigvecs: ``U``, shape ``(n, n)``, orthogonal, column ``i`` the eigenvector of ``lambda_i``
        (an integer ``U``, e.g. a permutation, is promoted).

    Returns:
      ``eps_fn(x, t)``: floating ``x`` with ``n`` entries (any shape), ``t`` integer; output of
      ``x``'s shape and dtype. O(n^2) per call; exactly 0 at ``t = 0``.

    Raises:
      ArgumentError: naming ``mean``/``eigvals`` when not floating, ``eigvals``/``eigvecs`` for
        wrong shapes, negative variances or a non-orthogonal ``U``; ``eps_fn`` names ``x``.
    """
    check_instance(sched, Schedule, name="sched", what="pifs_jax Schedule")
    check_floating(mean, name="mean")
    check_floating(eigvals, name="eigvals")
    n = int(np.size(mean))
    if np.shape(eigvals) != (n,):
        raise ArgumentError("eigvals", f"expected shape ({n},) to match mean's {n} entries, got {np.shape(eigvals)}")
    check_variances(eigvals, name="eigvals")
    if np.shape(eigvecs) != (n, n):
        raise ArgumentError(
            "eigvecs", f"expected shape ({n}, {n}) to match mean's {n} entries, got {np.shape(eigvecs)}"
        )
    _check_orthogonal(eigvecs, "eigvecs")
    dtype = _float_dtype(mean, eigvals, eigvecs)
    mu = jnp.asarray(mean, dtype).reshape(-1)
    lam = jnp.asarray(eigvals, dtype)
    u = jnp.asarray(eigvecs, dtype)

    def eps_fn(x, t):
        x = jnp.asarray(x)
        _check_sample(x, n)
        return _gaussian_eps(sched, mu, lam, u, x, t)

    return eps_fn


@jax.jit
def _gaussian_eps(sched, mu, lam, u, x, t):
    # Module-level jit: the model's arrays are arguments (not baked-in constants), so every
    # Gaussian denoiser of the same shapes shares one compilation, also when called eagerly.
    level = _noise_level(sched, t, jnp.result_type(mu.dtype, x.dtype))
    d = x.reshape(-1) - level.sqrt_alpha_bar * mu
    eps = u @ (_gain(level, lam) * (u.T @ d))
    return eps.reshape(x.shape).astype(x.dtype)


def gaussian_denoiser(sched: Schedule, mean: Any, cov: Any) -> EpsFn:
    """Optimal noise predictor for Gaussian data ``N(mu, Sigma)`` with a full covariance.

    ``eps^G_t(x) = sigma_t (ab_t Sigma + sigma_t^2 I)^{-1} (x - sqrt(ab_t) mu)`` on the flattened
    ``x``. ``Sigma`` is eigendecomposed once here (in float64 when concrete; round-off negative
    eigenvalues clipped to 0), so each call is O(n^2) and stays finite at ``ab = 1``; see
    :func:`gaussian_denoiser_eig`. A traced ``cov`` (differentiating with respect to it) is
    decomposed with ``jnp.linalg.eigh``.

    Args:
      sched: the schedule.
      mean: ``mu``, any shape with ``n`` entries (e.g. ``(H, W, C)``), floating.
      cov: ``Sigma``, shape ``(n, n)``, symmetric positive semi-definite, in the row-major
        flattening of ``mean``'s shape, floating.

    Returns:
      ``eps_fn(x, t)`` for floating ``x`` (output of ``x``'s shape and dtype).

    Raises:
      ArgumentError: naming ``mean`` or ``cov`` when not floating, ``cov`` if it has the wrong
        shape, is not finite, not symmetric or not positive semi-definite.

    Example:
      >>> eps_fn = gaussian_denoiser(cosine(1000), jnp.zeros((4, 4, 1)), jnp.eye(16))
      >>> x0 = ddim_chain(eps_fn, cosine(1000), x_T, grid=uniform_grid(1000, 50))
    """
    check_instance(sched, Schedule, name="sched", what="pifs_jax Schedule")
    check_floating(mean, name="mean")
    check_floating(cov, name="cov")
    n = int(np.size(mean))
    check_covariances(cov, n, name="cov")
    dtype = _float_dtype(mean, cov)
    eigvals, eigvecs = _eigh_psd(cov, dtype)
    return gaussian_denoiser_eig(sched, jnp.asarray(mean, dtype), eigvals, eigvecs)


def gaussian_denoiser_patches(sched: Schedule, mean: Any, patch_covs: Any, patch_size: int) -> EpsFn:
    """Optimal noise predictor for Gaussian images whose covariance is block-diagonal by patch.

    The image is cut into ``M`` patches of ``n_k = p^2 C`` coordinates (:func:`pifs_jax.patches.patchify`)
    and patch ``k`` is independent ``N(mu_k, Sigma_k)``:
    ``[eps^G_t(x)]_k = U_k diag(sigma_t / (ab_t lambda_{k,i} + sigma_t^2)) U_k^T (x_k - sqrt(ab_t) mu_k)``.
    Equal to :func:`gaussian_denoiser` with the block-diagonal ``Sigma`` (in patch order, see
    :func:`pifs_jax.patches.patch_permutation`) at O(M n_k^2) per call.

    Args:
      sched: the schedule.
      mean: ``mu``, floating image of shape ``(H, W, C)`` or ``(H, W)``; fixes the image shape.
      patch_covs: shape ``(M, n_k, n_k)`` (one covariance per patch) or ``(n_k, n_k)`` (shared),
        in :func:`~pifs_jax.patches.patchify`'s coordinate order; symmetric PSD, floating.
      patch_size: ``p``, dividing ``H`` and ``W``.

    Returns:
      ``eps_fn(x, t)`` for floating images ``x`` of ``mean``'s shape (output of ``x``'s dtype).

    Raises:
      ArgumentError: naming ``mean`` or ``patch_covs`` when not floating, ``patch_size`` (does not
        tile the image) or ``patch_covs``; ``eps_fn`` names ``x``.
    """
    check_instance(sched, Schedule, name="sched", what="pifs_jax Schedule")
    check_floating(mean, name="mean")
    check_floating(patch_covs, name="patch_covs")
    layout = patch_layout(np.shape(mean), patch_size)
    m, nk = layout.num_patches, layout.patch_dim
    if np.ndim(patch_covs) == 2:
        check_covariances(patch_covs, nk, name="patch_covs")
        patch_covs = jnp.broadcast_to(jnp.asarray(patch_covs), (m, nk, nk))
    else:
        check_covariances(patch_covs, nk, name="patch_covs", batch_shape=(m,))
    dtype = _float_dtype(mean, patch_covs)
    mu = patchify(jnp.asarray(mean, dtype), patch_size)
    lam, u = _eigh_psd(patch_covs, dtype)  # (M, n_k), (M, n_k, n_k)

    def eps_fn(x, t):
        x = jnp.asarray(x)
        check_floating(x, name="x")
        if x.shape != layout.image_shape:
            raise ArgumentError("x", f"expected an image of shape {layout.image_shape}, got {x.shape}")
        return _gaussian_patch_eps(sched, mu, lam, u, x, t, patch_size=layout.patch_size)

    return eps_fn


@functools.partial(jax.jit, static_argnames="patch_size")
def _gaussian_patch_eps(sched, mu, lam, u, x, t, *, patch_size):
    level = _noise_level(sched, t, jnp.result_type(mu.dtype, x.dtype))
    d = patchify(x, patch_size) - level.sqrt_alpha_bar * mu
    z = jnp.einsum("mji,mj->mi", u, d)
    eps = jnp.einsum("mij,mj->mi", u, _gain(level, lam) * z)
    return unpatchify(eps, x.shape, patch_size).astype(x.dtype)


# ----------------------------------------------------------------------------- Gaussian mixture


def gaussian_mixture_denoiser(sched: Schedule, weights: Any, means: Any, covs: Any) -> EpsFn:
    """Optimal noise predictor for a Gaussian mixture ``sum_k pi_k N(mu_k, Sigma_k)``.

    Given ``x_t = x``, component ``k`` has ``x ~ N(sqrt(ab_t) mu_k, C_k)``, ``C_k = ab_t Sigma_k + sigma_t^2 I``;

    ``r_k(x) = softmax_k(log pi_k - 1/2 (x - sqrt(ab_t) mu_k)^T C_k^{-1} (x - sqrt(ab_t) mu_k) - 1/2 log det C_k)``,
    ``eps_t(x) = sum_k r_k(x) sigma_t C_k^{-1} (x - sqrt(ab_t) mu_k)``.

    Each ``Sigma_k`` is eigendecomposed once; responsibilities use a max-subtracted softmax
    (log-sum-exp), so far-away ``x`` gives no NaN. Singular (even zero) covariances are fine for
    ``t >= 1``; with ``Sigma_k = 0`` the mixture is the empirical denoiser of the means.

    Args:
      sched: the schedule.
      weights: ``pi``, shape ``(K,)``, non-negative, not all zero (normalised here; integers
        are promoted).
      means: shape ``(K,) + sample_shape`` (``n`` entries per component), floating.
      covs: shape ``(K, n, n)``, each symmetric PSD, floating.

    Returns:
      ``eps_fn(x, t)`` for floating ``x`` (output of ``x``'s shape and dtype), O(K n^2) per call.

    Raises:
      ArgumentError: naming ``weights``, ``means`` or ``covs`` (also integer ``means`` or ``covs``);
        ``eps_fn`` names ``x``.
    """
    check_instance(sched, Schedule, name="sched", what="pifs_jax Schedule")
    check_floating(means, name="means")
    check_floating(covs, name="covs")
    k_components = int(np.shape(weights)[0]) if np.ndim(weights) == 1 else -1
    if k_components < 1:
        raise ArgumentError("weights", f"expected a non-empty 1-D array of shape (K,), got shape {np.shape(weights)}")
    if np.ndim(means) < 1 or np.shape(means)[0] != k_components:
        raise ArgumentError(
            "means", f"expected shape (K,) + sample_shape with K = {k_components}, got {np.shape(means)}"
        )
    n = int(np.prod(np.shape(means)[1:], dtype=np.int64))
    if is_concrete(weights):
        w = check_finite(weights, "weights")
        if np.any(w < 0) or not np.any(w > 0):
            raise ArgumentError("weights", f"must be >= 0 and not all zero, got {describe(w)}")
    check_covariances(covs, n, name="covs", batch_shape=(k_components,))
    dtype = _float_dtype(weights, means, covs)
    weights = jnp.asarray(weights, dtype)
    log_pi = jnp.log(weights / jnp.sum(weights))
    mu = jnp.asarray(means, dtype).reshape(k_components, n)
    lam, u = _eigh_psd(covs, dtype)  # (K, n), (K, n, n)

    def eps_fn(x, t):
        x = jnp.asarray(x)
        _check_sample(x, n)
        return _mixture_eps(sched, log_pi, mu, lam, u, x, t)

    return eps_fn


@jax.jit
def _mixture_eps(sched, log_pi, mu, lam, u, x, t):
    level = _noise_level(sched, t, jnp.result_type(mu.dtype, x.dtype))
    d = x.reshape(1, -1) - level.sqrt_alpha_bar * mu  # (K, n)
    z = jnp.einsum("kji,kj->ki", u, d)
    denom = level.alpha_bar * lam + level.sigma2
    positive = denom > 0
    safe = jnp.where(positive, denom, 1.0)
    # log N(x; sqrt(ab) mu_k, C_k) up to the common -n/2 log(2 pi), in C_k's eigenbasis
    logits = log_pi - 0.5 * jnp.sum(z**2 / safe + jnp.log(safe), axis=1)
    r = jax.nn.softmax(logits)  # max-subtracted: log-sum-exp stable
    eps_k = jnp.einsum("kij,kj->ki", u, jnp.where(positive, level.sigma / safe, 0.0) * z)
    eps = jnp.where(level.sigma > 0, r @ eps_k, 0.0)
    return eps.reshape(x.shape).astype(x.dtype)


# ----------------------------------------------------------------------------- empirical data set


class Attention(NamedTuple):
    """Attention of the empirical-optimal denoiser over its data set."""

    weights: jax.Array
    """``w_m = softmax_m(-||x - sqrt(ab_t) x0_m||^2 / (2 sigma_t^2))``, shape ``(M,)``, sums to 1."""
    entropy: jax.Array
    """``H = -sum_m w_m log w_m`` in nats, in ``[0, log M]``."""


class EmpiricalEps(NamedTuple):
    """Output of ``empirical_denoiser(..., return_weights=True)``'s ``eps_fn``."""

    eps: jax.Array
    """The noise prediction, ``x``'s shape."""
    weights: jax.Array
    """Attention weights over the data, shape ``(M,)``."""
    entropy: jax.Array
    """Attention entropy in nats."""


def _check_data(data: Any) -> jax.Array:
    """``data`` as an array after checking it is floating, ``(M,) + sample_shape`` and finite."""
    check_floating(data, name="data")
    data = jnp.asarray(data)
    if data.ndim < 2 or data.shape[0] < 1:
        raise ArgumentError("data", f"expected shape (M,) + sample_shape with M >= 1, got {data.shape}")
    if is_concrete(data):
        check_finite(data, "data")
    return data


@jax.jit
def _empirical(sched: Schedule, data_flat: jax.Array, x: jax.Array, t: Any) -> EmpiricalEps:
    """eps, attention weights and entropy of the empirical posterior at ``(x, t)``."""
    flat = x.reshape(-1)
    dtype = jnp.result_type(data_flat.dtype, x.dtype)
    level = _noise_level(sched, t, dtype)
    # Differences, not the expanded ||x||^2 - 2<x, x0> + ||x0||^2: at small sigma the logits'
    # differences are what matter and the expansion would cancel them away. XLA fuses the
    # subtraction into the reduction, so no (M, n) array is materialised.
    dist2 = jnp.sum((flat[None, :] - level.sqrt_alpha_bar * data_flat) ** 2, axis=1)
    noisy = level.sigma2 > 0
    # Shift by the smallest distance *before* dividing by sigma^2: far from the data the logits
    # are ~ -1e17 in float32, where one ulp exceeds their spread; shifted, the best is exactly 0.
    excess = dist2 - jnp.min(dist2)
    log_w = jax.nn.log_softmax(-excess / (2 * jnp.where(noisy, level.sigma2, 1.0)))
    # t = 0: the limit sigma -> 0 is the nearest datum (one-hot).
    nearest = jax.nn.one_hot(jnp.argmin(dist2), data_flat.shape[0], dtype=dtype)
    weights = jnp.where(noisy, jnp.exp(log_w), nearest)
    log_w = jnp.where(noisy, log_w, jnp.where(nearest > 0, 0.0, -jnp.inf))
    # clipped to its exact range [0, log M] (round-off can leave -1e-17 for one-hot weights)
    entropy = jnp.clip(-jnp.sum(jnp.where(weights > 0, weights * log_w, 0.0)), 0.0, jnp.log(data_flat.shape[0]))
    x0_hat = weights @ data_flat
    safe_sigma = jnp.where(noisy, level.sigma, 1.0)
    eps = jnp.where(noisy, (flat - level.sqrt_alpha_bar * x0_hat) / safe_sigma, 0.0)
    return EmpiricalEps(eps.reshape(x.shape).astype(x.dtype), weights, entropy)


def empirical_denoiser(sched: Schedule, data: Any, *, return_weights: bool = False) -> Callable:
    """The optimal noise predictor of a finite data set: softmax attention over the data.

    For data ``x0_1..x0_M`` with equal mass, ``E[x_0 | x_t = x] = sum_m w_m x0_m`` with

    ``w_m = softmax_m(-||x - sqrt(ab_t) x0_m||^2 / (2 sigma_t^2))``,
    ``eps_t(x) = (x - sqrt(ab_t) sum_m w_m x0_m) / sigma_t``.

    Queries are the noisy sample, keys ``sqrt(ab_t) x0_m``, values the data (docs/theory.md section 6:
    the exact denoiser of a training set is an attention layer). The softmax subtracts its maximum
    (log-sum-exp), so ``x`` arbitrarily far from the data gives finite weights; squared distances
    are formed from differences, which keeps the logits accurate at small ``sigma_t``. Cost
    O(M n) per call.

    Args:
      sched: the schedule.
      data: shape ``(M,) + sample_shape``, floating (integer pixels are refused: convert them to
        the ``[-1, 1]`` scale first).
      return_weights: if True, ``eps_fn`` returns :class:`EmpiricalEps` ``(eps, weights, entropy)``
        instead of the bare array (such an ``eps_fn`` cannot be passed to ``ddim_chain``).

    Returns:
      ``eps_fn(x, t)`` with floating ``x`` of ``sample_shape`` (or any shape with the same size).

    Raises:
      ArgumentError: naming ``data`` for a non-floating dtype, a wrong shape or non-finite values;
        ``eps_fn`` names ``x``.
    """
    check_instance(sched, Schedule, name="sched", what="pifs_jax Schedule")
    data = _check_data(data)
    data_flat = data.reshape(data.shape[0], -1)

    def eps_fn(x, t):
        x = jnp.asarray(x)
        _check_sample(x, data_flat.shape[1])
        out = _empirical(sched, data_flat, x, t)
        return out if return_weights else out.eps

    return eps_fn


def empirical_attention(sched: Schedule, data: Any) -> Callable[[jax.Array, Any], Attention]:
    """Attention weights and entropy of :func:`empirical_denoiser` at ``(x, t)``.

    ``w_m = softmax_m(-||x - sqrt(ab_t) x0_m||^2 / (2 sigma_t^2))``, ``H(w) = -sum_m w_m log w_m``
    (nats, ``0 <= H <= log M``): diffuse attention (``H`` near ``log M``) at high noise, one-hot
    (``H = 0``) as ``sigma_t -> 0``; at ``t = 0`` the weights are the one-hot nearest datum.

    Args:
      sched: the schedule.
      data: shape ``(M,) + sample_shape``, floating.

    Returns:
      ``attention(x, t) -> Attention(weights (M,), entropy ())`` for floating ``x``.

    Raises:
      ArgumentError: naming ``sched`` (not a :class:`~pifs_jax.schedules.Schedule`) or ``data``
        (not floating, not of shape ``(M,) + sample_shape``, or non-finite values);
        ``attention`` names ``x``.
    """
    check_instance(sched, Schedule, name="sched", what="pifs_jax Schedule")
    data = _check_data(data)
    data_flat = data.reshape(data.shape[0], -1)

    def attention(x, t):
        x = jnp.asarray(x)
        _check_sample(x, data_flat.shape[1])
        out = _empirical(sched, data_flat, x, t)
        return Attention(out.weights, out.entropy)

    return attention

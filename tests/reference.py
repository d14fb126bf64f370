"""Independent NumPy float64 reference formulas shared by the tests.

Each function is written straight from its textbook definition (docs/theory.md sections 2-5),
without importing anything from ``pifs_jax``, so that the package is checked against an
independent computation. Tests import them with ``from reference import ...`` (``tests`` is on
``pythonpath``, see the ``[tool.pytest.ini_options]`` table of pyproject.toml). At the end, the
settings of small test models shared by several test files.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

# ----------------------------------------------------------------------------- schedules


def linear_alpha_bar(T: int = 1000) -> np.ndarray:
    """DDPM linear schedule: ``beta_t = linspace(1e-4, 0.02, T)``, ``alpha_bar_t = prod_{u<=t} (1 - beta_u)``.

    Args:
        T: number of diffusion steps.

    Returns:
        ``alpha_bar[0..T]``, shape ``(T + 1,)``, with ``alpha_bar[0] = 1``.
    """
    return np.concatenate([[1.0], np.cumprod(1.0 - np.linspace(1e-4, 0.02, T))])


def cosine_betas(T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """Nichol & Dhariwal's cosine betas, literally: ``beta_t = min(1 - f(t/T) / f((t-1)/T), max_beta)``.

    With ``f(u) = cos^2((u + s)/(1 + s) * pi/2)``; this is also diffusers' ``squaredcos_cap_v2``.

    Args:
        T: number of diffusion steps.
        s: offset ``s`` of the cosine.
        max_beta: clip on each beta.

    Returns:
        ``beta[1..T]``, shape ``(T,)``.
    """
    phi = (np.arange(T + 1) / T + s) / (1 + s) * np.pi / 2
    f = np.cos(phi) ** 2
    return np.minimum(1.0 - f[1:] / f[:-1], max_beta)


def cosine_alpha_bar(T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """Cosine schedule with clipped betas: ``alpha_bar_t = prod_{u<=t} (1 - beta_u)`` (see ``cosine_betas``).

    Returns:
        ``alpha_bar[0..T]``, shape ``(T + 1,)``, with ``alpha_bar[0] = 1``.
    """
    return np.concatenate([[1.0], np.cumprod(1.0 - cosine_betas(T, s, max_beta))])


def cosine_one_minus_c(T: int, s: float) -> tuple[float, float]:
    """``c = sqrt(alpha_bar_1) = cos(phi_1)/cos(phi_0)`` of the cosine schedule and ``1 - c`` without cancellation.

    ``1 - c = 2 sin((phi_1 + phi_0)/2) sin((phi_1 - phi_0)/2) / cos(phi_0)``, ``phi_u = (u/T + s)/(1 + s) * pi/2``.

    Returns:
        ``(c, 1 - c)``.
    """
    phi0 = s / (1 + s) * math.pi / 2
    phi1 = (1 / T + s) / (1 + s) * math.pi / 2
    c = math.cos(phi1) / math.cos(phi0)
    return c, 2 * math.sin((phi1 + phi0) / 2) * math.sin((phi1 - phi0) / 2) / math.cos(phi0)


def cosine_beta_1(T: int, s: float) -> float:
    """``beta_1 = 1 - c^2 = (1 - c)(1 + c)`` of the cosine schedule, without cancellation."""
    c, one_minus_c = cosine_one_minus_c(T, s)
    return one_minus_c * (1 + c)


def lin_zero_snr_alphas_cumprod(alphas_cumprod: np.ndarray) -> np.ndarray:
    """Lin et al. 2023, Algorithm 1: rescale ``sqrt(alphas_cumprod)`` to end at exactly 0, keeping the first value.

    ``r = (sqrt(ab) - sqrt(ab_last)) * sqrt(ab_first) / (sqrt(ab_first) - sqrt(ab_last))``, returned squared.

    Args:
        alphas_cumprod: diffusers-indexed ``alphas_cumprod`` (entry ``k`` is our ``alpha_bar_{k+1}``).

    Returns:
        The rescaled ``alphas_cumprod``, same shape; its last entry is exactly 0.
    """
    root = np.sqrt(np.asarray(alphas_cumprod, dtype=np.float64))
    first, last = root[0], root[-1]
    root = (root - last) * first / (first - last)
    return root**2


# ----------------------------------------------------------------------------- the three model-free quantities


def lstar_numpy(alpha_bar: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Contraction threshold ``L*_t = (sigma_s + a sigma_t)/(1 + a)``, ``a = sqrt(alpha_bar_s / alpha_bar_t)``.

    Args:
        alpha_bar: ``alpha_bar[0..T]``.
        grid: increasing timesteps ``0 = tau_0 < ... < tau_N = T``; step ``i`` goes ``t = tau_i -> s = tau_{i-1}``.

    Returns:
        ``L*`` per step, shape ``(N,)``.
    """
    ab_t, ab_s = alpha_bar[grid[1:]], alpha_bar[grid[:-1]]
    sigma_t, sigma_s = np.sqrt(1 - ab_t), np.sqrt(1 - ab_s)
    a = np.sqrt(ab_s / ab_t)
    return (sigma_s + a * sigma_t) / (1 + a)


def expansion_factors(alpha_bar: np.ndarray, grid: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """``f_t(lambda) = (sqrt(ab_s ab_t) lambda + sigma_s sigma_t) / (ab_t lambda + sigma_t^2)``.

    Args:
        alpha_bar: ``alpha_bar[0..T]``.
        grid: increasing timesteps, ``N + 1`` of them.
        lam: variances, shape ``(m,)``.

    Returns:
        ``f`` per step (rows, finest first) and variance (columns), shape ``(N, m)``.
    """
    ab_t, ab_s = alpha_bar[grid[1:]][:, None], alpha_bar[grid[:-1]][:, None]
    sigma_t, sigma_s = np.sqrt(1 - ab_t), np.sqrt(1 - ab_s)
    lam = np.asarray(lam, dtype=np.float64)[None, :]
    return (np.sqrt(ab_s * ab_t) * lam + sigma_s * sigma_t) / (ab_t * lam + sigma_t**2)


def moran_root_numpy(alpha_bar: np.ndarray, grid: np.ndarray, lo: float = 0.5, hi: float = 4.0) -> float:
    """``lambda**``: the root of ``sum_t log f_t(lambda)``, by 200 steps of plain bisection on ``[lo, hi]``.

    Args:
        alpha_bar: ``alpha_bar[0..T]``.
        grid: increasing timesteps.
        lo, hi: a bracket with ``sum log f < 0`` at ``lo`` and ``> 0`` at ``hi``.

    Returns:
        The root (float64 accuracy).
    """

    def total(lam: float) -> float:
        return float(np.sum(np.log(expansion_factors(alpha_bar, grid, np.array([lam])))))

    assert total(lo) < 0 < total(hi), (lo, hi)
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if total(mid) < 0 else (lo, mid)
    return 0.5 * (lo + hi)


def information_gain_numpy(alpha_bar: np.ndarray, grid: np.ndarray, lam: np.ndarray, sizes=1.0) -> np.ndarray:
    """``IG_t = 1/2 sum_k n_k log((1 + SNR_s lambda_k)/(1 + SNR_t lambda_k))``, ``SNR = ab / (1 - ab)``.

    Args:
        alpha_bar: ``alpha_bar[0..T]``.
        grid: increasing timesteps.
        lam: variances, shape ``(m,)``.
        sizes: multiplicities ``n_k``, shape ``(m,)`` or a scalar.

    Returns:
        ``IG`` per step, shape ``(N,)``; NaN for a step landing on ``alpha_bar = 1`` (infinite SNR).
    """
    snr = alpha_bar / (1 - np.where(alpha_bar < 1, alpha_bar, np.nan))
    snr_t, snr_s = snr[grid[1:]][:, None], snr[grid[:-1]][:, None]
    return 0.5 * np.sum(sizes * np.log((1 + snr_s * lam) / (1 + snr_t * lam)), axis=1)


# ----------------------------------------------------------------------------- Lyapunov spectra


def kaplan_yorke_numpy(exponents) -> float:
    """Kaplan-Yorke dimension ``j + S_j / |lambda_{j+1}|``, written as a plain loop.

    ``lambda`` sorted descending, ``S_j`` the sum of the first ``j``, ``j`` the largest index with
    ``S_j >= 0``; all partial sums non-negative gives the number of exponents.

    Args:
        exponents: the Lyapunov exponents, any order.

    Returns:
        The dimension.
    """
    lam = sorted((float(v) for v in np.ravel(exponents)), reverse=True)
    total = 0.0
    for j, value in enumerate(lam):
        if total + value < 0:
            return j + total / abs(value)
        total += value
    return float(len(lam))


# ----------------------------------------------------------------------------- statistics and random inputs


def cv(x) -> float:
    """Coefficient of variation ``std(x) / |mean(x)|`` (population standard deviation)."""
    return float(np.std(x) / abs(np.mean(x)))


def random_covariance(rng: np.random.Generator, eigvals) -> tuple[np.ndarray, np.ndarray]:
    """A covariance ``U diag(eigvals) U^T`` whose eigenvectors ``U`` are random (NOT the coordinate axes).

    Args:
        rng: NumPy generator (one normal matrix is drawn).
        eigvals: the spectrum, shape ``(n,)``.

    Returns:
        ``(covariance, U)``, both ``(n, n)``.
    """
    n = len(eigvals)
    u, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return u @ np.diag(eigvals) @ u.T, u


def random_orthogonal(n: int, seed: int = 0) -> np.ndarray:
    """A random ``n x n`` orthogonal matrix: QR of a normal matrix with ``R``'s diagonal made positive (Haar)."""
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(n, n)))
    return q * np.sign(np.diag(r))


def tanh_mlp(params, x, t):
    """A one-hidden-layer denoiser of one sample, ``W2 tanh(W1 x + b1 + c t / 1000)``: couples every
    coordinate with every other (a generic, non-Gaussian ``eps_fn`` for the chain tests)."""
    h = jnp.tanh(params["w1"] @ x.reshape(-1) + params["b1"] + params["c"] * (t / 1000.0))
    return (params["w2"] @ h).reshape(x.shape).astype(x.dtype)


def tanh_mlp_params(seed, n, *, width=8, out_scale=0.5, dtype=np.float64):
    """Seeded parameters of :func:`tanh_mlp` for ``n``-coordinate samples (``out_scale`` sets the Jacobian's size)."""
    rng = np.random.default_rng(seed)
    return {
        "w1": jnp.asarray(rng.standard_normal((width, n)) / np.sqrt(n), dtype),
        "b1": jnp.asarray(0.1 * rng.standard_normal(width), dtype),
        "c": jnp.asarray(rng.standard_normal(width), dtype),
        "w2": jnp.asarray(out_scale * rng.standard_normal((n, width)) / np.sqrt(width), dtype),
    }


#: A tiny diffusers ``UNet2DModel`` config: 8x8x1 images, attention at 4x4 (random-weight folders of
#: the loader and command-line tests; ``{**TINY_UNET_CONFIG, "sample_size": s}`` for other sizes).
TINY_UNET_CONFIG = {
    "sample_size": 8,
    "in_channels": 1,
    "out_channels": 1,
    "block_out_channels": [8, 16],
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
    "layers_per_block": 1,
    "attention_head_dim": 8,
    "norm_num_groups": 4,
}

"""Pieces shared by the networks: time embedding, self-attention that returns its weights, glue.

Framework: flax linen: ``module.init(key, x, t)`` returns the parameters as a plain pytree and
``module.apply({"params": params}, x, t)`` is a pure function of them (why linen and not nnx:
docs/design-choices.md).

The model interface (both :class:`~pifs_jax.models.unet.UNet` and
:class:`~pifs_jax.models.dit.PatchTransformer`)::

    eps = module.apply({"params": params}, x, t)                       # (B, H, W, C)
    eps, attention = module.apply({"params": params}, x, t, return_attention=True)

``x``: float ``(B, H, W, C)``; ``t``: integer timesteps ``(B,)`` (or a scalar, broadcast) in this
package's convention ``1..T`` (``alpha_bar[t]``). The network embeds the **raw** ``t`` with the
DDPM sinusoid (:func:`sinusoidal_embedding`), so it does not know ``T``: sample with the
schedule it was trained with. ``attention`` is a dict ``{layer name: weights (B, heads,
queries, keys)}`` (rows sum to 1); ``eps`` is bitwise the same with or without it (the weights
are computed either way; returning them adds outputs, not operations).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from pifs_jax.errors import ArgumentError

__all__ = [
    "EpsModule",
    "ModuleDenoiser",
    "SelfAttention",
    "TimeEmbedding",
    "as_eps_fn",
    "attention_entropy",
    "check_model_input",
    "count_params",
    "init_params",
    "sinusoidal_embedding",
]


@runtime_checkable
class EpsModule(Protocol):
    """The model interface every architecture implements (what a spec's ``build`` returns).

    ``apply(variables, x, t, return_attention=False)`` with ``variables = {"params": params}``,
    ``x`` float ``(B, H, W, C)`` and ``t`` integer timesteps ``(B,)`` (or a scalar) in ``1..T``:

    - ``return_attention=False``: ``eps``, the predicted noise, ``(B, H, W, C)``;
    - ``return_attention=True``: ``(eps, {layer name: weights (B, heads, queries, keys)})`` with
      bitwise the same ``eps`` (rows of the weights sum to 1; an architecture without attention
      returns ``{}``).

    ``init(key, x, t)`` returns ``{"params": params}``. Every flax linen module whose
    ``__call__`` is ``(x, t, return_attention=False)`` satisfies it.
    """

    def init(self, rngs: Any, *args: Any, **kwargs: Any) -> Any: ...

    def apply(self, variables: Any, *args: Any, **kwargs: Any) -> Any: ...


def sinusoidal_embedding(t: jax.Array, dim: int, *, max_period: float = 10000.0) -> jax.Array:
    """DDPM's timestep embedding (Ho et al. 2020; Vaswani et al. 2017), shape ``t.shape + (dim,)``.

    ``omega_i = max_period^(-i / (dim/2 - 1))``, ``i = 0..dim/2 - 1``;
    ``e(t) = [sin(t omega_0), ..., sin(t omega_{dim/2-1}), cos(t omega_0), ..., cos(t omega_{dim/2-1})]``.

    Args:
      t: timesteps (any shape, integer or float), embedded as given (raw ``t``, not ``t/T``).
      dim: even embedding width, ``>= 4``.
      max_period: the longest wavelength.
    """
    if dim % 2 or dim < 4:
        raise ArgumentError("dim", f"expected an even integer >= 4, got {dim!r}")
    half = dim // 2
    t = jnp.asarray(t)
    dtype = jnp.result_type(float, t.dtype) if jnp.issubdtype(t.dtype, jnp.floating) else jnp.result_type(float)
    omega = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=dtype) / (half - 1))
    args = t.astype(dtype)[..., None] * omega
    return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


class TimeEmbedding(nn.Module):
    """``t -> Dense(features)(silu(Dense(features)(sinusoid(t, base_dim))))``, shape ``(B, features)``."""

    features: int
    base_dim: int

    @nn.compact
    def __call__(self, t: jax.Array) -> jax.Array:
        h = sinusoidal_embedding(t, self.base_dim)
        h = nn.Dense(self.features, name="dense_0")(h)
        return nn.Dense(self.features, name="dense_1")(nn.silu(h))


class SelfAttention(nn.Module):
    """Multi-head self-attention over tokens ``(B, L, D)`` that also returns its weights.

    ``q, k, v = x W_q, x W_k, x W_v`` split into ``h`` heads of ``d = D/h``;
    ``A = softmax(q k^T / sqrt(d))`` of shape ``(B, h, L, L)`` (row ``i``: how query token ``i``,
    a range block, draws on every key token, a domain block); ``out = concat_h(A v) W_o``.

    Returns:
      ``(out (B, L, D), A (B, h, L, L))``.
    """

    num_heads: int
    out_kernel_init: Callable = nn.linear.default_kernel_init

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        b, length, d_model = x.shape
        if d_model % self.num_heads:
            raise ArgumentError("num_heads", f"{self.num_heads} heads do not divide the width {d_model}")
        head = d_model // self.num_heads
        qkv = nn.Dense(3 * d_model, name="qkv")(x).reshape(b, length, 3, self.num_heads, head)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # (B, L, h, d)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(jnp.asarray(head, q.dtype))
        weights = jax.nn.softmax(logits, axis=-1)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, length, d_model)
        return nn.Dense(d_model, kernel_init=self.out_kernel_init, name="out")(out), weights


def attention_entropy(weights: Any) -> Any:
    """Mean row entropy of attention weights, in nats.

    ``H(A) = mean over (batch, head, query) of -sum_k A_qk log A_qk`` (``0 log 0 = 0``), in
    ``[0, log L_keys]``: ``log L`` for uniform (diffuse) attention, 0 for one-hot (the classical
    PIFS pairing of a range block with one domain block).

    Args:
      weights: an array ``(..., queries, keys)`` with rows summing to 1, or a dict / list of
        them (as returned with ``return_attention=True``).

    Returns:
      a scalar, or a dict / list of scalars with the same keys / order.
    """
    if isinstance(weights, Mapping):
        return {name: attention_entropy(w) for name, w in weights.items()}
    if isinstance(weights, (list, tuple)):
        return [attention_entropy(w) for w in weights]
    w = jnp.asarray(weights)
    if w.ndim < 2:
        raise ArgumentError("weights", f"expected shape (..., queries, keys), got {w.shape}")
    row_entropy = -jnp.sum(jax.scipy.special.xlogy(w, w), axis=-1)
    return jnp.mean(row_entropy)


def check_model_input(x: Any, t: Any, expected: str, fits: bool) -> jax.Array:
    """Shared boundary check of ``(x, t)``; returns ``t`` broadcast to ``(B,)``.

    ``fits`` is the model's own shape test; ``expected`` describes the shape it wants.

    Runs on shapes only, so it raises before any computation, also under ``jit``.

    Args:
      x: the images, a floating-point array ``(B, H, W, C)``.
      t: the timesteps, of shape ``()`` or ``(B,)``.
      expected: the wanted shape of ``x``, as written in the error message.
      fits: whether ``x``'s shape passes the model's own test.

    Returns:
      ``t`` as a ``jax.Array`` broadcast to ``(B,)``.

    Raises:
      ArgumentError: naming ``x`` (not 4-D, not ``fits``, or not floating point) or ``t`` (another shape).
    """
    if x.ndim != 4 or not fits:
        raise ArgumentError("x", f"expected images of shape {expected}, got {tuple(x.shape)}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ArgumentError("x", f"expected floating-point images (scaled to [-1, 1]), got dtype {x.dtype}")
    t = jnp.asarray(t)
    if t.shape not in ((), (x.shape[0],)):
        raise ArgumentError("t", f"expected timesteps of shape () or (B,) = ({x.shape[0]},), got {t.shape}")
    return jnp.broadcast_to(t, (x.shape[0],))


def init_params(module: EpsModule, key: jax.Array, image_shape: Sequence[int] | None = None) -> Any:
    """Initial parameters of ``module`` (a plain pytree: the ``"params"`` collection).

    Traced with one image of ``image_shape`` (default: the module's own ``image_shape``) at
    ``t = 1``, jitted, under ``jax.threefry_partitionable(False)`` (compiles several times faster
    on a CPU; the parameters depend only on ``key``, not on that global flag).

    Args:
      module: the network (:class:`EpsModule`).
      key: the PRNG key of the initialisation.
      image_shape: ``(H, W, C)`` of the tracing image; ``None`` (default): ``module.image_shape``.

    Returns:
      the ``"params"`` collection of ``module.init``.

    Raises:
      ArgumentError: naming ``image_shape`` when it is ``None`` and the module has no ``image_shape``.
    """
    if image_shape is None:
        image_shape = getattr(module, "image_shape", None)
        if image_shape is None:
            raise ArgumentError("image_shape", f"{type(module).__name__} has no image_shape attribute; pass one")
    shape = tuple(image_shape)
    x = jnp.zeros((1, *shape), jnp.float32)
    t = jnp.ones((1,), jnp.int32)
    # Draws with the classic (non-partitionable) threefry: with JAX's default partitionable
    # threefry, XLA:CPU takes minutes to compile the ~50 differently shaped draws of an init
    # (measured: 58 s vs 13 s for a tiny UNet on 2 cores). The parameters are then a fixed
    # function of `key` whatever the global flag says (they differ from a plain module.init).
    with jax.threefry_partitionable(False):
        return jax.jit(module.init)(key, x, t)["params"]


@functools.partial(jax.jit, static_argnums=0)
def _batched_apply(module: EpsModule, params: Any, x: jax.Array, t: jax.Array) -> jax.Array:
    """``module.apply({"params": params}, x, t)`` jitted once per module (parameters are arguments)."""
    return module.apply({"params": params}, x, t)


@dataclasses.dataclass(frozen=True)
class ModuleDenoiser:
    """``apply_one(params, x, t)``: the denoiser of ONE sample for a network ``module``.

    Depends on the module only (equal for equal modules), so that
    ``jax.tree_util.Partial(ModuleDenoiser(module), params)`` of two parameter sets of one
    architecture has the same static structure: compiled programs that take the denoiser as an
    argument are reused, with the parameters traced.
    """

    module: EpsModule

    def __call__(self, params: Any, x: Any, t: Any) -> jax.Array:
        x = jnp.asarray(x)
        t = jnp.reshape(jnp.asarray(t).astype(jnp.int32), (1,))
        return _batched_apply(self.module, params, x[None], t)[0].astype(x.dtype)


def as_eps_fn(module: EpsModule, params: Any) -> jax.tree_util.Partial:
    """Turn a network into a denoiser ``eps_fn(x, t)`` for ONE sample, as :mod:`pifs_jax.ddim` wants.

    ``eps_fn(x, t) = module.apply({"params": params}, x[None], [t])[0]`` with ``x`` of shape
    ``(H, W, C)`` and an integer scalar ``t``; output of ``x``'s shape and dtype.

    The result is a pytree, ``jax.tree_util.Partial(ModuleDenoiser(module), params)``: the
    parameters are its leaves and the module its static structure. The package's compiled
    chains, spectra and Jacobians take the denoiser as an argument, so the parameters are traced
    (never constants baked into the program): a second parameter set of the same architecture
    compiles nothing new, the program does not grow with the model, no cache keeps the
    parameters alive, and ``jax.grad`` over ``params`` differentiates through the network.
    Batches come from :func:`~pifs_jax.ddim.ddim_sample` (``vmap``).

    Args:
      module: the network (:class:`EpsModule`).
      params: its parameters (the ``"params"`` collection, a pytree).

    Returns:
      ``eps_fn(x, t)``, a ``jax.tree_util.Partial`` whose leaves are ``params``.

    Example::

      eps_fn = as_eps_fn(module, params)
      x0 = ddim_chain(eps_fn, sched, x_T, grid=uniform_grid(1000, 50))
    """
    return jax.tree_util.Partial(ModuleDenoiser(module), params)


def count_params(params: Any) -> int:
    """Total number of scalars in a parameter pytree (arrays or ``jax.ShapeDtypeStruct`` leaves).

    Args:
      params: the parameter pytree.

    Returns:
      the sum of the leaves' sizes, a Python int.
    """
    return int(sum(math.prod(np.shape(leaf)) for leaf in jax.tree_util.tree_leaves(params)))

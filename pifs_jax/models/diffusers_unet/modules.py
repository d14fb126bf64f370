"""diffusers' ``UNet2DModel`` rebuilt in flax linen, channels last, with the package's model interface.

The layout (diffusers 0.42.1, ``models/unets/unet_2d.py`` and ``unet_2d_blocks.py``), for
``block_out_channels = (c_0, ..., c_{L-1})`` and ``layers_per_block = n``::

    x (B, H, W, C) [-> 2 x - 1 if center_input_sample] -> conv_in (3x3) -> c_0
    down_blocks.i:  n x ResnetBlock2D(c_i) [+ Attention after each, AttnDownBlock2D],
                    then Downsample2D (3x3 stride-2 conv) unless i = L-1; every output is a skip
    mid_block:      ResnetBlock2D -> Attention (add_attention) -> ResnetBlock2D, at c_{L-1}
    up_blocks.j:    (n + 1) x ResnetBlock2D(c_{L-1-j}) on [h, skip] [+ Attention, AttnUpBlock2D],
                    then Upsample2D (nearest x2, 3x3 conv) unless j = L-1
    conv_norm_out (GroupNorm) -> silu -> conv_out (3x3) -> eps (B, H, W, C)

- ``ResnetBlock2D(c)``: ``h = conv1(silu(norm1(x))) + time_emb_proj(silu(temb))``,
  ``h = conv2(silu(norm2(h)))``, ``out = (shortcut(x) + h) / s`` with ``shortcut`` a 1x1 conv
  when the width changes and ``s = mid_block_scale_factor`` in the middle block (1 elsewhere).
- ``Attention`` (diffusers' ``Attention`` with ``residual_connection``, the deprecated attention
  block): tokens ``u = GroupNorm(x)`` over the ``h w`` pixels, ``q, k, v = u W_q, u W_k, u W_v``
  split into ``heads`` of ``head_dim`` (:meth:`UNet2DConfig.heads`),
  ``A = softmax(q k^T / sqrt(head_dim))`` of shape ``(B, heads, hw, hw)``,
  ``out = (concat_h(A v) W_o + x) / s``.
- ``Downsample2D``: ``downsample_padding = 1`` pads one pixel on every side; ``0`` pads one pixel
  right and bottom only (as diffusers), then a 3x3 stride-2 conv.
- Time: diffusers' ``get_timestep_embedding`` of the diffusers timestep ``k``
  (:func:`diffusers_timestep_embedding`) -> ``linear_1`` -> silu -> ``linear_2``.

Timestep convention: the module takes the package's integer ``t`` in ``1..T`` (``alpha_bar[t]``)
and embeds diffusers' timestep ``k = t - 1`` (our ``alpha_bar[t]`` is diffusers'
``alphas_cumprod[t - 1]``; :mod:`pifs_jax.interop`), so it plugs into :func:`pifs_jax.ddim_chain`
and every other function of the package unchanged.

Parameter names follow diffusers' state-dict keys with ``.N`` folded into the name
(``down_blocks.1.attentions.0.to_q.weight`` -> ``down_blocks_1/attentions_0/to_q/kernel``);
:mod:`pifs_jax.models.diffusers_unet.convert` maps one onto the other. Attention weights, returned
with ``return_attention=True``, are keyed by diffusers' layer names (``"down_blocks.1.attentions.0"``,
``"mid_block.attentions.0"``, ``"up_blocks.2.attentions.1"``), each ``(B, heads, hw, hw)``.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from pifs_jax.models.common import check_model_input
from pifs_jax.models.diffusers_unet.config import UNet2DConfig

__all__ = [
    "AttentionBlock2D",
    "DiffusersUNet2D",
    "Downsample2D",
    "ResnetBlock2D",
    "Upsample2D",
    "diffusers_timestep_embedding",
]


def diffusers_timestep_embedding(
    k: jax.Array, dim: int, *, flip_sin_to_cos: bool, freq_shift: float, max_period: float = 10000.0
) -> jax.Array:
    """diffusers' ``get_timestep_embedding`` of diffusers timesteps ``k`` (shape ``k.shape + (dim,)``).

    ``h = dim // 2``, ``omega_i = exp(-log(max_period) i / (h - freq_shift))``, ``i = 0..h-1``;
    ``e = [sin(k omega), cos(k omega)]`` (``[cos, sin]`` with ``flip_sin_to_cos``), a zero column
    appended when ``dim`` is odd. Computed in float32, as diffusers does whatever the network's
    dtype (the caller casts), so float32 and float64 networks see the same embedding.

    Args:
      k: the diffusers timesteps, an array of any shape.
      dim: the embedding width.
      flip_sin_to_cos: put the cosines first (``[cos, sin]``).
      freq_shift: the shift of the frequencies' denominator ``h - freq_shift``.
      max_period: the longest period; default 10000.

    Returns:
      the embedding, float32 of shape ``k.shape + (dim,)``.
    """
    half = dim // 2
    exponent = jnp.float32(-math.log(max_period)) * jnp.arange(half, dtype=jnp.float32)
    omega = jnp.exp(exponent / jnp.float32(half - freq_shift))
    args = jnp.asarray(k).astype(jnp.float32)[..., None] * omega
    emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
    if flip_sin_to_cos:
        emb = jnp.concatenate([emb[..., half:], emb[..., :half]], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, [(0, 0)] * (emb.ndim - 1) + [(0, 1)])
    return emb


def _group_norm(groups: int, eps: float, name: str) -> nn.GroupNorm:
    # two-pass variance, as torch; Jacobians are analysed in float64 as well
    return nn.GroupNorm(num_groups=groups, epsilon=eps, use_fast_variance=False, name=name)


def _conv3x3(features: int, name: str) -> nn.Conv:
    return nn.Conv(features, (3, 3), padding=((1, 1), (1, 1)), name=name)


class ResnetBlock2D(nn.Module):
    """diffusers' ``ResnetBlock2D`` (``time_embedding_norm = "default"``, pre-norm, silu)."""

    out_channels: int
    groups: int
    eps: float
    output_scale_factor: float = 1.0

    @nn.compact
    def __call__(self, x: jax.Array, temb: jax.Array) -> jax.Array:
        h = _conv3x3(self.out_channels, "conv1")(nn.silu(_group_norm(self.groups, self.eps, "norm1")(x)))
        h = h + nn.Dense(self.out_channels, name="time_emb_proj")(nn.silu(temb))[:, None, None, :]
        h = _conv3x3(self.out_channels, "conv2")(nn.silu(_group_norm(self.groups, self.eps, "norm2")(h)))
        if x.shape[-1] != self.out_channels:
            x = nn.Conv(self.out_channels, (1, 1), name="conv_shortcut")(x)
        out = x + h
        return out if self.output_scale_factor == 1 else out / self.output_scale_factor


class AttentionBlock2D(nn.Module):
    """diffusers' spatial self-attention with residual connection; returns ``(out, weights (B, heads, hw, hw))``."""

    heads: int
    head_dim: int
    groups: int
    eps: float
    rescale_output_factor: float = 1.0

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        b, height, width, c = x.shape
        length, inner = height * width, self.heads * self.head_dim
        tokens = _group_norm(self.groups, self.eps, "group_norm")(x).reshape(b, length, c)
        q, k, v = (
            nn.Dense(inner, name=name)(tokens).reshape(b, length, self.heads, self.head_dim)
            for name in ("to_q", "to_k", "to_v")
        )
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(jnp.asarray(self.head_dim, q.dtype))
        weights = jax.nn.softmax(logits, axis=-1)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, length, inner)
        out = nn.Dense(c, name="to_out_0")(out).reshape(b, height, width, c) + x
        return (out if self.rescale_output_factor == 1 else out / self.rescale_output_factor), weights


class Downsample2D(nn.Module):
    """3x3 stride-2 conv; ``padding = 0`` pads right and bottom by one pixel first (diffusers)."""

    out_channels: int
    padding: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        pad = ((0, 1), (0, 1)) if self.padding == 0 else ((self.padding, self.padding),) * 2
        return nn.Conv(self.out_channels, (3, 3), strides=(2, 2), padding=pad, name="conv")(x)


class Upsample2D(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv."""

    out_channels: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        return _conv3x3(self.out_channels, "conv")(x)


class _DownBlock(nn.Module):
    """``DownBlock2D`` / ``AttnDownBlock2D``: resnets [+ attentions], optional downsampler."""

    config: UNet2DConfig
    index: int

    @nn.compact
    def __call__(self, h, temb, attention: dict) -> tuple[jax.Array, list]:
        cfg, i = self.config, self.index
        width = cfg.block_out_channels[i]
        with_attention = cfg.down_block_types[i] == "AttnDownBlock2D"
        outputs = []
        for j in range(cfg.layers_per_block):
            h = ResnetBlock2D(width, cfg.norm_num_groups, cfg.norm_eps, name=f"resnets_{j}")(h, temb)
            if with_attention:
                heads, head_dim = cfg.heads(width)
                h, attention[f"down_blocks.{i}.attentions.{j}"] = AttentionBlock2D(
                    heads, head_dim, cfg.norm_num_groups, cfg.norm_eps, name=f"attentions_{j}"
                )(h)
            outputs.append(h)
        if i != len(cfg.block_out_channels) - 1:
            h = Downsample2D(width, cfg.downsample_padding, name="downsamplers_0")(h)
            outputs.append(h)
        return h, outputs


class _MidBlock(nn.Module):
    """``UNetMidBlock2D``: resnet, attention (``add_attention``), resnet; outputs scaled by ``1 / mid_block_scale_factor``."""

    config: UNet2DConfig

    @nn.compact
    def __call__(self, h, temb, attention: dict) -> jax.Array:
        cfg = self.config
        width, scale = cfg.block_out_channels[-1], cfg.mid_block_scale_factor
        h = ResnetBlock2D(width, cfg.norm_num_groups, cfg.norm_eps, scale, name="resnets_0")(h, temb)
        if cfg.add_attention:
            heads, head_dim = cfg.heads(width)
            groups = cfg.attn_norm_num_groups or cfg.norm_num_groups
            h, attention["mid_block.attentions.0"] = AttentionBlock2D(
                heads, head_dim, groups, cfg.norm_eps, scale, name="attentions_0"
            )(h)
        return ResnetBlock2D(width, cfg.norm_num_groups, cfg.norm_eps, scale, name="resnets_1")(h, temb)


class _UpBlock(nn.Module):
    """``UpBlock2D`` / ``AttnUpBlock2D``: resnets on ``[h, skip]`` [+ attentions], optional upsampler."""

    config: UNet2DConfig
    index: int

    @nn.compact
    def __call__(self, h, skips: list, temb, attention: dict) -> jax.Array:
        cfg, i = self.config, self.index
        width = cfg.block_out_channels[::-1][i]
        with_attention = cfg.up_block_types[i] == "AttnUpBlock2D"
        for j in range(cfg.layers_per_block + 1):
            h = jnp.concatenate([h, skips.pop()], axis=-1)
            h = ResnetBlock2D(width, cfg.norm_num_groups, cfg.norm_eps, name=f"resnets_{j}")(h, temb)
            if with_attention:
                heads, head_dim = cfg.heads(width)
                h, attention[f"up_blocks.{i}.attentions.{j}"] = AttentionBlock2D(
                    heads, head_dim, cfg.norm_num_groups, cfg.norm_eps, name=f"attentions_{j}"
                )(h)
        if i != len(cfg.block_out_channels) - 1:
            h = Upsample2D(width, name="upsamplers_0")(h)
        return h


class DiffusersUNet2D(nn.Module):
    """A diffusers ``UNet2DModel`` eps-predictor in flax (see the module docstring for the layout).

    Attributes:
      config: the architecture, :func:`~pifs_jax.models.diffusers_unet.config.read_unet_config`.

    Call: ``apply({"params": p}, x (B, H, W, C), t (B,) int in 1..T, return_attention=False)``
    -> ``eps (B, H, W, C)`` or ``(eps, {layer name: weights (B, heads, hw, hw)})``; diffusers'
    timestep is ``t - 1``. ``eps`` is the same with or without the attention weights.
    """

    config: UNet2DConfig

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.config.image_shape

    @nn.compact
    def __call__(self, x: jax.Array, t: jax.Array, return_attention: bool = False) -> Any:
        cfg = self.config
        factor, c_in = cfg.downsampling_factor, cfg.in_channels
        fits = x.ndim == 4 and x.shape[1] % factor == 0 and x.shape[2] % factor == 0 and x.shape[3] == c_in
        height, width = cfg.image_shape[:2]
        t = check_model_input(
            x,
            t,
            f"(B, {height}, {width}, {c_in}) (or any H, W that are multiples of {factor}, the downsampling "
            f"factor of {len(cfg.block_out_channels)} blocks, with C = {c_in})",
            fits,
        )
        if cfg.center_input_sample:
            x = 2 * x - 1
        emb = diffusers_timestep_embedding(
            t - 1, cfg.block_out_channels[0], flip_sin_to_cos=cfg.flip_sin_to_cos, freq_shift=cfg.freq_shift
        ).astype(x.dtype)
        temb = _TimestepEmbedding(cfg.time_embed_dim, name="time_embedding")(emb)
        attention: dict = {}

        h = _conv3x3(cfg.block_out_channels[0], "conv_in")(x)
        skips = [h]
        for i in range(len(cfg.block_out_channels)):
            h, outputs = _DownBlock(cfg, i, name=f"down_blocks_{i}")(h, temb, attention)
            skips.extend(outputs)
        h = _MidBlock(cfg, name="mid_block")(h, temb, attention)
        for i in range(len(cfg.block_out_channels)):
            h = _UpBlock(cfg, i, name=f"up_blocks_{i}")(h, skips, temb, attention)

        h = nn.silu(_group_norm(cfg.norm_num_groups, cfg.norm_eps, "conv_norm_out")(h))
        eps = _conv3x3(c_in, "conv_out")(h)
        return (eps, attention) if return_attention else eps


class _TimestepEmbedding(nn.Module):
    """``linear_2(silu(linear_1(e)))``, diffusers' ``TimestepEmbedding``."""

    features: int

    @nn.compact
    def __call__(self, emb: jax.Array) -> jax.Array:
        return nn.Dense(self.features, name="linear_2")(nn.silu(nn.Dense(self.features, name="linear_1")(emb)))

"""A small UNet noise predictor in the style of the DDPM CIFAR-10 network (Ho et al. 2020).

flax linen (parameters are a plain pytree; docs/design-choices.md says why).

Layout for ``channel_mults = (m_0, ..., m_{L-1})``, ``c = channels``::

    x (B, H, W, C) -> conv3x3 -> c
    down level l = 0..L-1 (resolution H / 2^l):  num_res_blocks x ResBlock(c m_l) [+ attention],
                                                  then a stride-2 conv3x3 unless l = L-1
    middle (resolution H / 2^(L-1)):              ResBlock -> SelfAttention -> ResBlock
    up level l = L-1..0:                          (num_res_blocks + 1) x ResBlock(c m_l) on
                                                  [h, skip] [+ attention], then nearest x2 +
                                                  conv3x3 unless l = 0
    GroupNorm -> swish -> conv3x3 -> eps (B, H, W, C)

``ResBlock(c_out)``: ``h = conv(swish(GN(x))) + Dense(swish(temb))``,
``h = conv(swish(GN(h)))``, ``out = skip(x) + h`` (``skip`` a 1x1 conv when the width changes).
Attention blocks: ``x + proj(MHSA(GN(x)))`` over the ``h w`` pixels of the feature map (tokens
= ``2^l x 2^l`` pixel regions of the image). The time embedding is
``Dense(4c)(swish(Dense(4c)(sinusoid(t, max(c, 32)))))`` of the raw integer ``t``. As in DDPM, the last
conv of every ResBlock, every attention projection and the output conv start at zero, so the
initial network predicts ``eps = 0``.

Attention layers (returned with ``return_attention=True``, weights ``(B, heads, hw, hw)``):
``"mid_attn"`` always (the middle resolution), plus ``"down{l}_attn{i}"`` / ``"up{l}_attn{i}"``
at every resolution listed in ``attention_resolutions``.

The image height and width must be multiples of the downsampling factor ``2^(L-1)``; the
channel count must be ``image_shape[2]``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from pifs_jax.errors import ArgumentError
from pifs_jax.models.common import SelfAttention, TimeEmbedding, check_model_input
from pifs_jax.models.specs import ModelSpec, check_field_int, check_image_shape, register_spec

__all__ = ["AttentionBlock", "ResBlock", "UNet", "UNetSpec"]

_zeros = nn.initializers.zeros


def _group_norm(groups: int, name: str) -> nn.GroupNorm:
    # two-pass variance: Jacobians of the trained network are analysed in float64 as well
    return nn.GroupNorm(num_groups=groups, epsilon=1e-6, use_fast_variance=False, name=name)


class ResBlock(nn.Module):
    """DDPM residual block with time-embedding injection (no dropout): ``(B, h, w, c_in) -> (B, h, w, c_out)``."""

    out_channels: int
    groups: int

    @nn.compact
    def __call__(self, x: jax.Array, temb: jax.Array) -> jax.Array:
        h = nn.Conv(self.out_channels, (3, 3), name="conv_0")(nn.swish(_group_norm(self.groups, "norm_0")(x)))
        h = h + nn.Dense(self.out_channels, name="temb")(nn.swish(temb))[:, None, None, :]
        h = _group_norm(self.groups, "norm_1")(h)
        h = nn.Conv(self.out_channels, (3, 3), kernel_init=_zeros, name="conv_1")(nn.swish(h))
        if x.shape[-1] != self.out_channels:
            x = nn.Conv(self.out_channels, (1, 1), name="skip")(x)
        return x + h


class AttentionBlock(nn.Module):
    """``x + proj(MHSA(GN(x)))`` over the pixels of a feature map; returns ``(out, weights (B, heads, hw, hw))``."""

    num_heads: int
    groups: int

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        b, height, width, c = x.shape
        tokens = _group_norm(self.groups, "norm")(x).reshape(b, height * width, c)
        out, weights = SelfAttention(self.num_heads, out_kernel_init=_zeros, name="attn")(tokens)
        return x + out.reshape(b, height, width, c), weights


class UNet(nn.Module):
    """Small DDPM-style UNet predicting ``eps`` with self-attention at the middle resolution.

    Attributes:
      image_shape: ``(H, W, C)`` the network is built for (``H``, ``W`` multiples of
        ``2^(len(channel_mults) - 1)``; other sizes with that divisibility also run).
      channels: base width ``c`` (a multiple of ``groups``).
      channel_mults: width multiplier per resolution level.
      num_res_blocks: ResBlocks per level on the way down (one more on the way up).
      attention_resolutions: feature-map heights (besides the middle) with attention blocks.
      num_heads: attention heads.
      groups: GroupNorm groups.

    Call: ``apply({"params": p}, x (B, H, W, C), t (B,) int, return_attention=False)`` ->
    ``eps (B, H, W, C)`` or ``(eps, {name: weights (B, heads, hw, hw)})``.
    """

    image_shape: tuple
    channels: int = 16
    channel_mults: tuple = (1, 2)
    num_res_blocks: int = 1
    attention_resolutions: tuple = ()
    num_heads: int = 1
    groups: int = 4

    @property
    def downsampling_factor(self) -> int:
        """``2^(L-1)``: height and width must be multiples of it."""
        return 2 ** (len(self.channel_mults) - 1)

    @nn.compact
    def __call__(self, x: jax.Array, t: jax.Array, return_attention: bool = False) -> Any:
        factor = self.downsampling_factor
        c_in = int(self.image_shape[2])
        fits = x.ndim == 4 and x.shape[1] % factor == 0 and x.shape[2] % factor == 0 and x.shape[3] == c_in
        h_, w_ = int(self.image_shape[0]), int(self.image_shape[1])
        t = check_model_input(
            x,
            t,
            f"(B, {h_}, {w_}, {c_in}) (or any H, W that are multiples of {factor}, the UNet's downsampling "
            f"factor for {len(self.channel_mults)} levels, with C = {c_in})",
            fits,
        )
        levels = len(self.channel_mults)
        temb = TimeEmbedding(4 * self.channels, max(self.channels, 32), name="time_embedding")(t.astype(x.dtype))
        attention = {}

        h = nn.Conv(self.channels, (3, 3), name="conv_in")(x)
        skips = [h]
        for level, mult in enumerate(self.channel_mults):
            for i in range(self.num_res_blocks):
                h = ResBlock(self.channels * mult, self.groups, name=f"down{level}_res{i}")(h, temb)
                if h.shape[1] in self.attention_resolutions:
                    h, attention[f"down{level}_attn{i}"] = AttentionBlock(
                        self.num_heads, self.groups, name=f"down{level}_attn{i}"
                    )(h)
                skips.append(h)
            if level != levels - 1:
                h = nn.Conv(
                    h.shape[-1], (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), name=f"down{level}_downsample"
                )(h)
                skips.append(h)

        mid = self.channels * self.channel_mults[-1]
        h = ResBlock(mid, self.groups, name="mid_res0")(h, temb)
        h, attention["mid_attn"] = AttentionBlock(self.num_heads, self.groups, name="mid_attn")(h)
        h = ResBlock(mid, self.groups, name="mid_res1")(h, temb)

        for level in reversed(range(levels)):
            width = self.channels * self.channel_mults[level]
            for i in range(self.num_res_blocks + 1):
                h = ResBlock(width, self.groups, name=f"up{level}_res{i}")(
                    jnp.concatenate([h, skips.pop()], axis=-1), temb
                )
                if h.shape[1] in self.attention_resolutions:
                    h, attention[f"up{level}_attn{i}"] = AttentionBlock(
                        self.num_heads, self.groups, name=f"up{level}_attn{i}"
                    )(h)
            if level != 0:
                h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)  # nearest-neighbour x2
                h = nn.Conv(width, (3, 3), name=f"up{level}_upsample")(h)

        h = nn.swish(_group_norm(self.groups, "norm_out")(h))
        eps = nn.Conv(c_in, (3, 3), kernel_init=_zeros, name="conv_out")(h)
        return (eps, attention) if return_attention else eps


@register_spec
@dataclasses.dataclass(frozen=True)
class UNetSpec(ModelSpec):
    """The :class:`UNet` architecture (registered as ``"unet"``); fields as its attributes.

    Presets (module docstring of :mod:`pifs_jax.models`): ``"quick"`` (``c = 16``, mults
    ``(1, 2)``, one ResBlock per level, 4 groups, attention at the middle only) and ``"full"``
    (``c = 64``, mults ``(1, 2, 2)``, two ResBlocks, 32 groups, attention at 16x16 and the middle).
    """

    NAME: ClassVar[str] = "unet"
    PRESETS: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "quick": dict(
            channels=16, channel_mults=(1, 2), num_res_blocks=1, attention_resolutions=(), num_heads=1, groups=4
        ),
        "full": dict(
            channels=64, channel_mults=(1, 2, 2), num_res_blocks=2, attention_resolutions=(16,), num_heads=1, groups=32
        ),
    }

    channels: int = 16
    channel_mults: tuple[int, ...] = (1, 2)
    num_res_blocks: int = 1
    attention_resolutions: tuple[int, ...] = ()
    num_heads: int = 1
    groups: int = 4

    def validate(self, image_shape: Sequence[int] | None = None) -> None:
        """Fields: positive ints, ``groups | channels``, ``num_heads`` divides every width; H, W multiples of ``2^(L-1)``."""
        for field in ("channels", "num_res_blocks", "num_heads", "groups"):
            check_field_int(getattr(self, field), field)
        mults = self.channel_mults
        if (
            not isinstance(mults, tuple)
            or not mults
            or any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in mults)
        ):
            raise ArgumentError("channel_mults", f"expected a non-empty tuple of positive integers, got {mults!r}")
        resolutions = self.attention_resolutions
        if not isinstance(resolutions, tuple) or any(
            isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in resolutions
        ):
            raise ArgumentError(
                "attention_resolutions", f"expected a tuple of positive feature-map heights, got {resolutions!r}"
            )
        if self.channels % self.groups:
            raise ArgumentError("groups", f"{self.groups} GroupNorm groups must divide channels = {self.channels}")
        widths = {self.channels * m for m in mults}
        if any(w % self.num_heads for w in widths):
            raise ArgumentError("num_heads", f"{self.num_heads} heads must divide every width {sorted(widths)}")
        if image_shape is not None:
            height, width, channels = check_image_shape(image_shape)
            factor = 2 ** (len(mults) - 1)
            if height % factor or width % factor:
                fitting = (factor * max(1, height // factor), factor * max(1, width // factor), channels)
                raise ArgumentError(
                    "image_shape",
                    f"a UNet with {len(mults)} levels downsamples by {factor}, so H and W must be "
                    f"multiples of {factor}; got {(height, width, channels)} (e.g. {fitting})",
                )

    def build(self, image_shape: Sequence[int]) -> UNet:
        """``UNet(image_shape, **fields)`` after :meth:`validate`."""
        self.validate(image_shape)
        return UNet(image_shape=check_image_shape(image_shape), **dataclasses.asdict(self))

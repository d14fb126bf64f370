"""A patch transformer (DiT-style, Peebles & Xie 2023) whose tokens are exactly the PIFS patches.

flax linen (parameters are a plain pytree; docs/design-choices.md says why).

The image ``(H, W, C)`` is cut by :func:`pifs_jax.patches.patchify` into ``M = HW/p^2`` range
blocks of ``n_k = p^2 C`` coordinates, in the package's patch order; token ``k`` **is** patch
``k``, so the self-attention weights ``A[k, j]`` are a soft range-domain pairing between
patches ``k`` and ``j`` (docs/theory.md section 6) and line up with the Jacobian blocks ``[J]_kj``::

    tokens = Dense(D)(patchify(x)) + pos          (B, M, D); pos learned (M, D) or fixed 2-D sin-cos
    c = Dense(D)(silu(Dense(D)(sinusoid(t, D))))  (B, D)   time conditioning, raw integer t
    depth x block:
        (s1, g1, a1, s2, g2, a2) = Dense(6D)(silu(c))                      adaLN-zero modulation
        h = h + a1 * MHSA(LN(h) (1 + g1) + s1)
        h = h + a2 * MLP(LN(h) (1 + g2) + s2)                             MLP: D -> rD -> D, GELU
    (s, g) = Dense(2D)(silu(c));  out = Dense(p^2 F)(LN(h) (1 + g) + s)   (B, M, p^2 F)
    u = unpatchify(out)                           (B, H, W, F)
    u = u + Conv3x3(F)(silu(u));  eps = Conv3x3(C)(silu(u))                (B, H, W, C)
    eps = eps + gamma(t) x,  gamma = Dense(1)(silu(c))                   only with input_skip

The decoder (``decoder_features = F > 0``, default 16) unpatchifies ``F`` features per pixel
and mixes them with two ``3 x 3`` convolutions (a residual one, then the output one), in the
manner of U-ViT (Bao et al. 2023, "All are worth words", its extra convolution after the
patch-to-image projection; one convolution left the quick model's straddling-patch distance
at 98.9 % of the gap, just below the 99 % "useful" bar; two reach 99.02 %): a purely linear per-token
decoder (``F = 0``: ``out = Dense(n_k)``, ``eps = unpatchify(out)``, the original DiT) writes
each patch on its own, and the quick model's samples then show seams at every patch border
(the straddling-patch Frechet distance of :mod:`pifs_jax.models.quality` is ~12x that of real
crops). The convolutions couple only pixels within two pixels of a border; tokens are still
exactly the PIFS patches and attention is still their pairing.

LayerNorms carry no affine parameters (the modulation supplies them). adaLN-zero: the
modulation layers and the output layer (the convolution, or the final ``Dense`` when ``F = 0``)
start at zero, so every block starts as the identity and the initial network predicts ``eps = 0``.

Attention layers (``return_attention=True``): ``"block{i}"``, weights ``(B, heads, M, M)``.

The network is built for one ``image_shape``: the input must have exactly that shape, and
``patch_size`` must tile it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from pifs_jax.errors import ArgumentError
from pifs_jax.models.common import SelfAttention, TimeEmbedding, check_model_input
from pifs_jax.models.specs import ModelSpec, check_field_int, check_image_shape, register_spec
from pifs_jax.patches import patch_layout, patchify, unpatchify

__all__ = ["DiTBlock", "DiTSpec", "PatchTransformer", "sincos_position_embedding"]

_zeros = nn.initializers.zeros


def sincos_position_embedding(rows: int, cols: int, dim: int) -> np.ndarray:
    """Fixed 2-D sine-cosine position embedding (MAE/DiT), shape ``(rows * cols, dim)``.

    Token ``k`` at patch-grid position ``(r, c) = divmod(k, cols)`` (row-major, as patchify)
    gets ``[e_{dim/2}(r), e_{dim/2}(c)]``, ``e_d(u) = [sin(u w_i), cos(u w_i)]``,
    ``w_i = 10000^(-i / (d/2))``, ``i = 0..d/2 - 1``. ``dim`` must be a multiple of 4.

    Args:
      rows: the patch grid's number of rows.
      cols: its number of columns.
      dim: the embedding width, a multiple of 4.

    Returns:
      the embedding, a float32 NumPy array ``(rows * cols, dim)`` (computed in float64).

    Raises:
      ArgumentError: naming ``dim`` when it is not a multiple of 4.
    """
    if dim % 4:
        raise ArgumentError("dim", f"the 2-D sin-cos embedding needs a multiple of 4, got {dim}")
    quarter = dim // 4
    omega = 1.0 / 10000.0 ** (np.arange(quarter, dtype=np.float64) / quarter)
    r, c = np.divmod(np.arange(rows * cols), cols)

    def embed(u):
        args = u[:, None] * omega[None, :]
        return np.concatenate([np.sin(args), np.cos(args)], axis=1)

    return np.concatenate([embed(r.astype(np.float64)), embed(c.astype(np.float64))], axis=1).astype(np.float32)


def _modulate(h: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
    return h * (1 + scale[:, None, :]) + shift[:, None, :]


def _layer_norm(name: str) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=1e-6, use_bias=False, use_scale=False, use_fast_variance=False, name=name)


class DiTBlock(nn.Module):
    """Transformer block with adaLN-zero conditioning: ``(B, M, D), (B, D) -> ((B, M, D), weights (B, h, M, M))``."""

    num_heads: int
    mlp_ratio: int

    @nn.compact
    def __call__(self, h: jax.Array, c: jax.Array) -> tuple[jax.Array, jax.Array]:
        d = h.shape[-1]
        mod = nn.Dense(6 * d, kernel_init=_zeros, name="adaln")(nn.silu(c))
        shift1, scale1, gate1, shift2, scale2, gate2 = jnp.split(mod, 6, axis=-1)
        attn, weights = SelfAttention(self.num_heads, name="attn")(_modulate(_layer_norm("norm_0")(h), shift1, scale1))
        h = h + gate1[:, None, :] * attn
        y = _modulate(_layer_norm("norm_1")(h), shift2, scale2)
        y = nn.Dense(self.mlp_ratio * d, name="mlp_0")(y)
        y = nn.Dense(d, name="mlp_1")(nn.gelu(y, approximate=True))
        return h + gate2[:, None, :] * y, weights


class PatchTransformer(nn.Module):
    """DiT-style noise predictor over the PIFS patches (tokens = ``p x p x C`` range blocks).

    Attributes:
      image_shape: ``(H, W, C)``; inputs must have exactly this shape.
      patch_size: ``p``, tiling ``H x W``: ``M = HW/p^2`` tokens of ``n_k = p^2 C`` coordinates.
      hidden: token width ``D`` (a multiple of ``num_heads``; of 4 for sin-cos positions).
      depth: number of transformer blocks.
      num_heads: attention heads.
      mlp_ratio: MLP hidden width ``/ D``.
      pos_embedding: ``"learned"`` (``(M, D)`` parameter, N(0, 0.02^2) init) or ``"sincos"`` (fixed 2-D).
      decoder_features: ``F``: features per pixel mixed by the two final ``3 x 3`` convolutions;
        0 = the plain linear per-patch decoder of DiT.
      input_skip: add ``gamma(t) x`` to the output, ``gamma = Dense(1)(silu(c))`` (zero at
        initialisation): the identity path a token as wide as the model needs at high noise.

    Call: ``apply({"params": p}, x (B, H, W, C), t (B,) int, return_attention=False)`` ->
    ``eps (B, H, W, C)`` or ``(eps, {"block{i}": weights (B, heads, M, M)})``.
    """

    image_shape: tuple
    patch_size: int = 4
    hidden: int = 64
    depth: int = 3
    num_heads: int = 4
    mlp_ratio: int = 4
    pos_embedding: str = "learned"
    decoder_features: int = 16
    input_skip: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, t: jax.Array, return_attention: bool = False) -> Any:
        layout = patch_layout(tuple(self.image_shape), self.patch_size)
        shape = layout.image_shape
        t = check_model_input(
            x,
            t,
            f"(B,) + image_shape = (B, {shape[0]}, {shape[1]}, {shape[2]}) (tiled by patch_size = {layout.patch_size})",
            x.ndim == 4 and tuple(x.shape[1:]) == tuple(shape),
        )
        p, m, d = layout.patch_size, layout.num_patches, self.hidden
        c = TimeEmbedding(d, d, name="time_embedding")(t.astype(x.dtype))

        tokens = jax.vmap(lambda image: patchify(image, p))(x)  # (B, M, n_k)
        h = nn.Dense(d, name="embed")(tokens)
        if self.pos_embedding == "learned":
            pos = self.param("pos_embedding", nn.initializers.normal(0.02), (m, d))
        elif self.pos_embedding == "sincos":
            pos = jnp.asarray(sincos_position_embedding(layout.rows, layout.cols, d))
        else:
            raise ArgumentError("pos_embedding", f"expected 'learned' or 'sincos', got {self.pos_embedding!r}")
        h = h + pos.astype(h.dtype)

        attention = {}
        for i in range(self.depth):
            h, attention[f"block{i}"] = DiTBlock(self.num_heads, self.mlp_ratio, name=f"block{i}")(h, c)

        shift, scale = jnp.split(nn.Dense(2 * d, kernel_init=_zeros, name="final_adaln")(nn.silu(c)), 2, axis=-1)
        h = _modulate(_layer_norm("final_norm")(h), shift, scale)
        features = self.decoder_features
        if features < 0:
            raise ArgumentError("decoder_features", f"expected a non-negative integer, got {features}")
        if features == 0:
            out = nn.Dense(layout.patch_dim, kernel_init=_zeros, name="final")(h)
            eps = jax.vmap(lambda q: unpatchify(q, shape, p))(out)
        else:
            out = nn.Dense(p * p * features, name="final")(h)
            pixels = jax.vmap(lambda q: unpatchify(q, (*shape[:2], features), p))(out)
            pixels = pixels + nn.Conv(features, (3, 3), padding="SAME", name="final_conv_0")(nn.silu(pixels))
            eps = nn.Conv(shape[2], (3, 3), padding="SAME", kernel_init=_zeros, name="final_conv")(nn.silu(pixels))
        if self.input_skip:
            gamma = nn.Dense(1, kernel_init=_zeros, name="input_skip")(nn.silu(c))  # (B, 1)
            eps = eps + gamma[:, :, None, None] * x
        return (eps, attention) if return_attention else eps


@register_spec
@dataclasses.dataclass(frozen=True)
class DiTSpec(ModelSpec):
    """The :class:`PatchTransformer` architecture (registered as ``"dit"``); fields as its attributes.

    Presets (module docstring of :mod:`pifs_jax.models`): ``"quick"`` (``p = 4``, ``D = 64``,
    depth 3, 4 heads) and ``"full"`` (``p = 8``, ``D = 256``, depth 6, 8 heads); both
    ``mlp_ratio = 4``, learned positions, ``decoder_features = 16``.
    """

    NAME: ClassVar[str] = "dit"
    PRESETS: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "quick": dict(
            patch_size=4, hidden=64, depth=3, num_heads=4, mlp_ratio=4, pos_embedding="learned", decoder_features=16
        ),
        "full": dict(
            patch_size=8, hidden=256, depth=6, num_heads=8, mlp_ratio=4, pos_embedding="learned", decoder_features=16
        ),
    }

    patch_size: int = 4
    hidden: int = 64
    depth: int = 3
    num_heads: int = 4
    mlp_ratio: int = 4
    pos_embedding: str = "learned"
    decoder_features: int = 16
    input_skip: bool = False

    OPTIONAL_FIELDS: ClassVar[Mapping[str, Any]] = {"input_skip": False}

    def validate(self, image_shape: Sequence[int] | None = None) -> None:
        """Fields: positive ints, ``num_heads | hidden``, known positions; ``patch_size`` must tile the image."""
        for field in ("patch_size", "hidden", "depth", "num_heads", "mlp_ratio"):
            check_field_int(getattr(self, field), field)
        check_field_int(self.decoder_features, "decoder_features", minimum=0, note=" (0 = linear per-patch decoder)")
        if not isinstance(self.input_skip, bool):
            raise ArgumentError("input_skip", f"expected True or False, got {self.input_skip!r}")
        if self.hidden % self.num_heads:
            raise ArgumentError("num_heads", f"{self.num_heads} heads must divide hidden = {self.hidden}")
        if self.pos_embedding not in ("learned", "sincos"):
            raise ArgumentError("pos_embedding", f"expected 'learned' or 'sincos', got {self.pos_embedding!r}")
        if self.pos_embedding == "sincos" and self.hidden % 4:
            raise ArgumentError("hidden", f"sin-cos positions need a multiple of 4, got {self.hidden}")
        if image_shape is not None:
            patch_layout(check_image_shape(image_shape), self.patch_size)  # raises naming patch_size

    def build(self, image_shape: Sequence[int]) -> PatchTransformer:
        """``PatchTransformer(image_shape, **fields)`` after :meth:`validate`."""
        self.validate(image_shape)
        return PatchTransformer(image_shape=check_image_shape(image_shape), **dataclasses.asdict(self))

"""Trainable noise predictors (flax linen): a small DDPM-style UNet and a PIFS-patch transformer.

Why flax linen: docs/design-choices.md.

The interface shared by both networks (binding for training, checkpoints and experiments)::

    module, config = make_model("unet" | "dit", image_shape=(16, 16, 3), size="quick")
    params = init_params(module, key)
    eps = module.apply({"params": params}, x, t)                         # x (B,H,W,C), t (B,) int32
    eps, attn = module.apply({"params": params}, x, t, return_attention=True)   # same eps, bitwise
    eps_fn = as_eps_fn(module, params)              # one sample, for ddim_chain; a pytree (params traced)
    module = model_from_config(config)                                   # rebuild from a checkpoint

``t`` is the raw integer timestep ``1..T`` of this package (``alpha_bar[t]``), embedded with
the DDPM sinusoid; ``attn`` maps layer names to weights ``(B, heads, queries, keys)``.

Configurations (``size``):

- ``"quick"``: 16x16 RGB, trains on a 2-core CPU in minutes. UNet: ``c = 16``, mults ``(1, 2)``,
  one ResBlock per level, 4 GroupNorm groups, attention at the 8x8 middle (64 tokens): 165,587
  parameters, 0.92 GFLOP per forward pass at batch 32. DiT: ``p = 4`` (``M = 16`` patches of
  ``n_k = 48``), ``D = 64``, depth 3, 4 heads: 247,984 parameters, 0.18 GFLOP at batch 32.
- ``"full"``: 32x32 RGB for a GPU. UNet: ``c = 64``, mults ``(1, 2, 2)``, two ResBlocks per
  level, 32 groups, attention at 16x16 and at the 8x8 middle (as DDPM's CIFAR-10 net at half
  width and one level less): 6.47M parameters. DiT:
  ``p = 8`` (``M = 16`` patches of ``n_k = 192``: the paper's CIFAR-10 geometry), ``D = 256``,
  depth 6, 8 heads: 7.47M parameters.

``patch_size`` is the PIFS partition the model is analysed with; for the DiT it is also the
token size. Its default is 4 (quick) or 8 (full).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn

from pifs_jax.errors import ArgumentError
from pifs_jax.models.common import (
    SelfAttention,
    TimeEmbedding,
    as_eps_fn,
    attention_entropy,
    count_params,
    init_params,
    sinusoidal_embedding,
)
from pifs_jax.models.diffusers_unet import (
    DiffusersUNet2D,
    LoadedDiffusersUNet,
    load_diffusers_unet,
    seeded_diffusers_weights,
    write_random_diffusers_unet,
)
from pifs_jax.models.dit import PatchTransformer
from pifs_jax.models.unet import UNet
from pifs_jax.patches import patch_layout

__all__ = [
    "MODEL_NAMES",
    "MODEL_SIZES",
    "DiffusersUNet2D",
    "LoadedDiffusersUNet",
    "PatchTransformer",
    "SelfAttention",
    "TimeEmbedding",
    "UNet",
    "as_eps_fn",
    "attention_entropy",
    "count_params",
    "init_params",
    "load_diffusers_unet",
    "make_model",
    "model_from_config",
    "seeded_diffusers_weights",
    "sinusoidal_embedding",
    "write_random_diffusers_unet",
]

MODEL_NAMES = ("unet", "dit")
MODEL_SIZES = ("quick", "full")

_DEFAULT_IMAGE_SHAPE = {"quick": (16, 16, 3), "full": (32, 32, 3)}
_DEFAULT_PATCH_SIZE = {"quick": 4, "full": 8}
_HYPER = {
    ("unet", "quick"): dict(
        channels=16, channel_mults=(1, 2), num_res_blocks=1, attention_resolutions=(), num_heads=1, groups=4
    ),
    ("unet", "full"): dict(
        channels=64, channel_mults=(1, 2, 2), num_res_blocks=2, attention_resolutions=(16,), num_heads=1, groups=32
    ),
    ("dit", "quick"): dict(hidden=64, depth=3, num_heads=4, mlp_ratio=4, pos_embedding="learned", decoder_features=16),
    ("dit", "full"): dict(hidden=256, depth=6, num_heads=8, mlp_ratio=4, pos_embedding="learned", decoder_features=16),
}
_TUPLE_FIELDS = ("image_shape", "channel_mults", "attention_resolutions")


def _jsonable(value: Any) -> Any:
    return [int(v) for v in value] if isinstance(value, (tuple, list)) else value


def _check_config(name: str, config: dict) -> None:
    """Validate hyper-parameters before any tracing; ValueError names the offending field."""
    shape = tuple(config["image_shape"])
    if len(shape) != 3 or any(int(s) < 1 for s in shape):
        raise ArgumentError("image_shape", f"expected (H, W, C) with positive sizes, got {shape}")
    height, width, _ = shape
    for field in ("num_heads",) + (
        ("channels", "num_res_blocks", "groups") if name == "unet" else ("hidden", "depth", "mlp_ratio")
    ):
        value = config[field]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ArgumentError(field, f"expected a positive integer, got {value!r}")
    if name == "dit":
        value = config["decoder_features"]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ArgumentError(
                "decoder_features", f"expected a non-negative integer (0 = linear per-patch decoder), got {value!r}"
            )
    if name == "unet":
        mults = tuple(config["channel_mults"])
        if not mults or any(int(m) < 1 for m in mults):
            raise ArgumentError("channel_mults", f"expected a non-empty tuple of positive integers, got {mults}")
        factor = 2 ** (len(mults) - 1)
        if height % factor or width % factor:
            raise ArgumentError(
                "image_shape",
                f"a UNet with {len(mults)} levels downsamples by {factor}, so H and W must be "
                f"multiples of {factor}; got {shape} (e.g. {(factor * max(1, height // factor), factor * max(1, width // factor), shape[2])})",
            )
        if config["channels"] % config["groups"]:
            raise ArgumentError(
                "groups", f"{config['groups']} GroupNorm groups must divide channels = {config['channels']}"
            )
        widths = {config["channels"] * m for m in mults}
        if any(w % config["num_heads"] for w in widths):
            raise ArgumentError("num_heads", f"{config['num_heads']} heads must divide every width {sorted(widths)}")
    else:
        if config["hidden"] % config["num_heads"]:
            raise ArgumentError("num_heads", f"{config['num_heads']} heads must divide hidden = {config['hidden']}")
        if config["pos_embedding"] not in ("learned", "sincos"):
            raise ArgumentError("pos_embedding", f"expected 'learned' or 'sincos', got {config['pos_embedding']!r}")
        if config["pos_embedding"] == "sincos" and config["hidden"] % 4:
            raise ArgumentError("hidden", f"sin-cos positions need a multiple of 4, got {config['hidden']}")
    # the PIFS partition (the DiT's tokens) must tile the image (raises naming patch_size)
    patch_layout(shape, config["patch_size"])


def model_from_config(config: dict) -> nn.Module:
    """Rebuild the module described by a ``config`` of :func:`make_model` (e.g. read from JSON).

    Raises:
      ValueError: naming ``config`` (unknown model or missing/unknown fields) or the invalid field.
    """
    if not isinstance(config, dict) or config.get("name") not in MODEL_NAMES:
        raise ArgumentError("config", f"expected a dict with 'name' in {MODEL_NAMES}, got {config!r}")
    name = config["name"]
    fields = set(_HYPER[(name, "quick")]) | {"name", "size", "image_shape", "patch_size"}
    if set(config) != fields:
        missing, unknown = sorted(fields - set(config)), sorted(set(config) - fields)
        raise ArgumentError("config", f"fields do not match a {name!r} model (missing {missing}, unknown {unknown})")
    _check_config(name, config)
    kwargs = {
        k: (tuple(int(v) for v in config[k]) if k in _TUPLE_FIELDS else config[k])
        for k in config
        if k not in ("name", "size")
    }
    if name == "unet":
        kwargs.pop("patch_size")  # the analysis partition; not part of the UNet's architecture
        return UNet(**kwargs)
    return PatchTransformer(**kwargs)


def make_model(
    name: str,
    *,
    image_shape: Any = None,
    patch_size: int | None = None,
    size: str = "quick",
    **overrides: Any,
) -> tuple[nn.Module, dict]:
    """A named network and its JSON-native configuration.

    Args:
      name: ``"unet"`` or ``"dit"``.
      image_shape: ``(H, W, C)``; default ``(16, 16, 3)`` for ``quick``, ``(32, 32, 3)`` for ``full``.
      patch_size: PIFS patch side ``p`` (the DiT's token size); default 4 (quick) / 8 (full).
      size: ``"quick"`` or ``"full"`` (see the module docstring).
      **overrides: hyper-parameters replacing the size's defaults (UNet: ``channels``,
        ``channel_mults``, ``num_res_blocks``, ``attention_resolutions``, ``num_heads``,
        ``groups``; DiT: ``hidden``, ``depth``, ``num_heads``, ``mlp_ratio``, ``pos_embedding``).

    Returns:
      ``(module, config)``; ``config`` holds ``name``, ``size``, ``image_shape``, ``patch_size`` and
      every hyper-parameter as JSON types (``json.loads(json.dumps(config)) == config``), and
      ``model_from_config(config)`` rebuilds an equal module.

    Raises:
      ValueError: naming ``name``, ``size``, an unknown override, ``image_shape`` (e.g. not a
        multiple of the UNet's downsampling factor, with the expected shape) or ``patch_size``
        (does not tile the image). All checks run before any tracing.

    Example::

      module, config = make_model("dit", size="full")       # 32x32x3, 16 patches of 192
      params = init_params(module, jax.random.key(0))
    """
    if name not in MODEL_NAMES:
        raise ArgumentError("name", f"expected one of {MODEL_NAMES}, got {name!r}")
    if size not in MODEL_SIZES:
        raise ArgumentError("size", f"expected one of {MODEL_SIZES}, got {size!r}")
    hyper = dict(_HYPER[(name, size)])
    unknown = sorted(set(overrides) - set(hyper))
    if unknown:
        raise ArgumentError(
            "overrides", f"unknown hyper-parameter(s) {unknown} for {name!r}; expected some of {sorted(hyper)}"
        )
    hyper.update(overrides)
    if image_shape is None:
        image_shape = _DEFAULT_IMAGE_SHAPE[size]
    try:
        image_shape = [int(s) for s in image_shape]
    except TypeError as err:
        raise ArgumentError("image_shape", f"expected (H, W, C), got {image_shape!r}") from err
    config = {
        "name": name,
        "size": size,
        "image_shape": image_shape,
        "patch_size": _DEFAULT_PATCH_SIZE[size] if patch_size is None else patch_size,
        **{k: _jsonable(v) for k, v in hyper.items()},
    }
    return model_from_config(config), config

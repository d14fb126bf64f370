"""Trainable noise predictors (flax linen): a small DDPM-style UNet and a PIFS-patch transformer.

Why flax linen: docs/design-choices.md.

Architectures are specs (:mod:`pifs_jax.models.specs`): frozen dataclasses of hyper-parameters,
registered by name, that validate themselves and build the flax module::

    spec = DiTSpec.preset("quick")                      # or UNetSpec(channels=32, ...), a user spec
    module = spec.build((16, 16, 3))                    # an EpsModule
    spec_from_dict(spec.to_dict()) == spec              # what a training run records and reloads

The interface shared by every network (:class:`~pifs_jax.models.common.EpsModule`; binding for
training, checkpoints and experiments)::

    module, config = make_model("unet" | "dit", image_shape=(16, 16, 3), size="quick")
    params = init_params(module, key)
    eps = module.apply({"params": params}, x, t)                         # x (B,H,W,C), t (B,) int32
    eps, attn = module.apply({"params": params}, x, t, return_attention=True)   # same eps, bitwise
    eps_fn = as_eps_fn(module, params)              # one sample, for ddim_chain; a pytree (params traced)
    module = model_from_config(config)                                   # rebuild from a checkpoint

``t`` is the raw integer timestep ``1..T`` of this package (``alpha_bar[t]``), embedded with
the DDPM sinusoid; ``attn`` maps layer names to weights ``(B, heads, queries, keys)``.

Presets (``size``, :meth:`ModelSpec.preset`):

- ``"quick"``: 16x16 RGB, trains on a 2-core CPU in minutes. UNet: ``c = 16``, mults ``(1, 2)``,
  one ResBlock per level, 4 GroupNorm groups, attention at the 8x8 middle (64 tokens): 165,587
  parameters, 0.92 GFLOP per forward pass at batch 32. DiT: ``p = 4`` (``M = 16`` patches of
  ``n_k = 48``), ``D = 64``, depth 3, 4 heads, the 16-feature convolutional decoder: 264,259 parameters (247,984
  with the linear decoder, ``decoder_features = 0``), 0.18 GFLOP at batch 32.
- ``"full"``: 32x32 RGB for a GPU. UNet: ``c = 64``, mults ``(1, 2, 2)``, two ResBlocks per
  level, 32 groups, attention at 16x16 and at the 8x8 middle (as DDPM's CIFAR-10 net at half
  width and one level less): 6.47M parameters. DiT:
  ``p = 8`` (``M = 16`` patches of ``n_k = 192``: the paper's CIFAR-10 geometry), ``D = 256``,
  depth 6, 8 heads, the 16-feature decoder: 7.68M parameters.

``patch_size`` is the PIFS partition the model is analysed with; for the DiT it is also the
token size. Its default is 4 (quick) or 8 (full).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from pifs_jax.errors import ArgumentError
from pifs_jax.models.common import (
    EpsModule,
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
    DiffusersUNetSpec,
    LoadedDiffusersUNet,
    load_diffusers_unet,
    seeded_diffusers_weights,
    write_random_diffusers_unet,
)
from pifs_jax.models.dit import DiTSpec, PatchTransformer
from pifs_jax.models.specs import (
    ModelSpec,
    check_image_shape,
    register_spec,
    registered_specs,
    spec_class,
    spec_from_dict,
)
from pifs_jax.models.unet import UNet, UNetSpec
from pifs_jax.patches import patch_layout

__all__ = [
    "MODEL_NAMES",
    "MODEL_SIZES",
    "DiTSpec",
    "DiffusersUNet2D",
    "DiffusersUNetSpec",
    "EpsModule",
    "LoadedDiffusersUNet",
    "ModelSpec",
    "PatchTransformer",
    "SelfAttention",
    "TimeEmbedding",
    "UNet",
    "UNetSpec",
    "as_eps_fn",
    "attention_entropy",
    "count_params",
    "init_params",
    "load_diffusers_unet",
    "make_model",
    "model_from_config",
    "register_spec",
    "registered_specs",
    "seeded_diffusers_weights",
    "sinusoidal_embedding",
    "spec_class",
    "spec_from_dict",
    "write_random_diffusers_unet",
]

#: The package's trainable architectures (registered specs with presets), for ``pifs-jax train --model``.
MODEL_NAMES = tuple(name for name in registered_specs() if spec_class(name).PRESETS)
#: Their presets (:meth:`ModelSpec.preset`).
MODEL_SIZES = ("quick", "full")

_DEFAULT_IMAGE_SHAPE = {"quick": (16, 16, 3), "full": (32, 32, 3)}
_CONFIG_KEYS = ("name", "size", "image_shape", "patch_size")


def model_from_config(config: dict) -> EpsModule:
    """Rebuild the module described by a ``config`` of :func:`make_model` (e.g. read from JSON).

    ``config`` holds ``name`` (a registered spec), ``size``, ``image_shape``, ``patch_size`` and
    every field of the spec.

    Args:
      config: the configuration, a dict (the spec's optional fields may be left out).

    Returns:
      the network (:class:`~pifs_jax.models.common.EpsModule`) the spec builds for ``image_shape``.

    Raises:
      ArgumentError: naming ``config`` (unknown model or missing/unknown fields), ``image_shape``,
        ``patch_size`` (does not tile the image) or the invalid field.
    """
    if not isinstance(config, dict) or config.get("name") not in registered_specs():
        raise ArgumentError("config", f"expected a dict with 'name' in {registered_specs()}, got {config!r}")
    cls = spec_class(config["name"])
    spec_fields = {f.name for f in dataclasses.fields(cls)}
    fields = spec_fields | set(_CONFIG_KEYS)
    missing, unknown = sorted(fields - set(config) - set(cls.OPTIONAL_FIELDS)), sorted(set(config) - fields)
    if missing or unknown:
        raise ArgumentError(
            "config", f"fields do not match a {config['name']!r} model (missing {missing}, unknown {unknown})"
        )
    shape = check_image_shape(config["image_shape"])
    spec = cls.from_fields({k: v for k, v in config.items() if k in spec_fields})
    spec.validate(shape)
    patch_layout(shape, config["patch_size"])  # the PIFS partition must tile the image (raises naming patch_size)
    return spec.build(shape)


def make_model(
    name: str,
    *,
    image_shape: Any = None,
    patch_size: int | None = None,
    size: str = "quick",
    **overrides: Any,
) -> tuple[EpsModule, dict]:
    """A preset network and its JSON-native configuration (a shortcut for :meth:`ModelSpec.preset` and ``build``).

    Args:
      name: ``"unet"`` or ``"dit"`` (:data:`MODEL_NAMES`).
      image_shape: ``(H, W, C)``; default ``(16, 16, 3)`` for ``quick``, ``(32, 32, 3)`` for ``full``.
      patch_size: PIFS patch side ``p`` (the DiT's token size); default 4 (quick) / 8 (full).
      size: ``"quick"`` or ``"full"`` (see the module docstring).
      **overrides: spec fields replacing the preset's (UNet: ``channels``, ``channel_mults``,
        ``num_res_blocks``, ``attention_resolutions``, ``num_heads``, ``groups``; DiT:
        ``hidden``, ``depth``, ``num_heads``, ``mlp_ratio``, ``pos_embedding``, ``decoder_features``,
        ``input_skip``).

    Returns:
      ``(module, config)``; ``config`` holds ``name``, ``size``, ``image_shape``, ``patch_size`` and
      the spec's fields (:meth:`ModelSpec.fields`) as JSON types (``json.loads(json.dumps(config)) == config``), and
      ``model_from_config(config)`` rebuilds an equal module.

    Raises:
      ArgumentError: naming ``name``, ``size``, ``overrides`` (an unknown field), ``image_shape``
        (e.g. not a multiple of the UNet's downsampling factor, with the expected shape),
        ``patch_size`` (does not tile the image) or the invalid field. All checks run before any tracing.

    Example::

      module, config = make_model("dit", size="full")       # 32x32x3, 16 patches of 192
      params = init_params(module, jax.random.key(0))
    """
    if name not in MODEL_NAMES:
        raise ArgumentError("name", f"expected one of {MODEL_NAMES}, got {name!r}")
    if size not in MODEL_SIZES:
        raise ArgumentError("size", f"expected one of {MODEL_SIZES}, got {size!r}")
    cls = spec_class(name)
    preset = dict(cls.PRESETS[size])
    known = set(preset) | set(cls.OPTIONAL_FIELDS)
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ArgumentError(
            "overrides", f"unknown hyper-parameter(s) {unknown} for {name!r}; expected some of {sorted(known)}"
        )
    shape = check_image_shape(_DEFAULT_IMAGE_SHAPE[size] if image_shape is None else image_shape)
    default_patch = 4 if size == "quick" else 8
    patch_size = default_patch if patch_size is None else patch_size
    spec = cls.from_fields({**cls.preset(size, patch_size=patch_size).fields(), **overrides})
    config = {"name": name, "size": size, "image_shape": list(shape), "patch_size": patch_size, **spec.fields()}
    return model_from_config(config), config

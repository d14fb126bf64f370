"""Named training recipes: :data:`RECIPES`, :func:`recipe` and :func:`recipe_fingerprint`.

A recipe is a complete :class:`~pifs_jax.models.training.config.TrainConfig` under a name: the
data set and its split, the architecture (field by field, or a preset whose resolved fields are
part of the fingerprint, so that editing a preset cannot silently change what a recipe trains),
the schedule, the optimiser, the steps and the seed. ``pifs-jax train --recipe NAME`` trains exactly it, and a shipped model
(:mod:`pifs_jax.models.pretrained`) carries the fingerprint of the recipe it was trained with.

The values of each recipe are one dict literal in :data:`_VALUES` (edit the numbers there);
``description`` is the one line :func:`~pifs_jax.models.pretrained.list_pretrained` shows, every
other key a :class:`TrainConfig` field. Editing a recipe changes its fingerprint: the shipped
model of that name then no longer matches it (tests/test_pretrained.py fails) until it is
retrained and exported again.

Fingerprint: :func:`recipe_fingerprint` is the sha256 of the canonical JSON (sorted keys, no
spaces) of ``config.resolved().identity()`` (the fields a checkpoint identifies a run by: all but
the run-control fields ``checkpoint_every``, ``log_every``, ``num_samples``, ``devices``) and of
the resolved architecture (every field of ``config.model_spec()``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

from pifs_jax.errors import ArgumentError
from pifs_jax.models.training.config import TrainConfig

__all__ = ["RECIPES", "Recipe", "recipe", "recipe_fingerprint"]


class Recipe(NamedTuple):
    """A named training configuration.

    Attributes:
      name: the registry key (also the name its trained model ships under).
      description: one line for listings.
      config: the complete, resolved :class:`TrainConfig`.
    """

    name: str
    description: str
    config: TrainConfig


# One dict literal per recipe: edit the numbers here. dit-digits and dit-photos16 were chosen by
# measurement (training_curve; dit-digits: a constant learning rate after warm-up with EMA
# weights; dit-photos16: the cosine decay over 16,000 steps of batch 128, which measured better at
# 4,000 steps than a constant rate); unet-photos16: the same schedule over 8,000 steps (its
# measured throughput, about 500 images/s on two cores, bounds the CPU budget); dit-photos32: the
# same schedule over 12,000 steps, width 192 and depth 3 (about 310 images/s on two cores: 83
# minutes). The width must not be below the token's 192 coordinates: a 128-wide DiT (415 images/s)
# stalled at an eps-MSE of 0.37, about the 64 of 192 directions its embedding drops (1 - 128/192).
# At width 192 without input_skip, 3,000 steps left an eps-MSE floor of 0.014 at every t >= 700
# (dit-photos16: 0.0002 at t = 1000), an x0 error of 18 at t = 1000 and 50-step samples of range
# +-150: a token exactly as wide as the model does not carry the identity eps ~ x_t that high
# noise needs, so this recipe adds the learned skip gamma(t) x (PatchTransformer.input_skip).
_VALUES: dict[str, dict[str, Any]] = {
    "dit-photos16": dict(
        description="patch transformer (DiT, 4x4 tokens = the PIFS patches) on 16x16 photo crops",
        model="dit",
        size="quick",  # the preset's fields are part of the fingerprint (recipe_fingerprint)
        architecture=None,
        data="photos16",
        num_train=4096,
        num_test=1024,
        data_seed=0,
        patch_size=4,
        steps=16_000,
        batch_size=128,
        lr=2e-3,
        warmup_steps=200,
        lr_decay="cosine",
        weight_decay=1e-4,
        grad_clip=1.0,
        weighting="uniform",
        min_snr_gamma=5.0,
        mu=0.0,
        probes=1,
        ema_decay=0.999,
        seed=0,
        schedule="linear",
        T=1000,
        sample_steps=50,
        checkpoint_every=2000,
        num_samples=0,
    ),
    "unet-photos16": dict(
        description="DDPM-style UNet on 16x16 photo crops (PIFS patches 4x4)",
        model="unet",
        size=None,
        architecture=dict(
            channels=16, channel_mults=[1, 2], num_res_blocks=1, attention_resolutions=[], num_heads=1, groups=4
        ),
        data="photos16",
        num_train=4096,
        num_test=1024,
        data_seed=0,
        patch_size=4,
        steps=8000,
        batch_size=128,
        lr=2e-3,
        warmup_steps=200,
        lr_decay="cosine",
        weight_decay=1e-4,
        grad_clip=1.0,
        weighting="uniform",
        min_snr_gamma=5.0,
        mu=0.0,
        probes=1,
        ema_decay=0.999,
        seed=0,
        schedule="linear",
        T=1000,
        sample_steps=50,
        checkpoint_every=1000,
        num_samples=0,
    ),
    "dit-digits": dict(
        description="small patch transformer (DiT, 2x2 tokens) on 8x8 digits",
        model="dit",
        size=None,
        architecture=dict(
            patch_size=2, hidden=64, depth=3, num_heads=4, mlp_ratio=4, pos_embedding="learned", decoder_features=16
        ),
        data="digits",
        num_train=1437,
        num_test=360,
        data_seed=0,
        patch_size=2,
        steps=20_000,
        batch_size=128,
        lr=1e-3,
        warmup_steps=200,
        lr_decay="constant",
        weight_decay=1e-4,
        grad_clip=1.0,
        weighting="uniform",
        min_snr_gamma=5.0,
        mu=0.0,
        probes=1,
        ema_decay=0.999,
        seed=0,
        schedule="linear",
        T=1000,
        sample_steps=50,
        checkpoint_every=1000,
        num_samples=0,
    ),
    "dit-photos32": dict(
        description="patch transformer (DiT, 8x8 tokens: the paper's 16 patches of 192) on 32x32 photo crops",
        model="dit",
        size=None,
        architecture=dict(
            patch_size=8,
            hidden=192,
            depth=3,
            num_heads=4,
            mlp_ratio=4,
            pos_embedding="learned",
            decoder_features=16,
            input_skip=True,
        ),
        data="photos32",
        num_train=8192,
        num_test=2048,
        data_seed=0,
        patch_size=8,
        steps=12_000,
        batch_size=128,
        lr=2e-3,
        warmup_steps=200,
        lr_decay="cosine",
        weight_decay=1e-4,
        grad_clip=1.0,
        weighting="uniform",
        min_snr_gamma=5.0,
        mu=0.0,
        probes=1,
        ema_decay=0.999,
        seed=0,
        schedule="linear",
        T=1000,
        sample_steps=50,
        checkpoint_every=500,
        num_samples=0,
    ),
}


def _build(name: str, values: Mapping[str, Any]) -> Recipe:
    fields = dict(values)
    description = str(fields.pop("description"))
    return Recipe(name, description, TrainConfig(**fields).resolved())


#: The recipes by name (read-only). ``RECIPES[name].config`` is the :class:`TrainConfig`.
RECIPES: Mapping[str, Recipe] = MappingProxyType({name: _build(name, values) for name, values in _VALUES.items()})


def recipe(name: str) -> TrainConfig:
    """The :class:`TrainConfig` of the recipe ``name`` (a key of :data:`RECIPES`).

    Args:
      name: the recipe's name (e.g. ``"dit-digits"``).

    Returns:
      the recipe's :class:`TrainConfig`.

    Raises:
      ArgumentError: (``name``) an unknown recipe, listing the known ones.

    Example:
      >>> recipe("dit-digits").data
      'digits'
    """
    if not isinstance(name, str) or name not in RECIPES:
        raise ArgumentError("name", f"unknown recipe {name!r}; expected one of {', '.join(RECIPES)}")
    return RECIPES[name].config


def recipe_fingerprint(config: TrainConfig) -> str:
    """The sha256 (hex) of the canonical JSON of ``config.resolved().identity()`` and the resolved architecture.

    Two configs have the same fingerprint exactly when a checkpoint of one would be accepted as
    the other's (run-control fields such as ``checkpoint_every`` do not count) and they build the
    same architecture: the spec's every field (``config.model_spec().to_dict()``) is hashed too,
    so a recipe that names a preset (``size="quick"``) changes its fingerprint when the preset is
    edited. Tuples and lists serialise alike, so a config read back from ``config.json`` has its
    recipe's fingerprint.

    Args:
      config: the training configuration.

    Returns:
      the hex digest, 64 characters.

    Raises:
      ArgumentError: (``config``) not a :class:`TrainConfig`.
    """
    if not isinstance(config, TrainConfig):
        raise ArgumentError("config", f"expected a TrainConfig, got {type(config).__name__}")
    resolved = config.resolved()
    architecture = resolved.model_spec().to_dict() if resolved.model is not None else None
    document = {"identity": resolved.identity(), "architecture_resolved": architecture}
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()

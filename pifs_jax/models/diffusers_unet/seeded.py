"""Seeded random ``UNet2DModel`` weights and model folders, for tests and examples without downloads.

:func:`seeded_diffusers_weights` is a fixed function of ``seed`` and the sorted state-dict keys
and shapes, reproducible without torch; the test fixtures fill diffusers' own ``UNet2DModel``
with the same values (``tests/fixtures/make_diffusers_reference.py``), so the two networks can be
compared output for output. :func:`write_random_diffusers_unet` writes a loadable folder.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pifs_jax.models.diffusers_unet.config import CONFIG_FILE_NAME, UNet2DConfig, read_unet_config
from pifs_jax.models.diffusers_unet.convert import diffusers_weight_shapes
from pifs_jax.models.diffusers_unet.weights import SAFETENSORS_NAME
from pifs_jax.results import atomic_write_text

__all__ = ["DDPM_SCHEDULER_CONFIG", "seeded_diffusers_weights", "write_random_diffusers_unet"]

#: The scheduler config of the ``google/ddpm-*`` pipelines (DDPM's linear betas, 1000 steps).
DDPM_SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "DDPMScheduler",
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "num_train_timesteps": 1000,
    "clip_sample": True,
    "prediction_type": "epsilon",
    "variance_type": "fixed_small",
}


def seeded_diffusers_weights(config: UNet2DConfig | Mapping[str, Any], seed: int = 0) -> dict[str, np.ndarray]:
    """``{state-dict key: float32 array (torch layout)}``, a deterministic function of ``seed`` and the keys.

    One ``numpy.random.default_rng(seed)`` draws standard normals ``z`` for the keys in sorted
    order, each of its shape, and scales them like a typical initialisation:

    - conv and linear ``weight`` (2 or more dimensions): ``z / sqrt(fan_in)``,
      ``fan_in = prod(shape[1:])`` (torch layout ``(O, I, ...)``);
    - GroupNorm ``weight`` (1 dimension): ``1 + 0.1 z``;
    - every ``bias``: ``0.1 z``.

    Args:
      config: a :class:`UNet2DConfig` or a diffusers config dict (:func:`read_unet_config`).
      seed: a non-negative integer.
    """
    cfg = config if isinstance(config, UNet2DConfig) else read_unet_config(config)
    rng = np.random.default_rng(seed)
    weights = {}
    for key, shape in sorted(diffusers_weight_shapes(cfg).items()):
        z = rng.standard_normal(shape)
        if key.endswith(".bias"):
            value = 0.1 * z
        elif len(shape) >= 2:
            value = z / math.sqrt(math.prod(shape[1:]))
        else:
            value = 1.0 + 0.1 * z
        weights[key] = value.astype(np.float32)
    return weights


def write_random_diffusers_unet(
    folder: str | os.PathLike,
    config: UNet2DConfig | Mapping[str, Any],
    *,
    seed: int = 0,
    scheduler_config: Mapping[str, Any] | None = DDPM_SCHEDULER_CONFIG,
) -> Path:
    """Write a diffusers pipeline folder holding a ``UNet2DModel`` with :func:`seeded_diffusers_weights`.

    Layout (as ``DDPMPipeline.save_pretrained`` writes it)::

        folder/model_index.json
        folder/unet/config.json                                (every UNet2DModel key)
        folder/unet/diffusion_pytorch_model.safetensors
        folder/scheduler/scheduler_config.json                 (unless scheduler_config is None)

    Args:
      folder: created if missing.
      config: the architecture (a :class:`UNet2DConfig` or a diffusers config dict; keys left out
        take ``UNet2DModel``'s defaults).
      seed: seed of the weights.
      scheduler_config: the scheduler's config (default: DDPM's, :data:`DDPM_SCHEDULER_CONFIG`).

    Returns:
      ``Path(folder)``, which :func:`~pifs_jax.models.load_diffusers_unet` reads.
    """
    from safetensors.numpy import save_file

    if not isinstance(config, UNet2DConfig):
        config = read_unet_config({"_class_name": "UNet2DModel", **dict(config)})
    folder = Path(folder)
    (folder / "unet").mkdir(parents=True, exist_ok=True)
    index: dict[str, Any] = {"_class_name": "DDPMPipeline", "unet": ["diffusers", "UNet2DModel"]}
    atomic_write_text(folder / "unet" / CONFIG_FILE_NAME, json.dumps(config.to_diffusers(), indent=2) + "\n")
    save_file(seeded_diffusers_weights(config, seed), str(folder / "unet" / SAFETENSORS_NAME))
    if scheduler_config is not None:
        (folder / "scheduler").mkdir(exist_ok=True)
        atomic_write_text(
            folder / "scheduler" / "scheduler_config.json", json.dumps(dict(scheduler_config), indent=2) + "\n"
        )
        index["scheduler"] = ["diffusers", str(scheduler_config.get("_class_name", "DDPMScheduler"))]
    atomic_write_text(folder / "model_index.json", json.dumps(index, indent=2) + "\n")
    return folder

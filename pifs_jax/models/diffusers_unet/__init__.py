"""Pretrained diffusers ``UNet2DModel`` checkpoints (``google/ddpm-*``) in flax, without PyTorch.

::

    loaded = load_diffusers_unet("ddpm-cifar10-32")          # a pipeline or model folder
    eps = loaded.eps_fn(x, t)                                 # x (32, 32, 3) in [-1, 1], t in 1..T
    x0 = pifs_jax.ddim_chain(loaded.eps_fn, loaded.schedule, x_T, grid=loaded.sampling_grid(50))

One concept per module: :mod:`~pifs_jax.models.diffusers_unet.config` (the checked
``config.json``), :mod:`~pifs_jax.models.diffusers_unet.modules` (the flax network),
:mod:`~pifs_jax.models.diffusers_unet.convert` (state-dict names and layouts),
:mod:`~pifs_jax.models.diffusers_unet.weights` (the weight file, read and checked),
:mod:`~pifs_jax.models.diffusers_unet.load` (the folder),
:mod:`~pifs_jax.models.diffusers_unet.spec` (the registered architecture spec) and
:mod:`~pifs_jax.models.diffusers_unet.seeded` (seeded random weights and folders, for tests and
examples). docs/guides/diffusers-models.md walks through loading, sampling and analysis.
"""

from pifs_jax.models.diffusers_unet.config import UNet2DConfig, read_unet_config
from pifs_jax.models.diffusers_unet.convert import diffusers_to_flax, diffusers_weight_shapes, flax_to_diffusers
from pifs_jax.models.diffusers_unet.load import LoadedDiffusersUNet, load_diffusers_unet
from pifs_jax.models.diffusers_unet.modules import DiffusersUNet2D, diffusers_timestep_embedding
from pifs_jax.models.diffusers_unet.seeded import seeded_diffusers_weights, write_random_diffusers_unet
from pifs_jax.models.diffusers_unet.spec import DiffusersUNetSpec

__all__ = [
    "DiffusersUNet2D",
    "DiffusersUNetSpec",
    "LoadedDiffusersUNet",
    "UNet2DConfig",
    "diffusers_timestep_embedding",
    "diffusers_to_flax",
    "diffusers_weight_shapes",
    "flax_to_diffusers",
    "load_diffusers_unet",
    "read_unet_config",
    "seeded_diffusers_weights",
    "write_random_diffusers_unet",
]

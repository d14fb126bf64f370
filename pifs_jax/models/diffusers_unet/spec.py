"""The diffusers ``UNet2DModel`` architecture as a registered spec (``"diffusers_unet2d"``).

:class:`DiffusersUNetSpec` is a :class:`~pifs_jax.models.diffusers_unet.config.UNet2DConfig`
(same fields, same checks) that :func:`~pifs_jax.models.specs.spec_from_dict` finds by name and
that builds the flax :class:`~pifs_jax.models.diffusers_unet.modules.DiffusersUNet2D`, so a run
trained on this architecture records it and reloads it like the package's own networks. No
presets: a diffusers architecture comes from its ``config.json``::

    spec = DiffusersUNetSpec.from_config(read_unet_config("ddpm-cifar10-32"))
    module = spec.build((32, 32, 3))
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import ClassVar

from pifs_jax.models.diffusers_unet.config import UNet2DConfig
from pifs_jax.models.diffusers_unet.modules import DiffusersUNet2D
from pifs_jax.models.specs import register_spec

__all__ = ["DiffusersUNetSpec"]


@register_spec
@dataclasses.dataclass(frozen=True)
class DiffusersUNetSpec(UNet2DConfig):
    """A :class:`UNet2DConfig` registered as ``"diffusers_unet2d"`` that builds :class:`DiffusersUNet2D`."""

    NAME: ClassVar[str] = "diffusers_unet2d"

    @classmethod
    def from_config(cls, config: UNet2DConfig) -> DiffusersUNetSpec:
        """The spec of a checked config (:func:`~pifs_jax.models.diffusers_unet.config.read_unet_config`)."""
        return cls(**{f.name: getattr(config, f.name) for f in dataclasses.fields(UNet2DConfig)})

    def build(self, image_shape: Sequence[int]) -> DiffusersUNet2D:
        """``DiffusersUNet2D(self)`` after :meth:`validate` (``image_shape`` must fit the network)."""
        self.validate(image_shape)
        return DiffusersUNet2D(self)

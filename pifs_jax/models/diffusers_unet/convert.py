"""diffusers ``UNet2DModel`` state dicts <-> the flax parameters of :class:`DiffusersUNet2D`.

Names: a diffusers key ``a.b.N.c.weight`` is the flax path ``a / b_N / c / kernel`` (every ``.N``
list index folded into the name before it). Legacy attention keys of checkpoints written by early
diffusers releases (the ``google/ddpm-*`` ``.bin`` files among them) are renamed first, as
diffusers does on load: ``query`` -> ``to_q``, ``key`` -> ``to_k``, ``value`` -> ``to_v``,
``proj_attn`` -> ``to_out.0`` (inside ``attentions.N``).

Layouts (torch -> flax):

- conv ``weight`` ``(O, I, kh, kw)`` -> ``kernel`` ``(kh, kw, I, O)`` (``transpose(2, 3, 1, 0)``);
- linear ``weight`` ``(O, I)`` -> ``kernel`` ``(I, O)`` (``y = x W^T + b`` becomes ``y = x K + b``);
- GroupNorm ``weight`` ``(C,)`` -> ``scale``; every ``bias`` is kept as it is.

:func:`diffusers_weight_shapes` derives the expected keys and shapes from the flax module itself
(``jax.eval_shape`` of its initialisation; nothing is computed), so the check of a weight file
against its config cannot drift from the network.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from pifs_jax.models.diffusers_unet.config import UNet2DConfig
from pifs_jax.models.diffusers_unet.modules import DiffusersUNet2D

__all__ = [
    "LEGACY_ATTENTION_NAMES",
    "diffusers_to_flax",
    "diffusers_weight_shapes",
    "flax_to_diffusers",
    "rename_legacy_keys",
]

#: Early diffusers' attention parameter names -> today's (inside ``attentions.N``).
LEGACY_ATTENTION_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}

_LISTS = ("down_blocks", "up_blocks", "resnets", "attentions", "downsamplers", "upsamplers", "to_out")
_LIST_ITEM = re.compile(r"^(" + "|".join(_LISTS) + r")_(\d+)$")
_LEGACY = re.compile(r"(\.attentions\.\d+\.)(" + "|".join(LEGACY_ATTENTION_NAMES) + r")(\.(?:weight|bias))$")


def rename_legacy_keys(keys: list[str] | Any) -> dict[str, str]:
    """``{today's key: key as stored}`` for every key (legacy attention names renamed, others kept).

    Args:
      keys: the stored state-dict keys (any iterable of strings).

    Returns:
      a dict from each key's current name (:data:`LEGACY_ATTENTION_NAMES` applied inside
      ``attentions.N``) to the key as stored.
    """
    renamed = {}
    for key in keys:
        match = _LEGACY.search(key)
        new = (
            key[: match.start()] + match.group(1) + LEGACY_ATTENTION_NAMES[match.group(2)] + match.group(3)
            if match
            else key
        )
        renamed[new] = key
    return renamed


def _flax_path_to_key(path: tuple[str, ...]) -> str:
    """``("down_blocks_1", "attentions_0", "to_out_0", "kernel")`` -> ``down_blocks.1.attentions.0.to_out.0.weight``."""
    parts = []
    for name in path[:-1]:
        match = _LIST_ITEM.match(name)
        parts.append(f"{match.group(1)}.{match.group(2)}" if match else name)
    parts.append("bias" if path[-1] == "bias" else "weight")
    return ".".join(parts)


def _torch_shape(leaf: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    if leaf == "kernel" and len(shape) == 4:
        return (shape[3], shape[2], shape[0], shape[1])
    if leaf == "kernel" and len(shape) == 2:
        return (shape[1], shape[0])
    return tuple(shape)


def _to_flax(leaf: str, value: np.ndarray) -> np.ndarray:
    if leaf == "kernel" and value.ndim == 4:
        return value.transpose(2, 3, 1, 0)
    if leaf == "kernel" and value.ndim == 2:
        return value.T
    return value


def _to_torch(leaf: str, value: np.ndarray) -> np.ndarray:
    if leaf == "kernel" and value.ndim == 4:
        return value.transpose(3, 2, 0, 1)
    if leaf == "kernel" and value.ndim == 2:
        return value.T
    return value


@functools.lru_cache(maxsize=8)
def _flax_layout(config: UNet2DConfig) -> tuple[tuple[tuple[str, ...], tuple[int, ...]], ...]:
    """``((flax path, flax shape), ...)`` of the module's parameters, from ``jax.eval_shape`` of its init."""
    module = DiffusersUNet2D(config)
    x = jax.ShapeDtypeStruct((1, *config.image_shape), jnp.float32)
    t = jax.ShapeDtypeStruct((1,), jnp.int32)
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), x, t)["params"]
    flat = jax.tree_util.tree_flatten_with_path(shapes)[0]
    return tuple((tuple(k.key for k in path), tuple(leaf.shape)) for path, leaf in flat)


def diffusers_weight_shapes(config: UNet2DConfig) -> dict[str, tuple[int, ...]]:
    """``{diffusers state-dict key: torch shape}`` of the network ``config`` describes (today's names).

    Example: the ``google/ddpm-cifar10-32`` architecture has 35,746,307 parameters in 276 tensors.

    Args:
      config: the network's :class:`~pifs_jax.models.diffusers_unet.config.UNet2DConfig`.

    Returns:
      a dict of every key to its shape (a tuple of ints) in torch layout.
    """
    return {_flax_path_to_key(path): _torch_shape(path[-1], shape) for path, shape in _flax_layout(config)}


def diffusers_to_flax(state: Mapping[str, np.ndarray], config: UNet2DConfig, *, dtype: Any = np.float32) -> dict:
    """The flax parameter tree of a diffusers state dict (today's key names, shapes already checked).

    Every array is converted to ``dtype`` (NumPy; default float32).

    Args:
      state: ``{diffusers key: array}`` in torch layouts, its keys today's names
        (:func:`rename_legacy_keys`), every key the network of ``config`` has.
      config: the network's :class:`~pifs_jax.models.diffusers_unet.config.UNet2DConfig`.
      dtype: the NumPy dtype of the parameters; default float32.

    Returns:
      the nested dict of the flax parameters (C-contiguous NumPy arrays in flax layouts).
    """
    params: dict = {}
    for path, _ in _flax_layout(config):
        value = _to_flax(path[-1], np.asarray(state[_flax_path_to_key(path)])).astype(dtype)
        node = params
        for name in path[:-1]:
            node = node.setdefault(name, {})
        node[path[-1]] = np.ascontiguousarray(value)
    return params


def flax_to_diffusers(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The diffusers state dict (today's key names, torch layouts, NumPy) of a flax parameter tree.

    Args:
      params: the nested mapping of the flax parameters of a
        :class:`~pifs_jax.models.diffusers_unet.modules.DiffusersUNet2D`.

    Returns:
      ``{diffusers key: array}``, C-contiguous NumPy arrays in torch layouts.
    """
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    state = {}
    for path, leaf in flat:
        names = tuple(k.key for k in path)
        state[_flax_path_to_key(names)] = np.ascontiguousarray(_to_torch(names[-1], np.asarray(leaf)))
    return state

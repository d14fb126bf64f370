"""A diffusers ``UNet2DModel`` config (``config.json``) read and checked, without torch or diffusers.

:func:`read_unet_config` turns the config of a diffusers ``UNet2DModel`` (a dict, a
``config.json`` file or a folder holding one) into a :class:`UNet2DConfig`: every key filled in
with ``UNet2DModel``'s default (diffusers 0.42.1) and checked, so that an architecture this package
cannot reproduce is refused by name before any weight is read.

What is supported (everything the ``google/ddpm-*`` checkpoints use):

- blocks: ``DownBlock2D``, ``AttnDownBlock2D`` (down), ``UpBlock2D``, ``AttnUpBlock2D`` (up),
  ``UNetMidBlock2D`` (middle, with or without its attention: ``add_attention``);
- the positional time embedding (``time_embedding_type: positional``) with ``flip_sin_to_cos``,
  ``freq_shift`` and ``time_embedding_dim``;
- ``downsample_padding`` 0 (pad right and bottom by one, as diffusers) or 1, ``downsample_type``
  and ``upsample_type`` ``conv``, ``norm_num_groups``, ``attn_norm_num_groups``, ``norm_eps``,
  ``attention_head_dim`` (``null``: one head as wide as the feature map), ``layers_per_block``,
  ``resnet_time_scale_shift: default``, ``center_input_sample``, ``mid_block_scale_factor``,
  ``act_fn`` ``silu`` (= ``swish``), any ``dropout`` (inference: no effect), ``out_channels``
  equal to ``in_channels`` (an eps-predictor of the image's shape).

Refused by name: any other block type (``SkipDownBlock2D``, ``ResnetDownsampleBlock2D``, ...),
``mid_block_type`` other than ``UNetMidBlock2D``, ``time_embedding_type`` ``fourier`` /
``learned``, ``resnet_time_scale_shift`` ``scale_shift``, ``downsample_type`` /
``upsample_type`` ``resnet``, class conditioning (``class_embed_type``, ``num_class_embeds``),
another ``act_fn``, ``out_channels != in_channels`` (learned-variance outputs), a config whose
``_class_name`` is not ``UNet2DModel`` (``UNet2DConditionModel``, ``AutoencoderKL``, ...) and any
key diffusers' ``UNet2DModel`` does not have (pass ``ignore=("key",)`` to accept one knowingly).
Keys starting with ``_`` (``_diffusers_version``, ``_name_or_path``, ...) are bookkeeping.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pifs_jax._validation import read_json_object
from pifs_jax.errors import ArgumentError
from pifs_jax.models.specs import ModelSpec, check_image_shape

__all__ = [
    "CONFIG_FILE_NAME",
    "DOWN_BLOCK_TYPES",
    "UNET2D_DEFAULTS",
    "UNET_CLASS_NAME",
    "UP_BLOCK_TYPES",
    "UNet2DConfig",
    "read_unet_config",
]

#: The model folder's configuration file.
CONFIG_FILE_NAME = "config.json"
#: The diffusers class whose configs are read (``_class_name``).
UNET_CLASS_NAME = "UNet2DModel"

#: Down blocks reproduced here; ``Attn*`` adds one attention layer after every resnet.
DOWN_BLOCK_TYPES = ("DownBlock2D", "AttnDownBlock2D")
#: Up blocks reproduced here.
UP_BLOCK_TYPES = ("UpBlock2D", "AttnUpBlock2D")

#: ``UNet2DModel.__init__``'s defaults in diffusers 0.42.1 (JSON types).
UNET2D_DEFAULTS: dict[str, Any] = {
    "sample_size": None,
    "in_channels": 3,
    "out_channels": 3,
    "center_input_sample": False,
    "time_embedding_type": "positional",
    "time_embedding_dim": None,
    "freq_shift": 0,
    "flip_sin_to_cos": True,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"],
    "mid_block_type": "UNetMidBlock2D",
    "up_block_types": ["AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [224, 448, 672, 896],
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "downsample_padding": 1,
    "downsample_type": "conv",
    "upsample_type": "conv",
    "dropout": 0.0,
    "act_fn": "silu",
    "attention_head_dim": 8,
    "norm_num_groups": 32,
    "attn_norm_num_groups": None,
    "norm_eps": 1e-5,
    "resnet_time_scale_shift": "default",
    "add_attention": True,
    "class_embed_type": None,
    "num_class_embeds": None,
    "num_train_timesteps": None,
}

# key -> the only values reproduced here (a key not listed takes any value its check allows)
_ONLY = {
    "time_embedding_type": ("positional",),
    "mid_block_type": ("UNetMidBlock2D",),
    "downsample_type": ("conv",),
    "upsample_type": ("conv",),
    "act_fn": ("silu", "swish"),
    "resnet_time_scale_shift": ("default",),
    "class_embed_type": (None,),
    "num_class_embeds": (None,),
}


@dataclasses.dataclass(frozen=True)
class UNet2DConfig(ModelSpec):
    """A checked ``UNet2DModel`` architecture (hashable: it is the flax module's only attribute).

    Attributes mirror the diffusers keys; ``image_shape = (H, W, in_channels)`` comes from
    ``sample_size``; ``attention_head_dim`` ``None`` means one head per attention layer;
    ``time_embed_dim = time_embedding_dim or 4 block_out_channels[0]``.

    A :class:`~pifs_jax.models.specs.ModelSpec`: :meth:`validate` re-reads :meth:`to_diffusers`
    with :func:`read_unet_config` (every check of a diffusers config, naming the key); the
    registered, buildable spec is its subclass
    :class:`~pifs_jax.models.diffusers_unet.spec.DiffusersUNetSpec`.
    """

    image_shape: tuple[int, int, int]
    block_out_channels: tuple[int, ...]
    down_block_types: tuple[str, ...]
    up_block_types: tuple[str, ...]
    layers_per_block: int
    attention_head_dim: int | None
    norm_num_groups: int
    attn_norm_num_groups: int | None
    norm_eps: float
    add_attention: bool
    downsample_padding: int
    flip_sin_to_cos: bool
    freq_shift: float
    time_embedding_dim: int | None
    center_input_sample: bool
    mid_block_scale_factor: float

    @property
    def in_channels(self) -> int:
        return int(self.image_shape[2])

    @property
    def time_embed_dim(self) -> int:
        """Width of the time embedding MLP, ``time_embedding_dim`` or ``4 block_out_channels[0]``."""
        return int(self.time_embedding_dim or 4 * self.block_out_channels[0])

    @property
    def downsampling_factor(self) -> int:
        """``2^(number of blocks - 1)``: image height and width must be multiples of it."""
        return 2 ** (len(self.block_out_channels) - 1)

    def heads(self, channels: int) -> tuple[int, int]:
        """``(heads, head_dim)`` of an attention layer over ``channels``, as diffusers builds it.

        ``head_dim = attention_head_dim`` (``null``: ``channels``), ``heads = channels // head_dim``.
        """
        head_dim = channels if self.attention_head_dim is None else int(self.attention_head_dim)
        return channels // head_dim, head_dim

    def validate(self, image_shape: Sequence[int] | None = None) -> None:
        """Every check of :func:`read_unet_config` on :meth:`to_diffusers`; the network runs on
        images whose ``H``, ``W`` are multiples of :attr:`downsampling_factor` with ``C = in_channels``."""
        try:
            checked = read_unet_config(self.to_diffusers())
        except TypeError:
            raise ArgumentError("spec", f"a {UNET_CLASS_NAME} field has the wrong type: {self!r}") from None
        differ = [f.name for f in dataclasses.fields(self) if getattr(checked, f.name) != getattr(self, f.name)]
        if differ:
            raise ArgumentError(
                differ[0], f"expected {getattr(checked, differ[0])!r}, got {getattr(self, differ[0])!r}"
            )
        if image_shape is not None:
            height, width, channels = check_image_shape(image_shape)
            factor = self.downsampling_factor
            if height % factor or width % factor or channels != self.in_channels:
                raise ArgumentError(
                    "image_shape",
                    f"expected (H, W, {self.in_channels}) with H, W multiples of {factor}, got {(height, width, channels)}",
                )

    def to_diffusers(self) -> dict[str, Any]:
        """The full diffusers config (every ``UNet2DModel`` key, JSON types) that describes this architecture."""
        h, w, c = self.image_shape
        return {
            "_class_name": UNET_CLASS_NAME,
            **UNET2D_DEFAULTS,
            "sample_size": h if h == w else [h, w],
            "in_channels": c,
            "out_channels": c,
            "center_input_sample": self.center_input_sample,
            "time_embedding_dim": self.time_embedding_dim,
            "freq_shift": self.freq_shift,
            "flip_sin_to_cos": self.flip_sin_to_cos,
            "down_block_types": list(self.down_block_types),
            "up_block_types": list(self.up_block_types),
            "block_out_channels": list(self.block_out_channels),
            "layers_per_block": self.layers_per_block,
            "mid_block_scale_factor": self.mid_block_scale_factor,
            "downsample_padding": self.downsample_padding,
            "attention_head_dim": self.attention_head_dim,
            "norm_num_groups": self.norm_num_groups,
            "attn_norm_num_groups": self.attn_norm_num_groups,
            "norm_eps": self.norm_eps,
            "add_attention": self.add_attention,
        }


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _positive_int(raw: Mapping[str, Any], key: str, where: str) -> int:
    value = raw[key]
    if not _is_int(value) or value < 1:
        raise ArgumentError(key, f"expected a positive integer, got {value!r}{where}")
    return int(value)


def _load(source: Mapping[str, Any] | str | os.PathLike) -> tuple[dict[str, Any], str]:
    """The raw config and `` (in 'file')`` for messages."""
    loaded, path = read_json_object(
        source,
        file_name=CONFIG_FILE_NAME,
        what="a model config",
        missing_hint=f" (a diffusers model folder holds {CONFIG_FILE_NAME} beside its weights)",
    )
    return loaded, "" if path is None else f" (in {str(path)!r})"


def read_unet_config(config: Mapping[str, Any] | str | os.PathLike, *, ignore: Iterable[str] = ()) -> UNet2DConfig:
    """Check a diffusers ``UNet2DModel`` config and fill in diffusers' defaults.

    Args:
      config: a dict, a path to ``config.json`` or a folder holding one.
      ignore: further key names to accept and ignore.

    Returns:
      The :class:`UNet2DConfig`.

    Raises:
      ArgumentError: naming the key (and the file) for a ``_class_name`` other than
        ``UNet2DModel`` or a missing one, an unsupported block type or option (the module
        docstring lists them), an unknown key, or a value of the wrong type; naming ``config``
        for a missing or unreadable file, one that is not a JSON object or is nested too deeply
        to parse.
    """
    raw, where = _load(config)
    class_name = raw.get("_class_name")
    if class_name != UNET_CLASS_NAME:
        what = "has no _class_name" if class_name is None else f"is a {class_name!r}"
        raise ArgumentError(
            "_class_name",
            f"expected a diffusers {UNET_CLASS_NAME} config; this config {what}{where}. "
            f"Only {UNET_CLASS_NAME} (the google/ddpm-* networks) is read",
        )
    ignored = set(ignore)
    unknown = sorted(k for k in raw if not k.startswith("_") and k not in UNET2D_DEFAULTS and k not in ignored)
    if unknown:
        raise ArgumentError(
            unknown[0],
            f"unknown {UNET_CLASS_NAME} config key(s) {unknown}{where}; pass "
            "ignore=(...) to accept a key that does not change the network",
        )
    merged = {**UNET2D_DEFAULTS, **{k: v for k, v in raw.items() if k in UNET2D_DEFAULTS}}
    for key, allowed in _ONLY.items():
        if merged[key] not in allowed:
            raise ArgumentError(key, f"{merged[key]!r} is not supported{where}; supported: {list(allowed)}")

    blocks = merged["block_out_channels"]
    if not isinstance(blocks, (list, tuple)) or not blocks or not all(_is_int(c) and c >= 1 for c in blocks):
        raise ArgumentError(
            "block_out_channels", f"expected a non-empty list of positive integers, got {blocks!r}{where}"
        )
    blocks = tuple(int(c) for c in blocks)
    for key, supported in (("down_block_types", DOWN_BLOCK_TYPES), ("up_block_types", UP_BLOCK_TYPES)):
        types = merged[key]
        if not isinstance(types, (list, tuple)) or len(types) != len(blocks):
            raise ArgumentError(
                key, f"expected a list of {len(blocks)} block types (one per block_out_channels), got {types!r}{where}"
            )
        for name in types:
            if name not in supported:
                raise ArgumentError(key, f"block type {name!r} is not supported{where}; supported: {list(supported)}")

    in_channels = _positive_int(merged, "in_channels", where)
    out_channels = _positive_int(merged, "out_channels", where)
    if out_channels != in_channels:
        raise ArgumentError(
            "out_channels",
            f"expected out_channels = in_channels = {in_channels} (a noise "
            f"predictor of the image's shape), got {out_channels}{where}; learned-variance "
            "outputs are not read",
        )
    size = merged["sample_size"]
    if _is_int(size) and size >= 1:
        height = width = int(size)
    elif isinstance(size, (list, tuple)) and len(size) == 2 and all(_is_int(s) and s >= 1 for s in size):
        height, width = (int(s) for s in size)
    else:
        raise ArgumentError("sample_size", f"expected a positive integer or [height, width], got {size!r}{where}")
    factor = 2 ** (len(blocks) - 1)
    if height % factor or width % factor:
        raise ArgumentError(
            "sample_size",
            f"{len(blocks)} blocks downsample by {factor}, so the sample size must be "
            f"a multiple of {factor}; got {size!r}{where}",
        )

    layers = _positive_int(merged, "layers_per_block", where)
    groups = _positive_int(merged, "norm_num_groups", where)
    bad = [c for c in blocks if c % groups]
    if bad:
        raise ArgumentError(
            "norm_num_groups", f"{groups} groups must divide every width in block_out_channels, not {bad}{where}"
        )
    attn_groups = merged["attn_norm_num_groups"]
    if attn_groups is not None:
        attn_groups = _positive_int(merged, "attn_norm_num_groups", where)
        if blocks[-1] % attn_groups:
            raise ArgumentError(
                "attn_norm_num_groups", f"{attn_groups} groups must divide the middle width {blocks[-1]}{where}"
            )
    head_dim = merged["attention_head_dim"]
    if head_dim is not None:
        head_dim = _positive_int(merged, "attention_head_dim", where)
        widths = [blocks[i] for i, t in enumerate(merged["down_block_types"]) if t.startswith("Attn")]
        widths += [blocks[::-1][i] for i, t in enumerate(merged["up_block_types"]) if t.startswith("Attn")]
        widths += [blocks[-1]] if merged["add_attention"] else []
        narrow = sorted({w for w in widths if w < head_dim})
        if narrow:
            raise ArgumentError(
                "attention_head_dim",
                f"{head_dim} is wider than the attention layer(s) over "
                f"{narrow} channels (no head would be left){where}",
            )
    padding = merged["downsample_padding"]
    if padding not in (0, 1) or isinstance(padding, bool):
        raise ArgumentError("downsample_padding", f"expected 0 or 1, got {padding!r}{where}")
    embedding_dim = merged["time_embedding_dim"]
    if embedding_dim is not None:
        embedding_dim = _positive_int(merged, "time_embedding_dim", where)
    for key in ("center_input_sample", "flip_sin_to_cos", "add_attention"):
        if not isinstance(merged[key], bool):
            raise ArgumentError(key, f"expected true or false, got {merged[key]!r}{where}")
    for key, positive in (
        ("freq_shift", False),
        ("norm_eps", True),
        ("mid_block_scale_factor", True),
        ("dropout", False),
    ):
        value = merged[key]
        if not _is_real(value) or (positive and value <= 0):
            raise ArgumentError(key, f"expected a finite{' positive' if positive else ''} number, got {value!r}{where}")
    half = blocks[0] // 2
    if half - merged["freq_shift"] == 0:
        raise ArgumentError(
            "freq_shift",
            f"{merged['freq_shift']!r} equals half the embedding width "
            f"block_out_channels[0] / 2 = {half}: the sinusoid's frequencies divide by zero{where}",
        )
    if merged["num_train_timesteps"] is not None and not _is_int(merged["num_train_timesteps"]):
        raise ArgumentError(
            "num_train_timesteps", f"expected an integer or null, got {merged['num_train_timesteps']!r}{where}"
        )
    return UNet2DConfig(
        image_shape=(height, width, in_channels),
        block_out_channels=blocks,
        down_block_types=tuple(merged["down_block_types"]),
        up_block_types=tuple(merged["up_block_types"]),
        layers_per_block=layers,
        attention_head_dim=head_dim,
        norm_num_groups=groups,
        attn_norm_num_groups=attn_groups,
        norm_eps=float(merged["norm_eps"]),
        add_attention=bool(merged["add_attention"]),
        downsample_padding=int(padding),
        flip_sin_to_cos=bool(merged["flip_sin_to_cos"]),
        freq_shift=merged["freq_shift"],
        time_embedding_dim=embedding_dim,
        center_input_sample=bool(merged["center_input_sample"]),
        mid_block_scale_factor=merged["mid_block_scale_factor"],
    )

"""The in-domain encoders' network: a small convolutional classifier, one function for NumPy and JAX.

Per data set (:data:`ENCODER_SPECS`) a stack of ``3 x 3`` convolutions (zero padding 1, ReLU,
strides as listed) brings the image to a ``4 x 4`` grid, which is **flattened** (not pooled: the
features keep where in the crop a pattern sits, so shuffled patches move them), then

``f = ReLU(W_f vec(h) + b_f)`` (the **features**, 128 numbers) and ``logits = W_c f + b_c``.

A convolution is written as an explicit ``im2col``: the nine shifted views of the padded input
are concatenated on the channel axis (order ``(dy, dx, c)``) and multiplied by the kernel
reshaped to ``(9 C_in, C_out)``, ``y = [x(dy, dx)]_{dy, dx} W + b``. The same code runs on NumPy
arrays (inference on the host, no compilation) and on JAX arrays (training, under ``jit`` and
``grad``): pass the array module as ``xp``.

Parameters are a flat ``{name: array}`` dict: ``conv{i}.kernel`` ``(3, 3, C_in, C_out)``,
``conv{i}.bias`` ``(C_out,)``, ``features.kernel`` ``(16 C_last, 128)``, ``features.bias``,
``head.kernel`` ``(128, classes)``, ``head.bias`` (the names of the safetensors files).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

__all__ = [
    "ENCODER_SPECS",
    "PHOTO_OBJECTIVE",
    "EncoderSpec",
    "encoder_features",
    "encoder_logits",
    "init_encoder_params",
]


@dataclasses.dataclass(frozen=True)
class EncoderSpec:
    """One data set's encoder: image shape, convolutions ``(channels, stride)``, feature width, classes."""

    image_shape: tuple[int, int, int]
    convs: tuple[tuple[int, int], ...]
    features: int
    classes: int
    objective: str

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Every parameter's name and shape (the layout of the weights file)."""
        h, w, c = self.image_shape
        out: dict[str, tuple[int, ...]] = {}
        for i, (channels, stride) in enumerate(self.convs):
            out[f"conv{i}.kernel"] = (3, 3, c, channels)
            out[f"conv{i}.bias"] = (channels,)
            h, w, c = (h - 1) // stride + 1, (w - 1) // stride + 1, channels
        out["features.kernel"] = (h * w * c, self.features)
        out["features.bias"] = (self.features,)
        out["head.kernel"] = (self.features, self.classes)
        out["head.bias"] = (self.classes,)
        return out


#: What the photograph encoders learn, which of the five photographs a crop comes from
#: (:data:`pifs_jax.data.PHOTO_NAMES` order; random horizontal flips), and a linear reconstruction
#: of the crop from the features (the decoder is not shipped).
PHOTO_OBJECTIVE = "source photograph (5 classes; random horizontal flips) + 10 x linear reconstruction MSE"

#: The shipped encoders (data set name -> spec); every trunk ends on a 4 x 4 grid.
ENCODER_SPECS: dict[str, EncoderSpec] = {
    "digits": EncoderSpec((8, 8, 1), ((32, 1), (32, 2)), 128, 10, "digit class (0-9)"),
    "photos16": EncoderSpec((16, 16, 3), ((32, 1), (32, 2), (32, 2)), 128, 5, PHOTO_OBJECTIVE),
    "photos32": EncoderSpec(
        (32, 32, 3),
        ((16, 1), (32, 2), (32, 2), (32, 2)),
        128,
        5,
        PHOTO_OBJECTIVE,
    ),
}


def _conv(x: Any, kernel: Any, bias: Any, stride: int, xp: Any) -> Any:
    """``3 x 3`` convolution, zero padding 1, as ``im2col`` (module notes): ``(N, H, W, C) -> (N, H', W', O)``."""
    h, w, c = x.shape[1], x.shape[2], x.shape[3]
    ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
    padded = xp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    views = [
        padded[:, dy : dy + (ho - 1) * stride + 1 : stride, dx : dx + (wo - 1) * stride + 1 : stride, :]
        for dy in range(3)
        for dx in range(3)
    ]
    return xp.concatenate(views, axis=-1) @ kernel.reshape(9 * c, -1) + bias


def encoder_features(params: dict[str, Any], spec: EncoderSpec, images: Any, *, xp: Any = np) -> Any:
    """The features ``f = ReLU(W_f vec(h) + b_f)`` of images ``(N, H, W, C)``: ``(N, spec.features)``.

    Args:
      params: the flat ``{name: array}`` parameters (module notes).
      spec: the data set's :class:`EncoderSpec`.
      images: ``(N, H, W, C)`` of ``spec.image_shape``, a NumPy or JAX array.
      xp: the array module, ``numpy`` (default) or ``jax.numpy``.

    Returns:
      the features ``(N, spec.features)``, an array of ``xp``.
    """
    h = images
    for i, (_, stride) in enumerate(spec.convs):
        h = xp.maximum(_conv(h, params[f"conv{i}.kernel"], params[f"conv{i}.bias"], stride, xp), 0)
    h = h.reshape(h.shape[0], -1)
    return xp.maximum(h @ params["features.kernel"] + params["features.bias"], 0)


def encoder_logits(params: dict[str, Any], spec: EncoderSpec, images: Any, *, xp: Any = np) -> Any:
    """The classifier's logits ``W_c f + b_c``: ``(N, spec.classes)``.

    Args:
      params: the flat ``{name: array}`` parameters (module notes).
      spec: the data set's :class:`EncoderSpec`.
      images: ``(N, H, W, C)`` of ``spec.image_shape``, a NumPy or JAX array.
      xp: the array module, ``numpy`` (default) or ``jax.numpy``.

    Returns:
      the logits ``(N, spec.classes)``, an array of ``xp``.
    """
    return encoder_features(params, spec, images, xp=xp) @ params["head.kernel"] + params["head.bias"]


def init_encoder_params(spec: EncoderSpec, seed: int) -> dict[str, np.ndarray]:
    """He-normal kernels (``N(0, 2 / fan_in)``), zero biases, float32, from ``numpy.random.default_rng(seed)``.

    Args:
      spec: the data set's :class:`EncoderSpec` (its :meth:`EncoderSpec.shapes`).
      seed: the seed of the generator.

    Returns:
      ``{name: array}``, float32 NumPy arrays of the shapes of ``spec.shapes()``.
    """
    rng = np.random.default_rng(seed)
    params = {}
    for name, shape in spec.shapes().items():
        if name.endswith(".bias"):
            params[name] = np.zeros(shape, np.float32)
        else:
            fan_in = int(np.prod(shape[:-1]))
            params[name] = (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
    return params

"""The shipped encoders' weights, read from package data and checked against their sha256.

:func:`load_encoder` reads ``weights/{data}.safetensors`` (or ``path``), refuses it with
:class:`~pifs_jax.errors.ArgumentError` naming the file when its sha256 differs from
:data:`ENCODER_SHA256` (a changed or truncated file scores nothing), checks the names and shapes
against :data:`~pifs_jax.models.encoders.network.ENCODER_SPECS`, and caches the result.
:func:`encode` maps images to features, in NumPy on the host (float32 arithmetic, float64 out),
refusing images of another shape than the data set's by name.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import safetensors.numpy

from pifs_jax.errors import ArgumentError
from pifs_jax.models.encoders.network import ENCODER_SPECS, EncoderSpec, encoder_features

__all__ = ["ENCODER_SHA256", "WEIGHTS_DIR", "Encoder", "encode", "encoder_for_shape", "load_encoder"]

#: The package's weights folder (``{data}.safetensors`` and ``training.json``).
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

#: sha256 of each shipped weights file (``python -m pifs_jax.models.encoders.train_encoders`` prints them).
ENCODER_SHA256: dict[str, str] = {
    "digits": "e5d968f75026a430834d5e33caba74e6f376cc06306fbf1e591f1714a2d76088",
    "photos16": "2c796477bcdd2dbd4b2e852c216fd11cb42f6cdc4393c08306f904dab452b5a4",
    "photos32": "47e1f562bf880da0149a7a1d604ae134f6cf6a6fb485fe9ec86bcfb7ead5d65e",
}


class Encoder(NamedTuple):
    """A loaded encoder: its data set, spec, float32 parameters, file and the file's sha256."""

    data: str
    spec: EncoderSpec
    params: dict[str, np.ndarray]
    path: Path
    sha256: str


def _check_data(data: Any) -> str:
    if data not in ENCODER_SPECS:
        raise ArgumentError(
            "data", f"expected a data set with an encoder, one of {sorted(ENCODER_SPECS)}, got {data!r}"
        )
    return data


@functools.lru_cache(maxsize=8)
def _load(data: str, path: Path) -> Encoder:
    if not path.is_file():
        raise ArgumentError("path", f"no encoder weights file {str(path)!r}")
    blob = path.read_bytes()
    digest = hashlib.sha256(blob).hexdigest()
    if digest != ENCODER_SHA256[data]:
        raise ArgumentError(
            "path",
            f"{str(path)!r} has sha256 {digest}, not the {ENCODER_SHA256[data]} recorded for the {data!r} encoder: "
            "the file was changed; reinstall the package or retrain with "
            "python -m pifs_jax.models.encoders.train_encoders (and record the new sha256)",
        )
    try:
        params = safetensors.numpy.load(blob)
    except Exception as error:  # safetensors raises its own error types for a corrupt header
        raise ArgumentError("path", f"{str(path)!r} is not a readable safetensors file: {error}") from error
    spec = ENCODER_SPECS[data]
    expected = spec.shapes()
    stored = {k: tuple(v.shape) for k, v in params.items()}
    if stored != expected:
        raise ArgumentError("path", f"{str(path)!r} holds {stored}, the {data!r} encoder needs {expected}")
    params = {k: np.asarray(v, np.float32) for k, v in params.items()}
    for value in params.values():
        value.setflags(write=False)
    return Encoder(data, spec, params, path, digest)


def load_encoder(data: str, *, path: str | os.PathLike | None = None) -> Encoder:
    """The ``data`` set's encoder (``"digits"``, ``"photos16"``, ``"photos32"``), sha256-checked, cached.

    Args:
      data: the data set.
      path: another copy of the weights file (it must still match :data:`ENCODER_SHA256`).

    Raises:
      ArgumentError: naming ``data`` (no encoder) or ``path`` (missing file, changed file: the
        message names the file and both hashes; wrong names or shapes).
    """
    data = _check_data(data)
    resolved = Path(path) if path is not None else WEIGHTS_DIR / f"{data}.safetensors"
    return _load(data, resolved.resolve())


def encoder_for_shape(image_shape: Any) -> str | None:
    """The data set whose encoder takes images of ``(H, W, C)`` ``image_shape``, or ``None``.

    Args:
      image_shape: ``(H, W, C)``, any sequence of ints.

    Returns:
      the data set's name (a key of :data:`~pifs_jax.models.encoders.network.ENCODER_SPECS`), or
      ``None`` when no encoder takes that shape.
    """
    for data, spec in ENCODER_SPECS.items():
        if tuple(image_shape) == spec.image_shape:
            return data
    return None


def encode(images: Any, *, data: str, chunk: int = 512, name: str = "images") -> np.ndarray:
    """Features ``(N, 128)`` float64 of images ``(N, H, W, C)`` (``(N, H, W)`` for one channel).

    The forward pass of :func:`~pifs_jax.models.encoders.network.encoder_features` in float32
    NumPy, ``chunk`` images at a time. The images are used as given (not clipped), in the
    data's units (``[-1, 1]``).

    Args:
      images: the images, array-like ``(N, H, W, C)`` of the encoder's image shape (``(N, H, W)``
        for a one-channel data set).
      data: the data set whose encoder is used (:func:`load_encoder`).
      chunk: the number of images per forward pass; default 512.
      name: the argument name the shape error carries; default ``"images"``.

    Returns:
      the features, float64 NumPy ``(N, 128)`` (``(0, 128)`` for no image).

    Raises:
      ArgumentError: naming ``name`` when the image shape is not the encoder's ``(H, W, C)``, or
        ``data`` / ``path`` from :func:`load_encoder`.
    """
    encoder = load_encoder(data)
    x = np.asarray(images, np.float32)
    if x.ndim == 3 and encoder.spec.image_shape[-1] == 1:
        x = x[..., None]
    if x.ndim != 4 or x.shape[1:] != encoder.spec.image_shape:
        raise ArgumentError(
            name,
            f"the {data!r} encoder takes images of shape (N, {', '.join(map(str, encoder.spec.image_shape))}), "
            f"got {x.shape}",
        )
    out = [
        encoder_features(encoder.params, encoder.spec, x[start : start + chunk]) for start in range(0, len(x), chunk)
    ]
    return np.concatenate(out).astype(np.float64) if out else np.zeros((0, encoder.spec.features))

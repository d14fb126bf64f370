"""Memory estimates checked before the work: a command that cannot fit is refused with the numbers.

The estimates are simple and stated, and meant as lower bounds (a command refused by them could
not have run; one they accept may still run out of memory):

- :func:`forward_bytes`: one image's pass through a denoiser, the bytes of the outputs of its
  matrix products and convolutions (the arrays a forward pass writes; XLA fuses the elementwise
  work between them), read from the traced program (``jax.make_jaxpr`` on abstract shapes:
  nothing is computed or allocated). For a diffusers UNet this includes every attention layer's
  ``(heads, HW, HW)`` score matrix, which grows with the fourth power of ``sample_size``.
- :func:`sampling_bytes`: ``pifs-jax sample``: ``x_T``, the samples on the device, their host
  copy and the ``.npz`` buffer (4 float32 arrays of ``num`` images), plus ``batch_size`` forward
  passes at once.
- :func:`training_bytes`: ``pifs-jax train``: ``batch_size`` forward passes kept for the
  backward pass and their gradients (factor 2), each probe of the PIFS regulariser one more
  (factor ``1 + probes``), plus 5 copies of the parameters (weights, EMA, the two AdamW moments,
  the gradient).
- :func:`analysis_bytes`: ``pifs-jax analyze``: per trajectory ``x_T`` and ``x_0`` and, per step,
  4 per-patch and 8 scalar records, on the device and on the host (factor 2), plus one
  trajectory's Jacobian ``n x n`` when the block norms are exact.

:func:`check_memory` compares an estimate with :func:`available_memory_bytes` (``MemAvailable``
of ``/proc/meminfo``, else ``os.sysconf``; on an accelerator also the device's free memory,
whichever is smaller) and raises :class:`~pifs_jax.errors.ArgumentError` naming the argument that
sets the size, with the estimate and the available memory. Where the available memory cannot be
read, nothing is checked.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from pifs_jax.errors import ArgumentError

__all__ = [
    "FLOAT_BYTES",
    "analysis_bytes",
    "available_memory_bytes",
    "check_memory",
    "format_bytes",
    "forward_bytes",
    "sampling_bytes",
    "training_bytes",
]

#: Bytes of one float32 value (images, samples and records are float32).
FLOAT_BYTES = 4

#: The primitives whose outputs :func:`forward_bytes` counts.
_WRITING_PRIMITIVES = ("dot_general", "conv_general_dilated")

_MEMINFO = Path("/proc/meminfo")


def format_bytes(count: float) -> str:
    """``count`` bytes in decimal units: ``"512 B"``, ``"3.1 MB"``, ``"30.7 GB"``, ``"52.8 TB"``.

    Args:
      count: a number of bytes.

    Returns:
      the count with one decimal in the largest unit (``kB`` to ``PB``, powers of 1000) below
      which it stays under 1000, or a whole number of ``B`` under 1000 bytes.
    """
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if count < 1000 or unit == "PB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    raise AssertionError("unreachable")


def _host_available() -> int | None:
    try:
        for line in _MEMINFO.read_text(encoding="ascii").splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError, UnicodeDecodeError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, OSError, ValueError):
        return None


def _device_available() -> int | None:
    """Free memory of JAX's first device when it is an accelerator that reports it, else ``None``."""
    try:
        device = jax.local_devices()[0]
        if device.platform == "cpu":
            return None
        stats = device.memory_stats() or {}
        return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    except (RuntimeError, KeyError, TypeError, ValueError, IndexError, AttributeError):
        return None


def available_memory_bytes() -> int | None:
    """Memory a command can still allocate, in bytes; ``None`` when it cannot be read.

    The host's ``MemAvailable`` (``/proc/meminfo``; else ``os.sysconf`` free pages), and on an
    accelerator the smaller of it and the device's ``bytes_limit - bytes_in_use``.
    """
    readings = [value for value in (_host_available(), _device_available()) if value is not None]
    return min(readings) if readings else None


def _written_bytes(jaxpr: Any) -> int:
    total = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in _WRITING_PRIMITIVES:
            for var in eqn.outvars:
                total += math.prod(var.aval.shape) * var.aval.dtype.itemsize
        for param in eqn.params.values():
            for inner in param if isinstance(param, (tuple, list)) else (param,):
                inner = getattr(inner, "jaxpr", inner)  # a ClosedJaxpr holds its Jaxpr
                if hasattr(inner, "eqns"):
                    total += _written_bytes(inner)
    return total


def forward_bytes(eps_fn: Any, image_shape: Sequence[int], dtype: Any = jnp.float32) -> int:
    """Bytes one image's pass through ``eps_fn(x, t)`` writes (module docstring), traced, not run.

    Args:
      eps_fn: the denoiser of one image (:func:`pifs_jax.models.as_eps_fn`; its parameters are
        traced as abstract values).
      image_shape: ``(H, W, C)`` of ``x``.
      dtype: the dtype of ``x``.
    """
    image = jax.ShapeDtypeStruct(tuple(int(s) for s in image_shape), dtype)
    step = jax.ShapeDtypeStruct((), jnp.int32)
    traced = jax.make_jaxpr(lambda fn, x, t: fn(x, t))(eps_fn, image, step)
    return _written_bytes(traced.jaxpr)


def sampling_bytes(*, num: int, batch_size: int, image_shape: Sequence[int], forward: int) -> int:
    """``pifs-jax sample``: 4 float32 arrays of ``num`` images and ``min(batch_size, num)`` forward passes.

    Args:
      num: the number of images sampled.
      batch_size: the images sampled at once.
      image_shape: ``(H, W, C)`` of one image.
      forward: the bytes of one image's forward pass (:func:`forward_bytes`).

    Returns:
      the estimate in bytes, ``4 num n FLOAT_BYTES + min(batch_size, num) forward`` with ``n`` the
      number of values of one image.
    """
    return 4 * num * math.prod(image_shape) * FLOAT_BYTES + min(batch_size, num) * forward


def training_bytes(*, batch_size: int, forward: int, num_params: int, probes: int = 0) -> int:
    """``pifs-jax train``: ``2 (1 + probes)`` forward passes per image of a batch and 5 copies of the parameters.

    Args:
      batch_size: the training batch size.
      forward: the bytes of one image's forward pass (:func:`forward_bytes`).
      num_params: the number of the model's parameters (float32 values).
      probes: the probes of the PIFS regulariser (default 0: none).

    Returns:
      the estimate in bytes, ``2 (1 + probes) batch_size forward + 5 num_params FLOAT_BYTES``.
    """
    return 2 * (1 + probes) * batch_size * forward + 5 * num_params * FLOAT_BYTES


def analysis_bytes(*, samples: int, steps: int, image_shape: Sequence[int], num_patches: int, exact: bool) -> int:
    """``pifs-jax analyze``: the records of ``samples`` trajectories, and a Jacobian when exact.

    Per trajectory ``2 n + steps (4 M + 8)`` float32 values, twice (device and host), and an
    ``n x n`` Jacobian when exact.

    Args:
      samples: the number of trajectories.
      steps: the steps of each trajectory.
      image_shape: ``(H, W, C)`` of one image (``n`` its number of values).
      num_patches: ``M``, the number of patches.
      exact: whether the block norms are exact (adds one ``n x n`` float32 Jacobian).

    Returns:
      the estimate in bytes.
    """
    n = math.prod(image_shape)
    per_trajectory = 2 * n + steps * (4 * num_patches + 8)
    return 2 * samples * per_trajectory * FLOAT_BYTES + (n * n * FLOAT_BYTES if exact else 0)


def check_memory(needed: int, *, argument: str, what: str) -> None:
    """Refuse (naming ``argument``) work estimated to need more than the available memory.

    Args:
      needed: the estimate in bytes (:func:`sampling_bytes`, :func:`training_bytes`, ...).
      argument: the argument (or option) that sets the size, e.g. ``"--samples"``.
      what: the work, for the message, e.g. ``"analysing 10000000 trajectories"``.

    Raises:
      ArgumentError: ``"{argument}: {what} needs an estimated X of memory, but Y is available
        ..."``. Nothing is checked when :func:`available_memory_bytes` cannot read the memory.
    """
    available = available_memory_bytes()
    if available is None or needed <= available:
        return
    raise ArgumentError(
        argument,
        f"{what} needs an estimated {format_bytes(needed)} of memory, but {format_bytes(available)} is "
        "available; make it smaller",
    )

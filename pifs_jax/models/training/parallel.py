"""Data-parallel training: the batch split over a ``data`` mesh axis, the state replicated.

With ``D`` devices (:attr:`~pifs_jax.models.training.config.TrainConfig.devices`) a training step
runs as one SPMD program over the 1-D mesh ``Mesh(devices, ("data",))``
(:func:`data_mesh`): the training set, parameters, EMA parameters, optimiser state and PRNG
key are replicated (``NamedSharding(mesh, P())``, :func:`replicate`), and the step's batch
``data[idx]`` of ``B`` images is split along its first axis (``NamedSharding(mesh, P("data"))``,
:func:`split_batch`): device ``d`` computes the loss terms and gradients of images
``[d B/D, (d+1) B/D)``, and the mean over the batch, ``L = (1/B) sum_d sum_{b in d} w_b l_b``,
becomes a cross-device all-reduce inserted by the XLA partitioner. Every random draw (``t``,
``eps``, probes) is the same as on one device (``jax_threefry_partitionable``: random bits do
not depend on the sharding), so the trajectory equals the single-device one up to the
summation order of the reductions.

Several processes (hosts): :func:`pifs_jax.sharding.initialize_processes` first; then the mesh
spans the devices of every process, each process runs the same program on the same replicated
data (every process loads the same training set from the seed), and only process 0 writes files.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from pifs_jax._validation import check_positive_int
from pifs_jax.errors import ArgumentError

__all__ = ["DATA_AXIS", "check_devices", "data_mesh", "replicate", "split_batch"]

#: Name of the mesh axis the batch is split over.
DATA_AXIS = "data"


def check_devices(devices: Any) -> int:
    """``devices`` as an int, checked against the devices JAX sees.

    Args:
      devices: the number of devices requested.

    Returns:
      ``devices`` as a Python int.

    Raises:
      ArgumentError: (``devices``) not a positive integer; more than ``jax.device_count()``
        (the message says how to get more CPU devices); with several processes, not every
        device of every process.
    """
    devices = check_positive_int(devices, name="devices")
    available = jax.device_count()
    if devices > available:
        raise ArgumentError(
            "devices",
            f"{devices} devices requested (--devices, TrainConfig.devices), but JAX sees only {available} ("
            f"{', '.join(str(d) for d in jax.devices()[:4])}{', ...' if available > 4 else ''}); on a CPU, start "
            f"Python with XLA_FLAGS=--xla_force_host_platform_device_count={devices} in the environment "
            "(it must be set before JAX initialises) to get that many host devices",
        )
    if jax.process_count() > 1 and devices != available:
        raise ArgumentError(
            "devices",
            f"a run over {jax.process_count()} processes uses every device of every process: expected "
            f"{available} (--devices {available}), got {devices}",
        )
    return devices


def data_mesh(devices: int) -> Mesh:
    """The 1-D mesh ``("data",)`` over the first ``devices`` of ``jax.devices()`` (all processes').

    Checked with :func:`check_devices`.

    Args:
      devices: the number of devices.

    Returns:
      the ``jax.sharding.Mesh`` with the one axis ``"data"``.

    Raises:
      ArgumentError: (``devices``) as :func:`check_devices`.
    """
    devices = check_devices(devices)
    return jax.make_mesh(
        (devices,), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,), devices=jax.devices()[:devices]
    )


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Every array leaf of ``tree`` as a global array replicated on all devices of ``mesh``.

    Built with ``jax.make_array_from_callback`` from this process's copy of the values (no
    communication), so it also works when the mesh spans several processes, as long as every
    process holds the same values (the same seed, the same checkpoint).

    Args:
      tree: a pytree of arrays (e.g. a training state).
      mesh: the mesh (:func:`data_mesh`).

    Returns:
      a pytree of ``tree``'s structure whose leaves are ``jax.Array`` replicated over ``mesh``.
    """
    sharding = NamedSharding(mesh, PartitionSpec())

    def place(leaf):
        host = np.asarray(jax.device_get(leaf))
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree_util.tree_map(place, tree)


def split_batch(x: jax.Array, mesh: Mesh) -> jax.Array:
    """Inside a traced function: constrain ``x``'s leading (batch) axis to be split over ``"data"``.

    ``jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P("data")))``; the batch size must
    be a multiple of the mesh size (:class:`~pifs_jax.models.training.config.TrainConfig` checks).

    Args:
      x: the batch, leading axis the batch.
      mesh: the mesh with the axis ``"data"`` (:func:`data_mesh`).

    Returns:
      ``x`` with the sharding constraint.

    Raises:
      ArgumentError: (``devices``) the batch size is not a multiple of the mesh's ``"data"`` size.
    """
    if x.shape[0] % mesh.shape[DATA_AXIS]:
        raise ArgumentError(
            "devices", f"the batch of {x.shape[0]} images does not split over {mesh.shape[DATA_AXIS]} devices"
        )
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, PartitionSpec(DATA_AXIS)))

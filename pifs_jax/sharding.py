"""Scale out on JAX's own engine: trajectories and tangent vectors sharded over devices.

Two kinds of parallel work, both with :mod:`jax.sharding` (``Mesh``, ``NamedSharding``,
``PartitionSpec``) and the XLA SPMD partitioner, so each device runs the same program on its slice:

- **A batch of trajectories** (:func:`shard_batch`, :func:`sharded_sample` for any
  :class:`pifs_jax.samplers.Sampler`, :func:`sharded_ddim_sample` for DDIM): the batch axis
  (:data:`BATCH_AXIS`) is split over a 1-D device mesh; every sample's chain is independent, so
  there is no communication except for the (replicated) denoiser, schedule and grid.
- **Leading-k chain spectra** (``pifs_jax.chain_lyapunov_spectrum(..., k=k, mesh=mesh)``): the
  ``n x p`` tangent block of the subspace iteration is split along its ``p`` columns, so the ``p``
  chain-length JVPs and VJPs (the expensive part) run in parallel; the thin QR of the block
  (``O(n p^2)``) gathers it. ``p = k + oversample`` rounded up to a multiple of the device count
  (the extra vectors only speed up convergence). The full spectrum (``k=None, mesh=mesh``) splits
  its ``n x n`` block the same way (``n`` a multiple of the device count) and gathers it for the QR.

- **Batches of spectra** (``pifs_jax.chain_lyapunov_spectra(..., mesh=batch_mesh())``): the
  starting points of many spectra split over the batch axis, each device computing the spectra of
  its trajectories.

The numbers equal the single-device ones (up to the summation order of reductions).

Batch sizes that do not divide the device count: :func:`shard_batch` raises ``ValueError``
(placement must not invent data); :func:`sharded_sample` pads the batch with copies of its
last sample, runs, and drops the padding (a valid input for any denoiser, and at most
``devices - 1`` extra chains).

Inside a compiled program, :func:`sharding_constraint` is the one spelling of the pattern:
``sharding_constraint(tree, mesh)`` replicates every array leaf (the denoiser's parameters, the
schedule, the grid), ``sharding_constraint(tree, mesh, BATCH_AXIS)`` splits every array leaf
along its leading axis (the batch in, every per-trajectory output out).

Testing on one CPU: ``XLA_FLAGS=--xla_force_host_platform_device_count=4`` must be set before
JAX initialises (a fresh process) to get 4 host devices.

Multi-host use (several processes, one per host, e.g. a GPU cluster or a TPU pod):

1. Call ``jax.distributed.initialize()`` first in every process (on Cloud TPU and SLURM it finds
   the coordinator itself; otherwise pass ``coordinator_address``, ``num_processes``,
   ``process_id``). ``jax.devices()`` then lists the devices of **all** hosts and
   ``jax.local_devices()`` this host's. :func:`initialize_processes` does this with explicit arguments and
   sets the CPU collectives to gloo, so it also works between processes on one machine; a process
   that does not join within its ``init_timeout`` (or a duplicate ``process_id``) is reported as a
   :class:`~pifs_jax.errors.ProcessGroupError` instead of JAX's silent wait and abort.
2. Build a global mesh over all devices: :func:`batch_mesh` (``jax.make_mesh`` over
   ``jax.devices()``). Every process must run the same program with the same mesh.
3. Make global arrays from per-host data: each process holds its part of the batch and calls
   ``jax.make_array_from_process_local_data(NamedSharding(mesh, P("batch")), local_batch)``
   (``jax.device_put`` of a host array only works when every process passes the same full
   array). Pass the global array to :func:`sharded_sample`; its output is a global array
   whose ``addressable_shards`` are this host's samples (gather with
   ``jax.experimental.multihost_utils.process_allgather`` if one host needs everything).
4. Eager validation (``check_denoiser``, finite checks) reads concrete values; with arrays that
   span hosts, pass ``check_finite=False`` (to :func:`sharded_sample` and to spectra) and
   validate the per-host data instead.
"""

from __future__ import annotations

import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from pifs_jax._validation import check_floating, check_positive_float, check_positive_int, is_concrete
from pifs_jax.errors import ArgumentError, NonFiniteError
from pifs_jax.grids import as_grid
from pifs_jax.rendezvous import rendezvous
from pifs_jax.samplers import DDIM, Sampler, check_denoiser, check_sampler, locate_nonfinite, sample_chain
from pifs_jax.schedules import Schedule
from pifs_jax.typing import EpsFn

__all__ = [
    "BATCH_AXIS",
    "DEFAULT_INIT_TIMEOUT",
    "JAX_CONNECT_TIMEOUT",
    "batch_mesh",
    "initialize_processes",
    "shard_batch",
    "sharded_ddim_sample",
    "sharded_sample",
    "sharding_constraint",
    "tangent_block_constraint",
]

#: Seconds :func:`initialize_processes` waits for every process of a run to join (``init_timeout``).
DEFAULT_INIT_TIMEOUT = 60.0

#: The mesh axis batches of trajectories are split over (:func:`batch_mesh`'s axis, ``"batch"``).
BATCH_AXIS = "batch"


def sharding_constraint(tree: Any, mesh: Mesh, *spec: Any) -> Any:
    """``tree`` with every array leaf constrained to ``NamedSharding(mesh, PartitionSpec(*spec))``.

    ``jax.lax.with_sharding_constraint`` leaf by leaf; leaves that are not arrays (a denoiser's
    static parts, a sampler's Python hyperparameters) pass through. ``sharding_constraint(tree,
    mesh)`` replicates; ``sharding_constraint(tree, mesh, BATCH_AXIS)`` splits the leading axis of
    every leaf over the batch axis; ``sharding_constraint(block, mesh, None, names)`` splits the
    columns of an ``n x p`` block. Meant for traced code (inside ``jit``), where the SPMD
    partitioner then runs each device's part of the program on its slice.

    Args:
      tree: any pytree; its array leaves are constrained.
      mesh: the ``jax.sharding.Mesh``.
      *spec: the entries of the ``PartitionSpec`` (mesh axis names, tuples of them, or ``None``);
        none = replicated.

    Returns:
      ``tree`` of the same structure, its array leaves constrained, the other leaves unchanged.
    """
    sharding = NamedSharding(mesh, PartitionSpec(*spec))
    return jax.tree_util.tree_map(
        lambda leaf: jax.lax.with_sharding_constraint(leaf, sharding) if eqx.is_array(leaf) else leaf, tree
    )


def batch_mesh(axis: str = BATCH_AXIS, *, devices: Any = None) -> Mesh:
    """A 1-D mesh over ``devices`` (default: all devices, of all hosts) with one axis ``axis``.

    The axis is of type ``Auto`` (the SPMD partitioner propagates shardings), which is what the
    functions of this module expect.

    Args:
      axis: the name of the mesh axis.
      devices: the devices, in order; default ``jax.devices()``.

    Returns:
      The ``jax.sharding.Mesh`` of shape ``(len(devices),)``.
    """
    devices = jax.devices() if devices is None else list(devices)
    return jax.make_mesh((len(devices),), (axis,), axis_types=(jax.sharding.AxisType.Auto,), devices=devices)


def _mesh_and_size(mesh: Mesh | None, axis: str) -> tuple[Mesh, int]:
    mesh = batch_mesh(axis) if mesh is None else mesh
    if not isinstance(mesh, Mesh):
        raise ArgumentError("mesh", f"expected a jax.sharding.Mesh, got {type(mesh).__name__}")
    if axis not in mesh.shape:
        raise ArgumentError("axis", f"{axis!r} is not an axis of the mesh (axes {tuple(mesh.axis_names)})")
    return mesh, mesh.shape[axis]


def shard_batch(x: Any, mesh: Mesh | None = None, axis: str = BATCH_AXIS) -> jax.Array:
    """Place a batch ``x`` (leading axis = samples) split over the mesh axis ``axis``.

    ``NamedSharding(mesh, PartitionSpec(axis))``: device ``d`` holds samples
    ``[d B/D, (d+1) B/D)``; the remaining axes are not split.

    Args:
      x: shape ``(B,) + sample_shape`` with ``B`` a multiple of the axis size ``D``.
      mesh: default :func:`batch_mesh` over all devices.
      axis: the mesh axis to split the batch over.

    Returns:
      The sharded array (``x.sharding.device_set`` = the mesh's devices).

    Raises:
      ArgumentError: naming ``x`` if it has no batch axis or ``B`` is not a multiple of ``D``.
    """
    mesh, size = _mesh_and_size(mesh, axis)
    x = jnp.asarray(x)
    if x.ndim < 1:
        raise ArgumentError("x", f"expected a batch with a leading axis, got shape {x.shape}")
    if x.shape[0] % size:
        raise ArgumentError(
            "x",
            f"the batch size {x.shape[0]} must be a multiple of the {size} devices on mesh axis {axis!r} "
            "(pad it, or use sharded_sample, which pads)",
        )
    return jax.device_put(x, NamedSharding(mesh, PartitionSpec(axis)))


def _sample_one(sampler, eps_fn, sched, grid, x_T, key, *, return_trajectory: bool):
    """One sample's chain, :func:`pifs_jax.samplers.sample_chain` (nothing checked: traced)."""
    return sample_chain(
        eps_fn, sched, x_T, grid=grid, sampler=sampler, key=key, return_trajectory=return_trajectory, check_finite=False
    )


@eqx.filter_jit
def _sharded_chains(sampler, eps_fn, sched, x_T, grid, keys, *, mesh: Mesh, axis: str, return_trajectory: bool):
    """The batch's chains in one program: the denoiser's arrays, schedule and grid replicated, the batch split.

    ``equinox.filter_jit``: one compilation per (static part of the denoiser and the sampler,
    mesh, axis, output kind, shapes); the denoiser's array leaves, schedule and grid are traced
    arguments. ``keys``: one PRNG key per sample (``None`` for a deterministic sampler).
    """
    eps_fn, sched, grid = sharding_constraint((eps_fn, sched, grid), mesh)
    x_T, keys = sharding_constraint((x_T, keys), mesh, axis)

    def one(x, key):
        return _sample_one(sampler, eps_fn, sched, grid, x, key, return_trajectory=return_trajectory)

    out = jax.vmap(one)(x_T, keys) if keys is not None else jax.vmap(lambda x: one(x, None))(x_T)
    return sharding_constraint(out, mesh, axis)


def sharded_sample(
    eps_fn: EpsFn,
    sched: Schedule,
    x_T: Any,
    *,
    grid: Any = None,
    sampler: Sampler | None = None,
    mesh: Mesh | None = None,
    axis: str = BATCH_AXIS,
    key: jax.Array | None = None,
    return_trajectory: bool = False,
    check_finite: bool = True,
):
    """:func:`pifs_jax.samplers.sample_batch` with the batch split over devices, for any sampler.

    Sample ``i`` runs :func:`pifs_jax.samplers.sample_chain` from ``x_T[i]`` (with the key
    ``jax.random.split(key, B)[i]`` for a stochastic sampler, as :func:`sample_batch` gives it), so
    the result equals ``sample_batch(eps_fn, sched, x_T, grid=grid, sampler=sampler, key=key)``
    up to the summation order of reductions. One ``equinox.filter_jit`` program with sharding
    constraints (:func:`sharding_constraint`): the denoiser's arrays, schedule and grid replicated,
    the batch (and its keys) split over ``axis``, the outputs split the same way. A batch size that
    is not a multiple of the device count ``D`` is padded with copies of the last sample (and its
    key) and the padding dropped from the result (then the result's layout is whatever the slice
    gives). One compilation per (static part of ``eps_fn`` and ``sampler``, mesh, grid length,
    shapes): another schedule, grid of the same length, or parameter set of a pytree denoiser
    (:func:`pifs_jax.models.as_eps_fn`) reuses it; a plain closure compiles once per closure object.

    Args:
      eps_fn: ``eps_fn(x, t)`` for one sample.
      sched: the schedule.
      x_T: shape ``(B,) + sample_shape``, floating.
      grid: sampling grid; ``None`` = every training step.
      sampler: a :class:`pifs_jax.samplers.Sampler`; default ``DDIM()``.
      mesh: default :func:`batch_mesh` over all devices.
      axis: the mesh axis the batch is split over.
      key: PRNG key of a stochastic sampler (``DDIM(eta > 0)``).
      return_trajectory: also return the trajectories, shape ``(B, N+1) + sample_shape``.
      check_finite: when called eagerly, one reduction over the result (outside the compiled
        program, whose cache is unaffected); a non-finite result raises
        :class:`pifs_jax.errors.NonFiniteError` naming the first non-finite sample and, after
        re-running that sample's chain, its first non-finite step. Pass ``False`` with arrays
        that span several hosts.

    Returns:
      ``x_0`` of shape ``(B,) + sample_shape`` (and the trajectories), sharded over ``axis``.

    Raises:
      ArgumentError: naming ``sampler``, ``x_T`` (no batch axis, or not floating), ``key``,
        ``eps_fn`` (output shape), ``grid``, ``sched``, ``mesh`` or ``axis``; ``NonFiniteError``.
    """
    return _sample_sharded(
        eps_fn, sched, x_T, grid=grid, sampler=sampler, mesh=mesh, axis=axis, key=key,
        return_trajectory=return_trajectory, check_finite=check_finite, batch_name="x_T",
    )  # fmt: skip


def sharded_ddim_sample(
    eps_fn: EpsFn,
    sched: Schedule,
    x_T_batch: Any,
    *,
    grid: Any = None,
    mesh: Mesh | None = None,
    axis: str = BATCH_AXIS,
    eta: Any = 0.0,
    key: jax.Array | None = None,
    return_trajectory: bool = False,
    check_finite: bool = True,
):
    """:func:`sharded_sample` with ``sampler=DDIM(eta)`` (deterministic DDIM by default).

    Arguments, results and errors as :func:`sharded_sample` (the batch is named ``x_T_batch``).

    Args:
      eps_fn: ``eps_fn(x, t)`` for one sample.
      sched: the schedule.
      x_T_batch: shape ``(B,) + sample_shape``, floating.
      grid: sampling grid; ``None`` = every training step.
      mesh: default :func:`batch_mesh` over all devices.
      axis: the mesh axis the batch is split over.
      eta: DDIM's ``eta`` (0 = deterministic; ``eta > 0`` needs ``key``).
      key: PRNG key, required when ``eta > 0``.
      return_trajectory: also return the trajectories, shape ``(B, N+1) + sample_shape``.
      check_finite: when called eagerly, check the result (see :func:`sharded_sample`).

    Returns:
      ``x_0`` of shape ``(B,) + sample_shape`` (and the trajectories), sharded over ``axis``.

    Raises:
      ArgumentError: naming ``x_T_batch`` (no batch axis, or not floating), ``key``, ``eps_fn``
        (output shape), ``grid``, ``sched``, ``mesh`` or ``axis``; ``NonFiniteError`` (a
        non-finite result, ``check_finite=True``).
    """
    return _sample_sharded(
        eps_fn, sched, x_T_batch, grid=grid, sampler=DDIM(eta), mesh=mesh, axis=axis, key=key,
        return_trajectory=return_trajectory, check_finite=check_finite, batch_name="x_T_batch",
    )  # fmt: skip


def _sample_sharded(eps_fn, sched, x_T, *, grid, sampler, mesh, axis, key, return_trajectory, check_finite, batch_name):
    """:func:`sharded_sample`, its batch named ``batch_name`` in errors."""
    sampler = check_sampler(DDIM() if sampler is None else sampler)
    if not isinstance(sched, Schedule):
        raise ArgumentError("sched", f"expected a pifs_jax Schedule, got {type(sched).__name__}")
    mesh, size = _mesh_and_size(mesh, axis)
    x = jnp.asarray(x_T)
    if x.ndim < 1 or x.shape[0] == 0:
        raise ArgumentError(batch_name, f"expected a non-empty batch with a leading axis, got shape {x.shape}")
    check_floating(x, name=batch_name)
    if is_concrete(x):
        check_denoiser(eps_fn, x[0])
    grid = jnp.asarray(as_grid(grid, sched.T))
    batch = x.shape[0]
    keys = None
    if sampler.needs_key:
        if key is None:
            raise ArgumentError("key", f"a PRNG key is required by the stochastic sampler {sampler!r}")
        keys = jax.random.split(key, batch)
    pad = -batch % size
    if pad:
        x = jnp.concatenate([x, jnp.repeat(x[-1:], pad, axis=0)], axis=0)
        if keys is not None:
            keys = jnp.concatenate([keys, jnp.repeat(keys[-1:], pad, axis=0)], axis=0)
    out = _sharded_chains(
        sampler, eps_fn, sched, x, grid, keys, mesh=mesh, axis=axis, return_trajectory=bool(return_trajectory)
    )
    if pad:
        out = jax.tree_util.tree_map(lambda y: y[:batch], out)
    x_0 = out[0] if return_trajectory else out
    if check_finite and is_concrete(x_0):
        finite = jnp.all(jnp.isfinite(x_0.reshape(batch, -1)), axis=1)
        if not bool(jnp.all(finite)):
            i = int(jnp.argmin(finite))  # the first non-finite sample
            error = locate_nonfinite(
                eps_fn, sched, x[i], grid=grid, sampler=sampler, key=None if keys is None else keys[i],
                trajectory=out[1][i] if return_trajectory else None, context=f"sample {i} of {batch}: ",
            )  # fmt: skip
            raise error or NonFiniteError("eps_fn", f"sample {i} of {batch}: the chain's result is not finite")
    return out


def tangent_block_constraint(mesh: Mesh):
    """``(constrain, D)`` for sharding a tangent block over all axes of ``mesh`` (``D`` devices).

    ``constrain(block)`` splits an ``n x p`` block along its ``p`` columns,
    ``constrain(block, rows=True)`` splits the leading axis (e.g. ``k`` vectors of shape
    ``(k,) + x.shape``); both via ``jax.lax.with_sharding_constraint``, so the SPMD partitioner runs
    the JVPs/VJPs of each device's vectors there. Used by
    ``chain_lyapunov_spectrum(..., mesh=mesh)``.

    Args:
      mesh: the ``jax.sharding.Mesh``; the block is split over all its axes together.

    Returns:
      ``(constrain, D)``: the function ``constrain(block, rows=False)`` and ``D = mesh.size``, the
      number of devices.

    Raises:
      ArgumentError: naming ``mesh`` when it is not a ``jax.sharding.Mesh``.
    """
    if not isinstance(mesh, Mesh):
        raise ArgumentError("mesh", f"expected a jax.sharding.Mesh, got {type(mesh).__name__}")
    names = tuple(mesh.axis_names)

    def constrain(block: jax.Array, rows: bool = False) -> jax.Array:
        return sharding_constraint(block, mesh, names) if rows else sharding_constraint(block, mesh, None, names)

    return constrain, int(mesh.size)


#: Seconds JAX's own connection may take after every process has checked in (JAX's default
#: ``initialization_timeout``): :func:`initialize_processes` never gives it less.
JAX_CONNECT_TIMEOUT = 300


def initialize_processes(
    coordinator: str, num_processes: int, process_id: int, *, init_timeout: float = DEFAULT_INIT_TIMEOUT
) -> None:
    """Join a multi-process JAX run: ``jax.distributed.initialize`` with CPU collectives over gloo.

    Call it first in every process (before any JAX computation), with the same ``coordinator``
    (``"HOST:PORT"`` of process 0, reachable from every process) and ``num_processes``, and this
    process's ``process_id`` in ``0 .. num_processes - 1``. Afterwards ``jax.devices()`` lists
    the devices of every process. On CPUs the cross-process collectives need an implementation:
    ``jax_cpu_collectives_implementation = "gloo"`` is set first (it does not affect GPUs or TPUs).

    Before JAX connects the processes, they check in with process 0
    (:func:`pifs_jax.rendezvous.rendezvous`): a process that does not come within
    ``init_timeout`` seconds, a duplicate ``process_id`` and a mismatched ``num_processes`` are
    reported in every process that is waiting, as a :class:`~pifs_jax.errors.ProcessGroupError`,
    instead of JAX's silent wait and abort (a C++ stack trace). Once every process has checked in,
    JAX's own connection gets ``max(init_timeout, JAX_CONNECT_TIMEOUT)`` seconds (its
    ``initialization_timeout``): the peers are known to be alive, and on a busy machine process 0
    can take longer than a short ``init_timeout`` to start the coordination service.

    Args:
      coordinator: ``"HOST:PORT"`` of process 0, the same in every process.
      num_processes: the number of processes, the same in every process.
      process_id: this process's id, ``0 .. num_processes - 1``.
      init_timeout: seconds to wait for every process to join.

    Raises:
      ArgumentError: naming ``coordinator`` (not ``HOST:PORT``), ``num_processes`` (not a
        positive integer), ``process_id`` (outside ``0 .. num_processes - 1``) or
        ``init_timeout`` (not a positive number).
      ProcessGroupError: the processes did not all join (see above; the message names the
        missing process ids, or the duplicate, or the coordinator that did not answer).
    """
    host, sep, port = str(coordinator).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ArgumentError("coordinator", f"expected HOST:PORT (e.g. localhost:12355), got {coordinator!r}")
    num_processes = check_positive_int(num_processes, name="num_processes")
    process_id = check_positive_int(process_id, name="process_id", minimum=0)
    if process_id >= num_processes:
        raise ArgumentError(
            "process_id", f"expected 0 .. {num_processes - 1} (num_processes = {num_processes}), got {process_id}"
        )
    init_timeout = check_positive_float(init_timeout, name="init_timeout")
    rendezvous(host.strip("[]"), int(port), num_processes, process_id, timeout=init_timeout)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator,
        num_processes=num_processes,
        process_id=process_id,
        initialization_timeout=math.ceil(max(init_timeout, JAX_CONNECT_TIMEOUT)),
    )

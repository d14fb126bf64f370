"""Training checkpoints: one self-checking file, written atomically, loaded all or nothing.

Format (version 1)::

    PIFS-JAX-CHECKPOINT 1\\n
    <header: one line of JSON {"format", "step", "payload_bytes", "config"}>\\n
    <sha256 hex digest of header line + payload>\\n
    <payload: flax.serialization msgpack of the state pytree>

The payload is :func:`flax.serialization.to_bytes` of the whole training state (parameters,
EMA parameters, optax state, step, PRNG key): msgpack stores every array's dtype, shape and
raw bytes, so a round trip is bit-exact. The file is written by
:func:`pifs_jax.results.atomic_write_bytes` (temporary file in the same folder, fsync,
``os.replace``): a process killed mid-write leaves the previous checkpoint intact.

Loading (:func:`load_checkpoint`) checks, in order, before building anything: the magic line
(not a checkpoint), the payload length (a truncated file), the digest (corruption), the
configuration (a checkpoint of another run), then the pytree structure, every leaf's shape and
dtype against the freshly initialised target. Any failure raises ``ValueError`` naming the
problem; the caller's state is never modified (a new pytree is returned), so nothing is
loaded partially.

Why not orbax-checkpoint (installed, and it works on this CPU): it writes a *directory* of
files (OCDBT/tensorstore) committed asynchronously by background threads. Its atomicity comes
from renaming a temporary directory, but it has no whole-checkpoint checksum, so detecting a
truncated or bit-flipped file would mean hashing its internal files ourselves, and a run that
is SIGKILLed (the resume test does exactly that) must not depend on threads finishing. A
single msgpack file from flax's own serialisation library, hashed with sha256 and renamed
into place, gives atomicity, integrity and exact round trips with no moving parts; the
states here (a few MB) do not need orbax's sharded, asynchronous I/O.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np

from pifs_jax.results import atomic_write_bytes, to_jsonable

__all__ = ["CHECKPOINT_NAME", "save_checkpoint", "load_checkpoint", "read_checkpoint_header"]

CHECKPOINT_NAME = "checkpoint.msgpack"
_MAGIC = b"PIFS-JAX-CHECKPOINT 1\n"
_FORMAT = 1


def _canonical(config: Mapping[str, Any]) -> dict[str, Any]:
    """JSON-normalised config (tuples -> lists, numpy scalars -> Python) for comparison."""
    return json.loads(json.dumps(to_jsonable(dict(config)), sort_keys=True))


def save_checkpoint(path: str | os.PathLike, state: Any, *, config: Mapping[str, Any]) -> Path:
    """Write ``state`` (any pytree of arrays) and ``config`` to ``path`` atomically.

    Args:
      path: the checkpoint file.
      state: e.g. a :class:`pifs_jax.models.training.TrainState`; must have a ``step`` attribute
        or key if the header should record the step (else ``-1``).
      config: JSON-able mapping identifying the run (``TrainConfig.identity()``).

    Returns:
      the path written.
    """
    state = jax.device_get(state)
    payload = flax.serialization.to_bytes(state)
    step = getattr(state, "step", None)
    if step is None and isinstance(state, Mapping):
        step = state.get("step")
    header = {
        "format": _FORMAT,
        "step": -1 if step is None else int(np.asarray(step)),
        "payload_bytes": len(payload),
        "config": _canonical(config),
    }
    header_line = json.dumps(header, sort_keys=True).encode("utf-8")
    digest = hashlib.sha256(header_line + b"\n" + payload).hexdigest().encode("ascii")
    return atomic_write_bytes(path, _MAGIC + header_line + b"\n" + digest + b"\n" + payload)


def _parse(path: Path) -> tuple[dict[str, Any], bytes]:
    """Header and payload of a checkpoint file, after the length and digest checks."""
    if not path.is_file():
        raise ValueError(f"checkpoint: no such file {str(path)!r}")
    blob = path.read_bytes()
    if not blob.startswith(_MAGIC):
        if _MAGIC.startswith(blob):
            raise ValueError(f"checkpoint: {str(path)!r} is truncated ({len(blob)} bytes, not even a header)")
        raise ValueError(f"checkpoint: {str(path)!r} is not a pifs_jax checkpoint (unexpected first bytes)")
    rest = blob[len(_MAGIC):]
    parts = rest.split(b"\n", 2)
    if len(parts) < 3:
        raise ValueError(f"checkpoint: {str(path)!r} is truncated (its header is incomplete, {len(blob)} bytes)")
    header_line, digest, payload = parts
    try:
        header = json.loads(header_line.decode("utf-8"))
        expected_bytes = int(header["payload_bytes"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as err:
        raise ValueError(f"checkpoint: {str(path)!r} has a corrupted header ({err})") from None
    if len(payload) < expected_bytes:
        raise ValueError(
            f"checkpoint: {str(path)!r} is truncated: the payload has {len(payload)} of {expected_bytes} bytes"
        )
    if len(payload) > expected_bytes:
        raise ValueError(
            f"checkpoint: {str(path)!r} is corrupted: {len(payload) - expected_bytes} bytes past the payload's end"
        )
    actual = hashlib.sha256(header_line + b"\n" + payload).hexdigest().encode("ascii")
    if actual != digest:
        raise ValueError(
            f"checkpoint: {str(path)!r} is corrupted: sha256 {actual.decode()} does not match the recorded "
            f"{digest.decode(errors='replace')[:64]}"
        )
    if header.get("format") != _FORMAT:
        raise ValueError(f"checkpoint: {str(path)!r} has format {header.get('format')!r}, this version reads {_FORMAT}")
    return header, payload


def read_checkpoint_header(path: str | os.PathLike) -> dict[str, Any]:
    """The validated header ``{"format", "step", "payload_bytes", "config"}`` of a checkpoint.

    Raises the same ``ValueError`` as :func:`load_checkpoint` for a truncated or corrupted file.
    """
    return _parse(Path(path))[0]


def _config_differences(saved: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[str]:
    keys = sorted(set(saved) | set(wanted))
    missing = object()
    return [
        f"{k} = {saved.get(k, '<absent>')!r} in the checkpoint, {wanted.get(k, '<absent>')!r} requested"
        for k in keys
        if saved.get(k, missing) != wanted.get(k, missing)
    ]


def load_checkpoint(path: str | os.PathLike, target: Any, *, config: Mapping[str, Any]) -> Any:
    """Load a checkpoint into a new pytree shaped like ``target``, after every check.

    Args:
      path: the checkpoint file.
      target: a pytree of the expected structure, shapes and dtypes (e.g. the freshly
        initialised training state); it is not modified.
      config: the configuration the checkpoint must have been written with (exact equality
        of the JSON-normalised mappings).

    Returns:
      a new pytree of ``target``'s structure holding the checkpoint's values (``jax.Array`` leaves).

    Raises:
      ValueError: the file is missing, not a checkpoint, truncated, corrupted (sha256 mismatch),
        written by another configuration (the differing fields are listed), or its pytree
        structure / a leaf's shape or dtype differs from ``target``'s. Nothing is returned then.
    """
    path = Path(path)
    header, payload = _parse(path)
    differences = _config_differences(header.get("config", {}), _canonical(config))
    if differences:
        raise ValueError(
            f"checkpoint: {str(path)!r} belongs to another configuration: " + "; ".join(differences)
        )
    target_host = jax.device_get(target)
    try:
        restored = flax.serialization.from_bytes(target_host, payload)
    except Exception as err:  # msgpack or structure errors, reported uniformly
        raise ValueError(f"checkpoint: {str(path)!r} does not match the expected state structure: {err}") from None
    want_leaves, want_tree = jax.tree_util.tree_flatten_with_path(target_host)
    got_leaves, got_tree = jax.tree_util.tree_flatten_with_path(restored)
    if want_tree != got_tree:
        raise ValueError(f"checkpoint: {str(path)!r} holds a state of another structure ({got_tree} vs {want_tree})")
    for (key_path, want), (_, got) in zip(want_leaves, got_leaves):
        want, got = np.asarray(want), np.asarray(got)
        if want.shape != got.shape or want.dtype != got.dtype:
            raise ValueError(
                f"checkpoint: {str(path)!r} leaf {jax.tree_util.keystr(key_path)} has shape {got.shape} "
                f"and dtype {got.dtype}, expected {want.shape} and {want.dtype}"
            )
    return jax.tree_util.tree_map(jnp.asarray, restored)

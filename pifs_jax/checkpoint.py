"""Checkpoints: one self-checking file, written atomically, loaded all or nothing.

The one checkpoint format of the package (training runs and schedule optimisation); why this
format and not orbax-checkpoint: docs/design-choices.md. Format (version 1)::

    PIFS-JAX-CHECKPOINT 1\\n
    <header: one line of JSON {"format", "step", "payload_bytes", "config"}>\\n
    <sha256 hex digest of header line + payload>\\n
    <payload: flax.serialization msgpack of the state pytree>

The payload is :func:`flax.serialization.to_bytes` of the state pytree (every array's dtype,
shape and raw bytes: a round trip is bit-exact), written by
:func:`pifs_jax.results.atomic_write_bytes` (temporary file, fsync, ``os.replace``).

Loading checks, in order: the magic line (not a checkpoint), the payload length (truncated),
the digest (corrupted), the configuration (another run; the differing fields are named, nested
mappings as dotted paths), then the pytree structure and every leaf's shape and dtype against
the target. A failure raises :class:`~pifs_jax.errors.ArgumentError` (argument ``checkpoint``)
naming the file and the problem; nothing is loaded partially.
"""

from __future__ import annotations

import errno
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

from pifs_jax.errors import ArgumentError, WriteError
from pifs_jax.results import atomic_write_bytes, to_jsonable

__all__ = [
    "CHECKPOINT_NAME",
    "config_differences",
    "load_checkpoint",
    "read_checkpoint",
    "read_checkpoint_header",
    "remove_partial_writes",
    "save_checkpoint",
    "write_error",
]

#: File name of a checkpoint inside a run's folder.
CHECKPOINT_NAME = "checkpoint.msgpack"
_MAGIC = b"PIFS-JAX-CHECKPOINT 1\n"
_FORMAT = 1


def _fail(detail: str) -> ArgumentError:
    return ArgumentError("checkpoint", detail)


def _canonical(config: Mapping[str, Any]) -> dict[str, Any]:
    """JSON-normalised config (tuples -> lists, numpy scalars -> Python) for comparison."""
    return json.loads(json.dumps(to_jsonable(dict(config)), sort_keys=True))


def save_checkpoint(path: str | os.PathLike, state: Any, *, config: Mapping[str, Any]) -> Path:
    """Write ``state`` (any pytree of arrays) and ``config`` to ``path`` atomically.

    Args:
      path: the checkpoint file.
      state: e.g. a :class:`pifs_jax.models.training.TrainState`; its ``step`` attribute or key
        (if any) is recorded in the header (else ``-1``).
      config: JSON-able mapping identifying the run (e.g. ``TrainConfig.identity()``).

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
        raise _fail(f"no such file {str(path)!r}")
    blob = path.read_bytes()
    if not blob.startswith(_MAGIC):
        if _MAGIC.startswith(blob):
            raise _fail(f"{str(path)!r} is truncated ({len(blob)} bytes, not even a header)")
        raise _fail(f"{str(path)!r} is not a pifs_jax checkpoint (unexpected first bytes)")
    rest = blob[len(_MAGIC) :]
    parts = rest.split(b"\n", 2)
    if len(parts) < 3:
        raise _fail(f"{str(path)!r} is truncated (its header is incomplete, {len(blob)} bytes)")
    header_line, digest, payload = parts
    try:
        header = json.loads(header_line.decode("utf-8"))
        expected_bytes = int(header["payload_bytes"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as err:
        raise _fail(f"{str(path)!r} has a corrupted header ({err})") from None
    if len(payload) < expected_bytes:
        raise _fail(f"{str(path)!r} is truncated: the payload has {len(payload)} of {expected_bytes} bytes")
    if len(payload) > expected_bytes:
        raise _fail(f"{str(path)!r} is corrupted: {len(payload) - expected_bytes} bytes past the payload's end")
    actual = hashlib.sha256(header_line + b"\n" + payload).hexdigest().encode("ascii")
    if actual != digest:
        raise _fail(
            f"{str(path)!r} is corrupted: sha256 {actual.decode()} does not match the recorded "
            f"{digest.decode(errors='replace')[:64]}"
        )
    if header.get("format") != _FORMAT:
        raise _fail(f"{str(path)!r} has format {header.get('format')!r}, this version reads {_FORMAT}")
    return header, payload


def read_checkpoint_header(path: str | os.PathLike) -> dict[str, Any]:
    """The validated header ``{"format", "step", "payload_bytes", "config"}`` of a checkpoint.

    Args:
      path: the checkpoint file.

    Returns:
      the header as a dict with keys ``"format"``, ``"step"``, ``"payload_bytes"`` and ``"config"``
      (the configuration is not checked against any other).

    Raises:
      ArgumentError: (``checkpoint``) the same as :func:`load_checkpoint` for a missing, truncated or
        corrupted file (or one of another format version).
    """
    return _parse(Path(path))[0]


def config_differences(saved: Mapping[str, Any], wanted: Mapping[str, Any], *, prefix: str = "") -> list[str]:
    """``"key = saved in the checkpoint, wanted requested"`` for every field that differs.

    Nested mappings are compared field by field and named by dotted paths (``objective.temperature``).

    Args:
      saved: the configuration recorded in the checkpoint.
      wanted: the configuration requested.
      prefix: prepended to every key named (the dotted path of the enclosing mapping; default ``""``).

    Returns:
      one line per differing field, in sorted key order (a field present in only one mapping is shown
      as ``<absent>`` in the other); empty if the configurations agree.
    """
    missing = object()
    out = []
    for key in sorted(set(saved) | set(wanted)):
        old, new = saved.get(key, missing), wanted.get(key, missing)
        if isinstance(old, Mapping) and isinstance(new, Mapping):
            out += config_differences(old, new, prefix=f"{prefix}{key}.")
        elif old != new:
            shown = ["<absent>" if v is missing else v for v in (old, new)]
            out.append(f"{prefix}{key} = {shown[0]!r} in the checkpoint, {shown[1]!r} requested")
    return out


def _check_config(path: Path, header: Mapping[str, Any], config: Mapping[str, Any]) -> None:
    differences = config_differences(header.get("config", {}), _canonical(config))
    if differences:
        raise _fail(f"{str(path)!r} belongs to another configuration: " + "; ".join(differences))


def read_checkpoint(path: str | os.PathLike, *, config: Mapping[str, Any]) -> tuple[dict[str, Any], Any]:
    """Header and the stored state as plain nested dicts of NumPy arrays (no target needed).

    After every check of :func:`load_checkpoint` that does not need a target (file, length,
    digest, configuration). For states whose shape is only known from the file (e.g. a history
    whose length is the step); :func:`load_checkpoint` then restores them into a typed target.

    Args:
      path: the checkpoint file.
      config: the configuration the checkpoint must have been written with (exact equality
        of the JSON-normalised mappings).

    Returns:
      ``(header, state)``: the validated header (as :func:`read_checkpoint_header`) and the state
      restored from the msgpack payload as nested dicts of NumPy arrays.

    Raises:
      ArgumentError: (``checkpoint``) the file is missing, not a checkpoint, truncated, corrupted,
        written by another configuration (the differing fields are listed), or its payload is
        unreadable.
    """
    path = Path(path)
    header, payload = _parse(path)
    _check_config(path, header, config)
    try:
        return header, flax.serialization.msgpack_restore(payload)
    except Exception as err:  # msgpack errors, reported uniformly
        raise _fail(f"{str(path)!r} has an unreadable payload: {err}") from None


def load_checkpoint(path: str | os.PathLike, target: Any, *, config: Mapping[str, Any]) -> Any:
    """Load a checkpoint into a new pytree shaped like ``target``, after every check.

    Args:
      path: the checkpoint file.
      target: a pytree of the expected structure, shapes and dtypes (e.g. the freshly
        initialised training state, or its ``jax.eval_shape``: ``jax.ShapeDtypeStruct`` leaves);
        it is not modified.
      config: the configuration the checkpoint must have been written with (exact equality
        of the JSON-normalised mappings).

    Returns:
      a new pytree of ``target``'s structure holding the checkpoint's values (``jax.Array`` leaves).

    Raises:
      ArgumentError: (``checkpoint``) the file is missing, not a checkpoint, truncated, corrupted
        (sha256 mismatch), written by another configuration (the differing fields are listed), or
        its pytree structure / a leaf's shape or dtype differs from ``target``'s.
    """
    path = Path(path)
    header, payload = _parse(path)
    _check_config(path, header, config)
    target_host = jax.device_get(target)
    try:
        restored = flax.serialization.from_bytes(target_host, payload)
    except Exception as err:  # msgpack or structure errors, reported uniformly
        raise _fail(f"{str(path)!r} does not match the expected state structure: {err}") from None
    want_leaves, want_tree = jax.tree_util.tree_flatten_with_path(target_host)
    got_leaves, got_tree = jax.tree_util.tree_flatten_with_path(restored)
    if want_tree != got_tree:
        raise _fail(f"{str(path)!r} holds a state of another structure ({got_tree} vs {want_tree})")
    for (key_path, want), (_, got) in zip(want_leaves, got_leaves, strict=True):
        got = np.asarray(got)
        if not isinstance(want, jax.ShapeDtypeStruct):
            want = np.asarray(want)
        if tuple(want.shape) != got.shape or np.dtype(want.dtype) != got.dtype:
            raise _fail(
                f"{str(path)!r} leaf {jax.tree_util.keystr(key_path)} has shape {got.shape} "
                f"and dtype {got.dtype}, expected {tuple(want.shape)} and {np.dtype(want.dtype)}"
            )
    return jax.tree_util.tree_map(jnp.asarray, restored)


def write_error(
    exc: OSError, written: str | os.PathLike, checkpoint: str | os.PathLike, *, argument: str = "out_dir"
) -> WriteError:
    """The :class:`~pifs_jax.errors.WriteError` for a failed write of ``written``, ``checkpoint`` the run's checkpoint.

    The message names the file, the reason (``exc``'s, e.g. ``No space left on device
    (ENOSPC)``) and the checkpoint's state: every write is atomic (:func:`save_checkpoint`), so
    the previous checkpoint is intact and the run can be resumed from its step; or none was
    written yet. Raise it ``from exc``.

    Args:
      exc: the error the write raised.
      written: the file being written (the checkpoint itself, a log, a result).
      checkpoint: the run's checkpoint file.
      argument: the argument naming the run's folder (``out_dir``: ``--out`` on the command line).
    """
    code = errno.errorcode.get(exc.errno or -1)
    reason = (exc.strerror or str(exc) or type(exc).__name__) + (f" ({code})" if code else "")
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        state = "no checkpoint was written yet: once the cause is fixed, the run starts again from step 0"
    else:
        try:
            step = read_checkpoint_header(checkpoint)["step"]
        except ArgumentError as problem:
            state = f"the checkpoint {str(checkpoint)!r} cannot be read either ({problem.detail})"
        else:
            state = (
                f"the previous checkpoint {str(checkpoint)!r} (step {step}) is intact: once the cause is fixed "
                "(a full disk: free some space), resume the run from it (resume=True; on the command line the "
                "same command with --resume)"
            )
    return WriteError(argument, f"writing {str(written)!r} failed: {reason}; {state}")


def remove_partial_writes(path: str | os.PathLike) -> None:
    """Delete the temporary files an interrupted :func:`save_checkpoint` of ``path`` left behind.

    Args:
      path: the checkpoint file; the files ``.<name>.*.tmp`` beside it are deleted (nothing
        happens if its folder does not exist).
    """
    path = Path(path)
    if path.parent.is_dir():
        for debris in path.parent.glob(f".{path.name}.*.tmp"):
            debris.unlink()

"""Result files that lose nothing: atomic writes, each stamped with config, seed and versions."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["atomic_write_bytes", "atomic_write_text", "environment_metadata", "to_jsonable", "write_result_json"]

_PACKAGES = ("jax", "jaxlib", "numpy", "optax", "flax", "chex", "optimistix", "matplotlib")


def environment_metadata() -> dict[str, Any]:
    """Package versions, Python, platform, JAX backend/devices and the x64 flag."""
    from importlib import metadata

    import jax

    versions = {}
    for name in ("pifs_jax", *_PACKAGES):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "versions": versions,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "jax_backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "x64": bool(jax.config.jax_enable_x64),  # pyright: ignore[reportAttributeAccessIssue]  # config flags are not in the stub
        "created_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }


def to_jsonable(value: Any) -> Any:
    """Recursively convert arrays, NumPy/JAX scalars, tuples and NamedTuples to JSON types.

    Non-finite floats become the strings ``"inf"``, ``"-inf"``, ``"nan"`` (strict JSON has none).

    Args:
      value: any value: mappings (keys become strings), lists, tuples, NamedTuples, arrays and
        scalars (NumPy, JAX or Python) and paths, nested arbitrarily; other values pass through.

    Returns:
      the value built of dicts, lists, strings, ints, floats, bools and ``None``: NamedTuples become
      dicts, tuples and arrays (nested) lists, 0-d arrays and NumPy scalars Python scalars, paths strings.
    """
    if hasattr(value, "_asdict"):
        return {k: to_jsonable(v) for k, v in value._asdict().items()}
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "__array__") and not isinstance(value, (str, bytes)):
        arr = np.asarray(value)
        if arr.ndim == 0:
            return to_jsonable(arr.item())
        return [to_jsonable(v) for v in arr.tolist()]
    if isinstance(value, float):
        if np.isnan(value):
            return "nan"
        if np.isinf(value):
            return "inf" if value > 0 else "-inf"
        return value
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return to_jsonable(float(value))
    if isinstance(value, Path):
        return str(value)
    return value


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically: a temporary file in the same folder, fsync, rename.

    The file gets the permissions ``0o666`` less the umask; on any error the temporary file is
    removed and ``path`` is left as it was.

    Args:
      path: the file to write (its folder is created).
      data: the bytes to write.

    Returns:
      ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """:func:`atomic_write_bytes` for UTF-8 text.

    Args:
      path: the file to write (its folder is created).
      text: the text, written encoded as UTF-8.

    Returns:
      ``path`` as a :class:`~pathlib.Path`.
    """
    return atomic_write_bytes(path, text.encode("utf-8"))


def write_result_json(
    path: str | os.PathLike, results: Any, *, config: dict[str, Any], seed: int | None = None
) -> Path:
    """Write ``{"config", "seed", "environment", "results"}`` as JSON, atomically.

    Args:
      path: the file to write (its folder is created).
      results: the results, converted by :func:`to_jsonable`.
      config: the run's configuration, converted likewise.
      seed: the run's seed.

    Returns:
      ``path`` as a :class:`~pathlib.Path`.
    """
    document = {
        "config": to_jsonable(config),
        "seed": seed,
        "environment": environment_metadata(),
        "results": to_jsonable(results),
    }
    return atomic_write_text(path, json.dumps(document, indent=2, allow_nan=False) + "\n")

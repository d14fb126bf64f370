"""Input checks at the public boundary.

Every check runs only on concrete values: under ``jax.jit`` / ``jax.grad`` the inputs are
tracers and the checks are skipped (the traced program cannot raise on values). Each failure
raises :class:`pifs_jax.errors.ArgumentError` (a ``ValueError``) whose ``.argument`` is the
argument's name and whose message is ``"name: what was expected, what was received"``.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.core
import jax.numpy as jnp
import numpy as np

from pifs_jax.errors import ArgumentError
from pifs_jax.typing import GridLike


def check_instance(value: Any, expected: type, *, name: str, what: str | None = None) -> None:
    """Require ``isinstance(value, expected)``; ``what`` names the expected kind in the message."""
    if not isinstance(value, expected):
        kind = what or expected.__name__
        raise ArgumentError(name, f"expected a {kind}, got {type(value).__name__}")


def is_concrete(*values: Any) -> bool:
    """True when no leaf of ``values`` is a JAX tracer (i.e. we are not inside a transform)."""
    leaves = jax.tree_util.tree_leaves(values)
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in leaves)


def describe(value: Any, limit: int = 6) -> str:
    """A short, readable rendering of an array-like for error messages."""
    arr = np.asarray(value)
    if arr.ndim == 0:
        return repr(arr.item())
    flat = arr.ravel()
    shown = ", ".join(f"{v:.6g}" if np.issubdtype(arr.dtype, np.floating) else str(v) for v in flat[:limit])
    more = ", ..." if flat.size > limit else ""
    return f"array(shape={arr.shape}, dtype={arr.dtype}, values=[{shown}{more}])"


def check_log_alpha_bar(log_alpha_bar: Any, *, name: str = "alpha_bar") -> None:
    """Validate a schedule given as ``log alpha_bar`` over the training grid ``t = 0..T``.

    Requires shape ``(T+1,)`` with ``T >= 1``, ``alpha_bar[0] == 1`` exactly, every later value in
    ``(0, 1)`` and strictly decreasing. Skipped under tracing.
    """
    if not is_concrete(log_alpha_bar):
        return
    arr = np.asarray(log_alpha_bar, dtype=np.float64)
    if arr.ndim != 1 or arr.shape[0] < 2:
        raise ArgumentError(name, f"expected a 1-D array of shape (T+1,) with T >= 1, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        bad = int(np.flatnonzero(~np.isfinite(arr))[0])
        raise ArgumentError(
            name,
            f"every value must lie in (0, 1] (alpha_bar_T > 0, logSNR finite); index {bad} is {np.exp(arr[bad]):.6g}",
        )
    if arr[0] != 0.0:
        raise ArgumentError(name, f"alpha_bar[0] must be exactly 1 (t = 0 is clean data), got {np.exp(arr[0]):.17g}")
    if np.any(arr[1:] >= 0.0):
        bad = int(np.flatnonzero(arr[1:] >= 0.0)[0]) + 1
        raise ArgumentError(
            name, f"alpha_bar[t] must be < 1 for t >= 1, got alpha_bar[{bad}] = {np.exp(arr[bad]):.17g}"
        )
    steps = np.diff(arr)
    if np.any(steps >= 0.0):
        bad = int(np.flatnonzero(steps >= 0.0)[0]) + 1
        raise ArgumentError(
            name,
            f"must be strictly decreasing in t, but alpha_bar[{bad}] = {np.exp(arr[bad]):.10g} "
            f">= alpha_bar[{bad - 1}] = {np.exp(arr[bad - 1]):.10g}",
        )


def check_gaps(log_alpha_bar: Any, gaps: Any, *, name: str = "sched") -> None:
    """Validate a schedule's per-step gaps ``g_t = log alpha_bar_{t-1} - log alpha_bar_t``.

    Shape ``(T,)``, finite, strictly positive, and consistent with ``log alpha_bar`` (their
    cumulative sum reproduces it to a relative 1e-4: a loose bound that only catches a gaps array
    belonging to another schedule, not round-off). Skipped under tracing.
    """
    if not is_concrete(log_alpha_bar, gaps):
        return
    log_ab = np.asarray(log_alpha_bar, dtype=np.float64)
    g = np.asarray(gaps, dtype=np.float64)
    if g.shape != (log_ab.shape[0] - 1,):
        raise ArgumentError(name, f"gaps must have shape (T,) = ({log_ab.shape[0] - 1},), got {g.shape}")
    if not np.all(np.isfinite(g)) or np.any(g <= 0):
        bad = int(np.flatnonzero(~np.isfinite(g) | (g <= 0))[0])
        raise ArgumentError(
            name,
            f"alpha_bar must strictly decrease (gaps log alpha_bar[t-1] - log alpha_bar[t] > 0), "
            f"got gap {g[bad]!r} at t = {bad + 1}",
        )
    mismatch = np.abs(-np.cumsum(g) - log_ab[1:])
    if np.any(mismatch > 1e-4 * np.maximum(1.0, np.abs(log_ab[1:]))):
        bad = int(np.argmax(mismatch))
        raise ArgumentError(
            name,
            f"gaps are inconsistent with log_alpha_bar (cumulative sum off by {mismatch[bad]:.3g} at "
            f"t = {bad + 1}); build schedules with the pifs_jax constructors",
        )


def check_grid(grid: GridLike, T: int, *, name: str = "grid") -> None:
    """Validate a sampling grid ``0 = tau_0 < tau_1 < ... < tau_N <= T`` of integers.

    Integer dtypes and real floats with integer values (``np.linspace(0, 1000, 51)``) pass; a
    float with a fractional part, and booleans, complex numbers or strings, are refused. Under
    tracing only the dtype is checked (a traced grid must have an integer dtype: it is used as
    an index and cannot be converted inside the traced program).
    """
    if not is_concrete(grid):
        dtype = getattr(grid, "dtype", None)
        if dtype is not None and not jnp.issubdtype(dtype, jnp.integer):
            raise ArgumentError(
                name,
                f"a traced grid must have an integer dtype, got {dtype}; convert it before the "
                "transform (e.g. jnp.asarray(grid, int))",
            )
        return
    arr = np.asarray(grid)
    if arr.dtype == bool or arr.dtype.kind not in "iuf":
        raise ArgumentError(name, f"expected integer timesteps (an integer or real array), got dtype {arr.dtype}")
    if arr.ndim != 1 or arr.shape[0] < 2:
        raise ArgumentError(
            name, f"expected a 1-D integer array 0 = tau_0 < ... < tau_N <= T with N >= 1, got shape {arr.shape}"
        )
    if arr.dtype.kind == "f":
        fractional = ~np.isfinite(arr) | (np.round(arr) != arr)
        if np.any(fractional):
            bad = int(np.flatnonzero(fractional)[0])
            raise ArgumentError(
                name,
                f"timesteps must be integers, got tau_{bad} = {float(arr[bad])!r} in {describe(arr)}; "
                "round explicitly if that is intended (e.g. np.rint(grid).astype(int))",
            )
    if arr[0] != 0:
        raise ArgumentError(name, f"must start at tau_0 = 0 (alpha_bar = 1), got tau_0 = {arr[0]}")
    if np.any(np.diff(arr) <= 0):
        bad = int(np.flatnonzero(np.diff(arr) <= 0)[0]) + 1
        raise ArgumentError(
            name, f"must be strictly increasing, but tau_{bad} = {arr[bad]} <= tau_{bad - 1} = {arr[bad - 1]}"
        )
    if arr[-1] > T:
        raise ArgumentError(name, f"last timestep tau_N = {arr[-1]} exceeds the schedule's T = {T}")


def check_variances(variances: Any, *, name: str = "variances") -> None:
    """Validate covariance eigenvalues: finite and non-negative."""
    if not is_concrete(variances):
        return
    arr = np.asarray(variances, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise ArgumentError(name, f"must be finite, got {describe(arr)}")
    if np.any(arr < 0):
        raise ArgumentError(name, f"variances must be >= 0, got {describe(arr)}")


def check_finite(value: Any, name: str) -> np.ndarray:
    """Return ``value`` as a float64 NumPy array after checking every entry is finite."""
    arr = np.asarray(value, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise ArgumentError(name, f"must be finite, got {describe(arr)}")
    return arr


def check_covariances(cov: Any, n: int, *, name: str, batch_shape: tuple = ()) -> None:
    """Shape ``batch_shape + (n, n)``, finite, symmetric and positive semi-definite (when concrete).

    Tolerances are relative to the largest entry ``s = max |cov|``, with ``eps`` the machine epsilon
    of the input's (canonical floating) dtype: ``max |cov - cov^T| <= sqrt(eps) s`` and smallest
    eigenvalue ``>= -n sqrt(eps) s``. The shape is checked under tracing too (it is static).
    """
    expected = (*batch_shape, n, n)
    shape = tuple(np.shape(cov))
    if shape != expected:
        raise ArgumentError(name, f"expected a covariance of shape {expected}, got shape {shape}")
    if not is_concrete(cov):
        return
    arr = check_finite(cov, name)
    tol = float(np.sqrt(jnp.finfo(jnp.result_type(float, cov)).eps))
    scale = max(float(np.max(np.abs(arr))), np.finfo(np.float64).tiny)
    asym = float(np.max(np.abs(arr - np.swapaxes(arr, -1, -2))))
    if asym > tol * scale:
        raise ArgumentError(name, f"must be symmetric, but max |cov - cov^T| = {asym:.3g} (max |cov| = {scale:.3g})")
    min_eig = float(np.min(np.linalg.eigvalsh((arr + np.swapaxes(arr, -1, -2)) / 2)))
    if min_eig < -tol * n * scale:
        raise ArgumentError(name, f"must be positive semi-definite, but its smallest eigenvalue is {min_eig:.6g}")


def check_subset(values: Any, allowed: tuple, *, name: str) -> tuple:
    """Return ``values`` (one name or an iterable of names) as a tuple after checking it is a
    non-empty subset of ``allowed``."""
    values = (values,) if isinstance(values, str) else tuple(values)
    if not values or any(v not in allowed for v in values):
        raise ArgumentError(name, f"expected a non-empty subset of {allowed}, got {values!r}")
    return values


def check_positive_int(value: Any, *, name: str, minimum: int = 1) -> int:
    """Return ``value`` as int after checking it is an integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ArgumentError(name, f"expected an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ArgumentError(name, f"expected an integer >= {minimum}, got {value}")
    return int(value)


def check_positive_float(value: Any, *, name: str) -> float:
    """``value`` as a float, or an :class:`ArgumentError` naming ``name`` unless it is a finite positive number."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(value) or value <= 0:
        raise ArgumentError(name, f"expected a positive number, got {value!r}")
    return float(value)


def check_fraction(value: Any, *, name: str) -> float:
    """``value`` as a float, or an :class:`ArgumentError` naming ``name`` unless it is a number in ``[0, 1)``."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.number) or not 0 <= value < 1:
        raise ArgumentError(name, f"expected a fraction in [0, 1), got {value!r}")
    return float(value)


def patch_variance_arrays(variances: Any, sizes: Any | None, dtype) -> tuple[jax.Array, jax.Array]:
    """``(lambda, n)`` as arrays of ``dtype``: patch variances ``(m,)`` and their multiplicities (default 1)."""
    lam = jnp.asarray(variances, dtype=dtype)
    if lam.ndim != 1:
        raise ArgumentError("variances", f"expected shape (m,) of patch variances, got {lam.shape}")
    n = jnp.ones_like(lam) if sizes is None else jnp.asarray(sizes, dtype=dtype)
    if n.shape != lam.shape:
        raise ArgumentError("sizes", f"expected shape {lam.shape} (one per variance), got {n.shape}")
    return lam, n


def check_floating(x: Any, *, name: str) -> None:
    """Require a floating dtype (float16, bfloat16, float32 or float64, as JAX canonicalises it).

    For arrays in image units (images, noise, data sets, means, variances, covariances): an
    integer or boolean array there is almost always a raw ``uint8`` image (0..255 instead of the
    package's ``[-1, 1]``) or an integer literal whose results would be truncated back to
    integers, so it is refused rather than promoted. Only the dtype is read, so the check also
    runs under ``jax.jit`` (a tracer's dtype is static). Python floats pass; Python ints,
    booleans, complex numbers and strings do not.
    """
    dtype = x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ArgumentError(
            name,
            f"expected a floating array (float16, bfloat16, float32 or float64), got dtype {dtype}; "
            "convert it explicitly (an image in [-1, 1] from uint8 pixels is x / 127.5 - 1)",
        )


def refuse_symlink_loop(path: str | os.PathLike, *, argument: str) -> None:
    """ArgumentError naming ``argument`` when ``path`` is, or passes through, a symlink loop.

    ``Path.is_file()`` and ``is_dir()`` answer ``False`` for a link that resolves to itself, which
    would otherwise be reported as "not found".
    """
    try:
        os.stat(path)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise ArgumentError(
                argument, f"{str(path)!r} is a symlink loop: the link resolves to itself, never to a file or folder"
            ) from None


def read_json_object(
    source: Mapping[str, Any] | str | os.PathLike,
    *,
    file_name: str,
    what: str,
    missing_hint: str = "",
    argument: str = "config",
) -> tuple[dict[str, Any], Path | None]:
    """A JSON object from a mapping (copied), a file, or a folder holding ``file_name``; and the file read.

    Every failure is an :class:`ArgumentError` naming ``argument`` (default ``config``) and the
    file: not a mapping or a path, file missing (``missing_hint`` appended), a symlink loop,
    unreadable, not UTF-8 text, not valid JSON, nested too deeply for the parser (a hostile file of ``[[[...]]]``), not a JSON object
    (``what`` names the object expected, e.g. "a scheduler config").
    """
    if isinstance(source, Mapping):
        return dict(source), None
    if not isinstance(source, (str, os.PathLike)):
        raise ArgumentError(
            argument, f"expected a dict or a path (str / os.PathLike) to a {file_name}, got {type(source).__name__}"
        )
    path = Path(source)
    refuse_symlink_loop(path, argument=argument)
    if path.is_dir():
        path = path / file_name
        refuse_symlink_loop(path, argument=argument)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ArgumentError(argument, f"file not found: {str(path)!r}{missing_hint}") from None
    except UnicodeDecodeError as err:
        raise ArgumentError(
            argument,
            f"{str(path)!r} is not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset {err.start}); "
            f"expected {what} as JSON",
        ) from None
    except OSError as err:
        raise ArgumentError(argument, f"cannot read {str(path)!r}: {err}") from None
    try:
        loaded = json.loads(text)
    except json.JSONDecodeError as err:
        raise ArgumentError(argument, f"{str(path)!r} is not valid JSON: {err}") from None
    except RecursionError:
        raise ArgumentError(argument, f"{str(path)!r} is nested too deeply to be {what}") from None
    if not isinstance(loaded, dict):
        raise ArgumentError(
            argument, f"{str(path)!r} must hold a JSON object ({what}), got a JSON {type(loaded).__name__}"
        )
    return loaded, path

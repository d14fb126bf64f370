"""A diffusers model folder's weight file read and checked against its config, without PyTorch.

``diffusion_pytorch_model.safetensors`` is read with ``safetensors`` (NumPy arrays; no torch):
its header (names, shapes, dtypes) is checked against the keys and shapes the config implies
(:func:`~pifs_jax.models.diffusers_unet.convert.diffusers_weight_shapes`) before any tensor is
read. ``diffusion_pytorch_model.bin`` (a PyTorch pickle) is read with ``torch.load(...,
weights_only=True)`` when PyTorch is installed, and refused with the way out otherwise. Sharded
weights (``*.safetensors.index.json``) are refused.

Every problem raises :class:`~pifs_jax.errors.ArgumentError` naming the file and the keys:
missing or unexpected keys, a wrong shape, a non-float dtype, a truncated or corrupt file, a
tensor holding NaN or inf (:func:`check_finite_weights`). The result is returned whole or not at
all.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from pifs_jax._validation import refuse_symlink_loop
from pifs_jax.errors import ArgumentError
from pifs_jax.models.diffusers_unet.convert import rename_legacy_keys

__all__ = [
    "PICKLE_NAME",
    "SAFETENSORS_NAME",
    "check_finite_weights",
    "check_weight_layout",
    "find_weight_file",
    "read_weights",
]

#: The weights file name of a diffusers model folder, safetensors format.
SAFETENSORS_NAME = "diffusion_pytorch_model.safetensors"
#: ... and the pickled torch format (read with the ``diffusers`` extra).
PICKLE_NAME = "diffusion_pytorch_model.bin"
_FLOAT_DTYPES = ("F16", "F32", "F64")
_SHOWN = 8


def find_weight_file(folder: str | os.PathLike) -> Path:
    """``folder / diffusion_pytorch_model.safetensors``, else ``.bin``; refused when neither (or only shards) exist.

    Args:
      folder: the model folder.

    Returns:
      the path of the weight file (:data:`SAFETENSORS_NAME` preferred to :data:`PICKLE_NAME`).

    Raises:
      ArgumentError: naming ``path`` when neither file exists (listing what the folder holds), the
        weights are sharded (``diffusion_pytorch_model*.index.json``), or a candidate is a symlink loop.
    """
    folder = Path(folder)
    for name in (SAFETENSORS_NAME, PICKLE_NAME):
        refuse_symlink_loop(folder / name, argument="path")
        if (folder / name).is_file():
            return folder / name
    shards = sorted(p.name for p in folder.glob("diffusion_pytorch_model*.index.json"))
    if shards:
        raise ArgumentError(
            "path",
            f"{str(folder / shards[0])!r}: sharded weights are not read; merge the shards into one {SAFETENSORS_NAME}",
        )
    present = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    raise ArgumentError(
        "path", f"no weight file in {str(folder)!r}: expected {SAFETENSORS_NAME} (or {PICKLE_NAME}), found {present}"
    )


def _listed(keys: list[str]) -> str:
    shown = ", ".join(repr(k) for k in keys[:_SHOWN])
    return shown + (f" and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else "")


def check_weight_layout(path: Path, stored: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]]) -> None:
    """Refuse missing keys, unexpected keys and wrong shapes, naming the file and the keys.

    ``stored`` maps today's key names (legacy attention names already renamed) to stored shapes.

    Args:
      path: the weight file (named in the message).
      stored: ``{today's key: stored shape}`` of the file.
      expected: ``{key: shape}`` the config implies
        (:func:`~pifs_jax.models.diffusers_unet.convert.diffusers_weight_shapes`).

    Raises:
      ArgumentError: naming ``path`` when keys are missing, unexpected, or of another shape.
    """
    missing = sorted(set(expected) - set(stored))
    extra = sorted(set(stored) - set(expected))
    wrong = sorted(k for k in set(stored) & set(expected) if tuple(stored[k]) != tuple(expected[k]))
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} key(s) the config implies: {_listed(missing)}")
    if extra:
        problems.append(f"{len(extra)} key(s) the config does not imply: {_listed(extra)}")
    if wrong:
        problems.append(
            "wrong shape for "
            + ", ".join(
                f"{k!r} (stored {tuple(stored[k])}, the config implies {tuple(expected[k])})" for k in wrong[:_SHOWN]
            )
            + (f" and {len(wrong) - _SHOWN} more" if len(wrong) > _SHOWN else "")
        )
    if problems:
        raise ArgumentError(
            "path",
            f"{str(path)!r} does not match its config: "
            + "; ".join(problems)
            + ". Is the config.json beside it the one it was saved with?",
        )


def check_finite_weights(path: Path, tensors: dict[str, np.ndarray], *, argument: str = "path") -> None:
    """Refuse tensors holding NaN or inf, naming ``argument``, the file and the tensors.

    A network with one non-finite weight computes NaN (or inf) for every input that reaches it,
    so such a file (corrupt, saved after a diverged training step, or a float16 file whose values
    overflowed when it was written) is refused at load rather than sampled from.

    Args:
      path: the weight file the tensors were read from (named in the message).
      tensors: ``{key: array}``, the file's tensors as NumPy arrays.
      argument: the argument name the error carries; default ``"path"``.

    Raises:
      ArgumentError: naming ``argument`` when a tensor holds a NaN or inf (the first such tensor by
        key, with its count, and the others).
    """
    bad = {key: int(value.size - np.count_nonzero(np.isfinite(value))) for key, value in tensors.items()}
    bad = {key: count for key, count in bad.items() if count}
    if bad:
        first, *rest = sorted(bad)
        more = f"; so do {len(rest)} more tensor(s): {_listed(rest)}" if rest else ""
        raise ArgumentError(
            argument,
            f"tensor {first!r} of {str(path)!r} holds {bad[first]} NaN / inf value(s){more}. "
            "A network with non-finite weights computes NaN; the file is corrupt or was saved "
            "from a diverged (or overflowed float16) model",
        )


def _read_safetensors(path: Path, expected: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:
            names = rename_legacy_keys(list(handle.keys()))
            slices = {new: handle.get_slice(old) for new, old in names.items()}
            dtypes = {new: s.get_dtype() for new, s in slices.items()}
            check_weight_layout(path, {new: tuple(s.get_shape()) for new, s in slices.items()}, expected)
            unread = sorted(k for k, d in dtypes.items() if d not in _FLOAT_DTYPES)
            if unread:
                raise ArgumentError(
                    "path",
                    f"{str(path)!r}: weights {_listed(unread)} have dtype(s) "
                    f"{sorted({dtypes[k] for k in unread})}; expected float16, float32 or float64 "
                    "(NumPy, which reads the file without torch, has no bfloat16)",
                )
            return {new: handle.get_tensor(old) for new, old in names.items()}
    except (SafetensorError, OSError, ValueError, TypeError) as err:
        if isinstance(err, ArgumentError):
            raise
        raise ArgumentError(
            "path", f"cannot read {str(path)!r} as safetensors (truncated or corrupt?): {err}"
        ) from None


def _read_pickle(path: Path, expected: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    try:
        import torch  # pyright: ignore[reportMissingImports]  # optional: the diffusers extra
    except ImportError:
        raise ArgumentError(
            "path",
            f"{str(path)!r} is a PyTorch pickle, which needs PyTorch to read, and torch is "
            f"not installed. Either install it (pip install 'pifs_jax[diffusers]'), or convert the "
            f"file once where torch is installed to {SAFETENSORS_NAME} beside it, e.g. "
            "safetensors.torch.save_file(torch.load(path, weights_only=True), "
            f"'{SAFETENSORS_NAME}'); that file is read without torch",
        ) from None
    try:
        loaded = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:
        raise ArgumentError(
            "path", f"cannot read {str(path)!r} with torch.load (truncated or corrupt?): {err}"
        ) from None
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise ArgumentError("path", f"{str(path)!r} does not hold a state dict of tensors")
    names = rename_legacy_keys(list(loaded))
    check_weight_layout(path, {new: tuple(loaded[old].shape) for new, old in names.items()}, expected)
    not_float = sorted(new for new, old in names.items() if not loaded[old].is_floating_point())
    if not_float:
        raise ArgumentError("path", f"{str(path)!r}: non-float weights {_listed(not_float)}")
    return {new: loaded[old].detach().to(torch.float64).numpy() for new, old in names.items()}


def read_weights(path: str | os.PathLike, expected: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """``{today's key: array (torch layout)}`` of a weight file, checked against ``expected`` first.

    Args:
      path: a ``.safetensors`` file (read without torch) or a ``.bin`` PyTorch pickle (needs torch).
      expected: ``{key: shape}`` the config implies
        (:func:`~pifs_jax.models.diffusers_unet.convert.diffusers_weight_shapes`).

    Raises:
      ArgumentError: (``path``) naming the file and the keys, see the module docstring; a tensor
        holding NaN or inf (:func:`check_finite_weights`).
    """
    path = Path(path)
    state = _read_pickle(path, expected) if path.suffix == ".bin" else _read_safetensors(path, expected)
    check_finite_weights(path, state)
    return state

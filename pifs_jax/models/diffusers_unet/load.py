"""Load a diffusers ``UNet2DModel`` folder into flax: :func:`load_diffusers_unet`.

A folder is either a pipeline (``model_index.json``, ``unet/``, ``scheduler/``, as
``DDPMPipeline.save_pretrained`` or a ``google/ddpm-*`` download writes it) or a bare model
folder (``config.json`` and ``diffusion_pytorch_model.safetensors`` or ``.bin``). Order of the
work, so that nothing is half-loaded and an unsupported network costs no weight reading:

1. the pipeline index (its ``unet`` entry must name ``UNet2DModel``), the model config
   (:func:`~pifs_jax.models.diffusers_unet.config.read_unet_config`: unsupported blocks and
   options refused by name) and the scheduler config
   (:func:`pifs_jax.interop.from_diffusers_config`; ``prediction_type`` must be ``epsilon``);
2. the weight file's keys and shapes against the config
   (:func:`~pifs_jax.models.diffusers_unet.weights.read_weights`), then its tensors;
3. the layout conversion (:func:`~pifs_jax.models.diffusers_unet.convert.diffusers_to_flax`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from pifs_jax._validation import read_json_object, refuse_symlink_loop
from pifs_jax.errors import ArgumentError
from pifs_jax.memory import check_memory, forward_bytes
from pifs_jax.models.common import as_eps_fn
from pifs_jax.models.diffusers_unet.config import CONFIG_FILE_NAME, UNET_CLASS_NAME, UNet2DConfig, read_unet_config
from pifs_jax.models.diffusers_unet.convert import diffusers_to_flax, diffusers_weight_shapes
from pifs_jax.models.diffusers_unet.modules import DiffusersUNet2D
from pifs_jax.models.diffusers_unet.weights import find_weight_file, read_weights

__all__ = ["LoadedDiffusersUNet", "load_diffusers_unet"]

_SCHEDULER_FILE = "scheduler_config.json"


@dataclasses.dataclass(frozen=True)
class LoadedDiffusersUNet:
    """A diffusers ``UNet2DModel`` converted to flax, with its scheduler's schedule when the folder has one.

    Attributes:
      module: the flax network (:class:`~pifs_jax.models.diffusers_unet.modules.DiffusersUNet2D`),
        ``module.apply({"params": params}, x (B, H, W, C), t (B,), return_attention=False)``.
      params: its parameters (JAX arrays of the requested dtype).
      config: the checked architecture (:class:`UNet2DConfig`); ``config.to_diffusers()`` is the
        full diffusers config.
      schedule: the scheduler's :class:`~pifs_jax.schedules.Schedule`, or ``None`` when the folder
        has no scheduler config.
      scheduler_config: the scheduler config as read (a dict), or ``None``.
      weights_file: the file the weights came from.
    """

    module: DiffusersUNet2D
    params: Any
    config: UNet2DConfig
    schedule: Any
    scheduler_config: dict | None
    weights_file: Path

    @property
    def eps_fn(self) -> jax.tree_util.Partial:
        """The denoiser of one sample, ``eps_fn(x (H, W, C), t)`` with the package's ``t`` (diffusers' ``t - 1``).

        ``as_eps_fn(module, params)``: a pytree, so a second checkpoint of the same architecture
        compiles nothing new in the package's chains, Jacobians and spectra.
        """
        return as_eps_fn(self.module, self.params)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(H, W, C)`` of the model's samples (diffusers' ``sample_size`` and ``in_channels``)."""
        return self.config.image_shape

    def sampling_grid(self, steps: int) -> np.ndarray:
        """The DDIM grid diffusers' ``DDIMScheduler`` with this folder's scheduler config walks in ``steps`` steps.

        :func:`pifs_jax.interop.diffusers_config_grid` (``set_alpha_to_one`` taken as true: the
        chain ends on clean data).
        """
        from pifs_jax.interop import diffusers_config_grid

        if self.scheduler_config is None:
            raise ArgumentError(
                "steps",
                "this model folder has no scheduler config, so no sampling grid; use "
                "pifs_jax.uniform_grid(T, steps) with the schedule it was trained with",
            )
        return diffusers_config_grid({**self.scheduler_config, "set_alpha_to_one": True}, steps)


def _model_and_scheduler_folders(path: Path) -> tuple[Path, Path | None]:
    """``(folder holding config.json and the weights, folder holding scheduler_config.json or None)``."""
    refuse_symlink_loop(path, argument="path")
    if not path.is_dir():
        raise ArgumentError(
            "path",
            f"expected a diffusers model or pipeline folder, got {str(path)!r} "
            f"({'a file' if path.exists() else 'not found'})",
        )
    index_file = path / "model_index.json"
    refuse_symlink_loop(index_file, argument="path")
    if index_file.is_file():
        index = read_json_object(
            index_file, file_name=index_file.name, what="a diffusers pipeline index", argument="path"
        )[0]
        entry = index.get("unet")
        if entry is None:
            raise ArgumentError(
                "path",
                f"{str(index_file)!r} names no 'unet' component (components: "
                f"{sorted(k for k in index if not k.startswith('_'))}); expected a {UNET_CLASS_NAME} "
                "pipeline such as DDPMPipeline",
            )
        if not (isinstance(entry, list) and len(entry) == 2 and all(isinstance(part, str) for part in entry)):
            raise ArgumentError(
                "path",
                f"the 'unet' entry of {str(index_file)!r} is {entry!r} ({type(entry).__name__}); expected "
                f'a [library, class] pair such as ["diffusers", "{UNET_CLASS_NAME}"]',
            )
        if entry[1] != UNET_CLASS_NAME:
            raise ArgumentError(
                "_class_name",
                f"the pipeline's unet is a {entry[1]!r} in {str(index_file)!r}; only "
                f"{UNET_CLASS_NAME} (the google/ddpm-* networks) is read",
            )
        refuse_symlink_loop(path / "unet", argument="path")
        scheduler = path / "scheduler"
        refuse_symlink_loop(scheduler / _SCHEDULER_FILE, argument="path")
        return path / "unet", (scheduler if (scheduler / _SCHEDULER_FILE).is_file() else None)
    refuse_symlink_loop(path / CONFIG_FILE_NAME, argument="path")
    refuse_symlink_loop(path / _SCHEDULER_FILE, argument="path")
    if not (path / CONFIG_FILE_NAME).is_file():
        raise ArgumentError(
            "path",
            f"{str(path)!r} is neither a diffusers pipeline folder (model_index.json, "
            f"unet/, scheduler/) nor a model folder ({CONFIG_FILE_NAME} and "
            "diffusion_pytorch_model.safetensors)",
        )
    return path, (path if (path / _SCHEDULER_FILE).is_file() else None)


def load_diffusers_unet(path: str | os.PathLike, *, dtype: Any = np.float32, ignore: tuple = ()) -> LoadedDiffusersUNet:
    """Read a diffusers ``UNet2DModel`` (e.g. ``google/ddpm-cifar10-32``) from a folder, without torch.

    The network follows the package's conventions: ``eps_fn(x, t)`` takes one image ``x`` of
    shape ``(H, W, C)`` in the model's input scale (``[-1, 1]`` for ``google/ddpm-*``) and the
    package's integer timestep ``t`` in ``1..T``, which is diffusers' timestep ``t - 1`` (our
    ``alpha_bar[t]`` is diffusers' ``alphas_cumprod[t - 1]``). So

    ``loaded.eps_fn(x, t) == unet(x_nchw[None], t - 1).sample[0]`` (NHWC <-> NCHW)

    and ``pifs_jax.ddim_chain(loaded.eps_fn, loaded.schedule, x_T, grid=loaded.sampling_grid(50))``
    is diffusers' 50-step ``DDIMScheduler`` chain (``eta = 0``, ``clip_sample = False``).

    Args:
      path: a pipeline folder (``model_index.json``, ``unet/``, ``scheduler/``) or a model
        folder (``config.json`` and ``diffusion_pytorch_model.safetensors`` or ``.bin``; a
        ``scheduler_config.json`` beside them is read too).
      dtype: a floating dtype for the parameters (default float32, the checkpoints' own;
        float64 needs ``jax.enable_x64``).
      ignore: config keys to accept and ignore (see
        :func:`~pifs_jax.models.diffusers_unet.config.read_unet_config`).

    Returns:
      A :class:`LoadedDiffusersUNet` (``.module``, ``.params``, ``.config``, ``.eps_fn``,
      ``.schedule``, ``.sampling_grid(steps)``).

    Raises:
      ArgumentError: naming the file and the key: a folder without a config, a config of
        another class (``UNet2DConditionModel``, ``AutoencoderKL``, ...) or with an unsupported
        block or option (refused before any weight is read), a scheduler that is not of the DDPM
        family or does not predict ``epsilon``, weights with missing or unexpected keys or wrong
        shapes, a truncated or corrupt weight file, a ``.bin`` file without torch installed;
        (``path``) a ``path`` that is not a str / ``os.PathLike``, a ``config.json``,
        ``model_index.json`` or ``scheduler_config.json`` that is not a JSON object or is nested
        too deeply to parse, a weight tensor holding NaN or inf (naming the tensor); (``dtype``)
        a ``dtype`` that is not floating (float16, bfloat16, float32, float64), or one in which
        finite stored weights overflow to inf (naming the parameter); (``sample_size``) a sample
        size whose one-image forward pass is estimated to need more memory than is available
        (:mod:`pifs_jax.memory`).
    """
    from pifs_jax.interop import from_diffusers_config, load_config

    if not isinstance(path, (str, os.PathLike)):
        raise ArgumentError(
            "path", f"expected a folder path (str or os.PathLike) of a diffusers model, got {type(path).__name__}"
        )
    dtype = _parameter_dtype(dtype)
    path = Path(path)
    model_folder, scheduler_folder = _model_and_scheduler_folders(path)
    refuse_symlink_loop(model_folder / CONFIG_FILE_NAME, argument="path")
    if not (model_folder / CONFIG_FILE_NAME).is_file():
        raise ArgumentError(
            "path",
            f"{str(model_folder / CONFIG_FILE_NAME)!r} not found: the pipeline's unet/ "
            "folder holds the model's config beside its weights",
        )
    with _file_errors_name_path():
        config = read_unet_config(model_folder, ignore=ignore)
    schedule = scheduler_config = None
    if scheduler_folder is not None:
        with _file_errors_name_path():
            scheduler_config = load_config(scheduler_folder)
        prediction = scheduler_config.get("prediction_type") or "epsilon"
        if prediction != "epsilon":
            raise ArgumentError(
                "prediction_type",
                f"{prediction!r} in {str(scheduler_folder / _SCHEDULER_FILE)!r}: "
                "only eps-predicting networks are read (their output is the package's eps_fn)",
            )
        schedule = from_diffusers_config(scheduler_folder / _SCHEDULER_FILE)
    weights_file = find_weight_file(model_folder)
    state = read_weights(weights_file, diffusers_weight_shapes(config))
    with np.errstate(over="ignore"):  # an overflow to inf is refused just below, naming the parameter
        flax_params = diffusers_to_flax(state, config, dtype=dtype)
    _check_conversion_finite(flax_params, weights_file, dtype)
    _check_forward_fits(config, flax_params, model_folder / CONFIG_FILE_NAME)
    params = jax.tree_util.tree_map(jnp.asarray, flax_params)
    return LoadedDiffusersUNet(DiffusersUNet2D(config), params, config, schedule, scheduler_config, weights_file)


def _parameter_dtype(dtype: Any) -> np.dtype:
    """``dtype`` as a NumPy dtype, refused (naming ``dtype``) unless it is a floating one."""
    try:
        resolved = None if dtype is None else np.dtype(dtype)
    except TypeError:
        resolved = None
    if resolved is None or not jnp.issubdtype(resolved, jnp.floating):
        raise ArgumentError(
            "dtype", f"expected a floating dtype (float16, bfloat16, float32 or float64), got {dtype!r}"
        )
    return resolved


@contextlib.contextmanager
def _file_errors_name_path() -> Iterator[None]:
    """Re-raise a config reader's file errors (named ``config``: missing, unreadable, not a JSON
    object, nested too deeply) as errors of :func:`load_diffusers_unet`'s ``path``."""
    try:
        yield
    except ArgumentError as err:
        if err.argument != "config":
            raise
        raise ArgumentError("path", err.detail) from None


def _check_forward_fits(config: UNet2DConfig, params: Any, config_file: Path) -> None:
    """Refuse (naming ``sample_size``) a network whose one-image forward pass cannot fit in memory.

    The estimate is :func:`pifs_jax.memory.forward_bytes` (traced, nothing computed) plus the
    parameters: the attention layers' score matrices grow with ``sample_size`` to the fourth power.
    """
    height, width, _ = config.image_shape
    needed = forward_bytes(as_eps_fn(DiffusersUNet2D(config), params), config.image_shape) + sum(
        int(np.asarray(leaf).nbytes) for leaf in jax.tree_util.tree_leaves(params)
    )
    check_memory(
        needed,
        argument="sample_size",
        what=f"{height}x{width} images (sample_size in {str(config_file)!r}): one image through the network",
    )


def _check_conversion_finite(params: Any, weights_file: Path, dtype: np.dtype) -> None:
    """Refuse (naming ``dtype``) parameters that the stored, finite weights overflow in ``dtype``."""
    for key_path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        if not np.isfinite(leaf).all():
            name = "/".join(str(getattr(k, "key", k)) for k in key_path)
            raise ArgumentError(
                "dtype",
                f"{dtype} cannot hold the weights of {str(weights_file)!r}: parameter {name!r} has "
                f"{int(np.size(leaf) - np.count_nonzero(np.isfinite(leaf)))} value(s) that overflow to inf; "
                "load them in a wider dtype (float32)",
            )

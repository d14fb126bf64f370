"""Reloading a training run: :func:`load_run` rebuilds the recorded architecture and loads its checked checkpoint."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax

from pifs_jax._validation import read_json_object
from pifs_jax.checkpoint import CHECKPOINT_NAME, load_checkpoint
from pifs_jax.errors import ArgumentError
from pifs_jax.models.common import EpsModule, as_eps_fn
from pifs_jax.models.training.config import TrainConfig
from pifs_jax.models.training.trainer import TrainState, initial_train_state_shapes, model_for_config, resume_identity

__all__ = ["LoadedRun", "load_run"]


class LoadedRun(NamedTuple):
    """A finished (or checkpointed) run, from :func:`load_run`."""

    module: EpsModule
    state: TrainState
    config: TrainConfig

    @property
    def eps_fn(self) -> Callable[[jax.Array, Any], jax.Array]:
        """``eps_fn(x, t)`` of the EMA parameters, for :func:`pifs_jax.ddim.ddim_chain`."""
        return as_eps_fn(self.module, self.state.ema_params)


def load_run(out_dir: str | os.PathLike) -> LoadedRun:
    """Rebuild the model of a ``pifs-jax train`` output folder and load its checkpoint (validated).

    Reads ``config.json`` into a :class:`TrainConfig`, rebuilds the recorded architecture
    (:meth:`TrainConfig.model_spec`: the spec registered under ``model`` with the recorded
    ``architecture`` fields, or the preset ``size`` for runs that record none, as every run
    written before architectures were recorded) at the data set's image shape, and loads
    ``checkpoint.msgpack`` with every check of :func:`pifs_jax.checkpoint.load_checkpoint`. A run
    being extended (``config.json`` has a larger ``steps`` than the checkpoint:
    :func:`~pifs_jax.models.training.trainer.resume_identity`) loads like a killed one. A user
    architecture must be registered (:func:`pifs_jax.models.register_spec`, i.e. its module
    imported) before its run is loaded.

    Args:
      out_dir: the run's output folder (a str or ``os.PathLike``).

    Returns:
      :class:`LoadedRun`, the rebuilt module, the loaded training state and the resolved config.

    Raises:
      ArgumentError: (``out_dir``) not a str / ``os.PathLike``; no ``config.json`` / checkpoint, a
        ``config.json`` that is not valid JSON, not a JSON object, nested too deeply to be a training
        config, or has unknown fields or values of the wrong type; an unregistered architecture
        (naming it and the registered ones) or one that was not recorded, or a checkpoint that
        fails its checks.
    """
    if not isinstance(out_dir, (str, os.PathLike)):
        raise ArgumentError("out_dir", f"expected a run folder path (str or os.PathLike), got {type(out_dir).__name__}")
    out = Path(out_dir)
    if not (out / "config.json").is_file():
        raise ArgumentError("out_dir", f"{str(out)!r} holds no config.json (not a pifs-jax train folder)")
    fields, config_file = read_json_object(out, file_name="config.json", what="a training config", argument="out_dir")
    try:
        config = TrainConfig(**fields).resolved()
    except TypeError as err:  # unknown fields, or values of the wrong JSON type
        raise ArgumentError("out_dir", f"{str(config_file)!r} holds an invalid training config: {err}") from None
    image_shape = config.image_shape
    if image_shape is None:
        raise ArgumentError(
            "out_dir", f"the run in {str(out)!r} was trained on data {config.data!r}, not a known data set"
        )
    module, init_fn = model_for_config(config, image_shape)
    target = initial_train_state_shapes(config, init_fn)  # shapes only: nothing to compile
    identity, _ = resume_identity(config, out / CHECKPOINT_NAME)
    state = load_checkpoint(out / CHECKPOINT_NAME, target, config=identity)
    return LoadedRun(module, state, config)

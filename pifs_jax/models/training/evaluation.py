"""Evaluating a trained model: sampling in chunks, the quality report, reloading a finished run."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from pifs_jax.checkpoint import CHECKPOINT_NAME, load_checkpoint
from pifs_jax.errors import ArgumentError
from pifs_jax.grids import uniform_grid
from pifs_jax.models.training.config import TrainConfig
from pifs_jax.models.training.trainer import TrainState, initial_train_state, model_for_config
from pifs_jax.schedules import Schedule

__all__ = ["LoadedRun", "load_run", "evaluate_run", "sample_in_chunks"]


class LoadedRun(NamedTuple):
    """A finished (or checkpointed) run, from :func:`load_run`."""

    module: Any
    state: TrainState
    config: TrainConfig

    @property
    def eps_fn(self) -> Callable[[jax.Array, Any], jax.Array]:
        """``eps_fn(x, t)`` of the EMA parameters, for :func:`pifs_jax.ddim.ddim_chain`."""
        from pifs_jax.models import as_eps_fn

        return as_eps_fn(self.module, self.state.ema_params)


def load_run(out_dir: str | os.PathLike) -> LoadedRun:
    """Rebuild the model of a ``pifs-jax train`` output folder and load its checkpoint (validated).

    Reads ``config.json``, builds the named model, and loads ``checkpoint.msgpack`` with every
    check of :func:`pifs_jax.checkpoint.load_checkpoint`.

    Raises:
      ArgumentError: no ``config.json`` / checkpoint, or a checkpoint that fails its checks.
    """
    out = Path(out_dir)
    if not (out / "config.json").is_file():
        raise ArgumentError("out_dir", f"{str(out)!r} holds no config.json (not a pifs-jax train folder)")
    config = TrainConfig(**json.loads((out / "config.json").read_text())).resolved()
    module, init_fn = model_for_config(config, config.image_shape)
    _, target = initial_train_state(config, init_fn)
    state = load_checkpoint(out / CHECKPOINT_NAME, target, config=config.identity())
    return LoadedRun(module, state, config)


def evaluate_run(
    module: Any,
    params: Any,
    sched: Schedule,
    *,
    config: TrainConfig,
    train_images: np.ndarray,
    test_images: np.ndarray,
    out_dir: str | os.PathLike,
) -> dict[str, Any]:
    """Sample the model, score it against the memorisation reference, write ``samples.png``/``quality.json``.

    ``x_T ~ N(0, I)`` from ``fold_in(PRNGKey(seed), 2**31 - 1)``; the model and the empirical-optimal
    denoiser of the training set (:func:`pifs_jax.denoisers.empirical_denoiser`) both run the
    ``sample_steps``-step DDIM chain from the same ``x_T``.
    """
    from pifs_jax.denoisers import empirical_denoiser
    from pifs_jax.models import as_eps_fn
    from pifs_jax.models import quality as q
    from pifs_jax.results import write_result_json

    out = Path(out_dir)
    grid = uniform_grid(config.T, config.sample_steps)
    shape = (config.num_samples,) + tuple(train_images.shape[1:])
    x_T = jax.jit(lambda seed: jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(seed), 2**31 - 1), shape))(
        np.uint32(config.seed)
    )
    t0 = time.perf_counter()
    samples = sample_in_chunks(lambda p: as_eps_fn(module, p), params, sched, x_T, grid=grid)
    sample_seconds = time.perf_counter() - t0
    reference = sample_in_chunks(lambda d: empirical_denoiser(sched, d), jnp.asarray(train_images), sched, x_T, grid=grid)
    report = q.quality_report(
        samples, train=train_images, test=test_images, patch_size=config.patch_size, reference_samples=reference
    )
    report["sampling_seconds"] = sample_seconds
    q.save_image_grid(out / "samples.png", samples[: min(64, len(samples))])
    q.save_image_grid(out / "samples_empirical.png", reference[: min(64, len(reference))])
    write_result_json(out / "quality.json", report, config=config.to_dict(), seed=config.seed)
    return report


def sample_in_chunks(
    make_eps_fn: Callable[[Any], Callable], args: Any, sched: Schedule, x_T: jax.Array, *, grid: Any, chunk: int = 128
) -> np.ndarray:
    """:func:`pifs_jax.ddim.ddim_sample` of ``make_eps_fn(args)``, ``chunk`` samples at a time.

    One compilation (the last chunk is padded); bounded memory (the empirical denoiser compares
    every sample with every training crop at every step). ``args`` (parameters, data) enter the
    compiled program as arguments, not as constants baked into it: faster to compile, and
    jaxlib 0.10.2's CPU compiler was seen to miscompile exactly-zero constant weight layers.
    """
    from pifs_jax.ddim import ddim_sample

    sample = jax.jit(lambda a, x: ddim_sample(make_eps_fn(a), sched, x, grid=grid))
    count = x_T.shape[0]
    size = min(chunk, count)
    out = []
    for start in range(0, count, size):
        block = x_T[start:start + size]
        pad = size - block.shape[0]
        if pad:
            block = jnp.concatenate([block, jnp.zeros((pad,) + block.shape[1:], block.dtype)])
        out.append(np.asarray(sample(args, block))[: size - pad])
    return np.concatenate(out)

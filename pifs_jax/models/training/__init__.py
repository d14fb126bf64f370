"""Training eps-predictors by denoising score matching, read as PIFS collage minimisation.

Theory: docs/theory.md section 7. Modules:

- :mod:`~pifs_jax.models.training.config`: :class:`TrainConfig`, :data:`PRESETS`, :func:`train_config`.
- :mod:`~pifs_jax.models.training.losses`: the weightings (:func:`weight_table`, the collage
  identity), :func:`loss_tables`, :func:`denoising_loss`, :func:`module_apply_fn`.
- :mod:`~pifs_jax.models.training.regularizer`: the PIFS regulariser (:func:`cross_block_penalty`,
  :func:`cross_block_frobenius`).
- :mod:`~pifs_jax.models.training.trainer`: optimiser, :class:`TrainState`, the compiled step,
  the metrics log and :func:`train` (checkpoints and exact resume).
- :mod:`~pifs_jax.models.training.parallel`: data parallelism (:func:`data_mesh`, :func:`replicate`,
  :func:`split_batch`, :func:`check_devices`): the batch split over a ``data`` mesh axis.
- :mod:`~pifs_jax.models.training.evaluation`: sampling, the quality report, the loss curve.
- :mod:`~pifs_jax.models.training.loading`: :func:`load_run` (the recorded architecture and the checked checkpoint).
"""

from pifs_jax.models.training.config import LR_DECAYS, PRESETS, TrainConfig, parse_field_value, train_config
from pifs_jax.models.training.evaluation import evaluate_run, held_out_noise, plot_metrics_log, sample_in_chunks
from pifs_jax.models.training.loading import LoadedRun, load_run
from pifs_jax.models.training.losses import (
    WEIGHTINGS,
    ApplyFn,
    LossTables,
    denoising_loss,
    loss_tables,
    loss_weights,
    module_apply_fn,
    weight_table,
)
from pifs_jax.models.training.parallel import DATA_AXIS, check_devices, data_mesh, replicate, split_batch
from pifs_jax.models.training.regularizer import cross_block_frobenius, cross_block_penalty
from pifs_jax.models.training.trainer import (
    RUN_FILES,
    STALE_DIR,
    TRAIN_STEP_CACHE_SIZE,
    TrainResult,
    TrainState,
    batch_indices,
    init_train_state,
    initial_train_state,
    load_train_test,
    make_optimizer,
    make_train_step,
    model_for_config,
    optimizer_settings,
    read_metrics_log,
    recorded_config,
    resume_identity,
    train,
    train_step_for,
)

__all__ = [
    "DATA_AXIS",
    "LR_DECAYS",
    "PRESETS",
    "RUN_FILES",
    "STALE_DIR",
    "TRAIN_STEP_CACHE_SIZE",
    "WEIGHTINGS",
    "ApplyFn",
    "LoadedRun",
    "LossTables",
    "TrainConfig",
    "TrainResult",
    "TrainState",
    "batch_indices",
    "check_devices",
    "cross_block_frobenius",
    "cross_block_penalty",
    "data_mesh",
    "denoising_loss",
    "evaluate_run",
    "held_out_noise",
    "init_train_state",
    "initial_train_state",
    "load_run",
    "load_train_test",
    "loss_tables",
    "loss_weights",
    "make_optimizer",
    "make_train_step",
    "model_for_config",
    "module_apply_fn",
    "optimizer_settings",
    "parse_field_value",
    "plot_metrics_log",
    "read_metrics_log",
    "recorded_config",
    "replicate",
    "resume_identity",
    "sample_in_chunks",
    "split_batch",
    "train",
    "train_config",
    "train_step_for",
    "weight_table",
]

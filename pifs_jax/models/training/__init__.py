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
- :mod:`~pifs_jax.models.training.evaluation`: sampling, the quality report, the loss curve, :func:`load_run`.
"""

from pifs_jax.models.training.config import LR_DECAYS, PRESETS, TrainConfig, parse_field_value, train_config
from pifs_jax.models.training.evaluation import LoadedRun, evaluate_run, load_run, plot_metrics_log, sample_in_chunks
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
    TrainResult,
    RUN_FILES,
    TrainState,
    batch_indices,
    init_train_state,
    initial_train_state,
    load_train_test,
    make_optimizer,
    make_train_step,
    model_for_config,
    read_metrics_log,
    resume_identity,
    train,
)

__all__ = [
    "WEIGHTINGS",
    "LR_DECAYS",
    "PRESETS",
    "TrainConfig",
    "train_config",
    "parse_field_value",
    "TrainState",
    "ApplyFn",
    "LossTables",
    "weight_table",
    "loss_weights",
    "loss_tables",
    "module_apply_fn",
    "cross_block_penalty",
    "cross_block_frobenius",
    "denoising_loss",
    "make_optimizer",
    "init_train_state",
    "initial_train_state",
    "model_for_config",
    "make_train_step",
    "batch_indices",
    "TrainResult",
    "train",
    "evaluate_run",
    "sample_in_chunks",
    "LoadedRun",
    "load_run",
    "read_metrics_log",
    "plot_metrics_log",
    "RUN_FILES",
    "resume_identity",
    "load_train_test",
    "DATA_AXIS",
    "check_devices",
    "data_mesh",
    "replicate",
    "split_batch",
]

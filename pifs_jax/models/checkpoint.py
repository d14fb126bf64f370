"""Training checkpoints: the package's one checkpoint format, :mod:`pifs_jax.checkpoint` (re-exported here)."""

from pifs_jax.checkpoint import (
    CHECKPOINT_NAME,
    config_differences,
    load_checkpoint,
    read_checkpoint,
    read_checkpoint_header,
    remove_partial_writes,
    save_checkpoint,
)

__all__ = [
    "CHECKPOINT_NAME",
    "config_differences",
    "load_checkpoint",
    "read_checkpoint",
    "read_checkpoint_header",
    "remove_partial_writes",
    "save_checkpoint",
]

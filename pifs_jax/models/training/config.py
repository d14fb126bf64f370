"""What determines a training run: :class:`TrainConfig`, the :data:`PRESETS` and :func:`train_config`.

Names are defined once in the library: architectures by their registered specs
(:func:`pifs_jax.models.registered_specs`; the presets of :data:`pifs_jax.models.MODEL_NAMES`
are :data:`pifs_jax.models.MODEL_SIZES`), data sets :data:`pifs_jax.data.DATASETS` (name -> image
shape), loss weightings :data:`~pifs_jax.models.training.losses.WEIGHTINGS`, presets :data:`PRESETS`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from typing import Any

from pifs_jax.data import DATASETS, DIGITS_TEST, DIGITS_TRAIN
from pifs_jax.errors import ArgumentError
from pifs_jax.models import MODEL_SIZES, ModelSpec, registered_specs, spec_class, spec_from_dict
from pifs_jax.models.training.losses import WEIGHTINGS

__all__ = ["LR_DECAYS", "PRESETS", "TrainConfig", "parse_field_value", "train_config"]

#: Learning-rate decays of :func:`~pifs_jax.models.training.trainer.make_optimizer`.
LR_DECAYS = ("cosine", "constant")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (a checkpoint records it and refuses another).

    Attributes:
      model: the registered name of the architecture's spec (:func:`pifs_jax.models.registered_specs`:
        ``"dit"``, ``"unet"``, ``"diffusers_unet2d"`` or a user spec); ``None`` for a module passed
        to :func:`~pifs_jax.models.training.trainer.train` as ``(module, init_fn)``, which is not
        recorded (such a run cannot be reloaded).
      size: the spec's preset (:meth:`pifs_jax.models.ModelSpec.preset`, e.g. ``"quick"``), or
        ``None`` when ``architecture`` gives every field.
      architecture: every field of the spec (``spec.fields()``, JSON types), or ``None`` for the
        preset ``size``. Old run folders (written before architectures were recorded) have no
        such key and load as their preset. :meth:`model_spec` is the spec either way.
      data: one of :data:`pifs_jax.data.DATASETS` (:func:`pifs_jax.data.load_dataset`).
      num_train: crops in the training set.
      num_test: crops in the test set.
      data_seed: seed of the data set (kept apart from ``seed`` so every run sees the same crops).
      patch_size: PIFS patch ``p`` (the DiT's token size, the regulariser's blocks, the quality
        features); ``None`` = image side / 4, i.e. 16 patches.
      steps: optimisation steps.
      batch_size: images per step.
      lr: the AdamW optimiser's peak learning rate.
      warmup_steps: steps of linear warm-up to ``lr``.
      lr_decay: one of :data:`LR_DECAYS`, ``"cosine"`` (to 0 at ``steps``) or ``"constant"``.
      weight_decay: the AdamW optimiser's weight decay.
      grad_clip: the AdamW optimiser's gradient clipping (global norm).
      weighting: one of :data:`WEIGHTINGS`.
      min_snr_gamma: ``gamma`` of ``"min_snr"``.
      mu: weight of the PIFS regulariser (0 = off).
      probes: patches probed per sample and step.
      ema_decay: EMA decay ``d``.
      seed: seed of initialisation, batches, timesteps, noise and probes.
      schedule: the noise schedule's name (:func:`pifs_jax.schedules.named_schedule`). Default: DDPM's
        ``linear`` (``beta`` from 1e-4 to 0.02). Not ``cosine``: its betas are clipped at 0.999 near
        ``T`` (``alpha_bar_T = 2.4e-9``), so the first step ``1000 -> 980`` of a 50-step DDIM grid has
        ``a_t = 632``, ``b_t = -631`` and multiplies any eps error by 631; the linear schedule's is
        ``b_t = -0.22``.
      T: the noise schedule's number of training steps.
      sample_steps: ``N`` of the uniform sampling grid (samples and the collage weighting).
      checkpoint_every: steps between checkpoints (run control, not part of the identity).
      log_every: steps between the lines of ``metrics.jsonl`` (run control).
      num_samples: samples drawn and scored after training (run control).
      devices: data parallelism (run control too): the batch is split over this many devices
        (a ``data`` mesh axis, :mod:`~pifs_jax.models.training.parallel`), parameters and
        optimiser state replicated; ``batch_size`` must be a multiple of it. ``1`` (default) runs
        the plain single-device step. Resuming with another device count is allowed: the
        trajectory then agrees with the uninterrupted one up to the summation order of the
        batch reductions (float32 rounding), not bit for bit.
    """

    model: str | None = "dit"
    size: str | None = "quick"
    architecture: dict[str, Any] | None = None
    data: str = "photos16"
    num_train: int = 4096
    num_test: int = 1024
    data_seed: int = 0
    patch_size: int | None = None
    steps: int = 4000
    batch_size: int = 64
    lr: float = 2e-3
    warmup_steps: int = 100
    lr_decay: str = "cosine"
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    weighting: str = "uniform"
    min_snr_gamma: float = 5.0
    mu: float = 0.0
    probes: int = 1
    ema_decay: float = 0.999
    seed: int = 0
    schedule: str = "linear"
    T: int = 1000
    sample_steps: int = 50
    checkpoint_every: int = 500
    log_every: int = 10
    num_samples: int = 256
    devices: int = 1

    #: Fields that control bookkeeping only; they may differ between a run and its resumption.
    RUN_CONTROL = ("checkpoint_every", "log_every", "num_samples", "devices")
    #: Fields a resumed run may *increase* (extending a run): the checkpoint's value is accepted
    #: when it is smaller than the requested one. Only ``steps``: the learning-rate schedule is
    #: recomputed for the new length (:func:`~pifs_jax.models.training.trainer.train`).
    EXTENSIBLE = ("steps",)

    def __post_init__(self):
        def bad(name, expected):
            raise ArgumentError(name, f"expected {expected}, got {getattr(self, name)!r}")

        if self.model is not None:
            cls = spec_class(self.model)  # raises naming model and the registered names
            if self.architecture is None:
                if self.size not in cls.PRESETS:
                    bad("size", f"one of {', '.join(cls.PRESETS) or 'no presets'} (the presets of {self.model!r})")
            elif self.size is not None:
                bad("size", "None when architecture gives every field")
            else:
                self.model_spec()  # raises naming the invalid field
        elif self.architecture is not None:
            bad("architecture", "None for an unrecorded module (model = None)")
        for name, allowed in (
            ("weighting", WEIGHTINGS),
            ("lr_decay", LR_DECAYS),
        ):
            if getattr(self, name) not in allowed:
                bad(name, f"one of {', '.join(allowed)}")
        for name in (
            "num_train",
            "num_test",
            "steps",
            "batch_size",
            "T",
            "sample_steps",
            "checkpoint_every",
            "log_every",
            "probes",
            "devices",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                bad(name, "a positive integer")
        for name in ("warmup_steps", "num_samples", "seed", "data_seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                bad(name, "a non-negative integer")
        if self.patch_size is not None and (not isinstance(self.patch_size, int) or self.patch_size < 1):
            bad("patch_size", "a positive integer or None")
        for name in ("lr", "min_snr_gamma", "grad_clip"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                bad(name, "a finite number > 0")
        for name in ("mu", "weight_decay"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                bad(name, "a finite number >= 0")
        if not 0 <= self.ema_decay < 1:
            bad("ema_decay", "a number in [0, 1)")
        if self.sample_steps > self.T:
            bad("sample_steps", f"at most T = {self.T}")
        if self.batch_size % self.devices:
            bad(
                "devices",
                f"a divisor of batch_size = {self.batch_size} (each device takes batch_size / devices "
                "images; change --batch-size or --devices)",
            )

    def to_dict(self) -> dict[str, Any]:
        """All fields as a JSON-able dict."""
        return dataclasses.asdict(self)

    def identity(self) -> dict[str, Any]:
        """The fields that determine the trajectory (all but :attr:`RUN_CONTROL`).

        ``architecture`` is left out when it is ``None`` (a preset): the identity of a preset
        run is then the one written before architectures were recorded, so old checkpoints load.
        """
        return {
            k: v
            for k, v in self.to_dict().items()
            if k not in self.RUN_CONTROL and not (k == "architecture" and v is None)
        }

    def model_spec(self) -> ModelSpec:
        """The architecture: ``spec_from_dict({"name": model, **architecture})``, or the preset ``size``.

        The preset takes ``patch_size`` when the architecture has such a field (the DiT's tokens).

        Raises:
          ArgumentError: ``model`` is ``None`` (an unrecorded module) or not registered (naming the
            registered ones); an invalid field.
        """
        if self.model is None:
            raise ArgumentError(
                "model",
                "this run's architecture was not recorded (it was trained with train(model=(module, init_fn))); "
                "train with a registered ModelSpec, train(model=spec), to make a run that can be reloaded",
            )
        if self.architecture is None:
            return spec_class(self.model).preset(str(self.size), patch_size=self.patch_size)
        return spec_from_dict({**self.architecture, "name": self.model})

    def with_spec(self, spec: ModelSpec) -> TrainConfig:
        """This config recording ``spec``: ``model = spec.NAME``, ``size = None``, ``architecture = spec.fields()``."""
        if not isinstance(spec, ModelSpec):
            raise ArgumentError("model", f"expected a ModelSpec, got {type(spec).__name__}")
        spec_class(spec.NAME)  # a spec must be registered to be reloaded
        spec.validate()
        return dataclasses.replace(self, model=spec.NAME, size=None, architecture=spec.fields())

    @property
    def image_shape(self) -> tuple[int, int, int] | None:
        """``(H, W, C)`` of the named data set (``None`` for an unknown name)."""
        shape = DATASETS.get(self.data)
        return None if shape is None else (int(shape[0]), int(shape[1]), int(shape[2]))

    def resolved(self) -> TrainConfig:
        """The config with ``patch_size`` filled in (image side / 4: 16 patches)."""
        if self.patch_size is not None:
            return self
        if self.data not in DATASETS:
            raise ArgumentError("data", f"unknown data set {self.data!r}; expected one of {', '.join(DATASETS)}")
        return dataclasses.replace(self, patch_size=DATASETS[self.data][0] // 4)


#: Presets. ``quick``: a useful 16x16 model on a 2-core CPU in under 10 minutes (see the training guide).
#: ``full``: 32x32 crops, 8x8 patches (16 patches of 192 coordinates), DiT-sized for a GPU.
PRESETS: dict[str, dict[str, Any]] = {
    "quick": dict(
        size="quick",
        data="photos16",
        num_train=4096,
        num_test=1024,
        steps=4000,
        batch_size=64,
        lr=2e-3,
        warmup_steps=100,
        ema_decay=0.999,
        checkpoint_every=500,
        num_samples=256,
    ),
    "full": dict(
        size="full",
        data="photos32",
        num_train=16384,
        num_test=2048,
        steps=100_000,
        batch_size=128,
        lr=3e-4,
        warmup_steps=1000,
        ema_decay=0.9999,
        checkpoint_every=2000,
        num_samples=1024,
    ),
}


def _named_values() -> dict[str, tuple[str, ...]]:
    """TrainConfig string fields -> their allowed names (defined once in the library)."""
    from pifs_jax.schedules import SCHEDULE_NAMES

    return {
        "model": registered_specs(),
        "size": tuple(MODEL_SIZES),
        "data": tuple(DATASETS),
        "weighting": tuple(WEIGHTINGS),
        "lr_decay": LR_DECAYS,
        "schedule": tuple(SCHEDULE_NAMES),
    }


def parse_field_value(name: str, text: str) -> Any:
    """The value of the :class:`TrainConfig` field ``name`` written as ``text``, parsed with the field's type.

    ``int`` fields take an integer (``"4000"``), ``float`` fields a finite number (``"3e-4"``),
    ``architecture`` a JSON object (``'{"channels": 32, ...}'``) or ``"none"``,
    string fields one of their names (``model``, ``size``, ``data``, ``weighting``, ``lr_decay``,
    ``schedule``), and ``patch_size`` (``int | None``) also ``"none"``. Ranges (``steps >= 1``,
    ...) are checked by :class:`TrainConfig` itself.

    Args:
      name: a field of :class:`TrainConfig`.
      text: the value as typed on a command line.

    Returns:
      The parsed value.

    Raises:
      ArgumentError: (argument ``name``) an unknown field, or ``text`` that is not of the field's type.

    Example:
      >>> parse_field_value("lr", "3e-4"), parse_field_value("patch_size", "none")
      (0.0003, None)
    """
    fields = [f.name for f in dataclasses.fields(TrainConfig)]
    if name not in fields:
        raise ArgumentError(name, f"not a TrainConfig field; expected one of {', '.join(fields)}")
    annotation = typing.get_type_hints(TrainConfig)[name]
    optional = isinstance(annotation, types.UnionType) and type(None) in typing.get_args(annotation)
    if optional:
        if text.strip().lower() == "none":
            return None
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if annotation is int:
        try:
            return int(text)
        except ValueError:
            raise ArgumentError(name, f"expected an integer{' or none' if optional else ''}, got {text!r}") from None
    if annotation is float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise ArgumentError(name, f"expected a finite number, got {text!r}")
        return value
    if typing.get_origin(annotation) is dict:
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = None
        if not isinstance(value, dict):
            raise ArgumentError(name, f"expected a JSON object{' or none' if optional else ''}, got {text!r}")
        return value
    allowed = _named_values().get(name)
    if allowed is not None and text not in allowed:
        raise ArgumentError(name, f"expected one of {', '.join(allowed)}, got {text!r}")
    return text


def train_config(preset: str = "quick", **overrides: Any) -> TrainConfig:
    """A :class:`TrainConfig` from a preset (a name in :data:`PRESETS`) with ``overrides``.

    ``overrides`` whose value is ``None`` are ignored (so command-line defaults pass through).
    The patch size is resolved from the data set unless given.

    Args:
      preset: the preset's name, a key of :data:`PRESETS`; default ``"quick"``.
      **overrides: :class:`TrainConfig` fields replacing the preset's (``None`` values ignored). For
        ``data="digits"``, ``num_train`` and ``num_test`` not given are capped at the digits splits' sizes.

    Returns:
      the resolved :class:`TrainConfig` (:meth:`TrainConfig.resolved`).

    Raises:
      ArgumentError: naming ``preset`` (unknown), ``overrides`` (unknown fields) or the invalid field.

    Example:
      >>> cfg = train_config("quick", model="dit", steps=500)
      >>> cfg.patch_size, cfg.data
      (4, 'photos16')
    """
    if preset not in PRESETS:
        raise ArgumentError("preset", f"expected one of {', '.join(PRESETS)}, got {preset!r}")
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ArgumentError("overrides", f"unknown TrainConfig field(s) {', '.join(unknown)}")
    values = {**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
    if values.get("data") == "digits":  # the digits splits are small
        values["num_train"] = overrides.get("num_train") or min(values["num_train"], DIGITS_TRAIN)
        values["num_test"] = overrides.get("num_test") or min(values["num_test"], DIGITS_TEST)
    return TrainConfig(**values).resolved()

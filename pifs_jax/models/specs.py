"""Architectures as specs: frozen, hashable descriptions of a network, registered by name in one place.

A spec is a frozen dataclass whose fields are an architecture's hyper-parameters (never its
weights, never the image shape)::

    spec = DiTSpec.preset("quick")                        # or DiTSpec(hidden=64, depth=3, ...)
    spec.validate((16, 16, 3))                            # ArgumentError naming the bad field
    module = spec.build((16, 16, 3))                      # a flax module (an EpsModule)
    d = spec.to_dict()                                    # {"name": "dit", "hidden": 64, ...}, JSON types
    assert spec_from_dict(d) == spec                      # the registry finds the class by name

Every spec class derives from :class:`ModelSpec`, sets ``NAME`` (and optionally ``PRESETS``,
named field values such as ``"quick"`` and ``"full"``) and is registered once with
:func:`register_spec`. The built-in ones are registered where they are defined:
:class:`~pifs_jax.models.unet.UNetSpec` (``"unet"``), :class:`~pifs_jax.models.dit.DiTSpec`
(``"dit"``) and :class:`~pifs_jax.models.diffusers_unet.config.UNet2DConfig`
(``"diffusers_unet2d"``, a diffusers ``UNet2DModel`` architecture). A user architecture is a
spec class of its own, registered the same way; a training run records the spec's name and
fields (:class:`~pifs_jax.models.training.config.TrainConfig`), and
:func:`~pifs_jax.models.training.load_run` rebuilds exactly what was trained
(docs/guides/training.md).

Field values must be JSON scalars, tuples of them (stored as lists in ``to_dict``; turned back
into tuples by :func:`spec_from_dict`) or ``None``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, TypeVar

from pifs_jax.errors import ArgumentError
from pifs_jax.models.common import EpsModule

__all__ = [
    "ModelSpec",
    "check_field_int",
    "check_image_shape",
    "register_spec",
    "registered_specs",
    "spec_class",
    "spec_from_dict",
]

_REGISTRY: dict[str, type[ModelSpec]] = {}
_Spec = TypeVar("_Spec", bound="ModelSpec")


def check_image_shape(image_shape: Any) -> tuple[int, int, int]:
    """``image_shape`` as ``(H, W, C)`` of positive ints; ArgumentError naming ``image_shape`` otherwise.

    Args:
      image_shape: a sequence of three sizes (each converted with ``int``).

    Returns:
      ``(H, W, C)``, a tuple of Python ints.

    Raises:
      ArgumentError: naming ``image_shape`` when it is not three positive integers.
    """
    try:
        shape = tuple(int(s) for s in image_shape)
    except (TypeError, ValueError):
        raise ArgumentError("image_shape", f"expected (H, W, C), got {image_shape!r}") from None
    if len(shape) != 3 or any(s < 1 for s in shape):
        raise ArgumentError("image_shape", f"expected (H, W, C) with positive sizes, got {shape}")
    return shape  # type: ignore[return-value]


def check_field_int(value: Any, field: str, *, minimum: int = 1, note: str = "") -> None:
    """ArgumentError naming ``field`` unless ``value`` is an int (not a bool) ``>= minimum``.

    Args:
      value: the field's value.
      field: the field's name, which the error carries.
      minimum: the smallest accepted value; default 1.
      note: text appended to the expectation in the error message (e.g. ``" (...)"``); default none.

    Raises:
      ArgumentError: naming ``field`` unless ``value`` is an int ``>= minimum``.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ArgumentError(field, f"expected {what}{note}, got {value!r}")


def _jsonable(value: Any) -> Any:
    return [_jsonable(v) for v in value] if isinstance(value, (tuple, list)) else value


def _frozen(value: Any) -> Any:
    return tuple(_frozen(v) for v in value) if isinstance(value, (tuple, list)) else value


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Base class of architecture specs (a frozen dataclass; subclasses add the fields).

    Contract of a subclass:

    - ``NAME``: the registered name (:func:`register_spec`); ``PRESETS``: ``{size: {field: value}}``.
    - :meth:`validate` ``(image_shape=None)``: raise :class:`~pifs_jax.errors.ArgumentError`
      naming the field and what was expected; with ``image_shape``, also the checks that need it.
    - :meth:`build` ``(image_shape)``: the flax module (an :class:`~pifs_jax.models.common.EpsModule`)
      for images of that shape; equal specs and shapes build equal modules.
    """

    NAME: ClassVar[str] = ""
    PRESETS: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    # Fields added after specs of this architecture were first written, with the default that
    # reproduces the earlier network: a spec read without them takes the default, and a spec
    # holding the default leaves them out of fields(), so older configs, checkpoints and model
    # cards keep their identity (and their recipe fingerprint).
    OPTIONAL_FIELDS: ClassVar[Mapping[str, Any]] = {}

    def validate(self, image_shape: Sequence[int] | None = None) -> None:
        """Check every field (and, with ``image_shape``, that the architecture fits it)."""
        if image_shape is not None:
            check_image_shape(image_shape)

    def build(self, image_shape: Sequence[int]) -> EpsModule:
        """The flax module of this architecture for images ``(H, W, C)``."""
        raise NotImplementedError(f"{type(self).__name__} does not define build(image_shape)")

    def fields(self) -> dict[str, Any]:
        """The fields as JSON types (tuples as lists), without the name; an ``OPTIONAL_FIELDS`` entry only off its default."""
        optional = self.OPTIONAL_FIELDS
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {
            name: _jsonable(value)
            for name, value in values.items()
            if not (name in optional and value == optional[name] and type(value) is type(optional[name]))
        }

    def to_dict(self) -> dict[str, Any]:
        """``{"name": NAME, **fields}``, JSON types: ``spec_from_dict(spec.to_dict()) == spec``."""
        return {"name": self.NAME, **self.fields()}

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any]) -> ModelSpec:
        """The spec with exactly these fields (lists become tuples), validated.

        Raises:
          ArgumentError: naming ``spec`` for missing or unknown fields, or the invalid field.
        """
        if not isinstance(fields, Mapping):
            raise ArgumentError("spec", f"expected a mapping of {cls.NAME!r} fields, got {fields!r}")
        names = {f.name for f in dataclasses.fields(cls)}
        missing, unknown = sorted(names - set(fields) - set(cls.OPTIONAL_FIELDS)), sorted(set(fields) - names)
        if missing or unknown:
            raise ArgumentError(
                "spec", f"fields do not match a {cls.NAME!r} architecture (missing {missing}, unknown {unknown})"
            )
        spec = cls(**{k: _frozen(v) for k, v in fields.items()})
        spec.validate()
        return spec

    @classmethod
    def preset(cls, size: str, *, patch_size: int | None = None) -> ModelSpec:
        """The named preset ``size`` (a key of ``PRESETS``), validated.

        ``patch_size`` (the PIFS partition) replaces the preset's own when the architecture has
        such a field (the DiT's tokens); otherwise it is ignored (it is an analysis setting).
        """
        if size not in cls.PRESETS:
            raise ArgumentError("size", f"expected one of {tuple(cls.PRESETS)} for {cls.NAME!r}, got {size!r}")
        values = dict(cls.PRESETS[size])
        if patch_size is not None and "patch_size" in values:
            values["patch_size"] = patch_size
        spec = cls(**values)
        spec.validate()
        return spec


def register_spec(cls: type[_Spec]) -> type[_Spec]:
    """Register a spec class under ``cls.NAME`` (usable as a class decorator); returns ``cls``.

    Registering a class again under its name (the same module and qualified name, e.g. a
    reloaded module) replaces it; another class under a taken name is refused.

    Args:
      cls: a frozen dataclass deriving from :class:`ModelSpec`, with a class attribute ``NAME``.

    Returns:
      ``cls``, unchanged.

    Raises:
      ArgumentError: naming ``spec`` for a class that is not a frozen :class:`ModelSpec`
        dataclass or has no ``NAME``, or a name registered by another class.
    """
    if not (isinstance(cls, type) and issubclass(cls, ModelSpec) and dataclasses.is_dataclass(cls)):
        raise ArgumentError("spec", f"expected a frozen dataclass deriving from ModelSpec, got {cls!r}")
    params = getattr(cls, "__dataclass_params__", None)
    if params is None or not params.frozen:
        raise ArgumentError("spec", f"{cls.__name__} must be a frozen dataclass (@dataclasses.dataclass(frozen=True))")
    name = cls.NAME
    if not isinstance(name, str) or not name:
        raise ArgumentError("spec", f"{cls.__name__} needs a class attribute NAME (the registered name)")
    old = _REGISTRY.get(name)
    if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ArgumentError("spec", f"the name {name!r} is already registered by {old.__module__}.{old.__qualname__}")
    _REGISTRY[name] = cls
    return cls


def registered_specs() -> tuple[str, ...]:
    """The registered names, in registration order."""
    return tuple(_REGISTRY)


def spec_class(name: Any) -> type[ModelSpec]:
    """The spec class registered under ``name``.

    Args:
      name: the registered name (e.g. ``"unet"``, ``"dit"``).

    Returns:
      the :class:`ModelSpec` subclass.

    Raises:
      ArgumentError: naming ``model`` with the unknown name and every registered one (a user
        spec must be registered, by importing its module, before a run that uses it is loaded).
    """
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ArgumentError(
            "model",
            f"unknown architecture {name!r}; registered: {', '.join(_REGISTRY)} (register a user "
            "architecture with pifs_jax.models.register_spec before loading a run that uses it)",
        )
    return _REGISTRY[name]


def spec_from_dict(d: Mapping[str, Any]) -> ModelSpec:
    """The spec of ``{"name": ..., **fields}`` (:meth:`ModelSpec.to_dict`), validated.

    Args:
      d: a mapping with the registered ``name`` and every (non-optional) field of that spec.

    Returns:
      the spec, an instance of the registered :class:`ModelSpec` subclass.

    Raises:
      ArgumentError: ``spec`` (not a mapping with ``name``, missing/unknown fields), ``model``
        (an unregistered name, listing the registered ones) or the invalid field.
    """
    if not isinstance(d, Mapping) or "name" not in d:
        raise ArgumentError("spec", f"expected a mapping with 'name' and the architecture's fields, got {d!r}")
    return spec_class(d["name"]).from_fields({k: v for k, v in d.items() if k != "name"})

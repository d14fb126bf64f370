"""Trained models shipped inside the package: :func:`pretrained`, :func:`list_pretrained`, :func:`export_pretrained`.

A shipped model ``NAME`` is two files in the package-data folder ``pifs_jax/pretrained/``
(:data:`PRETRAINED_DIR`):

- ``NAME.safetensors``: the EMA parameters of a finished ``pifs-jax train`` run, float32, one
  tensor per leaf of the parameter pytree under its path joined with ``/``
  (``"blocks_0/attention/qkv/kernel"``); nothing else (no optimiser state);
- ``NAME.json``: the model card (:data:`CARD_FIELDS`): the recipe's name and fingerprint
  (:func:`~pifs_jax.models.training.recipes.recipe_fingerprint`), the whole
  :class:`~pifs_jax.models.training.config.TrainConfig`, the data set and its train/test split,
  the training compute (steps, wall time from ``metrics.jsonl``, the machine), the quality numbers
  (the run's ``quality.json``, plus what the exporter passes), the export date, the weight file's
  sha256 and size, and the package versions.

:func:`pretrained` reads the card, checks the weight file's sha256 against it (a changed,
corrupted or missing file is refused by name), rebuilds the recorded architecture and reads the
tensors, checked key by key and shape by shape against it. It trains nothing and compiles
nothing. The result (:class:`PretrainedModel`) has the interface of
:class:`~pifs_jax.models.diffusers_unet.load.LoadedDiffusersUNet`: ``.module``, ``.params``,
``.config``/``.spec``, ``.eps_fn``, ``.schedule``, ``.sampling_grid(steps)``, plus ``.data``
and ``.card``.

Shipping a finished run is one call, ``export_pretrained(run_dir, NAME)``, where ``NAME`` is
the recipe the run was trained with (``pifs-jax train --recipe NAME``): a run whose configuration
differs from the recipe, or that is not finished, is refused. The weights of every shipped model
together must stay within :data:`SIZE_BUDGET_BYTES` (the wheel carries them).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save as save_safetensors

from pifs_jax._validation import read_json_object
from pifs_jax.checkpoint import CHECKPOINT_NAME, read_checkpoint_header
from pifs_jax.errors import ArgumentError
from pifs_jax.grids import uniform_grid
from pifs_jax.models.common import EpsModule, as_eps_fn, count_params
from pifs_jax.models.diffusers_unet.weights import check_finite_weights, check_weight_layout
from pifs_jax.models.specs import ModelSpec
from pifs_jax.models.training.config import TrainConfig
from pifs_jax.models.training.loading import load_run
from pifs_jax.models.training.recipes import RECIPES, Recipe, recipe_fingerprint
from pifs_jax.models.training.trainer import load_train_test, model_for_config, read_metrics_log
from pifs_jax.results import atomic_write_bytes, atomic_write_text, environment_metadata, to_jsonable
from pifs_jax.schedules import Schedule, named_schedule

__all__ = [
    "CARD_FIELDS",
    "CARD_FORMAT",
    "PRETRAINED_DIR",
    "SIZE_BUDGET_BYTES",
    "PretrainedModel",
    "export_pretrained",
    "file_sha256",
    "flatten_params",
    "list_pretrained",
    "pretrained",
    "read_card",
]

#: The package-data folder of the shipped models (``pifs_jax/pretrained/``, in the wheel).
PRETRAINED_DIR = Path(__file__).resolve().parents[1] / "pretrained"
#: The most bytes the weight files of all shipped models may take together (the wheel carries them).
SIZE_BUDGET_BYTES = 40_000_000
#: Version of the card layout.
CARD_FORMAT = 1
#: The keys of a model card, each always present (``None`` where a run did not record it).
CARD_FIELDS = (
    "format",
    "name",
    "description",
    "recipe",
    "fingerprint",
    "config",
    "architecture",
    "num_params",
    "data",
    "training",
    "quality",
    "weights",
    "exported_utc",
    "environment",
)
#: Card keys the exporter's ``card_extra`` may not replace (they are what loading relies on).
_PROTECTED = frozenset(CARD_FIELDS) - {"description", "quality"}


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 (hex) of a file's bytes.

    Args:
      path: the file, read in blocks of 1 MiB.

    Returns:
      the hex digest, 64 characters.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _key_name(entry: Any) -> str:
    for attribute in ("key", "name", "idx"):
        if hasattr(entry, attribute):
            return str(getattr(entry, attribute))
    return str(entry)


def _leaves_by_path(tree: Any) -> dict[str, Any]:
    """``{path: leaf}`` of a pytree, each leaf under its keys joined with ``/``."""
    flat: dict[str, Any] = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        key = "/".join(_key_name(entry) for entry in path)
        if key in flat:
            raise ArgumentError("params", f"two parameters flatten to the key {key!r}")
        flat[key] = leaf
    return flat


def flatten_params(params: Any) -> dict[str, np.ndarray]:
    """``{path: array}`` of a parameter pytree, each leaf under its keys joined with ``/`` (NumPy, host).

    The keys follow the pytree's flattening order (:func:`jax.tree_util.tree_flatten_with_path`).

    Args:
      params: the parameter pytree (nested dicts of arrays).

    Returns:
      a dict from each leaf's path (e.g. ``"blocks_0/attention/qkv/kernel"``) to the leaf as a NumPy array.

    Raises:
      ArgumentError: (``params``) two leaves with the same path (a key holding ``/``).
    """
    return {key: np.asarray(leaf) for key, leaf in _leaves_by_path(params).items()}


def _folder(folder: str | os.PathLike | None) -> Path:
    return PRETRAINED_DIR if folder is None else Path(folder)


def list_pretrained(folder: str | os.PathLike | None = None) -> dict[str, str]:
    """The shipped models: ``{name: one-line description}``, sorted by name.

    Args:
      folder: where to look (default :data:`PRETRAINED_DIR`, the package's own).
    """
    root = _folder(folder)
    if not root.is_dir():
        return {}
    names = {}
    for card_file in sorted(root.glob("*.json")):
        try:
            card = json.loads(card_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            continue  # not a card; pretrained(name) names the problem
        if isinstance(card, dict) and card.get("name") == card_file.stem:
            names[card_file.stem] = str(card.get("description", ""))
    return names


def read_card(name: str, folder: str | os.PathLike | None = None) -> dict[str, Any]:
    """The model card of the shipped model ``name`` (checked to hold every key of :data:`CARD_FIELDS`).

    Args:
      name: the shipped model's name (the card is ``{folder}/{name}.json``).
      folder: where to look; ``None`` (default): :data:`PRETRAINED_DIR`, the package's own.

    Returns:
      the card, a dict parsed from JSON.

    Raises:
      ArgumentError: (``name``) not a valid model name, no such model (listing the shipped ones), or a
        card that cannot be read, is nested too deeply to parse, is not a JSON object, lacks keys, or
        is of another model or card format (naming the file).
    """
    root = _folder(folder)
    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        raise ArgumentError("name", f"expected the name of a shipped model, got {name!r}")
    card_file = root / f"{name}.json"
    if not card_file.is_file():
        shipped = ", ".join(list_pretrained(root)) or "none"
        raise ArgumentError("name", f"no shipped model {name!r} (no {str(card_file)!r}); shipped: {shipped}")
    card = read_json_object(card_file, file_name=card_file.name, what="a model card", argument="name")[0]
    missing = [key for key in CARD_FIELDS if key not in card]
    if missing:
        raise ArgumentError("name", f"the model card {str(card_file)!r} lacks {', '.join(missing)}")
    if card["name"] != name or card["format"] != CARD_FORMAT:
        raise ArgumentError(
            "name",
            f"the model card {str(card_file)!r} is of {card['name']!r} (format {card['format']!r}); "
            f"expected {name!r} in format {CARD_FORMAT}",
        )
    return card


@dataclasses.dataclass(frozen=True)
class PretrainedModel:
    """A shipped trained model, from :func:`pretrained`.

    Attributes:
      name: its name (the recipe it was trained with).
      module: the flax network, ``module.apply({"params": params}, x (B, H, W, C), t (B,))``.
      params: the EMA parameters (float32 JAX arrays).
      config: the :class:`~pifs_jax.models.training.config.TrainConfig` it was trained with.
      schedule: the noise schedule of that training (``named_schedule(config.schedule, config.T)``).
      card: the model card (a dict, :data:`CARD_FIELDS`).
      weights_file: the file the parameters came from (its sha256 checked against the card).
    """

    name: str
    module: EpsModule
    params: Any
    config: TrainConfig
    schedule: Schedule
    card: dict[str, Any]
    weights_file: Path

    @property
    def spec(self) -> ModelSpec:
        """The architecture (:meth:`TrainConfig.model_spec`)."""
        return self.config.model_spec()

    @property
    def eps_fn(self) -> jax.tree_util.Partial:
        """The denoiser of one sample, ``eps_fn(x (H, W, C), t)``: ``as_eps_fn(module, params)``, a pytree."""
        return as_eps_fn(self.module, self.params)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(H, W, C)`` of the training data and the samples."""
        shape = self.config.image_shape
        assert shape is not None  # pretrained() refuses a card whose data set is unknown
        return shape

    @property
    def sha256(self) -> str:
        """The weight file's sha256 (checked on load)."""
        return str(self.card["weights"]["sha256"])

    @property
    def fingerprint(self) -> str:
        """:func:`~pifs_jax.models.training.recipes.recipe_fingerprint` of :attr:`config`."""
        return str(self.card["fingerprint"])

    @property
    def data(self) -> dict[str, Any]:
        """The data set and split it was trained on (``name``, ``image_shape``, ``num_train``, ``num_test``, ``data_seed``, ``split``)."""
        return dict(self.card["data"])

    def load_data(self) -> tuple[np.ndarray, np.ndarray]:
        """The exact training and test images of the run (:func:`~pifs_jax.models.training.load_train_test`)."""
        return load_train_test(self.config)

    def sampling_grid(self, steps: int) -> np.ndarray:
        """The uniform ``steps``-step DDIM grid of ``T`` the run's own samples were drawn on (:func:`pifs_jax.uniform_grid`)."""
        return uniform_grid(self.config.T, steps)


def _load_tensors(weights_file: Path, expected: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    try:
        with safe_open(str(weights_file), framework="numpy") as handle:
            keys = list(handle.keys())
            check_weight_layout(weights_file, {key: tuple(handle.get_slice(key).get_shape()) for key in keys}, expected)
            tensors = {key: handle.get_tensor(key) for key in keys}
    except (SafetensorError, OSError, ValueError, TypeError) as err:
        if isinstance(err, ArgumentError):
            raise ArgumentError(
                "name", f"the weights disagree with the architecture on the card: {err.detail}"
            ) from None
        raise ArgumentError(
            "name", f"cannot read {str(weights_file)!r} as safetensors (truncated or corrupt?): {err}"
        ) from None
    check_finite_weights(weights_file, tensors, argument="name")
    return tensors


def pretrained(name: str, *, folder: str | os.PathLike | None = None) -> PretrainedModel:
    """Load the shipped model ``name``: its card, the checked weights and the rebuilt network (no training).

    Example::

      model = pretrained("dit-digits")
      x0 = ddim_sample(model.eps_fn, model.schedule, x_T, grid=model.sampling_grid(50))

    Args:
      name: a name of :func:`list_pretrained`.
      folder: where the model lies (default :data:`PRETRAINED_DIR`, the package's own).

    Returns:
      A :class:`PretrainedModel`.

    Raises:
      ArgumentError: (``name``) an unknown model (listing the shipped ones); a card that cannot be
        read; a weight file that is missing, or whose sha256 differs from the card's (changed or
        corrupted), naming the file; tensors that do not match the recorded architecture, or
        that hold NaN or inf (naming the tensor: a card re-exported from a diverged run).
    """
    root = _folder(folder)
    card = read_card(name, root)
    weights_file = root / str(card["weights"]["file"])
    if not weights_file.is_file():
        raise ArgumentError("name", f"the weight file {str(weights_file)!r} of {name!r} is missing")
    digest = file_sha256(weights_file)
    if digest != card["weights"]["sha256"]:
        raise ArgumentError(
            "name",
            f"the weight file {str(weights_file)!r} has sha256 {digest}, its card records "
            f"{card['weights']['sha256']}: the file was changed or corrupted (reinstall the package, "
            "or export the run again)",
        )
    try:
        config = TrainConfig(**card["config"]).resolved()
    except (TypeError, ArgumentError) as err:
        raise ArgumentError("name", f"the model card of {name!r} holds an invalid config: {err}") from None
    image_shape = config.image_shape
    if image_shape is None:
        raise ArgumentError("name", f"{name!r} was trained on {config.data!r}, not a known data set")
    module, init_fn = model_for_config(config, image_shape)
    shapes = jax.eval_shape(init_fn, jax.random.PRNGKey(0))  # traces the init, computes nothing
    expected = {key: tuple(leaf.shape) for key, leaf in _leaves_by_path(shapes).items()}
    tensors = _load_tensors(weights_file, expected)
    leaves, treedef = jax.tree_util.tree_flatten(shapes)
    ordered = [jnp.asarray(tensors[key], leaf.dtype) for key, leaf in zip(expected, leaves, strict=True)]
    params = jax.tree_util.tree_unflatten(treedef, ordered)
    schedule = named_schedule(config.schedule, config.T)
    return PretrainedModel(name, module, params, config, schedule, card, weights_file)


def _training_record(run_dir: Path, steps: int) -> dict[str, Any]:
    """Steps, wall time and rate from ``metrics.jsonl``; the machine from ``quality.json``'s environment."""
    records = read_metrics_log(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").is_file() else []
    rates = [float(r["images_per_s"]) for r in records[1:] if "images_per_s" in r]
    machine = None
    if (run_dir / "quality.json").is_file():
        environment = json.loads((run_dir / "quality.json").read_text(encoding="utf-8")).get("environment") or {}
        machine = {k: environment.get(k) for k in ("platform", "machine", "jax_backend", "devices", "created_utc")}
    return {
        "steps": steps,
        "wall_seconds": float(records[-1]["time_s"]) if records and "time_s" in records[-1] else None,
        "images_per_s_median": float(np.median(rates)) if rates else None,
        "final_loss": float(records[-1]["loss"]) if records and "loss" in records[-1] else None,
        "machine": machine,
        "note": "wall time of the last training session in metrics.jsonl (compilation included); "
        "machine: where the run was evaluated at its end (quality.json), None if it drew no samples",
    }


def export_pretrained(
    run_dir: str | os.PathLike,
    name: str,
    *,
    card_extra: Mapping[str, Any] | None = None,
    folder: str | os.PathLike | None = None,
    recipes: Mapping[str, Recipe] = RECIPES,
) -> Path:
    """Ship the finished run in ``run_dir`` as the model ``name``: its EMA weights and a card.

    Writes ``folder/NAME.safetensors`` (EMA parameters only, float32, flattened keys) and then
    ``folder/NAME.json`` (the card, :data:`CARD_FIELDS`), each atomically, replacing a previous
    export of that name. The quality numbers are the run's ``quality.json`` results (if it drew
    samples) updated with ``card_extra["quality"]``; ``card_extra``'s other keys are added to the
    card (``description`` replaces the recipe's).

    Args:
      run_dir: a finished ``pifs-jax train --recipe NAME`` folder (:func:`~pifs_jax.models.training.load_run`).
      name: the recipe it was trained with (a key of ``recipes``); the model ships under it.
      card_extra: more card entries, e.g. ``{"quality": {"fid_in_domain": 3.1}, "notes": "..."}``.
      folder: where to write (default :data:`PRETRAINED_DIR`, the package's own, in a clone).
      recipes: the recipe registry (default :data:`~pifs_jax.models.training.recipes.RECIPES`).

    Returns:
      The card's path.

    Raises:
      ArgumentError: ``name`` is not a recipe; ``run_dir`` is not a loadable run, is not finished
        (its checkpoint is at an earlier step than ``steps``), or was trained with another
        configuration than the recipe (naming the fields); ``card_extra`` replaces a key loading
        relies on; the shipped weights would exceed :data:`SIZE_BUDGET_BYTES`.
    """
    if not isinstance(name, str) or name not in recipes:
        raise ArgumentError("name", f"expected a recipe name ({', '.join(recipes)}), got {name!r}")
    extra = dict(card_extra or {})
    clashing = sorted(set(extra) & _PROTECTED)
    if clashing:
        raise ArgumentError("card_extra", f"may not replace the card's {', '.join(clashing)}")
    if "quality" in extra and not isinstance(extra["quality"], Mapping):
        raise ArgumentError("card_extra", f"'quality' must be a mapping, got {type(extra['quality']).__name__}")
    entry = recipes[name]
    run_path = Path(run_dir)
    run = load_run(run_path)
    config = run.config
    if recipe_fingerprint(config) != recipe_fingerprint(entry.config):
        wanted, got = entry.config.resolved().identity(), config.identity()
        differences = [
            f"{key} = {wanted.get(key)!r} in the recipe, {got.get(key)!r} in the run"
            for key in sorted(set(wanted) | set(got))
            if json.dumps(wanted.get(key), sort_keys=True) != json.dumps(got.get(key), sort_keys=True)
        ]
        raise ArgumentError(
            "run_dir",
            f"the run in {str(run_path)!r} was not trained with the recipe {name!r}: "
            f"{'; '.join(differences) or 'the configurations differ'} (train it with pifs-jax train --recipe {name})",
        )
    step = int(read_checkpoint_header(run_path / CHECKPOINT_NAME)["step"])
    if step != config.steps:
        raise ArgumentError(
            "run_dir",
            f"the run in {str(run_path)!r} is not finished: its checkpoint is at step {step} of {config.steps}",
        )
    root = _folder(folder)
    flat = {key: np.asarray(value, np.float32) for key, value in flatten_params(run.state.ema_params).items()}
    blob = save_safetensors(flat, metadata={"format": "pifs_jax.pretrained", "name": name})
    others = (
        sum(p.stat().st_size for p in root.glob("*.safetensors") if p.name != f"{name}.safetensors")
        if root.is_dir()
        else 0
    )
    if others + len(blob) > SIZE_BUDGET_BYTES:
        raise ArgumentError(
            "run_dir",
            f"{name!r} takes {len(blob)} bytes; with the {others} bytes already shipped that exceeds the "
            f"budget of {SIZE_BUDGET_BYTES} bytes",
        )
    quality = None
    if (run_path / "quality.json").is_file():
        quality = json.loads((run_path / "quality.json").read_text(encoding="utf-8")).get("results")
    if "quality" in extra:
        quality = {**(quality or {}), **extra.pop("quality")}
    image_shape = config.image_shape
    card = {
        "format": CARD_FORMAT,
        "name": name,
        "description": str(extra.pop("description", entry.description)),
        "recipe": name,
        "fingerprint": recipe_fingerprint(config),
        "config": config.to_dict(),
        "architecture": config.model_spec().to_dict(),
        "num_params": count_params(run.state.ema_params),
        "data": {
            "name": config.data,
            "image_shape": list(image_shape) if image_shape is not None else None,
            "num_train": config.num_train,
            "num_test": config.num_test,
            "data_seed": config.data_seed,
            "split": "load_train_test(config): load_dataset(data, fold_in(PRNGKey(data_seed), 0), num_train, "
            "split='train') and fold_in(..., 1), num_test, split='test'",
        },
        "training": _training_record(run_path, step),
        "quality": quality,
        "weights": {
            "file": f"{name}.safetensors",
            "sha256": hashlib.sha256(blob).hexdigest(),
            "bytes": len(blob),
            "dtype": "float32",
            "parameters": "EMA",
        },
        "exported_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "environment": environment_metadata(),
        **extra,
    }
    atomic_write_bytes(root / f"{name}.safetensors", blob)
    text = json.dumps(to_jsonable(card), indent=2, allow_nan=False) + "\n"
    return atomic_write_text(root / f"{name}.json", text)

"""Retrain the shipped in-domain encoders from a seed: ``python -m pifs_jax.models.encoders.train_encoders``.

For each data set of :data:`~pifs_jax.models.encoders.network.ENCODER_SPECS` (or those named
with ``--data``) the encoder is trained on the **train split only** with softmax cross-entropy
on free labels:

- ``digits``: the digit class of scikit-learn's data set (all 1437 train digits).
- ``photos16``, ``photos32``: which of the five photographs the crop comes from
  (:data:`~pifs_jax.models.encoders.network.PHOTO_OBJECTIVE`), each minibatch image flipped
  left-right with probability 1/2 (the label does not change), **plus** ``lambda = 10`` times the
  mean squared error of a linear reconstruction of the crop from the features,
  ``x ~ W_d f + b_d`` (the decoder is trained with the encoder and not shipped). The
  photograph's identity alone can be read from colour and texture, and the features of that
  classifier barely moved under blur or shuffled patches (photos32: not at all); the
  reconstruction term makes the features keep the crop's layout. A finer label (the photograph
  and its ``256 x 256`` region, 20 classes) was tried first: it reached 99 % train but 29 % test
  accuracy (the checkerboard's test cells are other places of the photograph), against 79 % for
  the photograph alone (after 300 steps on ``photos16``). The photograph and a rotation by
  ``k`` quarter turns (20 classes, a self-supervised orientation task) was tried too: its
  features moved less under blur and patch shuffling than these (800 steps on ``photos16``).

Adam (``optax.adamw``, weight decay ``1e-4``), cosine-decayed learning rate, minibatches drawn
with replacement from a NumPy generator seeded by ``seed``; initial weights
:func:`~pifs_jax.models.encoders.network.init_encoder_params` of ``seed``. After training the
feature layer is rescaled so that the train split's features have ``mean ||f||^2 / d = 1``
(:func:`normalise_feature_scale`; the logits do not change). Writes
``{out}/{data}.safetensors`` (float32) and ``{out}/training.json`` (:func:`pifs_jax.results.write_result_json`:
the configuration, the seed, the package versions, and per data set the train and test accuracy,
the seconds and the file's sha256). ``--out`` defaults to the package's ``weights`` folder; the
sha256 values printed at the end belong in :data:`pifs_jax.models.encoders.load.ENCODER_SHA256`.
"""

from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import safetensors.numpy

from pifs_jax.data import DATASETS, digits_split, photo_crop_count, photo_crops
from pifs_jax.models.encoders.network import ENCODER_SPECS, encoder_features, encoder_logits, init_encoder_params
from pifs_jax.results import write_result_json

__all__ = ["TRAIN_CONFIG", "labelled_split", "main", "normalise_feature_scale", "train_encoder"]

#: Steps, batch size, peak learning rate, training-set size (``None`` = the whole split) and the
#: weight ``lambda`` of the linear reconstruction term, per data set.
TRAIN_CONFIG: dict[str, dict[str, Any]] = {
    "digits": {"steps": 1500, "batch": 128, "learning_rate": 2e-3, "num_train": None, "reconstruction": 0.0},
    "photos16": {"steps": 1500, "batch": 128, "learning_rate": 2e-3, "num_train": None, "reconstruction": 10.0},
    "photos32": {"steps": 1500, "batch": 128, "learning_rate": 2e-3, "num_train": 20000, "reconstruction": 10.0},
}
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


def labelled_split(data: str, split: str, *, seed: int = 0, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(n, H, W, C)`` float32 and integer labels of one split (module notes).

    Args:
      data: the data set, a key of :data:`~pifs_jax.models.encoders.network.ENCODER_SPECS`.
      split: ``"train"`` or ``"test"``.
      seed: the seed of the photograph crops (unused for ``"digits"``); default 0.
      n: the number of photograph crops; ``None`` (default): every crop position of the split
        (:func:`pifs_jax.data.photo_crop_count`). ``"digits"`` always gives the whole split.

    Returns:
      ``(images, labels)``: float32 images ``(n, H, W, C)`` and the labels ``(n,)`` (the digit
      class, or the index of the photograph a crop comes from, int64).
    """
    if data == "digits":
        images, labels = digits_split(split)
        return images.astype(np.float32), labels
    size = DATASETS[data][0]
    n = n or photo_crop_count(size=size, split=split)
    key = jax.random.fold_in(jax.random.PRNGKey(seed), 0 if split == "train" else 1)
    crops, pos = photo_crops(key, size=size, n=n, split=split, return_positions=True, dtype="float32")
    return np.asarray(crops), np.asarray(pos.photo, np.int64)


def _accuracy(params: dict[str, Any], data: str, images: np.ndarray, labels: np.ndarray) -> float:
    spec = ENCODER_SPECS[data]
    numpy_params = {k: np.asarray(v) for k, v in params.items()}
    hits = 0
    for start in range(0, len(images), 1024):
        logits = encoder_logits(numpy_params, spec, images[start : start + 1024])
        hits += int(np.sum(np.argmax(logits, axis=1) == labels[start : start + 1024]))
    return hits / len(images)


def normalise_feature_scale(params: dict[str, np.ndarray], data: str, images: np.ndarray) -> dict[str, np.ndarray]:
    """Rescale the feature layer so that the train features have ``mean ||f||^2 / d = 1``.

    ``ReLU`` is positively homogeneous, so ``W_f, b_f <- W_f / s, b_f / s`` and ``W_c <- s W_c``
    with ``s = sqrt(mean ||f||^2 / d)`` divide the features by ``s`` and leave the logits
    unchanged: the polynomial kernel's ``x . y / d`` is then of order one, as KID assumes, and FD
    and KID have the same scale for every encoder.

    Args:
      params: the trained ``{name: array}`` parameters (NumPy); not modified.
      data: the data set, a key of :data:`~pifs_jax.models.encoders.network.ENCODER_SPECS`.
      images: the train images ``(N, H, W, C)`` the scale is measured on.

    Returns:
      a new parameter dict, ``features.kernel``, ``features.bias`` and ``head.kernel`` rescaled
      (float32), the other entries those of ``params``.
    """
    spec = ENCODER_SPECS[data]
    features = np.concatenate(
        [encoder_features(params, spec, images[i : i + 1024]) for i in range(0, len(images), 1024)]
    ).astype(np.float64)
    scale = float(np.sqrt(np.mean(np.sum(features**2, axis=1)) / spec.features))
    out = dict(params)
    out["features.kernel"] = (params["features.kernel"] / scale).astype(np.float32)
    out["features.bias"] = (params["features.bias"] / scale).astype(np.float32)
    out["head.kernel"] = (params["head.kernel"] * scale).astype(np.float32)
    return out


def train_encoder(
    data: str, *, seed: int = 0, steps: int | None = None
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Train one encoder; returns ``(params as float32 NumPy arrays, record)`` (module notes).

    Args:
      data: the data set, a key of :data:`TRAIN_CONFIG`.
      seed: the seed of the initial weights, the minibatches, the flips and the photograph crops;
        default 0.
      steps: the number of training steps; ``None`` (default): the data set's ``TRAIN_CONFIG`` value.

    Returns:
      ``(params, record)``: the parameters after :func:`normalise_feature_scale` (the decoder
      dropped), and ``{"config", "objective", "num_train", "num_test", "final_loss", "train_accuracy",
      "test_accuracy", "seconds", "parameters"}`` (``final_loss`` the mean of the last 100 steps' losses).
    """
    spec = ENCODER_SPECS[data]
    config = dict(TRAIN_CONFIG[data])
    config["steps"] = steps or config["steps"]
    images, labels = labelled_split(data, "train", seed=seed, n=config["num_train"])
    test_images, test_labels = labelled_split(data, "test", seed=seed, n=min(4096, len(images)))
    schedule = optax.cosine_decay_schedule(config["learning_rate"], config["steps"])
    optimizer = optax.adamw(schedule, weight_decay=1e-4)
    params = {k: jnp.asarray(v) for k, v in init_encoder_params(spec, seed).items()}
    pixels = int(np.prod(spec.image_shape))
    weight = config["reconstruction"]
    if weight:  # the linear decoder is trained with the encoder, then dropped
        params["decoder.kernel"] = jnp.zeros((spec.features, pixels), jnp.float32)
        params["decoder.bias"] = jnp.zeros((pixels,), jnp.float32)
    state = optimizer.init(params)

    def loss_fn(p, x, y):
        features = encoder_features(p, spec, x, xp=jnp)
        logits = features @ p["head.kernel"] + p["head.bias"]
        loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))
        if weight:
            reconstruction = features @ p["decoder.kernel"] + p["decoder.bias"]
            loss = loss + weight * jnp.mean((reconstruction - x.reshape(len(x), -1)) ** 2)
        return loss

    @jax.jit
    def step(p, s, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(p, x, y)
        updates, s = optimizer.update(grads, s, p)
        return optax.apply_updates(p, updates), s, loss

    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    losses = []
    for _ in range(config["steps"]):
        index = rng.integers(0, len(images), config["batch"])
        batch = images[index]
        target = labels[index]
        if data != "digits":  # left-right flips: a photograph's identity does not depend on them
            flip = rng.random(len(batch)) < 0.5
            batch = np.where(flip[:, None, None, None], batch[:, :, ::-1], batch)
        params, state, loss = step(params, state, batch, target)
        losses.append(float(loss))
    seconds = time.perf_counter() - start
    kept = {k: np.asarray(v, np.float32) for k, v in params.items() if not k.startswith("decoder.")}
    out = normalise_feature_scale(kept, data, images)
    record = {
        "config": config,
        "objective": spec.objective,
        "num_train": len(images),
        "num_test": len(test_images),
        "final_loss": float(np.mean(losses[-100:])),
        "train_accuracy": _accuracy(out, data, images, labels),
        "test_accuracy": _accuracy(out, data, test_images, test_labels),
        "seconds": seconds,
        "parameters": int(sum(v.size for v in out.values())),
    }
    return out, record


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Command line: ``--data`` (default: all), ``--seed`` (0), ``--out`` (the package's weights folder), ``--steps``.

    Trains each encoder (:func:`train_encoder`), writes ``{out}/{data}.safetensors`` and
    ``{out}/training.json`` and prints each record.

    Args:
      argv: the command-line arguments; ``None`` (default): ``sys.argv[1:]``.

    Returns:
      ``{data: record}``, the records of :func:`train_encoder` with the file's ``"sha256"`` and
      ``"bytes"`` added.
    """
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--data", nargs="*", default=list(ENCODER_SPECS), choices=list(ENCODER_SPECS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR)
    parser.add_argument("--steps", type=int, default=None, help="override every data set's step count")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    records = {}
    for data in args.data:
        params, record = train_encoder(data, seed=args.seed, steps=args.steps)
        path = args.out / f"{data}.safetensors"
        blob = safetensors.numpy.save(params, metadata={"data": data, "seed": str(args.seed)})
        path.write_bytes(blob)
        record["sha256"] = hashlib.sha256(blob).hexdigest()
        record["bytes"] = len(blob)
        records[data] = record
        print(f"{data}: {record}", flush=True)
    config = {"data": args.data, "steps_override": args.steps, "train": {d: TRAIN_CONFIG[d] for d in args.data}}
    write_result_json(args.out / "training.json", records, config=config, seed=args.seed)
    return records


if __name__ == "__main__":
    main()

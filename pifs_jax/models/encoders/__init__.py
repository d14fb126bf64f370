"""In-domain feature encoders: one small classifier per bundled data set, shipped as safetensors.

Inception features mean nothing for 8x8 digits or 16x16 photograph crops, and no Inception or
LPIPS weights ship with the package, so the Frechet distance and KID of
:func:`pifs_jax.models.quality.in_domain_scores` are taken in the feature space of an encoder
trained on the data set itself (the train split only):

- ``digits``: a digit classifier (scikit-learn's labels).
- ``photos16``, ``photos32``: a classifier of the source photograph whose features must also
  reconstruct the crop linearly (so they keep its layout).

The features are the 128 ReLU units before the classifier head
(:mod:`pifs_jax.models.encoders.network`); the weights files and their sha256 are checked on
load (:mod:`pifs_jax.models.encoders.load`); ``python -m pifs_jax.models.encoders.train_encoders``
retrains them from a seed, ``python -m pifs_jax.models.encoders.validate_encoders`` validates
the metric (docs/guides/trained-models.md, "In-domain quality").
"""

from __future__ import annotations

from pifs_jax.models.encoders.load import ENCODER_SHA256, Encoder, encode, encoder_for_shape, load_encoder
from pifs_jax.models.encoders.network import ENCODER_SPECS, EncoderSpec

__all__ = ["ENCODER_SHA256", "ENCODER_SPECS", "Encoder", "EncoderSpec", "encode", "encoder_for_shape", "load_encoder"]

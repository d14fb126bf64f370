"""Shipped trained models: ``NAME.safetensors`` (EMA weights) and ``NAME.json`` (the card); read them with :mod:`pifs_jax.models.pretrained`."""

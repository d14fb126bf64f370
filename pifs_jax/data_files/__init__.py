"""Bundled data files (example diffusers scheduler configs)."""
